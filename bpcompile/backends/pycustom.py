"""Lowering of a `custom_vjp` / `custom_jvp` node for the Python-source backends (numpy and jax).

The rewrite pipeline inlines every custom_vjp node before a backend sees it (ops/custom.py),
so this prints only graphs that skipped the pipeline (the reference evaluation of a raw
gradient graph): a call to a module-level function named after the user's function, whose
body is the rule's primal, `y = softplus_naive(x)[0]`.
"""

from __future__ import annotations

from ..ir.node import Node
from .pyscan import Lowered


def _emit(n: Node, a: list[str], lower, ns: str) -> Lowered:
    from .pysource import current_namespace, emit_function

    rule = n.attr("rule")
    name = current_namespace().global_prefix(rule.name, ("",))
    src, consts = emit_function(list(rule.primals), list(rule.args), lower, name, ns,
                                title=f"{n.op} {rule.name}: the primal")
    call = f"{name}({', '.join(a)})"  # returns (first output, (other outputs...))
    # a custom_jvp node has several results, which the caller unpacks from one tuple
    out = Lowered(f"{call}[0]" if n.results is None else f"(lambda r: (r[0], *r[1]))({call})")
    out.defs, out.consts = src, consts
    return out


def numpy_custom(n: Node, a: list[str]) -> Lowered:
    from .numpy.lower import lower

    return _emit(n, a, lower, "np")


def jax_custom(n: Node, a: list[str]) -> Lowered:
    from .jax.lower import lower

    return _emit(n, a, lower, "jnp")
