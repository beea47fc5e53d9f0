"""fn.source("latex"): the backward pass in the textbook's δ notation, derived from the graph."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest

from bpcompile import spec
from bpcompile.cli import main
from bpcompile.inspect.latex import equations

ROOT = Path(__file__).resolve().parents[1]

MLP3 = """
[model]
name = "mlp3"
dtype = "float64"
[[inputs]]
name = "x"
shape = [5, 3]
[[inputs]]
name = "y"
shape = [5, 2]
[[layers]]
type = "dense"
units = 4
activation = "sigmoid"
[[layers]]
type = "dense"
units = 4
activation = "sigmoid"
[[layers]]
type = "dense"
units = 2
activation = "sigmoid"
[loss]
type = "sum_squares"
target = "y"
"""


def _backward(fn):
    return [str(e) for e in equations(fn) if e.section == "backward"]


def test_xor_equations_are_the_textbooks():
    fn = spec.load(str(ROOT / "examples" / "xor.toml")).compile("numpy")
    assert _backward(fn) == [
        r"\delta^{2} = \left(a^{2} - y\right) \odot \sigma'\left(z^{2}\right)",
        r"\delta^{1} = \delta^{2} {W^{2}}^{\top} \odot \sigma'\left(z^{1}\right)",
        r"\frac{\partial L}{\partial W^{1}} = x^{\top} \delta^{1}",
        r"\frac{\partial L}{\partial b^{1}} = \sum_{0} \delta^{1}",
        r"\frac{\partial L}{\partial W^{2}} = {a^{1}}^{\top} \delta^{2}",
        r"\frac{\partial L}{\partial b^{2}} = \sum_{0} \delta^{2}",
    ]
    forward = [str(e) for e in equations(fn) if e.section == "forward"]
    assert forward[:4] == [r"z^{1} = x W^{1} + b^{1}", r"a^{1} = \sigma\left(z^{1}\right)",
                           r"z^{2} = a^{1} W^{2} + b^{2}", r"a^{2} = \sigma\left(z^{2}\right)"]


def test_three_layer_mlp_equations(tmp_path):
    path = tmp_path / "mlp3.toml"
    path.write_text(MLP3)
    fn = spec.load(str(path)).compile("numpy")
    back = _backward(fn)
    for line in [
        r"\delta^{3} = \left(a^{3} - y\right) \odot \sigma'\left(z^{3}\right)",
        r"\delta^{2} = \delta^{3} {W^{3}}^{\top} \odot \sigma'\left(z^{2}\right)",
        r"\delta^{1} = \delta^{2} {W^{2}}^{\top} \odot \sigma'\left(z^{1}\right)",
        r"\frac{\partial L}{\partial W^{3}} = {a^{2}}^{\top} \delta^{3}",
        r"\frac{\partial L}{\partial W^{2}} = {a^{1}}^{\top} \delta^{2}",
        r"\frac{\partial L}{\partial W^{1}} = x^{\top} \delta^{1}",
    ]:
        assert line in back, (line, back)
    # each delta is defined before it is read
    assert back.index(r"\delta^{3} = \left(a^{3} - y\right) \odot \sigma'\left(z^{3}\right)") \
        < back.index(r"\delta^{2} = \delta^{3} {W^{3}}^{\top} \odot \sigma'\left(z^{2}\right)")


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "examples" / "*.toml")))
                         + [str(ROOT / "examples" / "mish_model.py")])
def test_every_parameter_gradient_appears_once(path):
    model = spec.load(path)
    fn = model.compile("numpy")
    lhs = [e.lhs for e in equations(fn)]
    assert lhs.count("L") == 1
    for name in fn.grad_names:
        from bpcompile.inspect.latex import math_name, partial

        assert lhs.count(partial(math_name(name))) == 1, (name, lhs)
    text = fn.source("latex")
    assert text.count(r"\begin{aligned}") == text.count(r"\end{aligned}") >= 2


def test_cli_emits_latex_and_markdown(tmp_path, capsys):
    xor = str(ROOT / "examples" / "xor.toml")
    assert main(["compile", xor, "--emit", "latex"]) == 0
    out = capsys.readouterr().out
    assert r"\delta^{2} &= \left(a^{2} - y\right) \odot \sigma'\left(z^{2}\right)" in out
    md = tmp_path / "xor.md"
    assert main(["compile", xor, "--emit", "markdown", "-o", str(md)]) == 0
    text = md.read_text()
    assert "## Backward" in text and text.count("$$") == 4


def test_equations_png_is_not_blank(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg

    fn = spec.load(str(ROOT / "examples" / "xor.toml")).compile("numpy")
    png = fn.equations_image(tmp_path / "eq.png")
    img = mpimg.imread(png)
    assert img.shape[0] > 100 and img.shape[1] > 400
    ink = (img[..., :3].mean(axis=2) < 0.5).mean()
    assert 0.001 < ink < 0.5, ink
    assert np.isfinite(img).all()


def test_function_outputs_go_by_their_names():
    import bpcompile as bp

    x, W = bp.input("x", (2, 3)), bp.param("W", (3, 1))
    fn = bp.function({"y": bp.sigmoid(x @ W), "s": bp.sum(x)})
    eqs = [str(e) for e in equations(fn)]
    assert r"y = \sigma\left(x W\right)" in eqs and r"s = \sum x" in eqs
