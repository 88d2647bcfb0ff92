"""A step on a mesh of workers: the plan for the leaves' layouts, run by the mesh's runner, and
carrying on without workers that died mid-step.

`compute_on_mesh(mesh, order, key, leaves)` is what materialize calls: `key` is the structure key of
`plan.describe` (key[0] the leaves, key[1:] one entry per node of `order`), `leaves` the leaf nodes;
it gives every node of `order` whose slot the plan keeps its value.
"""
import time

from ..kernels import backend
from .distribute import build_dist_plan
from .leaf_layout import leaf_layouts
from .mesh import DistValue, Mesh, WorkerLost, current_mesh, set_mesh, split, unsliced
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
    for node in leaves:
        old = node.value
        if isinstance(old, DistValue) and old.runner is not runner:
            # a value an earlier mesh holds (e.g. a cached constant) comes home to be placed again
            node.value = old.host if old.host is not None else old.to_host()
    layouts = leaf_layouts(key, leaves, workers)
    plan = _plan(key, layouts, workers)
    t1 = time.perf_counter()
    STATS["plan_seconds"] += t1 - t0
    STATS["mesh_plan_seconds"] = STATS.get("mesh_plan_seconds", 0.0) + t1 - t0
    leaf_parts = []
    for node, layout in zip(leaves, layouts):
        if not isinstance(node.value, DistValue):
            # placed once: later steps find it on the workers (parameters are not sent again)
            host = node.value
            node.value = DistValue(layout, runner.place(split(layout, host, workers)), runner, host)
            runner.track(node.value)
        leaf_parts.append(node.value.parts)
    runner.on_lost = _recover
    kept = runner.run(plan, leaf_parts, (order, key, leaves))
    STATS["run_seconds"] += time.perf_counter() - t1
    for i, node in enumerate(order):
        slot = plan.node_slot[i]
        if slot in kept:
            value = DistValue(plan.layouts[slot], kept[slot], runner)
            if isinstance(node.value, DistValue):        # recomputed after a worker loss
                node.value.adopt(value)
                value = node.value
            runner.track(value)
            node.set_value(value)


_BY_ID = {}              # id(key) -> (key, layouts, backend, plan): the last plans, found without hashing
_BY_ID_LIMIT = 16


def _plan(key, layouts, workers):
    """The cached DistPlan of a step.  A replayed step hands over the very same structure key
    every time, so the plan is found by the key's identity first: hashing a key of a few hundred
    nodes costs ~0.2 ms a step."""
    hit = _BY_ID.get(id(key))
    name = backend.current()
    if hit is not None and hit[0] is key and hit[1] == layouts and hit[2] == name and hit[3].workers == workers:
        STATS["plans_reused"] += 1
        STATS["runs"] += 1
        return hit[3]
    plan = cached(("mesh", workers, name, key, layouts), lambda: _build(key, layouts, workers))
    if len(_BY_ID) >= _BY_ID_LIMIT:
        _BY_ID.pop(next(iter(_BY_ID)))
    _BY_ID[id(key)] = (key, layouts, name, plan)
    return plan


def _build(key, layouts, workers):
    """The generic plan (sliced leaves planned as replicated), then its update sharded (ZeRO-1)."""
    planning = unsliced(layouts)
    return shard_updates(build_dist_plan(key, planning, workers), layouts)


def _recover(runner, dead):
    """A read found dead workers: carry on without them, and run again, on the survivors, every
    step not known to have finished (pipelined steps keep what they need to be replayed; a step
    replayed although it had finished recomputes the same values from the same inputs)."""
    pending = [replay for _, replay in runner.log]
    replayed = {id(n) for order, _, _ in pending for n in order}
    _carry_on_without(current_mesh(), dead, replayed)
    for order, key, leaves in pending:
        while not compute_on_mesh(current_mesh(), order, key, leaves):
            pass


def _recovered(value, alive):
    try:
        return value.recover(alive)
    except Exception:          # its step never finished: it is replayed, or lost
        return None


def _carry_on_without(mesh, dead, replayed=frozenset()):
    """Workers died: keep going on the survivors.  Every finished value that lived on the mesh comes
    home from a surviving replica, a backup of its slice, or the host copy it was placed from; the
    values of unfinished steps are recomputed (see _recover)."""
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
        value = getattr(obj, "value", None) if type(obj) is Node else None
        if isinstance(value, DistValue) and value.runner is runner and value.parts is not None:
            host = _recovered(value, alive)
            if host is None:
                if id(obj) not in replayed:
                    obj.value, obj.error = None, RuntimeError("gtnumba: this value was lost with a dead worker")
            else:
                value.come_home(host)
                obj.value = backend.to_backend(host)
    new_runner = runner.without(dead)
    if hasattr(runner, "close"):
        runner.close()             # every value of the old mesh has come home or will be recomputed
    set_mesh(Mesh(new_runner.workers, new_runner))
