"""Data for the Pixel Transformer (issue #5): every token is one whole img x img image.

Three sources, one result type (:class:`Split`), chosen by :func:`load`:

``digits`` (the default; real data, offline)
    scikit-learn's 1797 scans of handwritten digits (``sklearn.datasets.load_digits``: 8x8 images
    that ship inside the scikit-learn wheel, so no network is needed). The scans are first split
    into disjoint train / held-out pools (stratified by digit, seeded), then each split builds its
    sequences only from its own pool, so no source scan is shared between train and test.
    Each token is one scan rendered at img x img with a random rotation (+-15 degrees), scale
    (0.8-1.2), shift (+-8% of the image per axis) and additive Gaussian pixel noise (std 0.1 on
    the [0, 1] ink scale; a random window and sign of a seeded 2M-value noise bank per token).
    The label of a sequence is ``sum(digits) % 10`` (``label="sum_mod10"``): 10 classes, chance
    10%, and it needs every token -- knowing all but one digit leaves the label uniform, so no
    single token is correlated with it. That also means a model trained on ``y`` alone gets no
    first-order gradient signal (a parity-like task); the per-token digits are kept in
    ``Split.digits`` for an auxiliary per-token loss, and ``label="sum"`` / ``"max"`` are easier
    rules that still need all tokens (see :data:`LABELS`). The training command
    (``python -m models.pixel_transformer``) defaults to ``--label max``: 10 classes, learned far
    above its chance level (always answering 9: 1 - 0.9**4 = 34% with 4 tokens).

``synthetic``
    What the first user trained on: i.i.d. standard normal pixels and uniformly random labels
    (nothing to learn; good for throughput tests).

``PATH.npz``
    Your own arrays: ``X`` of shape (n, seq, img, img) or (n, seq, img*img), any real numeric dtype,
    finite; ``y`` integer, shape (n,), >= 0. Split into train / test deterministically. Every
    problem is reported as a :class:`DataError` naming the file, the array and the expected and
    actual shape or dtype.

Laziness (memory): at the default size (img 200, 4 tokens, 2000 + 400 sequences) the rendered
pixels are 2400 * 4 * 40000 * 4 B = 1.5 GB of float32, so ``digits`` and ``synthetic`` splits are
*lazy*: they store only the recipe (source scan, transform and noise offset per token; a few
hundred kB) and render pixels on demand -- :func:`batches` renders one batch at a time, and
``Split.take(idx)`` renders the rows asked for. ``Split.X`` renders (and keeps) the whole split;
use it for small sizes. Rendering is deterministic: the same row renders to the same pixels every
time, whatever batch it is in.

Scale (what the model sees): ``digits`` pixels are standardized with the *train* split's pixel
mean and std (one scalar pair, applied to both splits), so inputs have mean ~0 / std ~1. That is
what trains best with a transformer whose first layer is a linear embedding of 40000 pixels: with
raw [0, 1] ink (mostly 0, mean ~0.15) every token embedding shares a large common offset that
LayerNorm / attention first has to learn away, and the usual init scales assume unit-variance
inputs. ``synthetic`` is already N(0, 1); ``.npz`` data is used as stored unless
``normalize=True``.

Speed (measured on the busy 2-core development machine): rendering costs about 0.25-0.4 ms per
200x200 token -- a bilinear inverse-map warp of the 8x8 scan onto a 40x40 grid (one gather of
2x2 neighbourhoods), then a separable bilinear upsample to 200x200 (gathers and lerps, one pass
per output row), then the noise window -- i.e. ~2.5-4 s for all 9600 tokens of the default data
set, ~25-40 ms for a batch of 16 sequences of 4 tokens. Images up to 40x40 are warped directly.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numba
import numpy as np

__all__ = [
    "DataError", "Split", "digits_dataset", "synthetic_dataset", "npz_dataset", "load", "batches",
    "DATASETS", "LABELS",
]

DATASETS = ("digits", "synthetic")  # plus any path ending in .npz

_SRC = 8            # sklearn digit scans are 8x8
_PAD = 2            # zero border around a scan for the bilinear sampler
_MID = 40           # intermediate warp grid for large images (then separable upsample)
_FILL = 0.7         # at scale 1 the 8x8 scan covers 70% of the image width
_NOISE_BANK = 1 << 21


class DataError(ValueError):
    """Bad data: wrong shape, dtype, value or file. The message names what is wrong and where."""


# ---- the result type --------------------------------------------------------------------------
@dataclass(eq=False, repr=False)
class Split:
    """One split (train or test) of sequences of images.

    Attributes
    ----------
    X : float32 (n, seq_len, img_size*img_size)
        The pixels. For lazy splits (``digits``, ``synthetic``) reading ``X`` renders the whole
        split once and keeps it; prefer :func:`batches` or :meth:`take` at large sizes.
    y : int64 (n,)
        Sequence labels in ``0 .. n_classes-1``.
    digits : int64 (n, seq_len) or None
        Per-token digit labels (``digits`` data set only).
    source_ids : int64 (n, seq_len) or None
        Index of the sklearn scan (0..1796) each token was rendered from (``digits`` only).
    """

    y: np.ndarray
    digits: Optional[np.ndarray]
    source_ids: Optional[np.ndarray]
    img_size: int
    seq_len: int
    n_classes: int
    name: str = ""
    mean: float = 0.0          # the pixel standardization that was applied (x - mean) / std
    std: float = 1.0
    _X: Optional[np.ndarray] = None
    _render: Optional[Callable[[np.ndarray], np.ndarray]] = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_pixels(self) -> int:
        return self.img_size * self.img_size

    @property
    def shape(self) -> tuple:
        """Shape of X: (n, seq_len, img_size*img_size)."""
        return (len(self), self.seq_len, self.n_pixels)

    @property
    def nbytes(self) -> int:
        """Bytes X takes once rendered (float32)."""
        return len(self) * self.seq_len * self.n_pixels * 4

    @property
    def is_lazy(self) -> bool:
        return self._X is None

    @property
    def X(self) -> np.ndarray:
        if self._X is None:
            self._X = self.take(np.arange(len(self)))
            self._render = None
        return self._X

    def materialize(self) -> "Split":
        """Render all of X now and keep it (costs ``nbytes`` of memory). Returns self."""
        self.X
        return self

    def take(self, idx, cols: slice = slice(None)) -> np.ndarray:
        """The pixels of rows ``idx`` as a new float32 array (k, seq_len, img_size**2), or with
        ``cols`` only those pixels of each token (lazy splits render only those)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"Split {self.name!r}: row index out of range for {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        if self._X is not None:
            return self._X[idx, :, cols]
        return self._render(idx, cols)

    def images(self, idx) -> np.ndarray:
        """Rows ``idx`` as images: float32 (k, seq_len, img_size, img_size)."""
        x = self.take(idx)
        return x.reshape(x.shape[0], self.seq_len, self.img_size, self.img_size)

    def __repr__(self) -> str:
        kind = "lazy" if self.is_lazy else "in memory"
        return (f"Split({self.name!r}, n={len(self)}, seq_len={self.seq_len}, "
                f"img_size={self.img_size}, n_classes={self.n_classes}, "
                f"X {kind}: {self.nbytes / 2**20:.1f} MiB)")


