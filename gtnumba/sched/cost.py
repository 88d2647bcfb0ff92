"""Layouts chosen by cost: for every parameter nobody placed, the layout whose step moves the
fewest bytes per worker.

The options of a parameter are Replicate (data parallel: its gradient is reduced across the
workers) and Shard(d) for each dim d (tensor parallel: its gradient stays local, and the sharding
rules move the activations instead).  A batch that feeds a sharded weight is better split along
the weight's dim than along the batch, so data leaves are chosen the same way (Shard(d) for each
d, but never a split that the step has to gather whole: few bytes, and every worker doing the
whole step).  Each option is priced by building the step's DistPlan with it (sched.distribute) and adding
up its collectives (layout.collective_bytes); leaves are chosen greedily, largest first, over a
few rounds until no choice changes.  The choice is made once per step structure and cached.
"""
import math
import os

from ..layout import REPLICATE, Shard, collective_bytes, even_sizes
from .block import local_specs
from .distribute import Collective, LocalStep, build_dist_plan

# Leaves smaller than this keep the default layout: they cannot save more than twice their size per
# step, and every option costs a plan build.
MIN_BYTES = 16 << 10
ROUNDS = 3
_CHOICES = {}
_CHOICES_LIMIT = 256
_RECENT = {}


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


def choose(key, layouts, free, workers, small=()):
    """`layouts` with the leaves in `free` ({slot: is_data}) laid out by cost, and the small data
    leaves `small` whole where that saves collectives.  Returns the layouts and, per free
    parameter, the bytes per step of each of its options (as last priced)."""
    fixed = tuple(None if i in free or i in small else l for i, l in enumerate(layouts))
    # a replayed step hands in the very same key object: found without hashing the whole key
    recent = _RECENT.get(id(key))
    if recent is not None and recent[0] is key and recent[1] == workers and recent[2] == fixed:
        return recent[3]
    cache_key = (workers, key, fixed)
    if cache_key not in _CHOICES:
        if len(_CHOICES) >= _CHOICES_LIMIT:
            _CHOICES.pop(next(iter(_CHOICES)))
        laid, priced = _search(key, tuple(layouts), free, workers)
        _CHOICES[cache_key] = _whole_small_data(key, laid, small, workers), priced
        if os.environ.get("GT_VERBOSE") == "1" and not all(free.values()):     # parameters laid out
            report(key, layouts, free, workers, *_CHOICES[cache_key])
    if len(_RECENT) >= _CHOICES_LIMIT:
        _RECENT.pop(next(iter(_RECENT)))
    _RECENT[id(key)] = (key, workers, fixed, _CHOICES[cache_key])      # holds key: its id stays its own
    return _CHOICES[cache_key]


def _search(key, layouts, free, workers):
    """Parameters greedily, largest first, for a few rounds until no choice changes."""
    size = lambda i: -nbytes(key[0][i][0][0])           # noqa: E731
    params = sorted((i for i in free if not free[i]), key=size)
    data = sorted((i for i in free if free[i]), key=size)
    layouts, current = _best_data(key, tuple(layouts), data, workers)
    priced = {}
    for _ in range(ROUNDS):
        changed = False
        for i in params:
            priced[i], (trial, price) = _price_options(key, layouts, i, data, workers)
            if price < current:
                layouts, current, changed = trial, price, True
        if not changed:
            break
    return layouts, priced


def _price_options(key, layouts, i, data, workers):
    """Bytes per step of each option of parameter i, a sharded one with the data laid out best for
    it (a weight sharded along its input dim wants the batch split the same way); and the best
    (layouts, bytes)."""
    costs, best = {}, None
    for option in options(key[0][i][0][0], workers, False):
        relay = data if isinstance(option, Shard) else ()
        trial, costs[option] = _best_data(key, _with(layouts, i, option), relay, workers)
        if best is None or costs[option] < best[1]:
            best = trial, costs[option]
    return costs, best


def _best_data(key, layouts, data, workers):
    """`layouts` with each data leaf in turn split where the step moves the fewest bytes, and
    that step's bytes (infinite where the step cannot be laid out so)."""
    plan = _plan_or_none(key, layouts, workers)
    if plan is None:
        return layouts, math.inf
    current = plan_bytes(key, plan)
    for j in data:
        for n, option in enumerate(options(key[0][j][0][0], workers, True)):
            if option == layouts[j]:
                continue
            trial = _with(layouts, j, option)
            plan = _plan_or_none(key, trial, workers)
            price = math.inf if plan is None else plan_bytes(key, plan)
            if price < current and (n == 0 or not _gathers(plan, j)):
                layouts, current = trial, price
    return layouts, current


def _whole_small_data(key, layouts, small, workers):
    """Small batches (labels, masks) whole on every worker where that takes collectives out of
    the step and adds no bytes and no work: each collective is a round trip among the workers (a
    gather of 4 labels costs as much time as megabytes), and an op that wants them split slices
    them locally.  Work is priced too: a whole batch may make every worker compute the whole step."""
    plan = _plan_or_none(key, layouts, workers) if small else None
    for j in small:
        trial = _with(layouts, j, REPLICATE)
        alt = _plan_or_none(key, trial, workers)
        if plan is None or alt is None:
            continue
        slack = math.prod(key[0][j][0][0].shape)         # the local slices of the leaf itself
        if (_collectives(alt) < _collectives(plan) and plan_bytes(key, alt) <= plan_bytes(key, plan)
                and work(alt) <= work(plan) + slack):
            layouts, plan = trial, alt
    return layouts


def _collectives(plan):
    return sum(isinstance(s, Collective) for s in plan.steps)


def work(plan):
    """Elements the busiest worker computes in the plan's local steps (what replication multiplies)."""
    steps = [s for s in plan.steps if isinstance(s, LocalStep)]
    return max(sum(math.prod(sp.shape) for s in steps for sp in local_specs(plan, s.out, w))
               for w in range(plan.workers))


def _plan_or_none(key, layouts, workers):
    """The DistPlan of a candidate, or None where the planner cannot lay the step out that way
    (the candidate is then no option; the default layouts always plan)."""
    try:
        return build_dist_plan(key, layouts, workers)
    except (AssertionError, ValueError, KeyError, IndexError):
        return None


def _with(layouts, i, layout):
    return layouts[:i] + (layout,) + layouts[i + 1:]


def _gathers(plan, slot):
    """Whether the plan all-gathers leaf `slot`: a batch split so that its first use needs all of
    it would have every worker compute the whole step (few bytes, W times the work)."""
    return any(isinstance(s, Collective) and s.kind == "allgather" and s.src == slot for s in plan.steps)


def report(key, default, free, workers, layouts, priced):
    """GT_VERBOSE=1: the chosen layout of each parameter with the bytes per step of every option,
    and the step's bytes against the default layouts (data parallel)."""
    for i, costs in priced.items():
        if free[i]:
            continue
        spec = key[0][i][0][0]
        prices = ", ".join(f"{o} {_human(b)}" for o, b in costs.items())
        print(f"gtnumba: parameter {spec.shape} {spec.dtype}: {layouts[i]}; bytes per worker per step: {prices}",
              flush=True)
    chosen = plan_bytes(key, build_dist_plan(key, layouts, workers))
    dp = plan_bytes(key, build_dist_plan(key, tuple(default), workers))
    print(f"gtnumba: step on {workers} workers moves {_human(chosen)} per worker (data parallel: {_human(dp)})",
          flush=True)


def _human(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
