"""nn: parameter discovery, state_dict, layers, attention and losses against NumPy float64 references."""
import math

import numpy as np
import pytest

import gtnumba as gt
from gtnumba import nn
from gtnumba.nn import functional as F

F64 = gt.float64


def t64(a, requires_grad=False):
    return gt.tensor(np.asarray(a, dtype=np.float64), dtype=F64, requires_grad=requires_grad)


def close(a, b, rtol=1e-9, atol=1e-11):
    np.testing.assert_allclose(a.numpy() if isinstance(a, gt.Tensor) else a, b, rtol=rtol, atol=atol)


def numeric_grad(f, arrays, which, eps=1e-6):
    """Central differences of scalar f(*arrays) with respect to arrays[which] (float64)."""
    x = arrays[which]
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        hi = f(*arrays)
        x[i] = old - eps
        lo = f(*arrays)
        x[i] = old
        g[i] = (hi - lo) / (2 * eps)
    return g


# ---- parameter discovery --------------------------------------------------------------------------
class Leafy(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(np.ones((2, 3), np.float32))
        self.not_a_param = gt.ones(3)                       # no requires_grad: not a parameter
        self.blocks = [nn.Linear(3, 3), nn.Linear(3, 2)]
        self.heads = {"a": nn.Linear(2, 1), "b": [gt.zeros(4, requires_grad=True)]}
        self.shared = self.blocks[0]                        # same module twice
        self.alias = self.w                                 # same tensor twice
        self.extra = gt.ones(5, requires_grad=True)
        self._parameters.append(self.extra)                 # GT style: already an attribute
        self._parameters.append(gt.zeros(6, requires_grad=True))
        self.derived = self.w * 2                           # not a leaf: not a parameter


def test_parameters_found_through_attributes_containers_and_gt_list_without_duplicates():
    m = Leafy()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["w", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias",
                     "heads.a.weight", "heads.a.bias", "heads.b.0", "extra", "_parameters.1"]
    params = list(m.parameters())
    assert len({id(p) for p in params}) == len(params) == 10
    assert params[0] is m.w
    assert m.num_parameters() == 6 + 12 + 8 + 3 + 4 + 5 + 6
    assert [n for n, _ in m.named_parameters(recurse=False)] == ["w", "heads.b.0", "extra", "_parameters.1"]
    children = [n for n, _ in m.named_children()]
    assert children == ["blocks.0", "blocks.1", "heads.a"]
    assert len(list(m.modules())) == 4
    assert isinstance(m.w, nn.Parameter) and not isinstance(m.not_a_param, nn.Parameter)


def test_gt_style_module_without_super_init_and_replaced_parameter_list():
    class Raw(nn.Module):
        def __init__(self):                                  # no super().__init__()
            self.a = gt.ones(2, requires_grad=True)
            self._parameters.append(self.a)
            self._parameters.append(gt.zeros(3, requires_grad=True))

    class Replaced(nn.Module):
        def __init__(self):
            super().__init__()
            self._parameters = [gt.ones(2, requires_grad=True), gt.ones(1, requires_grad=True)]

        def forward(self, x):
            return x * self._parameters[0]

    r = Raw()
    assert [p.shape for p in r.parameters()] == [(2,), (3,)]
    assert r.training
    rep = Replaced()
    assert [n for n, _ in rep.named_parameters()] == ["_parameters.0", "_parameters.1"]
    assert rep(gt.ones(2)).numpy().tolist() == [1.0, 1.0]


def test_containers_name_parameters_by_index_and_key():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU) and isinstance(seq[1:], nn.Sequential)
    from collections import OrderedDict
    named = nn.Sequential(OrderedDict(fc=nn.Linear(2, 2), act=nn.Tanh()))
    assert [n for n, _ in named.named_parameters()] == ["fc.weight", "fc.bias"]
    ml = nn.ModuleList([nn.Linear(1, 1)])
    ml.append(nn.Linear(1, 2))
    assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    md = nn.ModuleDict({"enc": nn.Linear(1, 1)})
    assert [n for n, _ in md.named_parameters()] == ["enc.weight", "enc.bias"]
    with pytest.raises(TypeError, match="expected a Module"):
        ml.append(3)
    x = gt.ones(4, 2)
    assert seq(x).shape == (4, 1)
    text = repr(seq)
    assert "(0): Linear(in_features=2, out_features=3, bias=True)" in text and "(1): ReLU()" in text


