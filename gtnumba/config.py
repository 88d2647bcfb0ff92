"""GT's sharding configuration: named signals, each with a layout for the forward and a signal for the
backward, loaded from YAML or registered from Python.

    layer1:                 # a signal name, used by gt.signal.context("layer1")
      shard:
        axis: 0             # Shard(0) over the workers; `replicated: true` means Replicate
        workers: [0, 1]     # optional; gtnumba lays a tensor out over all workers of the mesh
      backward: layer1_bwd  # optional: the signal whose layout the gradients get
    layer1_bwd:
      shard: {axis: 1}

`GT_CONFIG=path.yaml` loads a file when gtnumba is imported.
"""
import os
from dataclasses import dataclass, field
from typing import List, Optional

_SIGNAL_KEYS = {"shard", "backward", "compile"}
_SHARD_KEYS = {"axis", "workers", "replicated"}


@dataclass
class ShardConfig:
    """How a signal lays tensors out: Shard(axis), or Replicate when `replicated`."""
    axis: int = 0
    workers: Optional[List[int]] = None
    replicated: bool = False

    def __post_init__(self):
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"ShardConfig: axis must be an int, got {self.axis!r}")
        if self.workers is not None:
            if not isinstance(self.workers, (list, tuple)) or not all(
                    isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in self.workers):
                raise TypeError(f"ShardConfig: workers must be a list of worker numbers >= 0, got {self.workers!r}")
            self.workers = list(self.workers)
        if not isinstance(self.replicated, bool):
            raise TypeError(f"ShardConfig: replicated must be true or false, got {self.replicated!r}")


@dataclass
class SignalConfig:
    """A named signal: its forward layout (`shard`, None: no layout) and its backward signal's name.
    `compile` is accepted for GT configs; gtnumba compiles every step anyway (plan cache)."""
    shard: Optional[ShardConfig] = None
    backward_signal: Optional[str] = None
    compile: bool = False

    def __post_init__(self):
        if self.shard is not None and not isinstance(self.shard, ShardConfig):
            raise TypeError(f"SignalConfig: shard must be a ShardConfig or None, got {type(self.shard).__name__}")
        if self.backward_signal is not None and not isinstance(self.backward_signal, str):
            raise TypeError(f"SignalConfig: backward_signal must be a signal name, got {self.backward_signal!r}")


def _parse_signal(name, entry):
    where = f"config signal {name!r}"
    if entry is None:
        return SignalConfig()
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with keys {sorted(_SIGNAL_KEYS)}, got {entry!r}")
    unknown = set(entry) - _SIGNAL_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(_SIGNAL_KEYS)})")
    shard = entry.get("shard")
    if shard is not None:
        if not isinstance(shard, dict) or set(shard) - _SHARD_KEYS:
            raise ValueError(f"{where}: `shard` must be a mapping with keys among {sorted(_SHARD_KEYS)}, "
                             f"got {shard!r}")
        try:
            shard = ShardConfig(**shard)
        except TypeError as e:
            raise ValueError(f"{where}: {e}") from None
    try:
        return SignalConfig(shard=shard, backward_signal=entry.get("backward"), compile=bool(entry.get("compile")))
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


@dataclass
class Config:
    """The signals known to this process (one global instance: get_config())."""
    signals: dict = field(default_factory=dict)

    def load(self, path):
        """Add the signals of a YAML file; a bad file fails here, naming the signal and key."""
        import yaml
        if not os.path.exists(path):
            raise FileNotFoundError(f"load_config: no config file at {path!r}")
        with open(path) as f:
            raw = yaml.safe_load(f)
        if raw is None:
            return self
        if not isinstance(raw, dict):
            raise ValueError(f"load_config: {path!r} must map signal names to settings, got {type(raw).__name__}")
        parsed = {str(name): _parse_signal(name, entry) for name, entry in raw.items()}
        self.signals.update(parsed)
        return self

    def register_signal(self, name, config):
        if not isinstance(name, str) or not name:
            raise TypeError(f"register_config: the signal name must be a non-empty string, got {name!r}")
        if not isinstance(config, SignalConfig):
            raise TypeError(f"register_config({name!r}): expected a SignalConfig, got {type(config).__name__}")
        self.signals[name] = config

    def get_signal(self, name):
        return self.signals.get(name)

    def has_signal(self, name):
        return name in self.signals

    def clear(self):
        self.signals.clear()

    def load_from_env(self, env_var="GT_CONFIG"):
        path = os.environ.get(env_var)
        if path:
            self.load(path)


_CONFIG = Config()


def load_config(path):
    return _CONFIG.load(path)


def get_config():
    return _CONFIG


def get_signal_config(name):
    return _CONFIG.get_signal(name)


def register_config(name, config):
    _CONFIG.register_signal(name, config)
