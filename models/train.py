"""The training loop behind ``python -m models.pixel_transformer``: device set-up, data,
optimizer and schedule, epochs with a progress bar, held-out evaluation, checkpoints, resume.

Determinism (what makes ``--resume`` exact): the batch order of epoch ``e`` is
:func:`batch_order` ``(seed, e)``, a pure function; gtnumba's generator (dropout masks) is
reseeded from ``(seed, e)`` at the start of every epoch; the checkpoint holds the parameters,
the optimizer state (moments, step counts, hyper-parameters), the LR scheduler state, the
epoch and the step. A run of N epochs therefore ends with the same parameters as a run stopped
after any epoch and resumed.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

import gtnumba as gt
from gtnumba import nn

from . import checkpoint
from . import data as data_mod

CHECKPOINT = "checkpoint.npz"

# flags that define a run: --resume refuses a checkpoint made with different values
RUN_KEYS = ("data", "label", "n_train", "n_test", "img_size", "seq_len", "embed_dim", "heads", "layers",
            "ff_dim", "dropout", "batch_size", "lr", "optimizer", "weight_decay", "lr_schedule",
            "warmup_steps", "seed", "embed_lr_scale")


class UsageError(Exception):
    """A problem with the command line or its inputs: printed as ``error: ...``, exit code 2."""


def say(msg: str) -> None:
    print(msg, flush=True)


def dask_client():
    """The Dask client gtnumba runs on, or None: gt.client(), read through gtnumba.cluster because
    importing gtnumba.client (GT-style code does) replaces the attribute gt.client by that module."""
    from gtnumba import cluster
    return cluster.client()


# ---- device -----------------------------------------------------------------------------------
def setup_device(args) -> str:
    """Start or join Dask as the flags ask; return a one-line description of where it runs.

    --scheduler ADDR: join that cluster.  --gpus N (N > 0; default: every visible GPU): one Dask
    worker per GPU.  --workers N: N CPU worker processes.  Otherwise (no GPU, or --gpus 0):
    in-process on the CPU, no Dask.
    """
    from gtnumba.cluster import visible_gpus
    if args.gpus is not None and args.gpus < 0:
        raise UsageError(f"--gpus must be >= 0, got {args.gpus}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.gpus and args.workers:
        raise UsageError("--gpus N (one Dask worker per GPU) and --workers N (CPU workers) exclude each "
                         "other; pass one of them")
    try:
        if args.scheduler:
            gt.init(scheduler=args.scheduler)
            return f"Dask cluster at {args.scheduler}"
        if args.gpus is None and args.workers is None and dask_client() is not None:
            return "the Dask cluster gtnumba was started with (GT_AUTO_SHARD / GT_SCHEDULER)"
        gpus = len(visible_gpus()) if args.gpus is None and not args.workers else (args.gpus or 0)
        if gpus > 0:
            gt.init(gpus=gpus, dashboard=args.dashboard)
            return f"{gpus} GPU worker(s) on a local Dask cluster"
        if args.gpus == 0:
            os.environ["GTNUMBA_DEVICE"] = "cpu"        # also for the CPU worker processes
            gt.set_device("cpu")
        if args.workers:
            gt.init(gpus=0, workers=args.workers, dashboard=args.dashboard)
            return f"{args.workers} CPU worker process(es) on a local Dask cluster"
        if dask_client() is not None:          # GT_AUTO_SHARD, but --gpus 0 asked for in-process
            gt.shutdown()
        from gtnumba.kernels import backend
        return f"in-process ({backend.current()}; no Dask)"
    except (ValueError, ConnectionError, RuntimeError) as e:
        raise UsageError(str(e)) from None


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """The CPUs not already busy: all of them on a quiet machine, at least 1."""
    n = cpu_count()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return n
    return max(1, min(n, int(n - load + 0.5)))


def set_threads(n=None) -> int:
    """Limit this process's BLAS (threadpoolctl) and Numba thread pools to n (default: idle CPUs)."""
    n = default_threads() if n is None else n
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n)
    except ImportError:
        pass
    try:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass
    return n


# ---- data -------------------------------------------------------------------------------------
def load_data(args):
    kw = dict(img_size=args.img_size, seq_len=args.seq_len, n_train=args.n_train, n_test=args.n_test,
              seed=args.seed)
    if args.data == "digits":
        kw["label"] = args.label
    elif args.data == "synthetic":
        kw["n_classes"] = args.num_classes or 10
    else:
        kw = dict(img_size=args.img_size if args.img_size_given else None,
                  seq_len=args.seq_len if args.seq_len_given else None, seed=args.seed,
                  n_train=args.n_train if args.n_train_given else None,
                  n_test=args.n_test if args.n_test_given else None, normalize=True)
    try:
        train, test = data_mod.load(args.data, **kw)
    except (FileNotFoundError, ValueError, TypeError, ImportError) as e:    # DataError is a ValueError
        raise UsageError(f"--data: {e}") from None
    if len(train) == 0 or len(test) == 0:
        raise UsageError(f"--data {args.data}: need at least one train and one held-out sequence, got "
                         f"{len(train)} and {len(test)}")
    return train, test


