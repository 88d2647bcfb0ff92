"""Plan steps bound once: the host work of a CUDA kernel (checks, layouts, launch configuration,
kernel specialization) runs on a step's first call only; later calls replay its launches.

The first call of a plan step runs the op's kernel function under a `Recorder`, which sees every
allocation (`memory.empty`), launch (`runtime.launch_config`) and library call
(`runtime.host_call`, e.g. cuBLAS).  Every device-array argument is then resolved by its device
pointer to a step input, an allocation of the step, or a constant (a cached scalar, a dummy
index): a `BoundStep` holds, per launch, the kernel, grid, block and an argument template.
Everything a kernel's host code decides depends only on shapes, dtypes and attributes, which the
plan's cache key fixes, so the replay is exact; a kernel that copies data between host and device
while recording (none does today) marks its step unbindable, and that step keeps calling the
kernel function.

Replaying a launch:
- on a real GPU, `PackedLaunch`: Numba's own argument marshalling (`_Kernel._prepare_args`) ran
  once at bind time; a call copies the template, writes the current buffers' device pointers into
  their slots and calls cuda.core's `launch` with the prebuilt config and kernel handle: no
  dispatcher, no type inference, no per-argument marshalling;
- in the simulator, the recorded dispatcher is called with the resolved arrays (the simulator's
  cost is the simulated threads anyway).

A step's outputs are fresh arrays from the pool on every call, as before (the executor stores
them in its slots); the lead's memory planner can hand planned buffers to `BoundStep` instead.
"""
from . import memory, runtime

_IN, _TMP, _CONST = 0, 1, 2


class Unbindable(Exception):
    pass


class Recorder:
    """What one call of a kernel function did on the device."""

    def __init__(self, inputs, nested=True):
        self.inputs = inputs                # flat list of the step's input device arrays
        self.nested = nested
        self.allocs = []                    # every memory.empty of the call, in order
        self.ops = []                       # (kind, fn, grid, block, args, allocs made before it)
        self.reason = None

    def alloc(self, array):
        self.allocs.append(array)

    def launch(self, kernel, grid, block, args):
        self.ops.append(("launch", kernel, grid, block, args, len(self.allocs)))

    def call(self, fn, args):
        self.ops.append(("call", fn, None, None, args, len(self.allocs)))

    def unbindable(self, why):
        self.reason = self.reason or why

    def ref(self, value, n_allocs):
        """(kind, index, shape) of a device array argument, by its device pointer."""
        if not runtime.is_device_array(value):
            return None
        if value.size == 0:
            return (_CONST, value, None)
        ptr = runtime.device_pointer(value)
        for j in range(n_allocs - 1, -1, -1):
            a = self.allocs[j]
            if a.size and runtime.device_pointer(a) == ptr and value.nbytes <= a.nbytes:
                return (_TMP, j, tuple(value.shape))
        for j, a in enumerate(self.inputs):
            if a.size and runtime.device_pointer(a) == ptr and value.nbytes <= a.nbytes:
                return (_IN, j, tuple(value.shape))
        if ptr not in _constant_pointers():
            # e.g. a view at an offset into an input: replaying it would read stale memory
            raise Unbindable(f"a device argument of shape {tuple(value.shape)} that is neither a step input, "
                             f"an allocation of the step nor a shared constant")
        return (_CONST, value, None)


def _constant_pointers():
    """Device arrays that live for the whole process: shared scalar constants, the error flag."""
    from . import checks
    arrays = list(memory._SCALARS.values()) + list(checks._FLAG)
    return {runtime.device_pointer(a) for a in arrays}


def _flatten(values):
    out = []
    for v in values:
        if isinstance(v, (tuple, list)):
            out.extend(_flatten(v))
        elif runtime.is_device_array(v):
            out.append(v)
    return out


def _resolve(ref, ins, tmps):
    kind, j, shape = ref
    if kind == _CONST:
        return j
    buf = ins[j] if kind == _IN else tmps[j]
    return buf if tuple(buf.shape) == shape else buf.reshape(shape)


class DispatcherLaunch:
    """A recorded launch replayed through Numba's dispatcher (the simulator; library calls)."""
    __slots__ = ("kind", "fn", "grid", "block", "args")

    def __init__(self, kind, fn, grid, block, args):
        self.kind, self.fn, self.grid, self.block, self.args = kind, fn, grid, block, args

    def __call__(self, ins, tmps):
        args = [_resolve(a, ins, tmps) if isinstance(a, _Ref) else a for a in self.args]
        if self.kind == "call":
            self.fn(*args)
        else:
            self.fn[self.grid, self.block, runtime.stream()](*args)


class _Ref(tuple):
    """A resolved argument reference (kept apart from tuple-valued kernel arguments)."""


class PackedLaunch:
    """A launch with Numba's argument marshalling done once: per call only the device pointers
    of the buffers change.  `launch_fn(stream, config, kernel, *args)` is cuda.core's launch."""
    __slots__ = ("launch_fn", "stream", "config", "handle", "template", "slots")

    def __init__(self, launch_fn, stream, config, handle, template, slots):
        self.launch_fn, self.stream, self.config, self.handle = launch_fn, stream, config, handle
        self.template, self.slots = template, slots

    def __call__(self, ins, tmps):
        args = self.template.copy()
        for pos, kind, j in self.slots:
            buf = ins[j] if kind == _IN else tmps[j]
            p = getattr(buf.gpu_data, "ptr_value", None)          # runtime.device_pointer, inlined
            args[pos] = p if p is not None else runtime.device_pointer(buf)
        self.launch_fn(self.stream, self.config, self.handle, *args)


