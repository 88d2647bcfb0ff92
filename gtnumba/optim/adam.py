"""Adam and AdamW (PyTorch's formulas, bias-corrected), one fused `adam_update` op per parameter.

    Adam:  g = g + weight_decay * p              AdamW: p = p * (1 - lr * weight_decay)
    m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
    p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
"""
from .. import dtypes
from .._tensor import apply
from .optimizer import Optimizer, _check_number, scalar, zeros_like


class Adam(Optimizer):
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        if amsgrad:
            raise NotImplementedError(f"{type(self).__name__}: amsgrad=True is not supported")
        self._step_counts = {}       # id(param group) -> {step: its count tensor of the last step}
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _check_group(self, group):
        who = type(self).__name__
        _check_number(who, "learning rate", group["lr"])
        _check_number(who, "epsilon", group["eps"])
        _check_number(who, "weight_decay", group["weight_decay"])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{who}: betas must be a pair (beta1, beta2), got {betas!r}")
        _check_number(who, "beta1", betas[0], 0.0, 1.0)
        _check_number(who, "beta2", betas[1], 0.0, 1.0)

    def _update(self, group, params):
        self._check_group(group)
        lrs = self._lr_tensors(group, params)
        beta1, beta2 = (float(b) for b in group["betas"])
        attrs = dict(beta1=beta1, beta2=beta2, eps=float(group["eps"]),
                     weight_decay=float(group["weight_decay"]), decoupled=self._decoupled)
        steps, counts = {}, self._step_counts.setdefault(id(group), {})
        for p in params:
            state = self.state.setdefault(p, {})
            if "exp_avg" not in state:
                state["step"] = 0
                state["exp_avg"] = zeros_like(p)
                state["exp_avg_sq"] = zeros_like(p)
            state["step"] += 1
            step = state["step"]
            if step not in steps:
                steps[step] = _step_count(counts, step)
            new_p, m, v = apply("adam_update", p, p.grad, state["exp_avg"], state["exp_avg_sq"], lrs[p.dtype],
                                steps[step], **attrs)
            p.data = new_p
            state["exp_avg"], state["exp_avg_sq"] = m, v
        counts.clear()
        counts.update(steps)


def _step_count(counts, step):
    """The step count as a 0-d tensor.  It stays where the parameters are (on a GPU: no copy from
    the host per step): the last step's count tensor plus one, by an op inside the step.  Only a
    count with no predecessor (the first step, a loaded checkpoint) is made from the host."""
    prev = counts.get(step - 1)
    return prev + 1 if prev is not None else scalar(step, dtypes.int64)


class AdamW(Adam):
    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)
