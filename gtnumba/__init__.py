"""gtnumba: eager PyTorch-style tensors over a lazy graph, with autograd, nn and optimizers.

    import gtnumba as gt
    from gtnumba import nn
"""
from . import dtypes, optim, sched  # noqa: F401  (gt.optim, gt.sched)
from .creation import (arange, eye, from_numpy, full, manual_seed, ones, ones_like, rand, randint, randn,
                       tensor, zeros, zeros_like)
from .dtypes import bool_, float32, float64, int32, int64
from .functions import (abs, cat, chunk, clamp, concatenate, enable_grad, exp, gelu, is_grad_enabled, log,
                        log_softmax, logical_and, matmul, maximum, minimum, no_grad, relu, sigmoid, sign,
                        softmax, split, sqrt, stack, tanh, where)
from .cluster import client, init, performance_report, shutdown
from .kernels.backend import set_device
from .layout import Partial, Replicate, Shard
from .placement import replicate, shard
from ._tensor import Tensor

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

from .cluster import init_from_env as _init_from_env  # GT_AUTO_SHARD=1 / GT_SCHEDULER: start or join a cluster

_init_from_env()
