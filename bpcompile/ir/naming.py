"""Stable, readable variable names for a scheduled graph (shared by printers and codegen).

Generated Python modules take their identifiers from one `Namespace` each, so a name the
generator makes up can never meet a user's name (a param called `np`, `c0`, `carry` or
`class`). A namespace holds the module-level names (the backend's runtime modules and helpers,
Python keywords and builtins, array constants, generated helper functions); each function in
the module draws its locals from a `Scope` of it. Rules:

- a local never equals a module-level name (it would shadow it), nor another local of its
  function; a module-level name never equals any name given out anywhere in the module;
- a user's name (a leaf's, a `.named()` one) is kept verbatim when that is possible, and is
  otherwise mangled: `class` -> `class_`, `np` -> `np_`; only the generated source changes,
  never the keyword argument names or gradient keys the user sees;
- names are compared in NFKC form, as Python compares identifiers (`ﬁ` is `fi`).
"""

from __future__ import annotations

import builtins
import itertools
import keyword
import unicodedata

from .node import NAMES, Node

# Module-level names of the generated code: runtime modules and the helpers the NumPy and JAX
# namespaces (backends/numpy/runtime.py, backends/jax/lower.py) provide; a test checks that
# every name in those namespaces is reserved. Plus names the emitters use as fixed identifiers.
# Helpers named after a SymPy primitive (sigmoid, ...) are not listed: ops/sympy_funcs.py
# reserves each with `reserve` where it defines the class.
RUNTIME = {
    "np",
    "ml_dtypes",
    "jnp",
    "jax",
    "lax",
    "math",
    "one_hot",
    "take_in_range",
    "scatter_add",
    "iota",
    "pad",
    "sum_unrolled",
    "max_unrolled",
    "one_hot_scatter",
    "matmul_unrolled",
    "forward_backward",
    "jax_forward",
}
# Python's own: keywords are syntax errors as names; builtins (float, tuple, zip, range...)
# are what generated code may call; the dunder names the exec'd module itself uses.
PYTHON = (
    set(keyword.kwlist) | set(dir(builtins)) | {"__builtins__", "__file__", "__cached__"}
)
RESERVED = RUNTIME | PYTHON


def reserve(name: str) -> None:
    """Reserve a module-level helper name in every namespace made from now on."""
    RESERVED.add(normal(name))


def normal(name: str) -> str:
    """The form Python compares identifiers in (PEP 3131: NFKC)."""
    return unicodedata.normalize("NFKC", name)


def legal(base: str) -> str:
    """`base` made a Python identifier: NFKC form, other characters to `_`, no leading digit."""
    if base.isascii() and base.isidentifier():  # the common case, already in NFKC form
        return base
    base = normal(base)
    base = "".join(ch if ("a" + ch).isidentifier() else "_" for ch in base)
    if not base or not base.isidentifier():
        base = "t" + base
    return base if base.isidentifier() else "t"


class Namespace:
    """The identifiers of one generated module (see the module docstring)."""

    def __init__(self, reserved=()):
        self.globals = set(RESERVED) | {normal(r) for r in reserved}
        self.used = set(self.globals)  # every name given out in the module, any scope
        self.memo: dict = {}  # key (a const node, say) -> its module-level name
        self.counter: dict[str, int] = {}

    def scope(self) -> Scope:
        return Scope(self)

    def global_name(self, base: str, key=None) -> str:
        """A fresh module-level name (memoised by `key` when given)."""
        if key is not None and key in self.memo:
            return self.memo[key]
        name = _first(legal(base), lambda c: c not in self.used, False, self.counter)
        self.globals.add(name)
        self.used.add(name)
        if key is not None:
            self.memo[key] = name
        return name

    def global_prefix(self, base: str, suffixes) -> str:
        """A prefix p such that every p + suffix is a fresh module-level name (taken)."""
        base = legal(base)
        for k in itertools.count():
            p = base if k == 0 else f"{base}{k}"
            cands = [normal(p + s) for s in suffixes]
            if all(c.isidentifier() and c not in self.used for c in cands):
                self.globals.update(cands)
                self.used.update(cands)
                return p
        raise AssertionError("unreachable")


class Scope:
    """The locals of one generated function: unique, and never a module-level name."""

    def __init__(self, ns: Namespace):
        self.ns = ns
        self.taken: set[str] = set()
        self.counter: dict[str, int] = {}

    def free(self, name: str) -> bool:
        return name not in self.ns.globals and name not in self.taken

    def take(self, name: str) -> str:
        self.taken.add(name)
        self.ns.used.add(name)
        return name

    def fresh(self, base: str) -> str:
        """A new local from `base`: `base` itself if free, else base1, base2 (base_1 after a
        digit)."""
        base = legal(base)
        if self.free(base) and not base[-1].isdigit():
            return self.take(base)
        return self.take(_first(base, self.free, True, self.counter))

    def user(self, name: str) -> str:
        """A local for a user's name: verbatim when free, else `name_`, then numbered."""
        base = legal(name)
        if self.free(base):
            return self.take(base)
        return self.take(_first(base + "_", self.free, False, self.counter))


def _first(base: str, ok, numbered_only: bool = False, counter: dict | None = None) -> str:
    """`base` if ok, else the first ok of base1, base2, ... (base_1 after a digit); `counter`
    remembers where each base's search ended (names are only ever added, so that is safe)."""
    if not numbered_only and ok(base):
        return base
    sep = "_" if base[-1].isdigit() else ""
    k = counter.get(base, 0) + 1 if counter is not None else 1
    while not ok(f"{base}{sep}{k}"):
        k += 1
    if counter is not None:
        counter[base] = k
    return f"{base}{sep}{k}"


def assign_names(order: list[Node], reserved=(), scope: Scope | None = None,
                 global_consts: bool = False) -> dict[Node, str]:
    """Leaves keep their declared names (mangled only where they would collide); named nodes
    keep theirs; the rest get <op><k>. With `global_consts`, array constants are named at the
    module level of `scope`'s namespace (they are module globals in the emitted source)."""
    if scope is None:
        scope = Namespace(reserved).scope()
    else:
        scope.taken.update(reserved)
    names: dict[Node, str] = {}
    for n in order:  # leaves first so user names are never displaced
        if n.op in ("input", "param") and n not in names:
            names[n] = scope.user(n.attr("name"))
    for n in order:
        if n in names:
            continue
        if n in NAMES:
            names[n] = scope.user(NAMES[n])
        elif n.op == "kernel":
            names[n] = scope.fresh(n.attr("name"))
        elif n.op == "transpose" and n.inputs[0] in names:
            names[n] = scope.fresh(names[n.inputs[0]] + "_T")  # x.T reads as x_T
        elif n.op == "const":
            if global_consts and n.ndim > 0:
                names[n] = scope.ns.global_name("c", key=n)
            else:
                names[n] = scope.fresh("c")
        else:
            names[n] = scope.fresh(n.op)
    return names
