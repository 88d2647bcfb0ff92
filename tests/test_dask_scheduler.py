"""A cluster gtnumba starts materializes a step's small graph on its scheduler's loop, without the
thread hop to Dask's offload thread; big graphs still go there."""
import threading

import distributed.scheduler

import gtnumba as gt
from gtnumba.sched import dask_scheduler


def test_small_graphs_are_materialized_on_the_loop_and_big_ones_offloaded(monkeypatch):
    threads = []
    real = distributed.scheduler._materialize_graph

    def spy(*args, **kwargs):
        threads.append((len(kwargs["expr"].__dask_keys__()), threading.current_thread().name))
        return real(*args, **kwargs)
    monkeypatch.setattr(distributed.scheduler, "_materialize_graph", spy)
    client = gt.init(workers=2, dashboard=":0")
    try:
        (gt.ones(4) * 2.0).numpy()
        n = dask_scheduler.INLINE_TASKS + 1
        assert client.get({f"t{i}": (abs, -i) for i in range(n)}, [f"t{i}" for i in range(n)]) == list(range(n))
    finally:
        gt.shutdown()
    assert distributed.scheduler.offload is dask_scheduler._DASK_OFFLOAD        # given back at shutdown
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
