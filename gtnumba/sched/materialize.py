"""Materialization: every live pending tensor is computed in one plan."""
import time

from ..graph import PENDING
from ..kernels import backend
from .distribute import build_dist_plan
from .executor import run_plan
from .mesh import DistValue, Mesh, WorkerLost, current_mesh, leaf_layout, set_mesh, split
from .plan import build_plan, describe, pending_order

_CACHE = {}
_CACHE_LIMIT = 256
# counters and seconds spent, for tests and benchmarks: planning (ordering the pending graph,
# its structure key, building a plan on a cache miss) and running (kernels, or Dask round trips)
STATS = {"plans_built": 0, "plans_reused": 0, "runs": 0, "plan_seconds": 0.0, "run_seconds": 0.0}


def materialize(extra=()):
    """Compute every pending node that a live tensor (or `extra`) can reach.

    If the joint plan fails (bad data, such as a label out of range), each root is computed on
    its own: the failing ones keep their error, to raise when read, and the rest still compute.
    """
    roots = [n for n in list(PENDING) if n.value is None and n.n_tensors > 0 and n.error is None]
    roots += [n for n in extra if n.value is None and n.error is None]
    if not roots:
        return
    try:
        _compute(roots)
    except Exception as exc:
        if len(roots) == 1:
            _fail(roots[0], exc)
            raise
        _compute_each(roots, extra)


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


def _cached(cache_key, build):
    plan = _CACHE.get(cache_key)
    if plan is None:
        plan = build()
        STATS["plans_built"] += 1
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[cache_key] = plan
    else:
        STATS["plans_reused"] += 1
    STATS["runs"] += 1
    return plan


def _compute(roots):
    t0 = time.perf_counter()
    order = pending_order(roots)
    key, leaves = describe(order)
    STATS["plan_seconds"] += time.perf_counter() - t0
    mesh = current_mesh()
    if mesh is not None:
        try:
            _compute_on_mesh(mesh, order, key, leaves)
        except WorkerLost as lost:
            _carry_on_without(mesh, lost.dead)
            return _compute(roots)
    else:
        name = backend.current()
        t0 = time.perf_counter()
        plan = _cached((name, key), lambda: build_plan(key, name))
        t1 = time.perf_counter()
        values = run_plan(plan, [_local(n.value) for n in leaves])
        STATS["plan_seconds"] += t1 - t0
        STATS["run_seconds"] += time.perf_counter() - t1
        first = plan.n_leaves
        for slot, value in values.items():
            order[slot - first].set_value(value)
    for node in order:
        PENDING.discard(node)


def _local(value):
    """A value held on a mesh that has since been shut down comes home."""
    return backend.to_backend(value.to_host()) if isinstance(value, DistValue) else value


def _compute_on_mesh(mesh, order, key, leaves):
    workers, runner = mesh.workers, mesh.runner
    t0 = time.perf_counter()
    layouts = tuple(leaf_layout(n, workers) for n in leaves)
    plan = _cached(("mesh", workers, backend.current(), key, layouts),
                   lambda: build_dist_plan(key, layouts, workers))
    t1 = time.perf_counter()
    STATS["plan_seconds"] += t1 - t0
    leaf_parts = []
    for node, layout in zip(leaves, layouts):
        if not isinstance(node.value, DistValue):
            # placed once: later steps find it on the workers (parameters are not sent again)
            host = node.value
            node.value = DistValue(layout, runner.scatter(split(layout, host, workers)), runner, host)
        leaf_parts.append(node.value.parts)
    kept = runner.run(plan, leaf_parts)
    STATS["run_seconds"] += time.perf_counter() - t1
    for i, node in enumerate(order):
        slot = plan.node_slot[i]
        if slot in kept:
            node.set_value(DistValue(plan.layouts[slot], kept[slot], runner))


def _carry_on_without(mesh, dead):
    """Workers died mid-step: keep going on the survivors.  Every value that lived on the mesh
    comes back to the host from a surviving replica (parameters, optimizer state) or from the host
    copy it was placed from (data); the step is then planned again for the smaller mesh."""
    import gc
    import warnings
    from ..graph import Node
    runner = mesh.runner
    alive = [i for i, a in enumerate(runner.addresses) if a not in dead]
    if not alive:
        set_mesh(None)
        raise RuntimeError(f"gtnumba: every worker died ({', '.join(dead)}); nothing to carry on with")
    warnings.warn(f"gtnumba: lost worker(s) {', '.join(dead)}; continuing on {len(alive)}", RuntimeWarning)
    for obj in gc.get_objects():
        if type(obj) is Node and isinstance(obj.value, DistValue) and obj.value.runner is runner:
            host = obj.value.recover(alive)
            if host is None:
                obj.value, obj.error = None, RuntimeError("gtnumba: this value was lost with a dead worker")
            else:
                obj.value = backend.to_backend(host)
    new_runner = runner.without(dead)
    set_mesh(Mesh(new_runner.workers, new_runner))
