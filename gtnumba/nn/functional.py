"""nn.functional: activations, losses, dropout, linear, layer norm, embedding and attention.

Axis arguments are named `axis`; `dim` is accepted as an alias.  Every user error is raised at
the call and names the function and the shapes or values at fault.
"""
import math

import numpy as np

from .. import dtypes
from ..creation import generator
from ..creation import tensor as _tensor
from ..functions import gelu as _gelu
from ..functions import log_softmax, relu, sigmoid, softmax, tanh, where  # noqa: F401  (re-exported)
from .._tensor import Tensor, apply

__all__ = ["relu", "gelu", "sigmoid", "tanh", "softmax", "log_softmax", "silu", "leaky_relu",
           "mse_loss", "l1_loss", "cross_entropy", "nll_loss", "binary_cross_entropy",
           "binary_cross_entropy_with_logits", "dropout", "linear", "layer_norm", "embedding",
           "attention", "scaled_dot_product_attention", "one_hot"]


def _as_tensor(x, like=None, what="input"):
    if isinstance(x, Tensor):
        return x
    try:
        arr = np.asarray(x)
    except Exception:
        raise TypeError(f"{what}: expected a Tensor or array-like, got {type(x).__name__}") from None
    if like is not None and arr.dtype.kind == "f":
        return _tensor(arr, dtype=like.dtype)
    return _tensor(arr)


def _known_values(t):
    """A tensor's values when they are already computed and on the host, else None: values on a
    device or on the workers are not copied back for a check (their kernels check them and the
    next read raises, naming the op and the value)."""
    value = t._node.value
    return value.reshape(t.shape) if isinstance(value, np.ndarray) else None


def _reduce(op, loss, reduction):
    if reduction == "mean":
        if loss.numel() == 0:
            raise ValueError(f"{op}: reduction='mean' over an empty batch (shape {loss.shape})")
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


# ---- activations ------------------------------------------------------------------------------
def gelu(x, approximate="none"):
    if approximate == "none":
        return _gelu(x)
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        return 0.5 * x * (1.0 + tanh(c * (x + 0.044715 * x * x * x)))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def silu(x):
    return x * sigmoid(x)


def leaky_relu(x, negative_slope=0.01):
    return relu(x) - negative_slope * relu(-x)


def one_hot(labels, num_classes):
    labels = np.asarray(labels.numpy() if isinstance(labels, Tensor) else labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"one_hot: labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"one_hot: labels must lie in [0, {num_classes}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    return _tensor(np.eye(num_classes, dtype=np.int64)[labels])


# ---- losses ---------------------------------------------------------------------------------
def _float_target(op, pred, target):
    if not isinstance(pred, Tensor):
        raise TypeError(f"{op}: input must be a Tensor, got {type(pred).__name__}")
    if not dtypes.is_float(pred.dtype):
        raise TypeError(f"{op}: input must be floating point, got {pred.dtype} of shape {pred.shape}")
    target = _as_tensor(target, pred, op)
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(f"{op}: input of shape {pred.shape} and target of shape {target.shape} differ "
                         f"(reshape one of them; broadcasting a loss is refused as a likely bug)")
    if target.dtype != pred.dtype:
        target = target.astype(pred.dtype)
    return target


def mse_loss(input, target, reduction="mean"):
    target = _float_target("mse_loss", input, target)
    d = input - target
    return _reduce("mse_loss", d * d, reduction)


def l1_loss(input, target, reduction="mean"):
    target = _float_target("l1_loss", input, target)
    return _reduce("l1_loss", (input - target).abs(), reduction)


def _labels(op, labels, n, num_classes):
    """Integer labels of shape (n,) as an int Tensor; values checked when they are known."""
    if isinstance(labels, Tensor):
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{op}: labels must be integer class indices, got {labels.dtype} of shape "
                            f"{labels.shape} (class-probability targets are not supported; use .long())")
        values = _known_values(labels)
        t = labels
    else:
        values = np.asarray(labels)
        if values.dtype.kind not in "iu":
            raise TypeError(f"{op}: labels must be integer class indices, got {values.dtype} of shape "
                            f"{values.shape}")
        t = None
    if tuple(t.shape if t is not None else values.shape) != (n,):
        shape = t.shape if t is not None else values.shape
        raise ValueError(f"{op}: labels must have shape ({n},) to match logits with {n} rows, got {tuple(shape)}")
    if values is not None and values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= num_classes:
            raise IndexError(f"{op}: labels must lie in [0, {num_classes}) for {num_classes} classes, got "
                             f"values in [{lo}, {hi}]")
    if t is None:
        t = _tensor(values.astype(np.int64))
    elif t.dtype not in (dtypes.int64, dtypes.int32):
        t = t.astype(dtypes.int64)
    return t


def cross_entropy(input, target, reduction="mean"):
    """Softmax cross-entropy of logits (N, C) (or (C,) with a scalar label) and integer labels (N,)."""
    logits = input
    if not isinstance(logits, Tensor):
        raise TypeError(f"cross_entropy: logits must be a Tensor, got {type(logits).__name__}")
    if not dtypes.is_float(logits.dtype):
        raise TypeError(f"cross_entropy: logits must be floating point, got {logits.dtype} of shape {logits.shape}")
    single = logits.ndim == 1
    if single:
        label = np.asarray(target.numpy() if isinstance(target, Tensor) else target)
        if label.size != 1:
            raise ValueError(f"cross_entropy: 1-D logits {logits.shape} need a single label, got shape {label.shape}")
        target = label.reshape(1)
        logits = logits.reshape(1, -1)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must have shape (N, C), got {logits.shape}; for (..., C) "
                         f"logits use cross_entropy(logits.reshape(-1, C), labels.reshape(-1))")
    n, c = logits.shape
    labels = _labels("cross_entropy", target, n, c)
    loss, _ = apply("cross_entropy", logits, labels)
    if single:
        return loss.reshape(())   # one sample: its loss, whatever the reduction
    return _reduce("cross_entropy", loss, reduction)


