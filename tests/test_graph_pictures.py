"""fn.graph_image: DOT text naming every node and edge; SVG and PNG through Graphviz."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import bpcompile as bp
from bpcompile import spec
from bpcompile.cli import main
from bpcompile.inspect.dot import GraphTooLargeError
from bpcompile.ir.traverse import toposort

ROOT = Path(__file__).resolve().parents[1]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz `dot` not installed (apt-get install graphviz)")


def _xor():
    return spec.load(str(ROOT / "examples" / "xor.toml")).compile("numpy")


@pytest.mark.parametrize("stage", ["forward", "adjoint", "final"])
def test_dot_names_every_node_and_edge(stage):
    fn = _xor()
    text = fn.graph_image(stage, "dot")
    st = fn.stages[-1] if stage == "final" else [s for s in fn.stages if s.name == stage][0]
    order = toposort(list(st.outputs))
    declared = set(re.findall(r"^\s*n(\d+) \[label=", text, re.M))
    assert declared == {str(n.serial) for n in order}
    edges = re.findall(r"^\s*n(\d+) -> n(\d+) \[label=\"([^\"]+)\"\]", text, re.M)
    want = sorted((str(i.serial), str(n.serial)) for n in order for i in n.inputs)
    assert sorted((a, b) for a, b, _ in edges) == want
    assert all(re.fullmatch(r"(f64|f32|i32|bool)\[[\d,]*\]", lab) for _, _, lab in edges)
    if stage == "final":
        assert "#ffd8b1" in text and "#cfe2ff" in text  # backward and forward colours
        assert "kernel dz2 = a2*err*(1 - a2)" in text and "saved for backward" in text
        assert "dz2 (δ2) = kernel" in text and "-> dW1" in text


def test_big_graphs_collapse_by_source_line_and_refuse_past_the_limit():
    fn = _xor()
    text = fn.graph_image("final", "dot", max_nodes=5)
    assert "18 nodes > max_nodes=5" in text
    assert text.count("shape=box3d") == 5 and "xor.toml:21 (backward)" in text
    opened = fn.graph_image("final", "dot", max_nodes=5, expand=["xor.toml:21"])
    assert opened.count("shape=box3d") == 3 and "dz1 (δ1) = kernel" in opened
    with pytest.raises(GraphTooLargeError, match="max_nodes=2"):
        fn.graph_image("final", "dot", max_nodes=2)
    with pytest.raises(ValueError, match="unknown stage"):
        fn.graph_image("nope", "dot")


@needs_dot
def test_svg_parses_and_png_is_not_blank(tmp_path):
    fn = _xor()
    svg = fn.graph_image("final", "svg")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    texts = [t.text for t in root.iter() if t.tag.endswith("text")]
    assert "dW1 = matmul" in texts and "kernel dz1 = a1*da1*(1 - a1)" in texts
    png = fn.graph_image("adjoint", "png", path=tmp_path / "g.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    mpimg = pytest.importorskip("matplotlib.image")
    img = mpimg.imread(png)
    assert img.shape[0] > 200 and img.shape[1] > 200
    ink = (img[..., :3].mean(axis=2) < 0.5).mean()
    assert 0.001 < ink < 0.5


@needs_dot
def test_cli_emits_dot_svg_png(tmp_path, capsys):
    xor = str(ROOT / "examples" / "xor.toml")
    assert main(["compile", xor, "--emit", "dot"]) == 0
    assert capsys.readouterr().out.startswith("digraph bpcompile {")
    assert main(["compile", xor, "--emit", "svg", "-o", str(tmp_path / "g.svg")]) == 0
    ET.parse(tmp_path / "g.svg")
    assert main(["compile", xor, "--emit", "png"]) == 2  # binary needs -o
    assert "give -o FILE.png" in capsys.readouterr().err
    assert main(["compile", xor, "--emit", "png", "-o", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_scan_and_functions_draw():
    x = bp.param("x", (3,))
    fn = bp.function({"y": bp.sigmoid(x) * 2.0})
    text = fn.graph_image("final", "dot")
    assert "-> y" in text and "kernel" in text


@needs_dot
def test_notebook_reprs():
    x = bp.param("x", (3, 2))
    h = bp.sigmoid(x @ bp.param("W", (2, 2))).named("h")
    svg = h._repr_svg_()
    root = ET.fromstring(svg)
    texts = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    assert "h = sigmoid" in texts and "W" in texts
    fn = bp.compile(bp.sum(h), [x])
    page = fn._repr_html_()
    assert page.count("<svg") >= 2 and "forward_backward" in page
    assert "<details><summary>LaTeX</summary>" in page
