"""One level of a DistPlan on one worker, run by the in-process executor.

A worker's local steps of a level are the same kind of straight-line program as an in-process
step, so they are planned and run the same way (sched/plan.py, sched/executor.py): a structure
key over the worker's local shapes, a memory plan that reuses buffers by liveness, and generated
code from the second run.  Its leaves are the values the level reads (from the worker's store, or
made by this level's collectives); the values it keeps are those stored for later levels, for
peers and for the client.  Both runners run blocks, so a block's results are checked in-process
against the Dask ones.

A failing kernel is run again step by step from the level's inputs (still intact: the executor
never overwrites a value it was handed), so the error names the op and the local shapes.
"""
from ..kernels import backend
from ..layout import Shard
from ..ops.registry import OPS, Spec
from .executor import run_plan
from .mesh import Flat
from .plan import build_plan


def _local_shape(shape, layout, w):
    if isinstance(layout, Flat):
        return (layout.sizes[w],)
    if isinstance(layout, Shard):
        return shape[:layout.dim] + (layout.sizes[w],) + shape[layout.dim + 1:]
    return tuple(shape)


def local_specs(plan, slot, w):
    """Worker w's (shape, dtype) of each output of `slot`."""
    spec, lay = plan.specs[slot], plan.layouts[slot]
    specs = spec if isinstance(spec, tuple) else (spec,)
    lays = lay if isinstance(lay, tuple) else (lay,) * len(specs)
    return tuple(Spec(_local_shape(tuple(s.shape), l, w), s.dtype) for s, l in zip(specs, lays))


class Block:
    """The executor plan of `steps` (one level's LocalSteps) on worker w, reading the DistPlan
    slots `inputs` and keeping `outputs`."""
    __slots__ = ("inputs", "steps", "plan", "w", "backend")

    def __init__(self, dplan, steps, inputs, outputs, w, local_kernels):
        self.inputs, self.steps, self.w = tuple(inputs), steps, w
        index = {slot: i for i, slot in enumerate(self.inputs)}
        key = [tuple((local_specs(dplan, s, w), "ndarray") for s in self.inputs)]
        keep = set(outputs)
        for k, st in enumerate(steps):
            key.append((st.op, tuple(st.attrs[w].items()), tuple(index[i] for i in st.ins),
                        local_specs(dplan, st.out, w), st.out in keep))
            index[st.out] = len(self.inputs) + k
        self.backend = backend.current()
        self.plan = build_plan(tuple(key), self.backend, local_kernels)

    def run(self, env):
        """Adds the kept values to env ({DistPlan slot: value}, holding every input)."""
        values = run_plan(self.plan, [env[s] for s in self.inputs])
        first = len(self.inputs)
        for slot, value in values.items():
            env[self.steps[slot - first].out] = value


def _chunk(x, start, stop):
    return x.reshape(-1)[start:stop]


# steps the planner adds that are data movement inside a worker, not ops of the table
LOCAL_KERNELS = {"_chunk": _chunk}
KERNELS_RUN = [0]      # kernels this process ran for mesh steps (gt.debug.get_worker_stats)


def run_local_step(step, env, w):
    kernel = LOCAL_KERNELS.get(step.op) or OPS[step.op].kernels[backend.current()]
    env[step.out] = kernel(*[env[s] for s in step.ins], **step.attrs[w])


def described(step, env, w, exc):
    """The error of a failed local step, naming the op, the worker and the local input shapes."""
    shapes = [tuple(getattr(env.get(i), "shape", ())) for i in step.ins]
    return type(exc)(f"{step.op} on worker {w} (local input shapes {shapes}): {exc}")


def run_steps(holder, dplan, steps, outputs, w, env):
    """Run one level's `steps` on worker w as a Block (made once, kept on `holder.block`),
    adding the values of `outputs` to env.  A failure is run again step by step, so the error
    raised names the failing step (`described`)."""
    block = holder.block
    if block is None or block.w != w or block.backend != backend.current():
        made = {st.out for st in steps}
        inputs = sorted({i for st in steps for i in st.ins} - made)
        block = holder.block = Block(dplan, steps, inputs, [s for s in outputs if s in made], w, LOCAL_KERNELS)
    try:
        block.run(env)
    except Exception as exc:
        for step in steps:
            try:
                run_local_step(step, env, w)
            except Exception as step_exc:
                raise described(step, env, w, step_exc) from step_exc
        raise exc
    KERNELS_RUN[0] += len(steps)
