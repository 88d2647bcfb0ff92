"""Compiled CUDA kernels are cached on disk (gtnumba/kernels/cuda/runtime.py: numba-cuda's cache,
keyed also by a digest of the kernel sources).  Without a GPU nothing can be compiled for a
device, so this checks what decides whether a restarted worker finds its kernels: every kernel
the backend launches gets the cache, and its cache key (the pickled closure numba-cuda hashes,
and the source digest) is the same in two fresh processes.  The time saved is measured on a GPU
by benchmarks/gpu.py (the first step of a fresh process, cold and warm cache).
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = """
import hashlib
from gtnumba.kernels.cuda import ptx, runtime
from gtnumba.kernels.cuda import elementwise, fused, gemm, reduction, shape, updates
assert not runtime.SIMULATOR
h = hashlib.sha256(runtime.sources_digest().encode())
for label, fn, sig in ptx.cases():
    key = runtime.cache_key_of(fn)
    assert key is not None, f"{label}: not cacheable"
    h.update(label.encode() + key)
kernels = [elementwise.compiled_kernel("add", "float32"), reduction.compiled_kernel("sum", "float64", "block",
           False, 32), fused.compiled_kernel("layer_norm", "float32", 32), shape._copy, updates.compiled_kernel("adam")]
assert all(type(k._cache).__name__ == "KernelCache" for k in kernels), [type(k._cache) for k in kernels]
print("key", h.hexdigest())
"""


def _keys():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return [line for line in res.stdout.splitlines() if line.startswith("key ")]


def test_every_kernel_is_disk_cached_under_a_stable_key():
    first, second = _keys(), _keys()
    assert len(first) == 1 and first == second
