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


def reduce_sum(values):
    """The sum of every worker's part, always in worker order (the same bits on every runner)."""
    add = OPS["add"].kernels[backend.current()]
    total = values[0]
    for v in values[1:]:
        total = add(total, v)
    return total


def concat(values, dim):
    return OPS["concat"].kernels[backend.current()](*values, axis=dim)


def flat(value):
    return value.reshape(-1)


def collective_parts(plan, step, values):
    """Each worker's part of a collective's result, from every worker's part of its source."""
    if step.kind == "reducescatter":
        total = flat(reduce_sum(values))
        return [total[a:b] for a, b in plan.layouts[step.out].offsets()]
    if step.kind == "gather":
        value = concat([flat(v) for v in values], 0).reshape(plan.layouts[step.src].shape)
    elif step.kind == "allgather":
        value = concat(values, step.dim)
    else:
        value = reduce_sum(values)
    return [value] * len(values)


def _chunk(x, start, stop):
    return flat(x)[start:stop]


# steps the planner adds that are data movement inside a worker, not ops of the table
_LOCAL_OPS = {"_chunk": _chunk}


KERNELS_RUN = [0]      # kernels this process ran for mesh steps (gt.debug.get_worker_stats)


def run_local_step(step, env, worker):
    KERNELS_RUN[0] += 1
    kernel = _LOCAL_OPS.get(step.op) or OPS[step.op].kernels[backend.current()]
    env[step.out] = kernel(*[env[s] for s in step.ins], **step.attrs[worker])


class InProcessRunner:
    name = "in-process"

    def __init__(self, workers):
        self.workers = workers

    def place(self, parts):
        return [p.read() if hasattr(p, "read") else p for p in parts]

    def track(self, value):
        pass

    def fetch(self, parts):
        return list(parts)

    def run(self, plan, leaf_parts, replay=None):
        steps = schedule(plan)
        last = last_uses(steps, plan.keep)
        env = [{slot: parts[w] for slot, parts in enumerate(leaf_parts)} for w in range(self.workers)]
        for i, step in enumerate(steps):
            if isinstance(step, Collective):
                parts = collective_parts(plan, step, [e[step.src] for e in env])
                for e, part in zip(env, parts):
                    e[step.out] = part
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
