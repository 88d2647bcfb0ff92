"""Sharding rules: for each op, the input layouts it wants and the output layouts it gives.

A rule is `rule(attrs, layouts, in_specs, out_specs) -> (wanted input layouts, output layouts)`.
The planner inserts a redistribution wherever an input's layout differs from the wanted one, so
a rule may always fall back to asking for Replicate: that is correct, only slower.
"""
import math

from ..layout import PARTIAL, REPLICATE, Partial, Replicate, Shard


def _shape(spec):
    return spec.shape


def _aligned(in_ndim, out_ndim, dim):
    return dim + out_ndim - in_ndim


def _replicate_all(n_in, n_out=1):
    return (REPLICATE,) * n_in, (REPLICATE,) * n_out


def replicated(attrs, layouts, ins, outs):
    """Ops with no sharded form (yet): everything replicated."""
    return _replicate_all(len(layouts), len(outs))


# ---- elementwise ---------------------------------------------------------------------------
def _pick_out_shard(layouts, ins, out):
    """The output shard (dim, sizes) from the first input sharded on a non-broadcast dim."""
    n = len(out.shape)
    for lay, spec in zip(layouts, ins):
        if isinstance(lay, Shard) and spec.shape[lay.dim] == out.shape[_aligned(len(spec.shape), n, lay.dim)]:
            return Shard(_aligned(len(spec.shape), n, lay.dim), lay.sizes)
    return None


def _want_for_shard(target, spec, out_ndim):
    """What an operand must be for the output to be `target`: sharded alike, or replicated if it
    broadcasts along the sharded dim."""
    k = target.dim - (out_ndim - len(spec.shape))
    if k < 0 or spec.shape[k] == 1 and sum(target.sizes) != 1:
        return REPLICATE
    return Shard(k, target.sizes)


def _partial_ok(policy, layouts):
    partial = [isinstance(l, Partial) for l in layouts]
    if not any(partial):
        return False
    if policy == "add":
        return all(partial)
    if policy == "mul":
        return sum(partial) == 1 and all(p or isinstance(l, Replicate) for p, l in zip(partial, layouts))
    if policy == "div":
        return partial[0] and all(isinstance(l, Replicate) for l in layouts[1:])
    return policy == "linear"


def elementwise(policy=None):
    """Broadcasting elementwise ops.  `policy` says how Partial (sum) inputs may pass through:
    "add" (all partial), "mul" (one partial times replicated), "div" (partial numerator),
    "linear" (unary linear ops), None (never: partial inputs are reduced first)."""
    def rule(attrs, layouts, ins, outs):
        out = outs[0]
        if _partial_ok(policy, layouts):
            return tuple(layouts), (PARTIAL,)
        layouts = [REPLICATE if isinstance(l, Partial) else l for l in layouts]
        target = _pick_out_shard(layouts, ins, out)
        if target is None:
            return (REPLICATE,) * len(ins), (REPLICATE,)
        return tuple(_want_for_shard(target, s, len(out.shape)) for s in ins), (target,)
    rule.pointwise = True        # runs on any slice of its elements (the ZeRO-1 update region)
    return rule


# ---- reductions ------------------------------------------------------------------------------
def _drop_dims(dim, axes, keepdims):
    return dim if keepdims else dim - sum(1 for a in axes if a < dim)


def reduction(kind):
    """kind "sum": a reduced shard becomes Partial; "extremum": it is gathered first."""
    def rule(attrs, layouts, ins, outs):
        lay, axes, keep = layouts[0], attrs["axes"], attrs["keepdims"]
        if isinstance(lay, Partial):
            return ((PARTIAL,), (PARTIAL,)) if kind == "sum" else ((REPLICATE,), (REPLICATE,))
        if isinstance(lay, Shard):
            if lay.dim not in axes:
                return (lay,), (Shard(_drop_dims(lay.dim, axes, keep), lay.sizes),)
            if kind == "sum":
                return (lay,), (PARTIAL,)
        return (REPLICATE,), (REPLICATE,)
    return rule


