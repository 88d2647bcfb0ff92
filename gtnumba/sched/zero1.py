"""ZeRO-1 on a DistPlan: the optimizer runs on 1/W of every parameter, on every worker.

The generic planner all-reduces each gradient to a full replica and every worker then runs the
whole optimizer.  Here the pointwise steps that turn all-reduced gradients and replicated
parameters/state into new ones (the "update region") run on a slice of the elements instead: the
all-reduce becomes a reduce-scatter, other full-size inputs are sliced locally (or already are
slices: `Flat` values kept from the last step), and the outputs stay sliced.  A later step that
reads a sliced value whole gathers it at the start of its first level (the all-gather half of
the all-reduce).  Per worker that moves 2(W-1)/W of the gradient bytes, a ring all-reduce's
bound, and each worker keeps 1/W of the optimizer state.

All slices of one update region share one partition: the elements of all its tensors, laid end to
end, cut into W even runs, so that bytes and work balance across workers.
"""
import math

from ..layout import Replicate, even_sizes
from ..ops.registry import OPS
from .distribute import Collective, LocalStep
from .mesh import Flat

_NO_SLICE_ATTRS = ("shape", "axis", "axes")


def _specs(plan, slot):
    spec = plan.specs[slot]
    return spec if isinstance(spec, tuple) else (spec,)


def _replicated(layout):
    return all(isinstance(l, Replicate) for l in (layout if isinstance(layout, tuple) else (layout,)))


def _scalar_input(plan, slot, shape):
    spec = plan.specs[slot]
    return not isinstance(spec, tuple) and spec.shape != shape and math.prod(spec.shape) == 1 \
        and isinstance(plan.layouts[slot], Replicate)


def _full_inputs(plan, step):
    """The inputs a pointwise step reads element by element (not broadcast scalars)."""
    shape = _specs(plan, step.out)[0].shape
    return [i for i in step.ins if not _scalar_input(plan, i, shape)]


def _pointwise(plan, step):
    """A step that can run on any slice of its output's elements, given the same slice of its
    full-size inputs and the whole of its scalar inputs."""
    if not isinstance(step, LocalStep) or step.op == "select" or step.op.startswith("_"):
        return False
    if not getattr(OPS[step.op].shard, "pointwise", False) or not _replicated(plan.layouts[step.out]):
        return False
    if any(k in step.attrs[0] for k in _NO_SLICE_ATTRS):
        return False
    shapes = {s.shape for s in _specs(plan, step.out)}
    if len(shapes) != 1:
        return False
    (shape,) = shapes
    return all(not isinstance(plan.specs[i], tuple) and plan.specs[i].shape == shape
               for i in _full_inputs(plan, step))


def _readers(plan):
    readers = {}
    for step in plan.steps:
        for s in (step.src,) if isinstance(step, Collective) else step.ins:
            readers.setdefault(s, []).append(step)
    return readers


def _candidates(plan, readers):
    """Pointwise steps (and selects of them) whose outputs only pointwise steps read."""
    cand = {id(s) for s in plan.steps if _pointwise(plan, s)}
    producer = {s.out: s for s in plan.steps}
    changed = True
    while changed:
        changed = False
        for s in plan.steps:
            if isinstance(s, LocalStep) and s.op == "select" and id(s) not in cand \
                    and id(producer.get(s.ins[0])) in cand:
                cand.add(id(s))
                changed = True
        for s in plan.steps:
            if id(s) in cand and any(id(r) not in cand for r in readers.get(s.out, ())):
                cand.discard(id(s))
                changed = True
        for s in plan.steps:
            if id(s) in cand and s.op == "select" and id(producer.get(s.ins[0])) not in cand:
                cand.discard(id(s))
                changed = True
    return [s for s in plan.steps if id(s) in cand]


class _Families:
    """Union-find over slots: slots read or written element by element together share slices."""

    def __init__(self):
        self.parent = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        self.parent[self.find(a)] = self.find(b)


def _region(plan):
    """(steps of the update region, slot -> family root, family root -> Flat layout)."""
    readers = _readers(plan)
    cand = _candidates(plan, readers)
    fam = _Families()
    for s in cand:
        for i in (s.ins if s.op == "select" else _full_inputs(plan, s)):
            fam.union(s.out, i)
    reduced = {c.out for c in plan.steps if isinstance(c, Collective) and c.kind == "allreduce"}
    useful = {fam.find(i) for s in cand if s.op != "select" for i in _full_inputs(plan, s) if i in reduced}
    region = [s for s in cand if fam.find(s.out) in useful]
    order = []
    for s in region:
        root = fam.find(s.out)
        if root not in order:
            order.append(root)
    shape_of = {fam.find(s.out): _specs(plan, s.out)[0].shape for s in region}
    return region, fam, _partition(order, shape_of, plan.workers)


