"""Static memory plan: buffers, strided views on them, and workspace offsets from liveness.

Every value the generated code touches is a `View` (offset, shape, strides in elements) on a
`Buffer`: an argument, an output, a constant global, or a slice of one workspace block. Movement
ops that are pure index arithmetic (transpose, broadcast, slice, most reshapes) produce views and
no code. Workspace buffers whose lifetimes do not overlap share bytes; the plan is computed once
at compile time and the workspace is allocated once per compiled function and calling
thread (backend.Arena).
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field

import numpy as np

ALIGN = 64  # bytes: a cache line, and full AVX-512 vectors


@dataclass(eq=False)
class Buffer:
    kind: str  # "arg" | "out" | "ws" | "const"
    index: int  # arg / out / const number (ws: creation order)
    size: int  # elements
    dtype: str
    label: str = ""
    offset: int = 0  # bytes into the workspace (ws only), set by `plan`
    first: int = -1  # step that writes it
    last: int = -1  # last step that reads it
    forward: bool = False  # written by the forward pass

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


@dataclass(frozen=True, eq=False)
class View:
    buf: Buffer
    offset: int
    shape: tuple
    strides: tuple

    @property
    def dtype(self) -> str:
        return self.buf.dtype

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def is_contiguous(self) -> bool:
        """Row-major contiguous (strides of size-1 dimensions do not matter)."""
        expect = 1
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n != 1 and s != expect:
                return False
            expect *= n
        return True


def contiguous(buf: Buffer, shape, offset: int = 0) -> View:
    return View(buf, offset, tuple(shape), contiguous_strides(shape))


def contiguous_strides(shape) -> tuple:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


@dataclass
class MemoryPlan:
    workspace_bytes: int
    output_bytes: int
    buffers: int
    intermediate_bytes: int  # sum of all workspace buffers before reuse
    saved_for_backward_bytes: int
    saved_for_backward: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "peak_bytes": self.workspace_bytes + self.output_bytes,
            "workspace_bytes": self.workspace_bytes,
            "output_bytes": self.output_bytes,
            "buffers": self.buffers,
            "intermediate_bytes_without_reuse": self.intermediate_bytes,
            "saved_for_backward_bytes": self.saved_for_backward_bytes,
            "saved_for_backward": list(self.saved_for_backward),
        }


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def liveness(steps) -> None:
    """Set each buffer's first (writing) and last (reading) step from the schedule's steps
    (`schedule.Step`: `writes`, `reads`); step-local temps come with theirs already set."""
    for k, s in enumerate(steps):
        if s.writes.first < 0:
            s.writes.first = k
        for b in s.reads:
            b.last = max(b.last, k)


def plan(buffers: list[Buffer], backward_start: int) -> MemoryPlan:
    """Assign workspace offsets (first fit over live intervals) and summarise the plan.

    `backward_start`: index of the first backward step; a forward buffer still read at or after
    it is memory saved for the backward pass.
    """
    ws = sorted((b for b in buffers if b.kind == "ws"), key=lambda b: (b.first, -b.nbytes))
    # Buffers come in order of their first step, so a placed buffer whose life ended before
    # this one's first step never matters again: `ends` (a heap) retires it. `live` (offset,
    # end) stays sorted by offset and disjoint; `gaps` holds the free spans between live
    # buffers (start -> end, and its sorted starts), so first fit scans the gaps, not every
    # live buffer: a deep CNN keeps O(depth) activations live for the backward pass, and the
    # scan over them made the plan quadratic (CNN-128: 0.6 s).
    live: list[tuple[int, int]] = []
    gaps: dict[int, int] = {}
    starts: list[int] = []
    ends: list[tuple[int, int, tuple]] = []
    top = 0

    def open_gap(lo: int, hi: int):
        if hi > lo:
            gaps[lo] = hi
            bisect.insort(starts, lo)

    def close_gap(lo: int):
        if lo in gaps:
            del gaps[lo]
            del starts[bisect.bisect_left(starts, lo)]

    for k, b in enumerate(ws):
        while ends and ends[0][0] < b.first:
            entry = heapq.heappop(ends)[2]
            i = bisect.bisect_left(live, entry)
            lo = live[i - 1][1] if i else 0
            close_gap(lo)
            close_gap(entry[1])
            del live[i]
            if i < len(live):  # freed bytes between live neighbours: one gap
                open_gap(lo, live[i][0])
        need = _align(max(b.nbytes, 1))
        at = next((lo for lo in starts if gaps[lo] - lo >= need), None)
        if at is None:  # above every live buffer
            at = live[-1][1] if live else 0
        else:
            hi = gaps[at]
            close_gap(at)
            open_gap(at + need, hi)
        b.offset = at
        top = max(top, at + need)
        entry = (at, at + need)
        bisect.insort(live, entry)
        heapq.heappush(ends, (max(b.last, b.first), k, entry))
    saved = [b for b in ws if b.forward and b.last >= backward_start]
    outs = [b for b in buffers if b.kind == "out"]
    return MemoryPlan(
        workspace_bytes=top,
        output_bytes=sum(_align(max(b.nbytes, 1)) for b in outs),
        buffers=len(ws) + len(outs),
        intermediate_bytes=sum(_align(max(b.nbytes, 1)) for b in ws),
        saved_for_backward_bytes=sum(b.nbytes for b in saved),
        saved_for_backward=[b.label for b in saved],
    )
