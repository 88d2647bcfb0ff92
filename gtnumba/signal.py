"""GT's named signals, mapped to gtnumba layouts (gt.signal.context / gt.signal.tensor).

A signal's configuration (gtnumba.config: YAML or register_config) gives a forward layout,
`Shard(axis)` or `Replicate`, and optionally a backward signal whose layout the gradients get.
What a signal lays out (each through gtnumba.placement.shard / replicate):

- `gt.signal.tensor(t, name)`: t itself (an axis that t lacks is an error at the call);
- inside `with gt.signal.context(name):` every tensor made by a creation function (gt.randn,
  gt.tensor, gt.zeros, ...) and, when the scope closes, every parameter (a leaf that requires grad
  and has no layout yet) that an op recorded in the scope took as a direct input; tensors the axis
  does not fit are left to the automatic layout. Results of ops follow from their inputs by the
  sharding rules.
- the gradient of a tensor laid out by a signal gets the layout of the signal's backward signal
  (`backward=` here, else the config's `backward:`); without one, the sharding rules decide.

A signal with no configuration changes nothing (GT: remove the YAML and the same code runs).
Without a cluster, layouts change nothing either.  The `workers:` of a config must exist on the
mesh; a subset of them is not honoured (gtnumba lays a tensor out over every worker), with a warning.
"""
import contextlib
import threading
import weakref

import numpy as np

from . import config as _config, dtypes
from ._gtwarn import warn_once
from .graph import GRAD_MODE, PENDING, leaf_node
from .ops import Spec
from .placement import replicate, shard
from .sched.mesh import DistValue, current_mesh


class _Scope:
    __slots__ = ("name", "backward", "start")

    def __init__(self, name, backward, start):
        self.name, self.backward, self.start = name, backward, start


class _Stack(threading.local):
    def __init__(self):
        self.scopes = []


_STACK = _Stack()
_NOTHING = np.zeros(0, np.float32)
_NOTHING_SPEC = Spec((0,), dtypes.float32)
TAGS = {}        # id(tensor or node) laid out by a signal -> (weakref to it, backward signal name or None)


def _check_name(who, name):
    if not isinstance(name, str) or not name:
        raise TypeError(f"gt.signal.{who}: a signal name must be a non-empty string, got {name!r}")


def _shard_config(name):
    entry = _config.get_signal_config(name)
    shard_config = entry.shard if entry is not None else None
    mesh = current_mesh()
    if shard_config is not None and shard_config.workers is not None and mesh is not None:
        missing = [w for w in shard_config.workers if w >= mesh.workers]
        if missing:
            raise ValueError(f"signal {name!r}: workers {missing} do not exist; the mesh has {mesh.workers} "
                             f"workers (0..{mesh.workers - 1})")
        if sorted(set(shard_config.workers)) != list(range(mesh.workers)):
            warn_once(f"signal {name!r}: gtnumba lays tensors out over all {mesh.workers} workers; the "
                      f"subset {shard_config.workers} is not honoured")
    return shard_config


def _backward_name(name, backward):
    if backward is not None:
        return backward
    entry = _config.get_signal_config(name)
    return entry.backward_signal if entry is not None else None


def _tag(obj, backward):
    key = id(obj)
    TAGS[key] = (weakref.ref(obj, lambda _, key=key: TAGS.pop(key, None)), backward)


def _fits(t, shard_config):
    return shard_config.replicated or -t.ndim <= shard_config.axis < t.ndim


def _place(t, shard_config):
    """Lay t out in place: a leaf keeps being the same leaf; a computed value is redistributed
    (its Tensor is re-pointed at the redistributed node, which keeps the gradient path)."""
    node = t._node
    if current_mesh() is None and not (node.op == "leaf" and node.value is not None):
        return t            # no cluster: only a stored value keeps a layout (for a later gt.init)
    how = (lambda x: replicate(x)) if shard_config.replicated else (lambda x: shard(x, shard_config.axis))
    if not node.leaf:
        placed = how(t)
        if placed is not t:
            t._bind(placed._node)
        return t
    saved, GRAD_MODE.enabled = GRAD_MODE.enabled, False
    try:
        placed = how(t)
        if placed is not t:
            t._assign(placed, "signal")
    finally:
        GRAD_MODE.enabled = saved
    return t


