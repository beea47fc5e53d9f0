"""A new float elementwise op takes three places (docs/architecture.md, "Adding an op"): its
SymPy class, its registry row and its op-table row. These tests add throwaway ops in exactly
those places at test time (no printer, backend, evaluator or api edit), run value and gradient
on every backend in float32 and float64 — as a primitive, inside a fused kernel and inside a
scan body — against jax.grad of the jax.numpy formula and float64 finite differences, and
unregister the ops afterwards."""

from __future__ import annotations

import re

import numpy as np
import op_table as T
import pytest
import sympy as sp

import bpcompile as bp
from bpcompile.ir.traverse import toposort
from bpcompile.ops import all_ops
from bpcompile.ops import elementwise as ew
from bpcompile.ops.scan import scan
from bpcompile.ops.sympy_funcs import Primitive

jax = pytest.importorskip("jax")
jnp = jax.numpy
BACKENDS = ["numpy", "llvm", "jax"]


# ---- place 1: the SymPy classes -------------------------------------------------------------
class softsign(Primitive):
    """x / (1 + |x|): no printer knows it; every backend prints its definition."""

    @classmethod
    def definition(cls, x):
        return x / (1 + sp.Abs(x))


class smoothmax(Primitive):
    """A binary one: (a + b + sqrt((a - b)**2 + 1)) / 2."""

    @classmethod
    def definition(cls, a, b):
        return (a + b + sp.sqrt((a - b) ** 2 + 1)) / 2


class hooked_square(Primitive):
    """x**2 with its own printing methods, as a hand-tuned lowering would have them."""

    @classmethod
    def definition(cls, x):
        return x**2

    def _bp_array(self, printer, args):
        return f"{printer.module('square')}({args[0]})"

    def _bp_llvm(self, printer, args):
        return printer.b.fmul(args[0], args[0], name="hooked_square")


# ---- place 2: the registry rows (what ops/elementwise.py's UNARY/BINARY rows hold) ----------
DEFINE = [
    (ew.define_unary, "softsign", ew.DERIVE, softsign, "x/(1+|x|)"),
    (ew.define_binary, "smoothmax", ew.DERIVE, smoothmax, "smooth maximum"),
    (ew.define_unary, "hooked_square", ew.DERIVE, hooked_square, "x**2, own printers"),
]


@pytest.fixture(scope="module", autouse=True)
def throwaway_ops():
    for define, *row in DEFINE:
        define(*row)
    yield
    for _, name, *_ in DEFINE:
        ew.remove(name)
    assert not {"softsign", "smoothmax", "hooked_square"} & set(all_ops())
    assert "softsign" not in ew.UNARY and "smoothmax" not in ew.BINARY


# ---- place 3: the op-table rows ---------------------------------------------------------------
def jsoftsign(x):
    return x / (1 + jnp.abs(x))


def _scan_f(P, I):
    def step(h, x):
        h2 = bp.unary("softsign", h @ P["W"] + x)
        return h2, bp.unary("softsign", h2 * 2.0) + x
    hT, ys = scan(step, P["h0"], P["xs"])
    return ys * hT


def _scan_jf(P, I):
    def step(h, x):
        h2 = jsoftsign(h @ P["W"] + x)
        return h2, jsoftsign(h2 * 2.0) + x
    hT, ys = jax.lax.scan(step, P["h0"], P["xs"])
    return ys * hT


ROWS = [
    # alone before a matmul it stays a primitive: its own lowering, and the derived VJP kernel
    T.Row("softsign_primitive", ("softsign",), {"x": (3, 4), "W": (4, 2)},
          lambda P, I: bp.unary("softsign", P["x"]) @ P["W"],
          lambda P, I: jsoftsign(P["x"]) @ P["W"], T.gens(x=T.normal(3, 4), W=T.normal(4, 2))),
    T.Row("softsign_fused", ("kernel",), {"x": (3, 4)},
          lambda P, I: bp.unary("softsign", P["x"] * 2.0 + 1.0) + bp.tanh(P["x"]),
          lambda P, I: jsoftsign(P["x"] * 2.0 + 1.0) + jnp.tanh(P["x"]),
          T.gens(x=T.away_from_zero(3, 4))),
    T.Row("softsign_in_scan", ("scan",), {"W": (3, 3), "h0": (3,), "xs": (5, 3)}, _scan_f,
          _scan_jf, T.gens(W=T.normal(3, 3), h0=T.normal(3), xs=T.normal(5, 3))),
    T.Row("smoothmax_primitive", ("smoothmax",), {"a": (3, 4), "b": (4,), "W": (4, 2)},
          lambda P, I: bp.binary("smoothmax", P["a"], P["b"]) @ P["W"],
          lambda P, I: ((P["a"] + P["b"] + jnp.sqrt((P["a"] - P["b"]) ** 2 + 1)) / 2) @ P["W"],
          T.gens(a=T.normal(3, 4), b=T.normal(4), W=T.normal(4, 2))),
    T.Row("hooked_square_primitive", ("hooked_square",), {"x": (3, 4), "W": (4, 2)},
          lambda P, I: bp.unary("hooked_square", P["x"]) @ P["W"],
          lambda P, I: jnp.square(P["x"]) @ P["W"], T.gens(x=T.normal(3, 4), W=T.normal(4, 2))),
    T.Row("hooked_square_fused", ("kernel",), {"x": (3, 4)},
          lambda P, I: bp.unary("hooked_square", P["x"] + 1.0) * 3.0,
          lambda P, I: jnp.square(P["x"] + 1.0) * 3.0, T.gens(x=T.normal(3, 4))),
]
RTOL = {"float64": 1e-10, "float32": 2e-5}


