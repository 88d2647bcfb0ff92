"""Replay: a step that repeats a cached one is recognized while it is recorded, and run from the
cached plan without ordering, describing or planning it again; its backward() runs no gradient rule.

A *segment* is everything recorded between two materializations.  Its *trace* is a list of events:
    op event   (op, attrs_key, refs, specs, requires_grad, grad_mode): a pending node
    (None, "mark", ref)                       a node became (or stopped being) an autograd leaf
    (None, "bwd", root_ref, grad_ref, retain, ok)   backward() begins ...
    (None, "lg", leaf_ref, owner_alive, old_grad_ref)   ... reaches a leaf ...
    (None, "sg", leaf_ref, new_grad_ref)              ... and sets its owner's .grad
    (None, "end", released_positions, released_prev)  backward() ends
A ref names a node: an int >= 0 is the position of a node recorded in this segment; -(k+1) is the
k-th *external* node (one with a value, e.g. a parameter, data or a constant) in order of first
appearance.  Each external's signature (specs, value type, requires_grad, leaf) is checked when it
first appears, so matching events mean an identical graph.  While replaying, a cursor walks the
predicted trace: apply() compares its op, attrs and input refs with the event under the cursor and
builds the node from the event (no shape rule, no casting).  backward() checks the leaf events up
front and then builds every gradient node straight from the trace.  Any mismatch *diverges*: the
matched prefix becomes the start of a new trace and recording carries on normally, so the graph is
always exactly what normal recording would build.  At materialization a fully matched trace finds
its *variant* (which nodes are live decides the order and what is kept) and runs the cached plan.
Traces are chained by what followed them (a different last batch is a sibling trace).

A loss read before backward() splits a step: the backward runs in the next segment, through nodes
of the segment before.  While a live tensor of a segment awaits backward, the next segment keeps
that segment's node list, and the externals a backward meets there (root, leaves, saved values)
are named by their position in it (trace.prev_pos; the released ones by released_prev).  The
predecessor trace fixes what sits at each position, so a matched position is a matched node.
"""
import os
from sys import getrefcount

from ..graph import GRAD_MODE, PENDING, Node, lazy

STATS = {"replayed": 0, "diverged": 0, "recorded_nodes": 0, "replayed_nodes": 0, "grad_rules": 0,
         "replay_failed": 0}
_ENABLED = [os.environ.get("GTNUMBA_REPLAY", "1") != "0"]
_TRACES = {}          # (events, ext_sigs) -> Trace: one object per distinct step structure
_TRACE_LIMIT = 64
_VARIANT_LIMIT = 8


def set_enabled(flag):
    """Turn step replay on or off (off: every step is recorded and described from scratch)."""
    REC.realize()
    _ENABLED[0] = bool(flag)
    REC.reset(None)


def enabled():
    return _ENABLED[0]


def ext_sig(node):
    return (node.specs, type(node.value).__name__, node.requires_grad, node.leaf)


def _sig_matches(node, sigs, k):
    """ext_sig(node) == sigs[k], without making the tuple; equal specs are stored in the trace, so
    that later steps compare them by identity."""
    sig = sigs[k]
    if (type(node.value).__name__ != sig[1] or node.requires_grad != sig[2] or node.leaf != sig[3]
            or node.specs is not sig[0] and node.specs != sig[0]):
        return False
    if node.specs is not sig[0]:
        sigs[k] = (node.specs,) + sig[1:]
    return True


class Trace:
    __slots__ = ("events", "adicts", "ext_sigs", "consts", "variants", "successors", "ext_uses", "regions",
                 "prev_pos")

    def __init__(self, events, adicts, ext_sigs, consts, prev_pos):
        self.events, self.adicts, self.ext_sigs, self.consts = events, adicts, ext_sigs, consts
        self.prev_pos = prev_pos      # external -> its position in the segment before (see Recorder.end)
        self.variants, self.successors, self.regions = {}, [], {}
        uses = [0] * len(ext_sigs)
        for ev in events:
            if ev[0] is not None:
                for r in ev[2]:
                    if r < 0:
                        uses[-r - 1] += 1
        self.ext_uses = uses


