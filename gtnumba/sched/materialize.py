"""Materialization: every live pending tensor is computed in one plan.

A step the recorder recognized (sched/replay.py) skips ordering, describing and planning: its
cached variant names the nodes, leaves, structure key and plan.  Everything else is ordered and
described here, and its trace is kept for the next step.
"""
import time

from ..graph import PENDING, lazy
from ..kernels import backend
from .executor import run_plan
from .mesh import DistValue, current_mesh
from .mesh_compute import compute_on_mesh
from .plan import build_plan, describe, pending_order
from .plan_cache import STATS, cached
from .replay import REC
from .replay import STATS as REPLAY_STATS


def materialize(extra=()):
    """Compute every pending node that a live tensor (or `extra`) can reach.

    If the joint plan fails (bad data, such as a label out of range), each root is computed on
    its own: the failing ones keep their error, to raise when read, and the rest still compute.
    """
    sig = REC.live_sig(extra)
    hit = REC.replay_variant(sig)
    if hit is not None:
        try:
            if _execute(hit[0], hit[2].key, hit[1], hit[2]):
                REPLAY_STATS["replayed"] += 1
                REC.end(True)
                return
        except Exception:
            REPLAY_STATS["replay_failed"] += 1   # computed again below, root by root where it fails
    REC.realize()     # the normal path walks the graph: virtual gradient nodes become real
    roots = [n for n in list(PENDING) if n.value is None and n.n_tensors > 0 and n.error is None and not lazy(n)]
    roots += [n for n in extra if n.value is None and n.error is None]
    if not roots:
        if hit is not None:
            REC.end(False)
        return
    computed = False
    try:
        order, key, leaves = _compute(roots)
        computed = REC.finish(sig, order, leaves, key) is not None
    except Exception as exc:
        if len(roots) == 1:
            _fail(roots[0], exc)
            raise
        _compute_each(roots, extra)
    finally:
        REC.end(computed)


def _compute_each(roots, extra):
    wanted = {id(n) for n in extra}
    first = None
    for root in roots:
        if root.value is not None:
            continue
        try:
            _compute([root])
        except Exception as exc:
            _fail(root, exc)
            if id(root) in wanted and first is None:
                first = exc
    if first is not None:
        raise first


def _fail(node, exc):
    node.error = exc
    PENDING.discard(node)


def _compute(roots):
    t0 = time.perf_counter()
    order = pending_order(roots)
    key, leaves = describe(order)
    STATS["plan_seconds"] += time.perf_counter() - t0
    if not _execute(order, key, leaves, None):
        return _compute(roots)
    return order, key, leaves


def _execute(order, key, leaves, variant):
    """Run one step: on the mesh, or with the in-process executor.  False when mesh workers died
    (the caller describes the step again)."""
    mesh = current_mesh()
    if mesh is not None:
        handed = [n if n is not None else _Virtual() for n in order] if variant is not None else order
        if not compute_on_mesh(mesh, handed, key, leaves):
            return False
    else:
        name = backend.current()
        t0 = time.perf_counter()
        plan = variant.plans.get(name) if variant is not None else None
        if plan is None:
            plan = cached((name, key), lambda: build_plan(key, name))
            if variant is not None:
                variant.plans[name] = plan
        else:
            STATS["plans_reused"] += 1
            STATS["runs"] += 1
        t1 = time.perf_counter()
        donate = REC.donatable(variant, leaves) if variant is not None and plan.donates else ()
        values = run_plan(plan, [n.value if type(n.value) is not DistValue else _local(n.value) for n in leaves],
                          donate)
        STATS["plan_seconds"] += t1 - t0
        STATS["run_seconds"] += time.perf_counter() - t1
        first = plan.n_leaves
        if variant is not None:
            # a replayed step (order is its _Order): the nodes not kept die with the segment (leaving
            # PENDING then); one pass over the kept ones, by trace position
            nodes, pos, discard = order.nodes, order.pos, PENDING.discard
            for slot, value in values.items():
                node = nodes[pos[slot - first]]
                node.set_value(value)
                discard(node)
            return True
        for slot, value in values.items():
            order[slot - first].set_value(value)
    for node in order:
        if node is not None:
            PENDING.discard(node)
    return True


class _Virtual:
    """Stands in, for the mesh runner, for a gradient node a replayed step never made: its value
    is not kept (nothing can reach it), so set_value is never called on it."""
    __slots__ = ()

    def set_value(self, value):
        pass


def _local(value):
    """A value held on a mesh that has since been shut down comes home."""
    return backend.to_backend(value.to_host()) if isinstance(value, DistValue) else value
