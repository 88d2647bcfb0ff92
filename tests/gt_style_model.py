"""A GT-style transformer written the way GT users write it (raw tensors, manual SGD), and a NumPy
mirror of the same model with hand-written backward, used as the reference in the tests."""
import numpy as np

import gtnumba as gt

B, S, E, H, FF, C = 2, 3, 8, 2, 16, 4
EPS = 1e-5


def init_params(seed):
    rng = np.random.default_rng(seed)
    p = {}
    for name, shape in [("ln1_g", (E,)), ("ln1_b", (E,)), ("ln2_g", (E,)), ("ln2_b", (E,))]:
        p[name] = (1.0 if name.endswith("_g") else 0.0) + 0.1 * rng.standard_normal(shape)
    for name, (i, o) in [("q", (E, E)), ("k", (E, E)), ("v", (E, E)), ("o", (E, E)),
                         ("f1", (E, FF)), ("f2", (FF, E)), ("cls", (E, C))]:
        p[name + "_w"] = rng.standard_normal((i, o)) / np.sqrt(i)
        p[name + "_b"] = 0.1 * rng.standard_normal(o)
    return p


# ---- the gtnumba model, GT style ------------------------------------------------------------
def gt_layernorm(x, g, b):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / (var + EPS).sqrt() * g + b


def gt_forward(P, x, y_onehot):
    def lin(t, name):
        return t @ P[name + "_w"] + P[name + "_b"]

    a = gt_layernorm(x, P["ln1_g"], P["ln1_b"])
    d = E // H

    def heads(t):
        return t.reshape(B, S, H, d).permute(0, 2, 1, 3)

    q, k, v = heads(lin(a, "q")), heads(lin(a, "k")), heads(lin(a, "v"))
    scores = (q @ k.T) / float(np.sqrt(d))
    attn = gt.softmax(scores, axis=-1)
    o = (attn @ v).transpose(1, 2).reshape(B, S, E)
    h = x + lin(o, "o")
    f = lin(lin(gt_layernorm(h, P["ln2_g"], P["ln2_b"]), "f1").relu(), "f2")
    h = h + f
    logits = lin(h.mean(axis=1), "cls")
    return ((logits - y_onehot) ** 2).mean()


# ---- the NumPy mirror with a hand-written backward ----------------------------------------
def _ln_fwd(x, g, b):
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    rs = 1 / np.sqrt((xc ** 2).mean(-1, keepdims=True) + EPS)
    xh = xc * rs
    return xh * g + b, (xh, rs, g)


def _ln_bwd(dy, cache):
    xh, rs, g = cache
    dxh = dy * g
    dx = rs * (dxh - dxh.mean(-1, keepdims=True) - xh * (dxh * xh).mean(-1, keepdims=True))
    return dx, (dy * xh).reshape(-1, E).sum(0), dy.reshape(-1, E).sum(0)


def _lin_bwd(dy, x, w, grads, name):
    grads[name + "_w"] = grads.get(name + "_w", 0) + x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])
    grads[name + "_b"] = grads.get(name + "_b", 0) + dy.reshape(-1, dy.shape[-1]).sum(0)
    return dy @ w.T


def np_forward_backward(p, x, y):
    """Loss and gradients (dict like p) of the same model, in float64."""
    d = E // H
    a, ln1 = _ln_fwd(x, p["ln1_g"], p["ln1_b"])
    q, k, v = (a @ p[n + "_w"] + p[n + "_b"] for n in "qkv")
    Q, K, V = (t.reshape(B, S, H, d).transpose(0, 2, 1, 3) for t in (q, k, v))
    sc = Q @ K.transpose(0, 1, 3, 2) / np.sqrt(d)
    P = np.exp(sc - sc.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    o = (P @ V).transpose(0, 2, 1, 3).reshape(B, S, E)
    h1 = x + o @ p["o_w"] + p["o_b"]
    a2, ln2 = _ln_fwd(h1, p["ln2_g"], p["ln2_b"])
    z = a2 @ p["f1_w"] + p["f1_b"]
    r = np.maximum(z, 0)
    h2 = h1 + r @ p["f2_w"] + p["f2_b"]
    pooled = h2.mean(1)
    logits = pooled @ p["cls_w"] + p["cls_b"]
    loss = ((logits - y) ** 2).mean()

    g = {}
    dlogits = 2 * (logits - y) / logits.size
    dpooled = _lin_bwd(dlogits, pooled, p["cls_w"], g, "cls")
    dh2 = np.repeat(dpooled[:, None, :] / S, S, axis=1)
    dr = _lin_bwd(dh2, r, p["f2_w"], g, "f2")
    da2 = _lin_bwd(dr * (z > 0), a2, p["f1_w"], g, "f1")
    dh1_ln, g["ln2_g"], g["ln2_b"] = _ln_bwd(da2, ln2)
    dh1 = dh2 + dh1_ln
    do = _lin_bwd(dh1, o, p["o_w"], g, "o")
    dO = do.reshape(B, S, H, d).transpose(0, 2, 1, 3)
    dP = dO @ V.transpose(0, 1, 3, 2)
    dV = P.transpose(0, 1, 3, 2) @ dO
    dS = P * (dP - (dP * P).sum(-1, keepdims=True)) / np.sqrt(d)
    dQ, dK = dS @ K, dS.transpose(0, 1, 3, 2) @ Q
    da = 0
    for n, dT in zip("qkv", (dQ, dK, dV)):
        da = da + _lin_bwd(dT.transpose(0, 2, 1, 3).reshape(B, S, E), a, p[n + "_w"], g, n)
    dx_ln, g["ln1_g"], g["ln1_b"] = _ln_bwd(da, ln1)
    return loss, g
