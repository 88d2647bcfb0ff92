"""A cached plan replayed as one CUDA graph (real GPU only; GTNUMBA_CUDA_GRAPHS=0 turns it off).

Once every step of a plan is bound (gtnumba.kernels.cuda.bound) and the plan has run WARM_RUNS
times, its next run captures the bound launches on the backend's stream into a CUDA graph
(relaxed capture mode: pool allocations may still happen) and every later run is:

    copy each leaf value into the graph's static input buffer   (one device-to-device copy each)
    launch the graph                                            (one driver call for all kernels)
    copy each kept value out of its static buffer               (one copy each, into a new array)

A graph reads and writes fixed addresses, hence the copies: the user may hold the previous
step's tensors, which must not change.  The buffers of every step (temporaries too) belong to
the graph for its lifetime.  When the lead's memory planner assigns leaf and output buffers per
plan (parameters updated in place), the copies go: the graph then reads and writes them directly.
If capture fails (a kernel that cannot be captured), the plan runs its bound steps, as before.
"""
import os

from . import memory, runtime

WARM_RUNS = 2


def enabled():
    return not runtime.SIMULATOR and os.environ.get("GTNUMBA_CUDA_GRAPHS", "1").strip() != "0"


def runner(plan):
    """The plan's graph runner once it can be captured, else None (run the bound steps)."""
    if not enabled():
        return None
    graph = plan.__dict__.get("_cuda_graph")
    if graph is None:
        plan._cuda_runs = plan.__dict__.get("_cuda_runs", 0) + 1
        steps = plan.__dict__.get("_backend_steps")
        if plan._cuda_runs <= WARM_RUNS or not steps or not all(getattr(s, "bound", None) for s in steps):
            return None
        graph = plan._cuda_graph = GraphPlan(plan, steps)
    return graph if graph.ok else None


class _Keep:
    """Holds every buffer allocated while capturing (the graph reads and writes them)."""

    def __init__(self):
        self.buffers = []

    def alloc(self, array):
        self.buffers.append(array)

    def launch(self, *args):
        pass

    def call(self, *args):
        pass

    def unbindable(self, why):
        raise RuntimeError(f"cannot capture a CUDA graph: {why}")


def _driver():
    from cuda.bindings import driver
    return driver


def _ok(result, what):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA graph: {what} failed with error {int(err)}")
    return rest[0] if len(rest) == 1 else rest


def _handle():
    h = runtime.stream().handle
    return getattr(h, "value", h)


class GraphPlan:
    def __init__(self, plan, steps):
        self.plan, self.steps = plan, steps
        self.ok, self.exec = True, None
        self.static_in, self.static_out, self.keep = None, None, None

    def _run_steps(self, leaves):
        plan = self.plan
        slots = list(leaves) + [None] * (plan.n_slots - plan.n_leaves)
        for step, kernel in zip(plan.steps, self.steps):
            slots[step.out] = kernel(*[slots[s] for s in step.ins], **step.attrs)
        return {s: slots[s] for s in plan.keep}

    def _capture(self, leaf_values):
        drv = _driver()
        self.static_in = [memory.empty(v.shape, v.dtype) for v in leaf_values]
        self.keep = _Keep()
        stream = _handle()
        _ok(drv.cuStreamBeginCapture(stream, drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_RELAXED),
            "begin capture")
        try:
            with runtime.recording(self.keep):
                self.static_out = self._run_steps(self.static_in)
        finally:
            graph = _ok(drv.cuStreamEndCapture(stream), "end capture")
        self.graph = graph
        self.exec = _ok(drv.cuGraphInstantiate(graph, 0), "instantiate")

    def __call__(self, leaf_values):
        if self.exec is None:
            try:
                self._capture(leaf_values)
            except Exception:
                self.ok = False
                return self._run_steps(leaf_values)
        s = runtime.stream()
        for dst, src in zip(self.static_in, leaf_values):
            if dst.size:
                dst.copy_to_device(src, stream=s)
        _ok(_driver().cuGraphLaunch(self.exec, _handle()), "launch")
        return {slot: _copy_out(value, s) for slot, value in self.static_out.items()}


def _copy_out(value, s):
    if isinstance(value, tuple):
        return tuple(_copy_out(v, s) for v in value)
    fresh = memory.empty(value.shape, value.dtype)
    if value.size:
        fresh.copy_to_device(value, stream=s)
    return fresh
