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
