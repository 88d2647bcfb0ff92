"""Cluster set-up from the environment GT code uses, safe and quiet: a local cluster listens on
127.0.0.1 only, a normal exit and Ctrl-C print nothing from Dask, no worker process outlives the
program, GT_SCHEDULER alone joins a cluster and an unknown address fails at once."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import psutil
import pytest

import gtnumba as gt
from gtnumba.cluster import dashboard_address

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import os, sys, time
    import gtnumba as gt
    from gtnumba.sched.mesh import current_mesh
    if sys.argv[2] == "init":
        gt.init(workers=2, dashboard="0.0.0.0:0")          # the dashboard open to the network, on request
    client = gt.client()
    print("mesh", current_mesh().workers, flush=True)
    print("scheduler", client.scheduler.address, flush=True)
    print("dashboard", client.dashboard_link, flush=True)
    print("pids", *[p.pid for p in __import__("psutil").Process().children(recursive=True)], flush=True)
    x = gt.from_numpy(__import__("numpy").ones((4, 3), "float32"))
    print("sum", (x * 2).sum().item(), flush=True)
    def step():        # a parameter scattered to the workers, dropped before the exit
        w = gt.tensor(__import__("numpy").ones((256, 128), "float32"), requires_grad=True)
        loss = (gt.from_numpy(__import__("numpy").ones((8, 256), "float32")) @ w).sum()
        loss.backward()
        with gt.no_grad():
            w -= 0.1 * w.grad
        return loss.item()
    print("big", step(), flush=True)
    mode = sys.argv[1]
    if mode == "raise":
        raise RuntimeError("boom")
    if mode in ("wait", "serve"):
        print("ready", flush=True)
        time.sleep(120) if mode == "wait" else sys.stdin.readline()
""")

# what Dask prints when it is not quiet: logged errors and warnings, asyncio's orphan task reports
DASK_NOISE = ("distributed.", "ERROR", "WARNING", "Warning", "Task exception was never retrieved", "AllExit")


def _start(tmp_path, mode, how="auto"):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, GT_WORKERS="2", PYTHONPATH=ROOT)
    for k in ("GT_SCHEDULER", "GT_VERBOSE"):
        env.pop(k, None)
    if how == "auto":
        env["GT_AUTO_SHARD"] = "1"
    return subprocess.Popen([sys.executable, str(script), mode, how], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def reap():
    """Processes a test starts: a failed test leaves none running (killed with their children)."""
    procs = []
    yield procs.append
    for proc in procs:
        if proc.poll() is None:
            parent = psutil.Process(proc.pid)
            for p in parent.children(recursive=True) + [parent]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            proc.wait(30)


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


def _value(lines, word):
    return next(l for l in lines if l.startswith(word + " ")).split(" ", 1)[1]


def _listening(pids):
    """(ip, port) of every TCP socket the processes listen on."""
    out = []
    for pid in pids:
        for c in psutil.Process(pid).net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN:
                out.append((c.laddr.ip, c.laddr.port))
    return out


@pytest.mark.parametrize("mode,how", [("exit", "auto"), ("serve", "init"), ("raise", "auto"), ("ctrl-c", "auto")])
def test_cluster_is_local_quiet_and_leaves_no_orphans(tmp_path, mode, how, reap):
    proc = _start(tmp_path, "wait" if mode == "ctrl-c" else mode, how)
    reap(proc)
    lines = _lines_until(proc, "big")
    assert "mesh 2" in lines and "big 262144.0" in lines
    pids = [int(p) for p in _value(lines, "pids").split()]
    assert pids, "no worker processes were started"
    assert "sum 24.0" in lines
    assert _value(lines, "scheduler").startswith("tcp://127.0.0.1:")
    if mode == "ctrl-c":
        _lines_until(proc, "ready")
        dashboard = _value(lines, "dashboard")
        assert dashboard.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(dashboard, timeout=20) as r:
            assert r.status == 200
        listening = _listening([proc.pid] + pids)
        assert listening and {ip for ip, _ in listening} == {"127.0.0.1"}, listening
        proc.send_signal(signal.SIGINT)
    if mode == "serve":
        _lines_until(proc, "ready")
        dashboard_port = int(_value(lines, "dashboard").split(":")[2].split("/")[0])
        scheduler_port = int(_value(lines, "scheduler").rsplit(":", 1)[1])
        listening = dict((port, ip) for ip, port in _listening([proc.pid] + pids))
        assert listening[dashboard_port] == "0.0.0.0" and listening[scheduler_port] == "127.0.0.1", listening
    out, err = proc.communicate("\n" if mode == "serve" else None, timeout=120)
    if mode in ("exit", "serve"):
        assert proc.returncode == 0, err[-2000:]
        assert err == "", err[-3000:]
    else:
        assert proc.returncode != 0
        assert ("KeyboardInterrupt" if mode == "ctrl-c" else "RuntimeError: boom") in err
        noise = [l for l in err.splitlines() if any(w in l for w in DASK_NOISE)]
        assert not noise, err[-3000:]
    assert _gone(pids), f"worker processes outlived the program: {pids}"


def test_gt_style_script_exits_quietly():
    """The first user's GT-style loop (examples/gt_style_train.py) with GT_AUTO_SHARD=1: its
    parameters live on the workers until the end, and the exit prints nothing from Dask."""
    env = dict(os.environ, PYTHONPATH=ROOT, GT_AUTO_SHARD="1", GT_WORKERS="2")
    for k in ("GT_SCHEDULER", "GT_VERBOSE"):
        env.pop(k, None)
    args = ["--img-size", "64", "--embed-dim", "32", "--batch-size", "4", "--steps", "2", "--n-train", "16",
            "--lr", "0.01"]
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "gt_style_train.py")] + args, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "training on Dask (dashboard: http://127.0.0.1:" in out.stdout, out.stdout
    assert out.stderr == "", out.stderr[-3000:]