def batches(split: Split, batch_size: int, shuffle: bool = True, seed=None,
            drop_last: bool = False, return_index: bool = False) -> Iterator[tuple]:
    """Yield ``(X_batch, y_batch)`` numpy arrays: float32 (b, seq, img*img) and int64 (b,).

    ``shuffle`` draws a fresh permutation from ``np.random.default_rng(seed)`` (``seed=None``:
    a random one). Lazy splits render only the rows of the current batch. With
    ``return_index=True`` yields ``(X_batch, y_batch, idx)`` so per-row extras such as
    ``split.digits[idx]`` can be fetched.
    """
    if not isinstance(split, Split):
        raise TypeError(f"batches: expected a Split, got {type(split).__name__}")
    if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1):
        raise ValueError(f"batches: batch_size must be a positive integer, got {batch_size!r}")
    n = len(split)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        xb = split.take(idx)
        yb = split.y[idx]
        yield (xb, yb, idx) if return_index else (xb, yb)


# ---- helpers ------------------------------------------------------------------------------------
def _check_int(name, value, lo, fn):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{fn}: {name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _resolve_seed(seed, fn):
    """A concrete non-negative int seed (None: fresh entropy, fixed for the data set's life)."""
    if seed is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{fn}: seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def _rng(seed, *stream):
    """An independent, reproducible generator per (seed, stream) pair."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *stream]))


def _upsample_taps(m: int, n: int):
    """Bilinear taps from m to n samples, aligned on pixel centres (edges clamped).

    Returns ``(i0, i1, f)``: sample j is ``(1 - f[j]) * a[i0[j]] + f[j] * a[i1[j]]``.
    """
    c = (np.arange(n) + 0.5) * m / n - 0.5
    c = np.clip(c, 0, m - 1)
    i0 = np.floor(c).astype(np.intp)
    i1 = np.minimum(i0 + 1, m - 1)
    return i0, i1, (c - i0).astype(np.float32)


def _warp_coefficients(theta, scale, tx, ty):
    """Per token, the float32 affine maps of the inverse warp: output pixel centre (px, py) (normalized
    image coordinates, -0.5..0.5) samples the scan at x = ax px + bx + cx py, y = ay px + by + cy py,
    that is ``R(-theta) (p - t) / (FILL * scale)`` in scan pixels (zero border included)."""
    cos, sin = np.cos(theta), np.sin(theta)
    inv = _SRC / (_FILL * np.asarray(scale, np.float64))
    off = (_SRC - 1) / 2 + _PAD
    f32 = lambda a: np.asarray(a, np.float32)              # noqa: E731
    return (f32(cos * inv), f32(off - inv * (cos * tx + sin * ty)), f32(sin * inv),
            f32(-sin * inv), f32(off - inv * (cos * ty - sin * tx)), f32(cos * inv))


@numba.njit(nogil=True, cache=True)
def _warp_band(scans, src, coef, m, grid_rows, inv_std, out):
    """Bilinear samples of zero-padded scans `scans[src[t]]` on grid rows grid_rows[0]: of an m x m
    grid, times inv_std, into out (k, rows, m).  The float32 operations keep the order of the earlier
    NumPy renderer, so a data set renders bit for bit as it did (and as in the tests' references)."""
    ax, bx, cx, ay, by, cy = coef
    size = scans.shape[1]
    hi = np.float32(size - 2)                # keeps x0 + 1 inside; the border there is all zeros
    grid = (np.arange(m).astype(np.float32) + np.float32(0.5)) / np.float32(m) - np.float32(0.5)
    for t in range(src.size):
        scan = scans[src[t]]
        for j in range(out.shape[1]):
            py = grid[grid_rows[0] + j]
            for i in range(m):
                xs = min(max(ax[t] * grid[i] + bx[t] + cx[t] * py, np.float32(0)), hi)
                ys = min(max(ay[t] * grid[i] + by[t] + cy[t] * py, np.float32(0)), hi)
                x0, y0 = np.floor(xs), np.floor(ys)
                fx, fy, xi, yi = xs - x0, ys - y0, int(x0), int(y0)
                top = (scan[yi, xi + 1] - scan[yi, xi]) * fx + scan[yi, xi]
                bot = (scan[yi + 1, xi + 1] - scan[yi + 1, xi]) * fx + scan[yi + 1, xi]
                v = top + (bot - top) * fy
                out[t, j, i] = v * inv_std if inv_std != 1 else v


@numba.njit(nogil=True, cache=True)
def _upsample_band(mid, i0, i1, f, first, mid_first, bank, off, noise, shift, dst):
    """dst[t, j] = image row first + j of token t, bilinear from its grid rows in mid (which start
    at grid row mid_first), plus the token's noise window bank[off[t]:] times noise[t], minus shift:
    one sequential pass over the band.  The operations and their order are the earlier NumPy
    renderer's, so a data set renders bit for bit as it did."""
    k, rows, n = dst.shape
    along = np.empty((mid.shape[1], n), np.float32)
    for t in range(k):
        for g in range(mid.shape[1]):                        # along the grid rows first
            for x in range(n):
                along[g, x] = (mid[t, g, i1[x]] - mid[t, g, i0[x]]) * f[x] + mid[t, g, i0[x]]
        for j in range(rows):
            r, row = first + j, dst[t, j]
            lo, hi, w1 = along[i0[r] - mid_first], along[i1[r] - mid_first], f[r]
            w0 = np.float32(1) - w1
            for x in range(n):
                row[x] = lo[x] * w0 + hi[x] * w1
            if noise[t] != 0:
                window = bank[off[t] + j * n:]
                for x in range(n):
                    row[x] = np.float32(row[x] + window[x] * noise[t])
            if shift != 0:
                for x in range(n):
                    row[x] -= shift


class _DigitsRenderer:
    """Renders rows of a digits split from their recipe (picklable; no lambdas)."""

    def __init__(self, scans, source_ids, theta, scale, tx, ty, noise_off, noise_amp, bank,
                 img_size, mean=0.0, std=1.0):
        self.scans = scans            # (1797, S, S) float32, padded, ink in [0, 1]
        self.source_ids = source_ids  # (n, seq)
        self.theta, self.scale, self.tx, self.ty = theta, scale, tx, ty   # (n, seq) each
        self.noise_off, self.noise_amp = noise_off, noise_amp             # (n, seq) each
        self.bank = bank
        self.img = img_size
        self.mid = min(img_size, _MID)
        self.taps = _upsample_taps(self.mid, img_size)      # the identity where mid == img_size
        self.mean, self.std = float(mean), float(std)

    def __call__(self, idx: np.ndarray, cols: slice = slice(None)) -> np.ndarray:
        """Rows idx, pixels `cols` of each token: only the image rows holding them are rendered
        (a worker holding a pixel range of every token renders just that range)."""
        seq, img = self.source_ids.shape[1], self.img
        p0, p1, _ = cols.indices(img * img)
        r0, r1 = p0 // img, -(-p1 // img)
        band = (r1 - r0) * img
        out = np.empty((idx.size, seq, band), np.float32)
        rows = (idx[:, None] * seq + np.arange(seq)[None, :]).reshape(-1)  # token indices
        sel = lambda a: a.reshape(-1)[rows]                                  # noqa: E731
        src, th, sc, tx, ty = (sel(a) for a in (self.source_ids, self.theta, self.scale,
                                                self.tx, self.ty))
        off, amp = sel(self.noise_off) + r0 * img, sel(self.noise_amp)
        g0, g1 = self._grid_rows(r0, r1)
        inv_std = np.float32(1.0 / self.std)
        shift = np.float32(self.mean / self.std)
        bank = self.bank if self.bank is not None else np.zeros(1, np.float32)
        noise = amp * inv_std if self.bank is not None else np.zeros(len(rows), np.float32)
        mid = np.empty((rows.size, g1 - g0, self.mid), np.float32)
        _warp_band(self.scans, src, _warp_coefficients(th, sc, tx, ty), self.mid, (g0, g1), inv_std, mid)
        i0, i1, f = self.taps
        _upsample_band(mid, i0, i1, f, r0, g0, bank, off, noise, shift, out.reshape(rows.size, r1 - r0, img))
        return out if band == p1 - p0 else out[:, :, p0 - r0 * img:p1 - r0 * img]

    def _grid_rows(self, r0, r1):
        """The warp grid's rows that image rows r0:r1 are made from."""
        if r1 <= r0:
            return r0, r1
        i0, i1, _ = self.taps
        return int(i0[r0]), int(i1[r1 - 1]) + 1


class _SyntheticRenderer:
    """i.i.d. N(0, 1) pixels; row i always draws from its own seeded stream."""

    def __init__(self, seed_key, seq_len, img_size):
        self.seed_key, self.seq, self.p = seed_key, seq_len, img_size * img_size

    def __call__(self, idx: np.ndarray, cols: slice = slice(None)) -> np.ndarray:
        out = np.empty((idx.size, self.seq, self.p), np.float32)
        for j, i in enumerate(idx):
            _rng(*self.seed_key, int(i)).standard_normal(out=out[j], dtype=np.float32)
        return out[:, :, cols]


# ---- digits -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _load_scans():
    """The 1797 sklearn digit scans as float32 (1797, 8, 8) ink in [0, 1], and their labels.

    Reads the CSV that ships inside scikit-learn directly (importing sklearn.datasets costs ~2 s);
    falls back to ``sklearn.datasets.load_digits`` if that file ever moves.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.origin:
        raise ImportError("the 'digits' data set needs scikit-learn (pip install scikit-learn); "
                          "or use --data synthetic / --data PATH.npz")
    csv = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
    try:
        table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
        if table.shape != (1797, 65):
            raise ValueError(f"unexpected shape {table.shape}")
        images, target = table[:, :-1].reshape(-1, _SRC, _SRC), table[:, -1]
    except (OSError, ValueError):
        from sklearn.datasets import load_digits
        d = load_digits()
        images, target = d.images, d.target
    images = (images / 16.0).astype(np.float32)
    target = target.astype(np.int64)
    images.flags.writeable = False
    target.flags.writeable = False
    return images, target


#: Sequence label rules for ``digits``: name -> (rule(digits (n, seq)) -> y, n_classes(seq_len)).
#: ``sum_mod10`` (default) needs every token and no single token says anything about it (given
#: one digit, the label stays uniform), so a model trained on ``y`` alone gets no first-order
#: signal; ``Split.digits`` allows a per-token auxiliary loss. ``sum`` and ``max`` also need all
#: tokens but each token is correlated with the label (easier; majority class of ``max`` is 9).
LABELS = {
    "sum_mod10": (lambda d: d.sum(axis=1) % 10, lambda seq: 10),
    "sum": (lambda d: d.sum(axis=1), lambda seq: 9 * seq + 1),
    "max": (lambda d: d.max(axis=1), lambda seq: 10),
}


def _stratified_pools(labels, test_fraction, rng):
    train, test = [], []
    for c in np.unique(labels):
        ids = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(ids) * test_fraction))
        k = min(max(k, 1), len(ids) - 1)
        test.append(ids[:k])
        train.append(ids[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def digits_dataset(img_size: int = 200, seq_len: int = 4, n_train: int = 2000, n_test: int = 400,
                   seed: int = 0, augment: bool = True, test_fraction: float = 0.2,
                   max_rotation: float = 15.0, scale_range=(0.8, 1.2), max_shift: float = 0.08,
                   noise_std: float = 0.1, normalize: bool = True, label: str = "sum_mod10"):
    """Sequences of rendered sklearn digit scans; returns ``(train, test)`` :class:`Split` s.

    The 1797 scans are split into disjoint pools (``test_fraction`` of each digit held out,
    seeded) before any sequence is drawn; each token of a split is a uniformly drawn scan of that
    split's pool. ``y = digits.sum(1) % 10`` (``label="sum_mod10"``, 10 classes); see
    :data:`LABELS` for the other rules. With ``augment`` each token gets its own rotation
    (uniform +-``max_rotation`` degrees), scale (uniform in ``scale_range``), shift (uniform
    +-``max_shift`` of the image size, per axis) and additive N(0, ``noise_std``) pixel noise;
    without it every token is the plain upscaled scan. ``normalize`` standardizes the pixels with
    the train split's mean and std. Both splits are lazy (see the module doc).
    """
    fn = "digits_dataset"
    if label not in LABELS:
        raise ValueError(f"{fn}: unknown label rule {label!r}; choose one of {sorted(LABELS)}")
    img_size = _check_int("img_size", img_size, 1, fn)
    seq_len = _check_int("seq_len", seq_len, 1, fn)
    n_train = _check_int("n_train", n_train, 0, fn)
    n_test = _check_int("n_test", n_test, 0, fn)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"{fn}: test_fraction must be in (0, 1), got {test_fraction!r}")
    lo_s, hi_s = scale_range
    if not 0 < lo_s <= hi_s:
        raise ValueError(f"{fn}: scale_range must be 0 < low <= high, got {scale_range!r}")
    if noise_std < 0 or max_shift < 0 or max_rotation < 0:
        raise ValueError(f"{fn}: noise_std, max_shift and max_rotation must be >= 0")
    seed = _resolve_seed(seed, fn)

    scans, labels = _load_scans()
    padded = np.zeros((len(scans), _SRC + 2 * _PAD, _SRC + 2 * _PAD), np.float32)
    padded[:, _PAD:_PAD + _SRC, _PAD:_PAD + _SRC] = scans
    pools = _stratified_pools(labels, test_fraction, _rng(seed, 0))
    bank = _rng(seed, 1).standard_normal(_NOISE_BANK + img_size * img_size, dtype=np.float32) \
        if augment and noise_std > 0 else None

    def build(n, pool, stream, name, mean=0.0, std=1.0):
        rng = _rng(seed, stream)
        src = pool[rng.integers(0, len(pool), size=(n, seq_len))]
        shape = (n, seq_len)
        if augment:
            theta = np.deg2rad(rng.uniform(-max_rotation, max_rotation, shape))
            scale = rng.uniform(lo_s, hi_s, shape)
            tx = rng.uniform(-max_shift, max_shift, shape)
            ty = rng.uniform(-max_shift, max_shift, shape)
            off = rng.integers(0, _NOISE_BANK + 1, shape)
            amp = noise_std * rng.choice(np.array([-1.0, 1.0]), shape)   # random sign
        else:
            theta = np.zeros(shape)
            scale = np.ones(shape)
            tx = np.zeros(shape)
            ty = np.zeros(shape)
            off = np.zeros(shape, np.int64)
            amp = np.zeros(shape)
        amp = amp.astype(np.float32)
        digits = labels[src]
        render = _DigitsRenderer(padded, src, theta, scale, tx, ty, off, amp, bank, img_size,
                                 mean, std)
        rule, n_classes = LABELS[label]
        return Split(y=rule(digits), digits=digits, source_ids=src,
                     img_size=img_size, seq_len=seq_len, n_classes=n_classes(seq_len), name=name,
                     mean=float(mean), std=float(std), _render=render)

    train = build(n_train, pools[0], 2, "digits/train")
    test = build(n_test, pools[1], 3, "digits/test")
    if normalize:
        # train statistics from a fixed sample of (up to 64) train sequences, else the test pool
        ref = train if len(train) else test
        s1 = s2 = count = 0.0
        k = min(len(ref), 64)
        for i in range(0, k, 16):
            x = ref._render(np.arange(i, min(i + 16, k))).astype(np.float64)
            s1 += x.sum()
            s2 += np.dot(x.ravel(), x.ravel())
            count += x.size
        mean = s1 / count if count else 0.0
        var = s2 / count - mean * mean if count else 1.0
        std = math.sqrt(var) if var > 1e-12 else 1.0
        for s in (train, test):
            s.mean, s.std = mean, std
            s._render.mean, s._render.std = mean, std
    return train, test


# ---- synthetic ----------------------------------------------------------------------------------
def synthetic_dataset(img_size: int = 200, seq_len: int = 4, n_train: int = 2000,
                      n_test: int = 400, n_classes: int = 10, seed: int = 0):
    """The first user's random data: N(0, 1) pixels, uniform labels in 0..n_classes-1. Lazy."""
    fn = "synthetic_dataset"
    img_size = _check_int("img_size", img_size, 1, fn)
    seq_len = _check_int("seq_len", seq_len, 1, fn)
    n_train = _check_int("n_train", n_train, 0, fn)
    n_test = _check_int("n_test", n_test, 0, fn)
    n_classes = _check_int("n_classes", n_classes, 1, fn)
    seed = _resolve_seed(seed, fn)
    out = []
    for stream, n, name in ((0, n_train, "synthetic/train"), (1, n_test, "synthetic/test")):
        y = _rng(seed, 10, stream).integers(0, n_classes, n).astype(np.int64)
        out.append(Split(y=y, digits=None, source_ids=None, img_size=img_size, seq_len=seq_len,
                         n_classes=n_classes, name=name,
                         _render=_SyntheticRenderer((seed, 11, stream), seq_len, img_size)))
    return tuple(out)


# ---- .npz ---------------------------------------------------------------------------------------
def npz_dataset(path, img_size: Optional[int] = None, seq_len: Optional[int] = None,
                test_fraction: float = 0.2, seed: int = 0, n_train: Optional[int] = None,
                n_test: Optional[int] = None, normalize: bool = False):
    """Load ``X`` (n, seq, img, img) or (n, seq, img*img) and integer ``y`` (n,) from an .npz.

    ``img_size`` / ``seq_len`` (optional) must match the file. Rows are shuffled with ``seed``
    and the last ``round(n * test_fraction)`` (at least 1 when test_fraction > 0) become the test
    split. ``n_train`` / ``n_test`` optionally cap the split sizes (for quick runs).
    ``normalize`` standardizes X with the train split's pixel mean / std. ``n_classes`` is
    ``y.max() + 1`` over the whole file. Raises :class:`DataError` (a ValueError) for bad
    content and FileNotFoundError for a missing file.
    """
    path = os.fspath(path)
    where = f"data file {path!r}"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: no such file")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"npz_dataset: test_fraction must be in [0, 1), got {test_fraction!r}")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] != b"PK":
        what = "a single .npy array" if magic == b"\x93NUMPY" else "not a zip archive"
        raise DataError(f"{where}: {what}; expected an .npz archive with arrays 'X' and 'y' "
                        f"(np.savez(path, X=X, y=y))")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.files)
            missing = [k for k in ("X", "y") if k not in keys]
            if missing:
                raise DataError(f"{where}: missing array(s) {', '.join(map(repr, missing))}; "
                                f"found {keys}; expected 'X' (n, seq, img, img) or "
                                f"(n, seq, img*img) and integer 'y' (n,)")
            X = f["X"]
            y = f["y"]
    except DataError:
        raise
    except ValueError as e:     # object arrays (pickles are refused) and similar
        raise DataError(f"{where}: cannot read its arrays without pickle ({e}); store plain "
                        f"numeric arrays") from e
    except Exception as e:      # zipfile.BadZipFile, truncated files, ...
        raise DataError(f"{where}: not a readable .npz archive ({type(e).__name__}: {e})") from e

    # --- X: dtype, rank, shape
    if X.dtype == np.bool_ or not (np.issubdtype(X.dtype, np.floating)
                                   or np.issubdtype(X.dtype, np.integer)):
        raise DataError(f"{where}: array 'X' has dtype {X.dtype}; expected a real numeric dtype "
                        f"(float32/float64, or an integer type such as uint8)")
    if X.ndim == 4:
        n, seq, h, w = X.shape
        if h != w:
            raise DataError(f"{where}: array 'X' has shape {X.shape}; 4-D X must be "
                            f"(n, seq, img, img) with square images, got {h}x{w}")
        img = h
    elif X.ndim == 3:
        n, seq, p = X.shape
        img = math.isqrt(p)
        if img * img != p:
            raise DataError(f"{where}: array 'X' has shape {X.shape}; 3-D X must be "
                            f"(n, seq, img*img) but {p} is not a perfect square")
    else:
        raise DataError(f"{where}: array 'X' has shape {X.shape} ({X.ndim}-D); expected "
                        f"(n, seq, img, img) or (n, seq, img*img)")
    if n == 0 or seq == 0 or img == 0:
        raise DataError(f"{where}: array 'X' has shape {X.shape}; it needs at least one "
                        f"sequence, one token and one pixel")
    if img_size is not None and int(img_size) != img:
        raise DataError(f"{where}: array 'X' has shape {X.shape}, i.e. {img}x{img} images; "
                        f"img_size={img_size} was requested")
    if seq_len is not None and int(seq_len) != seq:
        raise DataError(f"{where}: array 'X' has shape {X.shape}, i.e. sequences of {seq} "
                        f"images; seq_len={seq_len} was requested")

    # --- y: dtype, rank, length, range
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: array 'y' has dtype {y.dtype}; expected an integer dtype "
                        f"(class labels; e.g. y.astype(np.int64))")
    if y.shape != (n,):
        raise DataError(f"{where}: array 'y' has shape {y.shape}; expected ({n},), one label per "
                        f"sequence of 'X' {X.shape}")
    if (y < 0).any():
        bad = int(np.flatnonzero(y < 0)[0])
        raise DataError(f"{where}: array 'y' has negative labels (first at row {bad}: "
                        f"{int(y[bad])}); labels must be 0 .. n_classes-1")

    # --- values
    X = np.ascontiguousarray(X, dtype=np.float32).reshape(n, seq, img * img)
    finite = np.isfinite(X)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise DataError(f"{where}: array 'X' has {int((~finite).sum())} NaN/inf value(s) "
                        f"(first at index {tuple(int(i) for i in bad)} of the "
                        f"(n, seq, img*img) view); all pixels must be finite")
    del finite
    y = y.astype(np.int64)
    n_classes = int(y.max()) + 1

    # --- split
    k = int(round(n * test_fraction))
    if test_fraction > 0:
        if n < 2:
            raise DataError(f"{where}: array 'X' has {n} sequence(s); a train/test split "
                            f"needs at least 2 (or pass test_fraction=0)")
        k = min(max(k, 1), n - 1)
    order = _rng(_resolve_seed(seed, "npz_dataset"), 20).permutation(n)
    tr, te = np.sort(order[:n - k]), np.sort(order[n - k:])
    if n_train is not None:
        tr = tr[:_check_int("n_train", n_train, 0, "npz_dataset")]
    if n_test is not None:
        te = te[:_check_int("n_test", n_test, 0, "npz_dataset")]
    mean, std = 0.0, 1.0
    if normalize and tr.size:
        Xtr = X[tr]
        mean = float(Xtr.mean(dtype=np.float64))
        std = float(Xtr.std(dtype=np.float64)) or 1.0
        X = (X - np.float32(mean)) * np.float32(1 / std)
    name = os.path.basename(path)
    return tuple(Split(y=y[ix], digits=None, source_ids=None, img_size=img, seq_len=seq,
                       n_classes=n_classes, name=f"{name}/{part}", mean=mean, std=std,
                       _X=X[ix])
                 for ix, part in ((tr, "train"), (te, "test")))


