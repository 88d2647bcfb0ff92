"""GT's `gt.nn.SGD(params, lr)`: plain SGD whose zero_grad() zeroes the gradients (GT) rather than
dropping them; gtnumba.optim.SGD underneath (one fused update per parameter, under no_grad)."""
from ..optim import SGD as _OptimSGD


class SGD(_OptimSGD):
    def __init__(self, params, lr=0.01):
        super().__init__(params, lr=lr)
        self.params = [p for g in self.param_groups for p in g["params"]]

    @property
    def lr(self):
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        for group in self.param_groups:
            group["lr"] = value

    def zero_grad(self, set_to_none=False):
        super().zero_grad(set_to_none=set_to_none)
