"""Which backend runs kernels, chosen in one place, and host <-> backend array transfer.

The CPU backend's arrays are NumPy arrays.  The CUDA backend (next issue) plugs its own
`to_backend`/`to_host` pair and its own kernel slot name into the same table.
"""
import os

import numpy as np

_BACKENDS = {
    "cpu": {"to_backend": lambda a: np.asarray(a, order="C"), "to_host": np.asarray},
}
_current = None


def available():
    return tuple(_BACKENDS)


def register(name, to_backend, to_host):
    _BACKENDS[name] = {"to_backend": to_backend, "to_host": to_host}


def current():
    global _current
    if _current is None:
        _current = _choose(os.environ.get("GTNUMBA_DEVICE", "cpu"))
    return _current


def _choose(name):
    if name not in _BACKENDS:
        raise ValueError(f"gtnumba: unknown device {name!r}; available: {sorted(_BACKENDS)}")
    return name


def set_device(name):
    global _current
    _current = _choose(name)


def to_backend(array):
    return _BACKENDS[current()]["to_backend"](array)


def to_host(value):
    return _BACKENDS[current()]["to_host"](value)
