"""gt.data.Rows: batch rows read where the step runs.  In-process they are read at the call; on a
mesh each worker reads (and reads ahead) just its own part, for every layout the planner may
choose, with the results of the in-process run; on real Dask workers the source goes to each
worker once and a failing read surfaces at the client's next read."""
import os

import numpy as np
import pytest

import gtnumba as gt
from gtnumba import nn
from gtnumba.data import Rows, WorkerRows
from gtnumba.layout import REPLICATE, Shard, even_sizes
from gtnumba.sched.mesh import Mesh, current_mesh, set_mesh
from gtnumba.sched.spmd import InProcessRunner

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = np.random.default_rng(0).standard_normal((23, 3, 8)).astype(np.float32)


class Renderer:
    """A lazy source like the main job's: rows rendered on demand, pixel ranges supported, and a
    row that cannot be rendered."""
    shape, dtype = DATA.shape, np.dtype(np.float32)

    def __init__(self, bad_row=None):
        self.bad_row = bad_row

    def __getitem__(self, key):
        idx = key[0] if isinstance(key, tuple) else key
        if self.bad_row is not None and self.bad_row in np.asarray(idx):
            raise ValueError(f"Renderer: row {self.bad_row} has no image")
        return DATA[key] * 2.0


def test_rows_in_process_are_the_indexed_rows():
    r = Rows(DATA)
    for idx in ([3, 1, 5], np.array([-1, 0]), slice(2, 9, 3)):
        np.testing.assert_array_equal(r[idx].numpy(), DATA[idx])
    assert r[[4, 4]].dtype == gt.float32 and len(r) == 23
    assert Rows(DATA.astype(np.float64))[[1]].dtype == gt.float64
    np.testing.assert_array_equal(Rows(Renderer())[(np.array([2, 7]))].numpy(), DATA[[2, 7]] * 2)


def test_rows_errors_name_the_rows_and_the_values():
    r = Rows(DATA)
    with pytest.raises(IndexError, match="row 23 is out of range for 23 rows"):
        r[[1, 23]]
    with pytest.raises(IndexError, match="1-D integer array"):
        r[np.zeros((2, 2), np.int64)]
    with pytest.raises(IndexError, match="1-D integer array"):
        r[[0.5]]
    with pytest.raises(TypeError, match="shape"):
        Rows([1, 2, 3])

    class Wrong(Renderer):
        def __getitem__(self, key):
            return DATA[key][:, :2]
    with pytest.raises(ValueError, match=r"gave shape \(2, 2, 8\) for 2 rows, expected \(2, 3, 8\)"):
        Rows(Wrong())[[0, 1]]


def test_loader_reads_ahead_and_raises_a_read_error_at_its_batch():
    batches = [np.array([0, 1]), np.array([5, 6, 7]), np.array([9])]
    got = [(idx, x.numpy()) for idx, x in Rows(DATA).loader(batches)]
    assert [list(i) for i, _ in got] == [[0, 1], [5, 6, 7], [9]]
    for idx, x in got:
        np.testing.assert_array_equal(x, DATA[idx])
    it = Rows(Renderer(bad_row=6)).loader(batches)
    next(it)
    with pytest.raises(ValueError, match="row 6 has no image"):
        next(it)


def test_worker_parts_cut_rows_or_slices_by_layout():
    wr = WorkerRows(Rows(DATA), np.arange(5), ahead=np.arange(10, 13))
    parts = wr.worker_parts(Shard(0, even_sizes(5, 2)), 2)
    assert [list(p.idx) for p in parts] == [[0, 1, 2], [3, 4]]
    assert [list(p.ahead[0]) for p in parts] == [[10, 11], [12]]       # cut by the next batch's own length
    parts = wr.worker_parts(Shard(2, even_sizes(8, 2)), 2)
    assert [p.rest for p in parts] == [(slice(None), slice(0, 4)), (slice(None), slice(4, 8))]
    np.testing.assert_array_equal(parts[1].read(), DATA[:5, :, 4:])
    assert all(p.rest == () and len(p.idx) == 5 for p in wr.worker_parts(REPLICATE, 3))


