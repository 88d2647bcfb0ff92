"""Tensor: the eager-looking handle on a lazy graph node, and `apply`, which records an op.

Every op checks shapes and dtypes at the call (the op table's rule) and records a node; values
are computed only when something needs them (`numpy()`, `item()`, `print`, `bool()`).
"""
import math
import weakref

import numpy as np

from . import dtypes
from .graph import AUTO_FLUSH_NODES, GRAD_MODE, PENDING, Node, leaf_node
from .kernels import backend
from .ops import OPS, Spec
from .ops.shapes import normalize_axes, normalize_axis, resolve_reshape
from .sched import materialize
from .sched.mesh import DistValue, current_mesh
from .sched import replay as _replay
from .sched.replay import REC


def _attrs_key(attrs):
    return tuple(sorted(attrs.items()))


def as_node(value, like=None):
    """A Tensor's node, or a constant leaf for a Python/NumPy scalar or array."""
    if isinstance(value, Tensor):
        return value._node
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        dtype = dtypes.scalar_dtype(value, like.dtype) if like is not None else dtypes.as_dtype(None)
        if type(value) in (float, int, bool):
            return scalar_node(value, dtype)
        return constant(np.asarray(value, dtype=dtype))
    if isinstance(value, (np.ndarray, list, tuple)):
        from .creation import array_node
        return array_node(value, None, "operand")
    raise TypeError(f"expected a Tensor, a number or an array, got {type(value).__name__}")


_SCALARS = {}


def scalar_node(value, dtype):
    """The constant leaf of a Python scalar, one per (value, dtype): a step that multiplies by the
    same learning rate every time sees the same leaf (its value is never written: it stays referenced
    here, so the executor's in-place reuse never picks it)."""
    key = (dtype, value.__class__, value if value else repr(value), backend._current)
    node = _SCALARS.get(key)
    if node is None or (isinstance(node.value, DistValue) and current_mesh() is None):
        if len(_SCALARS) > 4096:
            _SCALARS.clear()
        node = _SCALARS[key] = constant(np.asarray(value, dtype=dtype))
        node._scalar_key = key
    return node


_FAST = {}        # (type, value, dtype of the tensor beside it, backend) -> scalar_node(...)


def _fast_scalar(x, inputs):
    """The constant node of a Python scalar input on the replay fast path, or None for anything
    the normal path must handle (arrays, an int tensor next to a float scalar, ...)."""
    cls = x.__class__
    if cls is not float and cls is not int and cls is not bool:
        return None
    for like in inputs:
        if like.__class__ is Tensor or isinstance(like, Tensor):
            dtype = like._node.specs[0].dtype
            key = (cls, x, dtype, backend._current)
            node = _FAST.get(key) if x else None      # 0.0 == -0.0: zeros take the slow road
            if node is not None and _SCALARS.get(node._scalar_key) is node and node.value.__class__ is not DistValue:
                return node
            if cls is float and not dtypes.is_float(dtype):
                return None
            node = scalar_node(x, dtypes.scalar_dtype(x, dtype))
            if x and x == x and not isinstance(node.value, DistValue):
                if len(_FAST) > 4096:
                    _FAST.clear()
                _FAST[key] = node
            return node
    return None


_MULTI = set()   # ops whose shape rule gives several outputs (the fast path wraps them alike)
_new_tensor = object.__new__


def constant(array):
    dtype = dtypes.as_dtype(array.dtype)
    return leaf_node(backend.to_backend(np.asarray(array, dtype=dtype)), Spec(tuple(array.shape), dtype))


def _spec(node):
    return node.specs[0] if len(node.specs) == 1 else node.specs


def _operand_nodes(inputs):
    """Nodes of the inputs; a Python scalar takes the dtype PyTorch gives it next to the tensors,
    and an integer tensor next to a float scalar computes in float32, as in PyTorch."""
    like = next((i for i in inputs if isinstance(i, Tensor)), None)
    nodes = [as_node(i, like) for i in inputs]
    scalar_dtypes = {n.dtype for i, n in zip(inputs, nodes) if not isinstance(i, Tensor) and n.specs[0].shape == ()}
    if like is not None and dtypes.float32 in scalar_dtypes and not dtypes.is_float(like.dtype):
        nodes = [apply("cast", i, dtype=dtypes.float32)._node if isinstance(i, Tensor)
                 and not dtypes.is_float(i.dtype) else n for i, n in zip(inputs, nodes)]
    return tuple(nodes)


