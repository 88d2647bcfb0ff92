"""GT's client namespace on gtnumba: `from gtnumba.client import nn` (GT's nn: its Linear keeps the
weight as (in, out)), `gtnumba.client.tensor` (GT's module of creation functions and Tensor),
`gtnumba.client.autograd` and `gtnumba.client.optim` (gtnumba.optim).

`gt.client()` still returns the Dask client gtnumba runs on (None in-process): this package is
callable.  Other attributes fall through to the top-level package.
"""
import sys
import types

from .. import cluster, optim
from . import autograd, nn, tensor  # noqa: F401

sys.modules[__name__ + ".optim"] = optim


def __getattr__(name):
    import gtnumba
    try:
        return getattr(gtnumba, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


class _ClientModule(types.ModuleType):
    def __call__(self):
        return cluster.client()


sys.modules[__name__].__class__ = _ClientModule

__all__ = ["autograd", "nn", "optim", "tensor"]
