"""Fused rows: softmax, log-softmax, cross-entropy and layer norm, each with its backward row."""
import numpy as np

from .. import dtypes
from ..kernels import cpu
from ..kernels import cuda as cuda_kernels
from ..kernels import cuda as cuda_kernels
from . import sharding
from .registry import Spec, defop


def _float_same(op):
    def infer(attrs, *xs):
        for x in xs:
            if not dtypes.is_float(x.dtype):
                raise TypeError(f"{op}: needs floating-point tensors, got {x.dtype} of shape {x.shape}")
        return Spec(xs[0].shape, xs[0].dtype)
    return infer


def _softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax_ref(x, axis):
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def _axis_samples(rng):
    return [((rng.standard_normal((3, 5)) * 3,), {"axis": 1}),
            ((rng.standard_normal((2, 4, 3)),), {"axis": 1}),
            ((rng.standard_normal((7,)),), {"axis": 0})]


def _axis_backward_samples(forward):
    def sample(rng):
        cases = []
        for (x,), attrs in _axis_samples(rng):
            cases.append(((forward(x, **attrs), rng.standard_normal(x.shape)), attrs))
        return cases
    return sample


defop("softmax", _float_same("softmax"), _softmax_ref, kernels={"cpu": cpu.softmax, "cuda": cuda_kernels.fused_kernel("softmax")}, shard=sharding.along_axis,
      grad=lambda c: (c.F.apply("softmax_backward", c.out, c.g, axis=c.attrs["axis"]),),
      sample=_axis_samples)
defop("softmax_backward", _float_same("softmax_backward"),
      lambda y, g, axis: y * (g - (g * y).sum(axis=axis, keepdims=True)),
      kernels={"cpu": cpu.softmax_backward, "cuda": cuda_kernels.fused_kernel("softmax_backward")}, differentiable=False, shard=sharding.along_axis,
      sample=_axis_backward_samples(_softmax_ref))
defop("log_softmax", _float_same("log_softmax"), _log_softmax_ref, kernels={"cpu": cpu.log_softmax, "cuda": cuda_kernels.fused_kernel("log_softmax")},
      shard=sharding.along_axis,
      grad=lambda c: (c.F.apply("log_softmax_backward", c.out, c.g, axis=c.attrs["axis"]),),
      sample=_axis_samples)
defop("log_softmax_backward", _float_same("log_softmax_backward"),
      lambda y, g, axis: g - np.exp(y) * g.sum(axis=axis, keepdims=True),
      kernels={"cpu": cpu.log_softmax_backward, "cuda": cuda_kernels.fused_kernel("log_softmax_backward")}, differentiable=False, shard=sharding.along_axis,
      sample=_axis_backward_samples(_log_softmax_ref))


# ---- cross-entropy over rows of logits: outputs (per-row loss, per-row log-sum-exp) ------
def _ce_infer(attrs, x, labels):
    if len(x.shape) != 2 or not dtypes.is_float(x.dtype):
        raise ValueError(f"cross_entropy: logits must be a 2-D float tensor, got {x.dtype} {x.shape}")
    if labels.dtype not in (dtypes.int64, dtypes.int32) or labels.shape != x.shape[:1]:
        raise ValueError(f"cross_entropy: labels must be integers of shape {x.shape[:1]}, "
                         f"got {labels.dtype} {labels.shape}")
    row = Spec(x.shape[:1], x.dtype)
    return (row, row)


def _ce_ref(x, labels):
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    return lse - x[np.arange(len(x)), labels], lse


def _ce_grad(c):
    g_loss = c.g[0]
    if g_loss is None:
        return (None, None)
    x, labels = c.x
    return (c.F.apply("cross_entropy_backward", x, labels, c.out[1], g_loss), None)


def _ce_samples(rng):
    return [((rng.standard_normal((4, 5)) * 3, rng.integers(0, 5, 4)), {}),
            ((rng.standard_normal((1, 3)), np.array([2])), {})]


defop("cross_entropy", _ce_infer, _ce_ref, kernels={"cpu": cpu.cross_entropy, "cuda": cuda_kernels.fused_kernel("cross_entropy")}, grad=_ce_grad, shard=sharding.cross_entropy,
      grad_outputs=1, sample=_ce_samples)


