"""NumPy backend: generate readable Python/NumPy source for forward+backward and exec it.

This is the reference every other backend is compared against.
"""

from __future__ import annotations

import itertools
import linecache

import numpy as np

from ...errors import ArgumentError
from ...ir.node import Node
from ..pysource import emit_function
from .lower import lower
from .runtime import NAMESPACE

_ids = itertools.count()


def exec_source(src: str, consts: dict, fn_name: str, namespace: dict):
    """exec generated source under a unique file name registered with linecache (for tracebacks)."""
    filename = f"<bpcompile-{fn_name}-{next(_ids)}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    ns = dict(namespace)
    ns.update(consts)
    exec(compile(src, filename, "exec"), ns)
    return ns[fn_name]


class NumpyBackend:
    """Compiles (loss, grads...) graphs to a Python function over NumPy arrays."""

    name = "numpy"

    def __init__(self, outputs: list[Node], args: list[Node], title: str = "", **options):
        if options:
            raise TypeError(f"numpy backend: unknown options {sorted(options)}")
        self.outputs, self.args = outputs, args
        self.src, consts = emit_function(outputs, args, lower, "forward_backward", "np", title)
        self.fn = exec_source(self.src, consts, "forward_backward", NAMESPACE)
        self.out_dtypes = [np.dtype(o.dtype) for o in outputs]

    def source(self, stage: str | None = None) -> str:
        """stage None/"numpy": the generated NumPy source (the only stage this backend has)."""
        if stage not in (None, "numpy"):  # "asm" etc. must not quietly return NumPy code
            raise ArgumentError(f"numpy backend: unknown source stage {stage!r}; choose from "
                                "None, 'numpy' (llvm/asm need backend='llvm', jax/stablehlo/"
                                "hlo need backend='jax')")
        return self.src

    def run(self, arrays: list[np.ndarray]):
        with np.errstate(all="ignore"):  # NaN/inf propagate as in NumPy, quietly (as JAX does)
            value, grads = self.fn(*arrays)
        value = np.asarray(value, self.out_dtypes[0])[()]
        grads = [np.asarray(g, dt) for g, dt in zip(grads, self.out_dtypes[1:])]
        return value, grads


def evaluate(outputs: list[Node], env: dict[str, np.ndarray]):
    """Evaluate graph outputs on named leaf values with the reference backend (no gradient)."""
    from ...ir.traverse import leaves

    args = leaves(outputs)
    be = NumpyBackend(list(outputs), args, title="evaluation")
    with np.errstate(all="ignore"):
        v, rest = be.fn(*[np.asarray(env[a.name], a.dtype) for a in args])
    return [np.asarray(x, o.dtype) for x, o in zip((v,) + tuple(rest), outputs)]
