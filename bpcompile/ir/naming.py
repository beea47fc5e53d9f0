"""Stable, readable variable names for a scheduled graph (shared by printers and codegen)."""

from __future__ import annotations

import keyword

from .node import NAMES, Node

RESERVED = {
    "np",
    "jnp",
    "jax",
    "lax",
    "math",
    "out",
    "grads",
    "self",
    "sigmoid",
    "softplus",
    "relu",
    "step",
    "one_hot",
    "take_in_range",
    "iota",
    "pad",
    "float",
    "sum",
    "max",
    "min",
    "abs",
    "round",
    "slice",
    "input",
    "type",
    "len",
    "range",
    "id",
}


def assign_names(order: list[Node], reserved=()) -> dict[Node, str]:
    """Leaves keep their declared names; named nodes keep theirs; the rest get <op><k>."""
    taken = set(RESERVED) | set(reserved)
    names: dict[Node, str] = {}
    counter: dict[str, int] = {}

    def fresh(base: str) -> str:
        base = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in base) or "t"
        if base[0].isdigit():
            base = "t" + base
        if base not in taken and not keyword.iskeyword(base) and not base[-1].isdigit():
            taken.add(base)
            return base
        while True:
            counter[base] = counter.get(base, 0) + 1
            cand = f"{base}{counter[base]}" if not base[-1].isdigit() else f"{base}_{counter[base]}"
            if cand not in taken:
                taken.add(cand)
                return cand

    for n in order:  # leaves first so user names are never displaced
        if n.op in ("input", "param"):
            names[n] = n.attr("name")
            taken.add(names[n])
    for n in order:
        if n in names:
            continue
        if n in NAMES:
            names[n] = fresh(NAMES[n]) if NAMES[n] in taken else _take(NAMES[n], taken)
        elif n.op == "kernel":
            names[n] = fresh(n.attr("name"))
        elif n.op == "transpose" and n.inputs[0] in names:
            names[n] = fresh(names[n.inputs[0]] + "_T")  # x.T reads as x_T
        elif n.op == "const":
            names[n] = fresh("c")
        else:
            names[n] = fresh(n.op)
    return names


def _take(name, taken):
    taken.add(name)
    return name
