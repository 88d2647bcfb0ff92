"""The scheduler side of the Dask runner: small graphs are materialized on the scheduler's loop,
and its messages to the workers go out at once (`prepare`, run by the scheduler process of a
cluster gtnumba starts: gtnumba/scheduler_process.py).

Dask's scheduler hands every submitted graph to its offload thread to materialize, and waits for
it there: a thread hop each way, on the step's critical path, for a graph of one task per worker.
On a loaded machine the hop took ~2 ms of a step's ~8 ms from submit to its tasks starting (the
first user's step, 2 workers on 2 cores).  Small graphs are materialized inline; bigger ones (a
user's own Dask work on the cluster) still go to the offload thread, keeping the loop responsive.
"""
import distributed.scheduler as _scheduler
from distributed.diagnostics.plugin import SchedulerPlugin
# private: the graph expression a step is submitted as (setup.cfg pins the Dask series)
from dask._expr import LLGExpr

INLINE_TASKS = 64
_DASK_OFFLOAD = _scheduler.offload


async def _offload_unless_small(fn, *args, **kwargs):
    expr = kwargs.get("expr")
    if isinstance(expr, LLGExpr) and len(expr.operand("dsk")) <= INLINE_TASKS:
        return fn(*args, **kwargs)
    return await _DASK_OFFLOAD(fn, *args, **kwargs)


def prepare(scheduler):
    """For a scheduler that has its process to itself (the offload hook is the whole process's)."""
    _scheduler.offload = _offload_unless_small
    scheduler.add_plugin(PromptWorkerStreams(scheduler))


class PromptWorkerStreams(SchedulerPlugin):
    """The scheduler's messages to a worker leave at once.  Dask batches them over 5 ms, and a
    step's compute-task, following the free-keys of an earlier step's values, waited a median of
    1.5-3.7 ms for that (2 workers on 2 cores); at once, 1.2-1.7 ms.  A step sends each worker a few
    messages: there is nothing to batch.  Workers that join later (a restarted one) too."""
    name = "gtnumba-prompt-worker-streams"

    def __init__(self, scheduler):
        for stream in scheduler.stream_comms.values():
            stream.interval = 0

    def add_worker(self, scheduler, worker):
        scheduler.stream_comms[worker].interval = 0


class DropStoreOnLeave(SchedulerPlugin):
    """A client's values on the workers go when it leaves, closed or dead (its connection dropped): on
    a cluster that others go on using, a dead client's store outlived it.  Dropped, the store also ends
    that client's waiting chains at once.  One per client, removed with it."""

    def __init__(self, rid, client):
        self.rid, self.client, self.name = rid, client, f"gtnumba-store-{rid}"

    def remove_client(self, scheduler, client):
        if client != self.client:
            return
        for stream in scheduler.stream_comms.values():          # the workers' handler: dask_worker.drop_store
            stream.send({"op": "gtnumba_drop_store", "rid": self.rid})
        scheduler.remove_plugin(self.name)
