"""Optimizer update rows: one fused pass over a parameter, its gradient and its state.

Learning rate and step count are tensor inputs, not attributes, so a schedule that changes them
every step keeps the same cached plan.
"""
import numpy as np

from .. import dtypes
from ..kernels import cpu
from ..kernels import cuda as cuda_kernels
from . import sharding
from .registry import Spec, defop


def _same_shape(op, p, *others):
    for t in others:
        if t.shape != p.shape:
            raise ValueError(f"{op}: parameter of shape {p.shape} got a state or gradient of shape {t.shape}")
    if not dtypes.is_float(p.dtype):
        raise TypeError(f"{op}: parameters must be floating point, got {p.dtype}")


def _sgd_infer(attrs, p, g, buf, lr):
    _same_shape("sgd_update", p, g, buf)
    return (Spec(p.shape, p.dtype), Spec(p.shape, p.dtype))


def _sgd_ref(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first_step):
    d = g + weight_decay * p
    if momentum:
        buf = d.copy() if first_step else momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf


def _sgd_samples(rng):
    p, g, b = (rng.standard_normal((3, 4)) for _ in range(3))
    return [((p, g, b, np.array(0.1)), dict(momentum=0.9, dampening=0.0, weight_decay=0.01,
                                           nesterov=True, first_step=False)),
            ((p, g, b, np.array(0.05)), dict(momentum=0.9, dampening=0.1, weight_decay=0.0,
                                            nesterov=False, first_step=True))]


defop("sgd_update", _sgd_infer, _sgd_ref, kernels={"cpu": cpu.sgd_update, "cuda": cuda_kernels.update_kernel("sgd_update")}, differentiable=False,
      shard=sharding.updates,
      sample=_sgd_samples)


def _adam_infer(attrs, p, g, m, v, lr, step):
    _same_shape("adam_update", p, g, m, v)
    return (Spec(p.shape, p.dtype),) * 3


def _adam_ref(p, g, m, v, lr, step, beta1, beta2, eps, weight_decay, decoupled):
    if decoupled:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    mhat, vhat = m / (1 - beta1 ** step), v / (1 - beta2 ** step)
    return p - lr * mhat / (np.sqrt(vhat) + eps), m, v


def _adam_samples(rng):
    p, g, m = (rng.standard_normal((5,)) for _ in range(3))
    v = np.abs(rng.standard_normal(5))
    return [((p, g, m, v, np.array(1e-2), np.array(3)), dict(beta1=0.9, beta2=0.999, eps=1e-8,
                                                           weight_decay=0.01, decoupled=d)) for d in (False, True)]


defop("adam_update", _adam_infer, _adam_ref, kernels={"cpu": cpu.adam_update, "cuda": cuda_kernels.update_kernel("adam_update")}, differentiable=False,
      shard=sharding.updates,
      sample=_adam_samples)
