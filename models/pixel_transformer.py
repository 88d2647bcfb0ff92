"""The Pixel Transformer and its training command.

Every token is one whole image: a sequence of ``seq_len`` images of ``img_size x img_size``
pixels is flattened image by image, embedded with ``Linear(img*img, E)``, given a learnable
positional table sliced to the sequence length (``pos[:seq_len]``), run through ``L`` pre-norm
transformer blocks, mean-pooled over the sequence and classified.

    python -m models.pixel_transformer                       # digits data, CPU or every GPU
    python -m models.pixel_transformer --workers 2           # two CPU Dask worker processes
    python -m models.pixel_transformer --gpus 8 --report report.html
    python -m models.pixel_transformer --out runs/pt --resume

The model uses only gtnumba's public API (``gt`` and ``gt.nn``); see ``--help`` for the command.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time

import gtnumba as gt
from gtnumba import nn

__all__ = ["PixelTransformer", "Block", "build_parser", "main", "DEFAULTS"]


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + ff(ln2(x))."""

    def __init__(self, embed_dim, heads, ff_dim, dropout=0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(embed_dim)
        self.attn = nn.MultiHeadAttention(embed_dim, heads, dropout=dropout)
        self.ln2 = nn.LayerNorm(embed_dim)
        self.ff1 = nn.Linear(embed_dim, ff_dim)
        self.act = nn.GELU()
        self.ff2 = nn.Linear(ff_dim, embed_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.ff2(self.act(self.ff1(self.ln2(x)))))


class PixelTransformer(nn.Module):
    """Images in, class logits out: (batch, seq, img, img) or (batch, seq, img*img) -> (batch, classes).

    Defaults are the first user's model: img 200, seq 4, E 128, 4 heads, 2 layers, ff 256, 10 classes.
    ``max_len`` rows of positional table are learned (default: max(seq_len, 16)); a sequence of
    length s uses ``pos[:s]``. A final LayerNorm before pooling completes the pre-norm stack.
    """

    def __init__(self, img_size=200, seq_len=4, embed_dim=128, heads=4, layers=2, ff_dim=256, num_classes=10,
                 dropout=0.0, max_len=None):
        super().__init__()
        self.img_size, self.seq_len, self.num_classes = img_size, seq_len, num_classes
        self.max_len = max(seq_len, 16) if max_len is None else max_len
        self.embed = nn.Linear(img_size * img_size, embed_dim)
        self.pos = nn.Parameter(gt.randn(self.max_len, embed_dim) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(embed_dim, heads, ff_dim, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        b, s = x.shape[0], x.shape[1]
        if s > self.max_len:
            raise ValueError(f"PixelTransformer: sequence length {s} exceeds the positional table "
                             f"({self.max_len} rows)")
        h = self.embed(x.reshape(b, s, self.img_size * self.img_size)) + self.pos[:s]
        h = self.drop(h)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(axis=1))


# ---- the command ------------------------------------------------------------------------------
DEFAULTS = dict(img_size=200, seq_len=4, n_train=16000, n_test=1000)

DESCRIPTION = """\
Train the Pixel Transformer (each token is a whole image) with gtnumba.

Where it runs: --gpus N starts one Dask worker per GPU (default: every visible GPU); on a
machine without GPUs, or with --gpus 0, it trains in-process on the CPU (no Dask) unless
--workers N asks for N CPU Dask worker processes; --scheduler ADDR joins a running cluster.
With Dask, the dashboard address is printed and --report writes Dask's performance report.

Data (--data): 'digits' (default) renders scikit-learn's 8x8 handwritten digit scans, shipped
with scikit-learn (no network), at --img-size with random rotation, scale, shift and noise;
train and held-out sequences are built from disjoint scans. The label of a sequence is chosen
by --label (default 'max': the largest digit in the sequence; 10 classes). Chance level is 10%
for a uniform guess and about 34% (1 - 0.9^4) for always answering 9, the most frequent class
with 4 tokens; the label needs every token (any one of them may hold the maximum) and is learned
well above chance. 'sum_mod10' (sum of the digits mod 10) is parity-like: no token alone says
anything about it, so a model trained on the label alone barely learns it; 'sum' has 9*seq+1
classes. 'synthetic' is random pixels and random labels (nothing to learn; for throughput).
PATH.npz: your arrays X (n, seq, img, img) or (n, seq, img*img) and integer y (n,), split
into train / held-out rows (80/20, seeded) and standardized with the train rows' mean and std.

Output (--out DIR): metrics.jsonl (one JSON line per epoch), curves.png (loss and accuracy),
samples.png (held-out sequences with true and predicted labels) and checkpoint.npz (model,
optimizer, scheduler, step, epoch; saved atomically every epoch, the previous one kept as
checkpoint.prev.npz). --resume continues from it and ends with the same parameters as an
uninterrupted run with the same flags.
"""

EPILOG = """\
exit status: 0 done; 2 bad flags or data (e.g. --gpus 8 with fewer GPUs visible); 130 interrupted.
"""


def _positive(name):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v
    return parse


def _nonneg_int(name):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0, got {v}")
        return v
    return parse


def _positive_float(name):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not v > 0 or not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name} must be a positive number, got {text}")
        return v
    return parse


def build_parser():
    from .data import LABELS
    p = argparse.ArgumentParser(prog="python -m models.pixel_transformer", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("devices")
    d.add_argument("--gpus", type=_nonneg_int("--gpus"), default=None, metavar="N",
                   help="GPUs to train on, one Dask worker each (default: every visible GPU; none visible: "
                        "the CPU); --gpus 0 forces the CPU")
    d.add_argument("--workers", type=_positive("--workers"), default=None, metavar="N",
                   help="train on N CPU Dask worker processes (gt.init(workers=N)) instead of in-process")
    d.add_argument("--scheduler", default=None, metavar="ADDR",
                   help="join a running Dask cluster at ADDR, e.g. tcp://host:8786 (gt.init(scheduler=ADDR))")
    d.add_argument("--threads", type=_positive("--threads"), default=None, metavar="N",
                   help="CPU threads of this process's BLAS and Numba kernels (default: the idle CPUs: "
                        "all of them on a quiet machine, 1 when the load average already fills them; "
                        "threaded BLAS on busy cores runs several times slower than one thread)")
    d.add_argument("--dashboard", default="127.0.0.1:8787", metavar="ADDR",
                   help="address of the Dask dashboard of a cluster started here (default: 127.0.0.1:8787, "
                        "this machine only; 0.0.0.0:8787 opens it to the network; :0 picks a free port)")
    m = p.add_argument_group("model (defaults: the first user's Pixel Transformer)")
    m.add_argument("--img-size", type=_positive("--img-size"), default=None, metavar="N",
                   help="images are N x N pixels; every image is one token (default: 200, or the .npz's)")
    m.add_argument("--seq-len", type=_positive("--seq-len"), default=None, metavar="N",
                   help="images per sequence (default: 4, or the .npz's)")
    m.add_argument("--embed-dim", type=_positive("--embed-dim"), default=128, metavar="E",
                   help="embedding width E (default: 128)")
    m.add_argument("--heads", type=_positive("--heads"), default=4, metavar="H",
                   help="attention heads; must divide E (default: 4)")
    m.add_argument("--layers", type=_positive("--layers"), default=2, metavar="L",
                   help="transformer blocks (default: 2)")
    m.add_argument("--ff-dim", type=_positive("--ff-dim"), default=256, metavar="F",
                   help="feed-forward hidden width (default: 256)")
    m.add_argument("--dropout", type=float, default=0.0, metavar="P",
                   help="dropout probability in the blocks (default: 0)")
    t = p.add_argument_group("training")
    t.add_argument("--batch-size", type=_positive("--batch-size"), default=64, metavar="B",
                   help="sequences per step (default: 64)")
    t.add_argument("--epochs", type=_positive("--epochs"), default=3, metavar="N",
                   help="passes over the training sequences (default: 3)")
    t.add_argument("--lr", type=_positive_float("--lr"), default=1e-3,
                   help="peak learning rate (default: 1e-3)")
    t.add_argument("--embed-lr-scale", type=_positive_float("--embed-lr-scale"), default=None, metavar="S",
                   help="the img*img-input embedding learns at lr x S (default: min(1, sqrt(E / img^2)), 0.057 "
                        "for the default model; at the full lr it outgrows the residual stream and the blocks "
                        "stop mattering)")
    t.add_argument("--optimizer", choices=("sgd", "adam"), default="adam",
                   help="adam (gt.optim.Adam, or AdamW with --weight-decay) or sgd (momentum 0.9) "
                        "(default: adam)")
    t.add_argument("--weight-decay", type=float, default=0.0, metavar="W",
                   help="weight decay (decoupled, AdamW, for adam; L2 for sgd) (default: 0)")
    t.add_argument("--lr-schedule", choices=("constant", "cosine"), default="cosine",
                   help="after the warmup: constant, or cosine decay to 0 at the last step "
                        "(gt.optim.warmup_cosine) (default: cosine)")
    t.add_argument("--warmup-steps", type=_nonneg_int("--warmup-steps"), default=50, metavar="N",
                   help="steps of linear learning-rate warmup (default: 50)")
    t.add_argument("--seed", type=_nonneg_int("--seed"), default=0,
                   help="seeds the data, the initial weights and the batch order (default: 0)")
    t.add_argument("--stop-after-epoch", type=_positive("--stop-after-epoch"), default=None, metavar="E",
                   help="end this run after epoch E (checkpoint saved) although --epochs plans more; "
                        "a later --resume continues it")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", metavar="digits|synthetic|PATH.npz",
                   help="digits (default; real handwritten digits, offline), synthetic (random), or an .npz "
                        "with arrays X and y")
    g.add_argument("--label", choices=sorted(LABELS), default="max",
                   help="label rule for --data digits: max (default; largest digit, 10 classes), sum "
                        "(9*seq+1 classes), sum_mod10 (parity-like, hard)")
    g.add_argument("--n-train", type=_positive("--n-train"), default=None, metavar="N",
                   help="training sequences (default: 16000: each has its own random rotation, scale, shift "
                        "and noise, rendered per batch; .npz: all its train rows)")
    g.add_argument("--n-test", type=_positive("--n-test"), default=None, metavar="N",
                   help="held-out sequences (default: 1000; .npz: all its held-out rows)")
    g.add_argument("--num-classes", type=_positive("--num-classes"), default=None, metavar="C",
                   help="classes of --data synthetic (default: 10); other data sets define their own")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="runs/pixel_transformer", metavar="DIR",
                   help="directory for metrics.jsonl, curves.png, samples.png and checkpoint.npz "
                        "(default: runs/pixel_transformer)")
    o.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint.npz (same flags required; a missing checkpoint "
                        "starts a new run)")
    o.add_argument("--report", default=None, metavar="FILE.html",
                   help="write Dask's performance report of the training epochs to FILE.html "
                        "(gt.performance_report; needs Dask: --gpus, --workers or --scheduler)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar (the per-epoch lines remain)")
    return p


