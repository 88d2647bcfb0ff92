"""Explicit placement over the workers: gt.shard(t, dim) and gt.replicate(t).

Auto-sharding already splits user data along dim 0 and replicates parameters; these override it,
e.g. to keep a batch replicated or to shard a large weight (tensor-parallel Linear).  On a leaf
(a parameter) the placement sticks through optimizer updates; on a computed value it inserts a
redistribution.  Without a cluster they change nothing.
"""
from .layout import REPLICATE, Shard, even_sizes
from .ops.shapes import normalize_axis
from .sched.mesh import DistValue, current_mesh
from ._tensor import Tensor, apply


def _placement(t, layout):
    mesh = current_mesh()
    if isinstance(layout, Shard) and mesh is not None:
        layout = Shard(layout.dim, even_sizes(t.shape[layout.dim], mesh.workers))
    node = t._node
    if node.value is not None and node.op == "leaf":
        if isinstance(node.value, DistValue):
            node.value = _home(node.value)      # re-placed from the host by the next plan
        node.placement = layout
        return t
    return apply("alias", t, placement=layout)


def _home(value):
    from .kernels import backend
    return backend.to_backend(value.to_host())


def shard(t, dim=0):
    if not isinstance(t, Tensor):
        raise TypeError(f"shard: expected a Tensor, got {type(t).__name__}")
    if t.ndim == 0:
        raise ValueError("shard: a 0-d tensor has no dim to shard")
    return _placement(t, Shard(normalize_axis("shard", dim, t.ndim)))


def replicate(t):
    if not isinstance(t, Tensor):
        raise TypeError(f"replicate: expected a Tensor, got {type(t).__name__}")
    return _placement(t, REPLICATE)
