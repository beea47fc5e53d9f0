"""Every bad input fails loudly with a message that names the op or argument and the
shapes/dtypes involved (docs/design.md principle 9)."""

from __future__ import annotations

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.errors import (
    ArgumentError,
    BackendError,
    BPError,
    DTypeError,
    GradientError,
    NonDifferentiableError,
    ShapeError,
)
from bpcompile.ir.dtypes import strict_promotion


def raises(exc, *fragments):
    """pytest.raises that also checks every fragment occurs in the message."""

    class _Ctx:
        def __enter__(self):
            self.cm = pytest.raises(exc)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *a):
            out = self.cm.__exit__(*a)
            msg = str(self.info.value)
            for f in fragments:
                assert f in msg, f"{f!r} not in message {msg!r}"
            assert isinstance(self.info.value, BPError) or exc in (TypeError, ValueError)
            return out

    return _Ctx()


# ---- declaration-time shape and dtype errors -------------------------------------------------

SHAPE_CASES = [
    ("matmul_inner", lambda: bp.param("a", (2, 3)) @ bp.param("b", (4, 5)),
     ["matmul", "(2, 3)", "(4, 5)"]),
    ("matmul_batch", lambda: bp.param("a", (2, 3, 4)) @ bp.param("b", (3, 4, 5)),
     ["matmul", "(2, 3, 4)", "(3, 4, 5)"]),
    ("add_no_broadcast", lambda: bp.param("a", (2, 3)) + bp.param("c", (2, 4)),
     ["add", "(2, 3)", "(2, 4)"]),
    ("mul_no_broadcast", lambda: bp.param("a", (2, 3)) * bp.param("d", (3, 2)),
     ["mul", "(2, 3)", "(3, 2)"]),
    ("where_no_broadcast",
     lambda: bp.where(bp.param("a", (2, 3)) > 0.0, bp.param("a", (2, 3)), bp.param("e", (4,))),
     ["where", "(2, 3)", "(4,)"]),
    ("reshape_size", lambda: bp.reshape(bp.param("a", (2, 3)), (4, 2)),
     ["reshape", "(2, 3)", "(4, 2)"]),
    ("concat_off_axis", lambda: bp.concatenate([bp.param("a", (2, 3)), bp.param("c", (2, 4))]),
     ["concatenate", "(2, 3)", "(2, 4)"]),
    ("sum_axis_range", lambda: bp.sum(bp.param("a", (2, 3)), axis=5), ["sum", "5"]),
    ("max_empty_axis", lambda: bp.max(bp.param("z", (0, 3)), axis=0),
     ["max", "empty", "(0, 3)"]),
    ("max_empty_all", lambda: bp.max(bp.param("z1", (3, 0))), ["max", "(3, 0)"]),
    ("index_range", lambda: bp.param("a", (2, 3))[5], ["5", "size 2"]),
    ("negative_step", lambda: bp.param("a", (2, 3))[::-1], ["negative"]),
    ("broadcast_to", lambda: bp.broadcast_to(bp.param("a", (2, 3)), (3, 3)),
     ["broadcast_to", "(2, 3)", "(3, 3)"]),
    ("transpose_perm", lambda: bp.transpose(bp.param("a", (2, 3)), (0, 0)), ["transpose"]),
    ("xent_labels", lambda: bp.cross_entropy(bp.param("a", (2, 3)),
                                              bp.input("lab3", (3,), "int32")),
     ["cross_entropy", "(3,)", "(2, 3)"]),
    ("mse_shapes", lambda: bp.mse(bp.param("a", (2, 3)), bp.input("t", (3, 2))),
     ["mse", "(2, 3)", "(3, 2)"]),
    ("bce_shapes", lambda: bp.binary_cross_entropy_with_logits(bp.param("a", (2, 3)),
                                                               bp.input("t", (3, 2))),
     ["(2, 3)", "(3, 2)"]),
    ("matmul_scalar", lambda: bp.matmul(bp.param("s", ()), bp.param("a", (2, 3))),
     ["matmul", "scalar"]),
    ("bad_shape_decl", lambda: bp.param("a", (2, -3)), ["param", "shape"]),
]