class Pixels:
    """Rows of a split, rendered on first use and kept (up to ``budget`` bytes; beyond that the
    split is rendered batch by batch every time).  A gtnumba.data.Rows source: indexed by
    ``(rows, *slices)``; on a Dask mesh every worker gets its own copy (pickled without the
    kept pixels) and renders the rows of its own part of each batch."""

    def __init__(self, split, budget=4 << 30):
        self.split, self.budget = split, budget
        self.keep = split.nbytes <= budget or not split.is_lazy
        self.cache = np.empty(split.shape, np.float32) if self.keep and split.is_lazy else None
        self.done = np.zeros(len(split), bool)
        self.shape, self.dtype = split.shape, np.dtype(np.float32)

    def __getstate__(self):
        return {"split": self.split, "budget": self.budget}

    def __setstate__(self, state):
        self.__init__(state["split"], state["budget"])

    def __getitem__(self, key):
        idx, rest = (key[0], tuple(key[1:])) if isinstance(key, tuple) else (key, ())
        idx = np.asarray(idx, dtype=np.int64)
        if self.cache is None:
            cols = rest[1] if len(rest) == 2 and rest[0] == slice(None) else slice(None)
            rows = self.split.take(idx, cols)
            whole = rest[:1] in ((), (slice(None),))        # a view would cost Rows.read a copy
            return rows if whole else rows[(slice(None),) + rest[:1]]
        missing = idx[~self.done[idx]]
        if missing.size:
            self.cache[missing] = self.split.take(missing)
            self.done[missing] = True
        return self.cache[(idx,) + rest]

    def take(self, idx):
        return self[np.asarray(idx)]


def batch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the training rows in ``epoch`` (1-based): a pure function of (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n)


