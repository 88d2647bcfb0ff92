"""SGD with momentum, dampening, weight decay and Nesterov momentum (PyTorch's formulas).

Each parameter update is one fused `sgd_update` op:
    d = g + weight_decay * p
    buf = d (first step) or momentum * buf + (1 - dampening) * d
    d = d + momentum * buf (nesterov) or buf
    p = p - lr * d
"""
from .._tensor import apply
from .optimizer import Optimizer, _check_number, required


class SGD(Optimizer):
    def __init__(self, params, lr=required, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov)
        super().__init__(params, defaults)

    def _check_group(self, group):
        _check_number("SGD", "learning rate", group["lr"])
        _check_number("SGD", "momentum", group["momentum"])
        _check_number("SGD", "dampening", group["dampening"])
        _check_number("SGD", "weight_decay", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"SGD: nesterov momentum needs momentum > 0 and dampening = 0, got momentum="
                             f"{group['momentum']} and dampening={group['dampening']}")

    def _update(self, group, params):
        self._check_group(group)
        lrs = self._lr_tensors(group, params)
        momentum = float(group["momentum"])
        attrs = dict(momentum=momentum, dampening=float(group["dampening"]),
                     weight_decay=float(group["weight_decay"]), nesterov=bool(group["nesterov"]))
        for p in params:
            state = self.state.setdefault(p, {}) if momentum else {}
            buf = state.get("momentum_buffer")
            first = buf is None
            new_p, new_buf = apply("sgd_update", p, p.grad, p.grad if first else buf, lrs[p.dtype],
                                   first_step=first, **attrs)
            p.data = new_p
            if momentum:
                state["momentum_buffer"] = new_buf
