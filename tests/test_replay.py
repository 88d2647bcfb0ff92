"""Replay and memory-planned plans: a repeated step is recognized while it is recorded and run from
its cached plan (bit-identical to recording it afresh), a step that diverges midway is recorded
normally, backward of a recognized step runs no gradient rule, a smaller last batch gets its own
plan, a steady-state step allocates no parameter-sized array, and nothing a live tensor holds is
ever overwritten."""
import contextlib
import tracemalloc

import numpy as np
import pytest

import gtnumba as gt
from gtnumba import graph, nn, optim, sched
from gtnumba.sched import replay
from gt_style_model import B, C, E, S, gt_forward, init_params

F32 = np.float32


@contextlib.contextmanager
def replaying(flag):
    saved = replay.enabled()
    replay.set_enabled(flag)
    try:
        yield
    finally:
        replay.set_enabled(saved)


def _gt_params(seed=0):
    return {k: gt.tensor(v.astype(F32), requires_grad=True) for k, v in init_params(seed).items()}


def _gt_data(seed, batch=B):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, S, E)).astype(F32)
    return gt.tensor(x), gt.tensor(np.eye(C, dtype=F32)[rng.integers(0, C, batch)])


def _gt_sgd_step(P, x, y, lr=0.05):
    loss = gt_forward(P, x, y)
    loss.backward()
    with gt.no_grad():
        for t in P.values():
            t -= lr * t.grad
            t.grad.zero_()
    return loss.item()


def _gt_training(steps, vary=None):
    P = _gt_params()
    x, y = _gt_data(1)
    step = vary or (lambda i, *args: _gt_sgd_step(*args))
    losses = [step(i, P, x, y) for i in range(steps)]
    return losses, {k: t.numpy() for k, t in P.items()}


def _same(a, b):
    la, pa = a
    lb, pb = b
    assert la == lb
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def test_gt_style_replay_is_bit_identical_to_fresh_recording():
    with replaying(False):
        fresh = _gt_training(12)
    before = replay.STATS["replayed"]
    with replaying(True):
        replayed = _gt_training(12)
    assert replay.STATS["replayed"] - before >= 9
    _same(fresh, replayed)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(6, 16), nn.LayerNorm(16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)).relu())


def _nn_training(make_opt, steps=10):
    gt.manual_seed(0)
    net = _Net()
    opt = make_opt(net.parameters())
    rng = np.random.default_rng(2)
    x = gt.tensor(rng.standard_normal((5, 6)).astype(F32))
    labels = gt.tensor(rng.integers(0, 3, 5))
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {str(i): p.numpy() for i, p in enumerate(net.parameters())}


@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.01),
    lambda ps: optim.AdamW(ps, lr=0.01),
], ids=["sgd-momentum", "adam", "adamw"])
def test_nn_optim_replay_is_bit_identical_to_fresh_recording(make_opt):
    with replaying(False):
        fresh = _nn_training(make_opt)
    before = replay.STATS["replayed"]
    with replaying(True):
        replayed = _nn_training(make_opt)
    assert replay.STATS["replayed"] - before >= 6
    _same(fresh, replayed)


def _diverging_step(i, P, x, y, read_first=False):
    """Steps 5 and 8 differ midway: an extra op in the forward, then a parameter left out of the
    update; the rest of the time the step repeats.  `read_first`: the loss is read before
    backward() (as some GT users do), so a step's graph spans two segments."""
    loss = gt_forward(P, x, y)
    value = loss.item() if read_first else None
    if i == 5:
        loss = loss + 0.01 * (P["q_w"] ** 2).sum()
    loss.backward()
    with gt.no_grad():
        for k, t in P.items():
            if i == 8 and k == "cls_b":
                continue
            t -= 0.05 * t.grad
            t.grad.zero_()
    return loss.item() if value is None else value


