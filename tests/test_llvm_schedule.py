"""The LLVM backend's schedule and memory plan, checked through their interfaces
(schedule.Step's buffer needs, memplan's offsets) without compiling any IR."""

from __future__ import annotations

import bpcompile as bp
from bpcompile.backends.llvm import rules
from bpcompile.backends.llvm.codegen import Program
from bpcompile.rewrite.pipeline import run_backend


def _program(loss, wrt, **kw) -> Program:
    """What the llvm backend schedules: the final, fused graph after the backend's rules."""
    threshold = kw.pop("gemm_threshold", 0)
    fn = bp.compile(loss, wrt, backend="numpy")
    outputs = run_backend(fn.outputs, rules.backend_rules(threshold), [])
    return Program(outputs, fn.args, threshold, **kw)


def _attention():
    x, y = bp.input("x", (2, 16, 16)), bp.input("y", (2, 16, 16))
    Wq, Wk, Wv = (bp.param(n, (16, 16)) for n in ("Wq", "Wk", "Wv"))
    a = bp.softmax((x @ Wq) @ bp.transpose(x @ Wk, (0, 2, 1)) * 0.25, axis=-1)
    h = x + a @ (x @ Wv)
    return bp.mean((bp.tanh(h) - y) ** 2), [Wq, Wk, Wv]


def _rnn():
    xs = bp.input("xs", (5, 3, 4))
    Wx, Wh = bp.param("Wx", (4, 8)), bp.param("Wh", (8, 8))
    hT, _ = bp.rnn(xs, bp.broadcast_to(bp.const(0.0), (3, 8)), Wx, Wh)
    return bp.mean(hT**2), [Wx, Wh]


def test_every_step_reads_only_what_is_written_before_it():
    for loss, wrt in (_attention(), _rnn()):
        p = _program(loss, wrt)
        written = {b for b in p.buffers if b.kind in ("arg", "const")}
        for k, s in enumerate(p.steps):
            for b in s.reads:
                assert b in written, (k, b.label)
                assert b.first <= k <= b.last, (k, b.label, b.first, b.last)
            for w in (s.writes, *s.more_writes):  # a scan writes one buffer per result
                assert w.first <= k and w in s.touches
                written.add(w)
            assert set(s.reads) <= set(s.touches)
        assert set(p.out_bufs) <= written  # every output is produced


def test_buffers_live_at_once_never_share_bytes():
    for loss, wrt in (_attention(), _rnn()):
        p = _program(loss, wrt)
        ws = [b for b in p.buffers if b.kind == "ws" and b.nbytes]
        assert p.memory.workspace_bytes < sum(b.nbytes for b in ws)  # some bytes are reused
        for i, a in enumerate(ws):
            for b in ws[i + 1:]:
                if a.first <= max(b.last, b.first) and b.first <= max(a.last, a.first):
                    assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset


def test_index_movement_is_a_view_and_a_folded_add_writes_its_product():
    x, W = bp.input("x", (4, 16, 16)), bp.param("W", (16, 16))
    h = x + bp.tanh(x) @ bp.transpose(W)  # h has two consumers: the add is no kernel
    p = _program(bp.mean(bp.tanh(h) ** 2) + bp.mean(h), [W])
    nodes = [s.node for s in p.steps if s.node is not None]
    ops = [n.op for n in nodes]
    assert "transpose" not in ops and "broadcast_to" not in ops
    folds = [s for s in p.steps if s.fold is not None]
    assert folds  # x + tanh(x) @ Wᵀ
    for s in folds:
        assert s.fold.product not in nodes
        assert p.views[s.fold.product].buf is s.writes
        assert p.views[s.fold.product.inputs[0]].buf in s.reads
