"""Every registered op is exercised by the op table and lowered by every backend that exists
(docs/design.md principle 2: a test fails when an op has no lowering in some backend)."""

from __future__ import annotations

import importlib

import op_table as T
import pytest

import bpcompile as bp
from bpcompile.errors import BackendError
from bpcompile.ir.traverse import toposort
from bpcompile.ops import all_ops
from bpcompile.ops import elementwise as ew
from bpcompile.ops.sympy_funcs import Primitive

LEAF_KIND = "leaf"


def _table_ops() -> set[str]:
    """Ops that occur in the table's forward graphs, raw gradient graphs and compiled graphs."""
    seen: set[str] = set()
    for row in T.ROWS:
        P, I, f, loss, values = T.build(row, "float64")
        grads = bp.grad(loss, list(P.values()), stabilize=False)
        seen |= {n.op for n in toposort([loss] + grads)}
        seen |= {n.op for n in toposort(bp.compile(loss, wrt=list(P.values())).outputs)}
        seen |= set(row.ops)
    return seen


def test_every_registered_op_is_in_the_table():
    ops = {name for name, op in all_ops().items() if op.kind != LEAF_KIND}
    missing = sorted(ops - _table_ops())
    assert not missing, f"ops with no row in tests/op_table.py: {missing}"


def test_table_ops_are_registered():
    ops = set(all_ops())
    for row in T.ROWS:
        unknown = set(row.ops) - ops
        assert not unknown, f"row {row.name} names unregistered ops {sorted(unknown)}"


def _lowered(module_name: str) -> set[str] | None:
    try:
        mod = importlib.import_module(module_name)
    except ImportError:
        return None
    if hasattr(mod, "lowered_ops"):
        return set(mod.lowered_ops())
    if hasattr(mod, "LOWERINGS"):
        return set(mod.LOWERINGS)
    pytest.fail(f"{module_name} exposes neither lowered_ops() nor LOWERINGS")


@pytest.mark.parametrize("backend", ["numpy", "llvm", "jax"])
def test_every_op_has_a_lowering(backend):
    lowered = _lowered(f"bpcompile.backends.{backend}.lower")
    if lowered is None:
        pytest.skip(f"bpcompile.backends.{backend}.lower does not exist (yet)")
    leaves = {"input", "param", "const"}  # bound as arguments/literals by every backend
    missing = sorted(set(all_ops()) - leaves - lowered)
    assert not missing, f"{backend} backend has no lowering for: {missing}"


def test_numpy_backend_refuses_an_unknown_op_by_name():
    from bpcompile.backends.numpy import lower
    from bpcompile.errors import BackendError

    x = bp.param("x", (2,), "float64")
    n = bp.sum(x)
    saved = lower.LOWERINGS.pop("sum")
    try:
        with pytest.raises(BackendError, match="sum"):
            lower.lower(n, ["x"])
    finally:
        lower.LOWERINGS["sum"] = saved


class opaque(Primitive):
    """A primitive with no definition that no printer knows."""


@pytest.mark.parametrize("backend", ["numpy", "llvm", "jax"])
def test_an_elementwise_op_no_printer_can_print_has_no_lowering(backend):
    """An op whose SymPy form no backend can print (no definition, no printer entry) is missing
    by name from every backend's lowered ops, and lowering it names it."""
    mod = pytest.importorskip(f"bpcompile.backends.{backend}.lower")
    ew.define_unary("opaque_op", ew.DERIVE, opaque, "a test op with no lowering")
    try:
        assert "opaque_op" not in mod.lowered_ops()
        assert "exp" in mod.lowered_ops()  # derived from its form, as every float unary op
        if backend == "numpy":
            n = bp.unary("opaque_op", bp.param("x", (2,), "float64"))
            with pytest.raises(BackendError, match="opaque_op"):
                mod.lower(n, ["x"])
    finally:
        ew.remove("opaque_op")
    assert "opaque_op" not in all_ops()
