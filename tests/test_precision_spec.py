"""Mixed precision in spec files: [model] precision / loss_scale reach bp.compile,
compile_train_step, fit and `bpcompile compile SPEC --precision`."""

from __future__ import annotations

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import cli
from bpcompile.errors import SpecError
from bpcompile.spec import load
from bpcompile.train import DynamicLossScale, StaticLossScale

SPEC = """
[model]
name = "tiny"
{extra}

[[inputs]]
name = "x"
shape = [8, 3]

[[inputs]]
name = "labels"
shape = [8]
dtype = "int32"

[[layers]]
type = "dense"
units = 16
activation = "tanh"

[[layers]]
type = "dense"
units = 3

[loss]
type = "cross_entropy"
target = "labels"
"""


def _spec(tmp_path, extra: str):
    p = tmp_path / "m.toml"
    p.write_text(SPEC.format(extra=extra))
    return p


def test_spec_precision_reaches_compile_and_an_argument_overrides_it(tmp_path):
    model = load(_spec(tmp_path, 'precision = "bfloat16"'))
    assert model.precision == "bfloat16" and model.loss_scale is None
    fn = model.compile()
    assert "bf16[" in fn.graph() and "precision.cast" in str(fn.stats())
    same = bp.compile(model.loss, model.wrt, precision="bfloat16")
    assert fn.source() == same.source()
    assert "bf16[" not in model.compile(precision="float32").graph()


@pytest.mark.parametrize("extra,kind,scale", [
    ('precision = "float16"\nloss_scale = "dynamic"', DynamicLossScale, 2.0 ** 15),
    ('precision = "float16"\nloss_scale = 1024', StaticLossScale, 1024.0),
])
def test_spec_loss_scale_reaches_the_train_step(tmp_path, extra, kind, scale):
    model = load(_spec(tmp_path, extra))
    st = bp.compile_train_step(model, optimizer=bp.optim.sgd(0.1))
    assert st.precision.compute == "float16"
    assert isinstance(st.loss_scaler, kind) and st.loss_scaler.scale == scale
    r = np.random.default_rng(0)
    loss = st(x=r.normal(size=(8, 3)).astype(np.float32),
              labels=r.integers(0, 3, 8).astype(np.int32))
    assert np.isfinite(loss) and st.count == 1
    # an explicit argument wins over the spec
    plain = bp.compile_train_step(model, optimizer=bp.optim.sgd(0.1), precision="float32",
                                  loss_scale=None)
    assert plain.precision.compute == "float32"


@pytest.mark.parametrize("extra,match", [
    ('precision = "float8"', "precision"),
    ('dtype = "float64"\nprecision = "bfloat16"', "master weights"),
    ("loss_scale = -2", "loss_scale"),
    ('loss_scale = "auto"', "dynamic"),
])
def test_bad_precision_keys_are_spec_errors_naming_the_key(tmp_path, extra, match):
    with pytest.raises(SpecError, match=match):
        load(_spec(tmp_path, extra))


def test_cli_compile_takes_precision_and_defaults_to_the_spec(tmp_path, capsys):
    p32 = _spec(tmp_path, "")
    assert cli.main(["compile", str(p32), "--emit", "adjoint", "--precision", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "bf16[" in out and "cast" in out
    p16 = tmp_path / "h.toml"
    p16.write_text(SPEC.format(extra='precision = "float16"'))
    assert cli.main(["compile", str(p16), "--emit", "adjoint"]) == 0
    assert "f16[" in capsys.readouterr().out
    assert cli.main(["compile", str(p16), "--emit", "adjoint", "--precision", "float32"]) == 0
    out = capsys.readouterr().out
    assert "f16[" not in out and "bf16[" not in out


def _loss_line(out: str) -> float:
    return float(next(ln for ln in out.splitlines() if ln.startswith("loss ")).split()[1])


def test_cli_check_and_run_honour_the_spec_precision_and_the_flag(tmp_path, capsys):
    p16 = tmp_path / "b.toml"
    p16.write_text(SPEC.format(extra='precision = "bfloat16"'))
    assert cli.main(["check", str(p16), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "bfloat16 mixed precision" in out and "jax rel 0.06," in out, out  # bf16's tolerance
    assert cli.main(["check", str(p16), "--seed", "1", "--precision", "float32"]) == 0
    out = capsys.readouterr().out
    assert "mixed" not in out and "jax rel 0.0002," in out, out
    # run: the spec's precision, overridden by --precision; bfloat16 rounding moves the loss
    assert cli.main(["run", str(p16), "--seed", "1"]) == 0
    out16 = capsys.readouterr().out
    assert "precision: bfloat16" in out16
    assert cli.main(["run", str(p16), "--seed", "1", "--precision", "float32"]) == 0
    out32 = capsys.readouterr().out
    assert "precision:" not in out32
    l16, l32 = _loss_line(out16), _loss_line(out32)
    assert l16 != l32 and abs(l16 - l32) <= 4 * 2.0 ** -8 * abs(l32), (l16, l32)


def test_check_under_a_policy_compares_with_jax_running_the_same_casts(tmp_path):
    model = load(_spec(tmp_path, ""))
    values = {**model.example_inputs(0), **model.init_params(0)}
    inputs = {k: values[k] for k in ("x", "labels")}
    rep = bp.check(model.loss, model.wrt, inputs=inputs, params=values, precision="float16",
                   fd=False)
    assert rep.ok and rep.precision == "float16" and rep.rtol == 1e-2, str(rep)
    assert all(r.rel_err_jax <= 1e-2 for r in rep.rows), str(rep)
    f32 = bp.check(model.loss, model.wrt, inputs=inputs, params=values, fd=False)
    assert f32.loss_ours != rep.loss_ours  # the float16 compute is really used