def test_training_command_ctrl_c_prints_one_line(tmp_path, reap):
    """SIGINT to `python -m models.pixel_transformer --workers 2` mid-epoch: exit status 130, the
    'interrupted' line and nothing else on stderr, no process left."""
    cmd = [sys.executable, "-m", "models.pixel_transformer", "--workers", "2", "--data", "synthetic",
           "--img-size", "8", "--seq-len", "2", "--n-train", "100000", "--n-test", "8", "--embed-dim", "8",
           "--heads", "2", "--layers", "1", "--ff-dim", "8", "--batch-size", "4", "--no-progress",
           "--dashboard", ":0", "--out", str(tmp_path / "run")]
    env = dict(os.environ, PYTHONPATH=ROOT)
    for k in ("GT_AUTO_SHARD", "GT_SCHEDULER", "GT_VERBOSE"):
        env.pop(k, None)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reap(proc)
    lines = _lines_until(proc, "model:")
    assert any(l.startswith("Dask dashboard: http://127.0.0.1:") for l in lines), lines
    pids = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    time.sleep(2)                                  # mid-epoch: steps are running on the workers
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert [l for l in err.splitlines() if l.strip()] == [
        f"interrupted; the last finished epoch is in {tmp_path / 'run' / 'checkpoint.npz'} (continue with --resume)"]
    assert pids and _gone(pids), f"worker processes outlived the program: {pids}"


KILLED = textwrap.dedent("""
    import os, psutil
    import gtnumba as gt
    client = gt.init(workers=1, dashboard=":0")
    print("scheduler", client.run_on_scheduler(os.getpid), flush=True)
    print("pids", *[p.pid for p in psutil.Process().children(recursive=True)], flush=True)
    input()
""")


