"""GPU checks at realistic sizes: every op family on the CUDA backend against float64 NumPy
references, and a full GT-style training step on the GPU matching the CPU backend.

Run on a GPU machine (see ../shared/device/README.md); results go to benchmarks/RESULTS.md.
Skipped elsewhere; `GTNUMBA_GPU_DRYRUN=1 NUMBA_ENABLE_CUDASIM=1` runs them at tiny sizes.
"""
import numpy as np
import pytest

import gtnumba as gt
from conftest import gpu_dryrun

pytestmark = pytest.mark.gpu

N = 8 if gpu_dryrun() else 1000          # "1000 x 1000" on a GPU
B, H, S, D = (2, 2, 4, 4) if gpu_dryrun() else (8, 8, 128, 64)    # batched attention shapes


@pytest.fixture(autouse=True)
def on_cuda():
    gt.set_device("cuda")
    yield
    gt.set_device("cpu")


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _check(got, want, tol=2e-5):
    got = np.asarray(got, np.float64)
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


UNARY = {
    "exp": (lambda t: t.exp(), np.exp), "tanh": (lambda t: t.tanh(), np.tanh),
    "relu": (lambda t: t.relu(), lambda x: np.maximum(x, 0)),
    "sigmoid": (lambda t: t.sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    "sqrt_abs": (lambda t: t.abs().sqrt(), lambda x: np.sqrt(np.abs(x))),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(name):
    ours, ref = UNARY[name]
    x = _rand(N, N)
    _check(ours(gt.tensor(x)).numpy(), ref(x.astype(np.float64)))


def test_broadcast_binary_and_where():
    a, b = _rand(N, N, seed=1), _rand(N, seed=2)
    ta, tb = gt.tensor(a), gt.tensor(b)
    _check((ta * tb + ta / (tb.abs() + 1)).numpy(), a * b + a / (np.abs(b) + 1.0))
    _check(gt.where(ta > tb, ta, tb).numpy(), np.where(a > b, a, b))


@pytest.mark.parametrize("axis", [0, 1, None, (0, 1)])
def test_reductions(axis):
    x = _rand(N, N + 3, seed=3)
    t = gt.tensor(x)
    x64 = x.astype(np.float64)
    _check(t.sum(axis=axis).numpy(), x64.sum(axis=axis), tol=1e-5)
    _check(t.max(axis=axis).numpy(), x64.max(axis=axis))
    _check(t.mean(axis=axis).numpy(), x64.mean(axis=axis), tol=1e-5)


def test_argmax_transpose_and_slicing():
    x = _rand(N, N + 1, seed=4)
    t = gt.tensor(x)
    np.testing.assert_array_equal(t.argmax(axis=1).numpy(), x.argmax(axis=1))
    _check(t.T.numpy(), x.T)
    _check(t[1::3, ::-2].numpy(), x[1::3, ::-2])
    idx = np.random.default_rng(5).integers(0, N, 2 * N)
    _check(t[idx].numpy(), x[idx])


def test_matmul_and_batched_attention_shapes():
    a, b = _rand(N, N, seed=6), _rand(N, N, seed=7)
    _check((gt.tensor(a) @ gt.tensor(b)).numpy(), a.astype(np.float64) @ b, tol=1e-4)
    q, k = _rand(B, H, S, D, seed=8), _rand(B, H, S, D, seed=9)
    got = gt.softmax(gt.tensor(q) @ gt.tensor(k).T / np.sqrt(D), axis=-1).numpy()
    s = q.astype(np.float64) @ k.astype(np.float64).transpose(0, 1, 3, 2) / np.sqrt(D)
    e = np.exp(s - s.max(-1, keepdims=True))
    _check(got, e / e.sum(-1, keepdims=True), tol=1e-4)


def test_layernorm_and_cross_entropy_gradients():
    from gtnumba._tensor import apply
    x, w, bias = _rand(N, 64, seed=10), _rand(64, seed=11), _rand(64, seed=12)
    labels = np.random.default_rng(13).integers(0, 64, N)
    tx = gt.tensor(x, requires_grad=True)
    y = apply("layer_norm", tx, gt.tensor(w), gt.tensor(bias), eps=1e-5)[0]
    loss = apply("cross_entropy", y, gt.tensor(labels))[0].mean()
    loss.backward()
    gpu_loss, gpu_grad = loss.numpy(), tx.grad.numpy()     # computed on the GPU
    gt.set_device("cpu")
    cx = gt.tensor(x.astype(np.float64), requires_grad=True)
    cy = apply("layer_norm", cx, gt.tensor(w.astype(np.float64)), gt.tensor(bias.astype(np.float64)), eps=1e-5)[0]
    closs = apply("cross_entropy", cy, gt.tensor(labels))[0].mean()
    closs.backward()
    _check(gpu_loss, closs.numpy(), tol=1e-5)
    _check(gpu_grad, cx.grad.numpy(), tol=1e-4)


def _gt_style_steps(device, n=3):
    from gt_style_model import C, E, gt_forward, init_params
    import gt_style_model as m
    gt.set_device(device)
    p = init_params(0)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((m.B, m.S, E)), np.eye(C)[rng.integers(0, C, m.B)]
    params = {k: gt.tensor(v.astype(np.float32), requires_grad=True) for k, v in p.items()}
    losses = []
    for _ in range(n):
        loss = gt_forward(params, gt.tensor(x.astype(np.float32)), gt.tensor(y.astype(np.float32)))
        loss.backward()
        with gt.no_grad():
            for t in params.values():
                t -= 0.05 * t.grad
                t.grad.zero_()
        losses.append(loss.item())
    return losses, {k: v.numpy() for k, v in params.items()}


def _same_training(got, want):
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4)
    for k in want[1]:
        np.testing.assert_allclose(got[1][k], want[1][k], rtol=1e-3, atol=1e-5, err_msg=k)


def test_gt_style_training_step_matches_cpu():
    _same_training(_gt_style_steps("cuda"), _gt_style_steps("cpu"))


def _worker_backend():
    from gtnumba.kernels import backend
    return backend.current()


def test_a_gpu_cluster_trains_like_the_cpu():
    """gt.init(gpus=1): a Dask worker pinned to the GPU (and the scheduler's own process) runs the
    steps on its CUDA backend; the dry run, with no GPU to pin, starts a CPU worker instead."""
    want = _gt_style_steps("cpu")
    gt.set_device("cuda")
    client = gt.init(**({"workers": 1} if gpu_dryrun() else {"gpus": 1}), dashboard=":0")
    try:
        got = _gt_style_steps("cuda")
        backends = set(client.run(_worker_backend).values())
    finally:
        gt.shutdown()
    _same_training(got, want)
    assert backends == ({"cpu"} if gpu_dryrun() else {"cuda"}), backends
