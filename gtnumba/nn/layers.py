"""Layers: Linear, LayerNorm, Embedding, Dropout, containers and activation modules."""
import math
from collections import OrderedDict

import numpy as np

from .. import dtypes
from ..creation import generator
from .._tensor import Tensor
from . import functional as F
from .module import Module, Parameter


def _param(array, dtype):
    return Parameter(np.asarray(array), dtype=dtypes.as_dtype(dtype))


def _positive_int(who, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{who}: {name} must be a positive int, got {value!r}")
    return int(value)


def _check_input(who, x):
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: expected a Tensor input, got {type(x).__name__}")


class Linear(Module):
    """y = x @ W.T + b, W of shape (out_features, in_features), initialized U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__()
        self.in_features = _positive_int("Linear", "in_features", in_features)
        self.out_features = _positive_int("Linear", "out_features", out_features)
        k = 1.0 / math.sqrt(self.in_features)
        rng = generator()
        self.weight = _param(rng.uniform(-k, k, (self.out_features, self.in_features)), dtype)
        self.bias = _param(rng.uniform(-k, k, (self.out_features,)), dtype) if bias else None

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x):
        check_features(self, x)
        return F.linear(x, self.weight, self.bias)


def check_features(linear, x):
    """A Linear's input: a tensor whose last dim is the layer's in_features."""
    _check_input(f"Linear({linear.extra_repr()})", x)
    if x.ndim == 0 or x.shape[-1] != linear.in_features:
        raise ValueError(f"Linear({linear.extra_repr()}): input has last dim "
                         f"{x.shape[-1] if x.ndim else None} (input shape {x.shape}), "
                         f"expected {linear.in_features}")


class LayerNorm(Module):
    """Normalize over the trailing `normalized_shape` dims, then scale by weight and shift by bias."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
        for d in shape:
            _positive_int("LayerNorm", "normalized_shape", d)
        if not shape:
            raise ValueError("LayerNorm: normalized_shape must not be empty")
        self.normalized_shape = tuple(int(d) for d in shape)
        self.eps = float(eps)
        self.elementwise_affine = elementwise_affine
        self.weight = _param(np.ones(self.normalized_shape), dtype) if elementwise_affine else None
        self.bias = _param(np.zeros(self.normalized_shape), dtype) if elementwise_affine and bias else None

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"

    def forward(self, x):
        _check_input("LayerNorm", x)
        k = len(self.normalized_shape)
        if x.ndim < k or tuple(x.shape[-k:]) != self.normalized_shape:
            raise ValueError(f"LayerNorm(normalized_shape={self.normalized_shape}): input of shape {x.shape} "
                             f"does not end with {self.normalized_shape}")
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Embedding(Module):
    """A (num_embeddings, embedding_dim) table looked up by integer indices; initialized N(0, 1)."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=None):
        super().__init__()
        self.num_embeddings = _positive_int("Embedding", "num_embeddings", num_embeddings)
        self.embedding_dim = _positive_int("Embedding", "embedding_dim", embedding_dim)
        if padding_idx is not None:
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"Embedding: padding_idx {padding_idx} is out of range for "
                                 f"{self.num_embeddings} embeddings")
            padding_idx %= self.num_embeddings
        self.padding_idx = padding_idx
        table = generator().standard_normal((self.num_embeddings, self.embedding_dim))
        if padding_idx is not None:
            table[padding_idx] = 0.0
        self.weight = _param(table, dtype)

    def extra_repr(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"

    def forward(self, indices):
        who = f"Embedding(num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim})"
        return F.embedding(indices, self.weight, self.padding_idx, who=who)


class Dropout(Module):
    """Zero elements with probability p while training (scaled by 1/(1-p)); identity in eval()."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"Dropout: probability must be in [0, 1], got {p}")
        self.p = float(p)

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


# ---- containers --------------------------------------------------------------------------------
class ModuleList(Module):
    """A list of modules; its parameters are named by index ("0.weight", ...)."""

    def __init__(self, modules=None):
        super().__init__()
        self._list = []
        if modules is not None:
            self.extend(modules)

    def _member_items(self):
        return [(str(i), m) for i, m in enumerate(self._list)] + [
            (k, v) for k, v in super()._member_items() if k != "_list"]

    def _check(self, m):
        if not isinstance(m, Module):
            raise TypeError(f"{type(self).__name__}: expected a Module, got {type(m).__name__}")
        return m

    def append(self, module):
        self._list.append(self._check(module))
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def insert(self, index, module):
        self._list.insert(index, self._check(module))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return type(self)(self._list[index])
        return self._list[index]

    def __setitem__(self, index, module):
        self._list[index] = self._check(module)

    def __delitem__(self, index):
        del self._list[index]

    def __len__(self):
        return len(self._list)

    def __iter__(self):
        return iter(self._list)

    def __iadd__(self, modules):
        return self.extend(modules)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} is a container and has no forward(); "
                                  f"call its modules")


