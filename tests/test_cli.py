"""The `bpcompile` command line: in-process through cli.main, plus one real subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bpcompile
from bpcompile import cli

ROOT = Path(__file__).resolve().parent.parent
XOR = str(ROOT / "examples" / "xor.toml")
SMALL = str(ROOT / "examples" / "mlp_small.toml")
MISH = str(ROOT / "examples" / "mish_model.py")


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_emit_source(capsys):
    code, out, err = run(capsys, "compile", XOR, "--emit", "source")
    assert code == 0, err
    assert "def forward_backward(x, y, W1, b1, W2, b2):" in out  # declaration order
    for name in ("dW1", "db1", "dW2", "db2", "dz1", "dz2"):
        assert f"    {name} = " in out, name
    assert "return loss, (dW1, db1, dW2, db2" in out
    code2, out2, _ = run(capsys, "compile", XOR)  # source is the default
    assert code2 == 0 and out2 == out


@pytest.mark.parametrize("emit,expect", [
    ("adjoint", ["lambda x:f64[4,2]", "dW1", "outputs: loss="]),
    ("graph", ["kernel", "dW1"]),
    ("stats", ["stage", "adjoint", "fuse", "codegen (numpy)"]),
])
def test_compile_other_emits(capsys, emit, expect):
    code, out, err = run(capsys, "compile", XOR, "--emit", emit)
    assert code == 0, err
    for e in expect:
        assert e in out, (e, out)


def test_adjoint_differs_from_final_graph(capsys):
    _, adjoint, _ = run(capsys, "compile", XOR, "--emit", "adjoint")
    _, final, _ = run(capsys, "compile", XOR, "--emit", "graph")
    assert "kernel" not in adjoint and "kernel" in final  # fusion happens after the adjoint


def test_dump_passes_prints_every_stage(capsys):
    code, out, err = run(capsys, "compile", XOR, "--dump-passes")
    assert code == 0, err
    fn = bpcompile.spec.load(XOR).compile()
    names = [s.name for s in fn.stages]
    assert names[:2] == ["forward", "adjoint"]
    positions = [out.index(f"==== {n} ====") for n in names]
    assert positions == sorted(positions)
    assert out.count("==== ") == len(names)


def test_compile_output_file(capsys, tmp_path):
    dest = tmp_path / "xor_grad.py"
    code, out, err = run(capsys, "compile", MISH, "-o", dest)
    assert code == 0 and out == ""
    text = dest.read_text()
    assert "def forward_backward" in text and "dW2" in text and "np.tanh" in text
    compile(text, str(dest), "exec")  # the written file is valid Python


@pytest.mark.parametrize("emit,backend", [("llvm", "llvm"), ("asm", "llvm"),
                                          ("jax", "jax"), ("stablehlo", "jax")])
def test_backend_specific_emit_needs_that_backend(capsys, emit, backend):
    code, out, err = run(capsys, "compile", XOR, "--emit", emit)
    assert code == 2 and out == ""
    assert f"--emit {emit} needs --backend {backend}" in err
    assert "Traceback" not in err


def test_check_passes_on_xor(capsys):
    code, out, err = run(capsys, "check", XOR)
    assert code == 0, out + err
    assert "PASS" in out and "W1" in out and "model xor" in out


def test_check_mismatch_exits_1(capsys):
    # float32 gradients cannot agree with JAX to a relative 1e-30: a real, reported mismatch
    code, out, err = run(capsys, "check", SMALL, "--rtol", "1e-30", "--seed", "1")
    assert code == 1, out + err
    assert "MISMATCH" in out and "FAIL" in out


def test_bad_spec_exits_2_with_message(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(XOR).read_text().replace("units = 2\n", ""))
    for cmd in ("compile", "check", "run"):
        code, out, err = run(capsys, cmd, bad)
        assert code == 2, (cmd, err)
        assert "bad.toml" in err and "missing key 'units'" in err
        assert "Traceback" not in err and out == ""


def test_usage_errors_exit_2(capsys):
    assert run(capsys, "frobnicate", XOR)[0] == 2
    assert run(capsys, "compile", XOR, "--emit", "pdf")[0] == 2
    code, _, err = run(capsys, "compile", XOR, "--backend", "cuda")
    assert code == 2 and "invalid choice" in err
    code, _, err = run(capsys, "compile", "model.json")
    assert code == 2 and "unknown model file type" in err
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "compile" in out and "export" in out


def test_run_prints_loss_and_gradient_norms(capsys):
    code, out, err = run(capsys, "run", XOR)
    assert code == 0, err
    assert "loss 0.6278" in out
    for name in ("dW1", "db1", "dW2", "db2"):
        assert name in out
    code, out, err = run(capsys, "run", XOR, "--steps", "400", "--lr", "2.0")
    assert code == 0, err
    losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("step")]
    assert len(losses) == 10 and losses[-1] < 0.5 * losses[0]  # gradient descent learns XOR


def test_export_calls_bp_export(capsys, tmp_path, monkeypatch):
    calls = []

    def fake_export(loss, wrt, out_dir, name=None):
        calls.append((loss, [w.attr("name") for w in wrt], out_dir, name))
        p = Path(out_dir) / f"lib{name}.so"
        p.write_text("")
        return {"library": p, "header": Path(out_dir) / f"{name}.h", "workspace_bytes": 64}

    monkeypatch.setattr(bpcompile, "export", fake_export, raising=False)
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "export", XOR, "-o", out_dir)
    assert code == 0, err
    assert calls[0][1:] == (["W1", "b1", "W2", "b2"], str(out_dir), "xor")
    assert f"wrote {out_dir}/libxor.so" in out and f"wrote {out_dir}/xor.h" in out
    assert "64 bytes" in out and "64\n" not in out  # no bare number: every line says what
    code, out, err = run(capsys, "export", XOR, "-o", out_dir, "--name", "xor_grad")
    assert code == 0 and calls[-1][-1] == "xor_grad"


def test_export_without_bp_export_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.delattr(bpcompile, "export", raising=False)
    code, out, err = run(capsys, "export", XOR, "-o", tmp_path)
    assert code == 2 and "bpcompile.export" in err and "Traceback" not in err


def test_internal_error_exits_3_with_traceback_only_with_debug(capsys, monkeypatch):
    def boom(path):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(cli, "_load", boom)
    code, _, err = run(capsys, "compile", XOR)
    assert code == 3 and "kaboom" in err and "internal error" in err and "--debug" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    for argv in (["--debug", "compile", XOR], ["compile", XOR, "--debug"]):
        code, _, err = run(capsys, *argv)
        assert code == 3 and "Traceback" in err and "kaboom" in err, argv


def test_console_script_subprocess(tmp_path):
    """The real entry points: `python -m bpcompile` and the installed `bpcompile` script."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    cmds = [[sys.executable, "-m", "bpcompile"]]
    script = shutil.which("bpcompile")
    if script:
        cmds.append([script])
    for cmd in cmds:
        ok = subprocess.run(cmd + ["compile", XOR, "--emit", "source"], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=120)
        assert ok.returncode == 0, ok.stderr
        assert "def forward_backward" in ok.stdout and "dW1" in ok.stdout
    bad = subprocess.run(cmds[0] + ["compile", XOR, "--emit", "llvm"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "needs --backend llvm" in bad.stderr
    assert "Traceback" not in bad.stderr
