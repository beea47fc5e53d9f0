"""Generated NumPy/JAX code as a module that stands on its own: imports, helpers, constants.

The backends exec their function text in a runtime namespace (`sigmoid`, `pad`, `one_hot`,
`matmul_unrolled`, ...). A module written to disk must bring those along, so this finds the
names the text reads and does not define, and emits, dependencies first: an `import` for a
module, the source of a bpcompile helper (and, recursively, of what it reads: `range_error`,
the error classes), an import of a library function (`from jax.nn import sigmoid`), and every
array constant (large ones as base64 of their bytes, so values are exact). The result imports
nothing from bpcompile: it runs where only NumPy (or JAX) is installed.
"""

from __future__ import annotations

import ast
import base64
import builtins
import importlib
import inspect
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError

FUNCTION = "forward_backward"
# where a library function a namespace holds is imported from, tried in this order
PUBLIC = ("jax.nn", "jax.numpy", "jax.lax", "jax", "numpy")


def _module_import(alias: str, mod: types.ModuleType) -> str:
    name = mod.__name__
    if name == alias:
        return f"import {name}"
    if "." in name and name.rsplit(".", 1)[1] == alias:
        return f"from {name.rsplit('.', 1)[0]} import {alias}"
    return f"import {name} as {alias}"


def _free_names(src: str) -> list[str]:
    """Names `src` reads that it never binds at any level (a superset-free approximation:
    a name bound anywhere in the text counts as bound), in order of first use."""
    tree = ast.parse(src)
    for node in ast.walk(tree):  # annotations are not evaluated (the module has
        if isinstance(node, ast.arg):  # `from __future__ import annotations`)
            node.annotation = None
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
        elif isinstance(node, ast.AnnAssign):
            node.annotation = ast.Constant(None)
    bound, read = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (bound.add(node.id) if isinstance(node.ctx, ast.Store) else read.append(node.id))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    seen: dict[str, None] = {}
    for name in read:
        if name not in bound and not hasattr(builtins, name):
            seen.setdefault(name)
    return list(seen)


def _public_path(obj: Any) -> tuple[str, str] | None:
    """(module, attribute) under which a library function is importable, public ones first."""
    name = getattr(obj, "__name__", None)
    if not name:
        return None
    for mod_name in PUBLIC + (getattr(obj, "__module__", None) or "",):
        mod = sys.modules.get(mod_name)  # obj came from a loaded module: import nothing new
        if mod is not None and getattr(mod, name, None) is obj:
            return mod_name, name
    return None


class _Closure:
    """Definitions for the free names of some text, resolved in a namespace, deps first."""

    def __init__(self, taken: set[str]):
        self.taken = taken  # names the generated text defines at module level
        self.imports: dict[str, None] = {}
        self.defs: list[str] = []
        self.done: dict[str, Any] = {}

    def add_text(self, src: str, namespace: dict, top: bool = False) -> None:
        for name in _free_names(src):
            if name in self.taken and not top:  # a helper would call the generated definition
                raise BackendError(f"standalone source: the generated module defines {name!r},"
                                   " which a runtime helper also needs; rename that scan or "
                                   "function")
            if name in self.taken or name in self.done:
                continue
            if name not in namespace:
                raise BackendError(f"standalone source: {name!r} is neither defined by the "
                                   "generated code nor in its runtime namespace")
            self.add(name, namespace[name])

    def add(self, alias: str, obj: Any) -> None:
        self.done[alias] = obj
        if isinstance(obj, types.ModuleType):
            self.imports.setdefault(_module_import(alias, obj))
            return
        path = _public_path(obj) if callable(obj) else None
        if path is not None and not path[0].startswith("bpcompile"):
            mod, name = path
            self.imports.setdefault(f"from {mod} import {name}" +
                                    (f" as {alias}" if alias != name else ""))
            return
        obj = inspect.unwrap(obj) if callable(obj) else obj
        own = getattr(obj, "__module__", "") or ""
        if (isinstance(obj, (types.FunctionType, type)) and own.split(".")[0] == "bpcompile"
                and obj.__name__ != "<lambda>"):
            src = textwrap.dedent(inspect.getsource(obj))
            home = obj.__globals__ if isinstance(obj, types.FunctionType) else vars(
                importlib.import_module(own))
            self.add_text(src, home)  # what it reads is defined before it
            self.defs.append(src.rstrip() + "\n\n")
            if obj.__name__ != alias:
                self.done.setdefault(obj.__name__, obj)
                self.defs.append(f"{alias} = {obj.__name__}\n")
            return
        if isinstance(obj, (int, float, str, bool, tuple)) and ast.literal_eval(repr(obj)) == obj:
            self.defs.append(f"{alias} = {obj!r}\n")
            return
        raise BackendError(f"standalone source: cannot write {alias!r} "
                           f"({type(obj).__name__}) as Python source")


def _top_level_names(src: str) -> set[str]:
    names = set()
    for node in ast.parse(src).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _constant(name: str, v: np.ndarray, ns: str) -> str:
    """A module-level array constant with its exact value: a literal when small, else base64
    of its little-endian bytes."""
    arr = np.ascontiguousarray(v)
    if arr.size <= 16:
        return f"{name} = {ns}.array({arr.tolist()!r}, dtype={ns}.{arr.dtype.name})"
    data = base64.b64encode(arr.astype(arr.dtype.newbyteorder("<")).tobytes()).decode()
    lines = textwrap.wrap(data, 88)
    body = "".join(f'\n    "{chunk}"' for chunk in lines)
    value = (f"np.frombuffer(base64.b64decode({body}\n), dtype=np.dtype({arr.dtype.str!r})"
             f".newbyteorder('<')).reshape({arr.shape})")
    return f"{name} = {ns}.asarray({value})" if ns != "np" else f"{name} = {value}.copy()"


def module_source(src: str, consts: dict[str, np.ndarray], namespace: dict,
                  ns: str, title: str = "") -> str:
    """The function text `src` (emitted against `namespace`) as a complete Python module."""
    taken = _top_level_names(src) | set(consts)
    closure = _Closure(taken)
    closure.add_text(src, namespace, top=True)
    const_lines = [_constant(k, v, ns) for k, v in consts.items()]
    imports = dict(closure.imports)
    if any(v.size > 16 for v in consts.values()):
        imports.setdefault("import base64")
        imports.setdefault("import numpy as np")
    if consts and ns == "jnp":
        imports.setdefault("import jax.numpy as jnp")
    # the text's own placeholder comments for large constants are replaced by their values
    body = "\n".join(line for line in src.splitlines()
                     if not (line.startswith("# ") and "passed in at exec time" in line))
    head = ['"""Generated by bpcompile: a standalone module (it imports nothing from bpcompile).',
            "",
            f"`{FUNCTION}(...)` takes the arguments in the order of its signature and returns",
            '(loss, (gradients...)) or (first output, (other outputs...))."""', "",
            "from __future__ import annotations", "",
            *sorted(imports, key=lambda s: (s.startswith("from"), s)), ""]
    parts = head + [d for d in closure.defs] + const_lines + ([""] if const_lines else [])
    return "\n".join(parts) + "\n" + body.rstrip() + "\n"


def save_source(text: str, path: str | Path) -> Path:
    """Write module text to `path` (parents created) and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p
