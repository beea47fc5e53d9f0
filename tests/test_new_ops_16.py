"""Issue 16 item 5, what the classic AD benchmarks need: gradients w.r.t. inputs, min/argmin,
scatter-add, logical ops, and constant folding of iota subgraphs. Each against JAX on every
backend (the op-table rows in tests/op_table.py cover the op VJPs in float32 and float64)."""

from __future__ import annotations

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.errors import DTypeError, GradientError, IndexRangeError, ShapeError
from bpcompile.ir.traverse import toposort

jax = pytest.importorskip("jax")
jnp = jax.numpy
jax.config.update("jax_enable_x64", True)

BACKENDS = ["numpy", "llvm", "jax"]


def _np(d):
    return {k: np.asarray(v) for k, v in d.items()}


# ---- (a) differentiation with respect to inputs ----------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_wrt_input_and_param_matches_jax(backend):
    x = bp.input("x", (4, 3), "float64")
    w = bp.param("w", (3, 2), "float64")
    loss = bp.sum(bp.tanh(x @ w) ** 2)
    r = np.random.default_rng(0)
    vals = {"x": r.standard_normal((4, 3)), "w": r.standard_normal((3, 2))}
    fn = bp.compile(loss, wrt=[x, w], backend=backend)
    value, grads = fn(**vals)
    ref_v, (gx, gw) = jax.value_and_grad(
        lambda x, w: jnp.sum(jnp.tanh(x @ w) ** 2), argnums=(0, 1))(vals["x"], vals["w"])
    np.testing.assert_allclose(value, ref_v, rtol=1e-12)
    np.testing.assert_allclose(_np(grads)["x"], gx, rtol=1e-12)
    np.testing.assert_allclose(_np(grads)["w"], gw, rtol=1e-12)


def test_saddle_point_grad_wrt_each_players_input():
    """min_x max_y of f(x, y) = x*y + x**2/2 - y**2/2: each player's gradient w.r.t. its own
    variable, both inputs, in one compiled function; simultaneous gradient steps converge."""
    x, y = bp.input("x", (), "float64"), bp.input("y", (), "float64")
    f = x * y + x * x / 2 - y * y / 2
    dx, dy = bp.grad(f, wrt=[x]), bp.grad(-f, wrt=y)
    step = bp.function({"x_next": x - 0.1 * dx[0], "y_next": y - 0.1 * dy}, backend="llvm")
    xv, yv = np.float64(1.0), np.float64(-1.0)
    for _ in range(300):
        out = step(x=xv, y=yv)
        xv, yv = out["x_next"], out["y_next"]
    assert abs(xv) < 1e-6 and abs(yv) < 1e-6


def test_wrt_refuses_int_inputs_and_intermediates():
    x = bp.input("x", (3,), "float32")
    i = bp.input("i", (3,), "int32")
    loss = bp.sum(x * i.astype("float32"))
    with pytest.raises(GradientError, match=r"'i' is int32\[3\]"):
        bp.grad(loss, wrt=[i])
    with pytest.raises(GradientError, match="a mul node"):
        bp.grad(loss, wrt=[x * 2.0])


# ---- (b) min, argmax, argmin ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_min_argmin_argmax_values_int_and_nan(backend):
    xf = bp.input("xf", (3, 4), "float64")
    xi = bp.input("xi", (3, 4), "int32")
    outs = {
        "min_i": bp.min(xi, axis=1), "min_f": xf.min(axis=0, keepdims=True),
        "argmin_i": bp.argmin(xi, axis=1), "argmax_f": bp.argmax(xf, axis=1),
        "argmax_all": bp.argmax(xf), "argmin_keep": bp.argmin(xf, axis=0, keepdims=True),
    }
    fn = bp.function(outs, backend=backend)
    vf = np.array([[1.0, 3.0, 3.0, -1.0], [2.0, np.nan, 0.5, np.nan], [0.1, -0.4, 0.7, -0.4]])
    vi = np.array([[5, -2**31, 7, -2**31], [1, 1, 1, 1], [2**31 - 1, 0, -3, 9]], np.int32)
    got = _np(fn(xf=vf, xi=vi))
    want = {
        "min_i": jnp.min(vi, axis=1), "min_f": jnp.min(vf, axis=0, keepdims=True),
        "argmin_i": jnp.argmin(vi, axis=1), "argmax_f": jnp.argmax(vf, axis=1),
        "argmax_all": jnp.argmax(vf), "argmin_keep": jnp.argmin(vf, axis=0, keepdims=True),
    }
    for k, v in want.items():  # indices are int32 (JAX's are int64 under x64)
        assert got[k].dtype == (np.int32 if "arg" in k or "_i" in k else np.float64), k
        np.testing.assert_array_equal(got[k], np.asarray(v), err_msg=k)


