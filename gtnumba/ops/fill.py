"""The fill row: a constant tensor made where it is needed (on the device, on every worker)
instead of on the host and shipped there; zeros for gradients and optimizer state use it."""
import numpy as np

from ..kernels import cpu
from ..kernels import cuda as cuda_kernels
from ..layout import REPLICATE
from .registry import Spec, defop

defop("fill", lambda attrs: Spec(tuple(attrs["shape"]), attrs["dtype"]),
      lambda shape, value, dtype: np.full(shape, value, dtype), kernels={"cpu": cpu.fill, "cuda": cuda_kernels.elementwise_kernel("fill")},
      differentiable=False, shard=lambda attrs, layouts, ins, outs: ((), (REPLICATE,)),
      sample=lambda rng: [((), {"shape": (2, 3), "value": 1.5, "dtype": np.dtype(np.float32)}),
                          ((), {"shape": (), "value": 0.0, "dtype": np.dtype(np.float64)})])
