"""The small MLP and training step several test files train, in-process and on meshes."""
import gtnumba as gt
from gtnumba import nn


def model():
    gt.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def step(net, opt, rng, batch=5):
    """One training step on a fresh batch, not read: its loss (a pipelined step runs on while
    nothing reads it)."""
    x = gt.tensor(rng.standard_normal((batch, 6)), dtype=gt.float32)
    y = gt.tensor(rng.integers(0, 3, batch))
    loss = nn.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def big_batch_model(seed=0):
    """A linear model whose batches (128 x 256 float32, 128 KB) go straight to the workers."""
    gt.manual_seed(seed)
    net = nn.Linear(256, 8)
    return net, gt.optim.SGD(net.parameters(), lr=0.1)


def big_batch_step(net, opt, rng):
    x = gt.tensor(rng.standard_normal((128, 256)).astype("float32"))
    loss = (net(x) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def in_process(fn):
    """fn() run with no mesh (in this process), the current mesh restored after."""
    from gtnumba.sched.mesh import current_mesh, set_mesh
    mesh = current_mesh()
    set_mesh(None)
    try:
        return fn()
    finally:
        set_mesh(mesh)


def runner_stats():
    from gtnumba.sched.mesh import current_mesh
    return dict(current_mesh().runner.stats)
