"""Free functions of the public API (gt.cat, gt.where, gt.matmul, ...) and the autograd glue.

This module is also the `api` the gradient engine and the gradient rules are handed: rules
build their nodes with `apply`, `where`, `zeros` and Tensor methods.
"""
import functools

import numpy as np

from . import dtypes, signal
from ._gtwarn import warn_once
from .creation import full, zeros  # noqa: F401  (used by gradient rules through this module)
from .graph import GRAD_MODE
from .sched.replay import REC
from .grad import backward as _backward
from .ops.shapes import normalize_axis
from ._tensor import Tensor, apply, as_node, outputs  # noqa: F401


def _t(x, like=None):
    return x if isinstance(x, Tensor) else Tensor._wrap(as_node(x, like))


def wrap(node):
    return Tensor._wrap(node)


# ---- math -----------------------------------------------------------------------------------
def matmul(a, b):
    a, b = _t(a), _t(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must have at least 1 dim, got shapes {a.shape} and {b.shape}")
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if a.shape[-1] != k_b:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match ({a.shape[-1]} != {k_b})")
    a2 = a.reshape((1,) + a.shape) if a.ndim == 1 else a
    b2 = b.reshape(b.shape + (1,)) if b.ndim == 1 else b
    out = apply("matmul", a2, b2)
    # 1-D operands were promoted to a matrix: drop the dim each promotion added
    rows = out.shape[-2:-1] if a.ndim > 1 else ()
    cols = out.shape[-1:] if b.ndim > 1 else ()
    return out.reshape(out.shape[:-2] + rows + cols)


def where(condition, a, b):
    condition = _t(condition)
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    return apply("where", condition, _t(a, like), _t(b, like))


def maximum(a, b):
    return apply("maximum", a, b)


def minimum(a, b):
    return apply("minimum", a, b)


def logical_and(a, b):
    return apply("logical_and", a, b)


def clamp(x, min=None, max=None):
    return _t(x).clamp(min, max)


def _unary(name):
    def f(x):
        return apply(name, _t(x))
    f.__name__ = name
    return f


exp, log, sqrt, abs, relu, sigmoid, tanh, gelu, sign = (
    _unary(n) for n in ("exp", "log", "sqrt", "abs", "relu", "sigmoid", "tanh", "gelu", "sign"))


def softmax(x, axis=-1, dim=None):
    x = _t(x)
    return apply("softmax", x, axis=normalize_axis("softmax", axis if dim is None else dim, x.ndim))


def log_softmax(x, axis=-1, dim=None):
    x = _t(x)
    return apply("log_softmax", x, axis=normalize_axis("log_softmax", axis if dim is None else dim, x.ndim))


# ---- joining and splitting ----------------------------------------------------------------
def cat(tensors, axis=0, dim=None):
    tensors = [_t(x) for x in tensors]
    if not tensors:
        raise ValueError("cat: expected a non-empty list of tensors")
    ndim = tensors[0].ndim
    if ndim == 0:
        raise ValueError("cat: zero-dimensional tensors cannot be concatenated")
    axis = normalize_axis("cat", axis if dim is None else dim, ndim)
    for t in tensors:
        if t.ndim != ndim:
            raise ValueError(f"cat: all tensors need {ndim} dims, got shapes {[x.shape for x in tensors]}")
    return tensors[0] if len(tensors) == 1 else apply("concat", *tensors, axis=axis)


concatenate = cat


def stack(tensors, axis=0, dim=None):
    tensors = [_t(x) for x in tensors]
    if not tensors:
        raise ValueError("stack: expected a non-empty list of tensors")
    shapes = {t.shape for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"stack: all tensors must have the same shape, got {[t.shape for t in tensors]}")
    axis = axis if dim is None else dim
    if not -tensors[0].ndim - 1 <= axis <= tensors[0].ndim:
        raise IndexError(f"stack: axis {axis} is out of range for tensors with {tensors[0].ndim} dims")
    return cat([t.unsqueeze(axis) for t in tensors], axis=axis % (tensors[0].ndim + 1))


def split(x, split_size_or_sections, axis=0, dim=None):
    """PyTorch's split: an int is the size of each chunk (the last may be smaller); a list, the sizes."""
    x = _t(x)
    axis = normalize_axis("split", axis if dim is None else dim, x.ndim)
    n = x.shape[axis]
    if isinstance(split_size_or_sections, int):
        if split_size_or_sections <= 0:
            raise ValueError(f"split: chunk size must be positive, got {split_size_or_sections}")
        sizes = [min(split_size_or_sections, n - s) for s in range(0, n, split_size_or_sections)]
    else:
        if isinstance(split_size_or_sections, (float, str)):
            raise TypeError(f"split: expected an int chunk size or a list of sizes, got {split_size_or_sections!r}")
        sizes = [int(s) for s in split_size_or_sections]
        if any(s < 0 for s in sizes):
            raise ValueError(f"split: sizes {sizes} must not be negative")
        if sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} do not add up to {n}, the size of axis {axis} of {x.shape}")
    out, start = [], 0
    for size in sizes:
        out.append(x[(slice(None),) * axis + (slice(start, start + size),)])
        start += size
    return tuple(out)


