"""fn.source() on NumPy and JAX is a complete module: written with fn.save_source, imported
in a fresh process where bpcompile cannot be imported, it computes what fn computes."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import spec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# Runs each written module with bpcompile made unimportable, on the saved arguments.
RUNNER = r"""
import importlib.util, json, sys
sys.modules["bpcompile"] = None  # `import bpcompile` now fails: the module must stand alone
import numpy as np
if sys.argv[1] == "jax":
    import jax
    jax.config.update("jax_enable_x64", True)
for case in json.loads(sys.argv[2]):
    spec = importlib.util.spec_from_file_location("m_" + case["name"], case["module"])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = np.load(case["args"])
    loss, grads = mod.forward_backward(*[args[f"arr_{i}"] for i in range(len(args.files))])
    np.savez(case["out"], *[np.asarray(v) for v in (loss,) + tuple(grads)])
print("ok")
"""


def _cases():
    import models

    out = {}
    for name, (loss, wrt, inputs, params, _) in models.build().items():
        out[f"model_{name}"] = (loss, wrt, {**inputs, **params})
    paths = sorted(glob.glob(str(ROOT / "examples" / "*.toml"))) + [
        str(ROOT / "examples" / "mish_model.py")]
    for path in paths:
        m = spec.load(path)
        out[Path(path).stem] = (m.loss, list(m.wrt), {**m.example_inputs(), **m.init_params()})
    return out


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_written_module_equals_compiled_function(backend, tmp_path):
    if backend == "jax":
        pytest.importorskip("jax")
        import jax

        jax.config.update("jax_enable_x64", True)
    cases, expected = [], {}
    for name, (loss, wrt, values) in _cases().items():
        fn = bp.compile(loss, wrt, backend=backend)
        path = fn.save_source(tmp_path / f"{name}_grad.py")
        text = path.read_text()
        assert "bpcompile" not in "".join(ln for ln in text.splitlines()
                                          if ln.startswith(("import", "from")))
        args = [np.asarray(values[n]) for n in fn.signature.names]
        np.savez(tmp_path / f"{name}_args.npz", *args)
        value, grads = fn(*args)
        expected[name] = [np.asarray(value)] + [np.asarray(grads[g]) for g in fn.grad_names]
        cases.append(dict(name=name, module=str(path), args=str(tmp_path / f"{name}_args.npz"),
                          out=str(tmp_path / f"{name}_out.npz")))
    r = subprocess.run([sys.executable, "-c", RUNNER, backend, json.dumps(cases)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
    for case in cases:
        got = np.load(case["out"])
        want = expected[case["name"]]
        assert len(got.files) == len(want), case["name"]
        for i, w in enumerate(want):
            g = got[f"arr_{i}"]
            assert g.shape == w.shape and g.dtype == w.dtype, (case["name"], i)
            # NumPy runs the same statements; jit may reassociate float32 sums (XLA fusion)
            tol = 1e-6 if backend == "numpy" or w.dtype == np.float64 else 1e-4
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol * 1e-1, err_msg=case["name"])


def test_large_constants_are_exact(tmp_path):
    """A constant too big to print as a literal is written as its bytes, bit for bit."""
    x = bp.param("x", (5, 7))
    c = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    fn = bp.compile(bp.sum(x * bp.const(c) * x), [x])
    text = fn.source()
    assert "base64" in text and "passed in at exec time" not in text
    ns: dict = {}
    exec(compile(text, "m.py", "exec"), ns)
    xv = np.random.default_rng(1).standard_normal((5, 7)).astype(np.float32)
    loss, (dx,) = ns["forward_backward"](xv)
    want_loss, want = fn(x=xv)
    np.testing.assert_array_equal(dx, want["x"])
    np.testing.assert_array_equal(loss, want_loss)


def test_function_stage_is_the_bare_function():
    x = bp.param("x", (3,))
    fn = bp.compile(bp.sum(bp.sigmoid(x)), [x])
    assert fn.source("function").lstrip().startswith("#")
    assert "def sigmoid" in fn.source() and "def sigmoid" not in fn.source("function")


def test_cli_emit_source_writes_module(tmp_path):
    from bpcompile.cli import main

    out = tmp_path / "xor_grad.py"
    assert main(["compile", str(ROOT / "examples" / "xor.toml"), "--emit", "source",
                 "-o", str(out)]) == 0
    ns: dict = {}
    exec(compile(out.read_text(), str(out), "exec"), ns)
    m = spec.load(str(ROOT / "examples" / "xor.toml"))
    values = {**m.example_inputs(), **m.init_params()}
    fn = m.compile("numpy")
    loss, grads = ns["forward_backward"](*[values[n] for n in fn.signature.names])
    np.testing.assert_allclose(loss, fn(**values)[0])
