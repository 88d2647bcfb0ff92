"""Every CUDA kernel compiles to PTX for sm_90 (H100/H200) with `numba.cuda.compile_ptx`, at the
argument types the backend launches it with (gtnumba/kernels/cuda/ptx.py lists them).

This needs the real CUDA target, so it runs in subprocesses with NUMBA_ENABLE_CUDASIM unset, and
the CUDA compiler libraries (libnvvm) that `numba-cuda[cu13]` installs; no GPU is needed.  Without
those libraries the test is skipped, saying so.  The cases are split over parallel processes.
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "gtnumba.kernels.cuda.ptx"


def _env():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(*args, timeout=1200):
    return subprocess.run([sys.executable, "-m", MODULE, *args], capture_output=True, text=True,
                          env=_env(), cwd=REPO, timeout=timeout)


@pytest.mark.slow
def test_every_kernel_compiles_to_ptx_for_sm90():
    check = _run("--check", timeout=300)
    if check.returncode == 3:
        pytest.skip('no CUDA compiler (libnvvm): pip install "numba-cuda[cu13]==0.30.4"')
    assert check.returncode == 0, check.stdout + check.stderr
    n = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: _run("--shard", f"{i + 1}/{n}"), range(n)))
    report = "\n".join(r.stdout + r.stderr for r in results)
    assert all(r.returncode == 0 for r in results), report
    compiled = [line for line in report.splitlines() if line.startswith("compiled ")]
    assert len(compiled) == n and "FAILED" not in report, report
