"""The in-process executor: runs a plan's kernel steps on one backend."""


def run_plan(plan, leaf_values):
    slots = list(leaf_values) + [None] * (plan.n_slots - plan.n_leaves)
    for step in plan.steps:
        slots[step.out] = step.kernel(*[slots[s] for s in step.ins], **step.attrs)
        for s in step.frees:
            slots[s] = None
    return {s: slots[s] for s in plan.keep}