class Sequential(ModuleList):
    """Modules applied in order: Sequential(m1, m2, ...) or Sequential(OrderedDict(name=module))."""

    def __init__(self, *modules):
        self._names = None
        names = None
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            names = [str(k) for k in modules[0]]
            modules = tuple(modules[0].values())
        super().__init__(modules)
        self._names = names

    def _member_items(self):
        items = super()._member_items()
        if self._names is not None and len(self._names) == len(self._list):
            items = [(self._names[i], m) if i < len(self._list) else (k, m)
                     for i, (k, m) in enumerate(items)]
        return [(k, v) for k, v in items if k != "_names"]

    def append(self, module):
        if getattr(self, "_names", None) is not None:
            self._names.append(str(len(self._list)))
        return super().append(module)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self._list[index])
        return self._list[index]

    def forward(self, x):
        for m in self._list:
            x = m(x)
        return x


class ModuleDict(Module):
    """A dict of modules; parameters are named by key ("encoder.weight", ...)."""

    def __init__(self, modules=None):
        super().__init__()
        self._dict = OrderedDict()
        if modules is not None:
            self.update(modules)

    def _member_items(self):
        return list(self._dict.items()) + [(k, v) for k, v in super()._member_items() if k != "_dict"]

    def update(self, modules):
        for k, m in (modules.items() if hasattr(modules, "items") else modules):
            self[k] = m

    def __getitem__(self, key):
        return self._dict[key]

    def __setitem__(self, key, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleDict: expected a Module for key {key!r}, got {type(module).__name__}")
        self._dict[str(key)] = module

    def __delitem__(self, key):
        del self._dict[key]

    def __contains__(self, key):
        return key in self._dict

    def __len__(self):
        return len(self._dict)

    def __iter__(self):
        return iter(self._dict)

    def keys(self):
        return self._dict.keys()

    def values(self):
        return self._dict.values()

    def items(self):
        return self._dict.items()


# ---- activations and small modules -----------------------------------------------------------
class Identity(Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class GELU(Module):
    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def extra_repr(self):
        return "" if self.approximate == "none" else f"approximate={self.approximate!r}"

    def forward(self, x):
        return F.gelu(x, self.approximate)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class SiLU(Module):
    def forward(self, x):
        return F.silu(x)


class Softmax(Module):
    def __init__(self, axis=-1, dim=None):
        super().__init__()
        self.axis = axis if dim is None else dim

    def extra_repr(self):
        return f"axis={self.axis}"

    def forward(self, x):
        return F.softmax(x, axis=self.axis)


class LogSoftmax(Softmax):
    def forward(self, x):
        return F.log_softmax(x, axis=self.axis)


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)


# ---- losses as modules -------------------------------------------------------------------------
class MSELoss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, self.reduction)


class CrossEntropyLoss(MSELoss):
    def forward(self, input, target):
        return F.cross_entropy(input, target, self.reduction)


class BCELoss(MSELoss):
    def forward(self, input, target):
        return F.binary_cross_entropy(input, target, self.reduction)


class BCEWithLogitsLoss(MSELoss):
    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, self.reduction)


class NLLLoss(MSELoss):
    def forward(self, input, target):
        return F.nll_loss(input, target, self.reduction)
