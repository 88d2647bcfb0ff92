"""GT compatibility: `from gtnumba.client import nn` and `import gtnumba.client.nn` give the very
module objects `gtnumba.nn` and `gtnumba.optim` (GT code does `import gt; from gt.client import nn`).

Other attributes fall through to the top-level package (`gtnumba.client.tensor is gtnumba.tensor`).
"""
import sys

from . import nn, optim

sys.modules[__name__ + ".nn"] = nn
sys.modules[__name__ + ".optim"] = optim
sys.modules[__name__ + ".nn.functional"] = nn.functional


def __getattr__(name):
    import gtnumba
    try:
        return getattr(gtnumba, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


__all__ = ["nn", "optim"]