def epoch_seed(seed: int, epoch: int) -> int:
    """gtnumba's generator seed for ``epoch`` (dropout masks)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), 0xD809]).generate_state(1)[0])


# ---- optimizer and schedule -----------------------------------------------------------------
def embed_lr_scale(args) -> float:
    """--embed-lr-scale, or by default min(1, sqrt(E / (img*img))): 0.057 for the default model.

    With Adam every weight moves by about lr per step, so a unit with img*img inputs changes its
    output ~sqrt(img*img / E) times (more for correlated pixels) as fast as one with E inputs; at
    the full lr the 40000-pixel embedding outgrows the residual stream within a few hundred steps
    and the blocks' contributions vanish next to it (held-out accuracy 59% instead of 70%).
    """
    if args.embed_lr_scale is not None:
        return args.embed_lr_scale
    return min(1.0, math.sqrt(args.embed_dim / (args.img_size * args.img_size)))


def make_optimizer(args, model):
    """Two param groups: the blocks and head at --lr, the embedding at --lr x embed_lr_scale."""
    emb = [model.embed.weight, model.embed.bias]
    ids = {id(p) for p in emb}
    rest = [p for p in model.parameters() if id(p) not in ids]
    params = [{"params": rest}, {"params": emb, "lr": args.lr * embed_lr_scale(args)}]
    if args.optimizer == "sgd":
        return gt.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    if args.weight_decay:
        return gt.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    return gt.optim.Adam(params, lr=args.lr)


def make_scheduler(args, opt, total_steps: int):
    """One scheduler step per optimizer step: linear warmup over --warmup-steps, then constant
    or cosine decay to 0 at the last step (gt.optim.warmup_cosine)."""
    warmup = min(args.warmup_steps, total_steps)
    if args.lr_schedule == "cosine":
        return gt.optim.warmup_cosine(opt, warmup_steps=warmup, total_steps=total_steps)
    return gt.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)


# ---- one epoch -------------------------------------------------------------------------------
@dataclass
class EpochResult:
    loss: float
    acc: float
    seconds: float
    samples: int
    step_losses: list


def train_epoch(model, opt, sched, rows, y, args, epoch, step, progress=True):
    """One epoch over `rows` (a gtnumba.data.Rows of the training pixels) in batch_order."""
    from tqdm import tqdm
    model.train()
    gt.manual_seed(epoch_seed(args.seed, epoch))
    order = batch_order(args.seed, epoch, len(y))
    bar = tqdm(total=len(order), desc=f"epoch {epoch}/{args.epochs}", unit="seq", dynamic_ncols=True,
               mininterval=0.5, disable=not progress, file=sys.stderr)
    tot_loss = tot_correct = seen = 0
    step_losses = []
    start = time.perf_counter()
    chunks = [order[s:s + args.batch_size] for s in range(0, len(order), args.batch_size)]
    for idx, xb in rows.loader(chunks):
        yb = gt.tensor(y[idx])
        logits = model(xb)
        loss = nn.cross_entropy(logits, yb)
        correct = (logits.argmax(axis=-1) == yb).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()                      # the whole step (forward, backward, update) is one plan
        sched.step()
        step += 1
        lv = loss.item()
        if not math.isfinite(lv):
            bar.close()
            raise FloatingPointError(f"epoch {epoch}, step {step}: the loss is {lv}; lower --lr "
                                     f"(now {args.lr}) or use --lr-schedule cosine with --warmup-steps")
        b = len(idx)
        tot_loss += lv * b
        tot_correct += int(correct.item())
        seen += b
        step_losses.append([step, lv])
        rate = seen / (time.perf_counter() - start)
        bar.update(b)
        bar.set_postfix({"loss": f"{tot_loss / seen:.4f}", "acc": f"{100 * tot_correct / seen:.1f}%",
                         "samples/s": f"{rate:.1f}"}, refresh=False)
    bar.close()
    return EpochResult(tot_loss / seen, tot_correct / seen, time.perf_counter() - start, seen, step_losses), step


def evaluate(model, rows, y, batch_size):
    """Held-out loss, accuracy and predictions, under gt.no_grad() with model.eval()."""
    model.eval()
    tot_loss, preds = 0.0, []
    with gt.no_grad():
        chunks = [np.arange(s, min(s + batch_size, len(y))) for s in range(0, len(y), batch_size)]
        for idx, xb in rows.loader(chunks):
            yb = gt.tensor(y[idx])
            logits = model(xb)
            loss = nn.cross_entropy(logits, yb, reduction="sum")
            pred = logits.argmax(axis=-1)
            tot_loss += float(loss.item())
            preds.append(pred.numpy())
    model.train()
    preds = np.concatenate(preds).astype(np.int64)
    return tot_loss / len(y), float((preds == y).mean()), preds


# ---- checkpoints ------------------------------------------------------------------------------
def save_checkpoint(path, model, opt, sched, args, epoch, step, history, step_losses, train_seconds):
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt_arrays, opt_meta = checkpoint.flatten_optimizer(opt.state_dict())
    arrays.update(opt_arrays)
    meta = {
        "epoch": epoch, "step": step,
        "config": {k: getattr(args, k) for k in RUN_KEYS} | {"epochs": args.epochs},
        "optimizer": opt_meta,
        "scheduler": checkpoint._jsonable(sched.state_dict()),
        "data_rng": {"batch_order": "numpy.random.default_rng([seed, epoch, 0x5EED]).permutation(n_train)",
                     "gtnumba_seed": "SeedSequence([seed, epoch, 0xD809]) at each epoch start",
                     "seed": args.seed, "next_epoch": epoch + 1},
        "history": history, "step_losses": step_losses, "train_seconds": train_seconds,
    }
    checkpoint.save(path, arrays, meta)


def read_checkpoint(path, args):
    """The checkpoint to resume from, refused (UsageError) if it was made with other settings."""
    try:
        arrays, meta = checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        raise UsageError(f"--resume: {e}") from None
    saved = meta["config"]
    diff = [f"--{k.replace('_', '-')} {saved.get(k)!r} (now {getattr(args, k)!r})"
            for k in RUN_KEYS if saved.get(k) != getattr(args, k)]
    if diff:
        raise UsageError(f"--resume: the checkpoint in {os.path.dirname(path)} was made with different "
                         f"settings: {'; '.join(diff)}. Pass the same flags, or a new --out")
    return arrays, meta


def restore(arrays, meta, model, opt, sched, args, total_steps):
    """Load model, optimizer and scheduler state saved by save_checkpoint."""
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
    opt.load_state_dict(checkpoint.unflatten_optimizer(arrays, meta["optimizer"]))
    sched.load_state_dict(meta["scheduler"])
    saved_epochs = meta["config"].get("epochs")
    if saved_epochs != args.epochs and hasattr(sched, "total_steps"):
        say(f"note: --epochs changed from {saved_epochs} to {args.epochs}; the cosine schedule now "
            f"ends at step {total_steps}")
        sched.total_steps = total_steps
        sched.step(sched.last_epoch)     # rewrite the lr for the new schedule
