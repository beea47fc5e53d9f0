"""The memory plan's first fit over free gaps (memplan.plan) places every workspace buffer
where a plain scan over the live buffers would, and stays fast with many buffers live."""

from __future__ import annotations

import random
import time

from bpcompile.backends.llvm.memplan import ALIGN, Buffer, plan


def reference_offsets(ws: list[Buffer]) -> list[int]:
    """First fit by scanning every live buffer (the plan before the gap list)."""
    order = sorted(ws, key=lambda b: (b.first, -b.nbytes))
    placed: list[tuple[int, int, Buffer]] = []  # (offset, end, buffer)
    for b in order:
        placed = [p for p in placed if max(p[2].last, p[2].first) >= b.first]
        need = -(-max(b.nbytes, 1) // ALIGN) * ALIGN
        at = 0
        for off, end, _ in sorted(placed, key=lambda p: p[0]):
            if off - at >= need:
                break
            at = max(at, end)
        placed.append((at, at + need, b))
        b.offset = at
    return [b.offset for b in ws]


def random_buffers(r: random.Random, n: int) -> list[Buffer]:
    bufs = []
    for k in range(n):
        b = Buffer("ws", k, r.choice([1, 3, 16, 100, 1000]), "float32")
        b.first = r.randint(0, n)
        b.last = b.first + r.choice([0, 1, 2, 5, n // 2])
        bufs.append(b)
    return bufs


def test_first_fit_matches_the_live_scan():
    r = random.Random(0)
    for _ in range(200):
        bufs = random_buffers(r, r.randint(1, 40))
        expect = reference_offsets(bufs)
        plan(bufs, backward_start=0)
        assert [b.offset for b in bufs] == expect


def test_many_live_buffers_plan_in_linear_time():
    """A deep network's activations stay live until the backward pass: 5000 buffers all live
    at once plus 5000 short-lived ones (quadratic before: a scan over the live ones each,
    ~2 s of CPU here; the gap list takes ~0.1 s)."""
    bufs = []
    for k in range(5000):
        keep = Buffer("ws", k, 64, "float32")
        keep.first, keep.last = 2 * k, 10**6
        tmp = Buffer("ws", k, 64, "float32")
        tmp.first, tmp.last = 2 * k + 1, 2 * k + 2
        bufs += [keep, tmp]
    t0 = time.process_time()
    p = plan(bufs, backward_start=10**6)
    assert time.process_time() - t0 < 1.0
    assert p.workspace_bytes == (5000 + 1) * 256  # the temps reuse one slot above the rest
