"""Elementwise rows: unary and binary math, comparisons, where, casts."""
import math

import numpy as np

from .. import dtypes
from ..kernels import cpu
from ..kernels import cuda as cuda_kernels
from . import sharding
from .registry import Spec, defop
from .shapes import broadcast_shapes


def _float_only(op, spec):
    if not dtypes.is_float(spec.dtype):
        raise TypeError(f"{op}: needs a floating-point tensor, got {spec.dtype} of shape {spec.shape}")


def unary_infer(op, float_only=True):
    def infer(attrs, x):
        if float_only:
            _float_only(op, x)
        return Spec(x.shape, x.dtype)
    return infer


def binary_infer(op, result=None):
    def infer(attrs, a, b):
        shape = broadcast_shapes(op, a.shape, b.shape)
        dtype = result or dtypes.promote(a.dtype, b.dtype)
        if dtype == dtypes.bool_ and op in ("add", "sub", "mul", "div", "pow"):
            dtype = dtypes.int64
        if op == "div" and not dtypes.is_float(dtype):
            dtype = dtypes.float32
        return Spec(shape, dtype)
    return infer


def _to_result(attrs, *specs, out):
    """Arithmetic computes in its result dtype: bool + bool is 2, int / int is float32."""
    return (out.dtype,) * len(specs)


def _to_common(attrs, a, b, out):
    """Comparisons compare in the operands' common dtype."""
    common = dtypes.promote(a.dtype, b.dtype)
    return (common, common)


def _rand(rng, *shape, positive=False):
    x = rng.standard_normal(shape)
    return np.abs(x) + 0.5 if positive else x


def _binary_samples(positive_b=False, positive_a=False):
    def sample(rng):
        return [((_rand(rng, 3, 4, positive=positive_a), _rand(rng, 3, 4, positive=positive_b)), {}),
                ((_rand(rng, 2, 1, 5, positive=positive_a), _rand(rng, 3, 1, positive=positive_b)), {}),
                ((_rand(rng, 7, positive=positive_a), _rand(rng, positive=positive_b)), {})]
    return sample


def _unary_samples(positive=False, avoid_zero=False):
    def sample(rng):
        xs = [_rand(rng, 3, 5, positive=positive), _rand(rng, 2, 3, 4, positive=positive), _rand(rng, positive=positive)]
        if avoid_zero:
            xs = [np.where(np.abs(x) < 0.1, 0.3, x) for x in xs]
        return [((x,), {}) for x in xs]
    return sample


# ---- binary arithmetic -------------------------------------------------------------------
defop("add", binary_infer("add"), np.add, input_dtypes=_to_result, kernels={"cpu": cpu.binary(np.add), "cuda": cuda_kernels.elementwise_kernel("add")},
      grad=lambda c: (c.g, c.g), sample=_binary_samples(),
      shard=sharding.elementwise("add"))
defop("sub", binary_infer("sub"), np.subtract, input_dtypes=_to_result, kernels={"cpu": cpu.binary(np.subtract), "cuda": cuda_kernels.elementwise_kernel("sub")},
      grad=lambda c: (c.g, -c.g), sample=_binary_samples(),
      shard=sharding.elementwise("add"))
defop("mul", binary_infer("mul"), np.multiply, input_dtypes=_to_result, kernels={"cpu": cpu.binary(np.multiply), "cuda": cuda_kernels.elementwise_kernel("mul")},
      grad=lambda c: (c.g * c.x[1] if c.needs[0] else None, c.g * c.x[0] if c.needs[1] else None),
      sample=_binary_samples(),
      shard=sharding.elementwise("mul"))
defop("div", binary_infer("div"), np.true_divide, input_dtypes=_to_result, kernels={"cpu": cpu.div, "cuda": cuda_kernels.elementwise_kernel("div")},
      grad=lambda c: (c.g / c.x[1] if c.needs[0] else None,
                      -c.g * c.out / c.x[1] if c.needs[1] else None),
      sample=_binary_samples(positive_b=True),
      shard=sharding.elementwise("div"))


def _pow_grad(c):
    a, b = c.x
    ga = c.g * b * a ** (b - 1) if c.needs[0] else None
    gb = c.g * c.out * a.log() if c.needs[1] else None
    return ga, gb


defop("pow", binary_infer("pow"), np.power, input_dtypes=_to_result, kernels={"cpu": cpu.power, "cuda": cuda_kernels.elementwise_kernel("pow")}, grad=_pow_grad,
      sample=_binary_samples(positive_a=True),
      shard=sharding.elementwise(None))


