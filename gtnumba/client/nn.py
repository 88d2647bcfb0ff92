"""GT's `gt.client.nn`, with GT's semantics where they differ from PyTorch's (gtnumba.nn):

- `Linear(in, out)` keeps its weight as (in_features, out_features), drawn from NumPy's global
  generator as randn * 0.01 (as GT does: `np.random.seed` makes it reproducible), a zero bias,
  and computes `x @ weight + bias`.  gtnumba.nn.Linear is PyTorch's: (out, in), `x @ weight.T + bias`.
- `cross_entropy_loss(logits, targets)` is GT's: binary cross entropy of sigmoid(logits).

`Module` is gtnumba's (parameters() is a list; `self._parameters.append(t)` works).  Other
names (LayerNorm, Sequential, ...) fall through to gtnumba.nn.
"""
import numpy as np

from .. import nn as _torch_nn
from ..creation import tensor as _tensor
from ..nn.layers import _positive_int, check_features
from ..nn.module import Module, Parameter

EPS = 1e-7


class Linear(Module):
    """GT's Linear: y = x @ W + b, W of shape (in_features, out_features)."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = _positive_int("Linear", "in_features", in_features)
        self.out_features = _positive_int("Linear", "out_features", out_features)
        w = np.random.randn(self.in_features, self.out_features).astype(np.float32) * 0.01
        self.weight = _tensor(w, requires_grad=True)
        self.bias = _tensor(np.zeros(self.out_features, np.float32), requires_grad=True) if bias else None

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x):
        check_features(self, x)
        out = x @ self.weight
        return out if self.bias is None else out + self.bias


def mse_loss(predicted, target):
    return ((predicted - target) ** 2).mean()


def binary_cross_entropy(predicted, target):
    """-mean(t log(p + eps) + (1 - t) log(1 - p + eps)), eps = 1e-7 (GT's formula)."""
    return -(target * (predicted + EPS).log() + (1.0 - target) * (1.0 - predicted + EPS).log()).mean()


def cross_entropy_loss(logits, targets):
    """GT's cross_entropy_loss: binary cross entropy of sigmoid(logits) against 0/1 targets."""
    return binary_cross_entropy(logits.sigmoid(), targets)


def relu(x):
    return x.relu()


def sigmoid(x):
    return x.sigmoid()


def tanh(x):
    return x.tanh()


def __getattr__(name):
    try:
        return getattr(_torch_nn, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


__all__ = ["Module", "Parameter", "Linear", "mse_loss", "binary_cross_entropy", "cross_entropy_loss", "relu",
           "sigmoid", "tanh"]
