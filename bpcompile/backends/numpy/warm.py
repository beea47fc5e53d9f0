"""A NumPy program loaded from the compile cache without its graph (the warm path).

`state(backend)` is the generated source, its array constants, its compiled code object and
how outputs are returned; `WarmNumpy` runs the code as `NumpyBackend` does. `fn.source()`
comes from the rebuilt backend: comments name source lines, which are not all in the key.
"""

from __future__ import annotations

import linecache
import marshal
from collections.abc import Callable
from types import CodeType
from typing import Any

import numpy as np

from ...errors import BackendError
from .codegen import NumpyBackend
from .runtime import NAMESPACE

CODE = " code"  # the marshalled code object among the arrays (no constant has this name)


def state(backend: NumpyBackend, tag: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(JSON state, array constants and the compiled code) of a compiled backend; None when a
    constant is not a plain array (a helper a lowering attached), which is not stored. The
    code object is stored too (compiling a deep model's source took ~0.1 s): the backend's own,
    renamed, not compiled again (another ~0.08 s on CNN-32); `tag` names its file for
    tracebacks (the entry's key: one source per name)."""
    if not all(isinstance(v, np.ndarray) for v in backend.consts.values()):
        return None
    code = _renamed(backend.code, _filename(tag))
    arrays = dict(backend.consts)
    arrays[CODE] = np.frombuffer(marshal.dumps(code), np.uint8)
    return ({"src": backend.src, "tag": tag, "out_dtypes": [str(o.dtype) for o in backend.outputs],
             "out_copy": [bool(c) for c in backend.out_copy]}, arrays)


def _renamed(code: CodeType, filename: str) -> CodeType:
    """`code` and the code objects nested in it (the generated functions) under `filename`."""
    consts = tuple(_renamed(c, filename) if isinstance(c, CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _filename(tag: str) -> str:
    return f"<bpcompile-forward_backward-{tag}>"


class WarmNumpy:
    """The runtime half of a `NumpyBackend`, from a warm state and its constants; whatever
    else a `NumpyBackend` offers (its graph) comes from the rebuilt backend."""

    name = "numpy"

    def __init__(self, st: dict, arrays: dict[str, np.ndarray], rebuild: Callable[[], Any]):
        self._rebuild, self._full = rebuild, None
        consts = dict(arrays)
        code = marshal.loads(consts.pop(CODE).tobytes())  # an entry we wrote (its MAC holds)
        self._src, self._consts = st["src"], consts  # what runs (tracebacks show this text)
        name = _filename(st["tag"])
        linecache.cache[name] = (len(self._src), None, self._src.splitlines(True), name)
        if NAMESPACE.keys() & consts.keys():
            raise BackendError("warm numpy program: a constant would shadow the runtime")
        ns = dict(NAMESPACE)
        ns.update(consts)
        exec(code, ns)
        self.fn = ns["forward_backward"]
        self.out_dtypes = [np.dtype(d) for d in st["out_dtypes"]]
        self.out_copy = list(st["out_copy"])
        self.warm_hit = True

    run = NumpyBackend.run

    def source(self, stage: str | None = None) -> str:
        return self.full().source(stage)

    def full(self) -> Any:
        if self._full is None:
            self._full = self._rebuild()
        return self._full

    def __getattr__(self, name: str):
        # what a NumpyBackend has and a warm program lacks; never a protocol probe
        # (`isinstance(impl, FastCall)` asks for `make_caller`), which must not compile
        if name in ("outputs", "args", "src", "consts", "namespace") or (
                hasattr(NumpyBackend, name) and not name.startswith("__")):
            return getattr(self.full(), name)
        raise AttributeError(name)