def test_train_eval_zero_grad():
    seq = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    assert seq.training and seq[1].training
    seq.eval()
    assert not seq.training and not seq[1].training
    seq.train()
    assert seq[1].training
    seq(gt.ones(3, 2)).sum().backward()
    assert all(p.grad is not None for p in seq.parameters())
    seq.zero_grad(set_to_none=False)
    assert all(np.all(p.grad.numpy() == 0) for p in seq.parameters())
    seq.zero_grad()
    assert all(p.grad is None for p in seq.parameters())


# ---- state_dict ---------------------------------------------------------------------------------------
def _mlp():
    return nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.LayerNorm(4), nn.Linear(4, 2))


def test_state_dict_round_trip():
    gt.manual_seed(1)
    a = _mlp()
    gt.manual_seed(2)
    b = _mlp()
    sd = a.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias"]
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    sd["0.weight"][:] = 0.0                                   # a copy: the module is unaffected
    assert not np.all(a[0].weight.numpy() == 0)
    sd = a.state_dict()
    result = b.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=n)
        assert q.requires_grad and q.is_leaf
    x = gt.randn(5, 3)
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    b(x).sum().backward()                                     # still trainable after loading
    assert b[0].weight.grad.shape == (4, 3)


def test_state_dict_errors_are_raised_before_any_change():
    m = _mlp()
    before = m.state_dict()
    bad = dict(before)
    del bad["0.bias"]
    bad["ghost"] = np.zeros(1)
    bad["3.weight"] = np.zeros((5, 5))
    with pytest.raises(RuntimeError) as e:
        m.load_state_dict(bad)
    msg = str(e.value)
    assert "0.bias" in msg and "ghost" in msg and "3.weight" in msg and "(5, 5)" in msg and "(2, 4)" in msg
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    partial = {"0.bias": np.full(4, 7.0), "nope": np.zeros(2)}
    res = m.load_state_dict(partial, strict=False)
    assert "nope" in res.unexpected_keys and "0.weight" in res.missing_keys
    np.testing.assert_array_equal(m[0].bias.numpy(), np.full(4, 7.0, np.float32))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        m.load_state_dict({"0.bias": np.zeros(3)}, strict=False)


# ---- layers against NumPy ---------------------------------------------------------------------------
def test_linear_forward_backward_matches_numpy():
    gt.manual_seed(0)
    lin = nn.Linear(4, 3, dtype=F64)
    assert lin.weight.shape == (3, 4) and lin.bias.shape == (3,)
    w, b = lin.weight.numpy(), lin.bias.numpy()
    assert np.all(np.abs(w) <= 0.5) and w.dtype == np.float64
    x_np = np.random.default_rng(0).standard_normal((2, 5, 4))
    x = t64(x_np, requires_grad=True)
    y = lin(x)
    close(y, x_np @ w.T + b)
    g_np = np.random.default_rng(1).standard_normal((2, 5, 3))
    (y * t64(g_np)).sum().backward()
    close(x.grad, g_np @ w)
    close(lin.weight.grad, g_np.reshape(-1, 3).T @ x_np.reshape(-1, 4))
    close(lin.bias.grad, g_np.sum((0, 1)))
    nobias = nn.Linear(4, 3, bias=False)
    assert nobias.bias is None and len(list(nobias.parameters())) == 1


def test_linear_init_is_seeded():
    gt.manual_seed(5)
    a = nn.Linear(6, 7).weight.numpy()
    gt.manual_seed(5)
    b = nn.Linear(6, 7).weight.numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= 1 / math.sqrt(6)


