"""Training on the CUDA backend end to end, in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) or on
a real GPU: every op row has a "cuda" kernel, so `gt.set_device("cuda")` runs whole training steps
on the device, and they match the CPU backend.

- the GT-style transformer (tests/gt_style_model.py, raw tensors): forward, backward and a manual
  SGD update under no_grad give the CPU backend's loss, gradients and new parameters (float64);
- an nn model (Linear, LayerNorm, MultiHeadAttention, GELU, CrossEntropyLoss) with optim.SGD
  (momentum, Nesterov, weight decay) and optim.AdamW: two steps each give the CPU's losses and
  parameters.
"""
import importlib

import numpy as np
import pytest
from numba import cuda

import gtnumba as gt
from gtnumba import nn, optim
from gtnumba.kernels import backend
from gtnumba.ops import OPS
from gt_style_model import B, C, E, H, S, gt_forward, init_params
from conftest import dev as _dev, host as _host, needs_cuda, rng as _rng  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("fast_simulator")

RTOL = 1e-9


def _on(device):
    """Switch the backend; the caller restores the previous one in a finally."""
    gt.set_device(device)


def _restore(saved):
    backend._current = saved
    cache = importlib.import_module("gtnumba.sched.plan_cache")._CACHE
    for key in [k for k in cache if "cuda" in k[:3]]:
        del cache[key]


def _on_device(t):
    from gtnumba.kernels.cuda import runtime
    return runtime.is_device_array(t._node.value)


def test_every_op_row_has_a_cuda_kernel():
    missing = [n for n, r in OPS.items() if "cuda" not in r.kernels]
    assert not missing, f"op rows without a 'cuda' kernel: {missing}"
    assert backend.cuda_complete()


def _data(seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, S, E)), np.eye(C)[rng.integers(0, C, B)]


def _gt_style_step(device, p, x, y, lr=0.05):
    saved = backend._current
    try:
        _on(device)
        P = {k: gt.tensor(v, dtype=gt.float64, requires_grad=True) for k, v in p.items()}
        loss = gt_forward(P, gt.tensor(x, dtype=gt.float64), gt.tensor(y, dtype=gt.float64))
        loss.backward()
        grads = {k: t.grad.numpy() for k, t in P.items()}
        if device == "cuda":
            assert _on_device(loss) and all(_on_device(t.grad) for t in P.values())
        with gt.no_grad():
            for t in P.values():
                t -= lr * t.grad
        new = {k: t.numpy() for k, t in P.items()}
        if device == "cuda":
            assert all(_on_device(t) for t in P.values())
        return loss.item(), grads, new
    finally:
        _restore(saved)


@needs_cuda
def test_gt_style_training_step_matches_cpu():
    assert (B, S, E, H) == (2, 3, 8, 2)
    p = init_params(0)
    x, y = _data(1)
    cpu_loss, cpu_grads, cpu_new = _gt_style_step("cpu", p, x, y)
    cuda_loss, cuda_grads, cuda_new = _gt_style_step("cuda", p, x, y)
    np.testing.assert_allclose(cuda_loss, cpu_loss, rtol=RTOL)
    assert set(cuda_grads) == set(cpu_grads) == set(p)
    for k in p:
        np.testing.assert_allclose(cuda_grads[k], cpu_grads[k], rtol=RTOL, atol=1e-13, err_msg=f"grad {k}")
        np.testing.assert_allclose(cuda_new[k], cpu_new[k], rtol=RTOL, atol=1e-13, err_msg=f"param {k}")


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(E, dtype=gt.float64)
        self.attn = nn.MultiHeadAttention(E, H, dtype=gt.float64)
        self.ff = nn.Linear(E, E, dtype=gt.float64)
        self.act = nn.GELU()
        self.head = nn.Linear(E, C, dtype=gt.float64)

    def forward(self, x):
        h = x + self.attn(self.ln(x))
        h = h + self.act(self.ff(h))
        return self.head(h.mean(axis=1))


def _nn_steps(device, make_opt, x, labels, state):
    saved = backend._current
    try:
        _on(device)
        model = _Tiny()
        model.load_state_dict(state)
        opt = make_opt(model.parameters())
        loss_fn = nn.CrossEntropyLoss()
        xt, lt = gt.tensor(x, dtype=gt.float64), gt.tensor(labels)
        losses = []
        for _ in range(2):
            opt.zero_grad()
            loss = loss_fn(model(xt), lt)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        params = dict(model.state_dict())
        if device == "cuda":
            assert all(_on_device(p) for p in model.parameters())
        return losses, params
    finally:
        _restore(saved)


@needs_cuda
@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.02),
], ids=["sgd", "adamw"])
def test_nn_optim_steps_match_cpu(make_opt):
    rng = np.random.default_rng(5)
    x, labels = rng.standard_normal((B, S, E)), rng.integers(0, C, B)
    gt.manual_seed(0)
    state = dict(_Tiny().state_dict())
    cpu_losses, cpu_params = _nn_steps("cpu", make_opt, x, labels, state)
    cuda_losses, cuda_params = _nn_steps("cuda", make_opt, x, labels, state)
    np.testing.assert_allclose(cuda_losses, cpu_losses, rtol=RTOL)
    assert cpu_losses[1] != cpu_losses[0]
    for k in cpu_params:
        assert not np.array_equal(cpu_params[k], state[k]), f"{k} did not change"
        np.testing.assert_allclose(cuda_params[k], cpu_params[k], rtol=RTOL, atol=1e-13, err_msg=k)
