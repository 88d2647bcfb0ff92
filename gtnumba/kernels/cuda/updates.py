"""Optimizer update rows on the CUDA backend: `sgd_update` and `adam_update`, one elementwise
kernel each (grid-stride, one pass over the parameter, its gradient and its state), with the
signatures and PyTorch semantics of the CPU kernels (gtnumba/kernels/cpu.py -> cpu_fused.py):
state and gradient are cast to the parameter's dtype, the math runs in float64 and is rounded
once on store, and the outputs are new arrays (the executor rebinds the parameter).

The learning rate and step count arrive as 0-d arrays (device arrays on this backend, host
NumPy arrays are accepted too), so a schedule that changes them keeps the same plan.  They are
scalars: the host reads each once per call and passes it, with the bias corrections derived
from it, as kernel scalars.
"""
import functools

import numpy as np
from numba import cuda

from . import memory, runtime
from .elementwise import _sqrt
from .runtime import jit

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
FLOATS = (F32, F64)
F = np.float64


def _sgd_kernel(out_p, out_buf, p, g, buf, n, lr, momentum, dampening, weight_decay, nesterov, first_step):
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


def _adam_kernel(out_p, out_m, out_v, p, g, m, v, n, lr, beta1, beta2, eps, weight_decay, step_size,
                 rsqrt_bc2, decoupled):
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
def host_scalar(name, x, what):
    """A 0-d (or 1-element) array on the device or the host -> a Python number (one read)."""
    host = x.copy_to_host() if runtime.is_device_array(x) else np.asarray(x)
    if host.size != 1:
        raise ValueError(f"{name}: {what} must be a scalar (0-d array), got shape {host.shape}")
    return host.reshape(()).item()


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
    lr = float(host_scalar(name, lr, "lr"))
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
    lr = float(host_scalar(name, lr, "lr"))
    step = int(host_scalar(name, step, "step"))
    if step < 1:
        raise ValueError(f"{name}: step must be >= 1 (1-based), got {step}")
    beta1, beta2 = float(beta1), float(beta2)
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    out_p, out_m, out_v = (memory.empty(shape, dt) for _ in range(3))
    n = runtime.prod(shape)
    runtime.launch(compiled_kernel("adam"), n, runtime.flat(out_p), runtime.flat(out_m), runtime.flat(out_v),
                   runtime.flat(p), fg, fm, fv, n, lr, beta1, beta2, float(eps), float(weight_decay),
                   lr / bc1, 1.0 / float(np.sqrt(bc2)), bool(decoupled), name=name)
    return out_p, out_m, out_v


KERNELS = {"sgd_update": sgd_update, "adam_update": adam_update}


# ---- compile_ptx cases ------------------------------------------------------------------------------
def ptx_cases(full=False):
    from numba import types
    from numba.np.numpy_support import from_dtype
    f, b, i = types.float64, types.boolean, types.int64
    for dt in FLOATS:
        a = types.Array(from_dtype(dt), 1, "C")
        yield f"sgd_update {dt}", _sgd_kernel, (a,) * 5 + (i, f, f, f, f, b, b)
        yield f"adam_update {dt}", _adam_kernel, (a,) * 7 + (i,) + (f,) * 7 + (b,)
