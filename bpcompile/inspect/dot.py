"""Graph pictures: a program's graph at any stage as Graphviz DOT text, and SVG/PNG from it.

The DOT text is ours (no dependency); rendering runs Graphviz's `dot` binary (Debian package
`graphviz`). Forward nodes are blue, backward (adjoint) nodes orange, inputs grey, params green;
a fused kernel is a cluster labelled with its SymPy body; each edge is labelled with the shape
it carries; a forward value the backward pass reads (saved for backward) has a double border
and "saved"; nodes carry the names the generated code uses (`z1`, `dW1`, `dz2`).

Graphs over `max_nodes` nodes collapse: every forward node made on one user source line (a
layer, usually) becomes one box, and every backward node becomes the box of the line of the
forward node it differentiates; `expand=[line, ...]` keeps chosen boxes open. A graph still
too large after collapsing raises GraphTooLargeError with the numbers and what to pass.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sympy as sp

from ..errors import BPError
from ..ir.naming import assign_names
from ..ir.node import Node
from ..ir.printer import type_str
from ..ir.provenance import GRAD_OF
from ..ir.traverse import toposort

MAX_NODES = 300
FORMATS = ("dot", "svg", "png")
COLOURS = {"forward": "#cfe2ff", "backward": "#ffd8b1", "input": "#e9ecef", "param": "#c7f0d2",
           "const": "#ffffff", "group_forward": "#9ec5fe", "group_backward": "#feb272"}


class GraphTooLargeError(BPError, ValueError):
    """A graph too large to draw even with its layers collapsed."""


def _q(text: str) -> str:
    """A DOT double-quoted string (labels keep `\\n` as DOT line breaks)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _stage_outputs(program: Any, stage: str) -> tuple[list[Node], list[str]]:
    names = [s.name for s in program.stages]
    if stage == "final":
        st = program.stages[-1]
    elif stage in names:
        st = program.stages[names.index(stage)]
    else:
        raise ValueError(f"graph_image: unknown stage {stage!r}; choose from {names + ['final']}")
    labels = program.labels if len(st.outputs) == len(program.labels) else program.labels[:1]
    return list(st.outputs), list(labels)


def _group_key(n: Node, forward: set) -> str:
    """The box a node collapses into: its user line, or its forward node's line."""
    if n.op in ("input", "param", "const"):
        return ""
    f = n if n in forward else GRAD_OF.get(n, n)
    return f.where or "(no source line)"


def to_dot(program: Any, stage: str = "final", max_nodes: int = MAX_NODES,
           expand: Iterable[str] = ()) -> str:
    """DOT text of the graph at `stage` (forward, adjoint, a pass name or final)."""
    outputs, labels = _stage_outputs(program, stage)
    return dot_of(outputs, labels, stage, max_nodes, expand)


def dot_of(outputs: list[Node], labels: list[str], title: str = "graph",
           max_nodes: int = MAX_NODES, expand: Iterable[str] = ()) -> str:
    """DOT text of the graph computing `outputs` (labelled `labels`); the first output is
    the loss whose dependencies are the forward pass."""
    stage = title
    order = toposort(outputs)
    names = assign_names(order)
    forward = set(toposort(outputs[:1]))
    out_label: dict[Node, str] = {}
    for o, lab in zip(outputs, labels):
        out_label.setdefault(o, lab)
    inner = [n for n in order if n.op not in ("input", "param", "const")]
    if len(inner) <= max_nodes:
        return _full(order, names, forward, out_label, stage)
    return _collapsed(order, names, forward, out_label, stage, max_nodes, set(expand))


def _header(stage: str, note: str = "") -> list[str]:
    title = f"bpcompile graph: {stage}" + (f"\n{note}" if note else "")
    return ["digraph bpcompile {", "  rankdir=TB;", f"  label={_q(title)}; labelloc=t;",
            '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
            '  edge [fontname="Helvetica", fontsize=8, color="#555555"];']


def _node_line(n: Node, names: dict, forward: set, out_label: dict, saved: set) -> str:
    ident = f"n{n.serial}"
    if n.op in ("input", "param"):
        label = f"{names[n]}\n{n.op} {type_str(n)}"
        return (f"  {ident} [label={_q(label)}, shape=ellipse, fillcolor="
                f"{_q(COLOURS[n.op])}];")
    if n.op == "const":
        return f"  {ident} [label={_q(names[n] + ' ' + type_str(n))}, shape=plain];"
    section = "forward" if n in forward else "backward"
    name = names[n]
    m = re.fullmatch(r"dz(\d+)", name)
    shown = f"{name} (δ{m.group(1)})" if m else name
    label = (f"{n.op}" if name.rstrip("0123456789") == n.op else f"{shown} = {n.op}") + \
        f"\n{type_str(n)}"
    extra = ""
    if n in out_label:
        label += f"\n-> {out_label[n]}"
        extra += ", penwidth=2"
    if n in saved:
        label += "\nsaved for backward"
        extra += ", peripheries=2"
    return f"  {ident} [label={_q(label)}, fillcolor={_q(COLOURS[section])}{extra}];"


