"""The in-process executor: runs a plan's kernel steps on one backend."""
from ..kernels import backend


def run_plan(plan, leaf_values):
    # ---- backend hook (gtnumba/kernels/backend.py): a whole-plan CUDA graph, else per-step
    # callables bound once per plan (CUDA: launches replayed without their host code)
    graph = backend.graph_runner(plan)
    if graph is not None:
        return graph(leaf_values)
    kernels = backend.bound_steps(plan)
    # ---- end of hook
    slots = list(leaf_values) + [None] * (plan.n_slots - plan.n_leaves)
    for step, kernel in zip(plan.steps, kernels):
        slots[step.out] = kernel(*[slots[s] for s in step.ins], **step.attrs)
        for s in step.frees:
            slots[s] = None
    return {s: slots[s] for s in plan.keep}