# ---- dispatch -----------------------------------------------------------------------------------
def load(name_or_path="digits", **kw):
    """``(train, test)`` for ``'digits'`` (default), ``'synthetic'`` or a path ending in .npz.

    Keyword arguments go to :func:`digits_dataset`, :func:`synthetic_dataset` or
    :func:`npz_dataset`; arguments given as None are dropped (so a command line can pass its
    unset options through), and an option the chosen source does not take is a TypeError that
    lists the ones it does.
    """
    name = os.fspath(name_or_path) if name_or_path is not None else "digits"
    if name == "digits":
        fn, args = digits_dataset, ()
    elif name == "synthetic":
        fn, args = synthetic_dataset, ()
    elif name.lower().endswith(".npz"):
        fn, args = npz_dataset, (name,)
    else:
        raise ValueError(f"unknown data set {name!r}: choose 'digits' (default; sklearn digit "
                         f"scans, offline), 'synthetic' (random pixels and labels), or a path "
                         f"to a .npz file with arrays X and y")
    kw = {k: v for k, v in kw.items() if v is not None}
    accepted = [p for p in inspect.signature(fn).parameters if p != "path"]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise TypeError(f"load({name!r}): unexpected option(s) {', '.join(unknown)}; "
                        f"{fn.__name__} accepts {', '.join(accepted)}")
    return fn(*args, **kw)