def _resolve(args):
    is_npz = args.data not in ("digits", "synthetic")
    for k, v in DEFAULTS.items():
        given = getattr(args, k) is not None
        setattr(args, k + "_given", given)
        if not given and not is_npz:
            setattr(args, k, v)
    if not 0.0 <= args.dropout < 1.0:
        raise_usage(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.weight_decay < 0:
        raise_usage(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.embed_dim % args.heads:
        raise_usage(f"--heads {args.heads} must divide --embed-dim {args.embed_dim}")
    if args.num_classes is not None and args.data != "synthetic":
        raise_usage("--num-classes applies to --data synthetic only")
    if args.label != "max" and args.data != "digits":
        raise_usage("--label applies to --data digits only")
    if args.report and not (args.workers or args.scheduler or args.gpus):
        from gtnumba.cluster import visible_gpus
        if args.gpus == 0 or not visible_gpus():
            raise_usage("--report needs a Dask cluster: add --workers N, --gpus N or --scheduler ADDR")


def raise_usage(msg):
    from .train import UsageError
    raise UsageError(msg)


def run(args):
    from . import checkpoint, report
    from . import train as T
    t_start = time.perf_counter()
    _resolve(args)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    train_set, test_set = T.load_data(args)
    args.img_size, args.seq_len = train_set.img_size, train_set.seq_len
    args.n_train, args.n_test = len(train_set), len(test_set)
    ckpt = os.path.join(out, T.CHECKPOINT)
    saved = T.read_checkpoint(ckpt, args) if args.resume and checkpoint.exists(ckpt) else None
    where = T.setup_device(args)
    threads = T.set_threads(args.threads)
    T.say(f"device: {where}; {threads} CPU thread(s) in this process")
    client = T.dask_client()
    if client is not None:
        T.say(f"Dask dashboard: {client.dashboard_link}")
    chance = report.chance_levels(test_set.y, test_set.n_classes)
    rule = f", label {args.label}" if args.data == "digits" else ""
    T.say(f"data: {args.data}{rule}: {len(train_set)} train / {len(test_set)} held-out sequences of "
          f"{args.seq_len} images {args.img_size}x{args.img_size}, {test_set.n_classes} classes; chance "
          f"{100 * chance['uniform']:.1f}% (uniform guess), {100 * chance['majority']:.1f}% (always class "
          f"{chance['majority_class']})")

    gt.manual_seed(args.seed)
    model = PixelTransformer(args.img_size, args.seq_len, args.embed_dim, args.heads, args.layers, args.ff_dim,
                             test_set.n_classes, dropout=args.dropout)
    opt = T.make_optimizer(args, model)
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    sched = T.make_scheduler(args, opt, total_steps)
    T.say(f"model: PixelTransformer(img {args.img_size}, seq {args.seq_len}, E {args.embed_dim}, "
          f"{args.heads} heads, {args.layers} layers, ff {args.ff_dim}), {model.num_parameters():,} parameters; "
          f"{args.optimizer} lr {args.lr:g} (embedding x{T.embed_lr_scale(args):.3g}; {args.lr_schedule}, "
          f"warmup {min(args.warmup_steps, total_steps)}), "
          f"batch {args.batch_size}, {args.epochs} epochs x {steps_per_epoch} steps")

    history, step_losses, step, train_seconds, first = [], [], 0, 0.0, 1
    if args.resume:
        if saved is not None:
            meta = saved[1]
            T.restore(*saved, model, opt, sched, args, total_steps)
            saved = None
            history, step_losses = meta["history"], meta["step_losses"]
            step, train_seconds, first = meta["step"], meta["train_seconds"], meta["epoch"] + 1
            report.write_metrics(out, history)       # metrics.jsonl always matches the checkpoint
            T.say(f"resumed from {ckpt}: epoch {meta['epoch']}, step {step}")
        else:
            T.say(f"--resume: no checkpoint in {out}; starting a new run")
    last = min(args.epochs, args.stop_after_epoch or args.epochs)
    # read where the step runs: in-process here, on a Dask mesh by each worker for its own part
    px_train, px_test = gt.data.Rows(T.Pixels(train_set)), gt.data.Rows(T.Pixels(test_set))
    k = min(6, len(test_set))

    use_report = args.report and client is not None
    ctx = gt.performance_report(os.path.abspath(args.report)) if use_report else contextlib.nullcontext()
    with ctx:
        for epoch in range(first, last + 1):
            t0 = time.perf_counter()
            res, step = T.train_epoch(model, opt, sched, px_train, train_set.y, args, epoch, step,
                                      progress=not args.no_progress)
            test_loss, test_acc, preds = T.evaluate(model, px_test, test_set.y, args.batch_size)
            train_seconds += res.seconds
            row = {"epoch": epoch, "step": step, "train_loss": res.loss, "train_acc": res.acc,
                   "test_loss": test_loss, "test_acc": test_acc, "lr": opt.param_groups[0]["lr"],
                   "samples_per_s": res.samples / res.seconds, "seconds": time.perf_counter() - t0}
            history.append(row)
            step_losses.extend(res.step_losses)
            T.save_checkpoint(ckpt, model, opt, sched, args, epoch, step, history, step_losses, train_seconds)
            report.write_metrics(out, history)
            report.plot_curves(out, history, step_losses, chance["majority"],
                               title=f"Pixel Transformer on {args.data}{rule}",
                               chance_label=f"chance: always {chance['majority_class']}")
            idx = list(range(k))
            report.plot_samples(out, test_set.images(idx), test_set.y[idx], preds[idx],
                                test_set.digits[idx] if test_set.digits is not None else None,
                                title=f"held-out sequences after epoch {epoch}")
            T.say(f"epoch {epoch}/{args.epochs}: train loss {res.loss:.4f} acc {100 * res.acc:.1f}% | held-out "
                  f"loss {test_loss:.4f} acc {100 * test_acc:.1f}% | {row['samples_per_s']:.1f} samples/s, "
                  f"{row['seconds']:.1f} s")

    wall = time.perf_counter() - t_start
    if history:
        h = history[-1]
        n_seen = len(history) * len(train_set)
        T.say(f"done: epoch {h['epoch']}/{args.epochs}, held-out accuracy {100 * h['test_acc']:.1f}% "
              f"(chance {100 * chance['majority']:.1f}% always-{chance['majority_class']}, "
              f"{100 * chance['uniform']:.1f}% uniform), held-out loss {h['test_loss']:.4f}")
        T.say(f"time: {wall:.1f} s this run; training {train_seconds:.1f} s for {n_seen} sequences, "
              f"{n_seen / max(train_seconds, 1e-9):.1f} samples/s")
    files = [os.path.join(out, f) for f in (report.METRICS, report.CURVES, report.SAMPLES, T.CHECKPOINT)]
    T.say(f"files: {', '.join(files + ([os.path.abspath(args.report)] if use_report else []))}")
    return 0


def main(argv=None):
    from .train import UsageError
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last finished epoch is in {os.path.join(args.out, 'checkpoint.npz')} "
              f"(continue with --resume)", file=sys.stderr)
        return 130
    finally:
        from .train import dask_client
        if dask_client() is not None:
            gt.shutdown()


if __name__ == "__main__":
    sys.exit(main())
