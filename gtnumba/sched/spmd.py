"""Run a DistPlan: collectives and per-worker blocks, level by level.

`InProcessRunner` holds every worker's parts in this process (one thread, workers in turn): it is
the reference the Dask runner is tested against, and lets the tests check sharding rules for
1, 2, 3 workers without starting processes.
"""
from ..kernels import backend
from ..ops.registry import OPS
from .block import run_steps
from .distribute import Collective


def reduce_sum(values):
    """The sum of every worker's part, always in worker order (the same bits on every runner)."""
    add = OPS["add"].kernels[backend.current()]
    total = values[0]
    for v in values[1:]:
        total = add(total, v)
    return total


def concat(values, dim):
    if len(values) == 1:       # one worker: its part is the whole (not recycled as a buffer: its holder keeps it)
        return values[0]
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
        env = [{slot: parts[w] for slot, parts in enumerate(leaf_parts)} for w in range(self.workers)]
        for level in levels(plan):
            for c in level.collectives:
                for e, part in zip(env, collective_parts(plan, c, [e[c.src] for e in env])):
                    e[c.out] = part
            for w, e in enumerate(env):
                run_steps(level.holders[w], plan, level.steps, level.outputs, w, e)
                for s in level.dead:
                    e.pop(s, None)
        return {slot: [e[slot] for e in env] for slot in plan.keep}


class _Holder:
    __slots__ = ("block",)

    def __init__(self):
        self.block = None


class _Level:
    """One level of a DistPlan as the in-process runner runs it (made once per plan)."""
    __slots__ = ("collectives", "steps", "outputs", "dead", "holders")


def levels(plan):
    made = getattr(plan, "spmd_levels", None)
    if made is None:
        made = plan.spmd_levels = [_level(plan, lv) for lv in range(plan.n_levels)]
    return made


def _level(plan, lv):
    """Its collectives, its local steps, the values later levels or the caller need from them, and
    the values no later level reads (dropped after it)."""
    L = _Level()
    L.collectives, L.steps = plan.collectives(lv), plan.blocks(lv)
    last, later = {}, set(plan.keep)
    for s in plan.steps:
        reads = (s.src,) if isinstance(s, Collective) else s.ins
        for i in reads:
            last[i] = max(last.get(i, 0), s.level)
            if s.level > lv or isinstance(s, Collective):
                later.add(i)
    L.outputs = tuple(sorted({st.out for st in L.steps} & later))
    L.dead = tuple(s for s, at in last.items() if at == lv and s not in plan.keep)
    L.holders = [_Holder() for _ in range(plan.workers)]
    return L
