"""The scheduler of a cluster gtnumba starts runs in a process of its own, materializes a step's
small graph on its loop, without the thread hop to Dask's offload thread (big graphs still go
there), and sends to its workers at once."""
import os
import threading

import gtnumba as gt
from gtnumba.sched import dask_scheduler


def _spy_on_materializing(dask_scheduler):
    import distributed.scheduler
    real, dask_scheduler.materialized = distributed.scheduler._materialize_graph, []

    def spy(*args, **kwargs):
        dask_scheduler.materialized.append((len(kwargs["expr"].__dask_keys__()), threading.current_thread().name))
        return real(*args, **kwargs)
    distributed.scheduler._materialize_graph = spy


def _materialized(dask_scheduler):
    return dask_scheduler.materialized


def test_small_graphs_are_materialized_on_the_loop_and_big_ones_offloaded():
    client = gt.init(workers=2, dashboard=":0")
    try:
        assert client.run_on_scheduler(os.getpid) != os.getpid()
        client.run_on_scheduler(_spy_on_materializing)
        (gt.ones(4) * 2.0).numpy()
        n = dask_scheduler.INLINE_TASKS + 1
        assert client.get({f"t{i}": (abs, -i) for i in range(n)}, [f"t{i}" for i in range(n)]) == list(range(n))
        threads = client.run_on_scheduler(_materialized)
    finally:
        gt.shutdown()
    small = [name for tasks, name in threads if tasks <= dask_scheduler.INLINE_TASKS]
    big = [name for tasks, name in threads if tasks > dask_scheduler.INLINE_TASKS]
    assert small and not any(name.startswith("Dask-Offload") for name in small), threads
    assert big and all(name.startswith("Dask-Offload") for name in big), threads


def _stream_intervals(dask_scheduler):
    return sorted(stream.interval for stream in dask_scheduler.stream_comms.values())


def test_the_schedulers_messages_to_its_workers_leave_at_once():
    """Also to a worker that joins later (Dask would batch them over 5 ms)."""
    client = gt.init(workers=2, dashboard=":0")
    try:
        assert client.run_on_scheduler(_stream_intervals) == [0, 0]
        gt.cluster._STATE["cluster"].scale(3)
        client.wait_for_workers(3, timeout=60)
        assert client.run_on_scheduler(_stream_intervals) == [0, 0, 0]
    finally:
        gt.shutdown()
