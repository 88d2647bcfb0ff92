"""Which backend runs kernels, chosen in one place, and host <-> backend array transfer.

Backends: "cpu" (NumPy arrays) and "cuda" (Numba device arrays, gtnumba/kernels/cuda).  The
default is "cuda" when a real CUDA GPU is present (and every op row has a CUDA kernel) and "cpu"
otherwise; under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) the default stays "cpu", and "cuda"
(simulated) must be asked for.
`GTNUMBA_DEVICE=cpu|cuda` or `gt.set_device(...)` force one.  Each backend's `to_backend` turns a
host array into its value type and `to_host` a value back into a NumPy array; both accept the
other backend's values too, so a tensor computed before a device switch can still be read.
"""
import os

import numpy as np


def _host(value):
    """A NumPy array for a CPU or CUDA value (device arrays are copied to the host)."""
    if isinstance(value, np.ndarray):
        return value
    copy = getattr(value, "copy_to_host", None)
    return copy() if copy is not None else np.asarray(value)


def _cpu_to_backend(array):
    return np.asarray(_host(array), order="C")


def _cuda_to_backend(array):
    from .cuda import to_device
    return to_device(array)


def _cuda_to_host(value):
    if isinstance(value, np.ndarray):
        return value
    from .cuda import to_host
    return to_host(value) if hasattr(value, "copy_to_host") else np.asarray(value)


def _cuda_available():
    from .cuda import usable
    return usable()


_BACKENDS = {
    "cpu": {"to_backend": _cpu_to_backend, "to_host": _host, "available": lambda: True},
    "cuda": {"to_backend": _cuda_to_backend, "to_host": _cuda_to_host, "available": _cuda_available},
}
_current = None


def available():
    return tuple(_BACKENDS)


def register(name, to_backend, to_host, is_available=None):
    _BACKENDS[name] = {"to_backend": to_backend, "to_host": to_host,
                       "available": is_available or (lambda: True)}


def cuda_complete():
    """Does every op row have a "cuda" kernel?  (Read lazily: the op table imports this package.)"""
    from ..ops.registry import OPS
    return all("cuda" in row.kernels for row in OPS.values())


def bound_steps(plan):
    """Per step of `plan`, the callable the executor runs: on "cuda" a step bound once
    (gtnumba.kernels.cuda.bound: launches replayed without their host code), elsewhere the op's
    kernel.  Kept on the plan, so this is one dict lookup per plan run."""
    steps = plan.__dict__.get("_backend_steps")
    if steps is None:
        if current() == "cuda" and os.environ.get("GTNUMBA_CUDA_BIND", "1") != "0":
            from .cuda.bound import bound_steps as cuda_steps
            steps = cuda_steps(plan)
        else:
            steps = [step.kernel for step in plan.steps]
        plan._backend_steps = steps
    return steps


def step_runner(kernel):
    """One kernel call site bound once (for executors other than run_plan, e.g. SPMD blocks: keep
    one per block step and call it instead of the kernel): on "cuda" it records the first call and
    replays its launches later; elsewhere the kernel itself."""
    if current() == "cuda" and os.environ.get("GTNUMBA_CUDA_BIND", "1") != "0":
        from .cuda.bound import StepRunner
        return StepRunner(kernel)
    return kernel


def graph_runner(plan):
    """A callable that runs the whole plan as one CUDA graph replay (real GPU, cached plan,
    GTNUMBA_CUDA_GRAPHS not 0), or None: run the plan's steps."""
    if current() != "cuda":
        return None
    from .cuda.graphs import runner
    return runner(plan)


def default():
    """The backend used when nothing forces one: "cuda" only on a real GPU where every op row has
    a CUDA kernel and a tiny kernel compiles and runs; otherwise "cpu", with one warning saying
    why when a GPU is there (GTNUMBA_DEVICE=cuda or set_device("cuda") still force it)."""
    name = os.environ.get("GTNUMBA_DEVICE", "").strip().lower()
    if name:
        return name
    from . import cuda
    if not cuda.gpu_present():
        return "cpu"
    ok, why = cuda.probe() if cuda_complete() else (False, "some op rows have no CUDA kernel")
    if ok:
        return "cuda"
    import warnings
    warnings.warn(f"gtnumba: a CUDA GPU is present but the CUDA backend is not usable ({why}); "
                  f"running on the CPU. GTNUMBA_DEVICE=cuda forces the CUDA backend.", RuntimeWarning,
                  stacklevel=3)
    return "cpu"


def current():
    global _current
    if _current is None:
        _current = _choose(default())
    return _current


def _choose(name):
    if name not in _BACKENDS:
        raise ValueError(f"gtnumba: unknown device {name!r}; available: {sorted(_BACKENDS)}")
    if not _BACKENDS[name]["available"]():
        raise RuntimeError(f"gtnumba: device {name!r} is not available here: no CUDA GPU was found "
                           f"(numba.cuda.is_available() is False); set NUMBA_ENABLE_CUDASIM=1 to run "
                           f"the CUDA backend in Numba's simulator")
    return name


def set_device(name):
    global _current
    _current = _choose(str(name).strip().lower())


def to_backend(array):
    return _BACKENDS[current()]["to_backend"](array)


def to_host(value):
    return _BACKENDS[current()]["to_host"](value)
