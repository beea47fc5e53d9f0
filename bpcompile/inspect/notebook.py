"""Jupyter display: a node shows the picture of the graph that computes it, a compiled
function its equations, final graph and generated code (`_repr_svg_`, `_repr_html_`)."""

from __future__ import annotations

import html
import shutil
from typing import Any

from ..ir.node import Node
from .dot import GraphTooLargeError, dot_of, render

NOTEBOOK_MAX_NODES = 120  # a cell picture stays legible; bigger graphs collapse by line


def node_svg(node: Node) -> str | None:
    """SVG of the graph computing `node`, or None (Jupyter then shows the text repr) when
    Graphviz is missing or the graph is too large even collapsed."""
    if shutil.which("dot") is None:
        return None
    try:
        text = dot_of([node], [node.name or node.op], f"{node.op} -> {node.dtype}"
                      f"{list(node.shape)}", max_nodes=NOTEBOOK_MAX_NODES)
    except GraphTooLargeError:
        return None
    svg = render(text, "svg").decode()
    return svg[svg.find("<svg"):]


def program_html(program: Any) -> str:
    """HTML for a compiled function: its signature, equations, final graph and code."""
    from . import latex
    from .report import _equations_svg, _svg_only

    parts = [f"<p><b>{html.escape(repr(program))}</b></p>"]
    if hasattr(program, "grad_names"):
        parts.append(_equations_svg(program))
    if shutil.which("dot") is not None:
        try:
            parts.append(_svg_only(str(program.graph_image("final", "svg",
                                                           max_nodes=NOTEBOOK_MAX_NODES))))
        except GraphTooLargeError as e:
            parts.append(f"<p>{html.escape(str(e))}</p>")
    parts.append(f"<details><summary>generated code</summary><pre>"
                 f"{html.escape(program.source())}</pre></details>")
    if hasattr(program, "grad_names"):
        parts.append(f"<details><summary>LaTeX</summary><pre>"
                     f"{html.escape(latex.to_latex(program))}</pre></details>")
    return "\n".join(parts)
