"""Turn the pending part of the graph into a plan: kernel steps in order, with buffer frees.

A plan depends only on the graph's structure (ops, attributes, shapes, dtypes, edges, which
values must outlive the plan), so it is cached under that structure and the second identical
training step does no planning.
"""
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..kernels import cpu
from ..ops.registry import OPS


@dataclass
class Step:
    kernel: object
    ins: tuple
    out: int
    attrs: dict
    frees: tuple      # slots whose last use is this step and whose value is not kept
    # memory plan (kernels that take out=, see kernels/cpu.py): the output specs ((shape, dtype)
    # per output) or None; per output, the input slots that die here and may become its buffer
    # (leaf slots only when the run may donate them); the leaf slots last used here
    outs: tuple = None
    multi: bool = False
    reuse: tuple = ()
    leaf_frees: tuple = ()
    drops: tuple = ()       # the frees too small to recycle: just dropped
    recycles: tuple = ()    # the frees worth keeping for a later buffer
    direct: object = None   # a ufunc the compiled plan may call in place of the kernel wrapper


# Below this many elements a buffer is not worth planning: allocating it costs less than the
# bookkeeping (the tiny GT-style step is all such arrays).
PLANNED_MIN_SIZE = 2048


@dataclass
class Plan:
    n_leaves: int
    n_slots: int
    steps: list
    keep: tuple       # slots whose values are stored back on their nodes
    # free buffers by (shape, dtype), kept from run to run: a steady-state step allocates nothing
    pool: dict = field(default_factory=dict)
    runs: int = 0
    compiled: object = None     # straight-line code of the steps, made on the second run
    kernels: list = None        # what the compiled code calls: kernels and their attributes
    kwargs: list = None
    backend: str = "cpu"
    specs: list = None          # per slot, its output specs (what generated code specializes on)
    donates: bool = True        # may a run overwrite a leaf's value (see executor: donate)?


def pending_order(roots):
    """Pending nodes reachable from roots, inputs before users, in a canonical order."""
    order, seen = [], set()
    for root in sorted(roots, key=lambda n: n.seq):
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen or node.value is not None:
                continue
            if node.error is not None:
                raise node.error
            seen.add(id(node))
            stack.append((node, True))
            for inp in reversed(node.inputs):
                if inp.value is None and id(inp) not in seen:
                    stack.append((inp, False))
    return order


def kept_nodes(order):
    """Nodes whose values must outlive the plan: wrapped by a live tensor, or saved for backward."""
    keep = {id(n) for n in order if n.n_tensors > 0}
    stack = [n for n in order if n.n_tensors > 0]
    while stack:
        node = stack.pop()
        if node.leaf or not node.requires_grad or node.released:
            continue
        for inp in node.inputs:
            if inp.value is None and id(inp) not in keep:
                keep.add(id(inp))
                stack.append(inp)
    return keep


def describe(order):
    """(structure key, leaf nodes) of a pending order: what a cached plan is looked up by."""
    slot, leaves, key = {}, [], []
    for node in order:
        for inp in node.inputs:
            if inp.value is not None and id(inp) not in slot:
                slot[id(inp)] = len(leaves)
                leaves.append(inp)
    keep = kept_nodes(order)
    for i, node in enumerate(order):
        slot[id(node)] = len(leaves) + i
    key.append(tuple((n.specs, type(n.value).__name__) for n in leaves))
    for node in order:
        key.append((node.op, node.attrs, tuple(slot[id(i)] for i in node.inputs),
                    node.specs, id(node) in keep))
    return tuple(key), leaves