def _ce_backward_ref(x, labels, lse, g):
    p = np.exp(x - lse[:, None])
    p[np.arange(len(x)), labels] -= 1
    return p * g[:, None]


def _ce_backward_samples(rng):
    cases = []
    for (x, labels), _ in _ce_samples(rng):
        cases.append(((x, labels, _ce_ref(x, labels)[1], rng.standard_normal(len(x))), {}))
    return cases


defop("cross_entropy_backward", lambda attrs, x, labels, lse, g: Spec(x.shape, x.dtype), _ce_backward_ref,
      kernels={"cpu": cpu.cross_entropy_backward, "cuda": cuda_kernels.fused_kernel("cross_entropy_backward")}, differentiable=False, shard=sharding.cross_entropy_backward, sample=_ce_backward_samples)


# ---- layer norm over the last axis: outputs (y, mean, rstd) -------------------------------
def _ln_infer(attrs, x, w, b):
    n = x.shape[-1] if x.shape else None
    if n is None or w.shape != (n,) or b.shape != (n,):
        raise ValueError(f"layer_norm: weight and bias must have shape ({n},) for input {x.shape}, "
                         f"got {w.shape} and {b.shape}")
    if not dtypes.is_float(x.dtype):
        raise TypeError(f"layer_norm: needs a floating-point input, got {x.dtype}")
    stat = Spec(x.shape[:-1], x.dtype)
    return (Spec(x.shape, x.dtype), stat, stat)


def _ln_ref(x, w, b, eps):
    mean = x.mean(-1)
    rstd = 1 / np.sqrt(x.var(-1) + eps)
    return (x - mean[..., None]) * rstd[..., None] * w + b, mean, rstd


def _ln_grad(c):
    gy = c.g[0]
    if gy is None:
        return (None, None, None)
    x, w, _ = c.x
    return c.F.apply("layer_norm_backward", x, w, c.out[1], c.out[2], gy)


def _ln_samples(rng):
    return [((rng.standard_normal((3, 6)) * 2 + 1, rng.standard_normal(6), rng.standard_normal(6)), {"eps": 1e-5}),
            ((rng.standard_normal((2, 2, 5)), rng.standard_normal(5), rng.standard_normal(5)), {"eps": 1e-3})]


defop("layer_norm", _ln_infer, _ln_ref, kernels={"cpu": cpu.layer_norm, "cuda": cuda_kernels.fused_kernel("layer_norm")}, grad=_ln_grad, grad_outputs=1, shard=sharding.layer_norm,
      sample=_ln_samples)


def _ln_backward_infer(attrs, x, w, mean, rstd, g):
    return (Spec(x.shape, x.dtype), Spec(w.shape, w.dtype), Spec(w.shape, w.dtype))


def _ln_backward_ref(x, w, mean, rstd, g):
    n = x.shape[-1]
    xhat = (x - mean[..., None]) * rstd[..., None]
    gxhat = g * w
    gx = rstd[..., None] * (gxhat - gxhat.mean(-1, keepdims=True) - xhat * (gxhat * xhat).mean(-1, keepdims=True))
    flat = (-1, n)
    return gx, (g * xhat).reshape(flat).sum(0), g.reshape(flat).sum(0)


def _ln_backward_samples(rng):
    cases = []
    for (x, w, b), attrs in _ln_samples(rng):
        _, mean, rstd = _ln_ref(x, w, b, attrs["eps"])
        cases.append(((x, w, mean, rstd, rng.standard_normal(x.shape)), {}))
    return cases


defop("layer_norm_backward", _ln_backward_infer, _ln_backward_ref, kernels={"cpu": cpu.layer_norm_backward, "cuda": cuda_kernels.fused_kernel("layer_norm_backward")},
      shard=sharding.layer_norm_backward,
      differentiable=False, sample=_ln_backward_samples)


# ---- multi-output plumbing ----------------------------------------------------------------
defop("select", lambda attrs, values: values[attrs["index"]], lambda values, index: values[index],
      kernels={"cpu": cpu.select, "cuda": cuda_kernels.shape_kernel("select")}, differentiable=False, alias=True,
      shard=lambda attrs, layouts, ins, outs: ((layouts[0],), (layouts[0][attrs["index"]],)))
