"""Schedule a graph for the LLVM backend: the ordered steps and what each one touches.

`Schedule` walks the graph in topological order and gives every value a `View` on a `Buffer`
(argument, output, constant, workspace; pure index movement becomes a view of its operand and
no step), folds each product into the add the rule marked (accumulate.py), plans BLAS calls and
scan bodies, and lists the `Step`s with the buffers each writes and reads. It assigns no
workspace offsets (memplan.py) and builds no IR (emit.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import BackendError
from ...ir.naming import assign_names
from ...ir.node import Node
from ...ir.traverse import toposort
from ...ops.leaves import const_value
from . import blas
from .accumulate import Fold, folds
from .lower import VIEWS
from .memplan import Buffer, View, contiguous
from .scan import plan_scan
from .while_loop import plan_while


@dataclass(eq=False)
class Step:
    """One piece of emitted code: compute `node` into its view, or copy view `src` to `dst`.

    `writes`/`reads` are the buffers liveness sees; `touches` is every buffer the step's code
    addresses, in first-use order (the scopes of its alias metadata, emit.py). A node with
    several results (scan) writes one buffer per result: the first is `writes`, the others
    `more_writes`."""

    kind: str  # "node" | "copy"
    node: Node | None
    src: View | None
    dst: View | None
    fold: Fold | None  # a node step that is `x + A @ B` folded into one GEMM
    writes: Buffer
    reads: tuple
    touches: tuple
    more_writes: tuple = ()


class Schedule:
    """The graph as ordered steps over views and buffers (offsets and IR come later)."""

    def __init__(self, outputs: list[Node], args: list[Node], gemm_threshold: int,
                 blas_threads: int | str | None = None, checked_args: bool = True,
                 index_status: bool = True, order: list[Node] | None = None):
        self.outputs, self.args = outputs, args
        # int32 args whose index range the caller checks (a scan body's are computed values),
        # and whether out-of-range computed indices are reported (`lower._index_guard`)
        self.checked = {a for a in args if a.op == "input"} if checked_args else set()
        self.index_status = index_status
        self.blas_threads = blas_threads
        self.gemm_threshold = gemm_threshold
        self.order = toposort(outputs) if order is None else order
        self.names = assign_names(self.order)
        forward = set(toposort(outputs[:1]))
        self.buffers: list[Buffer] = []
        self.views: dict[Node, View] = {}
        self.steps: list[Step] = []
        self.consts: list[tuple[Buffer, np.ndarray]] = []
        self.temps: dict = {}  # (matmul, operand k) -> View of its contiguous copy
        self.matmul_plan: dict = {}
        self.scan_plan: dict = {}
        self.projections: dict[Node, dict[int, Node]] = {}  # tuple node -> index -> `result`
        for n in self.order:
            if n.op == "result":
                self.projections.setdefault(n.inputs[0], {})[n.attr("index")] = n
        self.arg_bufs = []
        for i, a in enumerate(args):
            buf = self._buf("arg", i, a.size, a.dtype, a.attr("name"))
            self.arg_bufs.append(buf)
            self.views[a] = contiguous(buf, a.shape)
        self.out_bufs = [self._buf("out", j, o.size, o.dtype, f"out{j}")
                         for j, o in enumerate(outputs)]
        owner: dict[Node, Buffer] = {}
        for j, o in enumerate(outputs):  # computed outputs write straight into their out buffer
            if o not in owner and o.op not in ("input", "param", "const"):
                owner[o] = self.out_bufs[j]
        self.accumulate: dict[Node, Fold] = folds(self.order, owner, gemm_threshold)
        folded = {c for f in self.accumulate.values() for c in (f.product, f.operand)}
        ws_count = 0
        arg_set = set(args)
        for n in self.order:
            if n in self.views or n in folded:  # a folded product is emitted by its add
                continue
            if n.op not in ("input", "param") and n in arg_set:
                raise BackendError(f"llvm backend: leaf {n!r} is not an argument")
            if n.op in ("input", "param"):
                raise BackendError(f"llvm backend: leaf {n!r} missing from the argument list")
            if n.op == "const":
                buf = self._buf("const", len(self.consts), n.size, n.dtype, self.names[n])
                self.consts.append((buf, np.ascontiguousarray(const_value(n))))
                self.views[n] = contiguous(buf, n.shape)
                continue
            if n.results is not None:  # several results (scan): a buffer each
                self._schedule_tuple(n, owner, n in forward)
                continue
            rule = VIEWS.get(n.op)
            if rule is not None and n not in owner:
                v = rule(n, self.views[n.inputs[0]])
                if v is not None:
                    self.views[n] = v
                    continue
            buf = owner.get(n)
            if buf is None:
                buf = self._buf("ws", ws_count, n.size, n.dtype, self.names[n])
                ws_count += 1
            buf.forward = n in forward
            self.views[n] = contiguous(buf, n.shape)
            self._schedule_node(n, buf)
        for j, o in enumerate(outputs):
            if self.views[o].buf is not self.out_bufs[j]:
                src, dst = self.views[o], contiguous(self.out_bufs[j], o.shape)
                self.steps.append(Step("copy", None, src, dst, None, dst.buf, (src.buf,),
                                       (src.buf, dst.buf)))
        self.backward_start = next((k for k, s in enumerate(self.steps)
                                    if s.node is not None and s.node not in forward),
                                   len(self.steps))

    def _schedule_node(self, n: Node, buf: Buffer):
        """Plan n's step (its BLAS call or scan body) and append it with its buffer needs."""
        step = len(self.steps)
        fold = self.accumulate.get(n)
        if fold is not None:  # the product (or its reshape) is the add's output
            self.views[fold.operand] = self.views[n]
            self.views[fold.product] = contiguous(buf, fold.product.shape)
            self._plan_matmul(fold.product, step)
        elif n.op == "matmul":
            self._plan_matmul(n, step)
        elif n.op == "scan":
            self.scan_plan[n] = plan_scan(self, n, step)
        reads = [self.views[i].buf for i in n.inputs]
        extra = [self.views[i].buf for i in fold.product.inputs] if fold is not None else []
        temps = [self.temps[(m, k)].buf for m in (n, fold and fold.product) for k in (0, 1)
                 if (m, k) in self.temps]  # a product's operand copies
        self.steps.append(Step("node", n, None, None, fold, buf, tuple(reads + extra),
                               tuple([buf] + reads + temps + extra)))

    def _schedule_tuple(self, n: Node, owner: dict, forward: bool):
        """Plan a node with several results: each result gets its own buffer (an output's
        when its `result` projection is one, which then needs no copy), the node's view is
        the tuple of their views, and a projection is a view of its result (lower.VIEWS)."""
        step = len(self.steps)
        proj = self.projections.get(n, {})
        views = []
        for i, (shape, dtype) in enumerate(n.results or ()):
            p = proj.get(i)
            buf = owner.get(p) if p is not None else None
            if buf is None:
                label = self.names[p] if p is not None else f"{self.names[n]}.r{i}"
                buf = self._buf("ws", -1, int(np.prod(shape, dtype=np.int64)), dtype, label)
            buf.first, buf.forward = step, forward
            views.append(contiguous(buf, shape))
            if p is not None and p in owner:
                self.views[p] = views[-1]
        self.views[n] = tuple(views)  # type: ignore[assignment]
        plan = plan_while if n.op == "while_loop" else plan_scan
        self.scan_plan[n] = plan(self, n, step)
        reads = [self.views[i].buf for i in n.inputs]
        temps = [v.buf for (m, _k), v in self.temps.items() if m is n]
        writes = [v.buf for v in views]
        self.steps.append(Step("node", n, None, None, None, writes[0], tuple(reads),
                               tuple(writes + reads + temps), tuple(writes[1:])))

    def temp(self, shape, dtype: str, label: str, step: int) -> View:
        """A workspace buffer live during one step only (operand copies, loop state)."""
        buf = self._buf("ws", -1, int(np.prod(shape, dtype=np.int64)), dtype, label)
        buf.first = buf.last = step
        return contiguous(buf, tuple(shape))

    def _buf(self, kind, index, size, dtype, label) -> Buffer:
        b = Buffer(kind, index, size, dtype, label)
        self.buffers.append(b)
        return b

    def _plan_matmul(self, n: Node, step: int):
        a, b = self.views[n.inputs[0]], self.views[n.inputs[1]]
        p = blas.plan(n, a, b, self.gemm_threshold) if n.dtype in blas.GLOBALS else None
        if p is None:
            return
        self.matmul_plan[n] = p
        batch = n.shape[:-2]
        for k, (need, v) in enumerate(((p.copy_a, a), (p.copy_b, b))):
            if need:
                self.temps[(n, k)] = self.temp(batch + v.shape[-2:], n.dtype,
                                               f"{self.names[n]}.op{k}", step)