def build_plan(key, backend, local_kernels=None):
    """The plan of structure `key`; `local_kernels` ({op: kernel}) runs steps that are not ops of
    the table (a mesh plan's data movement inside a worker)."""
    leaf_part, node_part = key[0], key[1:]
    n_leaves = len(leaf_part)
    if backend == "cpu":
        node_part = _fuse_gemm_updates(_fuse_scaled_updates(_share_repeats(node_part, n_leaves), leaf_part),
                                       leaf_part)
        local_kernels = {**_CPU_FUSED, **(local_kernels or {})}
    last_use = {}
    for i, (_, _, ins, _, _) in enumerate(node_part):
        for s in ins:
            last_use[s] = i
    kept = {n_leaves + i for i, entry in enumerate(node_part) if entry[4]}
    steps = []
    for i, (op, attrs, ins, _, _) in enumerate(node_part):
        local = local_kernels.get(op) if local_kernels else None
        kernel = local or OPS[op].kernels.get(backend)
        if kernel is None:
            raise RuntimeError(f"{op}: this op has no kernel for the {backend!r} backend "
                               f"(available: {sorted(OPS[op].kernels)}); use gt.set_device('cpu')")
        frees = tuple(sorted({s for s in ins if last_use[s] == i and s >= n_leaves and s not in kept}))
        steps.append(Step(kernel, ins, n_leaves + i, dict(attrs), frees))
    # values never used by a later step and not kept (dead code) are dropped right away
    for i, step in enumerate(steps):
        slot = n_leaves + i
        if slot not in last_use and slot not in kept:
            step.frees = step.frees + (slot,)
    _plan_memory(steps, key, last_use, kept)
    specs = [entry[0] for entry in leaf_part] + [entry[3] for entry in node_part]
    donates = any(st.leaf_frees or any(s < n_leaves for r in st.reuse for s in r) for st in steps)
    return Plan(n_leaves, n_leaves + len(node_part), steps, tuple(sorted(kept)), backend=backend, specs=specs,
                donates=donates)


def _share_repeats(node_part, n_leaves):
    """A step that repeats an earlier one (same op, attributes and inputs, one output) becomes an
    alias of it, and later steps read the first (the tiny GT-style step computes x - mean twice and
    its backward reshapes one input three times).  Values are never written in place unless no one
    else holds them (executor: _owned), so sharing one is safe."""
    seen, same, out = {}, {}, []
    for i, (op, attrs, ins, specs, kept) in enumerate(node_part):
        ins = tuple(same.get(s, s) for s in ins)
        first = seen.setdefault((op, attrs, ins, specs), n_leaves + i) if ins and len(specs) == 1 else None
        if first is not None and first != n_leaves + i:
            same[n_leaves + i] = first
            out.append(("alias", (), (first,), specs, kept))
        else:
            out.append((op, attrs, ins, specs, kept))
    return tuple(out)


# (sum op, position of the product in it) -> sign: `p - c * g` and `p + c * g`, either order for +
_SCALED = {("sub", 1): -1, ("add", 1): 1, ("add", 0): 1}
_CPU_FUSED = {"_scaled_add": cpu.scaled_add, "_gemm_update": cpu.gemm_update, "_dropped": lambda: None}


def _fuse_scaled_updates(node_part, leaf_part):
    """A sum with a scalar multiple of an array of its own shape and dtype, the product read by
    nothing else (the GT-style update `p -= lr * p.grad`): one pass instead of two over every
    parameter, the product never stored.  The product's step becomes a no-op (slots keep their
    numbers); only arrays big enough to plan are worth it (a kernel call costs more than a ufunc's)."""
    n_leaves = len(leaf_part)

    def spec(s):
        specs = _slot_specs(s, leaf_part, node_part)
        return specs[0] if len(specs) == 1 else None
    uses = {}
    for entry in node_part:
        for s in entry[2]:
            uses[s] = uses.get(s, 0) + 1
    out = list(node_part)
    for j, (op, attrs, ins, specs, kept) in enumerate(node_part):
        for pos in (0, 1):
            sign = _SCALED.get((op, pos))
            t = ins[pos] if sign is not None and len(ins) == 2 and not attrs else None
            if t is None or t < n_leaves or uses.get(t) != 1 or out[t - n_leaves][0] != "mul":
                continue
            _, mattrs, mins, mspecs, mkept = out[t - n_leaves]
            want = specs[0]
            scalars = [x for x in mins if spec(x) is not None and spec(x).shape == () and spec(x).dtype == want.dtype]
            rest = [x for x in mins if x not in scalars[:1]]
            a = ins[1 - pos]
            if (mattrs or mkept or len(mins) != 2 or not scalars or len(rest) != 1 or spec(a) != want
                    or spec(rest[0]) != want or want.dtype.kind != "f" or math.prod(want.shape) < PLANNED_MIN_SIZE):
                continue
            out[j] = ("_scaled_add", (("sign", sign),), (a, rest[0], scalars[0]), specs, kept)
            out[t - n_leaves] = ("_dropped", (), (), mspecs, False)
            break
    return tuple(out)