def _cast_operands(row, attrs, nodes, specs):
    wanted = row.input_dtypes(attrs, *[_spec(n) for n in nodes], out=specs)
    return tuple(n if dt is None or n.dtype == dt else apply("cast", Tensor._wrap(n), dtype=dt)._node
                 for n, dt in zip(nodes, wanted))


def apply(op, *inputs, **attrs):
    """Record `op` on `inputs`; returns a Tensor (or a tuple of Tensors for multi-output ops)."""
    if REC.trace is not None:
        node = REC.match_op(op, inputs, attrs, _fast_scalar)
        if node is not None:
            if len(REC.nodes) > AUTO_FLUSH_NODES and PENDING.upper_bound() > AUTO_FLUSH_NODES \
                    and len(PENDING) > AUTO_FLUSH_NODES:
                materialize()
            if op in _MULTI:
                return outputs(node)
            t = _new_tensor(Tensor)
            node.n_tensors += 1
            t._node, t._grad_value = node, None
            return t
    row = OPS[op]
    nodes = _operand_nodes(inputs)
    specs = row.infer(attrs, *[_spec(n) for n in nodes])
    if row.input_dtypes is not None:
        nodes = _cast_operands(row, attrs, nodes, specs)
    multi = isinstance(specs, tuple)
    out_float = all(dtypes.is_float(s.dtype) for s in (specs if multi else (specs,)))
    requires_grad = (GRAD_MODE.enabled and row.differentiable and out_float
                     and any(n.requires_grad for n in nodes))
    node = Node(op, _attrs_key(attrs), nodes, specs if multi else (specs,), requires_grad)
    REC.on_node(node)
    if multi:
        _MULTI.add(op)
    if PENDING.upper_bound() > AUTO_FLUSH_NODES and len(PENDING) > AUTO_FLUSH_NODES:
        materialize()
    return outputs(node) if multi else Tensor._wrap(node)


def outputs(node):
    """One Tensor per output of a multi-output node (each a `select` of it)."""
    outs = []
    n_grad = OPS[node.op].grad_outputs
    for i, spec in enumerate(node.specs):
        differentiable = n_grad is None or i < n_grad
        sel = Node("select", (("index", i),), (node,), (spec,), node.requires_grad and differentiable)
        REC.on_node(sel)
        outs.append(Tensor._wrap(sel))
    return tuple(outs)


