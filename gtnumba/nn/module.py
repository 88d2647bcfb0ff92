"""nn.Module: a tree of modules whose parameters are found by walking its attributes.

Parameters are leaf Tensors that require grad, reached through attributes, through lists, tuples
and dicts (nested too), through sub-modules, and through a `_parameters` list that GT-style code
extends by hand (`self._parameters.append(t)`).  A tensor reachable twice counts once, under the
first name it was found by (attributes before `_parameters`).
"""
from collections import OrderedDict, namedtuple

import numpy as np

from .. import dtypes
from ..creation import tensor as _tensor
from ..functions import no_grad
from .._tensor import Tensor

_INTERNAL = ("_parameters", "_buffers", "training")

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


# ---- Parameter ------------------------------------------------------------------------------
class _ParameterMeta(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, Tensor) and obj.requires_grad and obj.is_leaf


class Parameter(metaclass=_ParameterMeta):
    """`nn.Parameter(data)`: a leaf Tensor that requires grad, made from a Tensor or array-like.

    It returns a plain gtnumba Tensor (a new leaf sharing the value when given a Tensor);
    `isinstance(t, nn.Parameter)` is true for any leaf tensor that requires grad.
    """

    def __new__(cls, data=None, requires_grad=True, dtype=None):
        if data is None:
            data = np.zeros((0,), np.float32)
        if isinstance(data, Tensor):
            t = data.detach()
            if dtype is not None:
                t = t.astype(dtype).detach()
        else:
            arr = np.asarray(data)
            if dtype is None and arr.dtype.kind not in "f":
                dtype = dtypes.float32 if arr.dtype.kind in "iub" else None
            t = _tensor(arr, dtype=dtype)
        if requires_grad:
            if not dtypes.is_float(t.dtype):
                raise TypeError(f"Parameter: only floating-point tensors can be parameters, got {t.dtype} "
                                f"of shape {t.shape}")
            t.requires_grad = True
        return t


def _is_param(value):
    return isinstance(value, Tensor) and value.requires_grad and value.is_leaf


def _walk(value, prefix, seen_tensors, seen_modules, want, descend=True):
    """Yield (dotted name, object) for parameters (`want='params'`) or modules (`'modules'`)."""
    if isinstance(value, Tensor):
        if want == "params" and _is_param(value) and id(value) not in seen_tensors:
            seen_tensors.add(id(value))
            yield prefix, value
    elif isinstance(value, Module):
        if id(value) in seen_modules or not descend:
            return
        seen_modules.add(id(value))
        if want == "modules":
            yield prefix, value
        for name, item in value._member_items():
            yield from _walk(item, f"{prefix}.{name}" if prefix else name, seen_tensors, seen_modules, want)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if isinstance(item, (Tensor, Module, list, tuple, dict)):
                yield from _walk(item, f"{prefix}.{i}" if prefix else str(i), seen_tensors, seen_modules, want,
                                 descend)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (Tensor, Module, list, tuple, dict)):
                yield from _walk(item, f"{prefix}.{key}" if prefix else str(key), seen_tensors, seen_modules,
                                 want, descend)