def test_divergence_midway_falls_back_to_normal_recording():
    with replaying(False):
        fresh = _gt_training(12, _diverging_step)
    diverged = replay.STATS["diverged"]
    with replaying(True):
        replayed = _gt_training(12, _diverging_step)
    assert replay.STATS["diverged"] > diverged
    _same(fresh, replayed)


def test_backward_of_a_recognized_step_runs_no_gradient_rule():
    P = _gt_params()
    x, y = _gt_data(1)
    for _ in range(4):
        _gt_sgd_step(P, x, y)
    # the gradients were zeroed by zero_() (not read: a read would compute the lazy zeros, and a
    # step meeting computed gradients is another step, recorded once)
    zeroed = {k: np.zeros(t.shape, t.numpy().dtype) for k, t in P.items()}
    loss = gt_forward(P, x, y)
    rules, recorded = replay.STATS["grad_rules"], replay.STATS["recorded_nodes"]
    built = replay.STATS["replayed_nodes"]
    first = next(graph._SEQ)
    loss.backward()
    made = next(graph._SEQ) - first - 1
    assert replay.STATS["grad_rules"] == rules          # no gradient rule ran
    assert replay.STATS["recorded_nodes"] == recorded   # nothing was recorded anew
    assert replay.STATS["replayed_nodes"] - built == len(P)
    assert made == 1 + len(P)     # the seed gradient (ones) and one node per .grad, nothing else
    with replaying(False):                              # and it is the graph recording builds
        Q = {k: gt.tensor(t.numpy(), requires_grad=True) for k, t in P.items()}
        for k in Q:
            Q[k].grad = gt.tensor(zeroed[k])
        gt_forward(Q, x, y).backward()
    for k in P:
        np.testing.assert_array_equal(P[k].grad.numpy(), Q[k].grad.numpy(), err_msg=k)


def test_smaller_last_batch_gets_its_own_plan():
    P = _gt_params()
    batches = [_gt_data(s, b) for s, b in ((1, 2), (2, 2), (3, 1))]

    def epoch():
        import gt_style_model as m
        for x, y in batches:
            m.B = x.shape[0]
            try:
                _gt_sgd_step(P, x, y)
            finally:
                m.B = B
    for _ in range(2):
        epoch()
    built, replayed = sched.STATS["plans_built"], replay.STATS["replayed"]
    for _ in range(3):
        epoch()
    assert sched.STATS["plans_built"] == built
    assert replay.STATS["replayed"] - replayed == 9       # every step of the last 3 epochs


def _big_model(opt_kind, n=3000, d=48):
    rng = np.random.default_rng(0)
    w = gt.tensor((rng.standard_normal((n, d)) / 50).astype(F32), requires_grad=True)
    b = gt.tensor(np.zeros(d, F32), requires_grad=True)
    x = gt.tensor(rng.random((4, n), dtype=F32))
    opt = None if opt_kind == "gt" else (optim.SGD([w, b], lr=0.1, momentum=0.9) if opt_kind == "sgd"
                                         else optim.Adam([w, b], lr=1e-3))

    def step():
        nonlocal w, b
        loss = ((x @ w + b).tanh() ** 2).mean()
        if opt is not None:
            opt.zero_grad()
        loss.backward()
        if opt is None:
            with gt.no_grad():
                w -= 0.1 * w.grad
                b -= 0.1 * b.grad
                w.grad.zero_()
                b.grad.zero_()
        else:
            opt.step()
        return loss.item()
    return w, step


@pytest.mark.parametrize("opt_kind", ["gt", "sgd", "adam"])
def test_steady_state_step_allocates_no_parameter_sized_array(opt_kind):
    w, step = _big_model(opt_kind)
    for _ in range(4):
        step()
    tracemalloc.start()
    try:
        step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < w.numpy().nbytes // 2, f"a steady-state step allocated {peak} bytes at its peak"


