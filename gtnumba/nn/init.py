"""Weight initializers (in place, under no_grad), drawing from gtnumba's seeded generator."""
import math

import numpy as np

from ..creation import generator
from ..creation import tensor as _tensor
from ..functions import no_grad


def _set(t, array):
    with no_grad():
        t.data = _tensor(np.asarray(array, dtype=t.dtype).reshape(t.shape))
    return t


def _fans(t):
    if t.ndim < 2:
        raise ValueError(f"init: fan in/out need a tensor with at least 2 dims, got shape {t.shape}")
    receptive = math.prod(t.shape[2:])
    return t.shape[1] * receptive, t.shape[0] * receptive   # (fan_in, fan_out) for (out, in, ...) weights


def uniform_(t, a=0.0, b=1.0):
    return _set(t, generator().uniform(a, b, t.shape))


def normal_(t, mean=0.0, std=1.0):
    return _set(t, generator().normal(mean, std, t.shape))


def constant_(t, value):
    return _set(t, np.full(t.shape, value))


def zeros_(t):
    return constant_(t, 0.0)


def ones_(t):
    return constant_(t, 1.0)


def xavier_uniform_(t, gain=1.0):
    fan_in, fan_out = _fans(t)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(t, -a, a)


def xavier_normal_(t, gain=1.0):
    fan_in, fan_out = _fans(t)
    return normal_(t, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def kaiming_uniform_(t, a=0.0, nonlinearity="leaky_relu"):
    fan_in, _ = _fans(t)
    gain = math.sqrt(2.0 / (1 + a * a)) if nonlinearity in ("leaky_relu", "relu") else 1.0
    bound = gain * math.sqrt(3.0 / fan_in)
    return uniform_(t, -bound, bound)


def kaiming_normal_(t, a=0.0, nonlinearity="leaky_relu"):
    fan_in, _ = _fans(t)
    gain = math.sqrt(2.0 / (1 + a * a)) if nonlinearity in ("leaky_relu", "relu") else 1.0
    return normal_(t, 0.0, gain / math.sqrt(fan_in))
