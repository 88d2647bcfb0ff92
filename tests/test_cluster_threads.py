"""A local cluster's workers split the machine's cores between them: each worker's Numba and BLAS
thread pools get its share, so W single-threaded Dask workers do not start W x cores threads, and
freed parameter-sized arrays stay in the process for the next step."""
import os

import gtnumba as gt


def _pools():
    import numba
    from threadpoolctl import threadpool_info
    return (numba.config.NUMBA_NUM_THREADS, sorted({p["num_threads"] for p in threadpool_info()}),
            _reuses_freed_arrays())


def _reuses_freed_arrays():
    """Filling a fresh 16 MiB array, again and again, faults its pages in only the first time
    (a kept block comes back; an unmapped one is mapped and faulted in anew: 4096 faults)."""
    import resource
    import numpy as np
    np.ones(4 << 20, np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        np.ones(4 << 20, np.float32)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 1000


def test_each_local_worker_gets_its_share_of_the_cores(monkeypatch):
    """5 cores (as the client sees them) and 2 workers: one core stays with the client, 2 threads a worker,
    in BLAS too (its count is read when the worker imports numpy, before a Nanny's `env` applies); the
    client's own environment is left as it was (a Nanny writes its pre-spawn environment into it)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)   # set by the user (or a cluster Dask started in this process): kept
    before = dict(os.environ)
    client = gt.init(workers=2, dashboard=":0")
    try:
        after = dict(os.environ)
        (gt.ones(4) * 2.0).numpy()        # a first step: gtnumba's worker plugin is set up
        pools = client.run(_pools)
    finally:
        gt.shutdown()
    assert after == before
    assert len(pools) == 2
    for numba_threads, blas_threads, reuses in pools.values():
        assert numba_threads == 2
        assert blas_threads == [2], blas_threads
        assert reuses                     # freed parameter-sized arrays are kept for reuse


def test_a_restarted_worker_leaves_numbas_thread_count_in_the_client_alone(monkeypatch):
    """A Nanny writes its pre-spawn environment into the client each time it starts a worker, also a
    restarted one, after gt.init put the client's environment back: Numba, which rereads NUMBA_* at each
    compile, raised there on a thread count changed under its running threads."""
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    client = gt.init(workers=1, dashboard=":0")
    try:
        client.restart_workers(list(client.scheduler_info(n_workers=-1)["workers"]))
    finally:
        gt.shutdown()
    assert "NUMBA_NUM_THREADS" not in os.environ


def _housekeeping_rates(dask_worker):
    return {k: v.callback_time for k, v in dask_worker.periodic_callbacks.items()}


def _stealing(dask_scheduler):
    return "stealing" in dask_scheduler.extensions


def test_a_local_cluster_runs_dasks_housekeeping_at_gtnumbas_rates(monkeypatch):
    """Dask's periodic housekeeping takes CPU from every step; the workers' sampling profiler is off
    unless GT_DASK_PROFILE=1 asks for the dashboard's Profile page."""
    rates = {}
    for profile in ("0", "1"):
        monkeypatch.setenv("GT_DASK_PROFILE", profile)
        client = gt.init(workers=2, dashboard=":0")
        try:
            rates[profile] = list(client.run(_housekeeping_rates).values())
            assert not client.run_on_scheduler(_stealing)
        finally:
            gt.shutdown()
    for worker in rates["0"]:
        assert "profile" not in worker and worker["memory_monitor"] == 1000 and worker["tick"] == 500
    assert all(worker["profile"] == 10 for worker in rates["1"]), rates["1"]
