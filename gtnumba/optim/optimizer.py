"""Optimizer base: param groups (PyTorch's layout), per-parameter state, zero_grad, state_dict.

Subclasses implement `_update(group, params_with_grads)`; each parameter update is one fused op
from the op table, recorded under no_grad and stored with `p.data = new_p`.  Learning rates and
step counts go in as 0-d tensors so a schedule that changes them keeps the same cached plan.
The end of `step()` materializes everything pending (the whole training step is one plan).
"""
import copy
import math

import numpy as np

from .. import dtypes
from ..creation import tensor as _tensor
from ..creation import zeros as _zeros
from ..functions import enable_grad, no_grad
from ..sched import materialize
from ..sched.executor import give_back
from .._tensor import Tensor


def scalar(value, dtype):
    """A 0-d tensor input for an update op, in the parameter's dtype."""
    return _tensor(np.array(value, dtype=dtype), dtype=dtype)


def zeros_like(p):
    return _zeros(p.shape, dtype=p.dtype)


class _Required:
    def __repr__(self):
        return "<required parameter>"


required = _Required()


def _check_number(who, name, value, low=0.0, high=None, low_open=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: {name} must be a number, got {value!r}") from None
    if math.isnan(v) or v < low or (low_open and v == low) or (high is not None and v >= high):
        rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{who}: invalid {name} {value!r}; it must lie in {rng}")
    return v


class Optimizer:
    """Base class: `Optimizer(params, defaults)`; params is an iterable of tensors or of param-group dicts."""

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}                      # parameter Tensor -> dict of state
        self.param_groups = []
        if hasattr(params, "parameters") and callable(params.parameters):
            params = params.parameters()     # a Module
        if isinstance(params, Tensor):
            raise TypeError(f"{self._name()}: params should be an iterable of Tensors or dicts, got a single "
                            f"Tensor of shape {params.shape}; wrap it in a list")
        groups = list(params)
        if not groups:
            raise ValueError(f"{self._name()}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def _name(self):
        return type(self).__name__

    def add_param_group(self, group):
        if not isinstance(group, dict):
            raise TypeError(f"{self._name()}: a param group must be a dict, got {type(group).__name__}")
        group = dict(group)
        params = group.get("params")
        if params is None:
            raise ValueError(f"{self._name()}: a param group needs a 'params' entry")
        if isinstance(params, Tensor):
            params = [params]
        elif hasattr(params, "parameters") and callable(params.parameters):
            params = params.parameters()
        params = list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        mine = set()
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{self._name()}: parameter {i} is a {type(p).__name__}, not a Tensor")
            if not dtypes.is_float(p.dtype) or not p.requires_grad or not p.is_leaf:
                raise ValueError(f"{self._name()}: parameter {i} (shape {p.shape}, {p.dtype}) must be a floating-"
                                 f"point leaf tensor with requires_grad=True")
            if id(p) in seen:
                raise ValueError(f"{self._name()}: parameter {i} (shape {p.shape}) appears in more than one "
                                 f"param group")
            if id(p) in mine:
                raise ValueError(f"{self._name()}: parameter {i} (shape {p.shape}) appears twice in a param group")
            mine.add(id(p))
        group["params"] = params
        for key, default in self.defaults.items():
            if default is required and key not in group:
                raise ValueError(f"{self._name()}: param group does not give the required hyper-parameter "
                                 f"{key!r}")
            group.setdefault(key, default)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group):
        pass

    # ---- the step -----------------------------------------------------------------------------
    def zero_grad(self, set_to_none=True):
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    give_back(p, "grad")     # its buffer serves the next step's gradient
                elif p.grad is not None:
                    p.grad = zeros_like(p)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad():
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    self._update(group, params)
        materialize()
        return loss

    def _update(self, group, params):
        raise NotImplementedError

    @staticmethod
    def _lr_tensors(group, params):
        """One 0-d learning-rate tensor per dtype in the group."""
        return {dt: scalar(group["lr"], dt) for dt in {p.dtype for p in params}}

    # ---- checkpointing ------------------------------------------------------------------------
    def state_dict(self):
        """{'state': {index: {name: ndarray or number}}, 'param_groups': [{hyper-params, 'params': [index]}]}."""
        index, groups = 0, []
        state = {}
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                if p in self.state:
                    state[index] = {k: (v.numpy() if isinstance(v, Tensor) else copy.deepcopy(v))
                                    for k, v in self.state[p].items()}
                ids.append(index)
                index += 1
            g = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            g["params"] = ids
            groups.append(g)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore state and hyper-parameters saved by state_dict(); checks everything before changing anything."""
        who = f"{self._name()}.load_state_dict"
        try:
            saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        except (TypeError, KeyError):
            raise ValueError(f"{who}: expected a dict with 'state' and 'param_groups'") from None
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{who}: the checkpoint has {len(saved_groups)} param groups, the optimizer has "
                             f"{len(self.param_groups)}")
        mapping = {}
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{who}: param group {gi} has {len(group['params'])} parameters, the checkpoint's "
                                 f"has {len(saved['params'])}")
            for idx, p in zip(saved["params"], group["params"]):
                mapping[idx] = p
        new_state = {}
        for idx, entries in saved_state.items():
            idx_key = idx if idx in mapping else int(idx) if str(idx).lstrip("-").isdigit() else idx
            if idx_key not in mapping:
                raise ValueError(f"{who}: the checkpoint has state for parameter index {idx!r}, which is in no "
                                 f"param group")
            p = mapping[idx_key]
            converted = {}
            for name, value in entries.items():
                if isinstance(value, (np.ndarray, Tensor)):
                    arr = value.numpy() if isinstance(value, Tensor) else value
                    if tuple(arr.shape) != tuple(p.shape):
                        raise ValueError(f"{who}: state {name!r} of parameter {idx_key} has shape {tuple(arr.shape)}, "
                                         f"the parameter has shape {p.shape}")
                    converted[name] = _tensor(np.array(arr, dtype=p.dtype)).reshape(p.shape)
                else:
                    converted[name] = copy.deepcopy(value)
            new_state[p] = converted
        for saved, group in zip(saved_groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    group[k] = copy.deepcopy(v)
        self.state = new_state

    def __repr__(self):
        lines = [f"{self._name()} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(group):
                if k != "params":
                    lines.append(f"    {k}: {group[k]}")
        lines.append(")")
        return "\n".join(lines)