class Tensor:
    __slots__ = ("_node", "_grad_value", "__weakref__")   # .grad: GT block below
    __array_priority__ = 1000   # so ndarray <op> Tensor defers to Tensor's reflected operator

    def __init__(self, data, dtype=None, requires_grad=False):
        from .leaves import array_node
        self._node = None
        self._grad_value = None
        self._bind(array_node(data, dtype, "tensor"))
        if requires_grad:
            self.requires_grad = True

    @classmethod
    def _wrap(cls, node):
        t = object.__new__(cls)
        node.n_tensors += 1
        t._node, t._grad_value = node, None
        return t

    @classmethod
    def _wrap_array(cls, array):
        return cls._wrap(constant(array))

    def _bind(self, node):
        if self._node is not None:
            self._node.n_tensors -= 1
        node.n_tensors += 1
        self._node = node

    def __del__(self):
        try:
            self._node.n_tensors -= 1
        except AttributeError:          # never bound (its constructor failed)
            pass

    # ---- properties ------------------------------------------------------------------------
    @property
    def shape(self):
        return self._node.specs[0].shape

    @property
    def ndim(self):
        return len(self._node.specs[0].shape)

    @property
    def dtype(self):
        return self._node.specs[0].dtype

    def size(self, axis=None):
        return self.shape if axis is None else self.shape[normalize_axis("size", axis, self.ndim)]

    def numel(self):
        return math.prod(self.shape)

    def dim(self):
        return self.ndim

    @property
    def requires_grad(self):
        return self._node.requires_grad

    @requires_grad.setter
    def requires_grad(self, flag):
        node = self._node
        if not flag:
            if node.requires_grad and not node.leaf:
                raise RuntimeError("requires_grad: can only be turned off on leaf tensors; use detach()")
            node.requires_grad, node.leaf, node.owner = False, False, None
            REC.mark(node)
            return
        if not dtypes.is_float(self.dtype):
            raise TypeError(f"requires_grad: only floating-point tensors can require gradients, "
                            f"got {self.dtype} of shape {self.shape}")
        if node.requires_grad and not node.leaf:
            return
        if node.value is None:
            # a pending result becomes a leaf of its own: cut it from the graph that made it
            self._bind(apply("alias", self)._node)
            node = self._node
        node.requires_grad, node.leaf, node.owner = True, True, weakref.ref(self)
        REC.mark(node)

    def requires_grad_(self, flag=True):
        self.requires_grad = flag
        return self

    @property
    def is_leaf(self):
        return self._node.leaf or not self._node.requires_grad

    # ---- values ----------------------------------------------------------------------------
    def _value(self):
        if self._node.value is None:
            materialize(extra=(self._node,))
        if self._node.value is None:
            raise self._node.error
        value = self._node.value
        if isinstance(value, DistValue):
            return value.to_host()
        return backend.to_host(value)

    def numpy(self):
        return np.array(self._value(), copy=True)

    def item(self):
        if self.numel() != 1:
            raise ValueError(f"item: only a tensor with one element can be converted to a Python "
                             f"number, got shape {self.shape}")
        return self._value().reshape(()).item()

    def tolist(self):
        return self._value().tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.dtype.kind not in "iu":
            raise TypeError(f"__index__: only integer tensors can be used as an index, got {self.dtype}")
        return int(self.item())

    def __bool__(self):
        if self.numel() != 1:
            raise ValueError(f"bool: the truth value of a tensor with shape {self.shape} is ambiguous")
        return bool(self.item())

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __array__(self, dtype=None, copy=None):
        arr = self._value()
        return arr.astype(dtype) if dtype is not None else np.array(arr, copy=True)

    def __repr__(self):
        body = np.array2string(self._value(), separator=", ", prefix="tensor(")
        extra = "" if self.dtype == dtypes.float32 else f", dtype={self.dtype}"
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({body}{extra}{grad})"

    __str__ = __repr__
    __hash__ = object.__hash__

    # ---- autograd ----------------------------------------------------------------------------
    def detach(self):
        return apply("alias", self) if self._node.value is None else Tensor._wrap(
            leaf_node(self._node.value, self._node.specs[0]))

    def backward(self, gradient=None, retain_graph=False):
        from .functions import run_backward
        run_backward(self, gradient, retain_graph)

    # ==== GT compat (owner: gt) -- in-place updates ===========================================
    # GT's rule: an in-place update of a leaf that requires grad, outside gt.no_grad(), updates the
    # value and records nothing (as if under no_grad), with a warning once per call site.
    # Underneath it is functional: the tensor is re-pointed at a new node.
    def _warn_gt_update(self, op):
        from ._gtwarn import warn_once
        warn_once(f"{op}: in-place update of a leaf tensor that requires grad (shape {self.shape}) outside "
                  f"gt.no_grad(): the value is updated and no gradient is recorded (as in GT); "
                  f"wrap the update in `with gt.no_grad():`")

    def _inplace(self, op, compute):
        """Store `compute()` in place; a GT leaf update computes it with gradient recording off."""
        node = self._node
        if not (GRAD_MODE.enabled and node.leaf and node.requires_grad):     # not GT's leaf update
            return self._assign(compute(), op)
        saved, GRAD_MODE.enabled = GRAD_MODE.enabled, False
        try:
            self._assign(compute(), op)
        finally:
            GRAD_MODE.enabled = saved
        self._warn_gt_update(op)       # only once the update is done: a failed call only raises
        return self

    def _assign(self, result, op):
        mine, theirs = self._node.specs[0], result._node.specs[0]
        gt_update = GRAD_MODE.enabled and self._node.leaf and self._node.requires_grad   # GT's leaf update
        if theirs is not mine:          # a replayed step's update has the very spec of the value it replaces
            result = self._fit(result, op, mine, theirs)
        was_leaf = self._node.leaf and self._node.requires_grad
        node = result._node
        if was_leaf:
            if node.n_tensors > 1 or node.value is not None or node.requires_grad:
                node = apply("alias", result)._node   # do not turn a shared node into our leaf
            node.requires_grad, node.leaf, node.owner = True, True, weakref.ref(self)
            REC.mark(node)
        self._bind(node)
        if gt_update:
            self._warn_gt_update(op)
        return self

    def _fit(self, result, op, mine, theirs):
        """`result` as it can be stored in place into this tensor (its dtype), or the error."""
        if theirs.shape != mine.shape:
            raise ValueError(f"{op}: result of shape {result.shape} cannot be stored in place into a "
                             f"tensor of shape {self.shape}")
        if theirs.dtype != mine.dtype:
            if dtypes.is_float(result.dtype) and not dtypes.is_float(self.dtype):
                raise TypeError(f"{op}: result dtype {result.dtype} cannot be stored in place into {self.dtype}")
            result = result.astype(self.dtype)
        return result

    def __iadd__(self, other):
        return self._inplace("__iadd__", lambda: self + other)

    def __isub__(self, other):
        return self._inplace("__isub__", lambda: self - other)

    def __imul__(self, other):
        return self._inplace("__imul__", lambda: self * other)

    def __itruediv__(self, other):
        return self._inplace("__itruediv__", lambda: self / other)

    def _filled(self, op, value):
        if value.__class__ is not int and not isinstance(value, (float, bool, np.number, np.bool_)):
            raise TypeError(f"{op}: fill value must be a number, got {value!r}")
        spec = self._node.specs[0]
        return apply("fill", shape=spec.shape, value=spec.dtype.type(value).item(), dtype=spec.dtype)

    def zero_(self):
        return self._inplace("zero_", lambda: self._filled("zero_", 0))

    def fill_(self, value):
        return self._inplace("fill_", lambda: self._filled("fill_", value))

    def copy_(self, src):
        src = src if isinstance(src, Tensor) else Tensor(np.asarray(src), dtype=self.dtype)
        from .ops.shapes import broadcast_shapes
        if broadcast_shapes("copy_", src.shape, self.shape) != self.shape:
            raise ValueError(f"copy_: cannot copy a tensor of shape {src.shape} into shape {self.shape}")
        return self._inplace("copy_", lambda: src.expand(self.shape) if src.shape != self.shape else src)

    def __setitem__(self, key, value):
        from .indexing import parse_index
        spec, arrays = parse_index(self, key, check_pending=True)
        value = value if isinstance(value, Tensor) else Tensor._wrap(as_node(value, self))
        if value.dtype != self.dtype:
            value = value.astype(self.dtype)
        self._inplace("__setitem__", lambda: apply("setitem", self, value, *arrays, spec=spec))
    # ==== end GT compat (in-place updates) ===================================================

    def __getitem__(self, key):
        from .indexing import parse_index
        spec, arrays = parse_index(self, key)
        return apply("index", self, *arrays, spec=spec)

    # ---- arithmetic ----------------------------------------------------------------------------
    def __add__(self, o): return apply("add", self, o)
    def __radd__(self, o): return apply("add", o, self)
    def __sub__(self, o): return apply("sub", self, o)
    def __rsub__(self, o): return apply("sub", o, self)
    def __mul__(self, o): return apply("mul", self, o)
    def __rmul__(self, o): return apply("mul", o, self)
    def __truediv__(self, o): return apply("div", self, o)
    def __rtruediv__(self, o): return apply("div", o, self)
    def __pow__(self, o): return apply("pow", self, o)
    def __rpow__(self, o): return apply("pow", o, self)
    def __neg__(self): return apply("neg", self)
    def __pos__(self): return self
    def __abs__(self): return apply("abs", self)
    def __eq__(self, o): return apply("eq", self, o)
    def __ne__(self, o): return apply("ne", self, o)
    def __lt__(self, o): return apply("lt", self, o)
    def __le__(self, o): return apply("le", self, o)
    def __gt__(self, o): return apply("gt", self, o)
    def __ge__(self, o): return apply("ge", self, o)

    def __matmul__(self, o):
        if o.__class__ is Tensor:       # two matrices (or stacks) that fit: nothing to promote or check
            a, b = self._node.specs[0].shape, o._node.specs[0].shape
            if len(a) > 1 and len(b) > 1 and a[-1] == b[-2]:
                return apply("matmul", self, o)
        from .functions import matmul
        return matmul(self, o)

    def __rmatmul__(self, o):
        from .functions import matmul
        return matmul(o, self)

    # ---- elementwise methods ---------------------------------------------------------------
    def exp(self): return apply("exp", self)
    def log(self): return apply("log", self)
    def sqrt(self): return apply("sqrt", self)
    def abs(self): return apply("abs", self)
    def sign(self): return apply("sign", self)
    def relu(self): return apply("relu", self)
    def sigmoid(self): return apply("sigmoid", self)
    def tanh(self): return apply("tanh", self)
    def gelu(self): return apply("gelu", self)

    def clamp(self, min=None, max=None):
        lo = None if min is None else float(min)
        hi = None if max is None else float(max)
        return apply("clamp", self, lo=lo, hi=hi)

    clip = clamp

    def astype(self, dtype):
        dtype = dtypes.as_dtype(dtype, "astype")
        return self if dtype == self.dtype else apply("cast", self, dtype=dtype)

    def to(self, dtype):
        return self.astype(dtype)

    def float(self): return self.astype(dtypes.float32)
    def double(self): return self.astype(dtypes.float64)
    def long(self): return self.astype(dtypes.int64)
    def int(self): return self.astype(dtypes.int32)
    def bool(self): return self.astype(dtypes.bool_)

    def softmax(self, axis=-1, dim=None):
        from .functions import softmax
        return softmax(self, axis if dim is None else dim)

    def log_softmax(self, axis=-1, dim=None):
        from .functions import log_softmax
        return log_softmax(self, axis if dim is None else dim)

    # ---- reductions --------------------------------------------------------------------------
    def _axes(self, op, axis, dim):
        axis = axis if dim is None else dim
        ndim = len(self._node.specs[0].shape)
        if axis.__class__ is int and -ndim <= axis < ndim:
            return (axis % ndim,)          # the common case, without the general normalizing
        return normalize_axes(op, axis, ndim)

    def sum(self, axis=None, keepdims=False, dim=None, keepdim=None):
        axes = self._axes("sum", axis, dim)
        return apply("sum", self, axes=axes, keepdims=bool(keepdim if keepdim is not None else keepdims))

    def mean(self, axis=None, keepdims=False, dim=None, keepdim=None):
        axes = self._axes("mean", axis, dim)
        count = math.prod(self.shape[a] for a in axes)
        if count == 0:
            raise ValueError(f"mean: cannot average over an empty axis (shape {self.shape}, axes {axes})")
        x = self if dtypes.is_float(self.dtype) else self.astype(dtypes.float32)
        keep = bool(keepdim if keepdim is not None else keepdims)
        return apply("sum", x, axes=axes, keepdims=keep) * (1.0 / count)

    def var(self, axis=None, keepdims=False, ddof=0, dim=None, keepdim=None, unbiased=None, correction=None):
        axes = self._axes("var", axis, dim)
        ddof = correction if correction is not None else (int(unbiased) if unbiased is not None else ddof)
        count = math.prod(self.shape[a] for a in axes)
        if count - ddof <= 0:
            raise ValueError(f"var: {count} elements over axes {axes} of shape {self.shape} leave no "
                             f"degrees of freedom with ddof={ddof}")
        centered = self - self.mean(axes, keepdims=True)
        keep = keepdim if keepdim is not None else keepdims
        return (centered * centered).sum(axes, keepdims=keep) * (1.0 / (count - ddof))

    def std(self, *args, **kw):
        return self.var(*args, **kw).sqrt()

    def max(self, axis=None, keepdims=False, dim=None, keepdim=None):
        axes = self._axes("max", axis, dim)
        return apply("max", self, axes=axes, keepdims=bool(keepdim if keepdim is not None else keepdims))

    def min(self, axis=None, keepdims=False, dim=None, keepdim=None):
        axes = self._axes("min", axis, dim)
        return apply("min", self, axes=axes, keepdims=bool(keepdim if keepdim is not None else keepdims))

    def argmax(self, axis=None, keepdims=False, dim=None, keepdim=None):
        return self._arg("argmax", axis if dim is None else dim, keepdim if keepdim is not None else keepdims)

    def argmin(self, axis=None, keepdims=False, dim=None, keepdim=None):
        return self._arg("argmin", axis if dim is None else dim, keepdim if keepdim is not None else keepdims)

    def _arg(self, op, axis, keepdims):
        axis = None if axis is None else normalize_axis(op, axis, self.ndim)
        if axis is None and self.numel() == 0:
            raise ValueError(f"{op}: cannot take {op} of an empty tensor")
        return apply(op, self, axis=axis, keepdims=bool(keepdims))

    def sum_to(self, shape):
        """Sum broadcast dims away so the result has `shape` (how gradients undo broadcasting)."""
        shape = tuple(shape)
        if self.shape == shape:
            return self
        lead = self.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, d in enumerate(shape) if d == 1 and self.shape[lead + i] != 1)
        out = self.sum(axes) if axes else self
        return out.reshape(shape) if out.shape != shape else out

    # ---- shape -------------------------------------------------------------------------------
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        mine = self._node.specs[0].shape
        if shape.__class__ is not tuple or not _plain_dims(shape) or math.prod(shape) != math.prod(mine):
            shape = resolve_reshape("reshape", mine, shape)
        return self if shape == mine else apply("reshape", self, shape=shape)

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        if self.ndim == 0:
            return self.reshape(1)
        s = normalize_axis("flatten", start_dim, self.ndim)
        e = normalize_axis("flatten", end_dim, self.ndim)
        return self.reshape(self.shape[:s] + (-1,) + self.shape[e + 1:])

    def unsqueeze(self, axis, dim=None):
        axis = axis if dim is None else dim
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise TypeError(f"unsqueeze: axis must be an int, got {axis!r}")
        if not -self.ndim - 1 <= axis <= self.ndim:
            raise IndexError(f"unsqueeze: axis {axis} is out of range for a tensor with {self.ndim} dims")
        axis = axis % (self.ndim + 1)
        return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

    def squeeze(self, axis=None, dim=None):
        axis = axis if dim is None else dim
        if axis is None:
            return self.reshape(tuple(d for d in self.shape if d != 1))
        axes = normalize_axes("squeeze", axis, self.ndim)
        return self.reshape(tuple(d for i, d in enumerate(self.shape) if not (i in axes and d == 1)))

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        ndim = len(self._node.specs[0].shape)
        if len(axes) != ndim:
            raise ValueError(f"permute: got {len(axes)} axes {tuple(axes)} for a tensor of shape {self.shape}")
        if axes.__class__ is not tuple or not _plain_dims(axes, ndim - 1):
            axes = tuple(normalize_axis("permute", a, ndim) for a in axes)
        base, node = self, self._node
        if node.op == "permute" and node.inputs:
            # a permute of a permute is one permute (x.T.T is x): no copy, no extra node
            inner = dict(node.attrs)["axes"]
            axes, base = tuple(inner[a] for a in axes), Tensor._wrap(node.inputs[0])
        return base if axes == tuple(range(self.ndim)) else apply("permute", base, axes=axes)

    def transpose(self, a=-2, b=-1):
        a, b = normalize_axis("transpose", a, self.ndim), normalize_axis("transpose", b, self.ndim)
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.permute(*axes)

    def swap_last(self):
        return self.transpose(-2, -1) if self.ndim >= 2 else self

    @property
    def T(self):
        return self.swap_last()

    @property
    def mT(self):
        return self.swap_last()

    def expand(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        lead = len(shape) - self.ndim
        if lead < 0:
            raise ValueError(f"expand: cannot expand shape {self.shape} to fewer dims {tuple(shape)}")
        shape = tuple(self.shape[i - lead] if d == -1 and i >= lead else d for i, d in enumerate(shape))
        if any(not isinstance(d, int) or d < 0 for d in shape):
            raise ValueError(f"expand: invalid size in {tuple(shape)} for a tensor of shape {self.shape} "
                             f"(-1 keeps an existing dim; new leading dims need a size)")
        return self if shape == self.shape else apply("expand", self, shape=shape)

    def broadcast_to(self, shape):
        return self.expand(shape)

    # ==== GT compat (owner: gt) -- GT's Tensor API on top of PyTorch's =======================
    # .grad/._grad (GT reads both), .data as an array for NumPy, .id, split/chunk returning lists.
    # A non-leaf tensor's gradient (GT gives one to every recorded input) is kept per node here,
    # filled by functions.nonleaf_grad during backward().
    _NONLEAF_GRADS = weakref.WeakKeyDictionary()

    @property
    def grad(self):
        g = self._grad_value
        if g is None and not self._node.leaf:
            g = Tensor._NONLEAF_GRADS.get(self._node)
        return g

    @grad.setter
    def grad(self, value):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"grad: expected a Tensor or None, got {type(value).__name__}")
        if value is not None and value.shape != self.shape:
            raise ValueError(f"grad: a gradient of shape {value.shape} cannot be set on a tensor of "
                             f"shape {self.shape}")
        self._grad_value = value
        if value is None:
            Tensor._NONLEAF_GRADS.pop(self._node, None)

    _grad = grad

    @property
    def data(self):
        """The value, detached (PyTorch); also an array for NumPy (`np.mean(t.data)`, as in GT)."""
        return TensorData._wrap(self.detach()._node)

    @data.setter
    def data(self, other):
        self._assign(other if isinstance(other, Tensor) else Tensor(other), "data")

    @property
    def id(self):
        """A number naming the tensor's current value (GT's tensor id: an in-place update changes it)."""
        return self._node.seq

    def split(self, split_size_or_sections=None, dim=None, axis=None, split_size=None):
        """Pieces of `split_size` along `dim` (or a list of sizes), as a list (GT; PyTorch gives a tuple)."""
        from .functions import split
        size = split_size if split_size is not None else split_size_or_sections
        if size is None:
            raise TypeError("split: missing the chunk size (split_size=) or the list of sizes")
        return list(split(self, size, _pick_axis("split", axis, dim)))

    def chunk(self, chunks, dim=None, axis=None):
        """`chunks` pieces along `dim` (the last may be smaller), as a list."""
        from .functions import chunk
        return list(chunk(self, chunks, _pick_axis("chunk", axis, dim)))


def _plain_dims(values, high=None):
    """Are all `values` ints (not bools) >= 0 (and <= high)?  Then they need no normalizing."""
    for v in values:
        if v.__class__ is not int or v < 0 or (high is not None and v > high):
            return False
    return True


def _pick_axis(op, axis, dim):
    if axis is not None and dim is not None and axis != dim:
        raise TypeError(f"{op}: got both axis={axis} and dim={dim}")
    return 0 if axis is None and dim is None else (axis if axis is not None else dim)


def _host(value):
    """Tensors (also inside lists, tuples and dicts) as NumPy arrays."""
    if isinstance(value, Tensor):
        return value._value()
    if isinstance(value, (list, tuple)):
        return type(value)(_host(v) for v in value)
    if isinstance(value, dict):
        return {k: _host(v) for k, v in value.items()}
    return value


class TensorData(Tensor):
    """What `t.data` returns: a detached Tensor that NumPy functions also take as an array
    (`np.mean(t.data)`, `np.asarray(t.data)`), as GT's `.data` is."""
    __slots__ = ()

    def __array_function__(self, func, types, args, kwargs):
        return func(*_host(args), **_host(kwargs))
# ==== end GT compat ===================================================================

_replay.TENSOR[0] = Tensor
