"""`compile_train_step(..., memory_budget=)`: recompute forward segments until the training
step's own planned peak fits, the step being loss, gradients, optimizer update, new params and
new optimizer state in one function (not bp.compile's loss and gradients alone).

As `bp.compile` does (compiled.py): search on the NumPy estimate of the whole step graph
(cheap, no code generation); where the backend has a static plan (LLVM) and the chosen plan
is over the budget, search again measuring the backend's plan (each trial compiles). An
infeasible budget names the smallest planned peak and what it is made of.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..backends.protocol import MemoryPlan
from ..budget import InfeasibleBudget, fit_budget
from ..compiled import Function
from ..errors import BPError
from ..ir.node import Node


def _nbytes(shape: tuple, dtype: Any) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def fit_step_budget(loss: Node, budget: int, graph_of: Callable[[Node], dict[str, Node]],
                    backend: str, options: dict, wrt: list[Node],
                    state0: dict[str, np.ndarray]) -> tuple[Node, dict]:
    """(loss with checkpoints, report) whose step graph `graph_of(loss)` plans <= budget bytes
    on `backend`; BPError naming the smallest feasible budget and its parts when none does."""
    built: dict[Node, Function] = {}

    def estimate(marked: Node) -> tuple[int, int]:
        m = Function(graph_of(marked), "numpy").memory(timeline=True)
        return int(m["peak_bytes"]), int(m["recompute_flops"])

    def target(marked: Node) -> Function:
        if marked not in built:
            built[marked] = Function(graph_of(marked), backend, **options)
        return built[marked]

    def planned(marked: Node) -> tuple[int, int]:
        m = target(marked).memory(timeline=True)
        return int(m["peak_bytes"]), int(m["recompute_flops"])

    try:
        marked, report = fit_budget(loss, budget, estimate)
        fn = target(marked)
        if not isinstance(fn.impl, MemoryPlan) or planned(marked)[0] <= budget:
            report["planned_peak_bytes"] = planned(marked)[0]
            return marked, _with_parts(report, wrt, state0)
    except InfeasibleBudget as e:
        if not isinstance(target(loss).impl, MemoryPlan):
            raise _infeasible(budget, e.need, backend, wrt, state0) from None
    try:  # the backend's plan packs differently from the estimate: measure it
        marked, report = fit_budget(loss, budget, planned)
    except InfeasibleBudget as e:
        raise _infeasible(budget, e.need, backend, wrt, state0) from None
    return marked, _with_parts(report, wrt, state0)


def _parts(wrt: list[Node], state0: dict[str, np.ndarray]) -> dict[str, int]:
    """Bytes of the step's fixed outputs and of the gradients (which the update reads)."""
    params = sum(_nbytes(p.shape, p.dtype) for p in wrt)
    return {"params_bytes": params, "optimizer_state_bytes": sum(v.nbytes for v in state0.values()),
            "gradient_bytes": params}


def _with_parts(report: dict, wrt: list[Node], state0: dict) -> dict:
    return {**report, "plan": "train step", **_parts(wrt, state0)}


def _infeasible(budget: int, need: int, backend: str, wrt: list[Node],
                state0: dict) -> BPError:
    p = _parts(wrt, state0)
    rest = max(0, need - p["params_bytes"] - p["optimizer_state_bytes"])
    return BPError(
        f"compile_train_step: memory_budget={budget} bytes is infeasible on the {backend} "
        f"backend: the smallest planned peak of the training step found is {need} bytes; give "
        f"memory_budget >= {need}. That peak holds the updated params ({p['params_bytes']} B) "
        f"and optimizer state ({p['optimizer_state_bytes']} B) the step outputs; the other "
        f"{rest} B are gradients (all of them: {p['gradient_bytes']} B), activations and "
        f"temporaries live at the peak of the least-memory recompute plan. The step's "
        f"arguments (current params, optimizer state, batch) are not counted")
