"""The [[layers]] types for conv / pooling / recurrent / attention / norms / residual specs,
and the example specs that use them (checked against JAX)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import spec

pytest.importorskip("jax")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", ["lenet_digits", "char_lstm", "transformer_block"])
def test_example_specs_match_jax(name):
    model = spec.load(EXAMPLES / f"{name}.toml")
    report = bp.check(model.loss, model.wrt, model.example_inputs(), model.init_params(),
                      fd=False)
    assert report.ok, str(report)
    assert report.rows and all(r.rel_err_jax is not None for r in report.rows)


def _doc(layers, inputs=None, loss=None):
    return {"inputs": inputs or [{"name": "x", "shape": [2, 3, 6, 6]},
                                 {"name": "y", "shape": [2], "dtype": "int32"}],
            "layers": layers, "loss": loss or {"type": "cross_entropy", "target": "y"}}


def test_conv_pool_stack_shapes_and_params():
    m = spec.from_dict(_doc([
        {"type": "conv2d", "filters": 4, "kernel": [3, 3], "padding": "same", "stride": 1,
         "activation": "relu"},
        {"type": "avg_pool2d", "window": 2},
        {"type": "conv2d", "filters": 4, "kernel": 1, "groups": 2, "bias": False},
        {"type": "batch_norm"},
        {"type": "global_avg_pool"},
        {"type": "dense", "units": 5}]))
    shapes = {p.attr("name"): p.shape for p in m.wrt}
    assert shapes["W1"] == (4, 3, 3, 3) and shapes["W3"] == (4, 2, 1, 1) and "b3" not in shapes
    assert shapes["gamma4"] == (4,) and m.init_params()["gamma4"].tolist() == [1.0] * 4
    v, g = m.compile()(**m.example_inputs(), **m.init_params())
    assert np.isfinite(v) and all(np.all(np.isfinite(a)) for a in g.values())


def test_recurrent_and_attention_layers_build():
    doc = {"inputs": [{"name": "x", "shape": [5, 2, 3]}, {"name": "y", "shape": [2, 4]}],
           "layers": [{"type": "gru", "units": 4, "checkpoint": 2},
                      {"type": "rnn", "units": 4, "truncate": 2, "return": "last"}],
           "loss": {"type": "mse", "target": "y"}}
    m = spec.from_dict(doc)
    report = bp.check(m.loss, m.wrt, m.example_inputs(), m.init_params(), fd=False)
    assert report.ok, str(report)


def test_spec_errors_name_the_layer_and_key():
    with pytest.raises(bp.SpecError, match=r"conv2d.*missing key 'filters'"):
        spec.from_dict(_doc([{"type": "conv2d", "filter": 4}]))
    with pytest.raises(bp.SpecError, match=r"conv2d.*unknown key 'kernal'.*did you mean"):
        spec.from_dict(_doc([{"type": "conv2d", "filters": 4, "kernal": 3}]))
    with pytest.raises(bp.SpecError, match=r"'padding'"):
        spec.from_dict(_doc([{"type": "conv2d", "filters": 4, "padding": "full"}]))
    with pytest.raises(bp.SpecError, match=r"residual.*shape"):
        spec.from_dict(_doc([{"type": "conv2d", "filters": 4}, {"type": "residual", "skip": "x"}]))
    with pytest.raises(bp.SpecError, match=r"lstm.*3-d input"):
        spec.from_dict(_doc([{"type": "lstm", "units": 3}]))
