"""Host NumPy arguments reach a jitted program in one transfer per dtype.

JAX turns each NumPy argument of a jitted call into a device buffer on its own, at a cost of
several µs per array on CPU (more once an array is a few KiB), so for a small model that cost
is most of the call: mlp_small's eight arrays took ~70 µs as NumPy arrays, ~19 µs as device
arrays. When every argument is a NumPy array of its declared dtype and shape, the small ones of
each dtype are copied into one fresh host vector and a second jitted program slices them apart
inside XLA, where a slice and reshape of an argument is free. The copy joins the arrays' raw
bytes (`b"".join`, 0.6 µs for mlp_small's eight; `np.concatenate` took 2.5 µs), which is why
the dtype test is exact; an array with no contiguous buffer falls back to `np.concatenate`.
Arguments over `SMALL_BYTES` go across on their own: copying them would cost more than the
per-array overhead it saves. Any other call (a JAX array, a list, another dtype or shape) takes
the ordinary path, which validates and casts; the packed program compiles on first use only.
"""

from __future__ import annotations

import math
import operator

import numpy as np

import jax

SMALL_BYTES = 64 * 1024  # per array; above it the copy costs more than the transfer it saves


class Packer:
    """The packed variant of a positional program: `ready(args)` says whether a call's
    arguments can go packed, `__call__(args)` runs them so."""

    def __init__(self, nodes: list, positional):
        self.types = (np.ndarray,) * len(nodes)
        self.shapes = tuple(tuple(n.shape) for n in nodes)
        self.dtypes = tuple(np.dtype(n.dtype) for n in nodes)
        members: dict[str, list[int]] = {}  # dtype -> positions of its small arguments
        for i, n in enumerate(nodes):
            if n.size * np.dtype(n.dtype).itemsize <= SMALL_BYTES:
                members.setdefault(n.dtype, []).append(i)
        groups = [idx for idx in members.values() if len(idx) > 1]
        self.useful = bool(groups)
        packed = {i for idx in groups for i in idx}
        rest = [i for i in range(len(nodes)) if i not in packed]
        # where each argument comes from inside the packed program: (group, start, stop) or
        # (None, position among the unpacked arguments, None)
        where = [None] * len(nodes)
        for g, idx in enumerate(groups):
            off = 0
            for i in idx:
                size = math.prod(self.shapes[i])
                where[i] = (g, off, off + size)
                off += size
        for j, i in enumerate(rest):
            where[i] = (None, j, None)
        shapes, ng = self.shapes, len(groups)

        def forward_backward(*flat_and_rest):  # the name JAX gives the jitted module
            flats, others = flat_and_rest[:ng], flat_and_rest[ng:]
            args = [
                others[a] if g is None else flats[g][a:b].reshape(shapes[i])
                for i, (g, a, b) in enumerate(where)
            ]
            return positional(*args)

        self._program = forward_backward
        self._jitted = None
        self._groups = [(_getter(idx), self.dtypes[idx[0]]) for idx in groups]
        self._rest = _getter(rest)

    def ready(self, args) -> bool:
        """Whether every argument is a NumPy array of the declared dtype and shape."""
        return (
            tuple(map(type, args)) == self.types
            and tuple(map(_shape, args)) == self.shapes
            and tuple(map(_dtype, args)) == self.dtypes
        )

    def __call__(self, args):
        if self._jitted is None:
            self._jitted = jax.jit(self._program)
        try:
            flats = [np.frombuffer(b"".join(g(args)), dt) for g, dt in self._groups]
        except (TypeError, BufferError):  # a non-contiguous array has no raw buffer to join
            flats = [np.concatenate(g(args), axis=None) for g, _ in self._groups]
        return self._jitted(*flats, *self._rest(args))


_shape = operator.attrgetter("shape")
_dtype = operator.attrgetter("dtype")


def _getter(positions):
    """args -> tuple of args[i] for `positions` (operator.itemgetter, always tuple-valued)."""
    if len(positions) == 1:
        (only,) = positions
        return lambda args: (args[only],)
    if not positions:
        return lambda args: ()
    return operator.itemgetter(*positions)