def test_min_and_argmax_errors_name_the_op():
    x = bp.input("x", (3, 0), "float32")
    with pytest.raises(ShapeError, match="min: reduction over an empty axis"):
        bp.min(x, axis=1)
    with pytest.raises(ShapeError, match="argmax: axis 2 out of range"):
        bp.argmax(bp.input("y", (3, 4)), axis=2)


# ---- (c) scatter-add ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_scatter_add_duplicates_scalar_index_and_grads(backend):
    x = bp.param("x", (4, 2), "float64")
    v = bp.param("v", (5, 2), "float64")
    idx = bp.input("idx", (5,), "int32")
    y = x.at[idx].add(v * v) + x.at[2].add(1.5)
    loss = bp.sum(bp.sin(y))
    vals = {"x": np.arange(8.0).reshape(4, 2) / 7, "v": np.linspace(-1, 1, 10).reshape(5, 2),
            "idx": np.array([1, 1, -1, 0, 1], np.int32)}
    value, grads = bp.compile(loss, wrt=[x, v], backend=backend)(**vals)

    def jloss(x, v):
        return jnp.sum(jnp.sin(x.at[vals["idx"]].add(v * v) + x.at[2].add(1.5)))

    ref_v, (gx, gv) = jax.value_and_grad(jloss, argnums=(0, 1))(vals["x"], vals["v"])
    np.testing.assert_allclose(value, ref_v, rtol=1e-12)
    np.testing.assert_allclose(_np(grads)["x"], gx, rtol=1e-12)
    np.testing.assert_allclose(_np(grads)["v"], gv, rtol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_scatter_add_out_of_range_index_is_an_error(backend):
    x = bp.param("x", (4,), "float32")
    idx = bp.input("idx", (2,), "int32")
    fn = bp.function({"y": bp.scatter_add(x, idx, 1.0)}, backend=backend)
    with pytest.raises(Exception, match=r"idx|\[-4, 4\)"):
        fn(x=np.zeros(4, np.float32), idx=np.array([0, 4], np.int32))
    computed = bp.scatter_add(x, (idx * 3), 1.0)  # an index computed in the graph
    fn2 = bp.function({"y": computed}, backend=backend)
    with pytest.raises(IndexRangeError, match=r"scatter_add \(axis 0 of size 4\)"):
        fn2(x=np.zeros(4, np.float32), idx=np.array([0, 2], np.int32))


def test_scatter_add_shape_and_dtype_errors():
    x = bp.param("x", (4, 3), "float32")
    idx = bp.input("idx", (2,), "int32")
    with pytest.raises(ShapeError, match=r"scatter_add: v must have shape .*\(2, 3\)"):
        bp.scatter_add(x, idx, bp.param("v", (3, 3), "float32"))
    with pytest.raises(DTypeError, match="scatter_add: indices must be int32"):
        bp.scatter_add(x, bp.input("f", (2,), "float32"), bp.param("w", (2, 3), "float32"))
    with pytest.raises(TypeError, match="at\\[\\]: only full slices"):
        x.at[1:2, idx]


# ---- (d) logical ops -------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_logical_ops_truth_tables(backend):
    a, b = bp.input("a", (4,), "bool"), bp.input("b", (4,), "bool")
    fn = bp.function({"and": a & b, "or": a | b, "xor": a ^ b, "not": ~a,
                      "and_lit": bp.logical_and(a, True), "or_lit": False | b,
                      "nand": bp.logical_not(bp.logical_and(a, b))}, backend=backend)
    av, bv = np.array([0, 0, 1, 1], bool), np.array([0, 1, 0, 1], bool)
    got = _np(fn(a=av, b=bv))
    want = {"and": av & bv, "or": av | bv, "xor": av ^ bv, "not": ~av, "and_lit": av,
            "or_lit": bv, "nand": ~(av & bv)}
    for k, v in want.items():
        assert got[k].dtype == np.bool_, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_logical_ops_refuse_non_bool_by_name():
    x = bp.input("x", (3,), "float32")
    with pytest.raises(DTypeError, match=r"logical_and: needs bool operands, got float32\[3\]"):
        _ = x & (x > 0)
    with pytest.raises(DTypeError, match="logical_not"):
        _ = ~x


# ---- (e) folding of iota subgraphs -------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_power_matrix_from_arange_is_folded(backend):
    """t ** arange(n) and arange(m)[:, None] ** arange(n) depend only on constants and iota:
    computed once at compile time, so no pow or iota is left in the compiled graph."""
    x = bp.param("x", (3, 4), "float64")
    powers = bp.const(0.5, "float64") ** bp.arange(4).astype("float64")
    vander = bp.arange(1, 4).astype("float64").reshape(3, 1) ** bp.arange(4).astype("float64")
    loss = bp.sum(x * powers * vander)
    fn = bp.compile(loss, wrt=[x], backend=backend)
    final = {n.op for n in toposort(fn.outputs)}
    assert "pow" not in final and "iota" not in final, final
    xv = np.ones((3, 4))
    value, grads = fn(x=xv)
    ref = (0.5 ** np.arange(4.0)) * (np.arange(1.0, 4.0)[:, None] ** np.arange(4.0))
    np.testing.assert_allclose(value, ref.sum(), rtol=1e-12)
    np.testing.assert_allclose(_np(grads)["x"], ref, rtol=1e-12)


def test_what_depends_on_a_param_is_not_folded():
    """x ** arange(4): the arange's cast folds, the power (it reads x) stays, and a lone iota
    output stays an iota (generating it costs nothing)."""
    x = bp.param("x", (3, 4), "float32")
    fn = bp.compile(bp.sum(x ** bp.arange(4).astype("float32")), wrt=[x])
    final = [n.op for n in toposort(fn.outputs)]
    assert "pow" in final and "iota" not in final and "cast" not in final, final
    lone = bp.function({"i": bp.arange(6)})
    assert [n.op for n in toposort(lone.outputs)] == ["iota"]


@pytest.mark.parametrize("args", [(5,), (2, 7), (7, 1, -2), (3, 10, 3)])
def test_arange_matches_numpy(args):
    fn = bp.function({"a": bp.arange(*args)}, backend="numpy")
    got = fn()["a"]
    np.testing.assert_array_equal(got, np.arange(*args, dtype=np.int32))


def test_as_jax_function_differentiates_an_input_in_wrt():
    x = bp.input("x", (3,), "float64")
    w = bp.param("w", (3,), "float64")
    f = bp.compile(bp.sum(bp.sin(x) * w), [w, x], backend="jax").as_jax_function()
    W, X = np.ones(3), np.arange(3.0)
    gx = jax.grad(lambda X: f({"w": W}, x=X))(X)
    np.testing.assert_allclose(gx, np.cos(X) * W, rtol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_scatter_add_and_take_grad_llvm_equal_numpy_on_random_shapes(seed):
    """Random ranks, axes, index shapes (0-d too) and axis sizes on both sides of take's
    SCATTER_MIN: the LLVM scatter loop addresses exactly what NumPy's np.add.at does."""
    r = np.random.default_rng(seed)
    nd = int(r.integers(1, 4))
    axis, n = int(r.integers(0, nd)), int(r.choice([3, 70]))
    xs = tuple(n if i == axis else int(r.integers(1, 4)) for i in range(nd))
    ish = tuple(int(s) for s in r.integers(1, 4, int(r.integers(0, 3))))
    vshape = xs[:axis] + ish + xs[axis + 1:]
    x, v = bp.param("x", xs, "float64"), bp.param("v", vshape, "float64")
    idx = bp.input("idx", ish, "int32")
    loss = bp.sum(bp.sin(bp.scatter_add(x, idx, v, axis))) + bp.sum(bp.take(x, idx, axis) ** 2)
    vals = {"x": r.standard_normal(xs), "v": r.standard_normal(vshape),
            "idx": r.integers(-n, n, ish).astype(np.int32)}
    a = bp.compile(loss, [x, v], backend="numpy")(**vals)
    b = bp.compile(loss, [x, v], backend="llvm")(**vals)
    np.testing.assert_allclose(b[0], a[0], rtol=1e-12)
    for k in "xv":
        np.testing.assert_allclose(b[1][k], a[1][k], rtol=1e-12, atol=1e-12)