def _fuse_gemm_updates(node_part, leaf_part):
    """A fused update whose array is a matrix product read by nothing else (a weight's gradient
    x.T @ dy under `p -= lr * p.grad`): one GEMM accumulating into the parameter.  Only float32/64
    matrices (what BLAS takes); the rounding differs from the pair's in the last bit, as any GEMM's."""
    n_leaves, out = len(leaf_part), list(node_part)
    uses = Counter(s for entry in node_part for s in entry[2])
    for j, (op, attrs, ins, specs, kept) in enumerate(node_part):
        g = ins[1] if op == "_scaled_add" else None
        if g is None or g < n_leaves or specs[0].dtype not in _BLAS_DTYPES or len(specs[0].shape) != 2:
            continue
        gop, gattrs, gins, gspecs, gkept = out[g - n_leaves]
        if (gop != "matmul" or gkept or uses[g] != 1 or gspecs != specs
                or any(_slot_specs(s, leaf_part, node_part)[0].dtype != specs[0].dtype for s in gins)):
            continue
        out[j] = ("_gemm_update", attrs, (ins[0], *gins, ins[2]), specs, kept)
        out[g - n_leaves] = ("_dropped", (), (), gspecs, False)
    return tuple(out)


_BLAS_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _slot_specs(s, leaf_part, node_part):
    """The output specs of slot s of a structure key (leaves first, then nodes)."""
    n_leaves = len(leaf_part)
    return leaf_part[s][0] if s < n_leaves else node_part[s - n_leaves][3]


def _plan_memory(steps, key, last_use, kept):
    """Which steps write into given buffers, and which dying inputs they may overwrite.  Values
    handed to the plan (leaves) are overwritten only after the last kernel that checks data, so a
    step that fails on bad data still has its inputs intact to be run again root by root."""
    n_leaves = len(key[0])
    specs = [entry[0] for entry in key[0]] + [entry[3] for entry in key[1:]]
    first_safe = 1 + max((i for i, st in enumerate(steps) if getattr(st.kernel, "checks_data", False)),
                         default=-1)

    def big(s):
        return sum(math.prod(sp.shape) for sp in specs[s]) >= PLANNED_MIN_SIZE
    # the outputs of multi-output steps that something reads (a select whose value is used or kept)
    selected = set()
    for i, entry in enumerate(key[1:]):
        if entry[0] == "select" and (n_leaves + i in last_use or n_leaves + i in kept):
            selected.add((entry[2][0], dict(entry[1])["index"]))
    for i, st in enumerate(steps):
        st.leaf_frees = tuple(s for s in sorted(set(st.ins)) if s < n_leaves and last_use[s] == i
                              and i >= first_safe and big(s))
        st.recycles = tuple(s for s in st.frees if big(s))
        st.drops = tuple(s for s in st.frees if not big(s))
        if len(specs[st.out]) == 1 and specs[st.out][0].shape != () and not st.attrs:
            st.direct = getattr(st.kernel, "ufunc", None)
        kind = getattr(st.kernel, "writes_out", None)
        inplace = getattr(st.kernel, "inplace", None)
        outs = tuple((sp.shape, sp.dtype) for sp in specs[st.out])
        if kind is None or (kind == "same" and any(specs[s][0].dtype != outs[0][1] for s in st.ins)):
            continue
        if not big(st.out):
            continue
        st.multi = isinstance(inplace, tuple)
        if not st.multi and len(outs) != 1:
            continue
        st.outs = outs

        def dies_here(pos, spec):
            s = st.ins[pos]
            return (last_use.get(s) == i and s not in kept and st.ins.count(s) == 1
                    and (specs[s][0].shape, specs[s][0].dtype) == spec and (s >= n_leaves or i >= first_safe))
        if st.multi:
            # an output nobody reads gets no buffer: the kernel may skip it (SGD's unused momentum buffer)
            st.outs = tuple(o if (st.out, k) in selected else None for k, o in enumerate(outs))
            st.reuse = tuple((st.ins[pos],) if o is not None and dies_here(pos, o) else ()
                             for pos, o in zip(inplace, st.outs))
        elif inplace == "any":
            st.reuse = (tuple(st.ins[p] for p in range(len(st.ins)) if dies_here(p, outs[0])),)
        elif inplace == "first":        # the other inputs are read after the output is written
            st.reuse = ((st.ins[0],) if dies_here(0, outs[0]) else (),)
        else:
            st.reuse = ((),)
