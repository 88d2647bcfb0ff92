"""GT's cluster calls on gtnumba's engine (Dask): gt.connect and gt.gpu_workers.

GT's command-line server and workers are Dask's: `dask scheduler` (GT: `python -m gt.server`) and
one `dask worker tcp://host:8786` per GPU (GT: `python -m gt.worker`); see README "Coming from GT".
"""
from . import cluster


def connect(address):
    """Join the Dask scheduler at "host:port" (or "tcp://host:port"); every step then runs there."""
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(f"gt.connect: expected an address 'host:port', got {address!r}")
    if cluster.client() is not None:
        raise RuntimeError("gt.connect: already connected to a cluster; call gt.shutdown() first")
    return cluster.init(scheduler=address if "://" in address else f"tcp://{address}")


_AUTO_STARTED = [None]        # the client GT_AUTO_SHARD=1 started at import, if any


def auto_start():
    """On import: GT_AUTO_SHARD=1 starts a local cluster, GT_SCHEDULER joins one (gt.gpu_workers(n)
    may resize the local one)."""
    _AUTO_STARTED[0] = cluster.init_from_env()


def gpu_workers(n):
    """GT's "use n GPU workers": start a local cluster of n workers, one per GPU where there are
    GPUs (n must not exceed them), n CPU worker processes otherwise.  Call it before the first step;
    it takes precedence over GT_AUTO_SHARD's cluster (values already there come back first)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"gt.gpu_workers: the number of workers must be a positive int, got {n!r}")
    current = cluster.client()
    if current is not None:
        if current is not _AUTO_STARTED[0]:
            raise RuntimeError("gt.gpu_workers() must be called before the cluster is started (gt.init or "
                               "gt.connect already started one); call gt.shutdown() first")
        if len(current.scheduler_info(n_workers=-1)["workers"]) == n:
            return current
        cluster.shutdown()
    _AUTO_STARTED[0] = None
    if cluster.visible_gpus():
        return cluster.init(gpus=n)
    return cluster.init(workers=n)
