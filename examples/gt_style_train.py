"""The first user's training loop, as written for GT, running on gtnumba.

The only change from the GT original is the import line:

    import gt; from gt.client import nn            ->   import gtnumba as gt; from gtnumba.client import nn

Everything else is GT style: a transformer whose embedding and classifier are GT's
``nn.Linear`` (weight (in, out), ``x @ W + b``) and whose blocks are raw tensors with
``requires_grad=True`` collected in ``self._parameters``, a mean-squared error against one-hot
targets, and a hand-written SGD step under ``gt.no_grad()`` (``param -= lr * param.grad`` then
``param.grad.zero_()``), reading ``loss.data.numpy()`` every step.

    python examples/gt_style_train.py                     # in-process, digits at 16x16
    GT_AUTO_SHARD=1 python examples/gt_style_train.py     # the same loop on a local Dask cluster
    GT_AUTO_SHARD=1 GT_WORKERS=2 python examples/gt_style_train.py --steps 100

With ``GT_AUTO_SHARD=1`` importing gtnumba starts a Dask cluster (one worker per GPU, or CPU
workers: GT_WORKERS of them) and every step runs there; the batch is sharded along dim 0 and the
weights are replicated, with no change to this file. The data are the Pixel Transformer's
``digits`` sequences (models/data.py; label: the largest digit of the sequence), at a small
image size by default so that it runs in seconds on a laptop.
"""
import argparse
import math
import os
import sys
import time

import numpy as np

import gtnumba as gt
from gtnumba.client import nn

try:
    from models import data
except ImportError:          # run from a checkout without installing: the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from models import data


def param(*shape, scale=None):
    """A raw weight tensor, GT style: N(0, 1/fan_in) values, requires_grad=True."""
    scale = 1.0 / math.sqrt(shape[0]) if scale is None else scale
    return gt.tensor(np.random.randn(*shape).astype(np.float32) * scale, requires_grad=True)


def zeros(*shape):
    return gt.tensor(np.zeros(shape, np.float32), requires_grad=True)


def ones(*shape):
    return gt.tensor(np.ones(shape, np.float32), requires_grad=True)


def layer_norm(x, g, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / (var + eps).sqrt() * g + b


class PixelTransformer(nn.Module):
    """Flattened images -> linear embedding + positions -> pre-norm blocks -> mean pool -> classes."""

    def __init__(self, img_size, seq_len, embed_dim, heads, ff_dim, layers, classes):
        super().__init__()
        self.seq_len, self.heads, self.embed_dim = seq_len, heads, embed_dim
        E = embed_dim
        self.embed = nn.Linear(img_size * img_size, E)
        self.pos = param(seq_len, E, scale=0.02)
        self._parameters += [self.pos]
        self.blocks = []
        for _ in range(layers):
            blk = {"ln1_g": ones(E), "ln1_b": zeros(E), "wq": param(E, E), "wk": param(E, E), "wv": param(E, E),
                   "wo": param(E, E), "bo": zeros(E), "ln2_g": ones(E), "ln2_b": zeros(E),
                   "w1": param(E, ff_dim), "b1": zeros(ff_dim), "w2": param(ff_dim, E), "b2": zeros(E)}
            self.blocks.append(blk)
            self._parameters += list(blk.values())
        self.head = nn.Linear(E, classes)

    def attention(self, x, p):
        B, S, E = x.shape
        H, D = self.heads, E // self.heads

        def split(t):
            return t.reshape(B, S, H, D).permute(0, 2, 1, 3)
        q, k, v = split(x @ p["wq"]), split(x @ p["wk"]), split(x @ p["wv"])
        att = gt.softmax((q @ k.T) / math.sqrt(D), axis=-1)
        out = (att @ v).transpose(1, 2).reshape(B, S, E)
        return out @ p["wo"] + p["bo"]

    def forward(self, x):
        B, S, P = x.shape
        h = self.embed(x) + self.pos[:S]
        for p in self.blocks:
            h = h + self.attention(layer_norm(h, p["ln1_g"], p["ln1_b"]), p)
            f = (layer_norm(h, p["ln2_g"], p["ln2_b"]) @ p["w1"] + p["b1"]).relu()
            h = h + f @ p["w2"] + p["b2"]
        return self.head(h.mean(axis=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=4)
    ap.add_argument("--embed-dim", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ff-dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--n-train", type=int, default=1024)
    ap.add_argument("--n-test", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--print-every", type=int, default=10)
    args = ap.parse_args(argv)

    np.random.seed(args.seed)
    train, test = data.load("digits", img_size=args.img_size, seq_len=args.seq_len, n_train=args.n_train,
                            n_test=args.n_test, seed=args.seed, label="max")
    X, Y = train.X, np.eye(train.n_classes, dtype=np.float32)[train.y]     # one-hot targets
    model = PixelTransformer(args.img_size, args.seq_len, args.embed_dim, args.heads, args.ff_dim, args.layers,
                             train.n_classes)
    params = model.parameters()
    client = gt.client()              # the Dask client, or None in-process
    where = f"on Dask (dashboard: {client.dashboard_link})" if client is not None else "in-process"
    print(f"{sum(p.numel() for p in params):,} parameters; training {where}", flush=True)

    t0 = time.time()
    for step in range(1, args.steps + 1):
        idx = np.random.randint(0, len(X), args.batch_size)
        x, y = gt.tensor(X[idx]), gt.tensor(Y[idx])
        pred = model(x)
        loss = ((pred - y) ** 2).mean()
        loss.backward()
        with gt.no_grad():
            for p in params:
                p -= args.lr * p.grad
                p.grad.zero_()
        loss_value = float(loss.data.numpy())
        if step % args.print_every == 0 or step == 1:
            print(f"step {step:4d}  loss {loss_value:.6f}", flush=True)

    with gt.no_grad():
        pred = model(gt.tensor(test.X)).numpy().argmax(axis=1)
    chance = np.bincount(test.y).max() / len(test.y)
    print(f"held-out accuracy {100 * (pred == test.y).mean():.1f}% (chance: {100 * chance:.1f}%, always the most "
          f"frequent class); {args.steps * args.batch_size / (time.time() - t0):.0f} samples/s", flush=True)


if __name__ == "__main__":
    main()
