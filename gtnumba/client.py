"""GT compatibility: `from gtnumba.client import nn` and `import gtnumba.client.nn` give the very
module objects `gtnumba.nn` and `gtnumba.optim` (GT code does `import gt; from gt.client import nn`).

Other attributes fall through to the top-level package (`gtnumba.client.tensor is gtnumba.tensor`).
"""
import sys
import types

from . import cluster, nn, optim

sys.modules[__name__ + ".nn"] = nn
sys.modules[__name__ + ".optim"] = optim
sys.modules[__name__ + ".nn.functional"] = nn.functional


def __getattr__(name):
    import gtnumba
    try:
        return getattr(gtnumba, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


class _ClientModule(types.ModuleType):
    """Importing this submodule makes `gtnumba.client` name it instead of the function
    `gt.client()`; calling the module keeps that call working."""

    def __call__(self):
        return cluster.client()


sys.modules[__name__].__class__ = _ClientModule

__all__ = ["nn", "optim"]
