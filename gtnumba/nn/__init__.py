"""gtnumba.nn: modules, layers and the functional API (also re-exported here: nn.relu, nn.softmax, ...).

    from gtnumba import nn
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    loss = nn.cross_entropy(model(x), labels)

PyTorch's semantics (Linear keeps its weight as (out, in)); GT's nn is gtnumba.client.nn.  `nn.SGD` is
GT's `gt.nn.SGD(params, lr)`.
"""
from . import functional, init
from .attention import MultiHeadAttention
from .functional import *  # noqa: F401,F403  (nn.relu, nn.softmax, nn.cross_entropy, ...)
from .functional import __all__ as _functional_names
from .layers import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, Dropout, Embedding, Flatten, GELU, Identity,
                     LayerNorm, Linear, LogSoftmax, ModuleDict, ModuleList, MSELoss, NLLLoss, ReLU, Sequential,
                     Sigmoid, SiLU, Softmax, Tanh)
from .module import Module, Parameter
from .sgd import SGD

F = functional

__all__ = ["Module", "Parameter", "Linear", "LayerNorm", "Embedding", "Dropout", "Sequential", "ModuleList",
           "ModuleDict", "Identity", "ReLU", "GELU", "Tanh", "Sigmoid", "SiLU", "Softmax", "LogSoftmax",
           "Flatten", "MultiHeadAttention", "MSELoss", "CrossEntropyLoss", "BCELoss", "BCEWithLogitsLoss",
           "NLLLoss", "SGD", "functional", "init", "F"] + list(_functional_names)
