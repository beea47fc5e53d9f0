"""bpcompile report / fn.report: one self-contained HTML page, opened in headless Chromium."""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import spec
from bpcompile.cli import main
from bpcompile.inspect.report import bytes_live

ROOT = Path(__file__).resolve().parents[1]
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


def _no_network(text: str) -> None:
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", text), "external ref"
    assert "<script" not in text


def test_report_of_a_python_model(tmp_path):
    x, y = bp.input("x", (6, 3)), bp.input("y", (6, 1))
    W1, W2 = bp.param("W1", (3, 4)), bp.param("W2", (4, 1))
    h = bp.tanh(x @ W1).named("h1")
    loss = bp.mean((h @ W2 - y) ** 2)
    fn = bp.compile(loss, [W1, W2])
    path = fn.report(tmp_path / "r.html", backends=("numpy", "jax"))
    text = path.read_text()
    _no_network(text)
    for anchor in ("norms", "check", "equations", "graphs", "code", "passes", "memory"):
        assert f'id="{anchor}"' in text
    assert "PASS" in text and "W1" in text and "forward_backward" in text
    assert text.count("<svg") >= 3  # norms, equations, memory (+ graphs with Graphviz)
    assert "stage" in text and "rule hits per stage" in text  # fn.stats()


def test_bytes_live_is_the_compiled_functions_timeline():
    x = bp.param("x", (10,))  # float32: 40 bytes per value
    a = bp.exp(x)
    b = bp.sin(a)
    loss = bp.sum(a * b)
    fn = bp.compile(loss, [x], backend="numpy")
    live, labels, n_fwd = bytes_live(fn)
    rows = fn.memory(timeline=True)["timeline"]
    assert live == [r["live_bytes"] for r in rows] and len(labels) == len(rows)
    # forward: exp, sin, mul, sum; a value lives until its last reader
    assert n_fwd == 4 and live[:2] == [40, 80] and max(live) >= 120


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "examples" / "*.toml")))
                         + [str(ROOT / "examples" / "mish_model.py")])
def test_every_example_produces_a_report(path, tmp_path):
    model = spec.load(path)
    fn = model.compile("numpy")
    values = {**model.example_inputs(), **model.init_params()}
    # the check itself is `bpcompile check`'s (tested there and above); FD is slow on mnist
    out = fn.report(tmp_path / "r.html", values, backends=("numpy",), check_gradients=False)
    text = out.read_text()
    _no_network(text)
    assert "skipped (check_gradients=False)" in text and "δ" in text


@pytest.mark.skipif(BROWSER is None, reason="no Chromium to open the report in "
                    "(apt-get install chromium; .ci/run installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` not installed: the report would have no graph pictures")
    html = tmp_path / "xor.html"
    assert main(["report", str(ROOT / "examples" / "xor.toml"), "-o", str(html)]) == 0
    assert main(["report", str(ROOT / "examples" / "xor.toml"), "-o", str(tmp_path / "n.html"),
                 "--no-check"]) == 0
    shot = tmp_path / "shot.png"
    r = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1400,2400", html.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.exists(), r.stderr[-2000:]
    assert "CONSOLE" not in r.stderr and "Uncaught" not in r.stderr, r.stderr[-2000:]
    mpimg = pytest.importorskip("matplotlib.image")
    img = (mpimg.imread(shot)[..., :3] * 255).round().astype(int)
    assert img.shape[:2] == (2400, 1400)
    assert (img.std(axis=(0, 1)) > 10).all()  # not one colour
    # the graph picture is drawn: pixels of the forward-node fill (#cfe2ff)
    fwd = np.all(np.abs(img - np.array([0xCF, 0xE2, 0xFF])) <= 2, axis=-1).sum()
    assert fwd > 500, fwd


def test_float64_model_shows_its_jax_code(tmp_path):
    pytest.importorskip("jax")
    model = spec.load(str(ROOT / "examples" / "xor.toml"))  # float64: needs JAX's x64 mode
    fn = model.compile("numpy")
    values = {**model.example_inputs(), **model.init_params()}
    text = fn.report(tmp_path / "r.html", values, backends=("numpy", "jax"),
                     check_gradients=False).read_text()
    assert "unavailable" not in text and "jnp." in text and "import jax" in text
