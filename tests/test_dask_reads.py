"""Reads on a real cluster: a step's small kept values (the loss, the accuracy, a few logits) come
with the first read that reaches their workers, so a loop reading three of them per step pays one
round trip for them, usually, instead of three; the values are those of the in-process run."""
import numpy as np

import gtnumba as gt
import small_mlp
from gtnumba import nn
from gtnumba.sched.mesh import current_mesh
from gtnumba.sched.dask_runner import RIDE_STEPS


def _loop(steps=6):
    gt.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = gt.optim.Adam(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    out, reads = [], []
    for _ in range(steps):
        x = gt.tensor(rng.standard_normal((6, 8)).astype(np.float32))
        y = gt.tensor(rng.integers(0, 3, 6))
        logits = model(x)
        loss = nn.cross_entropy(logits, y)
        correct = (logits.argmax(axis=-1) == y).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mesh = current_mesh()
        before = dict(mesh.runner.stats) if mesh is not None else {}
        out.append((loss.item(), correct.item(), logits.numpy()))
        reads.append({k: mesh.runner.stats[k] - before[k] for k in ("reads", "read_rpcs", "riders")}
                     if mesh is not None else {})
    return out, reads


def test_small_values_ride_along_with_the_first_read():
    ref, _ = _loop()
    gt.init(workers=2, dashboard=":0")
    try:
        got, reads = _loop()
    finally:
        gt.shutdown()
    assert current_mesh() is None
    for (l1, c1, g1), (l2, c2, g2) in zip(got, ref):
        np.testing.assert_allclose(l1, l2, rtol=1e-5)
        assert c1 == c2
        np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)
    # riders are chosen by plan and slot: the first step of the steady plan (step 2) reads each kind itself
    steady = [r["reads"] for r in reads[3:]]
    assert max(steady) <= 2 and sum(steady) < 2 * len(steady), reads     # was 3 per step
    # only the kinds of values read before ride along (never the small new parameters and Adam
    # state the step also keeps: 12 of them here), from the workers they were read from: at most
    # 3 kinds x 2 workers x the 2 recent steps (a value not computed yet is asked again)
    assert all(r["riders"] <= 3 * 2 * RIDE_STEPS for r in reads[2:]), reads
    assert all(r["read_rpcs"] <= 2 * r["reads"] for r in reads), reads


def test_a_big_batch_goes_straight_to_the_workers():
    """A batch of 64 KB or more travels from the client to its workers' stores, not inside the
    step's tasks (through the scheduler): the same training, with its bytes counted there."""
    def run():
        model, opt = small_mlp.big_batch_model()
        rng = np.random.default_rng(0)
        losses = [small_mlp.big_batch_step(model, opt, rng).item() for _ in range(3)]
        return losses, model.weight.numpy()
    want = run()
    gt.init(workers=2, dashboard=":0")
    try:
        got = run()
        stats = current_mesh().runner.stats
    finally:
        gt.shutdown()
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-7)
    assert stats["direct_bytes"] >= 3 * 128 * 256 * 4


def _split_sum_loop(steps=7):
    """Per step: a replicated value (read from one worker), then the sum of a batch split over the
    workers (a part on each, added on the client).  Returns the values and, per step, the workers
    each read asked (the pulls ahead are not reads)."""
    rng = np.random.default_rng(3)
    w = gt.tensor(rng.standard_normal((8, 4)).astype(np.float32))
    mesh, out, asked = current_mesh(), [], []
    if mesh is not None:
        pull = mesh.runner._pull

        async def counted(parts, by_worker, *rest):
            asked[-1].append(sorted(by_worker))
            return await pull(parts, by_worker, *rest)
        mesh.runner._pull = counted
    for _ in range(steps):
        x = gt.shard(gt.tensor(rng.standard_normal((6, 8)).astype(np.float32)), 0)
        whole, split = (w * w).sum(), (x @ w).sum()
        asked.append([])
        out.append((whole.item(), split.item()))
    return out, asked


def test_a_split_value_read_after_another_comes_ahead_from_the_workers_the_first_read_missed():
    """The first read of a step reaches one worker; the other is asked at the same time, without
    waiting, for the kinds of values read from it before (the split sum's part): no read of a
    later step has to ask that worker."""
    want, _ = _split_sum_loop()
    gt.init(workers=2, dashboard=":0")
    try:
        got, asked = _split_sum_loop()
        ahead = current_mesh().runner.stats["ahead_rpcs"]
    finally:
        gt.shutdown()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert [1] in asked[0] or [0, 1] in asked[0], asked           # the first step reads the other worker
    assert all(1 not in workers for step in asked[2:] for workers in step), asked
    assert ahead >= len(asked) - 2, ahead