def _extremum_grad(c, pick):
    """Ties split the gradient in half, so the rule is symmetric in its inputs."""
    a, b = c.x
    share = pick(a, b).astype(c.g.dtype) + (a == b).astype(c.g.dtype) * 0.5
    return (c.g * share if c.needs[0] else None, c.g * (1 - share) if c.needs[1] else None)


defop("maximum", binary_infer("maximum"), np.maximum, input_dtypes=_to_result, kernels={"cpu": cpu.binary(np.maximum), "cuda": cuda_kernels.elementwise_kernel("maximum")},
      grad=lambda c: _extremum_grad(c, lambda a, b: a > b), sample=_binary_samples(),
      shard=sharding.elementwise(None))
defop("minimum", binary_infer("minimum"), np.minimum, input_dtypes=_to_result, kernels={"cpu": cpu.binary(np.minimum), "cuda": cuda_kernels.elementwise_kernel("minimum")},
      grad=lambda c: _extremum_grad(c, lambda a, b: a < b), sample=_binary_samples(),
      shard=sharding.elementwise(None))

# ---- comparisons: results never carry gradients -------------------------------------------
for _name, _ufunc in [("eq", np.equal), ("ne", np.not_equal), ("lt", np.less),
                      ("le", np.less_equal), ("gt", np.greater), ("ge", np.greater_equal)]:
    defop(_name, binary_infer(_name, dtypes.bool_), _ufunc, input_dtypes=_to_common,
          kernels={"cpu": cpu.binary(_ufunc), "cuda": cuda_kernels.elementwise_kernel(_name)}, shard=sharding.elementwise(None),
          differentiable=False, sample=_binary_samples())


def _where_infer(attrs, c, a, b):
    if c.dtype != dtypes.bool_:
        raise TypeError(f"where: condition must be a bool tensor, got {c.dtype} of shape {c.shape}")
    return Spec(broadcast_shapes("where", c.shape, a.shape, b.shape), dtypes.promote(a.dtype, b.dtype))


def _where_grad(c):
    zero = c.F.zeros((), dtype=c.g.dtype)
    return (None, c.F.where(c.x[0], c.g, zero) if c.needs[1] else None,
            c.F.where(c.x[0], zero, c.g) if c.needs[2] else None)


defop("where", _where_infer, np.where, kernels={"cpu": cpu.where, "cuda": cuda_kernels.elementwise_kernel("where")}, grad=_where_grad,
      input_dtypes=lambda attrs, c, a, b, out: (None, out.dtype, out.dtype),
      sample=lambda rng: [((rng.standard_normal((3, 4)) > 0, rng.standard_normal((3, 4)),
                            rng.standard_normal((1, 4))), {})],
      shard=sharding.elementwise(None))

# ---- unary math --------------------------------------------------------------------------
defop("neg", unary_infer("neg", False), np.negative, kernels={"cpu": cpu.unary(np.negative), "cuda": cuda_kernels.elementwise_kernel("neg")},
      grad=lambda c: (-c.g,), sample=_unary_samples(),
      shard=sharding.elementwise("linear"))
defop("abs", unary_infer("abs", False), np.abs, kernels={"cpu": cpu.unary(np.abs), "cuda": cuda_kernels.elementwise_kernel("abs")},
      grad=lambda c: (c.g * c.x[0].sign(),), sample=_unary_samples(avoid_zero=True),
      shard=sharding.elementwise(None))
defop("sign", unary_infer("sign", False), np.sign, kernels={"cpu": cpu.unary(np.sign), "cuda": cuda_kernels.elementwise_kernel("sign")},
      differentiable=False, sample=_unary_samples(),
      shard=sharding.elementwise(None))
defop("exp", unary_infer("exp"), np.exp, kernels={"cpu": cpu.unary(np.exp), "cuda": cuda_kernels.elementwise_kernel("exp")},
      grad=lambda c: (c.g * c.out,), sample=_unary_samples(),
      shard=sharding.elementwise(None))
defop("log", unary_infer("log"), np.log, kernels={"cpu": cpu.unary(np.log), "cuda": cuda_kernels.elementwise_kernel("log")},
      grad=lambda c: (c.g / c.x[0],), sample=_unary_samples(positive=True),
      shard=sharding.elementwise(None))
