"""Run a DistPlan on a Dask cluster: one task per worker per level, one task per collective level.

A block's result is a dict of the slots later levels (or the user) need; later blocks on the same
worker, the collective task and the next training step take those dicts as inputs, so values
stay on their worker and only collectives move data between workers.
"""
import itertools
import uuid

from distributed import wait

import numpy as np

from ..kernels import backend
from ..ops.registry import OPS
from .distribute import LocalStep
from .mesh import WorkerLost
from .spmd import run_local_step

_UPDATE_OPS = ("sgd_update", "adam_update")
INLINE_BYTES = 64 * 1024


class Resident:
    """A device array in a block's result: it stays on its worker's device for the next blocks
    there, and travels as a host array when Dask moves the result to another worker."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return (np.asarray, (backend.to_host(self.value),))


def _unwrap(value):
    return value.value if isinstance(value, Resident) else value


def _on_device(value):
    """Values arrive from other workers and the client as host arrays; a GPU worker's kernels
    want device arrays (and keep them on the device between its own blocks)."""
    value = _unwrap(value)
    if isinstance(value, np.ndarray) and backend.current() != "cpu":
        return backend.to_backend(value)
    return value


def _result(value, to_host):
    if to_host:
        return backend.to_host(value)
    return value if isinstance(value, np.ndarray) else Resident(value)


def run_block(steps, worker, refs, outputs, host_outputs):
    """Executed on a worker: the local steps of one level, on this worker's parts.  Outputs that
    leave the worker (collective inputs) are returned as host arrays."""
    env = {slot: _on_device(src[key] if key is not None else src) for slot, (src, key) in refs.items()}
    for step in steps:
        run_local_step(step, env, worker)
    return {s: _result(env[s], s in host_outputs) for s in outputs}


def run_collectives(entries, refs):
    """Executed on one worker: every collective of a level (one bucket), on host copies of all
    workers' parts (sum for all-reduce, concatenation for all-gather)."""
    add, concat = OPS["add"].kernels["cpu"], OPS["concat"].kernels["cpu"]
    out = {}
    for slot, kind, dim, sources in entries:
        values = [backend.to_host(_unwrap(src[key] if key is not None else src))
                  for src, key in (refs[i] for i in sources)]
        if kind == "allgather":
            out[slot] = concat(*values, axis=dim)
        else:
            total = values[0]
            for v in values[1:]:
                total = add(total, v)
            out[slot] = total
    return out


def pick_host(result, key):
    return backend.to_host(_unwrap(result[key]))


def _block_name(steps, level):
    # Dask groups tasks by key prefix and drops 8-letter words from it ("backward"), hence "_"
    if any(s.op in _UPDATE_OPS for s in steps):
        return "optimizer-step"
    return "forward_backward" if level == 0 else "compute"


class DaskRunner:
    name = "dask"

    def __init__(self, client, addresses):
        self.client = client
        self.addresses = list(addresses)
        self.workers = len(self.addresses)
        self._step = itertools.count()

    def scatter(self, parts):
        """Large parts go to their worker once; small ones (constants) travel inside the tasks
        that use them, which costs no round trip.  Device arrays travel as host arrays."""
        parts = [backend.to_host(p) for p in parts]
        return [(p, None) if getattr(p, "nbytes", 0) <= INLINE_BYTES else
                (self.client.scatter(p, workers=[a], hash=False), None) for p, a in zip(parts, self.addresses)]

    def fetch(self, parts):
        """Host copies of parts: a picking task next to each block result, one gather for all."""
        out, remote = [None] * len(parts), []
        for i, (future, key) in enumerate(parts):
            if not hasattr(future, "result"):
                out[i] = future if key is None else future[key]
            else:
                if key is not None:
                    future = self.client.submit(pick_host, future, key, key=f"fetch-{uuid.uuid4().hex}")
                remote.append((i, future))
        for (i, _), value in zip(remote, self.client.gather([f for _, f in remote])):
            out[i] = value
        return out

    def run(self, plan, leaf_parts):
        token = f"{next(self._step)}-{uuid.uuid4().hex[:8]}"
        src = [{slot: parts[w] for slot, parts in enumerate(leaf_parts)} for w in range(self.workers)]
        used_later = _uses_by_level(plan)
        submitted = []
        for level in range(plan.n_levels):
            cols = plan.collectives(level)
            if cols:
                submitted.append(self._submit_collectives(cols, src, level, token))
            steps = plan.blocks(level)
            if steps:
                submitted += self._submit_blocks(plan, steps, src, level, token, used_later)
        self._wait(submitted)
        return {slot: [src[w][slot] for w in range(self.workers)] for slot in plan.keep}

    def _wait(self, futures):
        """Until the step is done; a worker that died meanwhile is reported, not waited for."""
        while True:
            try:
                wait(futures, timeout=0.5)
                break
            except TimeoutError:
                dead = self.dead_workers()
                if dead:
                    raise WorkerLost(dead) from None
            except Exception:
                # e.g. futures cancelled for lost dependencies: a dead worker explains it
                dead = self.dead_workers()
                if dead:
                    raise WorkerLost(dead) from None
                raise
        for f in futures:
            if f.status == "error":
                if self.dead_workers():
                    raise WorkerLost(self.dead_workers())
                f.result()                       # re-raises the kernel's own error

    def dead_workers(self):
        alive = set(self.client.scheduler_info(n_workers=-1)["workers"])
        return [a for a in self.addresses if a not in alive]

    def without(self, dead):
        return DaskRunner(self.client, [a for a in self.addresses if a not in dead])

    def _submit_collectives(self, cols, src, level, token):
        refs, entries = [], []
        for c in cols:
            sources = []
            for w in range(self.workers):
                sources.append(len(refs))
                refs.append(src[w][c.src])
            entries.append((c.out, c.kind, c.dim, sources))
        kind = "allreduce-grads" if all(c.kind == "allreduce" for c in cols) else "allgather"
        future = self.client.submit(run_collectives, entries, refs, key=(kind, token, level), pure=False)
        for c in cols:
            for w in range(self.workers):
                src[w][c.out] = (future, c.out)
        return future

    def _submit_blocks(self, plan, steps, src, level, token, used_later):
        produced = {s.out for s in steps}
        needed = sorted({i for s in steps for i in s.ins} - produced)
        outputs = sorted(produced & (used_later[level] | set(plan.keep)))
        leaving = _collective_inputs(plan)
        host_outputs = [s for s in outputs if s in leaving]
        name = _block_name(steps, level)
        futures = []
        for w, address in enumerate(self.addresses):
            refs = {slot: src[w][slot] for slot in needed}
            local = [LocalStep(s.out, s.op, s.ins, [s.attrs[w]] * 1, s.level) for s in steps]
            future = self.client.submit(run_block, local, 0, refs, outputs, host_outputs, key=(name, token, level, w),
                                        workers=[address], allow_other_workers=False, pure=False)
            for slot in outputs:
                src[w][slot] = (future, slot)
            futures.append(future)
        return futures


def _uses_by_level(plan):
    """For each level, the slots that steps of later levels (or collectives) read."""
    uses = {level: set() for level in range(plan.n_levels)}
    for step in plan.steps:
        reads = (step.src,) if not isinstance(step, LocalStep) else step.ins
        for level in range(step.level):
            uses[level].update(reads)
    return uses


def _collective_inputs(plan):
    return {s.src for s in plan.steps if not isinstance(s, LocalStep)}