def nll_loss(input, target, reduction="mean"):
    """Negative log-likelihood of log-probabilities (N, C) at integer labels (N,)."""
    if not isinstance(input, Tensor) or input.ndim != 2:
        shape = input.shape if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"nll_loss: input must be a (N, C) Tensor of log-probabilities, got {shape}")
    n, c = input.shape
    labels = _labels("nll_loss", target, n, c)
    picked = input[np.arange(n), labels]
    return _reduce("nll_loss", -picked, reduction)


def binary_cross_entropy(input, target, reduction="mean", eps=None):
    """-(t log p + (1 - t) log(1 - p)), with p clamped to [eps, 1 - eps] for stability."""
    target = _float_target("binary_cross_entropy", input, target)
    if eps is None:
        eps = 1e-7 if input.dtype == dtypes.float32 else 1e-12
    p = input.clamp(eps, 1.0 - eps)
    loss = -(target * p.log() + (1.0 - target) * (1.0 - p).log())
    return _reduce("binary_cross_entropy", loss, reduction)


def binary_cross_entropy_with_logits(input, target, reduction="mean"):
    """Binary cross-entropy of sigmoid(logits), computed stably: max(x,0) - x t + log(1 + e^-|x|)."""
    target = _float_target("binary_cross_entropy_with_logits", input, target)
    loss = relu(input) - input * target + (1.0 + (-input.abs()).exp()).log()
    return _reduce("binary_cross_entropy_with_logits", loss, reduction)


# ---- dropout ------------------------------------------------------------------------------
def dropout(x, p=0.5, training=True):
    """Zero each element with probability p (mask from gtnumba's seeded generator), scale by 1/(1-p)."""
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"dropout: probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if not dtypes.is_float(x.dtype):
        raise TypeError(f"dropout: needs a floating-point tensor, got {x.dtype} of shape {x.shape}")
    if p == 1.0:
        return x * 0.0
    keep = generator().random(x.shape) >= p
    mask = (keep / (1.0 - p)).astype(x.dtype)
    return x * Tensor._wrap_array(mask).reshape(x.shape)


# ---- linear, layer norm, embedding ------------------------------------------------------------
def linear(x, weight, bias=None):
    """x @ weight.T + bias, with weight of shape (out_features, in_features)."""
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got {weight.shape}")
    out_f, in_f = weight.shape
    if x.ndim == 0 or x.shape[-1] != in_f:
        raise ValueError(f"linear: input of shape {x.shape} has last dim {x.shape[-1] if x.ndim else None}, "
                         f"weight {weight.shape} expects {in_f}")
    if bias is not None and tuple(bias.shape) != (out_f,):
        raise ValueError(f"linear: bias must have shape ({out_f},), got {bias.shape}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_f) if x.ndim > 2 else x
    y = x2 @ weight.T
    if bias is not None:
        y = y + bias
    return y.reshape(lead + (out_f,)) if x.ndim > 2 else y


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalize over the trailing `normalized_shape` dims with the fused layer_norm op."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or x.ndim < k or tuple(x.shape[-k:]) != shape:
        raise ValueError(f"layer_norm: input of shape {x.shape} does not end with normalized_shape {shape}")
    if not dtypes.is_float(x.dtype):
        raise TypeError(f"layer_norm: needs a floating-point input, got {x.dtype}")
    n = math.prod(shape)
    for what, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"layer_norm: {what} must have shape {shape}, got {t.shape}")
    w = weight.reshape(n) if weight is not None else Tensor._wrap_array(np.ones(n, x.dtype))
    b = bias.reshape(n) if bias is not None else Tensor._wrap_array(np.zeros(n, x.dtype))
    if w.dtype != x.dtype:
        w = w.astype(x.dtype)
    if b.dtype != x.dtype:
        b = b.astype(x.dtype)
    x2 = x.reshape(x.shape[:-k] + (n,)) if k > 1 else x
    y, _, _ = apply("layer_norm", x2, w, b, eps=float(eps))
    return y.reshape(x.shape) if k > 1 else y


