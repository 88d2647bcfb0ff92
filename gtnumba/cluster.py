"""Cluster set-up: start or join a Dask cluster and make its workers gtnumba's mesh.

    gt.init()                      # one worker per visible GPU, or CPU workers without GPUs
    gt.init(workers=4)             # four CPU worker processes
    gt.init(scheduler="tcp://host:8786")   # an existing cluster (`dask scheduler` + `dask worker`s)

Environment (as GT code uses it): GT_AUTO_SHARD=1 calls init() on import; GT_SCHEDULER joins that
cluster on import (with or without GT_AUTO_SHARD); GT_WORKERS sets the CPU worker count;
GT_VERBOSE=1 reports what was found and started; GT_DASK_PROFILE=1 keeps the workers' sampling profiler.

Safe by default: a cluster started here listens on 127.0.0.1 only (scheduler, workers and the
dashboard); `dashboard="0.0.0.0:8787"` opens the dashboard to the network, `host=` the cluster.
"""
import atexit
import contextlib
import gc
import logging
import multiprocessing
import os
import socket
import sys
import warnings

from .sched.mesh import Mesh, current_mesh, set_mesh

_STATE = {"client": None, "cluster": None}


def visible_gpus():
    """Real CUDA devices this process can see (none under the CUDA simulator)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return []
    try:
        from numba import cuda
        if not cuda.is_available():
            return []
        return [f"{i}: {g.name.decode() if isinstance(g.name, bytes) else g.name}" for i, g in enumerate(cuda.gpus)]
    except Exception:          # no driver, no toolkit: no GPUs
        return []


def _say(verbose, msg):
    if verbose:
        print(f"gtnumba: {msg}", flush=True)


LOCAL = "127.0.0.1"


def init(gpus=None, workers=None, scheduler=None, dashboard=":8787", allow_shared_gpu=False, verbose=None,
         host=LOCAL):
    """Start (or join) a Dask cluster and run every following step on its workers.  A started
    cluster listens on `host`; the dashboard on `dashboard` ("[host]:port"; no host: `host`)."""
    from distributed import Client
    verbose = os.environ.get("GT_VERBOSE") == "1" if verbose is None else verbose
    shutdown()
    scheduler = scheduler or os.environ.get("GT_SCHEDULER")
    if scheduler:
        client = _join(Client, scheduler)
        cluster = None
    else:
        dashboard = dashboard_address(dashboard, host)
        cluster = _start_cluster(gpus, workers, dashboard, allow_shared_gpu, verbose, host)
        client = Client(cluster, set_as_default=True)
    _STATE.update(client=client, cluster=cluster)
    if not _STATE.get("exit_hook"):
        # registered after distributed's own exit hooks, so that it runs before them (atexit is LIFO)
        atexit.register(_at_exit)
        _STATE["exit_hook"] = True
    addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
    if not addresses:
        shutdown()
        raise RuntimeError(f"gt.init: the cluster at {scheduler} has no workers")
    from .sched.dask_runner import DaskRunner
    set_mesh(Mesh(len(addresses), DaskRunner(client, addresses)))
    _freeze_long_lived()
    _say(verbose, f"{len(addresses)} workers: {', '.join(addresses)}")
    _say(verbose, f"dashboard: {client.dashboard_link}")
    return client


def _freeze_long_lived():
    """The client and a local cluster's nannies (and all imported by then) are ~130,000 objects in
    this process, which live as long as the cluster.  Python's full collections walk them all: ~100 ms
    every ~20 steps at the first user's size, stalling the pipelined steps (3-4 ms a step on
    average).  Frozen, the collector skips them; shutdown() hands them back (gc.unfreeze)."""
    gc.collect()
    gc.freeze()
    _STATE["frozen"] = True


def init_from_env():
    """On import: GT_AUTO_SHARD=1 starts (or joins) a cluster, and so does GT_SCHEDULER alone."""
    wanted = os.environ.get("GT_AUTO_SHARD") == "1" or os.environ.get("GT_SCHEDULER")
    if wanted and not in_worker_process():        # the workers themselves import gtnumba too
        return init()
    return None


def dashboard_address(address, host=LOCAL):
    """"[host]:port" or a port, with `host` filled in where none is given (Dask itself would
    listen on every interface for ":8787")."""
    address = str(address)
    if ":" not in address:
        address = ":" + address
    where, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"gt.init: dashboard address {address!r} needs a port, e.g. '127.0.0.1:8787' or ':0'")
    return f"{where or host}:{port}"


def _join(Client, address):
    _reachable(address)
    try:
        return Client(address, timeout="10s", set_as_default=True)
    except (OSError, TimeoutError) as e:
        raise ConnectionError(f"gt.init: cannot reach a Dask scheduler at {address!r}: {e}") from None


def _reachable(address, timeout=5):
    """Fail fast, naming the address, when nothing listens there (Dask would retry for 10 s)."""
    from distributed.comm import parse_address, parse_host_port
    try:
        protocol, location = parse_address(address)
        host, port = parse_host_port(location) if protocol in ("tcp", "tls") else (None, None)
    except ValueError as e:
        raise ValueError(f"gt.init: {address!r} is not a Dask scheduler address (expected tcp://host:port): "
                         f"{e}") from None
    if host is None:
        return
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"gt.init: cannot reach a Dask scheduler at {address!r}: {e}") from None


def _start_cluster(gpus, workers, dashboard, allow_shared_gpu, verbose, host):
    visible = visible_gpus()
    if gpus is None and workers is None:
        gpus = len(visible)
    gpus = gpus or 0
    if gpus > len(visible) and not (allow_shared_gpu and visible):
        raise ValueError(f"gt.init: asked for {gpus} GPUs but {len(visible)} are visible"
                         f"{': ' + '; '.join(visible) if visible else ''}")
    _say(verbose, f"visible GPUs: {visible or 'none'}")
    with _no_main_reimport(), warnings.catch_warnings():
        # a taken dashboard port moves to a free one; the link is reported (GT_VERBOSE, the training command)
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        # Dask's own log (worker streams cut by a closing peer, lost scattered data) is noise to a user:
        # gtnumba raises or warns about what matters (a kernel error, a lost worker) itself
        quiet = logging.ERROR if verbose else logging.CRITICAL
        import dask
        n = gpus or workers or int(os.environ.get("GT_WORKERS", 0)) or os.cpu_count()
        with dask.config.set({**housekeeping(), **_thread_shares(n)}), _environ_restored():
            if gpus:
                return _cluster(_gpu_workers(gpus, len(visible), host, quiet), dashboard, host, quiet)
            return _cluster(_cpu_workers(n, host, quiet), dashboard, host, quiet)


# Dask's periodic housekeeping, at the rates a cluster gtnumba starts runs it.  A step keeps every
# process busy, so their sum is CPU taken from the steps: at Dask's rates an idle 2-worker cluster
# used 16% of a core (the workers' stack sampler every 10 ms, memory polls every 100 ms, loop ticks
# every 20 ms, system monitors every 500 ms, the scheduler's work stealing every 100 ms), at these
# 2%.  Steps' tasks are pinned to their workers, so stealing never moves one.  A worker's memory
# limits still hold, checked every second.  Set before the cluster starts: its processes read them then.
HOUSEKEEPING = {"distributed.worker.memory.monitor-interval": "1s", "distributed.admin.tick.interval": "500ms",
                "distributed.admin.system-monitor.interval": "2s", "distributed.scheduler.work-stealing": False}
PROFILER = {"distributed.worker.profile.enabled": False}


def housekeeping():
    """The Dask settings of a cluster gtnumba starts; GT_DASK_PROFILE=1 keeps the workers' sampling
    profiler (the dashboard's Profile page)."""
    return {**HOUSEKEEPING, **({} if os.environ.get("GT_DASK_PROFILE") == "1" else PROFILER)}


def _worker_env(workers):
    """Each worker's share of this machine's cores for its kernels' own threads (Numba's parallel
    kernels, BLAS): without it every worker starts a thread per core and they fight for them.  One core
    stays with the client, which records the next step while the workers run this one (a lone worker on
    2 cores with 2 BLAS threads: 30-38 ms a step, with 1: 25-27 ms)."""
    share = str(max(1, ((os.cpu_count() or 1) - 1) // workers))
    return {name: share for name in ("NUMBA_NUM_THREADS", *BLAS_THREADS)}


BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _thread_shares(workers):
    """The shares as Dask's pre-spawn environment, set in the parent before a worker starts (its default
    is 1 thread each): a Nanny's `env` applies only after the worker imported numpy, whose BLAS read
    its thread count then (a lone worker on 2 cores ran its GEMMs on 1 thread, 1.5-2x slower)."""
    # NUMBA_NUM_THREADS stays out: Numba reads it when it first launches its threads, after the `env` applied,
    # and a Nanny that restarts a worker later writes its pre-spawn environment into the client again, where
    # Numba, rereading its environment at each compile, raised on a thread count that changed under it
    import dask
    shares = _worker_env(workers)
    return {"distributed.nanny.pre-spawn-environ": {**dask.config.get("distributed.nanny.pre-spawn-environ"),
                                                    **{name: shares[name] for name in BLAS_THREADS}}}


@contextlib.contextmanager
def _environ_restored():
    """A Nanny writes its pre-spawn environment into this process's own: the client's later threads and
    subprocesses (and the next cluster's shares, which defer to this environment) must not inherit it."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


WORKER_FLAG = "GTNUMBA_WORKER"


@contextlib.contextmanager
def _no_main_reimport():
    """Worker processes are spawned, and spawning re-runs the parent's main script unless it is
    guarded by `if __name__ == "__main__"`.  GT training scripts are plain top-level code, so
    hide the main script while workers start: they only ever run gtnumba's own functions."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if hasattr(main, k)}
    if "__file__" in saved:
        del main.__file__
    main.__spec__ = None
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def in_worker_process():
    """True inside a process gtnumba started as a worker, or inside any Dask worker or scheduler."""
    if os.environ.get(WORKER_FLAG) == "1" or multiprocessing.parent_process() is not None:
        return True
    # a Dask scheduler or worker process imports gtnumba when it unpickles a step's tasks
    servers = [("distributed.worker", "Worker"), ("distributed.scheduler", "Scheduler")]
    return any(m in sys.modules and len(getattr(sys.modules[m], cls)._instances) > 0 for m, cls in servers)


def _cluster(workers, dashboard, host, quiet):
    """The workers (Nanny specs; the first is the template `scale` adds more of) and a scheduler in
    a process of its own (see scheduler_process)."""
    from distributed import SpecCluster
    from .scheduler_process import SchedulerProcess
    options = {"host": host, "dashboard_address": dashboard}
    # the scheduler never imports gtnumba to train (WORKER_FLAG) nor touches a GPU
    env = {WORKER_FLAG: "1", "GTNUMBA_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    scheduler = {"cls": SchedulerProcess, "options": {"options": options, "config": housekeeping(), "quiet": quiet,
                                                      "env": env}}
    return SpecCluster(workers=dict(enumerate(workers)), worker=workers[0], scheduler=scheduler, silence_logs=quiet)


def _cpu_workers(n, host, quiet):
    from distributed import Nanny
    options = {"nthreads": 1, "host": host, "silence_logs": quiet, "env": {WORKER_FLAG: "1", **_worker_env(n)}}
    return [{"cls": Nanny, "options": options}] * n


def _gpu_workers(gpus, n_visible, host, quiet):
    """One Nanny per GPU, pinned with CUDA_VISIBLE_DEVICES; no host memory limit, since device
    arrays would count against it and be spilled."""
    from distributed import Nanny
    specs = []
    for i in range(gpus):
        env = {"CUDA_VISIBLE_DEVICES": str(i % n_visible), "GTNUMBA_DEVICE": "cuda", WORKER_FLAG: "1",
               **_worker_env(gpus)}
        options = {"nthreads": 1, "env": env, "memory_limit": 0, "resources": {"GPU": 1}, "host": host,
                   "silence_logs": quiet}
        specs.append({"cls": Nanny, "options": options})
    return specs


def client():
    """The Dask client gtnumba uses (also distributed's default client), or None."""
    return _STATE["client"]


def shutdown(bring_home=True):
    """Leave the cluster (and stop it if gtnumba started it); later steps run in-process."""
    mesh = current_mesh()
    set_mesh(None)
    if mesh is not None and hasattr(mesh.runner, "leaving"):
        mesh.runner.leaving()     # the reads that bring values home submit no predicted step
    if mesh is not None and bring_home:
        _bring_home()
    if mesh is not None and _STATE["cluster"] is None and hasattr(mesh.runner, "close"):
        mesh.runner.close()       # a joined cluster outlives us: our stores on its workers must go
    c, cl = _STATE["client"], _STATE["cluster"]
    _STATE.update(client=None, cluster=None)
    with _quiet_dask():
        if c is not None:
            c.close()
        if cl is not None:
            cl.close()
        if _STATE.pop("frozen", False):
            gc.unfreeze()          # the cluster's objects may be collected again
        if cl is not None:
            gc.collect()           # tasks the close cut short are reported when collected: collect them now


_DASK_LOGGERS = ("distributed", "asyncio", "tornado")


def _dask_loggers():
    """Dask's loggers and their children (which Dask gives levels of their own)."""
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in _DASK_LOGGERS]
    return [logging.getLogger(n) for n in set(names) | set(_DASK_LOGGERS)]


@contextlib.contextmanager
def _quiet_dask():
    """Closing a cluster cuts short whatever still runs on it (a step interrupted by Ctrl-C, the
    workers' streams): Dask logs that as errors, which are not the user's business."""
    loggers = _dask_loggers()
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _bring_home():
    """Values living on the workers come back to this process before the workers go."""
    from .graph import Node
    from .kernels import backend
    from .sched.mesh import DistValue
    for obj in gc.get_objects():
        if type(obj) is Node and isinstance(obj.value, DistValue):
            try:
                obj.value = backend.to_backend(obj.value.to_host())
            except Exception:      # a worker already gone: the value is lost with it
                obj.value = None
                obj.error = RuntimeError("gtnumba: this value lived on a worker that is gone")


def _at_exit():
    """At interpreter exit (after the program's end, an exception or Ctrl-C) the cluster goes
    quietly: no value is read any more, and Dask's complaints about work cut short (in-flight
    tasks, closed streams, executors already shut down, tasks collected unretrieved) are not the
    user's business."""
    for lg in _dask_loggers():
        lg.setLevel(logging.CRITICAL + 1)
    try:
        shutdown(bring_home=False)
    except Exception:          # exiting anyway; the workers' nannies end with this process
        pass



def performance_report(filename="dask-report.html"):
    """Dask's performance report around a block of training steps."""
    from distributed import performance_report as report
    return report(filename=filename)
