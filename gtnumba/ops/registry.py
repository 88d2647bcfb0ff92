"""The op table: every primitive op is one OpDef row, registered here once.

A row holds the shape/dtype rule, the kernel for each backend, the NumPy reference used by the
tests, the gradient rule (written with Tensor methods on the tensors it is handed) and, later, the
sharding rule.  Nothing outside this table keeps a per-op switch.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

OPS = {}


@dataclass
class OpDef:
    name: str
    # infer(attrs, *input_specs) -> Spec or tuple of Specs (multi-output); raises on user error
    infer: Callable
    # reference(*numpy_arrays, **attrs) -> array or tuple: plain NumPy, the tests' oracle
    reference: Callable
    # grad(ctx) -> tuple with one gradient Tensor (or None) per input; None: not differentiable
    grad: Optional[Callable] = None
    # kernels[backend_name](*arrays, **attrs) -> array or tuple of arrays
    kernels: dict = field(default_factory=dict)
    # shard(attrs, *layouts) -> layout: filled in by the multi-worker scheduler
    shard: Optional[Callable] = None
    differentiable: bool = True
    # input_dtypes(attrs, *input_specs, out=spec) -> dtype per input (None: leave as is); the API
    # casts operands first, so kernels see inputs of one dtype and compute in the result dtype
    input_dtypes: Optional[Callable] = None
    # multi-output rows: how many leading outputs carry gradients (saved statistics such as
    # layer norm's mean/rstd do not, as in PyTorch); None means all of them
    grad_outputs: Optional[int] = None
    # sample(rng) -> list of (inputs, attrs) test cases; tests run every row over them
    sample: Optional[Callable] = None
    # an op whose output aliases its input's storage (views): the executor must not free it early
    alias: bool = False


def defop(name, infer, reference, grad=None, kernels=None, **kw):
    if name in OPS:
        raise RuntimeError(f"op {name!r} defined twice")
    row = OpDef(name, infer, reference, grad, dict(kernels or {}), **kw)
    OPS[name] = row
    return row


@dataclass(frozen=True)
class Spec:
    """Shape and dtype of one value in the graph."""
    shape: tuple
    dtype: object