defop("sqrt", unary_infer("sqrt"), np.sqrt, kernels={"cpu": cpu.unary(np.sqrt), "cuda": cuda_kernels.elementwise_kernel("sqrt")},
      grad=lambda c: (c.g * 0.5 / c.out,), sample=_unary_samples(positive=True),
      shard=sharding.elementwise(None))
defop("relu", unary_infer("relu", False), lambda x: np.maximum(x, 0), kernels={"cpu": cpu.relu, "cuda": cuda_kernels.elementwise_kernel("relu")},
      grad=lambda c: (c.g * (c.x[0] > 0).astype(c.g.dtype),), sample=_unary_samples(avoid_zero=True),
      shard=sharding.elementwise(None))
defop("sigmoid", unary_infer("sigmoid"), lambda x: 1 / (1 + np.exp(-x)), kernels={"cpu": cpu.sigmoid, "cuda": cuda_kernels.elementwise_kernel("sigmoid")},
      grad=lambda c: (c.g * c.out * (1 - c.out),), sample=_unary_samples(),
      shard=sharding.elementwise(None))
defop("tanh", unary_infer("tanh"), np.tanh, kernels={"cpu": cpu.unary(np.tanh), "cuda": cuda_kernels.elementwise_kernel("tanh")},
      grad=lambda c: (c.g * (1 - c.out * c.out),), sample=_unary_samples(),
      shard=sharding.elementwise(None))

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu_reference(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _gelu_backward_reference(x, g):
    return g * (0.5 * (1 + _erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))


defop("gelu", unary_infer("gelu"), _gelu_reference, kernels={"cpu": cpu.gelu, "cuda": cuda_kernels.elementwise_kernel("gelu")},
      grad=lambda c: (c.F.apply("gelu_backward", c.x[0], c.g),), sample=_unary_samples(),
      shard=sharding.elementwise(None))
defop("gelu_backward", binary_infer("gelu_backward"), _gelu_backward_reference,
      kernels={"cpu": cpu.gelu_backward, "cuda": cuda_kernels.elementwise_kernel("gelu_backward")}, differentiable=False, sample=_binary_samples(),
      shard=sharding.elementwise(None))


def _clamp_infer(attrs, x):
    lo, hi = attrs["lo"], attrs["hi"]
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"clamp: min {lo} is greater than max {hi}")
    return Spec(x.shape, x.dtype)


def _clamp_grad(c):
    x, lo, hi = c.x[0], c.attrs["lo"], c.attrs["hi"]
    inside = None
    if lo is not None:
        inside = x >= lo
    if hi is not None:
        upper = x <= hi
        inside = upper if inside is None else c.F.logical_and(inside, upper)
    return (c.g if inside is None else c.g * inside.astype(c.g.dtype),)


defop("clamp", _clamp_infer, lambda x, lo, hi: np.clip(x, lo, hi), kernels={"cpu": cpu.clamp, "cuda": cuda_kernels.elementwise_kernel("clamp")},
      grad=_clamp_grad, sample=lambda rng: [((rng.standard_normal((4, 5)) * 2,), {"lo": -1.0, "hi": 0.75}),
                                             ((rng.standard_normal((6,)),), {"lo": None, "hi": 0.2})],
      shard=sharding.elementwise(None))
defop("logical_and", binary_infer("logical_and", dtypes.bool_), np.logical_and,
      kernels={"cpu": cpu.binary(np.logical_and), "cuda": cuda_kernels.elementwise_kernel("logical_and")}, differentiable=False,
      sample=lambda rng: [((rng.standard_normal((3, 4)) > 0, rng.standard_normal((4,)) > 0), {})],
      shard=sharding.elementwise(None))


def _cast_grad(c):
    src = c.x[0].dtype
    return (c.g.astype(src) if dtypes.is_float(src) else None,)


defop("cast", lambda attrs, x: Spec(x.shape, attrs["dtype"]), lambda x, dtype: x.astype(dtype),
      kernels={"cpu": cpu.cast, "cuda": cuda_kernels.elementwise_kernel("cast")}, grad=_cast_grad,
      sample=lambda rng: [((rng.standard_normal((3, 2)),), {"dtype": dtypes.float64})],
      shard=sharding.elementwise("linear"))
defop("alias", lambda attrs, x: Spec(x.shape, x.dtype), lambda x: x, kernels={"cpu": cpu.alias, "cuda": cuda_kernels.elementwise_kernel("alias")},
      differentiable=False, alias=True, sample=_unary_samples(),
      shard=sharding.placed)
