"""A GT-style training script (raw tensors, manual SGD under no_grad) trains, and its loss and
gradients match a NumPy mirror of the same model with a hand-written backward."""
import numpy as np

import gtnumba as gt
from gt_style_model import B, C, E, S, gt_forward, init_params, np_forward_backward


def _data(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, S, E))
    y = np.eye(C)[rng.integers(0, C, B)]
    return x, y


def test_loss_and_gradients_match_numpy_mirror():
    p = init_params(0)
    x, y = _data(1)
    P = {k: gt.tensor(v, dtype=gt.float64, requires_grad=True) for k, v in p.items()}
    loss = gt_forward(P, gt.tensor(x, dtype=gt.float64), gt.tensor(y, dtype=gt.float64))
    loss.backward()
    ref_loss, ref_grads = np_forward_backward(p, x, y)
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=1e-10)
    assert set(ref_grads) == set(P)
    for k in P:
        np.testing.assert_allclose(P[k].grad.numpy(), ref_grads[k], rtol=1e-8, atol=1e-12, err_msg=k)


def test_manual_sgd_training_loop_lowers_loss_and_tracks_numpy():
    p = init_params(2)
    x, y = _data(3)
    params = {k: gt.tensor(v.astype(np.float32), requires_grad=True) for k, v in p.items()}
    xt, yt = gt.tensor(x.astype(np.float32)), gt.tensor(y.astype(np.float32))
    ref = {k: v.copy() for k, v in p.items()}
    lr, losses = 0.05, []
    for _ in range(30):
        loss = gt_forward(params, xt, yt)
        loss.backward()
        with gt.no_grad():
            for t in params.values():
                t -= lr * t.grad
                t.grad.zero_()
        losses.append(float(loss.data.numpy()))
        ref_loss, ref_grads = np_forward_backward(ref, x, y)
        for k in ref:
            ref[k] -= lr * ref_grads[k]
        np.testing.assert_allclose(losses[-1], ref_loss, rtol=2e-4)
    assert losses[-1] < 0.5 * losses[0]
    for k in params:
        assert params[k].is_leaf and params[k].requires_grad
        np.testing.assert_allclose(params[k].numpy(), ref[k], rtol=1e-3, atol=1e-4, err_msg=k)
