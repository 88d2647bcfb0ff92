"""A step on a mesh of workers: the plan for the leaves' layouts, run by the mesh's runner, and
carrying on without workers that died mid-step.

`compute_on_mesh(mesh, order, key, leaves)` is what materialize calls: `key` is the structure key of
`plan.describe` (key[0] the leaves, key[1:] one entry per node of `order`), `leaves` the leaf nodes;
it gives every node of `order` whose slot the plan keeps its value.
"""
import time

from ..kernels import backend
from .distribute import build_dist_plan
from .leaf_layout import leaf_layout
from ..layout import REPLICATE
from .mesh import DistValue, Flat, Mesh, WorkerLost, set_mesh, split
from .zero1 import shard_updates
from .plan_cache import STATS, cached


def compute_on_mesh(mesh, order, key, leaves):
    """Run the step on the mesh.  False when workers died meanwhile: the survivors are the mesh
    now and the caller must describe and plan the step again (leaves came home to the host)."""
    try:
        _run_on_mesh(mesh, order, key, leaves)
    except WorkerLost as lost:
        _carry_on_without(mesh, lost.dead)
        return False
    return True


def _run_on_mesh(mesh, order, key, leaves):
    workers, runner = mesh.workers, mesh.runner
    t0 = time.perf_counter()
    layouts = tuple(leaf_layout(n, workers) for n in leaves)
    plan = cached(("mesh", workers, backend.current(), key, layouts), lambda: _build(key, layouts, workers))
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


def _build(key, layouts, workers):
    """The generic plan (sliced leaves planned as replicated), then its update sharded (ZeRO-1)."""
    planning = tuple(REPLICATE if isinstance(l, Flat) else l for l in layouts)
    return shard_updates(build_dist_plan(key, planning, workers), layouts)


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