def _jax_value_and_grad(row, values, dtype):
    P = {k: jnp.asarray(values[k]) for k in row.params}
    Ij = {k: jnp.asarray(v) for k, v in values.items() if k not in row.params}
    v, g = jax.value_and_grad(T.jax_loss(row))(P, Ij)  # (x64 is on: conftest.py)
    return np.asarray(v), {k: np.asarray(x) for k, x in g.items()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_new_op_matches_jax_on_every_backend(row, backend, dtype):
    P, I, f, loss, values = T.build(row, dtype)
    fn = bp.compile(loss, wrt=list(P.values()), backend=backend)
    value, grads = fn(**values)
    ref_v, ref_g = _jax_value_and_grad(row, values, dtype)
    assert ref_v.dtype == np.dtype(dtype) and np.asarray(value).dtype == np.dtype(dtype)
    rtol = RTOL[dtype]
    np.testing.assert_allclose(np.asarray(value), ref_v, rtol=rtol, atol=rtol)
    for k in row.params:
        assert np.asarray(grads[k]).dtype == np.dtype(dtype), k
        np.testing.assert_allclose(np.asarray(grads[k]), ref_g[k], rtol=rtol, atol=rtol,
                                   err_msg=f"{row.name} d{k} ({backend}, {dtype})")


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_new_op_reaches_the_compiled_graph_where_the_row_says(row):
    """The primitive rows keep the op as a node, the fused rows carry it in a kernel body, the
    scan row in the loop body (so each lowering path above really ran)."""
    P, I, f, loss, values = T.build(row, "float64")
    fn = bp.compile(loss, wrt=list(P.values()))
    final = {n.op for n in toposort(fn.outputs)}
    assert set(row.ops) <= final, (row.name, sorted(final))
    op = row.name.split("_")[0] + ("_square" if row.name.startswith("hooked") else "")
    assert (op in final) == (row.ops == (op,)), (row.name, sorted(final))
    in_body = re.search(rf"expr=[^\n]*{op}\(", fn.graph())  # in a kernel body, or a scan's
    assert bool(in_body) == (row.ops != (op,)), fn.graph()


@pytest.mark.parametrize("row", [r for r in ROWS if r.smooth], ids=lambda r: r.name)
def test_new_op_gradient_matches_finite_differences(row):
    P, I, f, loss, values = T.build(row, "float64")
    fn = bp.compile(loss, wrt=list(P.values()))
    _, grads = fn(**values)
    d = {k: np.random.default_rng(3).standard_normal(s) for k, s in row.params.items()}
    h = 1e-6

    def at(s):
        return float(fn(**{k: v + s * d[k] if k in d else v for k, v in values.items()})[0])

    num = (at(h) - at(-h)) / (2 * h)
    ana = sum(float(np.sum(grads[k] * d[k])) for k in row.params)
    assert abs(num - ana) <= 1e-6 * max(1.0, abs(ana)), (num, ana)


def test_new_op_second_order():
    """The derived VJP is a kernel, differentiable again: d²/dx² softsign(x) summed."""
    x = bp.param("x", (5,), "float64")
    (g,) = bp.grad(bp.sum(bp.unary("softsign", x)), [x])
    fn = bp.compile(bp.sum(g), wrt=[x])
    xv = np.array([-2.0, -0.5, 0.3, 1.0, 4.0])
    _, gg = fn(x=xv)
    ref = jax.vmap(jax.grad(jax.grad(lambda t: t / (1 + jnp.abs(t)))))(xv)
    np.testing.assert_allclose(gg["x"], np.asarray(ref), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_new_op_folds_bit_for_bit_like_the_numpy_backend(dtype):
    from bpcompile.backends.numpy.codegen import evaluate as backend_evaluate
    from bpcompile.rewrite.evaluate import can_evaluate, evaluate

    c = bp.const(np.linspace(-3, 3, 7), dtype)
    for n in (bp.unary("softsign", c), bp.binary("smoothmax", c, bp.const(0.5, dtype)),
              bp.unary("hooked_square", c)):
        assert can_evaluate(n), n
        ours, (ref,) = evaluate(n), backend_evaluate([n], {})
        assert ours.dtype == ref.dtype == np.dtype(dtype)
        assert ours.tobytes() == ref.tobytes(), n.op


def test_printing_methods_of_the_class_are_used():
    """`_bp_array` / `_bp_llvm` win over the definition: np.square / jnp.square in the array
    source, the named fmul in the LLVM IR."""
    x, W = bp.param("x", (3, 4), "float32"), bp.param("W", (4, 2), "float32")
    loss = bp.sum(bp.unary("hooked_square", x) @ W)
    assert "np.square(x)" in bp.compile(loss, [x, W], backend="numpy").source()
    assert "jnp.square(x)" in bp.compile(loss, [x, W], backend="jax").source()
    ir_text = bp.compile(loss, [x, W], backend="llvm").source("llvm-unoptimized")
    assert "%\"hooked_square" in ir_text or "%hooked_square" in ir_text


def test_definition_prints_in_the_generated_source():
    x, W = bp.param("x", (3, 4), "float64"), bp.param("W", (4, 2), "float64")
    src = bp.compile(bp.sum(bp.unary("softsign", x) @ W), [x, W], backend="numpy").source()
    assert "softsign = (x/(np.abs(x) + 1.0))" in src, src


def test_unary_and_binary_name_the_op_they_do_not_know():
    x = bp.param("x", (2,), "float64")
    with pytest.raises(ValueError, match="'nope'.*softsign"):
        bp.unary("nope", x)
    with pytest.raises(ValueError, match="'exp'.*smoothmax"):
        bp.binary("exp", x, x)


def test_a_new_primitive_works_in_a_user_kernel():
    """bp.elementwise accepts the new class too: printed through its definition everywhere."""
    z = sp.Symbol("z")
    f = bp.elementwise(softsign(z) * z, z, name="softsign_z")
    x = bp.param("x", (4,), "float64")
    xv = np.array([-2.0, -0.3, 0.5, 3.0])
    ref = jax.grad(lambda t: jnp.sum(jsoftsign(t) * t))(xv)
    for backend in BACKENDS:
        v, g = bp.compile(bp.sum(f(x)), [x], backend=backend)(x=xv)
        np.testing.assert_allclose(float(v), float(np.sum(xv * xv / (1 + np.abs(xv)))),
                                   rtol=1e-12)
        np.testing.assert_allclose(np.asarray(g["x"]), np.asarray(ref), rtol=1e-12)


def test_bp_check_agrees_on_a_new_op():
    """bp.check's JAX oracle translates the op through the same derived jnp lowering."""
    row = ROWS[0]
    P, I, f, loss, values = T.build(row, "float64")
    report = bp.check(loss, list(P.values()), inputs={"u": values["u"]},
                      params={k: values[k] for k in P})
    assert report.ok and all(r.rel_err_jax < 1e-8 for r in report.rows), str(report)


def test_new_op_is_an_activation_by_name():
    x, W = bp.input("x", (2, 3), "float64"), bp.param("W", (3, 4), "float64")
    a = bp.dense(x, W, None, "softsign")
    assert a.op == "softsign"
    with pytest.raises(ValueError, match="unknown activation 'sum'.*softsign"):
        bp.dense(x, W, None, "sum")


def test_user_kernel_refuses_a_primitive_no_backend_can_print():
    class nodef(Primitive):  # no definition, no printing methods
        pass

    z = sp.Symbol("z")
    with pytest.raises(ValueError, match="nodef"):
        bp.elementwise(nodef(z) + z, z)
    assert bp.elementwise(hooked_square(z) + z, z)  # its own methods for both printers


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_new_op_forward_mode_needs_no_code(row):
    """bp.jvp and the batched forward Jacobian of a new op come from its SymPy form."""
    from bpcompile.backends.numpy.codegen import evaluate

    P, I, f, loss, values = T.build(row, "float64")
    r = np.random.default_rng(3)
    V = {k: r.standard_normal(p.shape) for k, p in P.items()}
    _, f_t = bp.jvp(f, list(P.values()), list(V.values()))
    J = bp.jacobian(f, list(P.values()), mode="fwd")
    out = evaluate([f_t] + list(J), values)
    Pj = {k: jnp.asarray(values[k]) for k in row.params}
    Ij = {k: jnp.asarray(v) for k, v in values.items() if k not in row.params}
    ref_t = jax.jvp(lambda p: row.jf(p, Ij), (Pj,), ({k: jnp.asarray(v) for k, v in V.items()},))
    np.testing.assert_allclose(out[0], np.asarray(ref_t[1]), rtol=1e-9, atol=1e-9)
    ref_j = jax.jacfwd(lambda p: row.jf(p, Ij))(Pj)
    for k, j in zip(row.params, out[1:]):
        np.testing.assert_allclose(j, np.asarray(ref_j[k]), rtol=1e-9, atol=1e-9)