def _apply(t, name, backward, strict):
    shard_config = _shard_config(name)
    if shard_config is not None:
        if not _fits(t, shard_config):
            if strict:
                raise IndexError(f"signal {name!r}: axis {shard_config.axis} is out of range for a tensor of "
                                 f"shape {t.shape}")
            return t
        _place(t, shard_config)
    _tag(t if t._node.leaf else t._node, _backward_name(name, backward))
    return t


# ---- the public API ---------------------------------------------------------------------------
def tensor(tensor_arg, name, backward_name=None):
    """Lay `tensor_arg` out as signal `name` says (and its gradient as its backward signal says)."""
    from ._tensor import Tensor
    _check_name("tensor", name)
    if not isinstance(tensor_arg, Tensor):
        raise TypeError(f"gt.signal.tensor({name!r}): expected a Tensor, got {type(tensor_arg).__name__}")
    return _apply(tensor_arg, name, backward_name, strict=True)


def enter(name, backward=None):
    _check_name("enter", name)
    if backward is not None:
        _check_name("enter", backward)
    _shard_config(name)
    _STACK.scopes.append(_Scope(name, backward, _next_seq()))


def _next_seq():
    """Nodes recorded from now on have a larger seq than this (a throw-away node's seq)."""
    return leaf_node(_NOTHING, _NOTHING_SPEC).seq


def exit(name):  # noqa: A001  (GT's name)
    scopes = _STACK.scopes
    if not scopes:
        raise RuntimeError(f"gt.signal.exit({name!r}): no signal scope is open")
    if scopes[-1].name != name:
        raise RuntimeError(f"gt.signal.exit({name!r}): the innermost open scope is {scopes[-1].name!r}")
    _place_scope_parameters(scopes.pop())


@contextlib.contextmanager
def context(name, backward=None):
    """Ops and tensors made inside are laid out as signal `name` says (see the module doc)."""
    enter(name, backward)
    try:
        yield
    finally:
        exit(name)


signal = context


def current_signal():
    return _STACK.scopes[-1].name if _STACK.scopes else None


def current_backward_signal():
    return _STACK.scopes[-1].backward if _STACK.scopes else None


# ---- hooks used by creation functions and by backward() -------------------------------------
def scoped(create):
    """A creation function whose tensors take the innermost open signal's layout."""
    def made_in_scope(*args, **kwargs):
        t = create(*args, **kwargs)
        if _STACK.scopes:
            scope = _STACK.scopes[-1]
            _apply(t, scope.name, scope.backward, strict=False)
        return t
    made_in_scope.__name__ = create.__name__
    made_in_scope.__doc__ = create.__doc__
    made_in_scope.__wrapped__ = create
    return made_in_scope


def _place_scope_parameters(scope):
    shard_config = _shard_config(scope.name)
    backward = _backward_name(scope.name, scope.backward)
    if shard_config is None and backward is None:
        return
    for node in [n for n in list(PENDING) if n.seq > scope.start and n.requires_grad and not n.leaf]:
        for inp in node.inputs:
            owner = inp.owner() if inp.leaf and inp.owner is not None else None
            if owner is None or id(owner) in TAGS or inp.placement is not None or isinstance(inp.value, DistValue):
                continue
            if shard_config is not None and _fits(owner, shard_config):
                _place(owner, shard_config)
            _tag(owner, backward)


def grad_layout(obj, g):
    """The gradient `g` of `obj` (a leaf's Tensor, or a non-leaf node), laid out by its backward signal."""
    entry = TAGS.get(id(obj))
    if entry is None or entry[1] is None or entry[0]() is not obj:
        return g
    shard_config = _shard_config(entry[1])
    if shard_config is None or not _fits(g, shard_config):
        return g
    return replicate(g) if shard_config.replicated else shard(g, shard_config.axis)
