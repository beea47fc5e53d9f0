"""Issue #13 items 6 and 7: every output has its declared shape and dtype on every backend (fresh,
writable, not weak-typed), and kernel construction is total (no SymPy zoo/oo/nan in a body).

docs/reliability.md, "Gradient shapes and total kernel construction", states the contract.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bpcompile as bp
from bpcompile.errors import BackendError, GradientError
from bpcompile.ir.traverse import toposort
from bpcompile.ops import sympy_funcs as sf
from bpcompile.ops.kernel import kernel, sym

jax = pytest.importorskip("jax")
jnp = jax.numpy
BACKENDS = ["numpy", "llvm", "jax"]


def _check_array(v, shape, dtype, backend, where=()):
    """`v` is a backend's output: declared shape and dtype, fresh, writable, not weak-typed."""
    assert np.shape(v) == shape, (backend, np.shape(v), shape)
    assert np.asarray(v).dtype == np.dtype(dtype), (backend, np.asarray(v).dtype, dtype)
    if backend == "jax":
        assert not v.weak_type, backend
    elif shape:
        assert isinstance(v, np.ndarray) and v.flags.writeable, backend
        assert 0 not in v.strides or v.size <= 1, (backend, v.strides)  # not a broadcast view
        for a in where:
            assert not np.shares_memory(v, a), backend  # not a view of an argument


def _all_kernel_bodies_finite(fn):
    for n in toposort(fn.outputs):
        if n.op == "kernel":
            assert not sf.nonfinite_atoms(n.attr("expr")), n.attr("expr")


# ---- item 6: gradients that simplify to a constant -------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_times_input_gradient_has_the_param_shape(backend):
    """The issue's repro: Σ_k softmax over a size-1 axis is 1, so dp is a constant 0 - it came
    back 0-d (array(0.), weak-typed on JAX) because merging the kernel's repeated operands
    cancelled its body without dropping the operands."""
    p = bp.param("p", (2, 1), "float64")
    u = bp.input("u", (2, 1), "float64")
    loss = bp.sum(bp.exp(p) / bp.sum(bp.exp(p), axis=1, keepdims=True) * u)
    fn = bp.compile(loss, [p], backend=backend)
    pv, uv = np.array([[0.3], [-1.2]]), np.array([[2.0], [5.0]])
    value, grads = fn(p=pv, u=uv)
    assert float(value) == pytest.approx(7.0)
    _check_array(grads["p"], (2, 1), "float64", backend, (pv, uv))
    np.testing.assert_array_equal(np.asarray(grads["p"]), np.zeros((2, 1)))
    _all_kernel_bodies_finite(fn)