def pack(kernel_obj, args, refs, launch_fn, stream, config, handle):
    """A PackedLaunch of `kernel_obj` (a Numba `_Kernel`) for recorded `args` with their refs."""
    template, slots, retr = [], [], []
    for ty, value, ref in zip(kernel_obj.argument_types, args, refs):
        start = len(template)
        kernel_obj._prepare_args(ty, value, stream, retr, template)
        if ref is not None and ref[0] != _CONST:
            slots.append((start + 4, ref[0], ref[1]))      # meminfo, parent, nitems, itemsize, data
    return PackedLaunch(launch_fn, stream, config, handle, template, tuple(slots))


def _packed(kernel, grid, block, args, refs):
    """The PackedLaunch of a recorded Numba launch on a real GPU (None where it cannot be made)."""
    from numba.cuda import dispatcher as nd
    try:
        argtypes = tuple(kernel.typeof_pyval(a) for a in args)
        kern = kernel.overloads[argtypes]
        grid_, block_ = nd.normalize_kernel_dimensions(grid, block)
        flag = {"is_cooperative" if nd.CUDA_CORE_GE_1_0 else "cooperative_launch": kern.cooperative}
        config = nd.LaunchConfig(grid=grid_, block=block_, shmem_size=0, **flag)
        handle = kern._codelibrary.get_cufunc().kernel
        stream = nd.driver._to_core_stream(runtime.stream())     # what Numba hands cuda.core's launch
    except Exception:  # pragma: no cover - an unusual dispatcher: replay through it instead
        return None
    return pack(kern, args, refs, nd.launch, stream, config, handle)


class BoundStep:
    """A plan step's launches, replayed: allocate the step's buffers, run each launch."""
    __slots__ = ("alloc_specs", "launches", "outputs", "tuple_out", "nested")

    def __init__(self, alloc_specs, launches, outputs, tuple_out, nested=True):
        self.alloc_specs, self.launches, self.outputs, self.tuple_out = alloc_specs, launches, outputs, tuple_out
        self.nested = nested            # some input is a tuple (a multi-output op's value)

    def __call__(self, *inputs, **attrs):
        ins = _flatten(inputs) if self.nested else inputs
        empty = memory.allocator().empty
        tmps = [empty(shape, dtype) for shape, dtype in self.alloc_specs]
        rec = runtime.recorder()
        if rec is not None:                 # a graph capture keeps every buffer its launches use
            for t in tmps:
                rec.alloc(t)
        for launch in self.launches:
            launch(ins, tmps)
        if self.tuple_out:
            return tuple([_resolve(r, ins, tmps) for r in self.outputs])
        return _resolve(self.outputs[0], ins, tmps)


def bind(rec, result, packed=None):
    """The BoundStep of a recorded call that returned `result` (raises Unbindable)."""
    if rec.reason is not None:
        raise Unbindable(rec.reason)
    packed = (not runtime.SIMULATOR) if packed is None else packed
    launches, written = [], set()
    for kind, fn, grid, block, args, n in rec.ops:
        refs = [rec.ref(a, n) for a in args]
        written.update(r[1] for r in refs if r is not None and r[0] == _TMP)
        launch = _packed(fn, grid, block, args, refs) if packed and kind == "launch" else None
        if launch is None:
            launch = DispatcherLaunch(kind, fn, grid, block,
                                      tuple(a if r is None else _Ref(r) for a, r in zip(args, refs)))
        launches.append(launch)
    tuple_out = isinstance(result, tuple)
    outputs = []
    for value in (result if tuple_out else (result,)):
        ref = rec.ref(value, len(rec.allocs))
        if ref is None:
            raise Unbindable(f"an output of type {type(value).__name__}")
        if ref[0] == _TMP and value.size and ref[1] not in written:
            # a safety net: the kernel launched something the recorder did not see
            raise Unbindable("an output that no recorded launch wrote")
        outputs.append(ref)
    specs = tuple((tuple(a.shape), a.dtype) for a in rec.allocs)
    return BoundStep(specs, launches, tuple(outputs), tuple_out, rec.nested)


class StepRunner:
    """The executor's callable for one CUDA plan step: records the first call, replays later ones."""
    __slots__ = ("kernel", "bound", "reason", "ins")

    def __init__(self, kernel, ins=()):
        self.kernel, self.bound, self.reason, self.ins = kernel, None, None, ins

    def __call__(self, *inputs, **attrs):
        if self.bound is not None:
            return self.bound(*inputs)
        if self.reason is not None or _aliased(self.ins, inputs):
            return self.kernel(*inputs, **attrs)
        flat = _flatten(inputs)
        rec = Recorder(flat, nested=len(flat) != len(inputs) or any(isinstance(v, tuple) for v in inputs))
        with runtime.recording(rec):
            result = self.kernel(*inputs, **attrs)
        try:
            self.bound = bind(rec, result)
        except Unbindable as exc:
            self.reason = str(exc)
        return result


def _aliased(slots, inputs):
    """Do two different plan slots hold the same buffer on this call (e.g. two cached constants of
    one value)?  Arguments are resolved by pointer, so binding now would read one slot twice on
    every later call: the step binds on a later call instead."""
    seen = {}
    for slot, v in zip(slots, inputs):
        if runtime.is_device_array(v) and v.size:
            if seen.setdefault(runtime.device_pointer(v), slot) != slot:
                return True
    return False


def bound_steps(plan):
    """Per step of `plan`, the callable the executor runs (bound once, kept on the plan)."""
    runners = plan.__dict__.get("_cuda_steps")
    if runners is None:
        runners = plan._cuda_steps = [StepRunner(step.kernel, step.ins) for step in plan.steps]
    return runners
