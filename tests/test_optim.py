"""optim: SGD / Adam / AdamW against NumPy loops of PyTorch's formulas, checkpoint resume, lr schedulers,
one cached plan per training step, and a tiny MLP that trains to near-zero loss."""
import math

import numpy as np
import pytest

import gtnumba as gt
from gtnumba import nn, optim
from gtnumba.optim import lr_scheduler
from gtnumba.sched import STATS
from conftest import needs_cuda

F64 = gt.float64
STEPS = 6


def _grads(seed, shape, n=STEPS):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(n)]


def _run(opt_factory, p0, grads, lrs=None):
    p = gt.tensor(p0, dtype=F64, requires_grad=True)
    opt = opt_factory([p])
    for i, g in enumerate(grads):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[i]
        p.grad = gt.tensor(g, dtype=F64)
        opt.step()
        assert p.is_leaf and p.requires_grad
    return p.numpy(), opt


def _sgd_ref(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, lrs=None):
    p, buf = p.copy(), None
    for i, g in enumerate(grads):
        lr_i = lrs[i] if lrs is not None else lr
        d = g + weight_decay * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p - lr_i * d
    return p


def _adam_ref(p, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, 1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


SGD_CASES = [dict(), dict(momentum=0.9), dict(momentum=0.9, dampening=0.3), dict(momentum=0.8, nesterov=True),
             dict(momentum=0.9, weight_decay=0.05, nesterov=True), dict(weight_decay=0.1)]


@pytest.mark.parametrize("kw", SGD_CASES, ids=[str(k) for k in SGD_CASES])
def test_sgd_matches_pytorch_formulas(kw):
    p0 = np.random.default_rng(0).standard_normal((3, 4))
    grads = _grads(1, (3, 4))
    got, _ = _run(lambda ps: optim.SGD(ps, lr=0.1, **kw), p0, grads)
    np.testing.assert_allclose(got, _sgd_ref(p0, grads, 0.1, **kw), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls,kw", [(optim.Adam, {}), (optim.Adam, dict(weight_decay=0.1)),
                                    (optim.Adam, dict(betas=(0.8, 0.99), eps=1e-6)),
                                    (optim.AdamW, {}), (optim.AdamW, dict(weight_decay=0.3))])
def test_adam_and_adamw_match_pytorch_formulas(cls, kw):
    p0 = np.random.default_rng(2).standard_normal((5,))
    grads = _grads(3, (5,))
    got, opt = _run(lambda ps: cls(ps, lr=0.01, **kw), p0, grads)
    decoupled = cls is optim.AdamW
    wd = kw.get("weight_decay", 1e-2 if decoupled else 0.0)
    ref = _adam_ref(p0, grads, 0.01, kw.get("betas", (0.9, 0.999)), kw.get("eps", 1e-8), wd, decoupled)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    assert opt.state_dict()["state"][0]["step"] == STEPS


def test_adam_float32_params_and_real_backward():
    rng = np.random.default_rng(4)
    A, b = rng.standard_normal((6, 3)), rng.standard_normal(6)
    w0 = rng.standard_normal(3)
    w = gt.tensor(w0.astype(np.float32), requires_grad=True)
    opt = optim.Adam([w], lr=0.05)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = ((gt.tensor(A.astype(np.float32)) @ w - gt.tensor(b.astype(np.float32))) ** 2).sum()
        loss.backward()
        opt.step()
    # replay the same steps in float64 NumPy with the exact gradients of the float64 loss
    p = w0.copy()
    m = v = np.zeros(3)
    for t in range(1, STEPS + 1):
        g = 2 * A.T @ (A @ p - b)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 0.05 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(w.numpy(), p, rtol=1e-4, atol=1e-5)
    assert w.dtype == gt.float32


