"""The in-process executor: runs a plan's kernel steps on one backend, with its memory plan.

Buffers: a step whose kernel takes `out=` (kernels/cpu.py) writes into an input that dies at that
step (in place), else into a free buffer of the plan's pool, else into a new array.  A value goes
back to the pool when its slot dies and nothing else can see it: it owns its memory (not a view)
and the only references left are ours (sys.getrefcount), so a value a live Tensor, a view or
another node holds is never overwritten.  Leaf values (handed in by materialize) are reused only
when listed in `donate`: their node dies with this step (materialize checks that).

Hook for other backends: `run_plan` only uses `out=` with kernels that declare `writes_out`, and
only recycles NumPy arrays; a backend that binds launches per plan can keep its own per-plan state
next to `Plan.pool` (plans are cached objects, one per structure key and backend).
"""
from sys import getrefcount

import numpy as np

_POOL_DEPTH = 64      # free buffers kept per (shape, dtype) and plan
# buffers given back between steps (optimizer.zero_grad(set_to_none=True) drops each gradient):
# the next plan that needs one of that shape takes it before allocating
SPARE = {}
_SPARE_DEPTH = 8


def run_plan(plan, slots, donate=frozenset()):
    """Run `plan`; `slots` holds the leaf values in slot order and is extended with every other
    slot (so that the leaf values have no other holder here).  Returns {kept slot: value}."""
    slots.extend([None] * (plan.n_slots - plan.n_leaves))
    pool, n_leaves = plan.pool, plan.n_leaves
    # arrays taken over from dying leaves: their (dead) leaf node still refers to each, once
    adopted = {}
    for step in plan.steps:
        if step.outs is None:
            slots[step.out] = step.kernel(*[slots[s] for s in step.ins], **step.attrs)
        else:
            out, used = _buffers(step, slots, pool, donate, n_leaves, adopted)
            slots[step.out] = step.kernel(*[slots[s] for s in step.ins], out=out, **step.attrs)
            for s in used:
                slots[s] = None           # its buffer is the output now
        for s in step.frees:
            _recycle(slots, s, pool, 2, adopted)
        for s in step.leaf_frees:
            if s in donate and slots[s] is not None:
                adopted.setdefault(id(slots[s]), 1)
                _recycle(slots, s, pool, 2, adopted)
    return {s: slots[s] for s in plan.keep}


def _owned(v, refs):
    # refs: the holders we know of, plus this function's argument and getrefcount's own
    return (type(v) is np.ndarray and v.base is None and getrefcount(v) == refs
            and v.flags.c_contiguous and v.flags.writeable)


def _buffers(step, slots, pool, donate, n_leaves, adopted):
    bufs, used = [], []
    for spec, reusable in zip(step.outs, step.reuse):
        buf = None
        for s in reusable:
            leaf = s < n_leaves
            if leaf and s in donate:
                adopted.setdefault(id(slots[s]), 1)
            elif leaf:
                continue
            if s not in used and _owned(slots[s], 3 + adopted.get(id(slots[s]), 0)):
                buf = slots[s]
                used.append(s)
                break
        if buf is None:
            free = pool.get(spec) or SPARE.get(spec)
            buf = free.pop() if free else np.empty(spec[0], spec[1])
        bufs.append(buf)
    return (tuple(bufs) if step.multi else bufs[0]), used


def _recycle(slots, s, pool, refs, adopted):
    v = slots[s]
    slots[s] = None
    if id(v) in adopted:
        refs += adopted[id(v)]
    if _owned(v, refs + 1):
        free = pool.setdefault((v.shape, v.dtype), [])
        if len(free) < _POOL_DEPTH:
            free.append(v)


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
        free = SPARE.setdefault((value.shape, value.dtype), [])
        if len(free) < _SPARE_DEPTH:
            free.append(value)
