"""Crash-safe training checkpoints: one ``.npz`` file, written atomically, previous one kept.

A checkpoint holds NumPy arrays (model parameters, optimizer moment buffers) plus a JSON
document (``meta``: epoch, step, optimizer hyper-parameters, scheduler state, the data/shuffle
RNG recipe, the run's config and its metrics history). It is stored as an ordinary ``.npz``
archive whose ``__meta__`` entry is the UTF-8 JSON, so it loads with ``allow_pickle=False``:

    arrays, meta = checkpoint.load("runs/pt/checkpoint.npz")

Saving never leaves a broken checkpoint behind:

1. the archive is written to a temporary file in the same directory, flushed and fsync'ed;
2. the current checkpoint (if any) is hard-linked to ``<name>.prev.npz`` (atomically, through
   ``os.replace`` of a temporary link), so the previous epoch stays loadable;
3. ``os.replace`` moves the temporary file over the checkpoint (atomic on POSIX and Windows);
4. the directory is fsync'ed so the rename itself survives a power cut.

A crash (or ``kill -9``) at any point leaves ``<name>.npz`` either as the old or the new
complete file; :func:`load` falls back to ``<name>.prev.npz`` if the main file is unreadable.
Leftover temporary files are removed by the next save.

Test hook: with ``PIXEL_TRANSFORMER_SAVE_PAUSE="EPOCH:SECONDS"`` in the environment, the save of
that epoch prints ``checkpoint: paused after writing <tmp>`` to stderr once its temporary file
is complete and sleeps ``SECONDS`` before replacing the checkpoint (so a test can kill the
process mid-save).
"""
from __future__ import annotations

import glob
import json
import os
import sys
import tempfile
import time

import numpy as np

META_KEY = "__meta__"
FORMAT = "gtnumba-pixel-transformer-checkpoint/1"


class CheckpointError(RuntimeError):
    """No loadable checkpoint (missing, truncated or not one of ours)."""


def prev_path(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.prev{ext or '.npz'}"


def _tmp_pattern(path: str) -> str:
    d, name = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{name}.tmp-*")


def _fsync_dir(d: str) -> None:
    if os.name != "posix":
        return
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pause_hook(tmp: str, meta: dict) -> None:
    spec = os.environ.get("PIXEL_TRANSFORMER_SAVE_PAUSE")
    if not spec:
        return
    epoch, _, seconds = spec.partition(":")
    if str(meta.get("epoch")) == epoch.strip():
        print(f"checkpoint: paused after writing {tmp}", file=sys.stderr, flush=True)
        time.sleep(float(seconds or 3600))


def save(path: str, arrays: dict, meta: dict) -> str:
    """Write ``arrays`` (name -> ndarray) and ``meta`` (JSON-able dict) to ``path`` atomically."""
    path = os.path.abspath(os.fspath(path))
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    for stale in glob.glob(_tmp_pattern(path)):        # left by a save that was killed
        try:
            os.remove(stale)
        except OSError:
            pass
    if META_KEY in arrays:
        raise ValueError(f"checkpoint.save: {META_KEY!r} is reserved")
    doc = dict(meta, format=FORMAT)
    blob = np.frombuffer(json.dumps(doc).encode("utf-8"), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **{META_KEY: blob}, **{k: np.asarray(v) for k, v in arrays.items()})
            fh.flush()
            os.fsync(fh.fileno())
        _pause_hook(tmp, doc)
        if os.path.exists(path):                         # keep the previous checkpoint loadable
            link = tmp + ".prev"
            try:
                os.link(path, link)
                os.replace(link, prev_path(path))
            except OSError:                              # no hard links here: copy instead
                import shutil
                shutil.copyfile(path, link)
                os.replace(link, prev_path(path))
        os.replace(tmp, path)
        _fsync_dir(d)
    except BaseException:
        for leftover in (tmp, tmp + ".prev"):
            try:
                os.remove(leftover)
            except OSError:
                pass
        raise
    return path


def _load_one(path: str):
    try:
        with np.load(path, allow_pickle=False) as f:
            if META_KEY not in f.files:
                raise CheckpointError(f"{path}: not a Pixel Transformer checkpoint (no {META_KEY})")
            meta = json.loads(bytes(f[META_KEY]).decode("utf-8"))
            arrays = {k: f[k] for k in f.files if k != META_KEY}
    except CheckpointError:
        raise
    except Exception as e:                               # truncated zip, bad JSON, ...
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    return arrays, meta


def load(path: str, fallback: bool = True):
    """``(arrays, meta)`` from ``path``; if it is missing or broken, from ``<name>.prev.npz``.

    Raises :class:`CheckpointError` when neither loads (FileNotFoundError is a subclass case:
    the message says which files were tried).
    """
    path = os.path.abspath(os.fspath(path))
    tried = []
    for p in ([path, prev_path(path)] if fallback else [path]):
        if not os.path.exists(p):
            tried.append(f"{p}: missing")
            continue
        try:
            arrays, meta = _load_one(p)
        except CheckpointError as e:
            tried.append(str(e))
            continue
        if p != path:
            print(f"checkpoint: {path} is not loadable ({tried[-1]}); using the previous one, {p}",
                  file=sys.stderr, flush=True)
        return arrays, meta
    raise CheckpointError("no loadable checkpoint: " + "; ".join(tried))


def exists(path: str) -> bool:
    path = os.fspath(path)
    return os.path.exists(path) or os.path.exists(prev_path(path))


# ---- optimizer / module state <-> flat arrays + JSON ------------------------------------------
def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def flatten_optimizer(state_dict: dict, prefix: str = "optim"):
    """An optimizer ``state_dict()`` as (arrays, JSON meta): arrays go to ``prefix/state/i/name``."""
    arrays, numbers = {}, {}
    for idx, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, np.ndarray):
                arrays[f"{prefix}/state/{idx}/{name}"] = value
            else:
                numbers.setdefault(str(idx), {})[name] = _jsonable(value)
    meta = {"param_groups": _jsonable(state_dict["param_groups"]), "scalars": numbers}
    return arrays, meta


def unflatten_optimizer(arrays: dict, meta: dict, prefix: str = "optim") -> dict:
    state = {}
    for key, value in arrays.items():
        if key.startswith(prefix + "/state/"):
            idx, name = key[len(prefix) + 7:].split("/", 1)
            state.setdefault(int(idx), {})[name] = value
    for idx, entries in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entries)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}
