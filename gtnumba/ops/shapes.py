"""Shape arithmetic shared by the shape rules; every error names the op and the shapes at fault."""
import math


def broadcast_shapes(op, *shapes):
    first = shapes[0]
    if all(s == first for s in shapes):
        return tuple(first)
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(-ndim, 0):
        dims = {s[i] for s in shapes if len(s) >= -i and s[i] != 1}
        if len(dims) > 1:
            shown = " and ".join(str(tuple(s)) for s in shapes)
            raise ValueError(f"{op}: cannot broadcast shapes {shown}")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def normalize_axis(op, axis, ndim):
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise TypeError(f"{op}: axis must be an int, got {axis!r}")
    if not -ndim <= axis < max(ndim, 1):
        raise IndexError(f"{op}: axis {axis} is out of range for a tensor with {ndim} dims")
    return axis % max(ndim, 1)


def normalize_axes(op, axis, ndim):
    """None -> every axis; int or sequence -> sorted tuple of distinct non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    norm = tuple(sorted(normalize_axis(op, a, ndim) for a in axes))
    if len(set(norm)) != len(norm):
        raise ValueError(f"{op}: repeated axis in {axis!r}")
    return norm


def reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def resolve_reshape(op, shape, new_shape):
    """Replace a single -1 by the size that keeps the element count; check the count."""
    new_shape = tuple(int(d) for d in new_shape)
    size = math.prod(shape)
    unknown = [i for i, d in enumerate(new_shape) if d == -1]
    if len(unknown) > 1 or any(d < -1 for d in new_shape):
        raise ValueError(f"{op}: invalid target shape {new_shape} for a tensor of shape {tuple(shape)}")
    if unknown:
        known = math.prod(d for d in new_shape if d != -1)
        if known == 0 or size % known:
            raise ValueError(f"{op}: cannot reshape {tuple(shape)} ({size} elements) to {new_shape}")
        new_shape = tuple(size // known if d == -1 else d for d in new_shape)
    if math.prod(new_shape) != size:
        raise ValueError(f"{op}: cannot reshape {tuple(shape)} ({size} elements) to {new_shape}")
    return new_shape