def _direct_modules(value, prefix):
    """Modules inside `value` (a module, or containers of them), not looking inside modules."""
    if isinstance(value, Module):
        yield prefix, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _direct_modules(item, f"{prefix}.{i}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _direct_modules(item, f"{prefix}.{key}")


class Module:
    """Base class of layers and models: override `forward`; call the module to run it."""

    training = True

    def __init__(self):
        object.__setattr__(self, "_parameters", [])
        object.__setattr__(self, "training", True)

    def __getattr__(self, name):
        # `_parameters` exists even when a subclass forgot super().__init__() (GT code appends to it)
        if name == "_parameters":
            params = []
            object.__setattr__(self, "_parameters", params)
            return params
        if name == "_modules":        # GT's record of sub-modules, read-only here
            return dict(self.named_children())
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    # ---- what the walk sees -------------------------------------------------------------
    def _member_items(self):
        """(name, value) pairs the parameter/module walk descends into, in a stable order."""
        attrs = vars(self)
        items = [(k, v) for k, v in attrs.items() if k not in _INTERNAL]
        extra = attrs.get("_parameters")
        if isinstance(extra, dict):
            items.extend(extra.items())
        elif isinstance(extra, (list, tuple)) and extra:
            items.append(("_parameters", extra))
        return items

    # ---- running -------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}: forward() is not implemented")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- parameters and modules ---------------------------------------------------------------
    def named_parameters(self, prefix="", recurse=True):
        if recurse:
            yield from _walk(self, prefix, set(), set(), "params")
            return
        seen = set()
        for name, value in self._member_items():
            full = f"{prefix}.{name}" if prefix else name
            yield from _walk(value, full, seen, set(), "params", descend=False)

    def parameters(self, recurse=True):
        """A list (GT code takes len() of it; PyTorch code iterates it)."""
        return [p for _, p in self.named_parameters(recurse=recurse)]

    def named_modules(self, prefix=""):
        yield from _walk(self, prefix, set(), set(), "modules")

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        """Immediate sub-modules (reached without passing through another module), deduplicated."""
        seen = {id(self)}
        for name, value in self._member_items():
            for sub_name, m in _direct_modules(value, name):
                if id(m) not in seen:
                    seen.add(id(m))
                    yield sub_name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def register_parameter(self, name, param):
        if param is not None and not _is_param(param):
            raise TypeError(f"{type(self).__name__}.register_parameter({name!r}): expected a leaf tensor "
                            f"that requires grad (nn.Parameter), got {type(param).__name__}")
        setattr(self, name, param)

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.add_module({name!r}): expected a Module, got "
                            f"{type(module).__name__}")
        setattr(self, name, module)

    register_module = add_module

    def register_buffer(self, name, value, persistent=True):
        """A tensor that is state but not a parameter (saved in state_dict when persistent)."""
        if value is not None and not isinstance(value, Tensor):
            value = _tensor(np.asarray(value))
        buffers = vars(self).get("_buffers")
        if buffers is None:
            buffers = {}
            object.__setattr__(self, "_buffers", buffers)
        buffers[name] = persistent
        object.__setattr__(self, name, value)

    def named_buffers(self, prefix=""):
        for mod_name, m in self.named_modules(prefix):
            for name, persistent in vars(m).get("_buffers", {}).items():
                value = getattr(m, name, None)
                if isinstance(value, Tensor):
                    yield (f"{mod_name}.{name}" if mod_name else name), value

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    def _persistent_buffers(self):
        for mod_name, m in self.named_modules():
            for name, persistent in vars(m).get("_buffers", {}).items():
                value = getattr(m, name, None)
                if persistent and isinstance(value, Tensor):
                    yield (f"{mod_name}.{name}" if mod_name else name), m, name, value

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self):
        """name -> NumPy copy of every parameter and persistent buffer, in named_parameters order."""
        out = OrderedDict()
        for name, p in self.named_parameters():
            out[name] = p.numpy()
        for name, _, _, b in self._persistent_buffers():
            out.setdefault(name, b.numpy())
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy values in; every error (missing/unexpected keys, shapes) is raised before any change."""
        who = f"{type(self).__name__}.load_state_dict"
        if not hasattr(state_dict, "items"):
            raise TypeError(f"{who}: expected a dict of name -> array, got {type(state_dict).__name__}")
        params = OrderedDict(self.named_parameters())
        buffers = OrderedDict((name, (m, attr, b)) for name, m, attr, b in self._persistent_buffers())
        own = list(params) + [n for n in buffers if n not in params]
        given = {k: (v.numpy() if isinstance(v, Tensor) else np.asarray(v)) for k, v in state_dict.items()}
        missing = [k for k in own if k not in given]
        unexpected = [k for k in given if k not in params and k not in buffers]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        for name in own:
            if name not in given:
                continue
            target = params[name] if name in params else buffers[name][2]
            if tuple(given[name].shape) != tuple(target.shape):
                problems.append(f"shape mismatch for {name!r}: the checkpoint has {tuple(given[name].shape)}, "
                                f"the module has {tuple(target.shape)}")
            elif name in params and given[name].dtype.kind not in "fiub":
                problems.append(f"{name!r}: cannot load an array of dtype {given[name].dtype}")
        if problems:
            raise RuntimeError(f"{who}: " + "; ".join(problems))
        with no_grad():
            for name, p in params.items():
                if name in given:
                    p.data = _tensor(np.array(given[name], dtype=p.dtype))
            for name, (m, attr, b) in buffers.items():
                if name in given and name not in params:
                    object.__setattr__(m, attr, _tensor(np.array(given[name], dtype=b.dtype)))
        return IncompatibleKeys(missing, unexpected)

    # ---- training helpers -------------------------------------------------------------------
    def zero_grad(self, set_to_none=True):
        from ..creation import zeros
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            else:
                p.grad = zeros(p.shape, dtype=p.dtype).reshape(p.shape)

    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def apply(self, fn):
        for m in self.modules():
            fn(m)
        return self

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())

    def to(self, *args, **kwargs):
        """Device moves are the scheduler's business (no-op); dtype changes are refused explicitly."""
        dtype = kwargs.get("dtype")
        for a in args:
            if not isinstance(a, str) and a is not None:
                try:
                    dtype = dtypes.as_dtype(a)
                except TypeError:
                    pass
        if dtype is not None:
            dtype = dtypes.as_dtype(dtype, f"{type(self).__name__}.to")
            for name, p in self.named_parameters():
                if p.dtype != dtype:
                    raise NotImplementedError(
                        f"{type(self).__name__}.to({dtype}): parameter {name!r} is {p.dtype}; changing a "
                        f"module's dtype is not supported, construct the layers with dtype={dtype}")
        return self

    # ---- printing ------------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        head = f"{type(self).__name__}({self.extra_repr()}"
        children = list(self.named_children())
        if not children:
            return head + ")"
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in children]
        return head + "\n" + "\n".join(lines) + "\n)"