def test_linear_wrong_input_dim_names_module_and_shapes():
    lin = nn.Linear(8, 2)
    with pytest.raises(ValueError, match=r"Linear\(in_features=8, .*input has last dim 5"):
        lin(gt.ones(3, 5))


def _ln_ref(x, w, b, eps, k):
    axes = tuple(range(x.ndim - k, x.ndim))
    mu = x.mean(axes, keepdims=True)
    var = x.var(axes, keepdims=True)
    xh = (x - mu) / np.sqrt(var + eps)
    return xh * w + b


@pytest.mark.parametrize("shape", [5, (3, 4)])
def test_layer_norm_forward_backward_matches_numpy(shape):
    rng = np.random.default_rng(3)
    ln = nn.LayerNorm(shape, eps=1e-5, dtype=F64)
    norm = (shape,) if isinstance(shape, int) else shape
    w_np, b_np = rng.standard_normal(norm), rng.standard_normal(norm)
    ln.load_state_dict({"weight": w_np, "bias": b_np})
    x_np = rng.standard_normal((2,) + norm) * 3 + 1
    x = t64(x_np, requires_grad=True)
    g_np = rng.standard_normal(x_np.shape)
    y = ln(x)
    close(y, _ln_ref(x_np, w_np, b_np, 1e-5, len(norm)))
    (y * t64(g_np)).sum().backward()

    def f_x(xa, wa, ba):
        return float((_ln_ref(xa, wa, ba, 1e-5, len(norm)) * g_np).sum())

    arrays = [x_np.copy(), w_np.copy(), b_np.copy()]
    close(x.grad, numeric_grad(f_x, arrays, 0), rtol=1e-5, atol=1e-7)
    close(ln.weight.grad, numeric_grad(f_x, arrays, 1), rtol=1e-5, atol=1e-7)
    close(ln.bias.grad, numeric_grad(f_x, arrays, 2), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"LayerNorm.*does not end with"):
        ln(gt.ones(2, 7))


def test_embedding_gather_and_scatter_add_gradient():
    gt.manual_seed(0)
    emb = nn.Embedding(6, 3, dtype=F64)
    table = emb.weight.numpy()
    idx = np.array([[0, 5, 5], [2, 0, 5]])
    out = emb(gt.tensor(idx))
    assert out.shape == (2, 3, 3)
    close(out, table[idx])
    g = np.random.default_rng(0).standard_normal((2, 3, 3))
    (out * t64(g)).sum().backward()
    ref = np.zeros_like(table)
    np.add.at(ref, idx, g)
    close(emb.weight.grad, ref)
    close(emb([1, 4]), table[[1, 4]])                         # lists and arrays work too
    with pytest.raises(IndexError, match=r"Embedding\(num_embeddings=6.*\[0, 6\).*\[0, 9\]"):
        emb(np.array([0, 9]))
    with pytest.raises(TypeError, match="Embedding.*integers"):
        emb(gt.ones(2))


def test_embedding_padding_idx_gets_no_gradient():
    emb = nn.Embedding(4, 2, padding_idx=0, dtype=F64)
    assert np.all(emb.weight.numpy()[0] == 0)
    emb(gt.tensor([0, 1, 0])).sum().backward()
    g = emb.weight.grad.numpy()
    assert np.all(g[0] == 0) and np.all(g[1] == 1)


def test_dropout_is_seeded_scaled_and_identity_in_eval():
    d = nn.Dropout(0.25)
    x_np = np.random.default_rng(0).standard_normal((200, 50))
    x = t64(x_np, requires_grad=True)
    gt.manual_seed(3)
    y1 = d(x).numpy()
    gt.manual_seed(3)
    y2 = d(x)
    np.testing.assert_array_equal(y1, y2.numpy())
    kept = y1 != 0
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_allclose(y1[kept], x_np[kept] / 0.75)
    y2.sum().backward()
    close(x.grad, kept / 0.75)
    d.eval()
    assert d(x) is x
    with pytest.raises(ValueError, match="Dropout"):
        nn.Dropout(1.5)
    assert np.all(F.dropout(x, 1.0).numpy() == 0)