def test_parameters_without_grad_are_skipped_and_groups_have_own_lr():
    a = gt.tensor(np.ones(3), dtype=F64, requires_grad=True)
    b = gt.tensor(np.ones(2), dtype=F64, requires_grad=True)
    c = gt.tensor(np.ones(2), dtype=F64, requires_grad=True)
    opt = optim.SGD([{"params": [a, b]}, {"params": [c], "lr": 0.5}], lr=0.1, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[1]["momentum"] == 0.9
    a.grad = gt.ones(3, dtype=F64)
    c.grad = gt.ones(2, dtype=F64)
    opt.step()
    np.testing.assert_allclose(a.numpy(), 0.9)
    np.testing.assert_array_equal(b.numpy(), 1.0)           # no grad: untouched, no state
    np.testing.assert_allclose(c.numpy(), 0.5)
    assert b not in opt.state and a in opt.state
    opt.zero_grad()
    assert a.grad is None and c.grad is None


def test_optimizer_errors():
    p = gt.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="SGD: invalid learning rate -0.1"):
        optim.SGD([p], lr=-0.1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(ValueError, match="beta2"):
        optim.Adam([p], betas=(0.9, 1.5))
    with pytest.raises(ValueError, match=r"requires_grad=True"):
        optim.SGD([gt.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="more than one param group"):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(TypeError, match="single Tensor"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="required hyper-parameter 'lr'"):
        optim.SGD([p])


def test_module_parameters_and_modules_are_accepted():
    lin = nn.Linear(2, 2)
    opt = optim.SGD(lin, lr=0.1)
    assert len(opt.param_groups[0]["params"]) == 2


# ---- checkpoint and resume ------------------------------------------------------------------------
def _data():
    rng = np.random.default_rng(0)
    return gt.tensor(rng.standard_normal((16, 3))), gt.tensor(rng.integers(0, 2, 16))


def _train(model, opt, sched, x, y, n):
    for _ in range(n):
        opt.zero_grad()
        nn.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()


@pytest.mark.parametrize("make_opt", [lambda ps: optim.AdamW(ps, lr=0.02),
                                      lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True)],
                         ids=["adamw", "sgd"])
def test_optimizer_state_dict_resume_is_exact(make_opt):
    x, y = _data()

    def build(seed):
        gt.manual_seed(seed)
        m = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        o = make_opt(m.parameters())
        return m, o, lr_scheduler.StepLR(o, step_size=2, gamma=0.5)

    model, opt, sched = build(0)
    _train(model, opt, sched, x, y, 3)
    ckpt = (model.state_dict(), opt.state_dict(), sched.state_dict())
    _train(model, opt, sched, x, y, 3)
    expected = model.state_dict()

    model2, opt2, sched2 = build(1)                       # different init, then restored
    model2.load_state_dict(ckpt[0])
    opt2.load_state_dict(ckpt[1])
    sched2.load_state_dict(ckpt[2])
    _train(model2, opt2, sched2, x, y, 3)
    for k, v in model2.state_dict().items():
        np.testing.assert_array_equal(v, expected[k], err_msg=k)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_optimizer_state_dict_contents_and_load_errors():
    p = gt.tensor(np.ones(3), dtype=F64, requires_grad=True)
    opt = optim.Adam([p], lr=0.1)
    p.grad = gt.ones(3, dtype=F64)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["lr"] == 0.1 and sd["param_groups"][0]["params"] == [0]
    st = sd["state"][0]
    assert st["step"] == 1 and isinstance(st["exp_avg"], np.ndarray) and st["exp_avg"].shape == (3,)
    sd["param_groups"][0]["lr"] = 123.0                    # a copy
    assert opt.param_groups[0]["lr"] == 0.1
    q = gt.tensor(np.ones(4), dtype=F64, requires_grad=True)
    other = optim.Adam([q], lr=0.1)
    with pytest.raises(ValueError, match=r"exp_avg.*\(3,\).*\(4,\)"):
        other.load_state_dict(opt.state_dict())
    assert other.state == {}
    two = optim.Adam([q, p])
    with pytest.raises(ValueError, match="group 0 has 2 parameters.*has 1"):
        two.load_state_dict(opt.state_dict())


# ---- schedulers --------------------------------------------------------------------------------------
def _lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        assert sched.get_last_lr() == [out[-1]]
        sched.step()
    return out


def _opt(lr=0.1):
    return optim.SGD([gt.zeros(1, requires_grad=True)], lr=lr)


def test_step_lr_sequence():
    o = _opt()
    np.testing.assert_allclose(_lrs(lr_scheduler.StepLR(o, step_size=3, gamma=0.5), o, 8),
                               [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025])


def test_lambda_lr_sequence():
    o = _opt(0.2)
    s = lr_scheduler.LambdaLR(o, lambda e: 1.0 / (e + 1))
    np.testing.assert_allclose(_lrs(s, o, 4), [0.2, 0.1, 0.2 / 3, 0.05])
    assert "lr_lambdas" not in s.state_dict()


def test_cosine_annealing_sequence():
    o = _opt(1.0)
    s = lr_scheduler.CosineAnnealingLR(o, T_max=4, eta_min=0.1)
    ref = [0.1 + 0.9 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(5)]
    np.testing.assert_allclose(_lrs(s, o, 5), ref)
    np.testing.assert_allclose(ref[2], 0.55)


def test_warmup_cosine_sequence():
    o = _opt(1.0)
    s = optim.warmup_cosine(o, warmup_steps=2, total_steps=6, min_lr=0.1)
    got = _lrs(s, o, 8)
    cos = [0.1 + 0.9 * (1 + math.cos(math.pi * t / 4)) / 2 for t in (1, 2, 3, 4)]
    np.testing.assert_allclose(got, [0.5, 1.0] + cos + [0.1, 0.1])
    assert got[5] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="total_steps"):
        optim.warmup_cosine(_opt(), 5, 3)


