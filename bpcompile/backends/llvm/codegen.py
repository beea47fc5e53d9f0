"""`Program`: a graph scheduled (schedule.py), memory-planned (memplan.py), ready to emit
(emit.py) — what backend.py, export.py and scan.py compile.

The generated module has one compute function

    void bp_main(ptr noalias in0, ..., ptr noalias out0, ..., ptr noalias workspace)

specialised to the graph's static shapes and dtypes (emit.py has the details).
"""

from __future__ import annotations

from llvmlite import ir

from ...ir.node import Node
from ...ops.index import input_ranges
from ..run_order import run_order
from .emit import SPLIT_STEPS, Context, emit
from .memplan import MemoryPlan, liveness, plan
from .schedule import Schedule
from .widen import widen_half_matmuls

__all__ = ["SPLIT_STEPS", "Context", "Program"]


class Program(Schedule):
    """The scheduled graph (steps, buffers, views) with its memory plan (no IR yet)."""

    def __init__(self, outputs: list[Node], args: list[Node], gemm_threshold: int,
                 blas_threads: int | str | None = None, checked_args: bool = True,
                 index_status: bool = True):
        outputs = widen_half_matmuls(outputs)  # 16-bit products accumulate in float32
        order = run_order(outputs)  # (checkpointed graphs: gradients last-layer first)
        super().__init__(outputs, args, gemm_threshold, blas_threads, checked_args,
                         index_status, order)
        # int32 inputs used directly as indices: (lo, hi) the fast call path range-checks
        self.bounds: dict[str, tuple[int, int]] = input_ranges(self.order)
        liveness(self.steps)
        self.memory: MemoryPlan = plan(self.buffers, self.backward_start)

    def emit(self, module: ir.Module, name: str = "bp_main", with_entry: bool = True):
        """Emit `name` (and bp_entry unless with_entry is False) into module; see emit.emit."""
        return emit(self, module, name, with_entry)