def test_kernel_drops_operands_a_merge_cancels():
    """kernel(a0*(a1/a0 - a2/a0), [x, y, y]): merging a2 into a1 cancels the body to 0; the
    result is the constant broadcast to the operands' shape, not a kernel over unused ones."""
    x = bp.param("x", (2, 3), "float64")
    y = bp.input("y", (1, 3), "float64")
    a0, a1, a2 = sym(0), sym(1), sym(2)
    out = kernel(a0 * (a1 / a0 - a2 / a0), [x, y, y], name="k", dtype="float64")
    assert out.shape == (2, 3) and out.dtype == "float64"
    assert "kernel" not in {n.op for n in toposort([out])}
    assert {n.op for n in toposort([out])} <= {"const", "broadcast_to", "reshape"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_keeps_repeated_operands_when_merging_divides_by_zero(backend):
    """kernel(a0/(a1 - a2), [x, y, y]): merging a2 into a1 gives a0/0 = zoo*a0 in SymPy; the
    operands stay apart instead, so the result is IEEE x/(y - y) (inf, -inf or NaN)."""
    x = bp.input("x", (4,), "float64")
    y = bp.input("y", (4,), "float64")
    a0, a1, a2 = sym(0), sym(1), sym(2)
    out = kernel(a0 / (a1 - a2), [x, y, y], name="k", dtype="float64")
    assert not sf.nonfinite_atoms(out.attr("expr"))
    f = bp.function({"z": out * 1.0}, backend=backend)
    xv, yv = np.array([1.0, -2.0, 0.0, np.nan]), np.array([3.0, 0.5, 1.0, 2.0])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(np.asarray(f(x=xv, y=yv)["z"]), xv / (yv - yv))


@pytest.mark.parametrize("backend", BACKENDS)
def test_function_outputs_are_fresh_arrays_of_their_declared_type(backend):
    """Outputs that are arguments, views or broadcasts of arguments, or constants come back as
    new, writable, C-contiguous arrays of the declared shape and dtype (as JAX returns them)."""
    u = bp.input("u", (2, 1), "float64")
    x = bp.input("x", (3,), "float32")
    q = bp.param("q", (2, 3), "float32")
    outs = {
        "u": u,
        "bx": bp.broadcast_to(x, (2, 3)),
        "c": bp.broadcast_to(bp.const(1.5, "float32"), (2, 3)),
        "qt": bp.transpose(q),
        "qr": bp.reshape(q, (3, 2)),
        "s": bp.sum(q),
        "c0": bp.const(2.0, "float64") * 1.0,
        "zq": q * 0.0,
        "xs": x[1:],
    }
    f = bp.function(outs, backend=backend)
    args = {
        "u": np.ones((2, 1)),
        "x": np.arange(3, dtype=np.float32),
        "q": np.arange(6, dtype=np.float32).reshape(2, 3),
    }
    r = f(**args)
    for k, node in outs.items():
        _check_array(r[k], node.shape, node.dtype, backend, tuple(args.values()))
    np.testing.assert_array_equal(np.asarray(r["qt"]), args["q"].T)
    np.testing.assert_array_equal(np.asarray(r["bx"]), np.broadcast_to(args["x"], (2, 3)))
    if backend != "jax":  # writing into a result changes neither the arguments nor a constant
        r["c"][0, 0] = -7.0
        r["u"][0, 0] = -7.0
        assert args["u"][0, 0] == 1.0
        np.testing.assert_array_equal(f(**args)["c"], np.full((2, 3), 1.5, np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_that_is_a_broadcast_constant(backend):
    """d/dq of Σ(q·c) is the constant c broadcast to q's shape: a fresh array on every backend."""
    q = bp.param("q", (3, 2), "float32")
    fn = bp.compile(bp.sum(q * 0.25) + bp.sum(q[0:1, :] * 0.0), [q], backend=backend)
    _, g = fn(q=np.ones((3, 2), np.float32))
    _check_array(g["q"], (3, 2), "float32", backend)
    np.testing.assert_array_equal(np.asarray(g["q"]), np.full((3, 2), 0.25, np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_writing_into_a_constant_output_does_not_change_the_next_call(backend):
    """An output (or gradient) that is an array constant was the compiled function's own module
    constant on NumPy: writing into it changed every later result."""
    q = bp.param("q", (2, 2), "float32")
    C = bp.const(np.arange(4, dtype=np.float32).reshape(2, 2))
    f = bp.function({"C": C, "y": q * 1.0}, backend=backend)
    fn = bp.compile(bp.sum(q * C), [q], backend=backend)
    qv = np.ones((2, 2), np.float32)
    r, (_, g) = f(q=qv), fn(q=qv)
    _check_array(r["C"], (2, 2), "float32", backend)
    _check_array(g["q"], (2, 2), "float32", backend)
    if backend != "jax":
        r["C"][0, 0] = 99.0
        g["q"][0, 0] = 99.0
    want = np.arange(4, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(np.asarray(f(q=qv)["C"]), want)
    np.testing.assert_array_equal(np.asarray(fn(q=qv)[1]["q"]), want)


# ---- item 7: total kernel construction --------------------------------------------------------


def _check_jax(f_bp, f_jax, shape, pv, backend):
    p = bp.param("p", shape, "float64")
    fn = bp.compile(f_bp(p), [p], backend=backend)
    value, g = fn(p=pv)
    rv, rg = jax.value_and_grad(f_jax)(jnp.asarray(pv))
    np.testing.assert_allclose(float(value), float(rv), rtol=1e-12)
    _check_array(g["p"], shape, "float64", backend)
    np.testing.assert_allclose(np.asarray(g["p"]), np.asarray(rg), rtol=1e-12, atol=1e-15)
    _all_kernel_bodies_finite(fn)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "shape,axis",
    [((3, 1), 1), ((1, 3), 0), ((1, 1), None), ((1, 1), 0), ((2, 1, 3), 1), ((1,), 0)],
)
def test_max_and_min_over_size_1_axes(backend, shape, axis):
    """The issue's repro is (3, 1), axis 1: the tie mask divided by its own count (a size-1 sum)
    made SymPy print 1/Piecewise((1, eq), (0, True)) as a branch of zoo."""
    pv = np.random.default_rng(0).standard_normal(shape)
    _check_jax(lambda p: bp.sum(bp.max(p, axis=axis)), lambda p: jnp.sum(jnp.max(p, axis=axis)),
              shape, pv, backend)
    _check_jax(lambda p: bp.sum(-bp.max(-p, axis=axis, keepdims=True) * p),
              lambda p: jnp.sum(jnp.min(p, axis=axis, keepdims=True) * p), shape, pv, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_and_min_ties_split_the_gradient_as_jax_does(backend):
    pv = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0], [-1.0, 3.0, 3.0]])
    _check_jax(lambda p: bp.sum(bp.max(p, axis=1) * bp.const(np.array([1.0, 2.0, 3.0]), "float64")),
              lambda p: jnp.sum(jnp.max(p, axis=1) * jnp.array([1.0, 2.0, 3.0])), (3, 3), pv,
              backend)
    _check_jax(lambda p: bp.sum(-bp.max(-p, axis=0)), lambda p: jnp.sum(jnp.min(p, axis=0)),
              (3, 3), pv, backend)
    _check_jax(lambda p: bp.max(p), lambda p: jnp.max(p), (3, 3), pv, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_division_by_a_masked_value_keeps_ieee_semantics(backend):
    """1/where(x > 0, x, 0) fused naively is Piecewise((1/x, x > 0), (zoo, True)); the group
    stays unfused instead, so the result is +inf where NumPy gives +inf."""
    x = bp.input("x", (4,), "float64")
    f = bp.function({"y": 1.0 / bp.where(x > 0.0, x, 0.0) + x,
                     "z": x / bp.cast(x > 0.0, "float64")}, backend=backend)
    xv = np.array([2.0, -1.0, 0.5, 0.0])
    with np.errstate(all="ignore"):
        want_y = 1.0 / np.where(xv > 0, xv, 0.0) + xv
        want_z = xv / (xv > 0).astype(np.float64)
    r = f(x=xv)
    np.testing.assert_array_equal(np.asarray(r["y"]), want_y)
    np.testing.assert_array_equal(np.asarray(r["z"]), want_z)
    _all_kernel_bodies_finite(f)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_constants_stay_operands(backend):
    """SymPy folds x + (-oo) to -oo for a real symbol; IEEE gives NaN for x = NaN or +inf."""
    x = bp.input("x", (4,), "float64")
    f = bp.function({"y": bp.tanh(x) * 2.0 + float("-inf"), "m": bp.maximum(x * 3.0, -np.inf)},
                    backend=backend)
    xv = np.array([np.nan, 1.0, np.inf, -np.inf])
    r = f(x=xv)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(np.asarray(r["y"]), np.tanh(xv) * 2.0 - np.inf)
        np.testing.assert_array_equal(np.asarray(r["m"]), np.maximum(xv * 3.0, -np.inf))
    _all_kernel_bodies_finite(f)


def test_guard_names_the_kernel_when_a_body_is_not_finite():
    x = bp.input("x", (2,), "float64")
    with pytest.raises(BackendError, match=r"kernel my_k: .*non-finite atom\(s\) zoo"):
        kernel(sym(0) * sp.zoo, [x], name="my_k", dtype="float64")
    with pytest.raises(BackendError, match=r"kernel k2: .*-oo"):
        kernel(sym(0) + sp.S.NegativeInfinity * sym(0) ** 2, [x], name="k2", dtype="float64")
    z = sp.Symbol("z")
    with pytest.raises(ValueError, match="elementwise bad: .*non-finite"):
        bp.elementwise(z + sp.oo, z, name="bad")


def test_guard_names_the_kernel_when_a_derivative_is_not_finite(monkeypatch):
    """SymPy distributes functions into Piecewise branches as it builds a user's expression, so
    no simple kernel has a zoo derivative; stand one in to check that the VJP refuses it with a
    GradientError naming the kernel, the input and its type (instead of a printer crash)."""
    import bpcompile.ops.kernel as kmod

    z = sp.Symbol("z", real=True)
    f = bp.elementwise(z * z, z, name="odd")
    monkeypatch.setattr(kmod.sf, "diff", lambda e, s: sp.Piecewise((1 / s, s > 0), (sp.zoo, True)))
    p = bp.param("p", (3,), "float64")
    with pytest.raises(GradientError, match=r"kernel odd: d/da0 .*zoo.*float64\[3\]"):
        bp.compile(bp.sum(f(p)), [p])


# ---- hypothesis sweep: small graphs with size-1 axes on every backend -------------------------

SHAPES = [(1, 1), (3, 1), (1, 2), (3, 2), (1,), (2,), ()]


@st.composite
def size1_graphs(draw):
    n_params = draw(st.integers(1, 3))
    shapes = {f"p{i}": draw(st.sampled_from(SHAPES[:4])) for i in range(n_params)}

    def expr(depth):
        kinds = ["leaf"] if depth == 0 else ["leaf", "unary", "binary", "reduce", "reduce",
                                             "mask", "where"]
        kind = draw(st.sampled_from(kinds))
        if kind == "leaf":
            return ("leaf", draw(st.sampled_from(sorted(shapes))))
        if kind == "unary":
            return ("unary", draw(st.sampled_from(["tanh", "relu", "abs", "exp_t", "sq"])),
                    expr(depth - 1))
        if kind == "binary":
            return ("binary", draw(st.sampled_from(["add", "mul", "sub", "div", "maximum"])),
                    expr(depth - 1), expr(depth - 1))
        if kind == "reduce":
            return ("reduce", draw(st.sampled_from(["sum", "max", "min", "mean"])),
                    draw(st.sampled_from([0, 1, None])), draw(st.booleans()), expr(depth - 1))
        if kind == "mask":
            return ("mask", expr(depth - 1), expr(depth - 1))
        return ("where", expr(depth - 1), expr(depth - 1))

    return shapes, expr(draw(st.integers(1, 4)))


def _interp(lib, P, r):
    """The recipe in `lib` ("bp" or "jax"); results are kept (3, 2)-broadcastable 2-d."""
    bpl = lib == "bp"
    kind = r[0]
    if kind == "leaf":
        return P[r[1]]
    if kind == "unary":
        x = _interp(lib, P, r[2])
        if r[1] == "tanh":
            return bp.tanh(x) if bpl else jnp.tanh(x)
        if r[1] == "relu":
            return bp.relu(x) if bpl else jax.nn.relu(x)
        if r[1] == "abs":
            return bp.abs(x) if bpl else jnp.abs(x)
        if r[1] == "exp_t":
            return bp.exp(bp.tanh(x)) if bpl else jnp.exp(jnp.tanh(x))
        return x * x
    if kind == "binary":
        a, b = _interp(lib, P, r[2]), _interp(lib, P, r[3])
        if r[1] == "add":
            return a + b
        if r[1] == "mul":
            return a * b
        if r[1] == "sub":
            return a - b
        if r[1] == "div":
            return a / (1.0 + b * b)
        return bp.maximum(a, b) if bpl else jnp.maximum(a, b)
    if kind == "reduce":
        how, axis, keep, x = r[1], r[2], r[3], _interp(lib, P, r[4])
        if x.ndim < 2:
            x = bp.reshape(x, (1, -1) if x.ndim else (1, 1)) if bpl else jnp.reshape(
                x, (1, -1) if x.ndim else (1, 1))
        if bpl:
            f = {"sum": bp.sum, "max": bp.max, "mean": bp.mean,
                 "min": lambda z, axis, keepdims: -bp.max(-z, axis=axis, keepdims=keepdims)}[how]
        else:
            f = {"sum": jnp.sum, "max": jnp.max, "mean": jnp.mean, "min": jnp.min}[how]
        y = f(x, axis=axis, keepdims=keep)
        if not keep and axis == 0:  # (m, n) -> (n,): a row, broadcastable again
            return y
        if not keep and axis == 1:  # (m, n) -> (m,): back to a column
            return bp.reshape(y, (-1, 1)) if bpl else jnp.reshape(y, (-1, 1))
        return y
    if kind == "mask":  # a bool mask cast to float, as max's tie mask is
        a, b = _interp(lib, P, r[1]), _interp(lib, P, r[2])
        m = bp.cast(a > b, "float64") if bpl else (a > b).astype(jnp.float64)
        return a * m + b
    a, b = _interp(lib, P, r[1]), _interp(lib, P, r[2])
    return bp.where(a > b, a, 0.0) if bpl else jnp.where(a > b, a, 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graph=size1_graphs())
def test_random_graphs_with_size_1_axes_compile_and_match_jax(backend, graph):
    shapes, r = graph
    P = {k: bp.param(k, s, "float64") for k, s in shapes.items()}
    out = _interp("bp", P, r)
    u = bp.input("u", out.shape, "float64")
    loss = bp.sum(out * u) + sum(bp.sum(p * 0.0) for p in P.values())
    fn = bp.compile(loss, list(P.values()), backend=backend)
    _all_kernel_bodies_finite(fn)
    rng = np.random.default_rng(zlib.crc32(repr(graph).encode()))
    vals = {k: rng.standard_normal(s) for k, s in shapes.items()}
    vals["u"] = rng.standard_normal(out.shape)
    value, grads = fn(**vals)

    def jloss(Pj):
        return jnp.sum(_interp("jax", Pj, r) * vals["u"])

    Pj = {k: jnp.asarray(vals[k]) for k in shapes}
    rv, rg = jax.value_and_grad(jloss)(Pj)  # eager: no XLA compile of the whole graph
    np.testing.assert_allclose(float(value), float(rv), rtol=1e-9, atol=1e-12)
    for k, s in shapes.items():
        _check_array(grads[k], s, "float64", backend)
        ref = np.asarray(rg[k])
        np.testing.assert_allclose(np.asarray(grads[k]), ref, rtol=1e-8,
                                   atol=1e-9 * max(1.0, float(np.max(np.abs(ref)))),
                                   err_msg=f"d{k} on {backend} for {r}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_comparison_sympy_decides_is_a_number_in_a_kernel(backend):
    """x * cast(x > x) + x: SymPy folds a0 > a0 to False, which fusion handed to float()."""
    p = bp.param("p", (1, 1), "float64")
    out = p * bp.cast(p > p, "float64") + p * bp.cast(p >= p, "float64")
    fn = bp.compile(bp.sum(out * 3.0), [p], backend=backend)
    v, g = fn(p=np.array([[2.0]]))
    assert float(v) == 6.0
    _check_array(g["p"], (1, 1), "float64", backend)
    np.testing.assert_array_equal(np.asarray(g["p"]), [[3.0]])
