"""The backward pass: walk the requires-grad graph from a root and record gradient nodes.

Gradient rules live in the op table and are written with Tensor methods; this module only
orders the walk, undoes broadcasting (sum to each input's shape) in one place, accumulates
gradients with `+`, and frees the graph it walked.  It never computes a value itself.
"""
from ..graph import GRAD_MODE
from ..ops.registry import OPS
from ..sched.replay import REC, STATS


class GradContext:
    """What a gradient rule sees: inputs `x`, output(s) `out`, output gradient(s) `g`."""
    __slots__ = ("x", "out", "g", "attrs", "needs", "F")

    def __init__(self, x, out, g, attrs, needs, F):
        self.x, self.out, self.g, self.attrs, self.needs, self.F = x, out, g, attrs, needs, F


def _grad_order(root):
    """Nodes that need a gradient, inputs before users."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        if node.released:
            raise RuntimeError(
                "backward: trying to backward through a graph a second time (its intermediate "
                "values were freed by the first backward); pass retain_graph=True to the first call")
        seen.add(id(node))
        stack.append((node, True))
        if not node.leaf:
            stack.extend((i, False) for i in node.inputs if i.requires_grad and id(i) not in seen)
    return order


def _accumulate(grads, key, g, slot=None, n_slots=None):
    if slot is None:
        grads[key] = g if key not in grads else grads[key] + g
        return
    parts = grads.setdefault(key, [None] * n_slots)
    parts[slot] = g if parts[slot] is None else parts[slot] + g


def backward(root, root_grad, api, retain_graph=False):
    """Record the gradient graph of `root` (a Node); `api` supplies Tensor wrapping and ops.
    A step the recorder recognized builds its gradient graph from the cached trace instead."""
    if REC.backward_replay(root, root_grad._node, retain_graph, api.wrap):
        return
    order = _grad_order(root)
    token = REC.backward_begin(root, root_grad._node, retain_graph)
    grads = {id(root): root_grad}
    saved = GRAD_MODE.enabled
    GRAD_MODE.enabled = False
    try:
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if not node.leaf and node is not root:
                g = api.nonleaf_grad(node, g)     # GT: held non-leaf tensors get .grad too
            if node.leaf:
                REC.leaf_before(node)
                api.accumulate_leaf_grad(node, g)
                REC.leaf_after(node)
            elif node.op == "select":
                parent = node.inputs[0]
                _accumulate(grads, id(parent), g, dict(node.attrs)["index"], len(parent.specs))
            else:
                _apply_rule(node, g, grads, api)
    finally:
        GRAD_MODE.enabled = saved
    REC.backward_end(token, order, retain_graph)
    if not retain_graph:
        for node in order:
            if not node.leaf:
                node.released = True
                if node.value is not None:
                    node.inputs = ()


def _apply_rule(node, g, grads, api):
    STATS["grad_rules"] += 1
    row = OPS[node.op]
    needs = tuple(i.requires_grad for i in node.inputs)
    multi = len(node.specs) > 1
    ctx = GradContext(x=tuple(api.wrap(i) for i in node.inputs),
                      out=api.outputs(node) if multi else api.wrap(node),
                      g=tuple(g) if multi else g, attrs=dict(node.attrs), needs=needs, F=api)
    in_grads = row.grad(ctx)
    assert len(in_grads) == len(node.inputs), f"{node.op}: gradient rule returned {len(in_grads)} grads"
    for inp, need, gi in zip(node.inputs, needs, in_grads):
        if need and gi is not None:
            _accumulate(grads, id(inp), gi.sum_to(inp.shape))