def _train(rows, layout_dim, steps=3, seed=0):
    """A small model fed by rows; the batch laid out along `layout_dim` (None: as the planner picks)."""
    gt.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 4))
    opt = gt.optim.Adam(model.parameters(), lr=0.05)
    y = np.random.default_rng(seed).integers(0, 4, (len(rows), 3))
    batches = [np.array([4, 0, 9, 13, 2]), np.array([7, 22, 1, 3, 5]), np.array([11, 8, 6])][:steps]
    losses = []
    for idx, xb in rows.loader(batches):
        if layout_dim is not None:
            gt.shard(xb, layout_dim)
        logits = model(xb)
        loss = nn.cross_entropy(logits.reshape(-1, 4), gt.tensor(y[idx].reshape(-1)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.numpy() for p in model.parameters()]


@pytest.mark.parametrize("workers,dim", [(2, 0), (3, 0), (2, 2), (2, None)])
def test_rows_on_a_mesh_train_like_in_process(workers, dim):
    ref_losses, ref_params = _train(Rows(Renderer()), None)
    set_mesh(Mesh(workers, InProcessRunner(workers)))
    try:
        losses, params = _train(Rows(Renderer()), dim)
    finally:
        set_mesh(None)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for p, q in zip(params, ref_params):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def cluster():
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, old) if p)    # workers import Renderer
    try:
        client = gt.init(workers=2, dashboard=":0")
    finally:
        os.environ.pop("PYTHONPATH") if old is None else os.environ.__setitem__("PYTHONPATH", old)
    yield client
    gt.shutdown()


def _worker_sources(rid):
    from gtnumba.sched.dask_worker import _STORES
    return sorted(str(k[0]) if isinstance(k, tuple) else "source" for k in _STORES[rid].sources)


def test_dask_workers_read_their_rows_with_the_in_process_result(cluster):
    mesh = current_mesh()
    set_mesh(None)
    try:
        ref_losses, ref_params = _train(Rows(Renderer()), None)
    finally:
        set_mesh(mesh)
    losses, params = _train(Rows(Renderer()), None)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for p, q in zip(params, ref_params):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-6)
    runner = mesh.runner
    assert len({uid for uid, _ in runner._shipped}) == 1 and len(runner._shipped) == 2   # once per worker
    held = cluster.run(_worker_sources, runner.rid)
    assert all(v == ["source"] for v in held.values()), held     # the last batch read nothing ahead


def test_dask_worker_read_ahead_is_started_for_the_next_batch(cluster):
    rows = Rows(Renderer())
    it = rows.loader([np.arange(4), np.arange(4, 8)])
    _, xb = next(it)
    np.testing.assert_array_equal((xb * 1.0).numpy(), DATA[:4] * 2)
    held = cluster.run(_worker_sources, current_mesh().runner.rid)
    assert all("ahead" in v for v in held.values()), held
    _, xb = next(it)
    np.testing.assert_array_equal((xb * 1.0).numpy(), DATA[4:8] * 2)


def test_a_failing_worker_read_is_raised_at_the_next_read(cluster):
    with pytest.raises(ValueError, match="row 13 has no image"):
        _train(Rows(Renderer(bad_row=13)), 0, steps=1)


def _spare_shapes():
    from gtnumba.sched.executor import SPARE
    return {shape for (shape, _), arrays in SPARE.items() if arrays}


def test_a_worker_does_not_keep_its_read_batches_for_reuse(cluster):
    """A worker's batch, once freed, is not kept in the buffer pool: no kernel writes that shape,
    so dozens would pile up there (20 MB apiece in the main job) and every new batch would land on
    fresh pages (a worker then rendered its half of a main-job batch 3x slower)."""
    import gc
    _train(Rows(Renderer()), 0, steps=3)
    gc.collect()
    _train(Rows(Renderer()), 0, steps=2)          # its steps free the first run's batches
    kept = cluster.run(_spare_shapes)
    batches = {a: sorted(s for s in shapes if len(s) == 3 and s[1:] == DATA.shape[1:]) for a, shapes in kept.items()}
    assert not any(batches.values()), batches