def test_activation_modules_match_numpy():
    x_np = np.linspace(-3, 3, 13)
    x = t64(x_np)
    erf = np.vectorize(math.erf)
    close(nn.ReLU()(x), np.maximum(x_np, 0))
    close(nn.GELU()(x), 0.5 * x_np * (1 + erf(x_np / math.sqrt(2))), rtol=1e-7)
    close(nn.Tanh()(x), np.tanh(x_np))
    close(nn.Sigmoid()(x), 1 / (1 + np.exp(-x_np)))
    c = math.sqrt(2 / math.pi)
    close(nn.GELU("tanh")(x), 0.5 * x_np * (1 + np.tanh(c * (x_np + 0.044715 * x_np ** 3))))
    close(nn.softmax(t64(np.eye(3)), dim=0), np.exp(np.eye(3)) / np.exp(np.eye(3)).sum(0))
    assert nn.relu is F.relu and nn.cross_entropy is F.cross_entropy


# ---- multi-head attention ------------------------------------------------------------------------
def _mha_ref(m, q, k, v, mask=None):
    P = {n: p.numpy() for n, p in m.named_parameters()}
    B, Sq, E = q.shape
    Sk, H = k.shape[1], m.num_heads
    d = E // H

    def proj(x, name):
        return x @ P[name + ".weight"].T + P[name + ".bias"]

    def heads(x):
        return x.reshape(B, -1, H, d).transpose(0, 2, 1, 3)

    Q, K, V = heads(proj(q, "q_proj")), heads(proj(k, "k_proj")), heads(proj(v, "v_proj"))
    s = Q @ K.transpose(0, 1, 3, 2) / math.sqrt(d)
    if mask is not None:
        s = np.where(mask, -1e9, s) if mask.dtype == bool else s + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = (p @ V).transpose(0, 2, 1, 3).reshape(B, Sq, E)
    return proj(o, "out_proj")


@pytest.mark.parametrize("kind", ["self", "cross", "bool_mask", "float_mask", "batch_mask"])
def test_multi_head_attention_matches_numpy(kind):
    gt.manual_seed(0)
    rng = np.random.default_rng(7)
    B, Sq, Sk, E, H = 2, 4, 4 if kind != "cross" else 3, 8, 2
    m = nn.MultiHeadAttention(E, H, dtype=F64)
    q_np = rng.standard_normal((B, Sq, E))
    kv_np = rng.standard_normal((B, Sk, E)) if kind == "cross" else q_np
    mask_np, mask = None, None
    if kind == "bool_mask":
        mask_np = np.triu(np.ones((Sq, Sk), bool), 1)
        mask = gt.tensor(mask_np)
    elif kind == "float_mask":
        mask_np = rng.standard_normal((Sq, Sk))
        mask = mask_np                                   # a NumPy additive mask
    elif kind == "batch_mask":
        mask_np = rng.random((B, Sq, Sk)) > 0.6
        mask_np[..., 0] = False
        mask = gt.tensor(mask_np)
    q = t64(q_np)
    out = m(q, t64(kv_np), t64(kv_np), mask=mask) if kind == "cross" else m(q, mask=mask)
    assert out.shape == (B, Sq, E)
    ref_mask = mask_np[:, None] if kind == "batch_mask" else mask_np
    close(out, _mha_ref(m, q_np, kv_np, kv_np, ref_mask), rtol=1e-9, atol=1e-10)


