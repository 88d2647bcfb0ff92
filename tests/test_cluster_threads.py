"""A local cluster's workers split the machine's cores between them: each worker's Numba and BLAS
thread pools get its share, so W single-threaded Dask workers do not start W x cores threads, and
freed parameter-sized arrays stay in the process for the next step."""
import os

import gtnumba as gt


def _pools():
    import numba
    from threadpoolctl import threadpool_info
    return (numba.config.NUMBA_NUM_THREADS, sorted({p["num_threads"] for p in threadpool_info()}),
            _reuses_freed_arrays())


def _reuses_freed_arrays():
    """Filling a fresh 16 MiB array, again and again, faults its pages in only the first time
    (a kept block comes back; an unmapped one is mapped and faulted in anew: 4096 faults)."""
    import resource
    import numpy as np
    np.ones(4 << 20, np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        np.ones(4 << 20, np.float32)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 1000


def test_each_local_worker_gets_its_share_of_the_cores():
    client = gt.init(workers=2, dashboard=":0")
    try:
        share = max(1, (os.cpu_count() or 1) // 2)
        (gt.ones(4) * 2.0).numpy()        # a first step: gtnumba's worker plugin is set up
        pools = client.run(_pools)
    finally:
        gt.shutdown()
    assert len(pools) == 2
    for numba_threads, blas_threads, reuses in pools.values():
        assert numba_threads == share
        assert all(n <= share for n in blas_threads), blas_threads
        assert reuses                     # freed parameter-sized arrays are kept for reuse
