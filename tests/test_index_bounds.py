"""One index-bounds rule (`ops.index.input_ranges`): the call-time checks (Signature, the LLVM
program) and the data checks (spec [data], fit's training data) all read it."""

from __future__ import annotations

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.errors import SpecError
from bpcompile.ir.traverse import toposort
from bpcompile.ops.index import input_ranges
from bpcompile.train.data import DataError, check_data
from bpcompile.train.fit import _bounds


def _model():
    ids = bp.input("ids", (4,), "int32")
    labels = bp.input("labels", (4,), "int32")
    E = bp.param("E", (5, 3))
    W = bp.param("W", (3, 3))
    logits = bp.layers.embedding(ids, E) @ W
    # labels also pick rows of a 4-row table: the ranges intersect to [0, 3) / [-4, 3)
    T = bp.param("T", (4, 3))
    loss = bp.cross_entropy(logits, labels) + bp.sum(bp.take(T, labels, axis=0))
    return loss, [E, W, T]


def test_bounds_are_lo_hi_pairs_intersected_over_uses():
    loss, _ = _model()
    order = toposort([loss])
    assert input_ranges(order) == {"ids": (-5, 5), "labels": (0, 3)}
    assert input_ranges(order, wrap=False) == {"ids": (0, 5), "labels": (0, 3)}


def test_call_time_and_data_checks_share_the_rule():
    loss, wrt = _model()
    want = input_ranges(toposort([loss]))
    assert bp.compile(loss, wrt).signature.bounds == want
    pytest.importorskip("llvmlite")
    assert bp.compile(loss, wrt, backend="llvm").impl.program.bounds == want
    model = bp.spec.Model(loss, wrt)
    assert _bounds(model) == input_ranges(toposort([loss]), wrap=False)
    data = {"ids": np.array([0, 4, 1, 2, 3], np.int32)}
    assert check_data(data, [bp.input("ids", (4,), "int32")], _bounds(model)) == 5
    with pytest.raises(DataError, match=r"labels 'ids' must lie in \[0, 5\).*-1\.\.3"):
        check_data({"ids": data["ids"] - 1}, [bp.input("ids", (4,), "int32")], _bounds(model))


def test_spec_data_uses_the_graph_bounds():
    spec = """
[model]
name = "tiny"
[[inputs]]
name = "x"
shape = [2, 3]
[[inputs]]
name = "y"
shape = [2]
dtype = "int32"
[[layers]]
type = "dense"
units = 4
[loss]
type = "cross_entropy"
target = "y"
[data]
y = [1, 4]
"""
    from bpcompile.spec import from_dict
    from bpcompile.toml_read import toml_module

    doc = toml_module().loads(spec)
    with pytest.raises(SpecError, match=r"labels must lie in \[0, 4\), got values 1\.\.4"):
        from_dict(doc)
    doc["data"]["y"] = [1, 3]
    assert from_dict(doc).data["y"].tolist() == [1, 3]