class Region:
    """One backward() of a trace (its "bwd" event at index c), precomputed for replay: where it
    ends, the checks to make before building it (leaf events, and the rules' constants that first
    appear in it), the events of its gradient nodes and the externals they refer to."""
    __slots__ = ("end", "items", "ops", "first_pos", "sgs", "ngs", "released", "released_prev", "uses",
                 "ok")

    def __init__(self, trace, c):
        events = trace.events
        self.end = next(i for i in range(c + 1, len(events)) if events[i][0] is None and events[i][1] == "end")
        self.first_pos = sum(1 for ev in events[:c] if ev[0] is not None)
        known = 1 + max((-r - 1 for ev in events[:c + 1] for r in _refs_of(ev) if r is not None and r < 0),
                        default=-1)
        self.items, self.ops, self.sgs, self.ngs, self.uses, self.ok = [], [], [], [], {}, True
        for i in range(c + 1, self.end):
            ev = events[i]
            if ev[0] is not None:
                self.ops.append(ev)
                for r in ev[2]:
                    if r < 0:
                        self.uses[-r - 1] = self.uses.get(-r - 1, 0) + 1
                        if -r - 1 >= known:
                            self.items.append(("prev" if -r - 1 in trace.prev_pos else "const", -r - 1))
                            known = -r
            elif ev[1] == "lg":
                if ev[2] < 0 and -ev[2] - 1 >= known:
                    if -ev[2] - 1 not in trace.prev_pos:
                        self.ok = False
                    self.items.append(("prev", -ev[2] - 1))
                    known = -ev[2]
                self.items.append(("lg", ev))
                if ev[4] is not None and ev[4] < 0 and -ev[4] - 1 >= known:
                    known = -ev[4]
            elif ev[1] == "sg":
                self.sgs.append((ev[2], ev[3]))
            elif ev[1] == "ng":
                self.ngs.append((ev[2], ev[3]))
        self.released, self.released_prev = events[self.end][2], events[self.end][3]


def _below(prev_pos, n):
    return {k: p for k, p in prev_pos.items() if k < n}


def _refs_of(ev):
    if ev[0] is not None:
        return ev[2]
    kind = ev[1]
    return ((ev[2], ev[3]) if kind in ("bwd", "ng") else (ev[2], ev[4]) if kind == "lg" else () if kind == "end"
            else (ev[2],))


class Variant:
    """How a matched trace materializes for one set of live nodes: the plan's node order (trace
    positions), its leaves (external indices), the structure key and the plan built for it."""
    __slots__ = ("order_pos", "leaf_ext", "key", "plans", "retained")

    def __init__(self, order_pos, leaf_ext, key, retained):
        self.order_pos, self.leaf_ext, self.key, self.plans = order_pos, leaf_ext, key, {}
        self.retained = retained      # externals a node kept for a later backward still points at


class _Order:
    """A replayed step's plan order, by trace position (no list of every node is made: a run
    stores only its kept values back)."""
    __slots__ = ("nodes", "pos")

    def __init__(self, nodes, pos):
        self.nodes, self.pos = nodes, pos

    def __getitem__(self, i):
        return self.nodes[self.pos[i]]

    def __iter__(self):
        nodes = self.nodes
        return (nodes[p] for p in self.pos)

    def __len__(self):
        return len(self.pos)


