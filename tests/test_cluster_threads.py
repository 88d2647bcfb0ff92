"""A local cluster's workers split the machine's cores between them: each worker's Numba and BLAS
thread pools get its share, so W single-threaded Dask workers do not start W x cores threads, and
freed parameter-sized arrays stay in the process for the next step."""
import os

import gtnumba as gt


def _pools():
    import numba
    from threadpoolctl import threadpool_info
    return (numba.config.NUMBA_NUM_THREADS, sorted({p["num_threads"] for p in threadpool_info()}),
            int(os.environ["MALLOC_TRIM_THRESHOLD_"]))


def test_each_local_worker_gets_its_share_of_the_cores():
    client = gt.init(workers=2, dashboard=":0")
    try:
        share = max(1, (os.cpu_count() or 1) // 2)
        pools = client.run(_pools)
    finally:
        gt.shutdown()
    assert len(pools) == 2
    for numba_threads, blas_threads, trim in pools.values():
        assert numba_threads == share
        assert all(n <= share for n in blas_threads), blas_threads
        assert trim >= 256 << 20          # freed parameter-sized arrays are kept for reuse
