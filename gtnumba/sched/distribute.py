"""Plan a step over a mesh of workers: layouts for every value, redistributions where an op's
sharding rule wants another layout, and the cut into per-worker blocks between collectives.

The program is SPMD: every worker runs the same local steps on its own shards (attributes that
carry shapes are localized per worker).  Collectives are the only edges between workers; all
collectives that become ready at the same point form one level, run as one bucketed task.
"""
import math
from dataclasses import dataclass, field

from ..layout import REPLICATE, Partial, Replicate, Shard
from ..ops.registry import OPS


@dataclass
class LocalStep:
    out: int
    op: str
    ins: tuple
    attrs: list          # one dict per worker (shapes localized)
    level: int


@dataclass
class Collective:
    out: int
    kind: str            # "allreduce" (Partial -> Replicate), "allgather" (Shard -> Replicate),
    #                      "reducescatter" (Partial -> Flat), "gather" (Flat -> Replicate)
    src: int
    dim: int
    level: int


@dataclass
class DistPlan:
    workers: int
    n_leaves: int
    steps: list = field(default_factory=list)        # LocalSteps and Collectives, in order
    layouts: dict = field(default_factory=dict)      # slot -> layout (tuple for multi-output)
    node_slot: dict = field(default_factory=dict)    # index in the pending order -> slot
    keep: tuple = ()                                  # slots whose values outlive the plan
    n_levels: int = 1
    specs: dict = field(default_factory=dict)        # slot -> Spec (tuple for multi-output)

    def blocks(self, level):
        return [s for s in self.steps if isinstance(s, LocalStep) and s.level == level]

    def collectives(self, level):
        return [s for s in self.steps if isinstance(s, Collective) and s.level == level]


def _localize(attrs, layout, workers):
    """Per-worker attributes: a `shape` attribute takes each worker's size along its shard dim."""
    if "shape" not in attrs or not isinstance(layout, Shard):
        return [attrs] * workers
    out = []
    for w in range(workers):
        shape = list(attrs["shape"])
        shape[layout.dim] = layout.sizes[w]
        out.append(dict(attrs, shape=tuple(shape)))
    return out


class _Builder:
    def __init__(self, leaf_layouts, workers):
        self.plan = DistPlan(workers, len(leaf_layouts))
        self.level = {}
        self.specs = {}
        self.next_slot = len(leaf_layouts)
        self.memo = {}
        for slot, layout in enumerate(leaf_layouts):
            self.plan.layouts[slot] = layout
            self.level[slot] = 0

    def new_slot(self, layout, spec, level):
        slot = self.next_slot
        self.next_slot += 1
        self.plan.layouts[slot], self.specs[slot], self.level[slot] = layout, spec, level
        return slot

    def local(self, op, ins, attrs, layout, spec):
        level = max([self.level[i] for i in ins], default=0)
        lay = layout[0] if isinstance(layout, tuple) and len(layout) == 1 else layout
        slot = self.new_slot(lay, spec, level)
        self.plan.steps.append(LocalStep(slot, op, tuple(ins), _localize(attrs, lay, self.plan.workers), level))
        return slot

    def collective(self, kind, src, dim, spec):
        level = self.level[src] + 1
        slot = self.new_slot(REPLICATE, spec, level)
        self.plan.steps.append(Collective(slot, kind, src, dim, level))
        return slot

    def redistribute(self, slot, want, spec):
        have = self.plan.layouts[slot]
        if have == want:
            return slot
        key = (slot, want)
        if key not in self.memo:
            self.memo[key] = self._convert(slot, have, want, spec)
        return self.memo[key]

    def _convert(self, slot, have, want, spec):
        if isinstance(have, Partial):
            slot = self.collective("allreduce", slot, -1, spec)
        elif isinstance(have, Shard):
            slot = self.collective("allgather", slot, have.dim, spec)
        if isinstance(want, Replicate):
            return slot
        assert isinstance(want, Shard), f"cannot redistribute to {want}"
        return self._slice_step(slot, want, spec)

    def _slice_step(self, slot, want, spec):
        """Replicate -> Shard is local: each worker keeps its own slice."""
        level = self.level[slot]
        out = self.new_slot(want, spec, level)
        attrs = []
        for start, stop in want.offsets():
            item = (("slice", None, None, None),) * want.dim + (("slice", start, stop, None),)
            attrs.append({"spec": item})
        self.plan.steps.append(LocalStep(out, "index", (slot,), attrs, level))
        return out


def build_dist_plan(key, leaf_layouts, workers):
    """A DistPlan for the structure `key` (see plan.describe) with the leaves laid out as given."""
    b = _Builder(leaf_layouts, workers)
    leaf_part, node_part = key[0], key[1:]
    for slot, (specs, _) in enumerate(leaf_part):
        b.specs[slot] = specs[0]
    slot_of = {i: i for i in range(len(leaf_part))}
    kept = []
    for i, (op, attrs, ins, specs, keep) in enumerate(node_part):
        ins = tuple(slot_of[s] for s in ins)
        attrs = dict(attrs)
        if op == "select":
            parent = ins[0]
            layout = b.plan.layouts[parent][attrs["index"]]
            out = b.local("select", ins, attrs, (layout,), specs[0])
        else:
            out = _place_op(b, op, attrs, ins, specs)
        slot_of[len(leaf_part) + i] = out
        b.plan.node_slot[i] = out
        if keep:
            kept.append(out)
    b.plan.keep = tuple(kept)
    b.plan.n_levels = max(b.level.values(), default=0) + 1
    b.plan.specs = b.specs
    return b.plan


def _place_op(b, op, attrs, ins, specs):
    rule = OPS[op].shard
    have = [b.plan.layouts[s] for s in ins]
    in_specs = [b.specs[s] for s in ins]
    want, outs = rule(attrs, have, in_specs, specs)
    ins = [b.redistribute(s, w, sp) for s, w, sp in zip(ins, want, in_specs)]
    spec = specs[0] if len(specs) == 1 else specs
    return b.local(op, ins, attrs, tuple(outs), spec)


def bytes_per_worker(plan, step, worker):
    """Bytes `worker` receives from its peers for collective `step`, as the Dask runner moves them
    (each worker pulls exactly what it needs); the cost model prices layouts with the same formula."""
    spec, W = plan.specs[step.src], plan.workers
    item, n = spec.dtype.itemsize, math.prod(spec.shape)
    if step.kind == "reducescatter":
        return (W - 1) * plan.layouts[step.out].sizes[worker] * item
    if step.kind == "gather":
        return (n - plan.layouts[step.src].sizes[worker]) * item
    if step.kind == "allgather":
        lay = plan.layouts[step.src]
        return (n - n // spec.shape[lay.dim] * lay.sizes[worker]) * item
    return (W - 1) * n * item                      # allreduce: every peer's whole partial


def step_bytes_per_worker(plan):
    """Bytes each worker receives in one run of `plan` (all its collectives)."""
    cols = [s for s in plan.steps if isinstance(s, Collective)]
    return [sum(bytes_per_worker(plan, c, w) for c in cols) for w in range(plan.workers)]
