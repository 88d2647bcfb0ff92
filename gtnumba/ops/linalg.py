"""Matrix product rows.  1-D operands are promoted to 2-D by the API, so rows see N-D >= 2."""
import numpy as np

from ..kernels import cpu
from ..kernels import cuda as cuda_kernels
from . import sharding
from .registry import Spec, defop
from .shapes import broadcast_shapes


def _matmul_infer(attrs, a, b):
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise ValueError(f"matmul: operands must be at least 2-D here, got {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match "
                         f"({a.shape[-1]} != {b.shape[-2]} on the contracted dim)")
    batch = broadcast_shapes("matmul", a.shape[:-2], b.shape[:-2])
    return Spec(batch + (a.shape[-2], b.shape[-1]), np.promote_types(a.dtype, b.dtype))


def _matmul_grad(c):
    a, b = c.x
    ga = c.g @ b.swap_last() if c.needs[0] else None
    if not c.needs[1]:
        return ga, None
    if b.ndim == 2:
        # a weight shared by every batch row: one GEMM over all rows instead of a batched
        # product and a sum over the batch
        a2, g2 = a.reshape(-1, a.shape[-1]), c.g.reshape(-1, c.g.shape[-1])
        if b._node.op == "permute":
            # b is W.T (x @ W.T): compute W's gradient in W's own layout, so the transposes
            # cancel and the optimizer gets a contiguous gradient
            return ga, (g2.swap_last() @ a2).swap_last()
        return ga, a2.swap_last() @ g2
    return ga, a.swap_last() @ c.g


defop("matmul", _matmul_infer, np.matmul, kernels={"cpu": cpu.matmul, "cuda": cuda_kernels.gemm_kernel("matmul")}, grad=_matmul_grad, shard=sharding.matmul,
      sample=lambda rng: [((rng.standard_normal((3, 4)), rng.standard_normal((4, 5))), {}),
                          ((rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 2))), {}),
                          ((rng.standard_normal((2, 1, 3, 4)), rng.standard_normal((3, 4, 5))), {})])
