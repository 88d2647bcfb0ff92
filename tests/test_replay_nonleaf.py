"""Replay of steps that hold non-leaf results (the usual training loop keeps `logits` for its
accuracy): GT gives each of them a .grad, and a replayed step sets the same gradients as a
recorded one; a step that holds other results, or accumulates into an earlier .grad, is recorded."""
import numpy as np

import gtnumba as gt
from gtnumba import nn
from gtnumba.sched import replay

F32 = np.float32


def _model():
    gt.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _step(model, opt, x, y, hold_hidden=False):
    hidden = model[1](model[0](x)) if hold_hidden else None
    logits = model[2](hidden) if hold_hidden else model(x)     # the same ops; `hidden` held or not
    loss = nn.cross_entropy(logits, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    grads = [logits.grad.numpy(), hidden.grad.numpy() if hold_hidden else None]
    return loss.item(), grads, (logits.argmax(axis=-1) == y).sum().item()


def _run(enabled, pattern):
    saved = replay.enabled()
    replay.set_enabled(enabled)
    try:
        model = _model()
        opt = gt.optim.Adam(model.parameters(), lr=0.05)
        rng = np.random.default_rng(3)
        x, y = gt.tensor(rng.standard_normal((4, 6)).astype(F32)), gt.tensor(rng.integers(0, 3, 4))
        s0 = dict(replay.STATS)
        out = [_step(model, opt, x, y, hold) for hold in pattern]
        counts = {k: replay.STATS[k] - s0[k] for k in ("replayed", "diverged")}
        return out, [p.numpy() for p in model.parameters()], counts
    finally:
        replay.set_enabled(saved)


def _same(a, b):
    for (la, ga, ca), (lb, gb, cb) in zip(a[0], b[0]):
        assert la == lb and ca == cb
        for u, v in zip(ga, gb):
            assert (u is None and v is None) or np.array_equal(u, v)
    for p, q in zip(a[1], b[1]):
        np.testing.assert_array_equal(p, q)


def test_a_step_holding_logits_is_replayed_with_its_non_leaf_grads():
    pattern = [False] * 6
    got, ref = _run(True, pattern), _run(False, pattern)
    _same(got, ref)
    assert got[2]["replayed"] >= 3, got[2]


def test_holding_another_result_is_recorded_again_with_its_grad():
    pattern = [False, False, False, True, False, False]
    got, ref = _run(True, pattern), _run(False, pattern)
    _same(got, ref)
    assert got[2]["diverged"] >= 1 and got[2]["replayed"] >= 2, got[2]


def test_a_grad_accumulated_over_two_backwards_matches_recording():
    def run(enabled):
        saved = replay.enabled()
        replay.set_enabled(enabled)
        try:
            w = gt.tensor(np.array([1.0, -2.0, 0.5], F32), requires_grad=True)
            out = []
            for _ in range(4):
                y = w * 3.0
                (y * y).sum().backward(retain_graph=True)
                y.sum().backward()
                out.append((y.grad.numpy(), w.grad.numpy()))
                w.grad = None
            return out
        finally:
            replay.set_enabled(saved)
    for (a, b), (c, d) in zip(run(True), run(False)):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
