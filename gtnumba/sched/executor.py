"""The in-process executor: runs a plan's kernel steps on one backend, with its memory plan.

Buffers: a step whose kernel has an `into` twin taking `out=` (kernels/cpu.py) and whose output
is big enough to plan writes into an input that dies at that step (in place), else into a free
buffer of the plan's pool, else into a new array.  A value goes back to the pool when its slot dies and nothing else
can see it: it owns its memory (not a view) and the only references left are ours
(sys.getrefcount), so a value a live Tensor, a view or another node holds is never overwritten.
Leaf values (handed in by materialize) are reused only when listed in `donate`: their node dies
with this step (materialize checks that).

From its second run on, a plan runs as straight-line generated code (one line per step), so a
step of tiny kernels pays almost nothing for the loop.

Hook for a backend that binds its launches per plan (CUDA): `BINDERS[backend](plan)` is called
once, at a plan's first run (a replayed step runs the very same Plan object every time), and may
return a callable `run(slots, kernels, kwargs, mem)` that replaces the generated code: bind launch
configurations, capture a CUDA graph, keep per-plan state on the plan.  Returning None keeps the
generated code.  `run_plan` only passes `out=` to kernels that declare `writes_out` (through their
`into`), and only recycles NumPy arrays.
"""
import math
from sys import getrefcount

import numpy as np

from ..kernels import backend

_POOL_DEPTH = 64      # free buffers kept per (shape, dtype) and plan
BINDERS = {}          # backend name -> bind(plan) -> run(slots, kernels, kwargs, mem) or None
# buffers given back between steps (optimizer.zero_grad(set_to_none=True) drops each gradient):
# the next plan that needs one of that shape takes it before allocating
SPARE = {}
_SPARE_DEPTH = 64
# (shape, dtype) of the buffers plans write (registered at a plan's first run): only such arrays are kept
# there (a worker's batch of pixels, 20 MB a step, would pile up to the depth and every new batch
# would land on fresh pages)
_WANTED = set()


def run_plan(plan, slots, donate=frozenset()):
    """Run `plan`; `slots` holds the leaf values in slot order and is extended with every other
    slot (so that the leaf values have no other holder here).  Returns {kept slot: value}."""
    graph = backend.graph_runner(plan)        # CUDA: the whole plan as one graph, once it repeats
    if graph is not None:
        return graph(slots)
    slots.extend([None] * (plan.n_slots - plan.n_leaves))
    mem = _Memory(plan, slots, donate)
    plan.runs += 1
    if plan.runs == 1:                        # once per plan, not per buffer: the shapes its kernels write
        _WANTED.update(spec for st in plan.steps for spec in st.outs or () if spec is not None)
    # CPU: generated code from the second run (a one-off plan is not worth it); a binder (CUDA)
    # binds from the first, since its bound steps record their launches on their first call anyway
    if plan.runs == (1 if plan.backend in BINDERS else 2):
        plan.compiled = _compile(plan)
        bind = BINDERS.get(plan.backend)
        plan.compiled = (bind(plan) if bind is not None else None) or plan.compiled
    if plan.compiled is not None:
        plan.compiled(slots, plan.kernels, plan.kwargs, mem)
    else:
        _interpret(plan, slots, mem)
    return {s: slots[s] for s in plan.keep}


def _bind_launches(plan):
    """CUDA: the generated code calls each step's launches bound once (kernels/cuda/bound.py)."""
    plan.kernels = backend.bound_steps(plan)


BINDERS["cuda"] = _bind_launches


def _interpret(plan, slots, mem):
    for i, step in enumerate(plan.steps):
        if step.outs is None:
            slots[step.out] = step.kernel(*[slots[s] for s in step.ins], **step.attrs)
        else:
            mem.step(i)
        for s in step.drops:
            slots[s] = None
        if step.recycles or step.leaf_frees:
            mem.free(i)


def _compile(plan):
    """The plan's steps as one generated function: s is the slot list, K the kernels, A their
    keyword attributes, mem the memory plan (for the steps that write into planned buffers)."""
    lines, names = ["def run(s, K, A, mem):"], {}
    drops = not _all_small(plan)
    for i, st in enumerate(plan.steps):
        expr = _inline(plan, st, names) if st.outs is None else None
        if expr is not None:
            lines.append(f" s[{st.out}] = {expr}")
        elif st.outs is None:
            args = ", ".join([f"s[{x}]" for x in st.ins] + ([f"**A[{i}]"] if st.attrs else []))
            lines.append(f" s[{st.out}] = K[{i}]({args})")
        else:
            lines.append(f" mem.step({i})")
        lines.extend(f" s[{x}] = None" for x in st.drops if drops)
        if st.recycles or st.leaf_frees:
            lines.append(f" mem.free({i})")
    lines.append(" return None")
    plan.kernels = [st.direct or getattr(st.kernel, "into", st.kernel) for st in plan.steps]
    plan.kwargs = [st.attrs for st in plan.steps]
    namespace = dict(names)
    exec(compile("\n".join(lines), "<gtnumba plan>", "exec"), namespace)
    return namespace["run"]


# A plan whose values all fit in this many elements keeps them to its end: dropping each one as
# it dies (a line per value) costs more than the memory is worth (the tiny GT-style step: ~200 lines).
_KEEP_ALL_MAX = 1 << 16


