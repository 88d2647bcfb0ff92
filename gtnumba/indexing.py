"""Turn a Python index (ints, slices, None, ..., integer/bool arrays or tensors) into an op spec."""
import numpy as np

from . import dtypes
from ._tensor import Tensor


def _int(value, what):
    if isinstance(value, Tensor):
        return int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise IndexError(f"index: {what} must be an int, got {value!r}")


def _slice_item(s):
    return ("slice",) + tuple(None if v is None else _int(v, "a slice bound") for v in (s.start, s.stop, s.step))


def _check_mask(mask, shape, axis):
    covered = shape[axis:axis + mask.ndim]
    if mask.shape != tuple(covered):
        raise IndexError(f"index: a bool mask of shape {mask.shape} does not match dims {tuple(covered)} "
                         f"of the tensor of shape {tuple(shape)} at axis {axis}")


def _array_items(item, arrays, tensor_shape, spec_so_far):
    """Integer arrays become inputs; a bool mask becomes its nonzero positions (needs its values)."""
    if isinstance(item, Tensor):
        if item.dtype == dtypes.bool_:
            item = item.numpy()
        elif item.dtype.kind not in "iu":
            raise IndexError(f"index: index tensors must be integer or bool, got {item.dtype}")
        else:
            arrays.append(item)
            return [("array", len(arrays) - 1)]
    arr = np.asarray(item)
    if arr.dtype == np.bool_:
        _check_mask(arr, tensor_shape, len(spec_so_far))
        items = []
        for positions in np.nonzero(arr):
            arrays.append(Tensor._wrap_array(positions.astype(np.int64)))
            items.append(("array", len(arrays) - 1))
        return items
    if arr.dtype.kind not in "iu" and arr.size:
        raise IndexError(f"index: index arrays must be integer or bool, got {arr.dtype}")
    arrays.append(Tensor._wrap_array(arr.astype(np.int64)))
    return [("array", len(arrays) - 1)]


def parse_index(tensor, key, check_pending=False):
    """(spec, index tensors) of `key`.  With check_pending, index tensors still being computed
    are computed now and bounds-checked: an in-place write must fail at the call, not later
    when the failure would take the target's value with it."""
    key = key if isinstance(key, tuple) else (key,)
    spec, arrays = [], []
    for item in key:
        if item is None:
            spec.append(("none",))
        elif item is Ellipsis:
            spec.append(("ellipsis",))
        elif isinstance(item, slice):
            spec.append(_slice_item(item))
        elif isinstance(item, (bool, np.bool_)):
            raise IndexError(f"index: a bool scalar is not a valid index into shape {tensor.shape}")
        elif isinstance(item, (int, np.integer)):
            spec.append(("int", int(item)))
        elif isinstance(item, Tensor) and item.ndim == 0 and item.dtype.kind in "iu":
            spec.append(("int", int(item)))
        elif isinstance(item, (Tensor, list, np.ndarray)):
            spec.extend(_array_items(item, arrays, tensor.shape, [t for t in spec if t[0] != "none"]))
        else:
            raise IndexError(f"index: unsupported index {item!r} for a tensor of shape {tensor.shape}")
    if sum(1 for s in spec if s[0] == "ellipsis") > 1:
        raise IndexError("index: an index can only have a single ellipsis ('...')")
    consumed = sum(1 for s in spec if s[0] not in ("none", "ellipsis"))
    if consumed > tensor.ndim:
        raise IndexError(f"index: too many indices ({consumed}) for a tensor of shape {tensor.shape}")
    if check_pending:
        for a in arrays:
            a.numpy()
    _check_known_arrays(tensor.shape, spec, arrays)
    return tuple(spec), arrays


def _check_known_arrays(shape, spec, arrays):
    """Integer-array indices whose values are already known are checked at the call."""
    from .kernels.cpu import _check_bounds
    known = [a._node.value for a in arrays]
    if all(v is not None and isinstance(v, np.ndarray) for v in known):
        _check_bounds(shape, spec, known)
