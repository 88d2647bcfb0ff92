"""Every op row on a mesh of 1, 2 and 3 in-process workers (uneven shards included) gives the
values and gradients of the single-process run; so does a GT-style training run."""
import zlib

import numpy as np
import pytest

import gtnumba as gt
import small_mlp
from gtnumba.layout import Partial, Replicate, Shard
from gtnumba.ops import OPS
from gtnumba.sched.mesh import Flat, Mesh, set_mesh
from gtnumba.sched.spmd import InProcessRunner
from gtnumba._tensor import apply


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def test_every_row_has_a_sharding_rule():
    missing = [name for name, row in OPS.items() if not callable(row.shard)]
    assert not missing, f"rows without a sharding rule: {missing}"


@pytest.fixture
def mesh():
    def use(workers):
        set_mesh(Mesh(workers, InProcessRunner(workers)) if workers else None)
    yield use
    set_mesh(None)


def _cases():
    out = []
    for name in sorted(OPS):
        row = OPS[name]
        if row.sample is None:
            continue
        for i, _ in enumerate(row.sample(_rng(name))):
            for placement in ("first-dim", "last-dim", "data"):
                out.append(pytest.param(name, i, placement, id=f"{name}-{i}-{placement}"))
    return out


def _run(name, i, placement, workers, mesh):
    """Values and input gradients of row `name` on sample i, with float inputs placed as asked."""
    mesh(workers)
    inputs, attrs = OPS[name].sample(_rng(name))[i]
    row = OPS[name]
    tensors = []
    for j, a in enumerate(inputs):
        a = np.asarray(a)
        if a.dtype.kind == "f":
            t = gt.tensor(a, dtype=gt.float64, requires_grad=row.differentiable)
            if workers and a.ndim and placement != "data":
                t = gt.shard(t, 0 if placement == "first-dim" else a.ndim - 1)
        else:
            t = gt.tensor(a)            # integer/bool data: auto-sharded along dim 0
        tensors.append(t)
    outs = apply(name, *tensors, **attrs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    values = [o.numpy() for o in outs]
    grads = []
    if row.differentiable and outs[0].requires_grad:
        w = _rng(name, i, "w").standard_normal(outs[0].shape)
        (outs[0] * gt.tensor(w, dtype=gt.float64)).sum().backward()
        grads = [t.grad.numpy() if t.grad is not None else None for t in tensors]
    return values, grads


@pytest.mark.parametrize("name,i,placement", _cases())
def test_row_on_two_and_three_workers_matches_one_process(name, i, placement, mesh):
    want_values, want_grads = _run(name, i, placement, 0, mesh)
    for workers in (2, 3):
        values, grads = _run(name, i, placement, workers, mesh)
        for got, want in zip(values, want_values):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12,
                                       err_msg=f"{name} value on {workers} workers")
        for got, want in zip(grads, want_grads):
            if want is None:
                assert got is None
            else:
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12,
                                           err_msg=f"{name} gradient on {workers} workers")


def _train(workers, mesh, steps=5):
    from gt_style_model import C, B, E, S, gt_forward, init_params
    mesh(workers)
    p = init_params(0)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((B + 3, S, E)), np.eye(C)[rng.integers(0, C, B + 3)]
    params = {k: gt.tensor(v, dtype=gt.float64, requires_grad=True) for k, v in p.items()}
    losses = []
    import gt_style_model as m
    m.B = B + 3                   # batch 5: uneven shards on 2 and 3 workers
    try:
        for _ in range(steps):
            loss = gt_forward(params, gt.tensor(x, dtype=gt.float64), gt.tensor(y, dtype=gt.float64))
            loss.backward()
            with gt.no_grad():
                for t in params.values():
                    t -= 0.1 * t.grad
                    t.grad.zero_()
            losses.append(loss.item())
    finally:
        m.B = B
    return losses, {k: v.numpy() for k, v in params.items()}


