"""Shared test configuration.

Tests marked `gpu` run only where a real CUDA GPU is present.  `GTNUMBA_GPU_DRYRUN=1` runs them
anyway at tiny sizes on the simulated CUDA backend (NUMBA_ENABLE_CUDASIM=1), to check the tests
themselves before a GPU machine is used.
"""
import os

import pytest


def gpu_available():
    from gtnumba.kernels.cuda import gpu_present
    return gpu_present()


def gpu_dryrun():
    return os.environ.get("GTNUMBA_GPU_DRYRUN") == "1" and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def pytest_collection_modifyitems(config, items):
    if gpu_available() or gpu_dryrun():
        return
    skip = pytest.mark.skip(reason="needs a real CUDA GPU (GTNUMBA_GPU_DRYRUN=1 with the simulator runs them tiny)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---- shared helpers of the CUDA tests (tests/test_cuda_*.py, test_gpu.py) ----------------------
def _simulated_or_real_gpu():
    from numba import cuda
    return cuda.is_available()


needs_cuda = pytest.mark.skipif(not _simulated_or_real_gpu(),
                                reason="needs a CUDA GPU or Numba's simulator (NUMBA_ENABLE_CUDASIM=1)")


@pytest.fixture(scope="module")
def fast_simulator():
    """The simulator runs each CUDA thread as a Python thread: switch between them quickly."""
    import sys
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(saved)


def rng(*key):
    """A generator seeded by `key` (stable across runs and processes)."""
    import zlib
    import numpy as np
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def dev(a):
    """A device copy of host data."""
    import numpy as np
    from gtnumba.kernels.cuda import memory
    return memory.to_device(np.asarray(a))


def host(d):
    """The host copy of a kernel's output, which must be a C-contiguous device array."""
    from gtnumba.kernels.cuda import memory, runtime
    assert runtime.is_device_array(d), f"kernel returned {type(d).__name__}, not a device array"
    assert d.size == 0 or d.is_c_contiguous()
    return memory.to_host(d)
