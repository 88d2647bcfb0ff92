"""gtnumba: eager PyTorch-style tensors over a lazy graph, with autograd, nn and optimizers.

    import gtnumba as gt
    from gtnumba import nn

GT code runs with only `gt` renamed: gt.client.nn / gt.client.tensor / gt.client.autograd,
gt.signal, gt.debug, gt.config, gt.connect, gt.gpu_workers.
"""
from . import _interrupt
from . import dtypes, optim, sched  # noqa: F401  (gt.optim, gt.sched)
from .creation import PUBLIC as _PUBLIC, manual_seed
from .dtypes import bool_, float32, float64, int32, int64
from .functions import (abs, cat, chunk, clamp, concatenate, enable_grad, exp, gelu, is_grad_enabled, log,
                        log_softmax, logical_and, matmul, maximum, minimum, no_grad, relu, sigmoid, sign,
                        softmax, split, sqrt, stack, tanh, where)
from .cluster import init, performance_report, shutdown
from .kernels.backend import set_device
from .layout import Partial, Replicate, Shard
from .placement import replicate, shard
from ._tensor import Tensor
from . import config, data, debug, nn, signal  # noqa: F401  (gt.config, gt.data, gt.debug, gt.nn, gt.signal)
from .config import ShardConfig, SignalConfig, get_config, get_signal_config, load_config, register_config
from .gt_api import connect, gpu_workers
from ._gtwarn import GTCompatWarning
from . import client  # noqa: F401  (callable: gt.client() is the Dask client; gt.client.nn is GT's nn)

(arange, eye, from_numpy, full, ones, ones_like, rand, randint, randn, tensor, zeros, zeros_like) = (
    _PUBLIC[n] for n in ("arange", "eye", "from_numpy", "full", "ones", "ones_like", "rand", "randint", "randn",
                         "tensor", "zeros", "zeros_like"))

_interrupt.install()

float = float32      # noqa: A001  (gt.float / gt.long mirror PyTorch's dtype names)
double = float64
long = int64
bool = bool_         # noqa: A001


def _reduction(name):
    def f(x, *args, **kwargs):
        return getattr(x if isinstance(x, Tensor) else tensor(x), name)(*args, **kwargs)
    f.__name__ = name
    return f


sum, mean, max, min, var, std, argmax, argmin = (  # noqa: A001
    _reduction(n) for n in ("sum", "mean", "max", "min", "var", "std", "argmax", "argmin"))


def _shape_fn(name):
    def f(x, *args, **kwargs):
        return getattr(x, name)(*args, **kwargs)
    f.__name__ = name
    return f


reshape, permute, transpose, unsqueeze, squeeze, flatten = (
    _shape_fn(n) for n in ("reshape", "permute", "transpose", "unsqueeze", "squeeze", "flatten"))

__version__ = "0.1.0"

import os as _os

if _os.environ.get("GT_CONFIG"):
    config.get_config().load_from_env()

from .gt_api import auto_start as _auto_start  # noqa: E402  (GT_AUTO_SHARD=1 / GT_SCHEDULER: start or join)

_auto_start()