def test_the_scheduler_has_a_process_of_its_own_that_ends_with_the_program(reap):
    """Even when the program is killed outright (SIGKILL: no exit hook runs)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    for k in ("GT_AUTO_SHARD", "GT_SCHEDULER", "GT_VERBOSE"):
        env.pop(k, None)
    proc = subprocess.Popen([sys.executable, "-c", KILLED], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    reap(proc)
    lines = _lines_until(proc, "pids")
    scheduler, pids = int(_value(lines, "scheduler")), [int(p) for p in _value(lines, "pids").split()]
    assert scheduler != proc.pid and scheduler in pids
    proc.kill()
    proc.wait(30)
    assert _gone([scheduler]), "the scheduler process outlived the program"


def test_a_scheduler_that_cannot_start_fails_init_saying_so(capfd):
    with pytest.raises(RuntimeError, match="the Dask scheduler process did not start .it exited with status 1"):
        gt.init(workers=1, host="10.255.255.1", dashboard=":0")        # no such address on this machine
    assert "OSError" in capfd.readouterr().err                          # the scheduler's own error
    assert gt.client() is None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


JOIN = "import gtnumba as gt; print('workers', gt.sched.mesh.current_mesh().workers, gt.client().scheduler.address)"


def test_gt_scheduler_alone_joins_the_cluster_at_import():
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=ROOT, GT_SCHEDULER=address)    # the worker sees it too
    env.pop("GT_AUTO_SHARD", None)
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--dashboard-address", "127.0.0.1:0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                       "--nthreads", "1", "--no-nanny"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait = (f"from distributed import Client\nc = Client({address!r}, timeout='30s')\n"
                "c.wait_for_workers(1, 60)\nc.close()\n")
        script = wait + JOIN + "\nprint('sum', (gt.ones(4, 3) * 2).sum().item())"
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"workers 1 {address}" in out.stdout and "sum 24.0" in out.stdout, out.stdout
    finally:
        for p in reversed(procs):          # the worker first, then the scheduler
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=15)


def test_unknown_scheduler_address_fails_at_import_naming_it():
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONPATH=ROOT, GT_SCHEDULER=address)
    env.pop("GT_AUTO_SHARD", None)
    out = subprocess.run([sys.executable, "-c", JOIN], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert f"ConnectionError: gt.init: cannot reach a Dask scheduler at '{address}'" in out.stderr, out.stderr
    with pytest.raises(ValueError, match="'nowhere' is not a Dask scheduler address"):
        gt.init(scheduler="nowhere")
    assert gt.client() is None


def test_dashboard_address_defaults_to_this_machine_only():
    assert dashboard_address(":8787") == "127.0.0.1:8787"
    assert dashboard_address(8787) == "127.0.0.1:8787"
    assert dashboard_address(":0") == "127.0.0.1:0"
    assert dashboard_address("0.0.0.0:8787") == "0.0.0.0:8787"
    with pytest.raises(ValueError, match="dashboard address 'localhost:web' needs a port"):
        dashboard_address("localhost:web")


def test_shard_along_a_missing_dim_fails_at_the_call():
    from gtnumba.sched.mesh import Mesh, set_mesh
    from gtnumba.sched.spmd import InProcessRunner
    set_mesh(Mesh(2, InProcessRunner(2)))
    try:
        t = gt.ones(4, 3)
        with pytest.raises(IndexError, match="shard: axis 2 is out of range for a tensor with 2 dims"):
            gt.shard(t, 2)
        with pytest.raises(IndexError, match="shard: axis -3 is out of range"):
            gt.shard(t, -3)
        assert t._node.placement is None
    finally:
        set_mesh(None)


def test_the_clusters_objects_are_frozen_while_it_runs():
    """A local cluster's client, scheduler and dashboard are long-lived objects: frozen out of
    Python's full collections while it runs (each would walk them: ~100 ms), handed back at shutdown."""
    import gc
    assert gc.get_freeze_count() == 0
    gt.init(workers=2, dashboard=":0")
    try:
        frozen = gc.get_freeze_count()
        tracked = len(gc.get_objects())              # what a full collection walks
    finally:
        gt.shutdown()
    assert frozen > 50_000 and tracked < frozen, (frozen, tracked)
    assert gc.get_freeze_count() == 0
