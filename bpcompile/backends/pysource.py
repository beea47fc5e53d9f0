"""Emit a readable Python function for a scheduled graph, given a backend's lowering table.

Shared by the NumPy and JAX backends: one statement per node, names from `ir.naming`, a
comment naming the source op and, for forward nodes, the user's line that created it; for
backward nodes, the forward node they are the gradient of and its line (Tangent's "Grad of").
Scalar constants are inlined as literals; array constants become module-level names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar

import numpy as np

from ..ir.naming import Namespace, assign_names
from ..ir.node import Node
from ..ir.printer import type_str
from ..ir.provenance import GRAD_OF, recompute_labels
from ..ir.traverse import toposort
from ..ops.leaves import const_value
from .array_lowering import dtype_name
from .run_order import run_order

COMMENT_COL = 56
# The namespace of the module being emitted: scan lowerings (pyscan.py) name their helper
# functions and loop locals from it, and emit the body function into it.
_MODULE: ContextVar[Namespace | None] = ContextVar("bpcompile_module", default=None)
_TEMP = re.compile(r"\{self\}_t\d+")


def current_namespace() -> Namespace:
    """The namespace of the module `emit_function` is emitting (for lowerings that add
    module-level definitions)."""
    ns = _MODULE.get()
    if ns is None:
        raise RuntimeError("current_namespace: no module is being emitted")
    return ns


def comment(text: str) -> str:
    """`text` safe inside a `#` comment: one line, printable (a kernel's name, a file name)."""
    if text.isprintable():  # the common case, without a Python loop per character
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


def _literal(v: np.ndarray) -> str:
    x = v.item()
    if isinstance(x, bool):
        return repr(x)
    if isinstance(x, float):
        if np.isnan(x):
            return "float('nan')"
        if np.isinf(x):
            return "float('inf')" if x > 0 else "-float('inf')"
    return repr(x)


def _grad_of(f: Node, names: dict) -> str:
    """`grad of a1 = sigmoid(...), xor.toml:21`: forward node `f` by the name it has in this
    function or its own name (a pass may have replaced it), else by its op and line only."""
    name = names.get(f) or f.name
    text = f"grad of {name} = {f.op}(...)" if name and name != f.op else f"grad of {f.op}(...)"
    return f"{text}, {f.where}" if f.where else text


def provenance(n: Node, names: dict, recompute: bool = False) -> str | None:
    """Where node `n` comes from, for a generated-code comment (every backend uses this): a
    recomputed (checkpoint) node names the user's line it repeats; an adjoint node names its
    forward node (`grad of z1 = matmul(...), xor.toml:26`); any other node names its line."""
    if recompute and n.where:
        return n.where
    if n in GRAD_OF:
        return _grad_of(GRAD_OF[n], names)
    return n.where


def emit_function(
    outputs: list[Node],
    args: list[Node],
    lower: Callable,
    fn_name: str,
    ns: str = "np",
    title: str = "",
) -> tuple[str, dict]:
    """Return (source, constants) for `def fn_name(*args): ... return outputs`.

    `outputs[0]` is the loss; nodes it depends on are the forward pass, the rest backward.
    Called inside another emission (a scan body), the function joins that module: its
    locals and constants are named from the same namespace, and `fn_name` must come from it.
    """
    outer = _MODULE.get()
    module = outer if outer is not None else Namespace({fn_name})
    token = _MODULE.set(module)
    try:
        return _emit(outputs, args, lower, fn_name, ns, title, module)
    finally:
        _MODULE.reset(token)


def _last_readers(order: list[Node], outputs) -> dict[Node, list[Node]]:
    """node -> the computed values it reads last (none of them an output)."""
    last: dict[Node, Node] = {}
    for m in order:
        for i in m.inputs:
            last[i] = m
    keep = set(outputs)
    dies: dict[Node, list[Node]] = {}
    for i, m in last.items():
        if (i.op not in ("input", "param", "const", "result") and i.results is None
                and i not in keep and m.op != "result"):
            dies.setdefault(m, []).append(i)
    return dies


def _emit(outputs, args, lower, fn_name, ns, title, module: Namespace):
    order = run_order(list(outputs), list(args))  # args may be unused after simplification
    scope = module.scope()
    # an unused argument still needs its name; array constants are module globals
    names = assign_names(list(args) + order, scope=scope, global_consts=True)
    forward = set(toposort(outputs[:1]))
    recomputed = recompute_labels(order, forward)
    consts: dict[str, np.ndarray] = {}
    helpers: list[str] = []
    expr_of: dict[Node, str] = {}
    for n in order:
        if n.op in ("input", "param"):
            expr_of[n] = names[n]
        elif n.op == "const":
            v = const_value(n)
            if v.ndim == 0:
                expr_of[n] = _literal(v)
            else:
                expr_of[n] = names[n]
                consts[names[n]] = v
    lines = [
        f"# {comment(title)}" if title else "# generated by bpcompile",
        f"def {fn_name}({', '.join(names[a] for a in args)}):",
    ]
    # a node with several results (scan) is one statement unpacking into its projections'
    # names, `h_T, hs = ...`; a result nobody reads is bound to one throwaway local
    proj = {(n.inputs[0], n.attr("index")): n for n in order if n.op == "result"}
    unused: list[str] = []
    section = None
    dies = _last_readers(order, outputs) if ns == "np" else {}
    for n in order:
        if n.op in ("input", "param", "const"):
            continue
        if n.op == "result" and n.inputs[0].results is not None:
            expr_of[n] = names[n]  # bound where its tuple node was unpacked
            continue
        sec = "forward" if n in forward else "backward"
        if sec == "backward" and n in recomputed:  # a checkpoint's rematerialisation
            sec = f"recompute (checkpoint {recomputed[n]})"
        if sec != section:
            lines.append(f"    # ---- {sec} ----")
            section = sec
        operands = [expr_of[i] for i in n.inputs]
        if (
            n.op not in ("kernel",)
            and n.inputs
            and all(i.op == "const" and i.ndim == 0 for i in n.inputs)
        ):
            operands = [
                f"{ns}.asarray({o}, {dtype_name(ns, i.dtype)})"
                for i, o in zip(n.inputs, operands)
            ]
        rhs = lower(n, operands)
        if getattr(rhs, "defs", None):  # module-level helpers a lowering needs (scan loops)
            helpers.append(rhs.defs)
            consts.update(rhs.consts)
        if isinstance(rhs, tuple):  # (temporaries, expression): hoisted common subexpressions
            temps, rhs = rhs
            local: dict[str, str] = {}  # "{self}_t0" -> a fresh local of this function

            def subst(text, local=local, n=n):
                text = _TEMP.sub(lambda m: local[m.group()], text)
                return text.replace("{self}", names[n])

            for tname, texpr in temps:
                local[tname] = scope.user(tname.replace("{self}", names[n]))
                lines.append(f"    {local[tname]} = {subst(texpr)}")
            rhs = subst(rhs)
        if (
            n.op in ("broadcast_to", "reshape")
            and n.inputs[0].op == "const"
            and n.inputs[0].ndim == 0
        ):
            dt = dtype_name(ns, n.dtype)
            rhs = rhs.replace(operands[0], f"{ns}.asarray({operands[0]}, {dt})", 1)
        target = names[n]
        if n.results is not None:
            if not unused:
                unused.append(scope.fresh("_"))
            target = "".join(
                (names[proj[n, i]] if (n, i) in proj else unused[0]) + ", "
                for i in range(len(n.results)))[:-2] + ("," if len(n.results) == 1 else "")
        stmt = f"    {target} = {rhs}"
        note = f"# {n.op if n.op != 'kernel' else 'kernel ' + n.attr('name')} -> {type_str(n)}"
        # an adjoint node names its forward node also where it leads its function's first
        # output (a BPTT body); a forward value only the backward pass reads names its line
        where = provenance(n, names, recompute=sec.startswith("recompute"))
        if where:
            note += f"  ({where})"
        pad = max(1, COMMENT_COL - len(stmt))
        lines.append(stmt + " " * pad + comment(note))
        expr_of[n] = names[n]
        if dies.get(n):  # NumPy frees a value once its last reader ran (the memory plan's model)
            lines.append(f"    del {', '.join(names[d] for d in dies[n])}")
    for o in outputs:  # a literal output would take the target's default float (x64: f64)
        if o.op == "const" and o.ndim == 0:
            expr_of[o] = f"{ns}.asarray({expr_of[o]}, {dtype_name(ns, o.dtype)})"
    lines.append(
        f"    return {expr_of[outputs[0]]}, ({''.join(expr_of[o] + ', ' for o in outputs[1:])})"
    )
    header = []
    for cname, v in consts.items():
        if v.size <= 16:
            dt = dtype_name(ns, v.dtype.name)
            header.append(f"{cname} = {ns}.array({v.tolist()!r}, dtype={dt})")
        else:
            header.append(
                f"# {cname}: {v.dtype.name}{list(v.shape)} constant, passed in at exec time"
            )
    header += [h + "\n" for h in helpers]
    src = "\n".join(header + ([""] if header else []) + lines) + "\n"
    return src, consts
