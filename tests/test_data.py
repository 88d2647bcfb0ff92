"""models.data: the Pixel Transformer's data sets (issue #5).

Shapes and dtypes, label ranges and the label rule, train/held-out splits that share no source
scan, determinism, augmentation, the .npz path (both X layouts) and each of its bad-input errors,
and that the rendered digits keep their identity (a linear classifier reads them).
"""
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import models  # noqa: F401
except ImportError:     # an editable install made before models/ was a package: use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import data  # noqa: E402
from models.data import DataError, Split, batches, digits_dataset, load, npz_dataset, \
    synthetic_dataset  # noqa: E402


def digit_labels():
    """The sklearn scans' digit labels (scikit-learn is a dependency of the default data set)."""
    from sklearn.datasets import load_digits
    return load_digits().target


def small_digits(**kw):
    args = dict(img_size=16, seq_len=3, n_train=24, n_test=10, seed=0)
    args.update(kw)
    return digits_dataset(**args)


# ---- digits: shapes, labels, splits ------------------------------------------------------------
def test_digits_shapes_and_dtypes():
    train, test = small_digits()
    for s, n in ((train, 24), (test, 10)):
        assert isinstance(s, Split)
        assert len(s) == n and s.shape == (n, 3, 256)
        assert s.img_size == 16 and s.seq_len == 3 and s.n_classes == 10
        X = s.X
        assert X.shape == (n, 3, 256) and X.dtype == np.float32
        assert np.isfinite(X).all()
        assert s.y.shape == (n,) and s.y.dtype == np.int64
        assert s.digits.shape == (n, 3) and s.digits.dtype == np.int64
        assert s.source_ids.shape == (n, 3) and s.source_ids.dtype == np.int64
        assert s.images([0, 1]).shape == (2, 3, 16, 16)


def test_digits_labels_are_the_digit_sum_mod_10():
    train, test = digits_dataset(img_size=8, seq_len=4, n_train=3000, n_test=600, seed=1)
    for s in (train, test):
        assert s.y.min() >= 0 and s.y.max() <= 9
        assert ((s.source_ids >= 0) & (s.source_ids < len(digit_labels()))).all()
        np.testing.assert_array_equal(s.digits, digit_labels()[s.source_ids])
        np.testing.assert_array_equal(s.y, s.digits.sum(axis=1) % 10)
    # every class occurs, roughly uniformly (chance = 10%)
    counts = np.bincount(train.y, minlength=10)
    assert counts.min() > 0.06 * len(train) and counts.max() < 0.14 * len(train)
    # the label needs more than one token: knowing one token's digit leaves it spread out
    for pos in range(4):
        for d in range(10):
            assert len(np.unique(train.y[train.digits[:, pos] == d])) >= 8


def test_other_label_rules():
    train, _ = digits_dataset(img_size=8, seq_len=3, n_train=200, n_test=4, label="sum")
    assert train.n_classes == 28
    np.testing.assert_array_equal(train.y, train.digits.sum(axis=1))
    train, _ = digits_dataset(img_size=8, seq_len=3, n_train=200, n_test=4, label="max")
    assert train.n_classes == 10
    np.testing.assert_array_equal(train.y, train.digits.max(axis=1))
    with pytest.raises(ValueError, match=r"unknown label rule 'parity'.*'sum_mod10'"):
        digits_dataset(img_size=8, label="parity")


def test_train_and_test_share_no_source_scan():
    for seed in (0, 1, 7):
        train, test = digits_dataset(img_size=8, seq_len=4, n_train=2000, n_test=400, seed=seed)
        tr, te = set(train.source_ids.ravel()), set(test.source_ids.ravel())
        assert not tr & te
        # the pools are a stratified ~80/20 split: every digit is held out, most scans are used
        assert set(test.digits.ravel()) == set(range(10))
        assert len(tr) > 0.7 * len(digit_labels()) * 0.8
        assert 0.15 < len(te) / (len(tr) + len(te)) < 0.25


