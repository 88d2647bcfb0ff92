"""GT's `gt.client.tensor`: the Tensor class and the creation functions GT code imports from here
(`from gtnumba.client.tensor import randn, from_numpy, zeros`)."""
from ..creation import PUBLIC
from ..functions import cat, is_grad_enabled
from ..graph import GRAD_MODE
from .._tensor import Tensor, TensorData

from_numpy, tensor, randn, rand, zeros, ones, full, arange = (
    PUBLIC[n] for n in ("from_numpy", "tensor", "randn", "rand", "zeros", "ones", "full", "arange"))


def set_grad_enabled(enabled):
    """Turn gradient recording on or off for this thread (gt.no_grad() is the scoped form)."""
    GRAD_MODE.enabled = bool(enabled)


__all__ = ["Tensor", "TensorData", "arange", "cat", "from_numpy", "full", "is_grad_enabled", "ones", "rand",
           "randn", "set_grad_enabled", "tensor", "zeros"]
