"""The dtypes gtnumba supports and how Python values and NumPy dtypes map onto them."""
import numpy as np

float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
int32 = np.dtype(np.int32)
int64 = np.dtype(np.int64)
bool_ = np.dtype(np.bool_)

SUPPORTED = (float32, float64, int32, int64, bool_)
_ALIASES = {
    "float": float32, "float32": float32, "f4": float32,
    "double": float64, "float64": float64, "f8": float64,
    "int": int64, "long": int64, "int64": int64, "i8": int64,
    "int32": int32, "i4": int32, "bool": bool_,
}


def as_dtype(dtype, op="dtype"):
    """Normalize a user dtype (gt/NumPy dtype, type or name) or raise naming the op."""
    if dtype is None:
        return float32
    if isinstance(dtype, str):
        if dtype in _ALIASES:
            return _ALIASES[dtype]
        raise TypeError(f"{op}: unknown dtype {dtype!r}; supported: {sorted(_ALIASES)}")
    if dtype is float:
        return float32
    if dtype is int:
        return int64
    if dtype is bool:
        return bool_
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: unknown dtype {dtype!r}") from None
    if dt == np.float16:
        raise TypeError(f"{op}: float16 is not supported yet; use float32")
    for ok in SUPPORTED:
        if dt == ok:
            return ok
    raise TypeError(f"{op}: unsupported dtype {dt}; supported: float32, float64, int32, int64, bool")


def is_float(dtype):
    return dtype.kind == "f"


def promote(a, b):
    """Result dtype of a binary op on two tensors (bool < int < float, wider wins)."""
    return np.promote_types(a, b)


def scalar_dtype(value, other):
    """Dtype a Python scalar takes next to a tensor of dtype `other` (PyTorch's rule)."""
    if isinstance(value, (bool, np.bool_)):
        return other
    if isinstance(value, (int, np.integer)):
        return other if other != bool_ else int64
    if is_float(other):
        return other
    return float32