def test_gt_style_training_matches_across_worker_counts(mesh):
    want_losses, want_params = _train(0, mesh)
    for workers in (1, 2, 3):
        losses, params = _train(workers, mesh)
        np.testing.assert_allclose(losses, want_losses, rtol=1e-12)
        for k in want_params:
            np.testing.assert_allclose(params[k], want_params[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_batch_is_sharded_and_the_update_is_sliced(mesh):
    """Steady state: the batch is Shard(0), every gradient is reduce-scattered in one level, the
    update runs on Flat slices, and the next step gathers the parameters at its start."""
    import importlib
    M = importlib.import_module("gtnumba.sched.plan_cache")
    _train(2, mesh, steps=2)
    plans = [plan for key, plan in M._CACHE.items() if key[0] == "mesh" and key[1] == 2]
    last = plans[-1]
    kinds = {type(layout) for layout in last.layouts.values() if not isinstance(layout, tuple)}
    assert {Shard, Replicate, Partial, Flat} <= kinds
    collectives = [s for s in last.steps if hasattr(s, "kind")]
    scatters = [c for c in collectives if c.kind == "reducescatter"]
    gathers = [c for c in collectives if c.kind == "gather"]
    from gt_style_model import init_params
    assert len(scatters) == len(gathers) == len(init_params(0))     # one per parameter
    assert {c.level for c in scatters} == {1} and {c.level for c in gathers} == {0}
    assert last.n_levels == 2                             # forward-backward, then reduce-and-update
    sizes = [sum(last.layouts[c.out].sizes[w] for c in scatters) for w in range(2)]
    assert abs(sizes[0] - sizes[1]) <= 1                  # one partition over all parameters


def _optimizer_run(workers, mesh, make_opt, batch, steps=4):
    mesh(workers)
    model = small_mlp.model()
    opt = make_opt(model.parameters())
    rng = np.random.default_rng(2)
    losses = [small_mlp.step(model, opt, rng, batch).item() for _ in range(steps)]
    state = {k: np.asarray(v) for k, v in model.state_dict().items()}
    buffers = [np.asarray(t.numpy()) for st in opt.state.values() for t in st.values() if hasattr(t, "numpy")]
    return losses, state, buffers


OPTIMIZERS = {
    "sgd-momentum": lambda p: gt.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda p: gt.optim.Adam(p, lr=0.05, weight_decay=0.01),
    "adamw": lambda p: gt.optim.AdamW(p, lr=0.05),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_sliced_optimizer_state_matches_one_process(name, mesh):
    """Optimizer state lives as 1/W slices (Flat) and gives the single-process parameters, state
    and losses bit for bit; batch 5 is uneven on 2 and 3 workers."""
    want = _optimizer_run(0, mesh, OPTIMIZERS[name], 5)
    for workers in (2, 3):
        got = _optimizer_run(workers, mesh, OPTIMIZERS[name], 5)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
        for k in want[1]:
            np.testing.assert_allclose(got[1][k], want[1][k], rtol=1e-6, atol=1e-7, err_msg=k)
        assert len(got[2]) == len(want[2]) > 0
        for a, b in zip(got[2], want[2]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        mesh(workers)
        from gtnumba.sched import plan_cache
        flats = [p for k, p in plan_cache._CACHE.items() if k[0] == "mesh" and k[1] == workers
                 and any(isinstance(l, Flat) for l in p.layouts.values())]
        assert flats, "the update did not run on slices"


def test_trainable_positional_table_slice_on_sharded_batch(mesh):
    def run(workers):
        mesh(workers)
        rng = np.random.default_rng(3)
        pos = gt.tensor(rng.standard_normal((8, 4)), dtype=gt.float64, requires_grad=True)
        x = gt.tensor(rng.standard_normal((5, 3, 4)), dtype=gt.float64)
        loss = ((x + pos[:3]) ** 2).mean()
        loss.backward()
        return loss.item(), pos.grad.numpy()
    want_loss, want_grad = run(0)
    for workers in (2, 3):
        loss, grad = run(workers)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-12)
    assert np.all(want_grad[3:] == 0) and np.any(want_grad[:3] != 0)


def test_row_and_column_sharded_linear_match_replicated(mesh):
    def run(workers, dim):
        mesh(workers)
        rng = np.random.default_rng(4)
        w = gt.tensor(rng.standard_normal((6, 4)), dtype=gt.float64, requires_grad=True)
        x = gt.replicate(gt.tensor(rng.standard_normal((3, 4)), dtype=gt.float64))
        if workers and dim is not None:
            w = gt.shard(w, dim)
        loss = ((x @ w.T).tanh() ** 2).sum()
        loss.backward()
        with gt.no_grad():
            w -= 0.1 * w.grad
        return loss.item(), w.numpy()
    want = run(0, None)
    for dim in (0, 1):
        got = run(3, dim)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12)


def test_a_lone_workers_collectives_hand_back_its_own_part():
    """One worker's gather or sum is its own part, not a copy (a 1-worker cluster gathered each
    parameter anew every step: a 20 MB copy for the first user's embedding); two parts still join."""
    from gtnumba.sched.spmd import concat, reduce_sum
    a, b = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    assert concat([a], 0) is a and reduce_sum([a]) is a
    np.testing.assert_array_equal(concat([a, b], 1), np.concatenate([a, b], 1))
    np.testing.assert_array_equal(reduce_sum([a, b]), a + b)
