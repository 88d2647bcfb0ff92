"""GT's debugging helpers on gtnumba: the recorded graph and what each worker has run.

    gt.debug.get_tape()          # the recorded (not yet backpropagated) graph; print() it
    gt.debug.get_worker_stats()  # per Dask worker: tasks and kernels run, memory, device
"""
import gc
import os

VERBOSE = os.environ.get("GT_VERBOSE") == "1"


def verbose_print(*args, **kwargs):
    if VERBOSE:
        print(*args, **kwargs)


# ---- the tape -----------------------------------------------------------------------------------
class Tape(list):
    """The recorded ops that require grad and that no backward() has consumed, in recording order;
    each entry a dict (GT's keys: output_id, output_shape, input_ids, grad_fn, requires_grad)."""

    def __str__(self):
        if not self:
            return "Autograd Tape: empty (no operations recorded)"
        lines = [f"Autograd Tape ({len(self)} operations):"]
        for i, e in enumerate(self):
            inputs = ", ".join(f"Tensor[{j}]" for j in e["input_ids"])
            lines.append(f"{i}: Tensor[{e['output_id']}] = {e['grad_fn']}({inputs})  shape={e['output_shape']}")
        return "\n".join(lines)

    __repr__ = __str__


def _recorded(obj, node_type):
    return (type(obj) is node_type and obj.requires_grad and not obj.leaf and obj.inputs
            and not obj.released)


def get_tape():
    """Found by a walk over the live graph nodes: for debugging, not for a training loop."""
    from .graph import Node
    nodes = sorted((o for o in gc.get_objects() if _recorded(o, Node)), key=lambda n: n.seq)
    return Tape({"output_id": n.seq, "output_shape": n.shape, "input_ids": [i.seq for i in n.inputs],
                 "grad_fn": n.op, "requires_grad": n.requires_grad} for n in nodes)


def print_tape():
    print(get_tape())


# ---- workers ------------------------------------------------------------------------------------
def _device():
    from .kernels import backend
    kind = backend.current()
    out = {"kind": kind, "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if kind == "cuda":
        from numba import cuda
        ctx = cuda.current_context()
        free, total = ctx.get_memory_info()
        name = ctx.device.name
        out.update(name=name.decode() if isinstance(name, bytes) else name, memory_free=free, memory_total=total)
    return out


def _process_stats(tasks):
    import psutil
    from .sched.block import KERNELS_RUN
    return {"tasks": tasks, "kernels": KERNELS_RUN[0], "operations": {"total": KERNELS_RUN[0]},
            "memory": {"rss": psutil.Process().memory_info().rss}, "device": _device()}


def _worker_stats(dask_worker=None):
    """Run on each Dask worker (client.run)."""
    stats = _process_stats(dask_worker.state.executed_count)
    stats["memory"]["limit"] = dask_worker.memory_manager.memory_limit
    return stats


def get_worker_stats():
    """{worker address: {tasks, kernels, operations: {total}, memory: {rss, limit}, device}}.

    Without a cluster, one entry "in-process": its plans run (tasks) and the kernels run by mesh
    steps in this process."""
    from . import cluster
    client = cluster.client()
    if client is None:
        from .sched import STATS
        return {"in-process": _process_stats(STATS["runs"])}
    return client.run(_worker_stats)


def print_worker_stats():
    for worker, s in sorted(get_worker_stats().items()):
        dev = s["device"]
        print(f"{worker}: {s['tasks']} tasks, {s['kernels']} kernels, rss {s['memory']['rss'] / 2**20:.0f} MiB, "
              f"device {dev.get('name', dev['kind'])}")