def _all_small(plan):
    """No step writes into planned buffers, and all the slots' values together are small."""
    if plan.specs is None or any(st.outs is not None or st.recycles or st.leaf_frees for st in plan.steps):
        return False
    return sum(math.prod(sp.shape) for specs in plan.specs for sp in specs) <= _KEEP_ALL_MAX


def _inline(plan, step, names):
    """The step as an expression calling NumPy directly (kernels/cpu.py's inline forms), or None."""
    inline = getattr(step.kernel, "inline", None)
    if inline is None or plan.backend != "cpu" or plan.specs is None or len(plan.specs[step.out]) != 1:
        return None
    in_specs = [plan.specs[x] for x in step.ins]
    if any(len(sp) != 1 for sp in in_specs):
        return None
    got = inline([f"s[{x}]" for x in step.ins], step.attrs, [sp[0] for sp in in_specs], plan.specs[step.out])
    if got is None:
        return None
    expr, used = got
    for name, obj in used.items():
        assert names.setdefault(name, obj) == obj, f"generated plan code: two objects named {name}"
    return expr


class _Memory:
    """One run's buffer bookkeeping: the pool, the donated leaf slots and the arrays taken over
    from dying leaves (their dead leaf node still refers to each of them, once)."""
    __slots__ = ("plan", "slots", "pool", "donate", "adopted")

    def __init__(self, plan, slots, donate):
        self.plan, self.slots, self.pool, self.donate, self.adopted = plan, slots, plan.pool, donate, {}

    def step(self, i):
        step, slots = self.plan.steps[i], self.slots
        out, used = self._buffers(step)
        slots[step.out] = step.kernel.into(*[slots[s] for s in step.ins], out=out, **step.attrs)
        for s in used:
            slots[s] = None           # its buffer is the output now

    def free(self, i):
        step, slots = self.plan.steps[i], self.slots
        for s in step.recycles:
            self._recycle(s)
        for s in step.leaf_frees:
            if s in self.donate and slots[s] is not None:
                self.adopted.setdefault(id(slots[s]), 1)
                self._recycle(s)

    def _buffers(self, step):
        slots, n_leaves, adopted = self.slots, self.plan.n_leaves, self.adopted
        bufs, used = [], []
        for spec, reusable in zip(step.outs, step.reuse):
            if spec is None:               # an output nobody reads: the kernel makes it if it must
                bufs.append(None)
                continue
            buf = None
            for s in reusable:
                if s < n_leaves:
                    if s not in self.donate:
                        continue
                    adopted.setdefault(id(slots[s]), 1)
                if s not in used and _owned(slots[s], 3 + adopted.get(id(slots[s]), 0)):
                    buf = slots[s]
                    used.append(s)
                    break
            if buf is None:
                free = self.pool.get(spec) or SPARE.get(spec)
                buf = free.pop() if free else _new_buffer(spec)
            bufs.append(buf)
        return (tuple(bufs) if step.multi else bufs[0]), used

    def _recycle(self, s):
        v = self.slots[s]
        self.slots[s] = None
        if _owned(v, 3 + self.adopted.get(id(v), 0)):
            free = self.pool.setdefault((v.shape, v.dtype), [])
            if len(free) < _POOL_DEPTH:
                free.append(v)


def _new_buffer(spec):
    buf = np.empty(spec[0], spec[1])
    NEW_BUFFERS["count"] += 1
    NEW_BUFFERS["bytes"] += buf.nbytes
    NEW_BUFFERS["largest"] = max(NEW_BUFFERS["largest"], buf.nbytes)
    return buf


# planned buffers no pool could give: a steady state makes no parameter-sized one (on a worker, a
# partial sum its peers pull is handed to the comm and not pooled again)
NEW_BUFFERS = {"count": 0, "bytes": 0, "largest": 0}


def _owned(v, refs):
    """Does `v` own its memory, with no holder but the `refs` we know of (counting this call's
    argument and getrefcount's own)?"""
    return (type(v) is np.ndarray and v.base is None and getrefcount(v) == refs
            and v.flags.c_contiguous and v.flags.writeable)


def give_back(tensor_holder, attr):
    """Drop `tensor_holder.<attr>` (a Tensor) and keep its array for the next plan, when nothing
    else refers to the tensor, its node or its value (checked by reference count)."""
    t = getattr(tensor_holder, attr)
    setattr(tensor_holder, attr, None)
    if t is None or getrefcount(t) != 2:            # 2: `t` and getrefcount's argument
        return
    node = t._node
    if node.n_tensors != 1 or getrefcount(node) != 3 or not _owned(node.value, 3):
        return
    value = node.value
    del t, node                                     # the tensor and its node die here
    if _owned(value, 3):
        _keep(value)


def spare(value):
    """Keep a dead value's array for a later plan's buffer (a worker's store drops the parameters
    the last step replaced): only when its one holder is the caller's reference."""
    if _owned(value, 4):             # the caller's, `value`, _owned's argument and getrefcount's
        _keep(value)


def _keep(value):
    key = (value.shape, value.dtype)
    if key in _WANTED:
        free = SPARE.setdefault(key, [])
        if len(free) < _SPARE_DEPTH:
            free.append(value)
