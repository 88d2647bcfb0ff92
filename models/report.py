"""What a Pixel Transformer run leaves in --out: metrics.jsonl, curves.png, samples.png.

Every file is rewritten whole from the run's history (atomically, via a temporary file and
``os.replace``), so a resumed run's files always match its checkpoint.
"""
from __future__ import annotations

import json
import os

import numpy as np

METRICS = "metrics.jsonl"
CURVES = "curves.png"
SAMPLES = "samples.png"


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_metrics(out_dir: str, history: list) -> str:
    """One JSON object per epoch, in epoch order."""
    path = os.path.join(out_dir, METRICS)

    def write(tmp):
        with open(tmp, "w") as fh:
            for row in history:
                fh.write(json.dumps(row) + "\n")
    _atomic_write(path, write)
    return path


def read_metrics(out_dir: str) -> list:
    with open(os.path.join(out_dir, METRICS)) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_curves(out_dir: str, history: list, steps: list | None = None, chance: float | None = None,
                title: str = "", chance_label: str = "chance") -> str:
    """Loss (left) and accuracy (right) per epoch, train and held-out; per-step train loss
    (``steps``: list of (step, loss)) drawn faintly behind the epoch means."""
    plt = _pyplot()
    path = os.path.join(out_dir, CURVES)
    epochs = [r["epoch"] for r in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        spe = max(1, history[0]["step"] / max(history[0]["epoch"], 1)) if history else 1
        s = np.asarray(steps, dtype=float)
        ax_l.plot(s[:, 0] / spe, s[:, 1], color="tab:blue", alpha=0.2, lw=0.8, label="train (per step)")
    ax_l.plot(epochs, [r["train_loss"] for r in history], "o-", color="tab:blue", label="train")
    ax_l.plot(epochs, [r["test_loss"] for r in history], "s-", color="tab:orange", label="held-out")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("cross-entropy loss")
    ax_l.legend()
    ax_l.grid(alpha=0.3)
    ax_a.plot(epochs, [100 * r["train_acc"] for r in history], "o-", color="tab:blue", label="train")
    ax_a.plot(epochs, [100 * r["test_acc"] for r in history], "s-", color="tab:orange", label="held-out")
    if chance is not None:
        ax_a.axhline(100 * chance, color="gray", ls="--", label=f"{chance_label} ({100 * chance:.1f}%)")
    ax_a.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator
    for ax in (ax_l, ax_a):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_a.set_ylabel("accuracy (%)")
    ax_a.set_ylim(0, 100)
    ax_a.legend()
    ax_a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


def plot_samples(out_dir: str, images: np.ndarray, y_true, y_pred, digits=None, title: str = "") -> str:
    """A grid of held-out sequences: one row per sequence, one column per image (token), the
    row labelled with the true and predicted class (green when right, red when wrong)."""
    plt = _pyplot()
    path = os.path.join(out_dir, SAMPLES)
    k, seq = images.shape[:2]
    fig, axes = plt.subplots(k, seq, figsize=(1.6 * seq + 1.4, 1.6 * k + 0.6), squeeze=False)
    for r in range(k):
        ok = int(y_true[r]) == int(y_pred[r])
        for c in range(seq):
            ax = axes[r, c]
            ax.imshow(images[r, c], cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if digits is not None:
                ax.set_title(f"digit {int(digits[r, c])}", fontsize=8)
        axes[r, 0].set_ylabel(f"true {int(y_true[r])}\npred {int(y_pred[r])}", rotation=0, ha="right",
                              va="center", fontsize=9, color="green" if ok else "red")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
    return path


def chance_levels(y_test, n_classes: int) -> dict:
    """Accuracy of guessing: uniformly at random, and always the most frequent held-out class."""
    y = np.asarray(y_test)
    counts = np.bincount(y, minlength=n_classes) if y.size else np.zeros(n_classes)
    majority = int(np.argmax(counts)) if y.size else 0
    return {"uniform": 1.0 / n_classes,
            "majority": float(counts[majority] / y.size) if y.size else 0.0,
            "majority_class": majority}
