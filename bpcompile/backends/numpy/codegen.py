"""NumPy backend: generate readable Python/NumPy source for forward+backward and exec it.

This is the reference every other backend is compared against.
"""

from __future__ import annotations

import itertools
import linecache
from types import CodeType

import numpy as np

from ...errors import ArgumentError, BackendError
from ...ir.node import Node
from ..pysource import emit_function
from .lower import lower
from .runtime import NAMESPACE

_ids = itertools.count()


def exec_source(src: str, consts: dict, fn_name: str, namespace: dict):
    """exec generated source under a unique file name registered with linecache (for tracebacks)."""
    return exec_code(compile_source(src, fn_name), consts, fn_name, namespace)


def compile_source(src: str, fn_name: str) -> CodeType:
    """`src` compiled under a unique file name registered with linecache (for tracebacks)."""
    filename = f"<bpcompile-{fn_name}-{next(_ids)}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    return compile(src, filename, "exec")


def exec_code(code: CodeType, consts: dict, fn_name: str, namespace: dict):
    """Run compiled module `code` in `namespace` plus `consts`; its function `fn_name`."""
    clash = namespace.keys() & consts.keys()
    if clash:  # ir/naming.py reserves every runtime name; a clash is a bug, never a user's
        raise BackendError(f"exec_source: constants {sorted(clash)} would shadow the runtime")
    ns = dict(namespace)
    ns.update(consts)
    exec(code, ns)
    return ns[fn_name]


class NumpyBackend:
    """Compiles (loss, grads...) graphs to a Python function over NumPy arrays."""

    name = "numpy"

    def __init__(self, outputs: list[Node], args: list[Node], title: str = "", **options):
        if options:
            raise TypeError(f"numpy backend: unknown options {sorted(options)}")
        self.outputs, self.args = outputs, args
        self.src, consts = emit_function(outputs, args, lower, "forward_backward", "np", title)
        self.consts, self.namespace = consts, NAMESPACE  # for the standalone module text
        # kept: the compile cache stores it (warm.py) rather than compiling the source again
        self.code = compile_source(self.src, "forward_backward")
        self.fn = exec_code(self.code, consts, "forward_backward", NAMESPACE)
        self.out_dtypes = [np.dtype(o.dtype) for o in outputs]
        self.out_copy = [_shares_or_broadcasts(o) for o in outputs]

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
        dts, cp = self.out_dtypes, self.out_copy
        value = np.array(value, dts[0], order="C") if cp[0] else np.asarray(value, dts[0])
        value = value[()] if value.ndim == 0 else value
        grads = [
            np.array(g, dt, order="C") if c else np.asarray(g, dt)
            for g, dt, c in zip(grads, dts[1:], cp[1:])
        ]
        return value, grads


# NumPy ops that may return a view of their operand rather than a new array.
VIEW_OPS = ("reshape", "transpose", "broadcast_to", "slice", "stop_gradient", "remat",
            "remat_barrier")


def _shares_or_broadcasts(n: Node) -> bool:
    """Whether output `n` could come back as a view of an argument or a module constant, or as
    a read-only broadcast view: such outputs are copied so that every returned array is fresh
    and writable, as JAX's are."""
    while n.op in VIEW_OPS:
        if n.op == "broadcast_to":
            return True
        n = n.inputs[0]
    return n.op in ("input", "param", "const")


def evaluate(outputs: list[Node], env: dict[str, np.ndarray]):
    """Evaluate graph outputs on named leaf values with the reference backend (no gradient)."""
    from ...ir.traverse import leaves

    args = leaves(outputs)
    be = NumpyBackend(list(outputs), args, title="evaluation")
    with np.errstate(all="ignore"):
        v, rest = be.fn(*[np.asarray(env[a.name], a.dtype) for a in args])
    return [np.asarray(x, o.dtype) for x, o in zip((v,) + tuple(rest), outputs)]
