"""Optimizer update rows on the CUDA backend: `sgd_update` and `adam_update`, one elementwise
kernel each (grid-stride, one pass over the parameter, its gradient and its state), with the
signatures and PyTorch semantics of the CPU kernels (gtnumba/kernels/cpu.py -> cpu_fused.py):
state and gradient are cast to the parameter's dtype, the math runs in float64 and is rounded
once on store, and the outputs are new arrays (the executor rebinds the parameter).

The learning rate and step count arrive as 0-d device arrays (host NumPy arrays are copied
over), so a schedule that changes them keeps the same plan.  They stay on the device: each thread
reads them (and derives Adam's bias corrections from the step) itself, so an update never waits
for a device -> host copy.  A step count below 1 is a data error, reported through the device
error flag (gtnumba.kernels.cuda.checks) and raised at the next read.
"""
import functools

import numpy as np
from numba import cuda

from . import checks, memory, runtime
from .elementwise import _sqrt
from .runtime import jit

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
FLOATS = (F32, F64)
F = np.float64


BAD_STEP = checks.site(ValueError, "adam_update: step must be >= 1 (1-based), got {value}")


def _sgd_kernel(out_p, out_buf, p, g, buf, n, lr_arr, momentum, dampening, weight_decay, nesterov, first_step):
    lr = F(lr_arr[0])
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        pi = F(p[i])
        d = F(g[i]) + weight_decay * pi
        b = F(buf[i])
        if momentum != 0.0:
            if first_step:
                b = d
            else:
                b = momentum * b + (1.0 - dampening) * d
            if nesterov:
                d = d + momentum * b
            else:
                d = b
        out_p[i] = pi - lr * d
        out_buf[i] = b


def _adam_kernel(out_p, out_m, out_v, p, g, m, v, n, lr_arr, step_arr, beta1, beta2, eps, weight_decay,
                 decoupled, flag, bad_step):
    lr = F(lr_arr[0])
    step = F(step_arr[0])
    if step < 1.0:
        if cuda.grid(1) == 0:
            checks.report(flag, bad_step, step_arr[0], 1, 0)
        return
    step_size = lr / (1.0 - beta1 ** step)
    rsqrt_bc2 = 1.0 / _sqrt(1.0 - beta2 ** step)
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        pi = F(p[i])
        gi = F(g[i])
        if decoupled:
            pi = pi * (1.0 - lr * weight_decay)
        else:
            gi = gi + weight_decay * pi
        mi = beta1 * F(m[i]) + (1.0 - beta1) * gi
        vi = beta2 * F(v[i]) + (1.0 - beta2) * gi * gi
        # PyTorch's form of lr * mhat / (sqrt(vhat) + eps): one sqrt and one division
        out_p[i] = pi - step_size * mi / (_sqrt(vi) * rsqrt_bc2 + eps)
        out_m[i] = mi
        out_v[i] = vi


@functools.lru_cache(maxsize=None)
def compiled_kernel(kind):
    return jit({"sgd": _sgd_kernel, "adam": _adam_kernel}[kind])


# ---- host side ------------------------------------------------------------------------------------
def device_scalar(name, x, what):
    """A 0-d (or 1-element) array on the device or the host -> a flat 1-element device array."""
    if tuple(np.shape(x)) not in ((), (1,)):
        raise ValueError(f"{name}: {what} must be a scalar (0-d array), got shape {tuple(np.shape(x))}")
    return runtime.flat(memory.to_device(x))


def _param(name, p):
    dt = runtime.check_array(name, p, "parameter", FLOATS)
    return dt, tuple(p.shape)


def _state(name, a, dt, shape, what):
    runtime.check_array(name, a, what, FLOATS)
    if tuple(a.shape) != shape:
        raise ValueError(f"{name}: parameter of shape {shape} got a {what} of shape {tuple(a.shape)}")
    if np.dtype(a.dtype) != dt:
        from .elementwise import cast
        a = cast(a, dt)
    return runtime.flat(a)


def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first_step):
    name = "sgd_update"
    dt, shape = _param(name, p)
    fg = _state(name, g, dt, shape, "gradient")
    fb = _state(name, buf, dt, shape, "momentum buffer")
    lr = device_scalar(name, lr, "lr")
    out_p, out_buf = memory.empty(shape, dt), memory.empty(shape, dt)
    n = runtime.prod(shape)
    runtime.launch(compiled_kernel("sgd"), n, runtime.flat(out_p), runtime.flat(out_buf), runtime.flat(p),
                   fg, fb, n, lr, float(momentum), float(dampening), float(weight_decay), bool(nesterov),
                   bool(first_step), name=name)
    return out_p, out_buf


def adam_update(p, g, m, v, lr, step, beta1, beta2, eps, weight_decay, decoupled):
    name = "adam_update"
    dt, shape = _param(name, p)
    fg = _state(name, g, dt, shape, "gradient")
    fm = _state(name, m, dt, shape, "first moment")
    fv = _state(name, v, dt, shape, "second moment")
    lr = device_scalar(name, lr, "lr")
    step = device_scalar(name, step, "step")
    out_p, out_m, out_v = (memory.empty(shape, dt) for _ in range(3))
    n = runtime.prod(shape)
    runtime.launch(compiled_kernel("adam"), n, runtime.flat(out_p), runtime.flat(out_m), runtime.flat(out_v),
                   runtime.flat(p), fg, fm, fv, n, lr, step, float(beta1), float(beta2), float(eps),
                   float(weight_decay), bool(decoupled), checks.flag(), BAD_STEP, name=name)
    return out_p, out_m, out_v


KERNELS = {"sgd_update": sgd_update, "adam_update": adam_update}


# ---- compile_ptx cases ------------------------------------------------------------------------------
def ptx_cases(full=False):
    from numba import types
    from numba.np.numpy_support import from_dtype
    f, b, i = types.float64, types.boolean, types.int64
    steps = types.Array(types.int64, 1, "C")
    for dt in FLOATS:
        a = types.Array(from_dtype(dt), 1, "C")
        yield f"sgd_update {dt}", _sgd_kernel, (a,) * 5 + (i, a, f, f, f, b, b)
        yield f"adam_update {dt}", _adam_kernel, (a,) * 7 + (i, a, steps) + (f,) * 4 + (b, steps, i)