def chunk(x, chunks, axis=0, dim=None):
    x = _t(x)
    axis = normalize_axis("chunk", axis if dim is None else dim, x.ndim)
    if not isinstance(chunks, int) or chunks <= 0:
        raise ValueError(f"chunk: number of chunks must be a positive int, got {chunks!r}")
    size = -(-x.shape[axis] // chunks)
    return split(x, size, axis)


# ---- autograd --------------------------------------------------------------------------------
def accumulate_leaf_grad(node, g):
    owner = node.owner() if node.owner is not None else None
    if owner is None:
        return
    if g.dtype != owner.dtype:
        g = g.astype(owner.dtype)
    if g.shape != owner.shape:
        g = g.expand(owner.shape)
    if signal.TAGS:
        REC.no_replay()
        g = signal.grad_layout(owner, g)
    old = owner.grad
    zeroed = old is not None and old._node.op == "fill" and old._node.value is None \
        and dict(old._node.attrs)["value"] == 0
    # a gradient zeroed by zero_() and not read since is replaced, not added to
    owner.grad = g if old is None or zeroed else old + g


def nonleaf_grad(node, g):
    """GT gives every recorded input a .grad: a non-leaf tensor that requires grad and is still
    held by the user gets its gradient of this backward (added to one from an earlier backward).
    Returns the gradient to propagate (laid out by a backward signal, if one names it)."""
    if not isinstance(g, Tensor):         # the parts of a multi-output node: no tensor wraps it
        return g
    if signal.TAGS:
        REC.no_replay()                   # a replayed backward cannot lay gradients out
        g = signal.grad_layout(node, g)
    if node.n_tensors > 0:
        old = Tensor._NONLEAF_GRADS.get(node)
        if old is None:
            REC.nonleaf_grad(node, g._node)   # a replayed backward sets it again
        Tensor._NONLEAF_GRADS[node] = g if old is None else old + g
    return g


def run_backward(t, gradient=None, retain_graph=False):
    if gradient is None:
        if t.numel() != 1:
            raise RuntimeError(f"backward: grad can be implicitly created only for scalar outputs, "
                               f"got shape {t.shape}; pass gradient= of that shape")
    else:
        gradient = _t(gradient, t)
        if gradient.shape != t.shape:
            raise ValueError(f"backward: gradient of shape {gradient.shape} does not match the output "
                             f"shape {t.shape}")
    if not t.requires_grad:
        warn_once(f"backward: the tensor of shape {t.shape} does not require grad (it was computed under "
                  f"gt.no_grad(), from detached tensors or from no tensor with requires_grad=True), so "
                  f"backward() does nothing (as in GT)")
        return
    gradient = full(t.shape, 1.0, dtype=t.dtype) if gradient is None else gradient.astype(t.dtype).detach()
    _backward(t._node, gradient, _API, retain_graph)


class _Api:
    """What the gradient engine and rules may call (kept explicit rather than the whole module)."""
    wrap = staticmethod(wrap)
    outputs = staticmethod(outputs)
    apply = staticmethod(apply)
    accumulate_leaf_grad = staticmethod(accumulate_leaf_grad)
    nonleaf_grad = staticmethod(nonleaf_grad)
    where = staticmethod(where)
    zeros = staticmethod(zeros)
    logical_and = staticmethod(logical_and)


_API = _Api()


# ---- grad mode ---------------------------------------------------------------------------
class no_grad:
    """Context manager and decorator: ops inside record no gradient graph."""

    def __enter__(self):
        self._saved = GRAD_MODE.enabled
        GRAD_MODE.enabled = False
        return self

    def __exit__(self, *exc):
        GRAD_MODE.enabled = self._saved
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        return wrapper


class enable_grad(no_grad):
    def __enter__(self):
        self._saved = GRAD_MODE.enabled
        GRAD_MODE.enabled = True
        return self


def is_grad_enabled():
    return GRAD_MODE.enabled


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("functools", "np", "dtypes", "signal", "warn_once")]