def test_a_held_value_is_never_overwritten():
    w, step = _big_model("gt", n=64, d=8)
    for _ in range(3):
        step()
    held = w.detach()                 # shares w's array
    view = w.reshape(-1)              # a view of it, computed in the next plan
    grad = w.grad                     # the zeroed gradient the next step accumulates into
    copies = (held.numpy(), w.numpy(), grad.numpy())
    for _ in range(4):
        step()
    np.testing.assert_array_equal(held.numpy(), copies[0])
    np.testing.assert_array_equal(view.numpy(), copies[1].reshape(-1))
    np.testing.assert_array_equal(grad.numpy(), copies[2])
    assert not np.array_equal(w.numpy(), copies[1])       # while w itself did train


def test_an_old_parameter_value_survives_when_held_by_a_tensor():
    w, step = _big_model("sgd", n=64, d=8)
    step()
    step()
    olds = []
    for _ in range(4):
        olds.append((gt.Tensor._wrap(w._node), w.numpy()))   # the very node the next step replaces
        step()
    for t, want in olds:
        np.testing.assert_array_equal(t.numpy(), want)


def test_failed_replayed_step_leaves_its_inputs_intact():
    P = _gt_params()
    x, y = _gt_data(1)
    for _ in range(4):
        _gt_sgd_step(P, x, y)
    before = {k: t.numpy() for k, t in P.items()}
    loss = gt_forward(P, x, y)
    bad = x[gt.tensor(np.array([0, 7])) + 0]    # index out of range (known only when run): the plan fails
    with pytest.raises(IndexError):
        bad.numpy()
    assert np.isfinite(loss.item())             # computed on its own after the joint plan failed
    for k, t in P.items():
        np.testing.assert_array_equal(t.numpy(), before[k], err_msg=k)


def test_mesh_gets_the_same_cached_key_object_on_replayed_steps(monkeypatch):
    import importlib
    M = importlib.import_module("gtnumba.sched.materialize")
    from gtnumba.sched.mesh import Mesh, set_mesh
    from gtnumba.sched.spmd import InProcessRunner
    keys, real = [], M.compute_on_mesh

    def spy(mesh, order, key, leaves):
        keys.append(key)
        return real(mesh, order, key, leaves)
    monkeypatch.setattr(M, "compute_on_mesh", spy)
    with replaying(False):
        want = _gt_training(6)
    set_mesh(Mesh(2, InProcessRunner(2)))
    try:
        got = _gt_training(6)
    finally:
        set_mesh(None)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    assert keys[-1] is keys[-2] is keys[-3]


def _mixed_step(i, P, x, y):
    """A loss read before backward (two materializations per step), a retained graph run twice,
    an explicit output gradient, and an evaluation pass under no_grad every third step."""
    if i % 3 == 2:
        with gt.no_grad():
            return gt_forward(P, x, y).item()
    loss = gt_forward(P, x, y)
    first = loss.item()
    loss.backward(retain_graph=True)
    (loss * 0.5).backward(gt.tensor(np.float32(1.0)))
    with gt.no_grad():
        for t in P.values():
            t -= 0.02 * t.grad
            t.grad = None
    return first


def test_reads_retained_graphs_and_eval_steps_replay_like_fresh_recording():
    with replaying(False):
        fresh = _gt_training(10, _mixed_step)
    before = replay.STATS["replayed"]
    with replaying(True):
        replayed = _gt_training(10, _mixed_step)
    assert replay.STATS["replayed"] > before
    _same(fresh, replayed)


def test_lr_schedule_keeps_replaying():
    def run():
        gt.manual_seed(0)
        net = _Net()
        opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        sched_ = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        x = gt.tensor(np.random.default_rng(5).standard_normal((4, 6)).astype(F32))
        out = []
        for _ in range(8):
            opt.zero_grad()
            loss = (net(x) ** 2).mean()
            loss.backward()
            opt.step()
            sched_.step()
            out.append(loss.item())
        return out, {str(i): p.numpy() for i, p in enumerate(net.parameters())}
    with replaying(False):
        fresh = run()
    before = replay.STATS["replayed"]
    with replaying(True):
        replayed = run()
    assert replay.STATS["replayed"] - before >= 5
    _same(fresh, replayed)


