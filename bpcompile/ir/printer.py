"""A jaxpr-like text form of a graph: one line per node with its type and operands."""

from __future__ import annotations

from .dtypes import SHORT
from .naming import assign_names
from .node import Node
from .traverse import toposort


def type_str(n: Node) -> str:
    """`f32[4,3]`; a node with several results: `(f32[4,3], f32[5,4,3])`."""
    if n.results is not None:
        return "(" + ", ".join(_type(s, d) for s, d in n.results) + ")"
    return _type(n.shape, n.dtype)


def _type(shape: tuple, dtype: str) -> str:
    return f"{SHORT.get(dtype, dtype)}[{','.join(map(str, shape))}]"


def _attr_str(n: Node) -> str:
    parts = []
    for k, v in n.attrs:
        if k in ("name", "dtype", "shape") and n.op in ("input", "param"):
            continue
        if k == "value":
            continue
        parts.append(f"{k}={v}")
    return (" " + " ".join(parts)) if parts else ""


def format_graph(outputs: list[Node], labels: list[str] | None = None) -> str:
    """The graph as text; each `scan` is followed by its body, nested as in a jaxpr."""
    order = toposort(outputs)
    ins = [n for n in order if n.op == "input"]
    params = [n for n in order if n.op == "param"]
    lines = _lambda(order, outputs, [ins, params], "")
    if labels:
        names = assign_names(order)
        lines.append(
            "  # outputs: " + ", ".join(f"{lab}={names[o]}" for lab, o in zip(labels, outputs))
        )
    return "\n".join(lines)


def _lambda(order: list[Node], outputs, groups: list[list[Node]], pad: str) -> list[str]:
    """`{ lambda group ; group ... . let ... in ( outputs ) }` lines, indented by `pad`."""
    seen = set(order)  # a body argument the body never reads still gets a name
    names = assign_names(order + [n for g in groups for n in g if n not in seen])
    head = " ; ".join(" ".join(f"{names[n]}:{type_str(n)}" for n in g) for g in groups)
    lines = [f"{pad}{{ lambda {head} .", f"{pad}  let"]
    proj = {(n.inputs[0], n.attr("index")): n for n in order if n.op == "result"}
    for n in order:
        if n.op in ("input", "param") or (n.op == "result" and n.inputs[0].results):
            continue  # a projection is named where its tuple node is unpacked
        if n.op == "const":
            lines.append(f"{pad}    {names[n]}:{type_str(n)} = const {n.attr('value')}")
            continue
        args = " ".join(names[i] for i in n.inputs)
        if n.results is not None:  # several results: `h_T:f32[4], hs:f32[5,4], _ = scan ...`
            target = ", ".join(
                f"{names[proj[n, i]]}:{type_str(proj[n, i])}" if (n, i) in proj else "_"
                for i in range(len(n.results)))
        else:
            target = f"{names[n]}:{type_str(n)}"
        lines.append(f"{pad}    {target} = {n.op}{_attr_str(n)} {args}".rstrip())
        body = n.attr("body")
        if body is not None:  # a sub-graph (scan): carries ; xs ; consts -> new carries, ys
            lines += _lambda(toposort(list(body.outputs)), list(body.outputs),
                             [list(body.carries), list(body.xs), list(body.consts)],
                             pad + "      ")
    outs = ", ".join(names[o] for o in outputs)
    lines.append(f"{pad}  in ( {outs} ) }}")
    return lines
