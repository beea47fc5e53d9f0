"""Host NumPy arguments reach a jitted program in one transfer per dtype.

JAX turns each NumPy argument of a jitted call into a device buffer on its own, ~1.5 µs per
small array on CPU (more from a few KiB), so for a small model the transfers are a large part of
the call, and they sit between one result and the next dispatch, where XLA:CPU's worker thread
goes to sleep if they take long (backend._SYNC_NOTE). When every argument is a NumPy array of
its declared dtype and shape, the small ones of each dtype are copied into one fresh host vector
and a second jitted program slices them apart inside XLA, where slicing and reshaping an
argument is free. The copy joins the arrays' raw bytes (`bytearray().join`: 0.6 µs for
mlp_small's eight, against 2.5 µs for `np.concatenate`), which is why the dtype test is exact;
an array with no contiguous buffer takes the ordinary path. Arguments over `SMALL_BYTES`
go across on their own: copying them would cost more than the per-array overhead it saves. Any
other call (a JAX array, a list, another dtype, byte order or shape) takes the ordinary path,
which converts or refuses by signature.py's rule; the packed program compiles on its first call
only.
"""

from __future__ import annotations

import math
import operator

import numpy as np

import jax

SMALL_BYTES = 64 * 1024  # per array; above it the copy costs more than the transfer it saves


class Packer:
    """The packed variant of a positional program. `call(args)` runs it on NumPy arrays
    (`types`) whose unpacked arguments (`rest`) have their declared `rest_signature`; its
    result stands only if every argument also has the declared `shapes` and `dtypes`, which
    the caller tests while XLA runs (backend._dispatcher)."""

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

        def nbytes(positions):
            return sum(math.prod(shapes[i]) * self.dtypes[i].itemsize for i in positions)

        def forward_backward(*flat_and_rest):  # the name JAX gives the jitted module
            flats, others = flat_and_rest[:ng], flat_and_rest[ng:]
            args = [
                others[a] if g is None else flats[g][a:b].reshape(shapes[i])
                for i, (g, a, b) in enumerate(where)
            ]
            return positional(*args)

        jitted = jax.jit(forward_backward)  # compiles on its first call only
        getters = [(tuple_getter(idx), self.dtypes[idx[0]], nbytes(idx)) for idx in groups]
        others = tuple_getter(rest)
        # a fresh bytearray per call: writable, which JAX takes ~0.4 us faster than read-only
        # bytes; nothing else holds it, so JAX may alias it
        frombuffer, join = np.frombuffer, bytearray().join

        def call_grouped(args):
            """The program's outputs for `args`, packed per dtype; None if the arrays' bytes
            do not add up to the declared sizes or one has no contiguous buffer (the caller
            then takes the ordinary path)."""
            flats = []
            for g, dt, size in getters:
                try:
                    raw = join(g(args))
                except (TypeError, BufferError):
                    return None
                if len(raw) != size:
                    return None
                flats.append(frombuffer(raw, dt))
            return jitted(*flats, *others(args))

        single_dtype, single_size = getters[0][1:] if getters else (None, None)

        def call_single(args):
            """The same when all arguments are small and of one dtype (xor, mlp_small)."""
            try:
                raw = join(args)
            except (TypeError, BufferError):
                return None
            if len(raw) != single_size:
                return None
            return jitted(frombuffer(raw, single_dtype))

        single = len(groups) == 1 and not rest
        self.call = call_single if single else call_grouped
        # the unpacked arguments' signature, tested before the dispatch: a float64 `x` for a
        # float32 graph would otherwise run the packed program for nothing on every call
        self.rest = others if rest else None
        self.rest_signature = tuple((self.shapes[i], self.dtypes[i]) for i in rest)


shape_of = operator.attrgetter("shape")
dtype_of = operator.attrgetter("dtype")
signature_of = operator.attrgetter("shape", "dtype")


def tuple_getter(keys):
    """c -> (c[k] for k in keys) as a tuple: operator.itemgetter (one C call), made
    tuple-valued for one key and for none."""
    if len(keys) == 1:
        (only,) = keys
        return lambda c: (c[only],)
    if not keys:
        return lambda c: ()
    return operator.itemgetter(*keys)
