"""The lazy graph: nodes recorded by the eager API, and the registry of pending ones.

A node is pending until the executor gives it a value.  Computation edges (`inputs`) are dropped
once a node has a value and no backward pass can need them, so the graph never outgrows what the
live tensors can still reach.
"""
import itertools
import threading
import weakref

from .ops.registry import OPS


_SEQ = itertools.count()


class Node:
    __slots__ = ("op", "attrs", "inputs", "specs", "value", "requires_grad", "leaf",
                 "owner", "n_tensors", "released", "seq", "error", "placement", "role",
                 "_scalar_key", "__weakref__")

    def __init__(self, op, attrs, inputs, specs, requires_grad=False, value=None):
        self.op = op                  # op name in the table, or "leaf" for a stored value
        self.attrs = attrs            # hashable tuple of (key, value)
        self.inputs = inputs          # tuple of Nodes
        self.specs = specs            # tuple of Spec, one per output
        self.value = value            # array (or tuple of arrays) once computed
        self.requires_grad = requires_grad
        self.leaf = False             # an autograd leaf: backward accumulates into owner.grad
        self.owner = None             # weakref to the Tensor whose .grad a leaf feeds
        self.n_tensors = 0            # live Tensor objects wrapping this node
        self.released = False         # backward already ran through it (its graph is freed)
        self.seq = next(_SEQ)         # creation order: gives plans a canonical node order
        self.error = None             # the exception its computation raised, re-raised on read
        self.placement = None         # a layout the user asked for (gt.shard / gt.replicate)
        self.role = None              # "data" for user data leaves: auto-sharding splits them
        if value is None:
            _PENDING_REFS[id(self)] = _ref(self)       # PENDING.add, inlined: nodes are made by the hundred

    @property
    def shape(self):
        return self.specs[0].shape

    @property
    def dtype(self):
        return self.specs[0].dtype

    @property
    def row(self):
        return OPS[self.op]

    def set_value(self, value):
        self.value = value
        # backward never walks past a leaf, nor through a node without grad or already walked
        if self.leaf or not self.requires_grad or self.released:
            self.inputs = ()

    def __repr__(self):
        return f"Node({self.op}, {self.shape}, {self.dtype}, {'done' if self.value is not None else 'pending'})"


def leaf_node(array, spec, requires_grad=False):
    node = Node("leaf", (), (), (spec,), requires_grad=requires_grad, value=array)
    node.leaf = requires_grad
    return node


class _Pending:
    """Pending nodes, held weakly: a node nobody can reach is never computed.  A step makes hundreds
    of nodes, so this is cheaper than a WeakSet (whose references call back into Python when a
    node dies): plain weak references by id, the dead ones dropped when the set is counted or
    walked, or, when its upper bound is asked, if it has doubled since the last sweep."""
    __slots__ = ("_refs", "_sweep_at")

    def __init__(self):
        self._refs, self._sweep_at = {}, 1024

    def add(self, node):
        self._refs[id(node)] = _ref(node)

    def discard(self, node):
        r = self._refs.get(id(node))
        if r is not None and r() is node:
            del self._refs[id(node)]

    def upper_bound(self):
        """At least len(self), in O(1) amortized (the materializations and the recording of new
        ops ask it, so dead references never pile up)."""
        if len(self._refs) > self._sweep_at:
            self._sweep()
        return len(self._refs)

    def _sweep(self):
        refs = self._refs
        for k in [k for k, r in list(refs.items()) if r() is None]:
            del refs[k]
        self._sweep_at = max(1024, 2 * len(refs))

    def __len__(self):
        self._sweep()
        return len(self._refs)

    def __iter__(self):
        return iter([n for n in [r() for r in list(self._refs.values())] if n is not None])


_ref = weakref.ref
PENDING = _Pending()


def lazy(node):
    """A constant fill stays pending until something reads it (materialize computes it only then):
    a gradient zeroed by zero_() is then replaced by the next backward's gradient instead of being
    filled now and added to then, two passes over every parameter-sized gradient a step."""
    return node.op == "fill"
_PENDING_REFS = PENDING._refs

# Past this many pending nodes the API materializes on its own, so a loop that never reads a
# value (nothing distributed or lazy in the user's mind) does not grow the graph forever.
AUTO_FLUSH_NODES = 20000


class _GradMode(threading.local):
    enabled = True


GRAD_MODE = _GradMode()


def grad_enabled():
    return GRAD_MODE.enabled