class Recorder:
    def __init__(self):
        self.prev = None
        self.reset(None)

    def reset(self, prev):
        """Start a segment; `prev` is the trace of the segment before (its successor is predicted)."""
        self.prev = prev
        self.nodes, self.exts, self.ref = [], [], {}
        self.trace, self.cursor, self.events, self.sigs, self.consts = None, 0, None, None, None
        self.adicts = None
        self.region = None
        self.virtual = []     # (first position, Region) of each backward built virtually
        self.n_virtual = 0    # positions with no node (yet)
        self.live = ()
        # the nodes of the segment before, while a backward() through them may come (a loss read
        # before its backward): externals of a backward are named by their position there
        self.prev_nodes, self.prev_index, self.ext_prev = None, None, {}
        self.broken = not _ENABLED[0]
        if self.broken:
            return
        if prev is not None and prev.successors:
            self.trace = prev.successors[0]
        else:
            self.events, self.adicts, self.sigs, self.consts = [], [], [], {}

    # ---- refs ------------------------------------------------------------------------------
    def _add_ext(self, node, allowed=False):
        k = len(self.exts)
        self.exts.append(node)
        self.ref[id(node)] = -k - 1
        if self.events is not None:
            self.sigs.append(ext_sig(node))
            region = self.region
            if region is not None and self._prev_position(node) is not None:
                self.ext_prev[k] = self._prev_position(node)
            elif region is not None and not allowed:
                if node.op == "leaf" and not node.requires_grad and node.value is not None:
                    self.consts[k] = node      # a constant a gradient rule made: reused on replay
                else:
                    region[1] = False          # an unknown node inside backward: not replayable
        return -k - 1

    def _refs(self, inputs, allowed=False):
        get, out = self.ref.get, []
        for n in inputs:
            r = get(id(n))
            out.append(self._add_ext(n, allowed) if r is None else r)
        return tuple(out)

    def _new_ext_ok(self, node, k, trace):
        sigs = trace.ext_sigs
        if k >= len(sigs):
            return False
        # (a pending external, such as a lazy zero fill, matches only a trace that saw it pending:
        # a step that computes one in its plan is never kept as a variant)
        if not _sig_matches(node, sigs, k):
            return False
        p = trace.prev_pos.get(k)
        return p is None or self._prev_node(p) is node

    def _prev_position(self, node):
        if self.prev_nodes is None:
            return None
        if self.prev_index is None:
            self.prev_index = {id(n): p for p, n in enumerate(self.prev_nodes) if n is not None}
        return self.prev_index.get(id(node))

    def _prev_node(self, p):
        prev = self.prev_nodes
        return prev[p] if prev is not None and p < len(prev) else None

    # ---- recording -------------------------------------------------------------------------
    def on_node(self, node):
        """A pending node made by the normal (slow) path of apply()."""
        if self.broken:
            return
        if (self.trace is not None and not self._match_node(node)
                and not self._try_sibling(lambda: self._match_node(node))):
            self.diverge()
        if self.events is not None:
            self.events.append((node.op, node.attrs, self._refs(node.inputs), node.specs,
                                node.requires_grad, GRAD_MODE.enabled))
            self.adicts.append(dict(node.attrs))
            self._add_node(node)
            STATS["recorded_nodes"] += 1

    def _event(self, ev):
        self.events.append(ev)
        self.adicts.append(None)

    def _add_node(self, node):
        self.ref[id(node)] = len(self.nodes)
        self.nodes.append(node)

    def _match_node(self, node):
        events, c = self.trace.events, self.cursor
        if c >= len(events):
            return False
        ev = events[c]
        if (ev[0] != node.op or ev[1] != node.attrs or ev[3] != node.specs or ev[4] != node.requires_grad
                or ev[5] != GRAD_MODE.enabled or len(ev[2]) != len(node.inputs)):
            return False
        fresh = self._match_inputs(node.inputs, ev[2])
        if fresh is None:
            return False
        self._commit(fresh)
        self._add_node(node)
        self.cursor = c + 1
        return True

    def _match_inputs(self, nodes, refs):
        """New externals the inputs introduce, or None when they do not match the refs."""
        get, fresh = self.ref.get, []
        for n, r in zip(nodes, refs):
            got = get(id(n))
            if got is None:
                k = len(self.exts) + len(fresh)
                if r != -k - 1 or not self._new_ext_ok(n, k, self.trace):
                    if n in fresh and r == -(len(self.exts) + fresh.index(n)) - 1:
                        continue
                    return None
                fresh.append(n)
            elif got != r:
                return None
        return fresh

    def _commit(self, fresh):
        for n in fresh:
            self.ref[id(n)] = -len(self.exts) - 1
            self.exts.append(n)

    def match_op(self, op, inputs, attrs, scalar_node):
        """The fast path of apply(): the node the event under the cursor describes, or None.
        `scalar_node(x, inputs)` gives the constant node of a non-Tensor input (None: no fast path)."""
        trace, c = self.trace, self.cursor
        try:
            ev = trace.events[c]
        except IndexError:
            return None
        refs = ev[2]
        if ev[0] != op or len(refs) != len(inputs) or ev[5] is not GRAD_MODE.enabled or trace.adicts[c] != attrs:
            return None
        tensor, ref = TENSOR[0], self.ref
        get = ref.get
        nodes = tuple([x._node if x.__class__ is tensor else scalar_node(x, inputs) for x in inputs])
        fresh = None
        for n, r in zip(nodes, refs):
            if get(id(n)) != r:
                # the usual new input: the next external the trace names (a parameter, the data)
                k = len(self.exts) + (0 if fresh is None else len(fresh))
                if r == -k - 1 and n is not None and get(id(n)) is None and (fresh is None or n not in fresh) \
                        and self._new_ext_ok(n, k, trace):
                    fresh = [n] if fresh is None else fresh + [n]
                    continue
                if None in nodes:
                    return None
                fresh = self._match_inputs(nodes, refs)
                if fresh is None:
                    return None
                break
        if fresh is not None:
            self._commit(fresh)
        node = Node(op, ev[1], nodes, ev[3], ev[4])
        nodes = self.nodes
        ref[id(node)] = len(nodes)
        nodes.append(node)
        self.cursor = c + 1
        return node

    def diverge(self):
        """The step stopped matching its trace: carry on recording with the matched prefix."""
        self.realize()
        trace, n_ext = self.trace, len(self.exts)
        self.trace = None
        self.events = list(trace.events[:self.cursor])
        self.adicts = list(trace.adicts[:self.cursor])
        self.sigs = list(trace.ext_sigs[:n_ext])
        self.consts = {k: v for k, v in trace.consts.items() if k < n_ext}
        self.ext_prev = {k: p for k, p in trace.prev_pos.items() if k < n_ext}
        STATS["diverged"] += 1

    def _try_sibling(self, test):
        """On a mismatch, another trace that followed the same predecessor may match instead."""
        if self.prev is None:
            return False
        cur, c = self.trace, self.cursor
        for alt in self.prev.successors:
            if alt is cur or len(alt.events) <= c or alt.events[:c] != cur.events[:c]:
                continue
            n = len(self.exts)
            if alt.ext_sigs[:n] != cur.ext_sigs[:n] or _below(alt.prev_pos, n) != _below(cur.prev_pos, n):
                continue
            self.trace = alt
            if test():
                return True
            self.trace = cur
        return False

    def mark(self, node):
        """`node` became, or stopped being, an autograd leaf (requires_grad setter, in-place on a leaf)."""
        if self.broken:
            return
        if self.trace is not None:
            ev = self.trace.events[self.cursor] if self.cursor < len(self.trace.events) else None
            r = self.ref.get(id(node))
            if ev is not None and ev[0] is None and ev[1] == "mark" and r is not None and ev[2] == r:
                self.cursor += 1
                return
            self.diverge()
        self._event((None, "mark", self._refs((node,))[0]))

    # ---- backward ----------------------------------------------------------------------------
    def backward_replay(self, root, grad_node, retain, wrap):
        """Set the gradients of a recognized step straight from its trace: no gradient rule runs
        and no node is made but the new .grad ones (the others stay *virtual*: the plan computes
        them; `realize` makes them if the step diverges later).  False when the step does not
        match: backward() then records normally."""
        if self.broken or self.trace is None:
            return False
        if self._bwd_fresh(root, grad_node, retain) is None:
            if not self._try_sibling(lambda: self._bwd_fresh(root, grad_node, retain) is not None):
                self.diverge()
                return False
        trace, c = self.trace, self.cursor
        region = trace.regions.get(c)
        if region is None:
            region = trace.regions[c] = Region(trace, c)
        fresh = self._bwd_fresh(root, grad_node, retain)
        if not region.ok or not self._check_leaves(region, fresh) or not self._check_held(region, root):
            self.diverge()
            return False
        self._commit(fresh)
        self._build(region, wrap)
        self.cursor = region.end + 1
        self.prev_nodes = self.prev_index = None      # only a backward looks back
        return True

    def _bwd_fresh(self, root, grad_node, retain):
        """The new externals (root, gradient) when the event under the cursor is this backward()."""
        events, c = self.trace.events, self.cursor
        if c >= len(events):
            return None
        ev = events[c]
        if ev[0] is not None or ev[1] != "bwd" or not ev[5] or ev[4] != retain or root.released:
            return None
        fresh = []
        for node, want in ((root, ev[2]), (grad_node, ev[3])):
            r = self.ref.get(id(node))
            if r is None and node not in fresh:
                k = len(self.exts) + len(fresh)
                if want != -k - 1 or not self._new_ext_ok(node, k, self.trace):
                    return None
                fresh.append(node)
            elif r is not None and r != want:
                return None
        return fresh

    def _check_leaves(self, region, fresh):
        """Every leaf backward reaches is in the state it was in when the trace was recorded, and
        every new external is a rule's constant or an old gradient: collects them into `fresh`."""
        trace, nodes, exts, get = self.trace, self.nodes, self.exts, self.ref.get
        sigs, prev, prev_pos, n_exts = trace.ext_sigs, self.prev_nodes or (), trace.prev_pos, len(exts)
        n_prev = len(prev)
        seen = {id(n) for n in fresh}           # (`in fresh` scans the list: ~60 items a step here)
        for kind, item in region.items:
            if kind == "prev":          # (the most frequent kind when the loss was read before backward)
                p = prev_pos.get(item, n_prev)
                node = prev[p] if p < n_prev else None
                i = id(node)
                if (node is None or item != n_exts + len(fresh) or get(i) is not None or i in seen
                        or not _sig_matches(node, sigs, item)):
                    return False
                fresh.append(node)
                seen.add(i)
                continue
            if kind == "const":
                const = trace.consts.get(item)
                if const is None or item != n_exts + len(fresh) or not _sig_matches(const, sigs, item):
                    return False
                fresh.append(const)
                seen.add(id(const))
                continue
            ev = item
            leaf = nodes[ev[2]] if ev[2] >= 0 else (exts[-ev[2] - 1] if -ev[2] - 1 < n_exts
                                                      else fresh[-ev[2] - 1 - n_exts])
            owner = leaf.owner() if leaf.owner is not None else None
            if (owner is not None) != ev[3]:
                return False
            old = owner.grad if owner is not None else None
            if (old is None) != (ev[4] is None):
                return False
            if old is not None:
                r = get(id(old._node))
                if r is None:
                    k = n_exts + len(fresh)
                    if id(old._node) in seen or ev[4] != -k - 1 or not self._new_ext_ok(old._node, k, trace):
                        return False
                    fresh.append(old._node)
                    seen.add(id(old._node))
                elif r != ev[4]:
                    return False
        return True

    def _check_held(self, region, root):
        """The non-leaf results the user holds (GT gives each a .grad) are those of the trace, and
        none holds a gradient from an earlier backward."""
        nodes, held = self.nodes, TENSOR[0]._NONLEAF_GRADS
        now = {p for p in region.released if nodes[p] is not root and nodes[p].n_tensors > 0
               and len(nodes[p].specs) == 1}
        # a held result of the segment before would need its .grad too: such a step records
        before = [self.prev_nodes[p] for p in region.released_prev]
        if any(n is not root and n.n_tensors > 0 and len(n.specs) == 1 for n in before):
            return False
        return now == {p for p, _ in region.ngs} and not any(nodes[p] in held for p in now)

    def _build(self, region, wrap):
        """Only the nodes that become a .grad are made (without inputs until realized)."""
        nodes, exts = self.nodes, self.exts
        p0 = len(nodes)
        nodes.extend([None] * len(region.ops))
        self.virtual.append((p0, region))
        for leaf_ref, pos in region.sgs:
            leaf = nodes[leaf_ref] if leaf_ref >= 0 else exts[-leaf_ref - 1]
            # the .grad setter's checks hold by construction (the trace's gradient has the leaf's spec)
            leaf.owner()._grad_value = wrap(self._grad_node(region, p0, pos))
        for held, pos in region.ngs:
            TENSOR[0]._NONLEAF_GRADS[nodes[held]] = wrap(self._grad_node(region, p0, pos))
        STATS["replayed_nodes"] += len(region.sgs)
        self.n_virtual += nodes[p0:].count(None)
        for p in region.released:
            nodes[p].released = True
        for p in region.released_prev:
            node = self.prev_nodes[p]
            node.released = True
            if node.value is not None:
                node.inputs = ()

    def _grad_node(self, region, p0, pos):
        """The node at trace position pos of a region built from p0, made (without inputs) if virtual."""
        node = self.nodes[pos]
        if node is None:
            ev = region.ops[pos - p0]
            node = self.nodes[pos] = Node(ev[0], ev[1], (), ev[3], ev[4])
            self.ref[id(node)] = pos
        return node

    def realize(self):
        """Make the virtual gradient nodes real, in trace order, before anything walks the graph."""
        if not self.virtual:
            return
        nodes, exts, ref = self.nodes, self.exts, self.ref
        for p0, region in self.virtual:
            for j, ev in enumerate(region.ops):
                inputs = tuple([nodes[r] if r >= 0 else exts[-r - 1] for r in ev[2]])
                node = nodes[p0 + j]
                if node is None:
                    node = nodes[p0 + j] = Node(ev[0], ev[1], inputs, ev[3], ev[4])
                    ref[id(node)] = p0 + j
                else:
                    node.inputs = inputs
        self.virtual, self.n_virtual = [], 0

    def backward_begin(self, root, grad_node, retain):
        """Normal backward starts (record mode): returns a token for backward_end."""
        if self.broken or self.events is None:
            return None
        refs = self._refs((root, grad_node), allowed=True)
        p = self._prev_position(root) if refs[0] < 0 else None
        if p is not None:
            self.ext_prev[-refs[0] - 1] = p
        self._event((None, "bwd", refs[0], refs[1], retain, True))
        self.region = [len(self.events) - 1, refs[0] >= 0 or p is not None]
        return self.region

    def no_replay(self):
        """The backward being recorded did what its trace cannot redo (a GT non-leaf .grad, a
        backward signal's layout): a later step with this structure records its backward again."""
        if self.region is not None:
            self.region[1] = False

    def nonleaf_grad(self, node, grad_node):
        """GT gives `node` (a non-leaf result the user holds) the gradient `grad_node` of the
        backward being recorded: a replay sets it again, unless the backward keeps its graph."""
        region = self.region
        if region is None:
            return
        r, g = self.ref.get(id(node)), self.ref.get(id(grad_node))
        if r is None or r < 0 or g is None or g < 0 or self.events[region[0]][4]:
            region[1] = False
            return
        self._event((None, "ng", r, g))

    def leaf_before(self, leaf):
        if self.region is None:
            return
        owner = leaf.owner() if leaf.owner is not None else None
        old = owner.grad if owner is not None else None
        lref = self._refs((leaf,), allowed=True)[0]
        oref = self._refs((old._node,), allowed=True)[0] if old is not None else None
        self._event((None, "lg", lref, owner is not None, oref))

    def leaf_after(self, leaf):
        if self.region is None:
            return
        owner = leaf.owner() if leaf.owner is not None else None
        if owner is None:
            return
        r = self.ref.get(id(owner.grad._node)) if owner.grad is not None else None
        if r is None or r < 0:
            self.region[1] = False
            return
        self._event((None, "sg", self._refs((leaf,), allowed=True)[0], r))

    def backward_end(self, token, walked, retain):
        if token is None or token is not self.region:
            return
        self.region = None
        get, ok, released, released_prev = self.ref.get, token[1], [], []
        for n in walked:
            if not n.leaf:
                r, p = get(id(n), -1), None
                if r < 0:
                    p = self._prev_position(n)
                    ok = ok and p is not None
                (released if r >= 0 else released_prev).append(r if r >= 0 else p)
        i = token[0]
        self.events[i] = self.events[i][:5] + (ok,)
        self._event((None, "end", () if retain else tuple(released), () if retain else tuple(released_prev)))
        self.prev_nodes = self.prev_index = None

    # ---- materialization -------------------------------------------------------------------
    def live_sig(self, extra):
        """Which of the segment's nodes are live (and asked for): this decides the plan's order."""
        if self.broken:
            return None
        live = self.live = tuple([i for i, n in enumerate(self.nodes) if n is not None and n.n_tensors > 0])
        get = self.ref.get
        return live, tuple([get(id(n), None) for n in extra if n.value is None])

    def replay_variant(self, sig):
        """(order, leaves, variant) when the whole step matched a cached trace and variant."""
        trace = self.trace
        if trace is None or self.cursor != len(trace.events):
            if trace is not None:
                self.diverge()
            return None
        mine = len(self.nodes) - self.n_virtual
        if not sig[0] and not sig[1] or (PENDING.upper_bound() != mine and self._foreign_roots()):
            return None
        variant = trace.variants.get(sig)
        if variant is None:
            return None
        exts = self.exts
        return _Order(self.nodes, variant.order_pos), [exts[k] for k in variant.leaf_ext], variant

    def _foreign_roots(self):
        """Is a node recorded outside this segment waiting to be computed (the normal path would
        compute it too)?  Pending nodes nothing holds (the inputs of a failed read, not yet
        garbage-collected) do not count."""
        ref = self.ref.get          # this segment's nodes have refs >= 0 (its externals < 0)
        return any(n.n_tensors > 0 and n.value is None and n.error is None and ref(id(n), -1) < 0 and not lazy(n)
                   for n in PENDING)

    def finish(self, sig, order, leaves, key):
        """A segment was described and computed normally: keep its trace and variant for replay.
        Returns the variant (or None when the step cannot be replayed)."""
        if self.broken:
            return None
        get = self.ref.get
        order_pos = tuple(get(id(n), -1) for n in order)
        leaf_ext = tuple(-get(id(n), 0) - 1 for n in leaves)
        if min(order_pos, default=0) < 0 or min(leaf_ext, default=0) < 0:
            return None
        trace = self.trace if self.trace is not None else self._intern()
        self.trace = trace
        variant = trace.variants.get(sig)
        if variant is None:
            if len(trace.variants) >= _VARIANT_LIMIT:       # the oldest goes: a new one may repeat
                trace.variants.pop(next(iter(trace.variants)))
            # after the run only nodes kept for a later backward still hold their inputs
            retained = frozenset(-get(id(i)) - 1 for n in order if n.value is not None
                                 for i in n.inputs if get(id(i), 0) < 0)
            variant = trace.variants[sig] = Variant(order_pos, leaf_ext, key, retained)
        return variant

    def donatable(self, variant, leaves):
        """Leaf slots whose values this step may overwrite: their node dies with the step.  No
        tensor wraps it, no node kept for a later backward points at it, and nothing outside
        this segment refers to it: its references are exactly the segment's input edges to it
        (trace.ext_uses) plus `exts`, `leaves`, the loop variable and getrefcount's argument."""
        uses, retained, leaf_ext, out = self.trace.ext_uses, variant.retained, variant.leaf_ext, set()
        virtual = [region.uses for _, region in self.virtual]     # edges of nodes not made
        for slot in range(len(leaves)):
            node, k = leaves[slot], leaf_ext[slot]
            if node.n_tensors or k in retained:
                continue
            if getrefcount(node) == uses[k] + 4 - sum([u.get(k, 0) for u in virtual]):
                out.add(slot)
        return out

    def _intern(self):
        events, sigs = self.events, self.sigs
        tkey = (tuple(events), tuple(sigs), tuple(sorted(self.ext_prev.items())))
        trace = _TRACES.get(tkey)
        if trace is None:
            if len(_TRACES) >= _TRACE_LIMIT:
                _TRACES.pop(next(iter(_TRACES)))
            trace = _TRACES[tkey] = Trace(list(events), list(self.adicts), list(sigs), dict(self.consts),
                                          dict(self.ext_prev))
        else:
            # the rules' constants of this recording: an older one may no longer fit its signature
            # (a run on a mesh made its value a DistValue)
            trace.consts = dict(self.consts)
        self.events = self.adicts = None
        return trace

    def end(self, computed):
        """The segment ends (a materialization ran): link its trace after the one before."""
        trace = self.trace if computed and self.events is None else None
        prev = self.prev
        if trace is not None and prev is not None:
            succ = prev.successors
            if succ and succ[0] is trace:
                pass
            else:
                if trace in succ:
                    succ.remove(trace)
                succ.insert(0, trace)
                del succ[4:]
        keep = self._awaiting_backward() if trace is not None else None
        self.reset(trace)
        self.prev_nodes = keep

    def _awaiting_backward(self):
        """The segment's nodes when a live tensor of it may still be backward()-ed (a loss read
        before its backward): the next segment names that graph's nodes by position."""
        nodes = self.nodes
        for i in self.live:
            n = nodes[i]
            if n.requires_grad and not n.leaf and not n.released:
                return nodes
        return None


REC = Recorder()
TENSOR = [None]       # the Tensor class (set by gtnumba._tensor, which imports this module)
