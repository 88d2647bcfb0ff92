"""Layouts chosen by cost: for every parameter nobody placed, the layout whose step moves the
fewest bytes per worker.

The options of a parameter are Replicate (data parallel: its gradient is reduced across the
workers) and Shard(d) for each dim d (tensor parallel: its gradient stays local, and the sharding
rules move the activations instead).  A batch that feeds a sharded weight is better split along
the weight's dim than along the batch, so data leaves are chosen the same way (Shard(d) for each
d).  Each option is priced by building the step's DistPlan with it (sched.distribute) and adding
up its collectives (layout.collective_bytes); leaves are chosen greedily, largest first, over a
few rounds until no choice changes.  The choice is made once per step structure and cached.
"""
import math
import os

from ..layout import REPLICATE, Shard, collective_bytes, even_sizes
from .distribute import Collective, build_dist_plan

# Leaves smaller than this keep the default layout: they cannot save more than twice their size per
# step, and every option costs a plan build.
MIN_BYTES = 16 << 10
ROUNDS = 3
_CHOICES = {}
_CHOICES_LIMIT = 256


def nbytes(spec):
    return math.prod(spec.shape) * spec.dtype.itemsize


def slot_specs(key, plan):
    """Spec of every leaf slot and every (single-output) node slot of a plan built from `key`."""
    specs = {i: entry[0][0] for i, entry in enumerate(key[0])}
    for i, slot in plan.node_slot.items():
        node_specs = key[1 + i][3]
        if len(node_specs) == 1:
            specs[slot] = node_specs[0]
    return specs


def plan_bytes(key, plan):
    """Bytes one worker sends per step in the plan's collectives."""
    specs = slot_specs(key, plan)
    return sum(collective_bytes(s.kind, nbytes(specs[s.src]), plan.workers)
               for s in plan.steps if isinstance(s, Collective))


def options(spec, workers, data):
    """Layouts a leaf may take, the default first: Replicate for a parameter, Shard(0) for data;
    then Shard along each dim that every worker gets a piece of."""
    shards = [Shard(d, even_sizes(n, workers)) for d, n in enumerate(spec.shape) if n >= workers or d == 0]
    return shards if data else [REPLICATE] + shards


def choose(key, layouts, free, workers):
    """`layouts` with the leaves in `free` ({slot: is_data}) laid out by cost.  Returns the layouts
    and, per free slot, the bytes per step of each of its options in the last round."""
    cache_key = (workers, key, tuple(None if i in free else l for i, l in enumerate(layouts)))
    if cache_key not in _CHOICES:
        if len(_CHOICES) >= _CHOICES_LIMIT:
            _CHOICES.pop(next(iter(_CHOICES)))
        _CHOICES[cache_key] = _search(key, list(layouts), free, workers)
    return _CHOICES[cache_key]


def _search(key, layouts, free, workers):
    order = sorted(free, key=lambda i: -nbytes(key[0][i][0][0]))
    priced = {}
    for _ in range(ROUNDS):
        changed = False
        for i in order:
            costs = {}
            for n, option in enumerate(options(key[0][i][0][0], workers, free[i])):
                trial = layouts[:i] + [option] + layouts[i + 1:]
                plan = build_dist_plan(key, tuple(trial), workers)
                if n == 0 or not (free[i] and _gathers(plan, i)):
                    costs[option] = plan_bytes(key, plan)
            best = min(costs, key=costs.get)          # first of equals: the default layout
            if costs[best] < costs[layouts[i]]:
                layouts[i], changed = best, True
            priced[i] = costs
        if not changed:
            break
    return tuple(layouts), priced


def _gathers(plan, slot):
    """Whether the plan all-gathers leaf `slot`: a batch split so that its first use needs all of
    it would have every worker compute the whole step (few bytes, W times the work)."""
    return any(isinstance(s, Collective) and s.kind == "allgather" and s.src == slot for s in plan.steps)


def report(key, layouts, priced):
    """GT_VERBOSE=1: the chosen layout of each parameter and the bytes per step of every option."""
    if os.environ.get("GT_VERBOSE") != "1":
        return
    for i, costs in priced.items():
        spec = key[0][i][0][0]
        prices = ", ".join(f"{o}: {_human(b)}" for o, b in costs.items())
        print(f"gtnumba: layout of leaf {i} {spec.shape} {spec.dtype}: {layouts[i]} "
              f"(bytes per worker per step: {prices})", flush=True)


def _human(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