def test_digits_deterministic_with_a_seed_and_different_across_seeds():
    a_tr, a_te = small_digits(seed=3)
    b_tr, b_te = small_digits(seed=3)
    for a, b in ((a_tr, b_tr), (a_te, b_te)):
        np.testing.assert_array_equal(a.X, b.X)
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_array_equal(a.source_ids, b.source_ids)
    c_tr, _ = small_digits(seed=4)
    assert not np.array_equal(a_tr.source_ids, c_tr.source_ids)
    assert not np.allclose(a_tr.X, c_tr.X)


def test_lazy_rendering_does_not_depend_on_the_batch():
    train, _ = small_digits()
    assert train.is_lazy
    rows = train.take([5, 0, 17])
    np.testing.assert_array_equal(rows[0], train.take([5])[0])
    np.testing.assert_array_equal(rows[2], train.take(np.arange(24))[17])
    np.testing.assert_array_equal(train.take([-1])[0], train.take([23])[0])
    full = train.X                                  # materialized and kept
    assert not train.is_lazy and train.X is full
    np.testing.assert_array_equal(full[[5, 0, 17]], rows)
    with pytest.raises(IndexError):
        train.take([24])


@pytest.mark.parametrize("img", [16, 100])        # 100: warped on a coarser grid and upsampled
def test_a_pixel_range_is_rendered_exactly_as_those_pixels_of_the_whole_image(img):
    train, _ = digits_dataset(img_size=img, seq_len=2, n_train=6, n_test=2, seed=1)
    idx = np.array([4, 0, 5])
    whole, n = train.take(idx), img * img
    for a, b in [(0, n // 2), (n // 2, n), (img + 3, 3 * img - 5), (n - 1, n), (7, 7)]:
        np.testing.assert_array_equal(train.take(idx, slice(a, b)), whole[:, :, a:b])


def test_augmentation_varies_images_of_the_same_scan():
    train, _ = digits_dataset(img_size=16, seq_len=4, n_train=300, n_test=4, seed=0)
    ids = train.source_ids.ravel()
    vals, counts = np.unique(ids, return_counts=True)
    scan = vals[np.argmax(counts)]
    where = np.flatnonzero(ids == scan)[:2]
    assert len(where) == 2
    X = train.take(where // 4)
    a, b = X[0, where[0] % 4], X[1, where[1] % 4]
    assert np.abs(a - b).mean() > 0.1               # different shift/scale/rotation/noise
    # without augmentation the same scan renders to the same image
    plain, _ = digits_dataset(img_size=16, seq_len=4, n_train=300, n_test=4, seed=0,
                              augment=False)
    np.testing.assert_array_equal(plain.source_ids, train.source_ids)
    P = plain.take(where // 4)
    np.testing.assert_array_equal(P[0, where[0] % 4], P[1, where[1] % 4])


def test_images_are_not_blank_and_standardized():
    train, test = digits_dataset(img_size=16, seq_len=4, n_train=64, n_test=16, seed=0)
    X = train.X
    assert abs(float(X.mean())) < 0.05 and 0.9 < float(X.std()) < 1.1   # train statistics
    assert test.mean == train.mean and test.std == train.std
    plain, _ = digits_dataset(img_size=16, seq_len=4, n_train=64, n_test=16, seed=0,
                              augment=False, normalize=False)
    P = plain.X
    assert P.min() >= 0 and P.max() <= 1.0 + 1e-6                  # raw ink in [0, 1]
    per_token_ink = P.max(axis=2)
    assert (per_token_ink > 0.3).all()                               # every token shows ink
    assert ((P > 0.2).mean(axis=2) > 0.05).all()                     # on a real area
    img = P.reshape(-1, 16, 16)
    assert img[:, 0].max() < 0.05 and img[:, :, 0].max() < 0.05      # background at the border


def test_full_size_200x200_handful():
    train, test = digits_dataset(img_size=200, seq_len=2, n_train=3, n_test=2, seed=0)
    assert train.X.shape == (3, 2, 40000) and test.X.shape == (2, 2, 40000)
    assert train.X.dtype == np.float32 and np.isfinite(train.X).all()
    img = train.images(np.arange(3)).reshape(-1, 200, 200)
    # the digit is in the middle: the centre is brighter than the border (after noise)
    centre = img[:, 60:140, 60:140].mean(axis=(1, 2))
    border = np.concatenate([img[:, :15].reshape(len(img), -1),
                             img[:, -15:].reshape(len(img), -1)], 1).mean(axis=1)
    assert (centre > border + 0.3).all()


def test_rendered_digits_keep_their_identity():
    """A logistic regression on single 16x16 tokens reads the digit far above chance (10%)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits     # ships with scikit-learn
    accs = {}
    for augment in (True, False):
        train, test = digits_dataset(img_size=16, seq_len=4, n_train=300, n_test=100, seed=0,
                                     augment=augment)
        Xtr, ytr = train.X.reshape(-1, 256), train.digits.ravel()
        Xte, yte = test.X.reshape(-1, 256), test.digits.ravel()
        # one BLAS thread: a 2-thread OpenBLAS on a busy 2-core machine is ~100x slower
        with threadpool_limits(1):
            clf = LogisticRegression(max_iter=200, C=0.01).fit(Xtr, ytr)
            accs[augment] = clf.score(Xte, yte)      # held-out scans
    assert accs[False] > 0.85, accs                 # the rendering keeps the digit
    assert accs[True] > 0.5, accs                   # still linearly readable when augmented


def test_digits_argument_errors():
    with pytest.raises(ValueError, match="img_size"):
        digits_dataset(img_size=0)
    with pytest.raises(ValueError, match="seq_len"):
        digits_dataset(seq_len=1.5)
    with pytest.raises(ValueError, match="test_fraction"):
        digits_dataset(img_size=8, test_fraction=1.0)
    with pytest.raises(ValueError, match="seed"):
        digits_dataset(img_size=8, seed=-1)


# ---- batches ------------------------------------------------------------------------------------
def test_batches_cover_every_row_once():
    train, _ = small_digits()
    seen = []
    for xb, yb, idx in batches(train, 5, shuffle=True, seed=0, return_index=True):
        assert xb.dtype == np.float32 and yb.dtype == np.int64
        assert xb.shape == (len(idx), 3, 256) and yb.shape == (len(idx),)
        np.testing.assert_array_equal(yb, train.y[idx])
        np.testing.assert_array_equal(xb, train.take(idx))
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(24)) and seen != list(range(24))
    sizes = [len(yb) for _, yb in batches(train, 5, shuffle=False)]
    assert sizes == [5, 5, 5, 5, 4]
    assert [len(yb) for _, yb in batches(train, 5, drop_last=True)] == [5, 5, 5, 5]
    a = [yb for _, yb in batches(train, 7, seed=1)]
    b = [yb for _, yb in batches(train, 7, seed=1)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    first = next(batches(train, 24, shuffle=False))[0]
    np.testing.assert_array_equal(first, train.X)
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(train, 0))


# ---- synthetic ----------------------------------------------------------------------------------
def test_synthetic():
    train, test = synthetic_dataset(img_size=8, seq_len=5, n_train=40, n_test=12, n_classes=3,
                                    seed=0)
    assert train.X.shape == (40, 5, 64) and test.X.shape == (12, 5, 64)
    assert train.X.dtype == np.float32 and train.y.dtype == np.int64
    assert train.y.min() >= 0 and train.y.max() <= 2 and train.n_classes == 3
    assert train.digits is None and train.source_ids is None
    assert abs(train.X.mean()) < 0.1 and 0.9 < train.X.std() < 1.1
    again, _ = synthetic_dataset(img_size=8, seq_len=5, n_train=40, n_test=12, n_classes=3,
                                 seed=0)
    np.testing.assert_array_equal(train.X, again.X)
    np.testing.assert_array_equal(train.take([7]), again.take([7]))
    other, _ = synthetic_dataset(img_size=8, seq_len=5, n_train=40, n_test=12, n_classes=3,
                                 seed=1)
    assert not np.allclose(train.X, other.X)
    assert not np.allclose(train.X[:12], test.X)


# ---- .npz ---------------------------------------------------------------------------------------
def _arrays(n=10, seq=3, img=4, layout="4d"):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, seq, img, img)).astype(np.float32)
    X[:, 0, 0, 0] = np.arange(n)                    # row marker
    y = (np.arange(n) % 4).astype(np.int64)
    if layout == "3d":
        X = X.reshape(n, seq, img * img)
    return X, y


@pytest.mark.parametrize("layout", ["4d", "3d"])
def test_npz_round_trip(tmp_path, layout):
    X, y = _arrays(layout=layout)
    path = tmp_path / "mine.npz"
    np.savez(path, X=X, y=y)
    train, test = npz_dataset(path, img_size=4, seq_len=3, test_fraction=0.2, seed=0)
    assert len(train) == 8 and len(test) == 2
    assert train.X.shape == (8, 3, 16) and train.X.dtype == np.float32
    assert train.y.dtype == np.int64 and train.n_classes == 4 and train.img_size == 4
    rows_tr = train.X[:, 0, 0].astype(int)
    rows_te = test.X[:, 0, 0].astype(int)
    assert not set(rows_tr) & set(rows_te)
    assert sorted(set(rows_tr) | set(rows_te)) == list(range(10))
    flat = X.reshape(10, 3, 16)
    for s, rows in ((train, rows_tr), (test, rows_te)):
        np.testing.assert_array_equal(s.X, flat[rows])
        np.testing.assert_array_equal(s.y, y[rows])
    again, _ = npz_dataset(str(path))                  # deterministic; sizes inferred
    np.testing.assert_array_equal(again.X, train.X)
    other, _ = npz_dataset(path, seed=5)
    assert not np.array_equal(other.X[:, 0, 0], train.X[:, 0, 0])
    t2, e2 = load(str(path), seq_len=3, img_size=None)
    np.testing.assert_array_equal(t2.y, train.y)
    only, none = npz_dataset(path, test_fraction=0.0)
    assert len(only) == 10 and len(none) == 0
    capped, _ = npz_dataset(path, n_train=3)
    assert len(capped) == 3


def test_npz_integer_pixels_and_normalize(tmp_path):
    X = np.random.default_rng(0).integers(0, 256, (12, 2, 5, 5)).astype(np.uint8)
    y = np.arange(12, dtype=np.int32) % 3
    path = tmp_path / "u8.npz"
    np.savez_compressed(path, X=X, y=y)
    train, test = npz_dataset(path)
    assert train.X.dtype == np.float32 and train.X.max() > 1 and train.y.dtype == np.int64
    ntr, nte = npz_dataset(path, normalize=True)
    assert abs(ntr.X.mean()) < 1e-4 and abs(ntr.X.std() - 1) < 1e-3
    assert nte.mean == ntr.mean


def _write(tmp_path, name="bad.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


X4, Y = _arrays()
BAD = {
    "missing X": (dict(y=Y), r"missing array\(s\) 'X'.*found \['y'\]"),
    "missing y": (dict(X=X4), r"missing array\(s\) 'y'"),
    "float y": (dict(X=X4, y=Y.astype(np.float64)), r"array 'y' has dtype float64.*integer"),
    "bool y": (dict(X=X4, y=Y > 1), r"array 'y' has dtype bool"),
    "y too short": (dict(X=X4, y=Y[:7]), r"array 'y' has shape \(7,\); expected \(10,\)"),
    "2-D y": (dict(X=X4, y=Y[:, None]), r"array 'y' has shape \(10, 1\); expected \(10,\)"),
    "negative y": (dict(X=X4, y=Y - 1), r"array 'y' has negative labels"),
    "non-square 4-D": (dict(X=np.zeros((10, 3, 4, 5), np.float32), y=Y),
                       r"shape \(10, 3, 4, 5\).*square.*4x5"),
    "non-square 3-D": (dict(X=np.zeros((10, 3, 15), np.float32), y=Y),
                       r"shape \(10, 3, 15\).*15 is not a perfect square"),
    "2-D X": (dict(X=np.zeros((10, 16), np.float32), y=Y),
              r"shape \(10, 16\) \(2-D\); expected \(n, seq, img, img\) or \(n, seq, img\*img\)"),
    "5-D X": (dict(X=np.zeros((10, 1, 3, 4, 4), np.float32), y=Y), r"\(5-D\)"),
    "NaN in X": (dict(X=np.where(np.arange(16).reshape(4, 4) == 5, np.nan, X4), y=Y),
                 r"array 'X' has 30 NaN/inf value\(s\) \(first at index \(0, 0, 5\)"),
    "inf in X": (dict(X=np.where(X4 > 2.5, np.inf, X4), y=Y), r"array 'X' has \d+ NaN/inf"),
    "complex X": (dict(X=X4.astype(np.complex64), y=Y), r"array 'X' has dtype complex64"),
    "string X": (dict(X=np.full((10, 3, 2, 2), "a"), y=Y), r"array 'X' has dtype <U1"),
    "bool X": (dict(X=X4 > 0, y=Y), r"array 'X' has dtype bool"),
    "empty X": (dict(X=np.zeros((0, 3, 4, 4), np.float32), y=Y[:0]), r"at least one sequence"),
    "one row": (dict(X=X4[:1], y=Y[:1]), r"1 sequence\(s\); a train/test split needs at least 2"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_npz_bad_input_errors(tmp_path, case):
    arrays, pattern = BAD[case]
    path = _write(tmp_path, **arrays)
    with pytest.raises(DataError, match=pattern) as info:
        npz_dataset(path)
    assert str(path) in str(info.value)              # the message names the file
    assert isinstance(info.value, ValueError)


def test_npz_requested_sizes_must_match(tmp_path):
    path = _write(tmp_path, X=X4, y=Y)
    with pytest.raises(DataError, match=r"shape \(10, 3, 4, 4\), i\.e\. 4x4 images; img_size=200"):
        npz_dataset(path, img_size=200)
    with pytest.raises(DataError, match=r"sequences of 3 images; seq_len=4 was requested"):
        npz_dataset(path, seq_len=4)
    with pytest.raises(DataError, match="img_size=200"):
        load(str(path), img_size=200)


def test_npz_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        npz_dataset(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not an archive")
    with pytest.raises(DataError, match=r"junk\.npz.*not a zip archive"):
        npz_dataset(junk)
    npy = tmp_path / "single.npz"
    with open(npy, "wb") as f:
        np.save(f, X4)
    with pytest.raises(DataError, match=r"a single \.npy array"):
        npz_dataset(npy)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(DataError, match="not a readable .npz archive"):
        npz_dataset(broken)
    objs = tmp_path / "objs.npz"
    np.savez(objs, X=np.array([X4, 1], dtype=object), y=Y)
    with pytest.raises(DataError, match="without pickle"):
        npz_dataset(objs)


# ---- load ---------------------------------------------------------------------------------------
def test_load_dispatch_and_errors():
    tr, te = load(img_size=8, seq_len=2, n_train=4, n_test=2)
    assert tr.name == "digits/train" and tr.X.shape == (4, 2, 64)
    tr, te = load("digits", img_size=8, seq_len=2, n_train=4, n_test=2, augment=None)
    assert tr.digits is not None
    tr, te = load("synthetic", img_size=8, seq_len=2, n_train=4, n_test=2, seed=0)
    assert tr.name == "synthetic/train" and tr.X.shape == (4, 2, 64)
    with pytest.raises(ValueError, match=r"unknown data set 'mnist'.*'digits'.*'synthetic'.*\.npz"):
        load("mnist")
    with pytest.raises(TypeError,
                       match=r"unexpected option\(s\) augment; synthetic_dataset accepts"):
        load("synthetic", augment=True)
    assert set(data.DATASETS) == {"digits", "synthetic"}
