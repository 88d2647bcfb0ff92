"""Run a DistPlan: collectives and per-worker blocks, level by level.

`InProcessRunner` holds every worker's parts in this process (one thread, workers in turn): it is
the reference the Dask runner is tested against, and lets the tests check sharding rules for
1, 2, 3 workers without starting processes.
"""
from ..kernels import backend
from ..ops.registry import OPS
from .distribute import Collective


def schedule(plan):
    """Steps in execution order: for each level its collectives, then its local steps."""
    order = []
    for level in range(plan.n_levels):
        order += plan.collectives(level)
        order += plan.blocks(level)
    return order


def last_uses(steps, keep):
    last = {}
    for i, step in enumerate(steps):
        for s in (step.src,) if isinstance(step, Collective) else step.ins:
            last[s] = i
    for s in keep:
        last[s] = len(steps)
    return last


def collective(kind, dim, values):
    """Combine one value per worker: a sum (all-reduce) or a concatenation (all-gather)."""
    kernels = OPS["add" if kind == "allreduce" else "concat"].kernels[backend.current()]
    if kind == "allgather":
        return kernels(*values, axis=dim)
    total = values[0]
    for v in values[1:]:
        total = kernels(total, v)
    return total


KERNELS_RUN = [0]      # kernels this process ran for mesh steps (gt.debug.get_worker_stats)


def run_local_step(step, env, worker):
    KERNELS_RUN[0] += 1
    kernel = OPS[step.op].kernels[backend.current()]
    env[step.out] = kernel(*[env[s] for s in step.ins], **step.attrs[worker])


class InProcessRunner:
    name = "in-process"

    def __init__(self, workers):
        self.workers = workers

    def scatter(self, parts):
        return parts

    def fetch(self, parts):
        return list(parts)

    def run(self, plan, leaf_parts):
        steps = schedule(plan)
        last = last_uses(steps, plan.keep)
        env = [{slot: parts[w] for slot, parts in enumerate(leaf_parts)} for w in range(self.workers)]
        for i, step in enumerate(steps):
            if isinstance(step, Collective):
                value = collective(step.kind, step.dim, [e[step.src] for e in env])
                for e in env:
                    e[step.out] = value
                used = (step.src,)
            else:
                for w in range(self.workers):
                    run_local_step(step, env[w], w)
                used = step.ins
            for s in used:
                if last.get(s) == i:
                    for e in env:
                        e.pop(s, None)
        return {slot: [e[slot] for e in env] for slot in plan.keep}
