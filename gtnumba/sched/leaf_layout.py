"""Where each leaf of a step lives on the mesh: its current layout, the user's placement, or the
layout chosen by cost (sched.cost) for parameters and data nobody placed."""
from ..layout import REPLICATE, Shard, even_sizes
from . import cost
from .mesh import DistValue, Flat, unsliced


def leaf_layouts(key, leaves, workers):
    """The layout of every leaf of the step `key` (see plan.describe): parameters and data batches
    that are not on the mesh yet and that nobody placed get the layout moving the fewest bytes."""
    layouts = tuple(leaf_layout(n, workers) for n in leaves)
    free = {i: _is_data(n) for i, n in enumerate(leaves) if _choosable(n, workers)}
    small = tuple(i for i, n in enumerate(leaves) if i not in free and _small_data(n, workers))
    if not free and not small:
        return layouts
    # a parameter the last step's update left sliced (ZeRO-1) is a replicated parameter: choosing the
    # data's layouts around its slices made the next update whole, the step after sliced, and so on
    chosen = cost.choose(key, unsliced(layouts), free, workers, small)[0]
    return tuple(l if isinstance(l, Flat) else c for l, c in zip(layouts, chosen))


def leaf_layout(node, workers):
    """Where a leaf lives: its current layout, the user's placement, or the auto-sharding default
    (user data batches on Shard(0), everything else replicated)."""
    if isinstance(node.value, DistValue):
        return node.value.layout
    shape = node.shape
    placement = node.placement
    if placement is None and _is_data(node) and len(shape) >= 1:
        placement = Shard(0)
    if isinstance(placement, Shard):
        return Shard(placement.dim, even_sizes(shape[placement.dim], workers))
    return REPLICATE


def _is_data(node):
    return node.role == "data" and not node.requires_grad


def _small_data(node, workers):
    """A small data batch nobody placed (labels): it may go whole to every worker (cost.choose)."""
    return (workers > 1 and _is_data(node) and not isinstance(node.value, DistValue) and node.placement is None
            and len(node.shape) >= 1)


def _choosable(node, workers):
    """A parameter (a leaf that requires grad) or a data batch, not placed yet, by nobody."""
    if isinstance(node.value, DistValue) or node.placement is not None or workers < 2:
        return False
    if not (node.requires_grad or _is_data(node)) or len(node.shape) < 1 + _is_data(node):
        return False
    return cost.nbytes(node.specs[0]) >= cost.MIN_BYTES