def embedding(indices, weight, padding_idx=None, who="embedding"):
    """Rows of `weight` (num, dim) at integer `indices` (any shape) -> indices.shape + (dim,)."""
    num = weight.shape[0]
    if isinstance(indices, Tensor):
        if indices.dtype.kind not in "iu":
            raise TypeError(f"{who}: indices must be integers, got {indices.dtype} of shape {indices.shape}")
        values = _known_values(indices)
    else:
        values = np.asarray(indices)
        if values.dtype.kind not in "iu":
            raise TypeError(f"{who}: indices must be integers, got {values.dtype} of shape {values.shape}")
        indices = _tensor(values.astype(np.int64))
    if values is not None and values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= num:
            raise IndexError(f"{who}: indices must lie in [0, {num}), got values in [{lo}, {hi}]")
    if indices.ndim == 0:
        out = weight[indices.reshape(1)].reshape(weight.shape[1:])
    else:
        out = weight[indices]
    if padding_idx is not None:
        keep = (indices != padding_idx).reshape(tuple(indices.shape) + (1,) * (weight.ndim - 1))
        out = where(keep, out, 0.0)
    return out


# ---- attention ------------------------------------------------------------------------------
def as_mask(who, mask, like):
    """A mask as a Tensor: bool (True = masked out) or additive float (in `like`'s dtype)."""
    if not isinstance(mask, Tensor):
        arr = np.asarray(mask)
        if arr.dtype == np.bool_:
            mask = _tensor(arr)
        elif arr.dtype.kind == "f":
            mask = _tensor(arr, dtype=like.dtype)
        else:
            raise TypeError(f"{who}: mask must be bool (True = masked out) or an additive float mask, got "
                            f"{arr.dtype} of shape {arr.shape}")
    if mask.dtype != dtypes.bool_ and not dtypes.is_float(mask.dtype):
        raise TypeError(f"{who}: mask must be bool (True = masked out) or an additive float mask, got "
                        f"{mask.dtype} of shape {mask.shape}")
    return mask


def apply_mask(who, scores, mask):
    """Masked-out (True) positions get -1e9 before the softmax; a float mask is added."""
    mask = as_mask(who, mask, scores)
    try:
        out = np.broadcast_shapes(tuple(mask.shape), tuple(scores.shape))
    except ValueError:
        out = None
    if out != tuple(scores.shape):
        raise ValueError(f"{who}: mask of shape {mask.shape} does not broadcast to the attention scores "
                         f"(batch, heads, seq_q, seq_k) = {tuple(scores.shape)}")
    if mask.dtype == dtypes.bool_:
        return where(mask, -1e9, scores)
    return scores + (mask if mask.dtype == scores.dtype else mask.astype(scores.dtype))


def attention(q, k, v, mask=None, dropout_p=0.0, training=True, scale=None, who="attention"):
    """softmax(q @ k^T * scale + mask) @ v over the last two dims.

    `mask`: a bool mask (True = masked out), an additive float mask, or a list of them.
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{who}: query {q.shape} and key {k.shape} differ in their last dim")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{who}: key {k.shape} and value {v.shape} differ in sequence length")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * float(scale)
    for m in (mask if isinstance(mask, (list, tuple)) else [mask]):
        if m is not None:
            scores = apply_mask(who, scores, m)
    weights = softmax(scores, axis=-1)
    if dropout_p and training:
        weights = dropout(weights, dropout_p, True)
    return weights @ v


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """PyTorch's F.scaled_dot_product_attention: a bool attn_mask is True where attention is ALLOWED."""
    mask = None
    if is_causal:
        sq, sk = query.shape[-2], key.shape[-2]
        mask = _tensor(np.triu(np.ones((sq, sk), dtype=bool), k=1))
    if attn_mask is not None:
        if is_causal:
            raise ValueError("scaled_dot_product_attention: pass either attn_mask or is_causal=True, not both")
        m = attn_mask if isinstance(attn_mask, Tensor) else _tensor(np.asarray(attn_mask))
        mask = (m == False) if m.dtype == dtypes.bool_ else m  # noqa: E712  (elementwise not)
    return attention(query, key, value, mask, dropout_p, True, scale, who="scaled_dot_product_attention")
