"""Where each leaf of a step lives on the mesh: its current layout, the user's placement, or the
automatic choice."""
from ..layout import REPLICATE, Shard, even_sizes
from .mesh import DistValue


def leaf_layout(node, workers):
    """Where a leaf lives: its current layout, the user's placement, or the auto-sharding rule
    (user data batches on Shard(0), everything else replicated)."""
    if isinstance(node.value, DistValue):
        return node.value.layout
    shape = node.shape
    placement = node.placement
    if placement is None and node.role == "data" and not node.requires_grad and len(shape) >= 1:
        placement = Shard(0)
    if isinstance(placement, Shard):
        return Shard(placement.dim, even_sizes(shape[placement.dim], workers))
    return REPLICATE