def test_a_backend_binder_binds_each_plan_once_at_its_first_run(monkeypatch):
    from gtnumba.sched import executor
    bound, runs_at_bind = [], []

    def bind(plan):
        bound.append(plan)
        runs_at_bind.append(plan.runs)
        return None                     # keep the generated code
    monkeypatch.setitem(executor.BINDERS, "cpu", bind)
    w = gt.tensor(np.ones((7, 5), F32), requires_grad=True)     # a structure no other test builds
    x = gt.tensor(np.full((3, 7), 0.1, F32))
    for _ in range(5):
        loss = (x @ w).tanh().sum()
        loss.backward()
        with gt.no_grad():
            w -= 0.1 * w.grad
            w.grad.zero_()
        loss.item()
    assert bound and runs_at_bind == [1] * len(bound)
    assert any(plan.runs >= 2 for plan in bound)        # replayed plans are not bound again
    assert len(bound) == len({id(p) for p in bound})   # once per plan


def test_pending_leftovers_of_a_failed_read_do_not_stop_replay():
    """A failed read leaves its root's inputs pending while the exception holds them: they are
    no one's tensors, so the steps after it are still replayed."""
    P = _gt_params()
    x, y = _gt_data(1)
    for _ in range(3):
        _gt_sgd_step(P, x, y)
    bad = x[gt.tensor(np.array([0, 7])) + 0]
    with pytest.raises(IndexError) as info:
        bad.numpy()
    del bad
    before = replay.STATS["replayed"]
    for _ in range(4):
        _gt_sgd_step(P, x, y)
    assert replay.STATS["replayed"] - before >= 3
    assert info.value is not None          # the leftovers stay alive until here


def _read_first_step(i, P, x, y):
    return _diverging_step(i, P, x, y, read_first=True)


def test_loss_read_before_backward_is_replayed_bit_identically():
    with replaying(False):
        fresh = _gt_training(16, _read_first_step)
    before = dict(replay.STATS)
    with replaying(True):
        replayed = _gt_training(16, _read_first_step)
    # a segment names the graph it back-propagates through by positions in the segment before:
    # from the 4th segment after a change the traces repeat
    assert replay.STATS["replayed"] - before["replayed"] >= 4
    assert replay.STATS["diverged"] - before["diverged"] >= 2      # the steps that differ fall back
    _same(fresh, replayed)


def test_second_backward_through_a_replayed_read_first_step_raises():
    P = _gt_params()
    x, y = _gt_data(1)
    for i in range(5):
        _read_first_step(i, P, x, y)
    loss = gt_forward(P, x, y)
    loss.item()
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through a graph a second time"):
        loss.backward()


def test_a_zeroed_gradient_stays_lazy_and_the_next_backward_replaces_it():
    """zero_() after the update is not computed by the step (nothing reads it): the next backward
    replaces the pending zeros by its gradient instead of adding to them, training exactly as
    computing zeros and adding to them would; a read still gives zeros."""
    P = _gt_params()
    x, y = _gt_data(1)
    got = [_gt_sgd_step(P, x, y) for _ in range(4)]
    assert all(t.grad._node.op == "fill" and t.grad._node.value is None for t in P.values())
    Q = _gt_params()
    want = []
    for _ in range(4):
        loss = gt_forward(Q, x, y)
        loss.backward()
        with gt.no_grad():
            for t in Q.values():
                t -= 0.05 * t.grad
                t.grad.zero_()
                t.grad.numpy()                     # computed zeros: the next backward adds to them
        want.append(loss.item())
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for k in P:
        np.testing.assert_allclose(P[k].numpy(), Q[k].numpy(), rtol=1e-12, atol=1e-15, err_msg=k)
        assert not P[k].grad.numpy().any()