def _body(n: Node, names: dict) -> str:
    """A kernel's SymPy body over its operands' names: sigmoid(matmul + b1)."""
    expr = n.attr("expr")
    by_name = {s.name: s for s in expr.free_symbols}
    subs = {by_name[f"a{i}"]: sp.Symbol(names[x]) for i, x in enumerate(n.inputs)
            if f"a{i}" in by_name}
    return str(expr.xreplace(subs))


def _saved(order: list[Node], forward: set) -> set:
    return {i for n in order if n not in forward for i in n.inputs
            if i in forward and i.op not in ("input", "param", "const")}


def _full(order, names, forward, out_label, stage) -> str:
    lines = _header(stage)
    saved = _saved(order, forward)
    for n in order:
        line = _node_line(n, names, forward, out_label, saved)
        if n.op == "kernel":  # a fused kernel: a cluster showing its SymPy body
            body = f"kernel {names[n]} = {_body(n, names)}"
            lines += [f"  subgraph cluster_k{n.serial} {{", f"    label={_q(body)};",
                      '    style="dashed"; color="#888888"; fontsize=9;', "  " + line, "  }"]
        else:
            lines.append(line)
    for n in order:
        for i in n.inputs:
            lines.append(f"  n{i.serial} -> n{n.serial} [label={_q(type_str(i))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _collapsed(order, names, forward, out_label, stage, max_nodes, expand) -> str:
    key = {n: _group_key(n, forward) for n in order}
    members: dict[tuple[str, str], list[Node]] = {}
    for n in order:
        if key[n] and key[n] not in expand:
            sec = "forward" if n in forward else "backward"
            members.setdefault((key[n], sec), []).append(n)
    boxes = {n: f"g{list(members).index((key[n], 'forward' if n in forward else 'backward'))}"
             for n in order if key[n] and key[n] not in expand}
    shown = [n for n in order if n not in boxes]
    count = len(members)  # the boxes; nodes of lines the caller expanded were asked for
    total = sum(n.op not in ("input", "param", "const") for n in order)
    if count > max_nodes:
        raise GraphTooLargeError(
            f"graph_image({stage!r}): {total} nodes, still {count} boxes with each source line "
            f"collapsed, over max_nodes={max_nodes}; pass a larger max_nodes (Graphviz slows "
            "down past a few thousand) or draw an earlier stage")
    note = (f"{total} nodes > max_nodes={max_nodes}: each source line is one box; "
            "expand=[line] opens one")
    lines = _header(stage, note)
    saved = _saved(order, forward)
    for idx, ((where, sec), ns) in enumerate(members.items()):
        ops = Counter(n.op for n in ns)
        top = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in ops.most_common(4))
        named = [names[n] for n in ns if n in out_label or n.op == "kernel"][:3]
        label = f"{where} ({sec})\n{len(ns)} node{'s' if len(ns) > 1 else ''}: {top}" + (
            f"\n{', '.join(named)}" if named else "")
        lines.append(f"  g{idx} [label={_q(label)}, shape=box3d, "
                     f"fillcolor={_q(COLOURS['group_' + sec])}];")
    for n in shown:
        lines.append(_node_line(n, names, forward, out_label, saved))
    seen = set()
    for n in order:
        for i in n.inputs:
            a, b = boxes.get(i, f"n{i.serial}"), boxes.get(n, f"n{n.serial}")
            if a != b and (a, b) not in seen:
                seen.add((a, b))
                lines.append(f"  {a} -> {b} [label={_q(type_str(i))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_text: str, fmt: str) -> bytes:
    """Run Graphviz's `dot -T<fmt>` on the text (svg, png, pdf, ...)."""
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError(
            f"rendering a graph as {fmt} needs Graphviz's `dot` program, which is not on PATH: "
            "apt-get install graphviz (Debian/Ubuntu), brew install graphviz, or conda install "
            "graphviz; the DOT text itself needs nothing (format='dot')")
    r = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True,
                       timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"dot -T{fmt} failed: {r.stderr.decode(errors='replace')[-500:]}")
    return r.stdout


def graph_image(program: Any, stage: str = "final", format: str = "svg",  # noqa: A002
                path: str | Path | None = None, max_nodes: int = MAX_NODES,
                expand: Iterable[str] = ()) -> str | bytes | Path:
    """DOT text, SVG text or PNG bytes of the graph at `stage`; written to `path` if given."""
    if format not in FORMATS:
        raise ValueError(f"graph_image: format {format!r}; choose from {FORMATS}")
    text = to_dot(program, stage, max_nodes, expand)
    data: str | bytes = text if format == "dot" else render(text, format)
    if format == "svg":
        data = data.decode() if isinstance(data, bytes) else data
    if path is None:
        return data
    p = Path(path)
    p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data)
    return p