def arg_reduction(attrs, layouts, ins, outs):
    lay, axis = layouts[0], attrs["axis"]
    if isinstance(lay, Shard) and axis is not None and lay.dim != axis:
        return (lay,), (Shard(_drop_dims(lay.dim, (axis,), attrs["keepdims"]), lay.sizes),)
    return (REPLICATE,), (REPLICATE,)


# ---- shape ---------------------------------------------------------------------------------
def _reshape_shard(lay, in_shape, out_shape):
    """The out shard a reshape keeps, or None when shard boundaries do not survive it."""
    outer = math.prod(in_shape[:lay.dim])
    inner_in = math.prod(in_shape[lay.dim + 1:])
    for d in range(len(out_shape)):
        if math.prod(out_shape[:d]) != outer or out_shape[d] == 1 and in_shape[lay.dim] != 1:
            continue
        inner_out = math.prod(out_shape[d + 1:])
        bounds = [o * inner_in for o, _ in lay.offsets()] + [in_shape[lay.dim] * inner_in]
        if inner_out and all(b % inner_out == 0 for b in bounds):
            sizes = tuple(s * inner_in // inner_out for s in lay.sizes)
            return Shard(d, sizes)
    return None


def reshape(attrs, layouts, ins, outs):
    lay = layouts[0]
    if isinstance(lay, Shard):
        out = _reshape_shard(lay, ins[0].shape, outs[0].shape)
        return ((lay,), (out,)) if out is not None else ((REPLICATE,), (REPLICATE,))
    return (lay,), (lay,)


def permute(attrs, layouts, ins, outs):
    lay = layouts[0]
    if isinstance(lay, Shard):
        return (lay,), (Shard(attrs["axes"].index(lay.dim), lay.sizes),)
    return (lay,), (lay,)


def expand(attrs, layouts, ins, outs):
    lay, spec = layouts[0], ins[0]
    lead = len(outs[0].shape) - len(spec.shape)
    if isinstance(lay, Shard):
        if spec.shape[lay.dim] != 1 or sum(lay.sizes) == 1 and outs[0].shape[lay.dim + lead] == 1:
            return (lay,), (Shard(lay.dim + lead, lay.sizes),)
        return (REPLICATE,), (REPLICATE,)
    return (lay,), (lay,)


def concat(attrs, layouts, ins, outs):
    axis = attrs["axis"]
    if all(isinstance(l, Partial) for l in layouts):
        return tuple(layouts), (PARTIAL,)
    first = layouts[0]
    if isinstance(first, Shard) and first.dim != axis and all(l == first for l in layouts):
        return tuple(layouts), (first,)
    return _replicate_all(len(layouts))


# ---- indexing --------------------------------------------------------------------------------
def _index_positions(spec, ndim):
    """For each input dim, the spec item consuming it and the output dim it lands on (or None)."""
    n_consume = sum(1 for s in spec if s[0] not in ("none", "ellipsis"))
    items = []
    for s in spec:
        if s[0] == "ellipsis":
            items.extend([("slice", None, None, None)] * (ndim - n_consume))
        else:
            items.append(s)
    items.extend([("slice", None, None, None)] * (ndim - sum(1 for s in items if s[0] != "none")))
    where, out_dim, in_dim = {}, 0, 0
    for s in items:
        if s[0] == "none":
            out_dim += 1
        elif s[0] == "int":
            where[in_dim] = (s, None)
            in_dim += 1
        else:
            where[in_dim] = (s, out_dim)
            in_dim += 1
            out_dim += 1
    return where


def _full_slice(item):
    return item[0] == "slice" and item[1] in (None, 0) and item[2] is None and item[3] in (None, 1)


def _gather_by_sharded_indices(spec, layouts):
    """x[idx] with x replicated and a sharded index array: the result is sharded like idx."""
    if len(layouts) == 2 and spec == (("array", 0),) and isinstance(layouts[1], Shard) \
            and not isinstance(layouts[0], Shard):
        return layouts[1]
    return None


def index(attrs, layouts, ins, outs):
    spec, lay = attrs["spec"], layouts[0]
    by_idx = _gather_by_sharded_indices(spec, layouts)
    if by_idx is not None and isinstance(lay, Replicate):
        return (REPLICATE, by_idx), (by_idx,)
    has_arrays = len(layouts) > 1
    rest = (REPLICATE,) * (len(layouts) - 1)
    if isinstance(lay, Partial):
        return (PARTIAL,) + rest, (PARTIAL,)
    if isinstance(lay, Shard) and not has_arrays:
        item, out_dim = _index_positions(spec, len(ins[0].shape))[lay.dim]
        if out_dim is not None and _full_slice(item):
            return (lay,), (Shard(out_dim, lay.sizes),)
    return (REPLICATE,) * len(layouts), (REPLICATE,)


def index_backward(attrs, layouts, ins, outs):
    spec, g = attrs["spec"], layouts[0]
    rest = (REPLICATE,) * (len(layouts) - 1)
    if len(layouts) == 2 and spec == (("array", 0),) and isinstance(g, Shard) and g.dim < len(ins[1].shape):
        return (g, Shard(g.dim, g.sizes)), (PARTIAL,)       # scatter-add of each shard's rows
    if isinstance(g, Partial):
        return (PARTIAL,) + rest, (PARTIAL,)
    if isinstance(g, Shard) and len(layouts) == 1:
        for in_dim, (item, out_dim) in _index_positions(spec, len(attrs["shape"])).items():
            if out_dim == g.dim and _full_slice(item):
                return (g,), (Shard(in_dim, g.sizes),)
    return (REPLICATE,) * len(layouts), (REPLICATE,)


# ---- linear algebra ------------------------------------------------------------------------
def _batch_partner(target, other_shape, n):
    """Layout the other matmul operand needs when the output is sharded on batch dim target.dim."""
    k = target.dim - (n - len(other_shape))
    if 0 <= k < len(other_shape) - 2 and other_shape[k] != 1:
        return Shard(k, target.sizes)
    return REPLICATE


def _matmul_from(lead, lead_shape, other_shape, n, lead_is_a, out_shape):
    """Output layout when operand `lead` (a if lead_is_a, else b) is sharded, and what the other
    operand must then be; None when this operand's shard gives no sharded form."""
    rows_dim, cols_dim = len(lead_shape) - 2, len(lead_shape) - 1
    if lead.dim < rows_dim:                                       # a batch dim
        target = Shard(_aligned(len(lead_shape), n, lead.dim), lead.sizes)
        if out_shape[target.dim] == lead_shape[lead.dim]:
            return _batch_partner(target, other_shape, n), target
        return None
    if lead_is_a and lead.dim == rows_dim:
        return REPLICATE, Shard(n - 2, lead.sizes)
    if not lead_is_a and lead.dim == cols_dim:
        return REPLICATE, Shard(n - 1, lead.sizes)
    # the contracted dim: each worker multiplies its slice, the sums are partial
    other_dim = len(other_shape) - 2 if lead_is_a else len(other_shape) - 1
    return Shard(other_dim, lead.sizes), PARTIAL


def matmul(attrs, layouts, ins, outs):
    a, b = layouts
    sa, sb, out_shape = ins[0].shape, ins[1].shape, outs[0].shape
    n = len(out_shape)
    if {type(a), type(b)} == {Partial, Replicate}:
        return (a, b), (PARTIAL,)
    options = []
    if isinstance(a, Shard):
        found = _matmul_from(a, sa, sb, n, True, out_shape)
        if found is not None:
            options.append(((a, found[0]), (found[1],)))
    if isinstance(b, Shard):
        found = _matmul_from(b, sb, sa, n, False, out_shape)
        if found is not None:
            options.append(((found[0], b), (found[1],)))
    if options:
        return min(options, key=lambda o: _bytes_moved(o, layouts, ins, outs))   # ties: a's option
    return (REPLICATE, REPLICATE), (REPLICATE,)


# ---- begin: layouts chosen by cost (engineer "cost", issue 9 item 4) ------------------------------
from ..layout import collective_bytes, redistribution_bytes  # noqa: E402


def _bytes_moved(option, layouts, ins, outs):
    """Bytes per worker an option moves: its inputs' redistributions and the reduction of a
    Partial output.  When both operands are sharded (a tensor-parallel weight times a batch),
    this keeps the large operand in place and moves the small one."""
    workers = next(len(l.sizes) for l in layouts if isinstance(l, Shard))
    (want_in, (out,)) = option
    moved = sum(redistribution_bytes(h, w, _nbytes(s), workers) for h, w, s in zip(layouts, want_in, ins))
    if isinstance(out, Partial):
        moved += collective_bytes("allreduce", _nbytes(outs[0]), workers)
    return moved


def _nbytes(spec):
    return math.prod(spec.shape) * spec.dtype.itemsize
# ---- end: layouts chosen by cost ---------------------------------------------------------------


# ---- fused rows ----------------------------------------------------------------------------
def along_axis(attrs, layouts, ins, outs):
    """Row-wise ops over `axis` (softmax and friends): any other dim may stay sharded."""
    first = layouts[0]
    if isinstance(first, Shard) and first.dim != attrs["axis"] and all(l == first for l in layouts):
        return tuple(layouts), (first,) * len(outs)
    return _replicate_all(len(layouts), len(outs))


def _row_shard(layouts, ins):
    """The shard of the leading input when it keeps whole rows (not the last, normalized dim)."""
    first = layouts[0]
    if isinstance(first, Shard) and first.dim < len(ins[0].shape) - 1:
        return first
    return None


def cross_entropy(attrs, layouts, ins, outs):
    shard = _row_shard(layouts, ins) or (layouts[1] if isinstance(layouts[1], Shard) else None)
    if shard is None:
        return _replicate_all(2, 2)
    row = Shard(0, shard.sizes)
    return (row, row), (row, row)


def cross_entropy_backward(attrs, layouts, ins, outs):
    shard = _row_shard(layouts, ins)
    if shard is None:
        return _replicate_all(4)
    row = Shard(0, shard.sizes)
    return (row,) * 4, (row,)


def layer_norm(attrs, layouts, ins, outs):
    shard = _row_shard(layouts, ins)
    if shard is None:
        return _replicate_all(3, 3)
    return (shard, REPLICATE, REPLICATE), (shard,) * 3


def layer_norm_backward(attrs, layouts, ins, outs):
    shard = _row_shard(layouts, ins)
    if shard is None:
        return _replicate_all(5, 3)
    return (shard, REPLICATE, shard, shard, shard), (shard, PARTIAL, PARTIAL)


def updates(attrs, layouts, ins, outs):
    """Optimizer updates run where the parameter lives: a replicated parameter with replicated
    (all-reduced) gradient and state, a sharded one (tensor parallel) on its shards."""
    p = layouts[0]
    n_tensors = len(outs) + 1              # parameter, gradient, states; then lr/step scalars
    if isinstance(p, Shard):
        want = (p,) * n_tensors + (REPLICATE,) * (len(layouts) - n_tensors)
        return want, (p,) * len(outs)
    return _replicate_all(len(layouts), len(outs))


updates.pointwise = True


def placed(attrs, layouts, ins, outs):
    """alias with a `placement` attribute: the user's gt.shard / gt.replicate of a computed value."""
    target = attrs.get("placement")
    if target is None or isinstance(target, Shard) and target.sizes is None:
        return elementwise("linear")(attrs, layouts, ins, outs)
    return (target,), (target,)