def test_multi_head_attention_gradients_match_finite_differences():
    gt.manual_seed(1)
    rng = np.random.default_rng(2)
    B, S, E, H = 1, 3, 4, 2
    m = nn.MultiHeadAttention(E, H, dtype=F64)
    x_np = rng.standard_normal((B, S, E))
    mask_np = np.triu(np.ones((S, S), bool), 1)
    g_np = rng.standard_normal((B, S, E))
    x = t64(x_np, requires_grad=True)
    (m(x, mask=gt.tensor(mask_np)) * t64(g_np)).sum().backward()

    def loss_x(xa):
        return float((_mha_ref(m, xa, xa, xa, mask_np) * g_np).sum())

    close(x.grad, numeric_grad(loss_x, [x_np.copy()], 0), rtol=1e-5, atol=1e-7)
    names = dict(m.named_parameters())
    for name in ("q_proj.weight", "k_proj.bias", "v_proj.weight", "out_proj.weight"):
        p = names[name]
        base = p.numpy()

        def loss_p(arr, name=name, p=p):
            saved = p.numpy()
            m.load_state_dict({name: arr}, strict=False)
            val = float((_mha_ref(m, x_np, x_np, x_np, mask_np) * g_np).sum())
            m.load_state_dict({name: saved}, strict=False)
            return val

        grad = p.grad.numpy()
        num = numeric_grad(loss_p, [base.copy()], 0)
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7, err_msg=name)


def test_multi_head_attention_errors_and_options():
    m = nn.MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match="not divisible"):
        nn.MultiHeadAttention(8, 3)
    with pytest.raises(ValueError, match=r"MultiHeadAttention\(embed_dim=8.*query.*\(2, 3, 6\)"):
        m(gt.ones(2, 3, 6))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 5\) does not broadcast"):
        m(gt.ones(2, 3, 8), mask=np.zeros((3, 5), bool))
    with pytest.raises(TypeError, match="mask must be bool"):
        m(gt.ones(2, 3, 8), mask=np.zeros((3, 3), np.int64))
    x = gt.randn(2, 3, 8)
    kpm = np.array([[False, False, True], [False, True, True]])
    out = m(x, key_padding_mask=kpm)
    explicit = m(x, mask=gt.tensor(np.broadcast_to(kpm[:, None, :], (2, 3, 3)).copy()))
    np.testing.assert_allclose(out.numpy(), explicit.numpy(), rtol=1e-6)
    causal = m(x, is_causal=True)
    np.testing.assert_allclose(causal.numpy(), m(x, mask=np.triu(np.ones((3, 3), bool), 1)).numpy(), rtol=1e-6)
    assert m(gt.randn(3, 8)).shape == (3, 8)                     # unbatched


def test_scaled_dot_product_attention_uses_pytorch_mask_convention():
    rng = np.random.default_rng(0)
    q, k, v = (t64(rng.standard_normal((2, 3, 4))) for _ in range(3))
    allowed = np.tril(np.ones((3, 3), bool))
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    b = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    close(a, b.numpy())


# ---- losses ----------------------------------------------------------------------------------------
def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_value_and_gradient(reduction):
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((5, 4)) * 3
    labels = np.array([0, 3, 3, 1, 2])
    x = t64(x_np, requires_grad=True)
    loss = nn.cross_entropy(x, gt.tensor(labels), reduction=reduction)
    p = _softmax(x_np)
    per_row = -np.log(p[np.arange(5), labels])
    ref = {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]
    close(loss, ref)
    (loss if reduction != "none" else loss.sum()).backward()
    onehot = np.eye(4)[labels]
    scale = 1 / 5 if reduction == "mean" else 1.0
    close(x.grad, (p - onehot) * scale)
    close(nn.cross_entropy(x, labels.tolist(), reduction=reduction), ref)           # a list
    close(F.nll_loss(F.log_softmax(x, axis=-1), labels, reduction=reduction), ref)  # nll path


def test_cross_entropy_errors_name_shapes():
    x = gt.randn(4, 3)
    with pytest.raises(TypeError, match=r"cross_entropy: labels must be integer.*float32"):
        nn.cross_entropy(x, gt.ones(4))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\).*\(5,\)"):
        nn.cross_entropy(x, np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, C\), got \(2, 2, 3\)"):
        nn.cross_entropy(gt.randn(2, 2, 3), np.zeros(2, np.int64))
    with pytest.raises(IndexError, match=r"\[0, 3\).*\[0, 3\]"):
        nn.cross_entropy(x, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="reduction"):
        nn.cross_entropy(x, np.zeros(4, np.int64), reduction="avg")
    single = nn.cross_entropy(t64([1.0, 2.0, 0.5]), 1)
    close(single, -np.log(_softmax(np.array([1.0, 2.0, 0.5]))[1]))


