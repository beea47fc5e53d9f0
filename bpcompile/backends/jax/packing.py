"""Host NumPy inputs reach a jitted program in one transfer per dtype.

JAX turns each NumPy argument of a jitted call into a device buffer on its own, at a fixed cost
of several µs per array on CPU; for small arrays that cost is the call. mlp_small's eight arrays
took 66 µs per call as NumPy arrays and 17 µs as device arrays; packed into one vector, 21 µs.
So a call whose small arguments are all NumPy arrays of the declared dtype and shape copies them
into one fresh host vector per dtype (`np.concatenate`, ~1 µs), and a second jitted program
slices them apart inside XLA, where slices and reshapes of an argument cost nothing. Arguments
over `SMALL_BYTES` go across on their own: their copy would cost more than the per-array
overhead it saves. Any other argument (a JAX array, a list, a wrong dtype) takes the ordinary
path, which validates it and reports errors; the packed program compiles on first use only.
"""

from __future__ import annotations

import numpy as np

import jax

SMALL_BYTES = 64 * 1024  # per array; measured crossover of copy cost vs per-array transfer


class Packer:
    """Groups the small arguments of a positional program by dtype and calls it packed."""

    def __init__(self, nodes: list, positional):
        self.members: dict[str, list[int]] = {}  # dtype -> argument positions, in order
        for i, n in enumerate(nodes):
            if n.size * np.dtype(n.dtype).itemsize <= SMALL_BYTES:
                self.members.setdefault(n.dtype, []).append(i)
        self.groups = [(np.dtype(dt), idx) for dt, idx in self.members.items() if len(idx) > 1]
        self.packed = {i for _, idx in self.groups for i in idx}
        self.rest = [i for i in range(len(nodes)) if i not in self.packed]
        self.shapes = [tuple(n.shape) for n in nodes]
        # per packed position: (group, start, stop) in its flat vector
        self.where = {}
        for g, (_dt, idx) in enumerate(self.groups):
            off = 0
            for i in idx:
                size = int(np.prod(self.shapes[i], dtype=np.int64))
                self.where[i] = (g, off, off + size)
                off += size
        # the type/dtype/shape test per call, first packed argument first (a JAX array fails
        # on the first comparison)
        self.checks = [(i, dt, self.shapes[i]) for dt, idx in self.groups for i in idx]
        self.n = len(nodes)
        self._jitted = None
        where, shapes, n, ng = self.where, self.shapes, self.n, len(self.groups)

        def forward_backward(*flat_and_rest):  # the name JAX gives the jitted module
            flats, rest = flat_and_rest[:ng], iter(flat_and_rest[ng:])
            args = []
            for i in range(n):
                if i in where:
                    g, a, b = where[i]
                    args.append(flats[g][a:b].reshape(shapes[i]))
                else:
                    args.append(next(rest))
            return positional(*args)

        self._program = forward_backward

    @property
    def useful(self) -> bool:
        return bool(self.groups)

    def __call__(self, args):
        """The program's outputs, or None when some small argument is not a host array of
        the declared dtype and shape (the caller then takes the ordinary path)."""
        ndarray = np.ndarray
        for i, dt, shape in self.checks:
            a = args[i]
            if type(a) is not ndarray or a.dtype != dt or a.shape != shape:
                return None
        if self._jitted is None:
            self._jitted = jax.jit(self._program)
        flats = [np.concatenate([args[i].ravel() for i in idx]) for _dt, idx in self.groups]
        return self._jitted(*flats, *[args[i] for i in self.rest])