@pytest.mark.parametrize("build,fragments", [c[1:] for c in SHAPE_CASES],
                         ids=[c[0] for c in SHAPE_CASES])
def test_shape_errors_name_op_and_shapes(build, fragments):
    with raises(ShapeError, *fragments):
        build()


def _strict(build):
    """Mixed floats promote (docs/dtypes.md); strict promotion keeps the error."""
    with strict_promotion():
        return build()


DTYPE_CASES = [
    ("add_f32_f64",
     lambda: _strict(lambda: bp.param("a", (2,)) + bp.param("a64", (2,), "float64")),
     ["add", "float32", "float64", "strict"]),
    ("matmul_f32_f64",
     lambda: _strict(lambda: bp.param("m", (2, 2)) @ bp.param("m64", (2, 2), "float64")),
     ["matmul", "float32", "float64", "strict"]),
    ("where_cond", lambda: bp.where(bp.param("a", (2,)), 1.0, 0.0), ["where", "bool"]),
    ("take_float_idx", lambda: bp.take(bp.param("a", (2,)), bp.input("i", (2,))),
     ["take", "int32", "float32"]),
    ("one_hot_float", lambda: bp.one_hot(bp.input("i", (2,)), 3), ["one_hot", "int32"]),
    ("int_param", lambda: bp.param("p", (2,), "int32"), ["p", "int32"]),
    ("unknown_dtype", lambda: bp.input("q", (2,), "complex64"), ["complex64"]),
    ("bool_arith", lambda: (bp.param("a", (2,)) > 0.0) + (bp.param("a", (2,)) < 1.0),
     ["add", "bool"]),
    ("max_of_bool", lambda: bp.max(bp.input("bb", (2,), "bool")), ["max", "bool"]),
]


@pytest.mark.parametrize("build,fragments", [c[1:] for c in DTYPE_CASES],
                         ids=[c[0] for c in DTYPE_CASES])
def test_dtype_errors_name_op_and_dtypes(build, fragments):
    exc = BPError if "max" in fragments else DTypeError  # (max of bool raises a ShapeError)
    with raises(exc, *fragments):
        build()


def test_declaration_name_and_truthiness_errors():
    with pytest.raises(ValueError, match="identifier"):
        bp.input("bad name", (2,))
    a = bp.param("a", (2,))
    with pytest.raises(TypeError, match="where"):
        bool(a > 0.0)
    with pytest.raises(TypeError, match="not iterable"):
        list(a)


# ---- call-time argument errors --------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier():
    x = bp.input("x", (5, 3))
    lab = bp.input("lab", (5,), "int32")
    W = bp.param("W", (3, 4))
    fn = bp.compile(bp.cross_entropy(x @ W, lab), wrt=[W])
    good = {"x": np.zeros((5, 3), np.float32), "lab": np.array([0, 1, 2, 3, 0], np.int32),
            "W": np.zeros((3, 4), np.float32)}
    return fn, good


def test_good_call_works(classifier):
    fn, good = classifier
    value, g = fn(**good)
    np.testing.assert_allclose(value, np.log(4.0), rtol=1e-6)
    assert g["W"].shape == (3, 4)


CALL_CASES = [
    ("missing", lambda g: {k: v for k, v in g.items() if k != "lab"},
     ["missing", "lab", "i32[5]"]),
    ("extra", lambda g: {**g, "bias": np.zeros(4)}, ["unexpected", "bias"]),
    ("wrong_shape", lambda g: {**g, "x": np.zeros((5, 4), np.float32)},
     ["'x'", "(5, 3)", "(5, 4)"]),
    ("wrong_shape_param", lambda g: {**g, "W": np.zeros((4, 3), np.float32)},
     ["'W'", "(3, 4)", "(4, 3)"]),
    ("float_labels", lambda g: {**g, "lab": np.zeros(5)}, ["'lab'", "int32", "float64"]),
    ("string_data", lambda g: {**g, "x": np.full((5, 3), "a")}, ["'x'", "float32"]),
    ("label_too_large", lambda g: {**g, "lab": np.array([0, 1, 4, 2, 1], np.int32)},
     ["'lab'", "4", "[0, 4)"]),
    ("label_negative", lambda g: {**g, "lab": np.array([0, -1, 0, 2, 1], np.int32)},
     ["'lab'", "-1", "[0, 4)"]),
    ("ragged", lambda g: {**g, "x": [[1.0], [1.0, 2.0]]}, ["'x'"]),
]