def _partition(roots, shape_of, workers):
    """All families' elements end to end, cut into `workers` even runs."""
    total = sum(math.prod(shape_of[r]) for r in roots)
    bounds, start = [], 0
    for size in even_sizes(total, workers):
        bounds.append((start, start + size))
        start += size
    out, offset = {}, 0
    for r in roots:
        n = math.prod(shape_of[r])
        sizes = tuple(max(0, min(offset + n, b) - max(offset, a)) for a, b in bounds)
        out[r] = Flat(tuple(shape_of[r]), sizes)
        offset += n
    return out


class _Rewriter:
    def __init__(self, plan):
        self.plan = plan
        self.next_slot = max(plan.layouts) + 1
        self.head, self.steps = [], []       # head: level-0 gathers of sliced leaves
        self.gathered, self.chunks = {}, {}

    def new_slot(self, layout, spec):
        slot = self.next_slot
        self.next_slot += 1
        self.plan.layouts[slot], self.plan.specs[slot] = layout, spec
        return slot

    def whole(self, slot, level):
        """A sliced value read whole: gathered once at the start of its level."""
        lay = self.plan.layouts[slot]
        if not isinstance(lay, Flat):
            return slot
        if slot not in self.gathered:
            out = self.new_slot(Replicate(), self.plan.specs[slot])
            self.head.append(Collective(out, "gather", slot, -1, level))
            self.gathered[slot] = out
        return self.gathered[slot]

    def sliced(self, slot, flat, level):
        """`slot` as slices of the partition `flat` (free when it is already sliced alike)."""
        if self.plan.layouts[slot] == flat:
            return slot
        key = (slot, flat)
        if key not in self.chunks:
            src = self.whole(slot, 0)
            out = self.new_slot(flat, self.plan.specs[slot])
            attrs = [{"start": a, "stop": b} for a, b in flat.offsets()]
            self.steps.append(LocalStep(out, "_chunk", (src,), attrs, level))
            self.chunks[key] = out
        return self.chunks[key]


def shard_updates(plan, leaf_layouts):
    """Rewrite `plan` (built with every Flat leaf planned as Replicate) for ZeRO-1, in place."""
    for slot, lay in enumerate(leaf_layouts):
        plan.layouts[slot] = lay
    region, fam, flats = _region(plan)
    in_region = {id(s) for s in region}
    readers = _readers(plan)
    scatter = {c.out for c in plan.steps if isinstance(c, Collective) and c.kind == "allreduce"
               and readers.get(c.out) and all(id(r) in in_region for r in readers[c.out])
               and fam.find(c.out) in flats}
    rw = _Rewriter(plan)
    for step in plan.steps:
        if isinstance(step, Collective):
            _rewrite_collective(rw, step, scatter, fam, flats)
        elif id(step) in in_region:
            _rewrite_update(rw, step, fam, flats)
        else:
            ins = tuple(rw.whole(i, step.level) for i in step.ins)
            rw.steps.append(LocalStep(step.out, step.op, ins, step.attrs, step.level))
    plan.steps = rw.head + rw.steps
    _relevel(plan)
    return plan


def _relevel(plan):
    """Levels again after the rewrite, as the planner gives them: a local step runs in the level
    of its latest input, a collective one level after a computed source and in level 0 for a leaf
    (a gather of last step's slices).  A gather is made at its first reader's level, and a later
    reader of it may sit in an earlier level (a weight's transpose for the backward, in level 0,
    while its first forward use waits for an all-reduce)."""
    made = {s.out: s for s in plan.steps}
    level = {}
    changed = True
    while changed:
        changed = False
        for s in plan.steps:
            if isinstance(s, Collective):
                lv = level.get(s.src, 0) + 1 if s.src in made else 0
            else:
                lv = max((level.get(i, 0) for i in s.ins), default=0)
            if level.get(s.out) != lv:
                level[s.out], s.level, changed = lv, lv, True
    plan.n_levels = max(level.values(), default=0) + 1


def _rewrite_collective(rw, c, scatter, fam, flats):
    if c.out in scatter:
        rw.plan.layouts[c.out] = flats[fam.find(c.out)]
        rw.steps.append(Collective(c.out, "reducescatter", c.src, -1, c.level))
    else:
        rw.steps.append(Collective(c.out, c.kind, rw.whole(c.src, c.level), c.dim, c.level))


def _rewrite_update(rw, step, fam, flats):
    flat = flats[fam.find(step.out)]
    if step.op == "select":
        ins = step.ins
    else:
        shape = _specs(rw.plan, step.out)[0].shape
        ins = tuple(i if _scalar_input(rw.plan, i, shape) else rw.sliced(i, flat, step.level) for i in step.ins)
    n_out = len(_specs(rw.plan, step.out))
    rw.plan.layouts[step.out] = flat if n_out == 1 or step.op == "select" else (flat,) * n_out
    rw.steps.append(LocalStep(step.out, step.op, ins, step.attrs, step.level))