def test_mse_loss_value_and_gradient():
    rng = np.random.default_rng(1)
    a_np, b_np = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    a = t64(a_np, requires_grad=True)
    loss = nn.mse_loss(a, b_np)
    close(loss, ((a_np - b_np) ** 2).mean())
    loss.backward()
    close(a.grad, 2 * (a_np - b_np) / a_np.size)
    close(nn.mse_loss(a, t64(b_np), reduction="sum"), ((a_np - b_np) ** 2).sum())
    with pytest.raises(ValueError, match=r"mse_loss: input of shape \(3, 4\) and target of shape \(4,\)"):
        nn.mse_loss(a, np.zeros(4))


def test_binary_cross_entropy_value_gradient_and_clamping():
    rng = np.random.default_rng(2)
    p_np = rng.uniform(0.05, 0.95, (4, 3))
    t_np = (rng.random((4, 3)) > 0.5).astype(np.float64)
    p = t64(p_np, requires_grad=True)
    loss = nn.binary_cross_entropy(p, t_np)
    close(loss, -(t_np * np.log(p_np) + (1 - t_np) * np.log(1 - p_np)).mean())
    loss.backward()
    close(p.grad, (p_np - t_np) / (p_np * (1 - p_np)) / p_np.size, rtol=1e-8)
    edge = nn.binary_cross_entropy(gt.tensor([0.0, 1.0]), gt.tensor([1.0, 0.0]))
    assert np.isfinite(edge.item()) and edge.item() > 10
    logits_np = rng.standard_normal((4, 3)) * 4
    z = t64(logits_np, requires_grad=True)
    bce_l = F.binary_cross_entropy_with_logits(z, t_np)
    s = 1 / (1 + np.exp(-logits_np))
    close(bce_l, -(t_np * np.log(s) + (1 - t_np) * np.log(1 - s)).mean())
    bce_l.backward()
    close(z.grad, (s - t_np) / s.size)


def test_client_nn_is_gts_nn_on_the_same_module_class():
    import gtnumba.client.nn as client_nn
    from gtnumba.client import nn as nn2
    from gtnumba.client import optim
    import gtnumba.optim
    assert client_nn is nn2 and client_nn is not nn          # GT's nn: its Linear is (in, out)
    assert client_nn.Module is nn.Module and client_nn.LayerNorm is nn.LayerNorm
    assert client_nn.Linear(3, 2).weight.shape == (3, 2) and nn.Linear(3, 2).weight.shape == (2, 3)
    assert optim is gtnumba.optim


def test_buffers_are_saved_and_init_functions_are_seeded():
    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.register_buffer("scale", np.full(3, 2.0, np.float32))

        def forward(self, x):
            return self.lin(x) * self.scale

    m = WithBuffer()
    assert [n for n, _ in m.named_parameters()] == ["lin.weight", "lin.bias"]
    sd = m.state_dict()
    assert list(sd) == ["lin.weight", "lin.bias", "scale"]
    sd["scale"] = np.full(3, 5.0)
    m.load_state_dict(sd)
    np.testing.assert_array_equal(m.scale.numpy(), np.full(3, 5.0, np.float32))
    gt.manual_seed(3)
    nn.init.xavier_uniform_(m.lin.weight)
    a = m.lin.weight.numpy()
    gt.manual_seed(3)
    nn.init.xavier_uniform_(m.lin.weight)
    np.testing.assert_array_equal(a, m.lin.weight.numpy())
    assert np.abs(a).max() <= 1.0 and m.lin.weight.requires_grad and m.lin.weight.is_leaf
    nn.init.zeros_(m.lin.bias)
    assert np.all(m.lin.bias.numpy() == 0)
    assert m.to("cuda") is m
    with pytest.raises(NotImplementedError, match="dtype=float64"):
        m.to(gt.float64)
