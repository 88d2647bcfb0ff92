"""Layouts chosen by cost: the planner prices data parallel against tensor parallel for every
parameter from the step's own DistPlans, keeps the user's placements, and a run laid out by cost
trains exactly like the single-process run."""
import numpy as np
import pytest

import gtnumba as gt
from gtnumba import nn
from gtnumba.layout import REPLICATE, Replicate, Shard, collective_bytes, even_sizes
from gtnumba.sched import cost
from gtnumba.sched.distribute import build_dist_plan
from gtnumba.sched.mesh import Flat, Mesh, set_mesh
from gtnumba.sched.spmd import InProcessRunner


@pytest.fixture
def mesh():
    def use(workers):
        set_mesh(Mesh(workers, InProcessRunner(workers)) if workers else None)
    yield use
    set_mesh(None)


def _bytes(key, layouts, workers):
    return cost.plan_bytes(key, build_dist_plan(key, tuple(layouts), workers))


def _step(model, x):
    """One training step (forward, backward, optimizer update) on the current mesh, planned
    afresh; gives the structure key the planner saw and its choice (layouts, bytes per option)."""
    cost._CHOICES.clear()
    params = list(model.parameters())
    opt = gt.optim.SGD(params, lr=0.1)
    loss = (model(x).tanh() ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    loss.item()                                   # the whole step has run
    (cache_key, (layouts, priced)), = cost._CHOICES.items()
    return cache_key[1], layouts, priced


def _leaf(key, shape):
    return next(i for i, entry in enumerate(key[0]) if entry[0][0].shape == shape)


def _embedding(seed=0):
    """The first user's embedding, Linear(40000, 128), on a batch of 4 x 4 tokens (float32)."""
    gt.manual_seed(seed)
    x = np.random.default_rng(seed).standard_normal((4, 4, 40000)).astype(np.float32)
    return nn.Linear(40000, 128), gt.from_numpy(x)


def test_collective_bytes_are_the_ring_numbers():
    assert collective_bytes("allreduce", 1200, 3) == 1600         # 2 (W-1)/W n
    assert collective_bytes("allgather", 1200, 3) == 800           # (W-1)/W n
    assert collective_bytes("reducescatter", 1200, 4) == 900
    assert collective_bytes("allreduce", 1200, 1) == 0


@pytest.mark.parametrize("workers", [2, 3])
def test_embedding_is_sharded_along_its_input_dim(workers, mesh):
    mesh(workers)
    emb, x = _embedding()
    key, chosen, priced = _step(emb, x)
    w, b, xi = _leaf(key, (128, 40000)), _leaf(key, (128,)), _leaf(key, (4, 4, 40000))
    assert chosen[w] == Shard(1, even_sizes(40000, workers))
    assert chosen[b] == REPLICATE
    assert emb.weight._node.value.layout == chosen[w]          # the parameter stays sharded
    # data parallel: the gradients of weight and bias are all-reduced (the loss stays partial until read)
    dp = _with(_with(chosen, w, REPLICATE), xi, Shard(0, even_sizes(4, workers)))
    ring = 2 * (workers - 1) / workers
    assert _bytes(key, dp, workers) == pytest.approx(ring * (128 * 40000 * 4 + 128 * 4), abs=1e-6)
    # by cost: the batch is split along the same 40000 pixels, so the weight's gradient stays local
    # and only the embedding's partial (16 x 128) output is all-reduced
    assert _bytes(key, chosen, workers) == pytest.approx(ring * 16 * 128 * 4, abs=1e-6)
    assert priced[w][chosen[w]] == _bytes(key, chosen, workers)
    assert _bytes(key, dp, workers) >= 5 * _bytes(key, chosen, workers)


def _with(layouts, i, layout):
    return layouts[:i] + (layout,) + layouts[i + 1:]


def test_small_linear_stays_data_parallel(mesh):
    mesh(2)
    gt.manual_seed(0)
    lin = nn.Linear(128, 64)                   # 32 KB of weight, a batch of 512 rows
    x = gt.from_numpy(np.random.default_rng(1).standard_normal((512, 128)).astype(np.float32))
    key, chosen, priced = _step(lin, x)
    w = _leaf(key, (64, 128))
    assert chosen[w] == REPLICATE
    assert set(priced[w]) == {REPLICATE, Shard(0, (32, 32)), Shard(1, (64, 64))}
    assert min(priced[w], key=priced[w].get) == REPLICATE
    assert priced[w][REPLICATE] == 128 * 64 * 4 + 64 * 4             # W = 2: 2 (W-1)/W = 1
    # data parallel: after the update each worker holds its 1/W slice (the sharded optimizer)
    assert isinstance(lin.weight._node.value.layout, (Replicate, Flat))


@pytest.mark.parametrize("placement", ["shard0", "replicate"])
def test_user_placement_overrides_the_cost(placement, mesh):
    mesh(2)
    emb, x = _embedding()
    if placement == "shard0":
        gt.shard(emb.weight, 0)
    else:
        gt.replicate(emb.weight)
    cost._CHOICES.clear()
    opt = gt.optim.SGD(emb.parameters(), lr=0.1)
    loss = (emb(x).tanh() ** 2).mean()
    loss.backward()
    opt.step()
    loss.item()
    want = Shard(0, (64, 64)) if placement == "shard0" else REPLICATE
    assert emb.weight._node.value.layout == want
    (_, (layouts, priced)), = cost._CHOICES.items()        # the batch was still laid out by cost
    assert want in layouts and not priced


def test_verbose_prints_the_layout_and_the_bytes_of_each_option(monkeypatch, capsys, mesh):
    mesh(2)
    monkeypatch.setenv("GT_VERBOSE", "1")
    _step(*_embedding(seed=3))
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "(128, 40000)" in l)
    # each option with the batch laid out best for it: replicated, the batch still goes along the
    # pixels and the gradient comes out sharded, to be all-gathered (10.24 MB) for the update
    assert line.endswith("Shard(1); bytes per worker per step: Replicate() 10.25 MB, Shard(0) 1.28 MB, "
                         "Shard(1) 8.19 KB")
    assert "moves 8.19 KB per worker (data parallel: 20.48 MB)" in out


