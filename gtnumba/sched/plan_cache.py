"""The cache of plans, shared by the in-process executor and the mesh runners, and its counters."""

_CACHE = {}
_CACHE_LIMIT = 256
# counters and seconds spent, for tests and benchmarks: planning (ordering the pending graph,
# its structure key, building a plan on a cache miss) and running (kernels, or Dask round trips)
STATS = {"plans_built": 0, "plans_reused": 0, "runs": 0, "plan_seconds": 0.0, "run_seconds": 0.0}


def cached(cache_key, build):
    plan = _CACHE.get(cache_key)
    if plan is None:
        plan = build()
        STATS["plans_built"] += 1
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[cache_key] = plan
    else:
        STATS["plans_reused"] += 1
    STATS["runs"] += 1
    return plan