@pytest.mark.parametrize("mutate,fragments", [c[1:] for c in CALL_CASES],
                         ids=[c[0] for c in CALL_CASES])
def test_call_time_argument_errors(classifier, mutate, fragments):
    fn, good = classifier
    with raises(ArgumentError, *fragments):
        fn(**mutate(good))


def test_out_of_range_take_index_is_refused():
    E = bp.param("E", (4, 2), "float64")
    idx = bp.input("idx", (3,), "int32")
    fn = bp.compile(bp.sum(bp.take(E, idx)), wrt=[E])
    _, g = fn(E=np.ones((4, 2)), idx=np.array([0, 3, 3], np.int32))
    np.testing.assert_allclose(g["E"][:, 0], [1, 0, 0, 2])
    with raises(ArgumentError, "'idx'", "[-4, 4)"):  # jnp.take's range: negatives wrap
        fn(E=np.ones((4, 2)), idx=np.array([0, 4, 1], np.int32))


def test_compatible_arguments_are_converted():
    """Python lists and float64 arrays are accepted for a float32 input (converted)."""
    x = bp.input("x", (2,))
    w = bp.param("w", (2,))
    fn = bp.compile(bp.sum(x * w), wrt=[w])
    value, g = fn(x=[1.0, 2.0], w=np.array([3.0, 4.0]))
    assert np.asarray(value).dtype == np.float32 and float(value) == 11.0
    np.testing.assert_array_equal(g["w"], [1.0, 2.0])


# ---- gradient-construction errors -----------------------------------------------------------


def _mlp():
    x = bp.input("x", (5, 3))
    W = bp.param("W", (3, 4))
    return x, W, bp.sum(bp.tanh(x @ W))


def test_wrt_with_an_int_input_is_refused():
    # float inputs are differentiable (issue 16: tests/test_new_ops_16.py); int ones are not
    x, W, loss = _mlp()
    i = bp.input("i", (5,), "int32")
    loss = loss + bp.sum(i.astype("float32"))
    with raises(GradientError, "wrt", "input 'i'", "int32[5]", "float32/float64"):
        bp.compile(loss, wrt=[i])
    with raises(GradientError, "wrt", "input 'i'"):
        bp.grad(loss, [W, i])


def test_wrt_with_a_non_param_is_refused():
    x, W, loss = _mlp()
    with raises(GradientError, "bp.param", "matmul"):
        bp.compile(loss, wrt=[x @ W])
    with raises(GradientError, "bp.param"):
        bp.compile(loss, wrt=["W"])
    with raises(GradientError, "empty"):
        bp.compile(loss, wrt=[])
    with raises(GradientError, "'W'"):
        bp.compile(loss, wrt=[W, W])


def test_non_scalar_loss_is_refused():
    x, W, _ = _mlp()
    with raises(GradientError, "scalar", "(5, 4)"):
        bp.compile(x @ W, wrt=[W])
    with raises(GradientError, "scalar", "(5, 4)"):
        bp.grad(x @ W, W)


def test_non_float_loss_is_refused():
    x, W, _ = _mlp()
    with raises(GradientError, "float"):
        bp.compile(bp.sum(bp.input("k", (3,), "int32")), wrt=[W])


