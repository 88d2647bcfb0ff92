"""The next step submitted before it is recorded (sched.speculate), on real Dask workers: a training
loop runs its steps from predictions with the in-process results; a step that is not the predicted
one calls the prediction off, which then runs nothing; errors still surface at the next read."""
import numpy as np
import pytest

import gtnumba as gt
import small_mlp
from gtnumba import nn
from gtnumba.sched import dask_runner
from gtnumba.sched.mesh import current_mesh


@pytest.fixture(scope="module")
def cluster():
    client = gt.init(workers=2, dashboard=":0")
    yield client
    gt.shutdown()


def _loop(batches, between=None):
    """SGD with momentum over `batches` (sizes), reading each loss; `between(net, i)` runs after
    step i.  The losses, the parameters and the momentum buffers."""
    net = small_mlp.model()
    opt = gt.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(7)
    losses = []
    for i, batch in enumerate(batches):
        losses.append(small_mlp.step(net, opt, rng, batch).item())
        if between is not None:
            between(net, i)
    state = [t.numpy() for st in opt.state.values() for t in st.values() if hasattr(t, "numpy")]
    return losses, [p.numpy() for p in net.parameters()], state


def _same(got, want):
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    assert len(got[1] + got[2]) == len(want[1] + want[2])
    for a, b in zip(got[1] + got[2], want[1] + want[2]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _left_by(token):
    """Store keys of step `token` on this worker."""
    from gtnumba.sched import dask_worker
    return [k for st in dask_worker._STORES.values() for k in st.values if k.startswith(token + ":")]


def _called_off():
    from gtnumba.sched import dask_worker
    return [t for st in dask_worker._STORES.values() for t in st.called_off]


def test_a_training_loop_runs_its_steps_from_predictions_with_in_process_results(cluster):
    want = small_mlp.in_process(lambda: _loop([5] * 8))
    before = small_mlp.runner_stats()
    got = _loop([5] * 8)
    after = small_mlp.runner_stats()
    _same(got, want)
    # steps 1 and 2 teach the runner how step 3 follows step 2 (momentum buffers appear in step 2)
    assert after["predictions_taken"] - before["predictions_taken"] >= 5
    # predicted steps run in chains: a chain of up to CHAIN_STEPS steps is one task per worker
    taken, steps = after["predictions_taken"] - before["predictions_taken"], after["steps"] - before["steps"]
    chains = -(-taken // dask_runner.CHAIN_STEPS)
    assert after["tasks"] - before["tasks"] == 2 * (steps - taken + chains)


@pytest.mark.parametrize("fused", [True, False])
def test_a_step_unlike_the_prediction_calls_it_off_and_it_runs_nothing(cluster, fused, monkeypatch):
    """A short last batch is another plan; a forward pass for evaluation another still.  The
    prediction each of them meets is called off: its tasks end without running a level and store
    nothing, and the steps after train as in-process (with one task per level too)."""
    monkeypatch.setattr(dask_runner, "FUSED", fused)

    def evaluate(net, i):
        if i == 3:
            with gt.no_grad():
                net(gt.tensor(np.ones((2, 6)), dtype=gt.float32)).numpy()
    batches = [5] * 6 + [3] + [5] * 6
    want = small_mlp.in_process(lambda: _loop(batches, evaluate))
    before = small_mlp.runner_stats()
    got = _loop(batches, evaluate)
    after = small_mlp.runner_stats()
    _same(got, want)
    assert after["predictions_missed"] - before["predictions_missed"] >= 1
    assert after["predictions_taken"] - before["predictions_taken"] >= 3
    off = [t for ts in cluster.run(_called_off).values() for t in ts]
    assert off
    assert not any(keys for t in set(off) for keys in cluster.run(_left_by, t).values())


def test_a_parameter_set_by_hand_between_steps_is_read_by_the_next_step(cluster):
    """The next step reads the parameter the user wrote, not the one the prediction named."""
    def halve(net, i):
        if i == 3:
            w = net[0].weight
            with gt.no_grad():
                w.data = w.numpy() * 0.5
    want = small_mlp.in_process(lambda: _loop([5] * 7, halve))
    before = small_mlp.runner_stats()
    got = _loop([5] * 7, halve)
    _same(got, want)
    assert small_mlp.runner_stats()["predictions_missed"] > before["predictions_missed"]


def test_a_kernel_error_in_a_predicted_step_surfaces_at_its_read(cluster):
    """Labels known only when the step runs (scaled by a data tensor) fall out of range in a step
    run from its prediction: the read raises the kernel's error, as in-process."""
    net = small_mlp.model()
    opt = gt.optim.SGD(net.parameters(), lr=0.1)
    rng = np.random.default_rng(4)

    def step(scale):
        x = gt.tensor(rng.standard_normal((5, 6)), dtype=gt.float32)
        y = gt.tensor(np.array([0, 1, 2, 1, 0])) * gt.tensor(np.full(5, scale))
        loss = nn.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    for _ in range(4):
        assert np.isfinite(step(1).item())
    taken = small_mlp.runner_stats()["predictions_taken"]
    loss = step(3)                                            # labels 3 and 6 of 3 classes
    with pytest.raises(ValueError, match="cross_entropy.*label 3 is out of range"):
        loss.item()
    assert small_mlp.runner_stats()["predictions_taken"] == taken + 1
    with pytest.raises(ValueError, match="out of range"):
        net[0].weight.numpy()                                 # its update read the failed step
    _same(_loop([5] * 4), small_mlp.in_process(lambda: _loop([5] * 4)))


def test_gt_speculate_0_submits_each_step_when_it_is_recorded(cluster, monkeypatch):
    monkeypatch.setattr(dask_runner, "SPECULATE", False)
    want = small_mlp.in_process(lambda: _loop([5] * 5))
    before = small_mlp.runner_stats()
    _same(_loop([5] * 5), want)
    assert small_mlp.runner_stats()["predictions_taken"] == before["predictions_taken"]


def test_the_batch_of_a_predicted_step_goes_straight_to_the_workers(cluster):
    """Small batches too: a step submitted when it is recorded carries them inside its tasks."""
    net = small_mlp.model()
    opt = gt.optim.SGD(net.parameters(), lr=0.1)
    rng = np.random.default_rng(1)
    for _ in range(4):
        small_mlp.step(net, opt, rng).item()
    before = small_mlp.runner_stats()
    small_mlp.step(net, opt, rng).item()
    after = small_mlp.runner_stats()
    assert after["predictions_taken"] == before["predictions_taken"] + 1
    batch = 5 * 6 * 4 + 5 * 8                   # x float32, y int64
    assert after["direct_bytes"] - before["direct_bytes"] >= 2 * batch * 0.5


def test_a_confirmation_that_fails_calls_its_prediction_off_and_training_goes_on(cluster, monkeypatch):
    """The client fails to build the message confirming a predicted step (here: out of memory, once).
    The prediction is called off, not left waiting for a go-ahead that would hold up every later
    step: the step runs again as recorded, later steps are predicted again, and the loop ends with
    the in-process results."""
    failed, pack = [], dask_runner.pack

    def pack_failing_once(arrays):
        if not failed and len(arrays) and arrays[-1] is dask_runner._GO_VALUE:
            failed.append(True)
            raise MemoryError("no memory for the batch")
        return pack(arrays)
    want = small_mlp.in_process(lambda: _loop([5] * 9))
    monkeypatch.setattr(dask_runner, "pack", pack_failing_once)
    before = small_mlp.runner_stats()
    _same(_loop([5] * 9), want)
    assert failed and small_mlp.runner_stats()["predictions_taken"] > before["predictions_taken"]


def test_leaving_the_cluster_submits_no_predicted_step(cluster):
    """gt.shutdown() brings values home through reads, which may run the last, unread step; they
    submit no step ahead of it (last test: it leaves the module's cluster)."""
    def train():
        net = small_mlp.model()
        opt = gt.optim.SGD(net.parameters(), lr=0.1)
        rng = np.random.default_rng(2)
        for i in range(5):
            loss = small_mlp.step(net, opt, rng)
            if i < 4:
                loss.item()
        return net
    want = small_mlp.in_process(train)[0].weight.numpy()
    net = train()
    runner = current_mesh().runner
    gt.shutdown()
    assert runner._prediction is None and runner._deferred is None
    np.testing.assert_allclose(net[0].weight.numpy(), want, rtol=1e-5, atol=1e-6)
