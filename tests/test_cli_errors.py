"""User mistakes at the command line and in specs: exit 2 and one line naming the file and the
fix, exit 1 for failed checks, tracebacks only with --debug (docs/reliability.md, "Exit codes
and user errors"); plus the newcomer items of issue #13 (one-class cross-entropy, unknown
source stages, as_jax_function advice, BCE example targets, training logs, docs)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import cli, nn, spec
from bpcompile.errors import ArgumentError, DTypeError, ShapeError, SpecError

ROOT = Path(__file__).resolve().parent.parent
XOR = ROOT / "examples" / "xor.toml"


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *needles):
    """Exit 2, exactly one line on stderr, no traceback, and every needle in it."""
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


def xor_variant(tmp_path, old, new, name="v.toml"):
    text = XOR.read_text()
    assert old in text
    p = tmp_path / name
    p.write_text(text.replace(old, new))
    return p


# ---- exit codes and one-line messages --------------------------------------------------------
def test_export_bad_name_is_a_user_error(capsys, tmp_path):
    code, _, err = run(capsys, "export", XOR, "-o", tmp_path / "out", "--name", "bad-name")
    assert_user_error(code, err, "--name 'bad-name'", "C identifier", "try --name bad_name")


def test_export_into_an_existing_file_is_a_user_error(capsys, tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me")
    code, _, err = run(capsys, "export", XOR, "-o", f)
    assert_user_error(code, err, str(f), "not a directory")
    assert f.read_text() == "keep me"


def test_export_default_name_is_made_c_safe(capsys, tmp_path, monkeypatch):
    seen = []

    def fake_export(loss, wrt, out_dir, name=None):
        seen.append(name)
        return {"library": f"{out_dir}/lib{name}.so", "header": f"{out_dir}/{name}.h"}

    monkeypatch.setattr(bp, "export", fake_export)
    src = tmp_path / "my-model.toml"
    src.write_text(XOR.read_text().replace('name = "xor"\n', ""))
    code, out, err = run(capsys, "export", src, "-o", tmp_path / "o")
    assert code == 0, err
    assert seen == ["my_model"] and "libmy_model.so" in out


def test_non_utf8_spec_names_file_and_line(capsys, tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes(XOR.read_bytes().replace(b'name = "xor"', b'name = "x\xf6r"'))
    code, _, err = run(capsys, "check", p)
    assert_user_error(code, err, f"{p}:9:", "not UTF-8", "0xf6")
    with pytest.raises(SpecError, match="UTF-8"):
        spec.load(p)


def test_mistyped_flag_suggests_the_close_one(capsys):
    code, _, err = run(capsys, "check", XOR, "--tol", "1e-3")
    assert code == 2 and "did you mean --rtol?" in err and "bpcompile check" in err
    code, _, err = run(capsys, "run", XOR, "--stpes", "3")
    assert code == 2 and "did you mean --steps?" in err


@pytest.mark.parametrize("argv", [
    ["run", XOR, "--steps", "-5"],
    ["run", XOR, "--steps", "0"],
    ["run", XOR, "--steps", "2", "--lr", "-1"],
    ["check", XOR, "--rtol", "nan"],
    ["run", XOR, "--seed", "-1"],
    ["train", XOR, "--epochs", "0"],
    ["train", XOR, "--batch-size", "-2"],
])
def test_non_positive_counts_are_refused(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and "error: argument" in err and out == "", err


def test_model_that_exits_zero_does_not_pass_check(capsys, tmp_path):
    at_import = tmp_path / "quits.py"
    at_import.write_text("import sys\nsys.exit(0)\n")
    code, out, err = run(capsys, "check", at_import)
    assert_user_error(code, err, f"{at_import}:2:", "SystemExit(0)")
    assert "PASS" not in out
    in_build = tmp_path / "quits_in_build.py"
    in_build.write_text("def build():\n    raise SystemExit(0)\n")
    code, out, err = run(capsys, "check", in_build)
    assert_user_error(code, err, f"{in_build}:2:", "build()")


@pytest.mark.parametrize("value", ["nan", "inf", "-1.0"])
def test_init_scale_must_be_finite_and_non_negative(capsys, tmp_path, value):
    p = xor_variant(tmp_path, "scale = 1.0", f"scale = {value}")
    code, _, err = run(capsys, "run", p)
    assert_user_error(code, err, f"{p}:35:", "[init]", "'scale'", "finite number >= 0")
    with pytest.raises(SpecError):
        spec.Init("normal", float(value))


def test_layer_scale_is_checked_too(tmp_path):
    p = xor_variant(tmp_path, 'units = 2\nactivation = "sigmoid"',
                    'units = 2\nactivation = "sigmoid"\nscale = nan')
    with pytest.raises(SpecError, match=r"v\.toml:\d+: \[\[layers\]\] #1.*finite"):
        spec.load(p)


def test_memory_error_is_a_user_error(capsys, monkeypatch):
    def huge(path):
        raise MemoryError()

    monkeypatch.setattr(cli, "_load", huge)
    code, _, err = run(capsys, "run", XOR)
    assert_user_error(code, err, "out of memory")


def test_oserror_names_the_file(capsys, tmp_path):
    missing = tmp_path / "nope" / "out.txt"
    code, _, err = run(capsys, "compile", XOR, "-o", missing)
    assert_user_error(code, err, str(missing))


def test_train_module_entry_goes_through_the_cli(capsys):
    from bpcompile.train import cli as train_cli

    assert train_cli.main([str(XOR), "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err


# ---- deep graphs: no recursion limit ---------------------------------------------------------
def test_3000_tanh_chain_compiles_and_is_right():
    x = bp.input("x", (3,), "float64")
    p = bp.param("p", (3,), "float64")
    h = x * p
    for _ in range(3000):
        h = bp.tanh(h)
    fn = bp.compile(bp.sum(h), [p], backend="numpy")
    X, P = np.array([0.5, -1.0, 2.0]), np.array([1.5, 0.3, -0.7])
    v, g = fn(x=X, p=P)
    ref, d = X * P, np.ones(3)
    for _ in range(3000):
        ref = np.tanh(ref)
        d = d * (1 - ref**2)
    np.testing.assert_allclose(v, ref.sum(), rtol=1e-12)
    np.testing.assert_allclose(g["p"], d * X, rtol=1e-9)
    from bpcompile.rewrite.fuse import MAX_BODY_DEPTH

    kernels = [s for s in fn.graph().splitlines() if "= kernel" in s]
    assert len(kernels) > 3000 // MAX_BODY_DEPTH  # split into bounded kernels
    assert MAX_BODY_DEPTH < sys.getrecursionlimit() // 10


def _deep_spec(tmp_path, depth=3000):
    layers = '[[layers]]\ntype = "dense"\nunits = 2\nactivation = "tanh"\n' * depth
    p = tmp_path / "deep.toml"
    p.write_text('[model]\ndtype = "float64"\n[[inputs]]\nname = "x"\nshape = [2, 2]\n'
                 '[[inputs]]\nname = "y"\nshape = [2, 2]\n' + layers + '[loss]\ntype = "mse"\n')
    return p


def test_3000_dense_layers_spec_runs(capsys, tmp_path):
    code, out, err = run(capsys, "run", _deep_spec(tmp_path))
    assert code == 0, err
    assert "db3000" in out and "nan" not in out


def test_300_dense_layers_run_on_llvm(capsys, tmp_path):
    """Split step functions take only the buffers they touch and identical layers share one
    kernel (issue #14), so IR grows with the layers, not layers x arguments: a deep spec that
    once ran LLVM out of memory compiles and runs."""
    code, out, err = run(capsys, "run", _deep_spec(tmp_path, 300), "-b", "llvm")
    assert code == 0, err
    assert "db300" in out and "nan" not in out


# ---- cross-entropy on one unit -----------------------------------------------------------------
def test_cross_entropy_on_one_unit_names_the_fix(capsys, tmp_path):
    p = xor_variant(tmp_path, 'type = "sum_squares"', 'type = "cross_entropy"')
    code, out, err = run(capsys, "check", p)
    assert_user_error(code, err, f"{p}:31:", "one class", "binary_cross_entropy_with_logits")
    assert "PASS" not in out
    z = bp.input("z", (4, 1), "float64")
    with pytest.raises(ShapeError, match="binary_cross_entropy_with_logits"):
        nn.cross_entropy(z, bp.input("t", (4, 1), "float64"))


def test_float_class_indices_are_refused(tmp_path):
    logits = bp.input("z", (4, 3), "float64")
    with pytest.raises(DTypeError, match="int32"):
        nn.cross_entropy(logits, bp.input("t", (4,), "float64"))
    text = (ROOT / "examples" / "mnist_mlp.toml").read_text()
    assert 'dtype = "int32"' in text
    p = tmp_path / "floatlabels.toml"
    p.write_text(text.replace('dtype = "int32"', 'dtype = "float32"', 1))
    with pytest.raises(SpecError, match="class indices.*int32"):
        spec.load(p)


# ---- source stages -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "llvm", "jax"])
def test_unknown_source_stage_raises_listing_valid_ones(backend):
    fn = spec.load(XOR).compile(backend)
    valid = {"numpy": "'numpy'", "llvm": "'asm'", "jax": "'stablehlo'"}[backend]
    bad = ["bogus"] + (["asm"] if backend == "numpy" else [])
    for stage in bad:
        with pytest.raises(ArgumentError, match=re.escape(valid)):
            fn.source(stage)
    assert fn.source()  # the default still works


# ---- as_jax_function advice, example targets -----------------------------------------------------
def test_as_jax_function_advice_for_an_input():
    jax = pytest.importorskip("jax")
    x = bp.input("x", (3,), "float32")
    w = bp.param("w", (3,), "float32")
    f = bp.compile(bp.sum(x * w), [w], backend="jax").as_jax_function()
    W, X = np.ones(3, np.float32), np.arange(3, dtype=np.float32)
    with pytest.raises(bp.errors.GradientError) as e:
        jax.grad(lambda X: f({"w": W}, x=X))(X)
    msg = str(e.value)
    assert "bp.input" in msg and "stop_gradient" in msg and "list them in wrt" in msg
    assert "add the params" not in msg  # x is an input, not a param


def test_bce_example_targets_lie_in_unit_interval(tmp_path):
    p = tmp_path / "bce.py"
    p.write_text(
        "import bpcompile as bp\n"
        "def build():\n"
        "    x = bp.input('x', (256, 3), 'float64')\n"
        "    t = bp.input('t', (256, 1), 'float64')\n"
        "    W = bp.param('W', (3, 1), 'float64')\n"
        "    return {'loss': bp.binary_cross_entropy_with_logits(x @ W, t), 'wrt': [W]}\n")
    t = spec.load(p).example_inputs()["t"]
    assert t.min() >= 0 and t.max() < 1 and t.std() > 0.1


# ---- training logs ------------------------------------------------------------------------
def _tiny_fit(epochs, monkeypatch=None, tty=False):
    import importlib

    fit_mod = importlib.import_module("bpcompile.train.fit")  # the package re-exports fit()
    if monkeypatch is not None:
        monkeypatch.setattr(fit_mod, "_isatty", lambda s: tty)
    out = io.StringIO()
    data = spec.load(XOR).data
    fit_mod.fit(str(XOR), {"x": data["x"], "y": data["y"]}, epochs=epochs, progress=True,
                out=out, diagnostics=False)
    return out.getvalue()


def test_piped_training_log_is_short_and_has_no_bar_fragments(monkeypatch):
    text = _tiny_fit(300, monkeypatch, tty=False)
    lines = text.splitlines()
    assert 3 <= len(lines) <= 22, text
    assert "\r" not in text and lines[0].startswith("epoch 1/300") and "epoch 300/300" in text


def test_terminal_training_shows_one_bar_not_epoch_lines(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    text = _tiny_fit(50, monkeypatch, tty=True)
    assert "epoch 1/50" not in text  # the bar (on stderr) replaces the lines
    err = capsys.readouterr().err
    assert "training" in err and err.count("epoch 1/") == 0


# ---- docs cite only what a clone has --------------------------------------------------------
def test_docs_cite_no_files_outside_the_repository():
    files = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("benchmarks/*"),
             *ROOT.glob("examples/*"), *ROOT.glob("bpcompile/**/*.py")]
    for f in files:
        text = f.read_text(errors="replace")
        assert "../shared/" not in text and "/work/shared" not in text, f
    for cited in ("benchmarks/BENCHMARKS.md", "benchmarks/scorecard.py",
                  "benchmarks/bench_models_jax.py", "docs/design.md"):
        assert (ROOT / cited).is_file(), cited


def test_readme_lists_every_subcommand_and_key_flags():
    readme = (ROOT / "README.md").read_text()
    for command in cli.COMMANDS:
        assert f"bpcompile {command} " in readme, command
    for flag in ("--dump-passes", "-o ", "--debug", "minutes"):
        assert flag in readme, flag


def test_scorecard_help_runs_from_the_root():
    r = subprocess.run([sys.executable, "benchmarks/scorecard.py", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--backends" in r.stdout, r.stderr