@pytest.mark.parametrize("op", ["floor", "round"])
def test_non_differentiable_op_on_gradient_path(op):
    x, W, _ = _mlp()
    loss = bp.sum(getattr(bp, op)(x @ W))
    with raises(NonDifferentiableError, repr(op), "test_errors.py"):
        bp.compile(loss, wrt=[W])
    with pytest.raises(NonDifferentiableError):
        bp.grad(loss, W)
    # the suggested fix works: a stop_gradient makes the op's gradient an intended zero
    fixed = bp.sum(getattr(bp, op)(bp.stop_gradient(x @ W)) * (x @ W))
    fn = bp.compile(fixed, wrt=[W])
    r = np.random.default_rng(0)
    xv, Wv = r.standard_normal((5, 3)).astype(np.float32), r.standard_normal((3, 4)).astype(
        np.float32)
    _, g = fn(x=xv, W=Wv)
    np.testing.assert_allclose(g["W"], xv.T @ getattr(np, op)(xv @ Wv), rtol=1e-5, atol=1e-5)


def test_non_differentiable_op_off_the_gradient_path_is_fine():
    x, W, loss = _mlp()
    fn = bp.compile(loss + bp.sum(bp.floor(x)), wrt=[W])
    v, g = fn(x=np.full((5, 3), 1.5, np.float32), W=np.zeros((3, 4), np.float32))
    assert float(v) == 15.0 and g["W"].shape == (3, 4)


# ---- backends and stages --------------------------------------------------------------------


def test_unknown_backend():
    x, W, loss = _mlp()
    with raises(BackendError, "'tpu'", "numpy"):
        bp.compile(loss, wrt=[W], backend="tpu")


def test_unknown_stage():
    x, W, loss = _mlp()
    fn = bp.compile(loss, wrt=[W])
    with pytest.raises(ValueError, match="bogus") as info:
        fn.graph("bogus")
    assert "fuse" in str(info.value) and "forward" in str(info.value)


def test_unknown_backend_option():
    x, W, loss = _mlp()
    with pytest.raises(TypeError, match="unroll"):
        bp.compile(loss, wrt=[W], unroll=True)


def test_duplicate_leaf_names_are_refused():
    a32 = bp.param("dup", (2,))
    a64 = bp.param("dup", (2,), "float64")
    with pytest.raises(ValueError, match="dup"):
        bp.compile(bp.sum(a32).astype("float64") + bp.sum(a64), wrt=[a64])


def test_scalar_arguments_stay_scalar():
    """Regression: a 0-d argument became shape (1,), so the loss came back as a 1-vector."""
    s = bp.param("s", (), "float64")
    t = bp.input("t", (), "float64")
    fn = bp.compile(s * t * s, wrt=[s])
    value, g = fn(s=np.float64(3.0), t=2.0)
    assert np.shape(value) == () and float(value) == 18.0
    assert g["s"].shape == () and float(g["s"]) == 12.0


def test_param_the_loss_does_not_reach_gets_a_zero_gradient():
    """Regression: an argument unused by every output crashed code generation (KeyError)."""
    a = bp.param("a", (2,), "float64")
    b = bp.param("b", (3,), "float64")
    fn = bp.compile(bp.sum(a * a), wrt=[a, b])
    value, g = fn(a=np.array([1.0, 2.0]), b=np.ones(3))
    assert float(value) == 5.0
    np.testing.assert_array_equal(g["b"], np.zeros(3))
    np.testing.assert_array_equal(g["a"], [2.0, 4.0])


def test_stop_gradient_survives_until_autodiff():
    """Regression: canonicalize dropped stop_gradient from the forward graph before autodiff,
    so d/dx [x * stop_gradient(x)] came out 2x instead of x."""
    x = bp.param("x", (3,), "float64")
    fn = bp.compile(bp.sum(x * bp.stop_gradient(x)), wrt=[x])
    _, g = fn(x=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(g["x"], [1.0, 2.0, 3.0])
    (gx,) = bp.grad(bp.sum(x * bp.stop_gradient(x)), [x])
    from bpcompile.backends.numpy.codegen import evaluate

    np.testing.assert_array_equal(evaluate([gx], {"x": np.array([1.0, 2.0, 3.0])})[0],
                                  [1.0, 2.0, 3.0])
