"""Learning-rate schedulers (PyTorch's conventions): construction sets the epoch-0 lr; each
`step()` advances one epoch (or step) and writes the new lr into every param group.

Any loop can use them: they only read and write `optimizer.param_groups[i]['lr']`.
"""
import math


class LRScheduler:
    def __init__(self, optimizer, last_epoch=-1):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(self).__name__}: expected an optimizer with param_groups, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"{type(self).__name__}: param group {i} has no 'initial_lr' to resume "
                                   f"from with last_epoch={last_epoch}")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._last_lr = None
        self.step()

    def lr_at(self, epoch):
        """The lr of each param group at `epoch` (closed form)."""
        raise NotImplementedError

    def get_lr(self):
        return self.lr_at(self.last_epoch)

    def get_last_lr(self):
        return list(self._last_lr)

    def step(self, epoch=None):
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        lrs = self.lr_at(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = list(lrs)

    def state_dict(self):
        return {k: v for k, v in self.__dict__.items() if k != "optimizer" and not callable(v)
                and k != "lr_lambdas"}

    def load_state_dict(self, state_dict):
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in ("optimizer", "lr_lambdas")})


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(epoch); one function, or one per param group."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"LambdaLR: got {len(lr_lambda)} lr_lambdas for {n} param groups")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n
        for f in self.lr_lambdas:
            if not callable(f):
                raise TypeError(f"LambdaLR: lr_lambda must be callable, got {type(f).__name__}")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return [base * f(epoch) for base, f in zip(self.base_lrs, self.lr_lambdas)]


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if not isinstance(step_size, int) or step_size <= 0:
            raise ValueError(f"StepLR: step_size must be a positive int, got {step_size!r}")
        self.step_size, self.gamma = step_size, float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return [base * self.gamma ** (epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """lr = base_lr * gamma ** (number of milestones <= epoch)."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        k = sum(1 for m in self.milestones if m <= epoch)
        return [base * self.gamma ** k for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return [base * self.gamma ** epoch for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        if not isinstance(T_max, int) or T_max <= 0:
            raise ValueError(f"CosineAnnealingLR: T_max must be a positive int, got {T_max!r}")
        self.T_max, self.eta_min = T_max, float(eta_min)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        c = (1 + math.cos(math.pi * epoch / self.T_max)) / 2
        return [self.eta_min + (base - self.eta_min) * c for base in self.base_lrs]


class WarmupCosineLR(LRScheduler):
    """Linear warmup then cosine decay to min_lr, over optimizer steps 0 .. total_steps - 1.

    step s < warmup_steps:  lr = base_lr * (s + 1) / warmup_steps   (the first step already trains)
    step s >= warmup_steps: lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2,
                            t = min(1, (s - warmup_steps + 1) / (total_steps - warmup_steps))
    so the last step (total_steps - 1) runs at min_lr, and the lr stays there afterwards.
    """

    def __init__(self, optimizer, warmup_steps, total_steps, min_lr=0.0, last_epoch=-1):
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_cosine: warmup_steps must be an int >= 0, got {warmup_steps!r}")
        if not isinstance(total_steps, int) or total_steps <= 0 or total_steps < warmup_steps:
            raise ValueError(f"warmup_cosine: total_steps must be a positive int >= warmup_steps "
                             f"({warmup_steps}), got {total_steps!r}")
        if min_lr < 0:
            raise ValueError(f"warmup_cosine: min_lr must be >= 0, got {min_lr}")
        self.warmup_steps, self.total_steps, self.min_lr = warmup_steps, total_steps, float(min_lr)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        w, n = self.warmup_steps, self.total_steps
        out = []
        for base in self.base_lrs:
            if epoch < w:
                out.append(base * (epoch + 1) / w)
            else:
                t = 1.0 if n == w else min(1.0, (epoch - w + 1) / (n - w))
                out.append(self.min_lr + (base - self.min_lr) * (1 + math.cos(math.pi * t)) / 2)
        return out


def warmup_cosine(optimizer, warmup_steps, total_steps, min_lr=0.0):
    """Linear warmup over `warmup_steps`, then cosine decay to `min_lr` at step `total_steps - 1`."""
    return WarmupCosineLR(optimizer, warmup_steps, total_steps, min_lr)


_LRScheduler = LRScheduler