def test_changing_lr_keeps_one_cached_plan_per_step_and_matches_numpy():
    x_np = np.random.default_rng(0).standard_normal((8, 3))
    gt.manual_seed(0)
    lin = nn.Linear(3, 1, dtype=F64)
    w0, b0 = lin.weight.numpy(), lin.bias.numpy()
    opt = optim.SGD(lin.parameters(), lr=0.1, momentum=0.5)
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    x = gt.tensor(x_np, dtype=F64)
    built, lrs = [], []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        (lin(x) ** 2).mean().backward()
        opt.step()
        sched.step()
        built.append(STATS["plans_built"])
    assert built[2] == built[-1], "a changing lr must not trigger new plans"
    # NumPy replay
    w, b, bw, bb = w0.copy(), b0.copy(), None, None
    for lr in lrs:
        r = x_np @ w.T + b
        gw, gb = (2 * r / len(r)).T @ x_np, (2 * r / len(r)).sum(0)
        bw = gw if bw is None else 0.5 * bw + gw
        bb = gb if bb is None else 0.5 * bb + gb
        w, b = w - lr * bw, b - lr * bb
    np.testing.assert_allclose(lin.weight.numpy(), w, rtol=1e-12)
    np.testing.assert_allclose(lin.bias.numpy(), b, rtol=1e-12)


# ---- end to end ---------------------------------------------------------------------------------
def test_tiny_mlp_classification_trains_to_near_zero_loss():
    gt.manual_seed(0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 2)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)              # XOR-like quadrants
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = optim.Adam(model.parameters(), lr=0.02)
    sched = optim.warmup_cosine(opt, 10, 300, min_lr=1e-3)
    xt, yt = gt.tensor(X), gt.tensor(y)
    for _ in range(300):
        loss = nn.cross_entropy(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    final = nn.cross_entropy(model(xt), yt).item()
    acc = (model(xt).numpy().argmax(1) == y).mean()
    assert final < 0.05 and acc == 1.0


class _AttnNet(nn.Module):
    def __init__(self, e=8, heads=2, classes=4):
        super().__init__()
        self.ln = nn.LayerNorm(e, dtype=F64)
        self.attn = nn.MultiHeadAttention(e, heads, dtype=F64)
        self.head = nn.Linear(e, classes, dtype=F64)

    def forward(self, x):
        return self.head((x + self.attn(self.ln(x))).mean(axis=1))


@needs_cuda
def test_adam_step_count_stays_on_the_device_and_a_step_copies_only_data_and_loss():
    """Simulated CUDA: a steady-state step of an nn model + AdamW that reads only its loss copies
    the loss back (1 device->host) and sends only its new data (x, labels: 2 host->device); Adam's
    step count is incremented on the device.  The run matches the CPU backend's losses."""
    from gtnumba.kernels import backend
    from gtnumba.kernels.cuda import memory
    rng = np.random.default_rng(3)
    data = [(rng.standard_normal((2, 3, 8)), rng.integers(0, 4, 2)) for _ in range(4)]
    gt.manual_seed(0)
    state = dict(_AttnNet().state_dict())

    def train(device):
        saved = backend._current
        gt.set_device(device)
        try:
            model = _AttnNet()
            model.load_state_dict(state)
            opt, loss_fn, out = optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01), nn.CrossEntropyLoss(), []
            for x, labels in data:
                before = dict(memory.COPIES)
                opt.zero_grad()
                loss = loss_fn(model(gt.tensor(x, dtype=F64)), gt.tensor(labels))
                loss.backward()
                opt.step()
                out.append((loss.item(), {k: memory.COPIES[k] - before[k] for k in ("h2d", "d2h")}))
            return out
        finally:
            backend._current = saved
    cpu, dev = train("cpu"), train("cuda")
    np.testing.assert_allclose([c[0] for c in dev], [c[0] for c in cpu], rtol=1e-9)
    assert cpu[0][0] != cpu[-1][0]
    for _, copies in dev[1:]:
        assert copies == {"h2d": 2, "d2h": 1}, copies
