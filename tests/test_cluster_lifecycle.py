"""Cluster set-up from the environment GT code uses, and no worker process outliving the
program: after a normal exit, an exception, or Ctrl-C."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import os, sys, time
    import gtnumba as gt
    from gtnumba.sched.mesh import current_mesh
    print("mesh", current_mesh().workers, flush=True)
    print("pids", *[p.pid for p in __import__("psutil").Process().children(recursive=True)], flush=True)
    x = gt.from_numpy(__import__("numpy").ones((4, 3), "float32"))
    print("sum", (x * 2).sum().item(), flush=True)
    mode = sys.argv[1]
    if mode == "raise":
        raise RuntimeError("boom")
    if mode == "wait":
        print("ready", flush=True)
        time.sleep(120)
""")


def _start(tmp_path, mode):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, GT_AUTO_SHARD="1", GT_WORKERS="2", GT_VERBOSE="1", PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, str(script), mode], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _lines_until(proc, word, timeout=120):
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.strip())
        if line.startswith(word):
            return seen
    raise AssertionError(f"no '{word}' line; got {seen}; stderr: {proc.stderr.read()[-2000:]}")


def _gone(pids, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("mode", ["exit", "raise", "ctrl-c"])
def test_auto_shard_starts_workers_and_leaves_no_orphans(tmp_path, mode):
    proc = _start(tmp_path, "wait" if mode == "ctrl-c" else mode)
    lines = _lines_until(proc, "sum")
    assert "mesh 2" in lines
    pids = [int(p) for p in next(l for l in lines if l.startswith("pids")).split()[1:]]
    assert pids, "GT_AUTO_SHARD=1 started no worker processes"
    assert "sum 24.0" in lines
    if mode == "ctrl-c":
        _lines_until(proc, "ready")
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if mode == "exit":
        assert proc.returncode == 0, err[-2000:]
    else:
        assert proc.returncode != 0
    assert "dashboard:" in err + out or any("dashboard" in l for l in lines)
    assert _gone(pids), f"worker processes outlived the program: {pids}"