# ---- a run laid out by cost trains like the single-process run ---------------------------------
def _train(workers, mesh, optimizer, steps=4):
    mesh(workers)
    gt.manual_seed(0)
    emb, head = nn.Linear(2048, 8, dtype=gt.float64), nn.Linear(8, 3, dtype=gt.float64)
    params = list(emb.parameters()) + list(head.parameters())
    opt = (gt.optim.SGD(params, lr=0.1, momentum=0.9) if optimizer == "sgd"
           else gt.optim.Adam(params, lr=0.01))
    rng = np.random.default_rng(1)
    losses = []
    for _ in range(steps):
        x = gt.from_numpy(rng.standard_normal((5, 2, 2048)))        # 5 sequences: uneven shards
        y = gt.tensor(rng.integers(0, 3, 5))
        loss = nn.cross_entropy(head(emb(x).tanh().mean(axis=1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    layout = emb.weight._node.value.layout if workers else None
    return losses, [p.numpy() for p in params], layout


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_laid_out_by_cost_matches_one_process(optimizer, mesh):
    want_losses, want_params, _ = _train(0, mesh, optimizer)
    for workers in (2, 3):
        losses, params, layout = _train(workers, mesh, optimizer)
        assert layout == Shard(1, even_sizes(2048, workers))
        np.testing.assert_allclose(losses, want_losses, rtol=1e-10)
        for got, want in zip(params, want_params):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def _gt_example_losses(steps):
    """The GT-style example's model (GT Linear (in, out), raw-tensor blocks, SGD by hand)."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "gt_style_train.py")
    spec = importlib.util.spec_from_file_location("gt_style_train_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    np.random.seed(0)
    model = example.PixelTransformer(16, 4, 16, 2, 32, 1, 10)
    params = model.parameters()
    rng = np.random.default_rng(3)
    losses = []
    for _ in range(steps):
        x = gt.tensor(rng.standard_normal((4, 4, 256)).astype(np.float32))
        y = gt.tensor(np.eye(10, dtype=np.float32)[rng.integers(0, 10, 4)])
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        with gt.no_grad():
            for p in params:
                p -= 0.1 * p.grad
                p.grad.zero_()
        losses.append(float(loss.data.numpy()))
    return losses, [p.numpy() for p in params]


@pytest.mark.parametrize("workers", [2, 3])
def test_gt_example_with_sliced_updates_and_chosen_layouts_equals_one_process(workers, mesh):
    # the sliced (ZeRO-1) weights are gathered for a transpose in the backward's first level while
    # their first forward use waits for a collective: the gathers must be levelled by all readers
    mesh(None)
    ref_losses, ref_params = _gt_example_losses(3)
    mesh(workers)
    losses, params = _gt_example_losses(3)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(params, ref_params):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _classify(model, x, y):
    """A classifier's training step; gives the structure key the planner saw and its layouts."""
    cost._CHOICES.clear()
    opt = gt.optim.SGD(list(model.parameters()), lr=0.1)
    logits = model(x).reshape(-1, model.out_features)
    loss = nn.cross_entropy(logits, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    loss.item()
    if not cost._CHOICES:                          # in-process: nothing to lay out
        return None, None
    (cache_key, (layouts, _)), = cost._CHOICES.items()
    return cache_key[1], layouts


@pytest.mark.parametrize("workers", [2, 3])
def test_labels_go_whole_to_every_worker_where_that_saves_collectives(workers, mesh):
    """Behind the sharded embedding every worker computes the whole (small) rest of the step, so
    split labels would be gathered: whole labels take those collectives out, and train alike."""
    emb, x = _embedding()
    y = np.random.default_rng(1).integers(0, 128, 16)
    mesh(0)
    _classify(emb, x, gt.tensor(y))
    want = emb.weight.numpy()
    mesh(workers)
    emb, x = _embedding()
    key, chosen = _classify(emb, x, gt.tensor(y))
    yi = _leaf(key, (16,))
    assert chosen[yi] == REPLICATE
    split = _with(chosen, yi, Shard(0, even_sizes(16, workers)))
    count = lambda layouts: sum(hasattr(s, "kind") for s in build_dist_plan(key, tuple(layouts), workers).steps)
    assert count(chosen) < count(split)
    np.testing.assert_allclose(emb.weight.numpy(), want, rtol=1e-5, atol=1e-7)


def test_labels_stay_split_under_data_parallel(mesh):
    """A data-parallel step splits its labels with the batch: whole labels would save nothing."""
    mesh(2)
    gt.manual_seed(0)
    lin = nn.Linear(128, 64)
    x = gt.from_numpy(np.random.default_rng(1).standard_normal((512, 128)).astype(np.float32))
    y = gt.tensor(np.random.default_rng(2).integers(0, 64, 512))
    key, chosen = _classify(lin, x, y)
    assert chosen[_leaf(key, (512,))] == Shard(0, (256, 256))


def test_a_parameter_left_sliced_by_its_update_does_not_flip_the_next_steps_plan(mesh, monkeypatch):
    """Rows of a parameter picked by indices computed in the step: the update leaves the parameter
    sliced (ZeRO-1), and the next step chooses the indices' layout as for the replicated parameter it
    is.  (Chosen around the slices, the indices went whole, the update then whole, the step after
    sliced again: two plans in turn, and a loop that never ran one plan twice was never predicted.)"""
    from gtnumba.sched import mesh_compute
    plans = []
    real = mesh_compute._plan
    monkeypatch.setattr(mesh_compute, "_plan", lambda *a: plans.append(real(*a)) or plans[-1])

    def train(workers):
        mesh(workers)
        table = gt.tensor(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), requires_grad=True)
        opt = gt.optim.SGD([table], lr=0.1)
        losses = []
        for _ in range(6):
            loss = (table[gt.tensor(np.array([0, 1])) * 2] ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, table.numpy()
    want = train(0)
    got = train(2)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    assert len(plans) == 6 and all(p is plans[1] for p in plans[1:])
