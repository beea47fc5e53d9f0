"""One row per primitive op and composite: a bpcompile builder, an independent jax.numpy version
and an input generator. Driven by tests/test_ops_gradients.py and checked for completeness by
tests/test_op_coverage.py.

Each row maps params (and optional inputs) to a tensor `f`; the gradient tests differentiate
the scalar `sum(f * u)` with a random cotangent `u`, so a wrong transpose or un-broadcast in a
VJP cannot hide behind an all-ones cotangent. Domains are chosen so every op is smooth at the
sample points (log/sqrt positive, no ties) unless the row tests ties, where `smooth=False` turns
off the finite-difference checks (JAX's tie rule is still compared).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

import bpcompile as bp

try:
    import jax
    import jax.numpy as jnp
    from jax import lax
except ImportError:  # pragma: no cover - the test modules skip without jax
    jax = jnp = lax = None


@dataclass
class Row:
    """name: test id; ops: the primitives the row exercises (for the coverage test);
    params: name -> shape (float params, declared in the test's dtype);
    inputs: name -> (shape, kind) with kind "float" (test dtype) or "int32";
    f(P, I): the bpcompile tensor; jf(P, I): the same function in jax.numpy;
    gen(rng): name -> value for params and inputs (float64 / int arrays);
    smooth: False where finite differences are no oracle (ties, stop_gradient, float32 casts);
        the dot-product test then takes J v from jax.jvp;
    rtol64/rtol32: tolerances against JAX."""

    name: str
    ops: tuple
    params: dict
    f: Callable
    jf: Callable
    gen: Callable | None = None
    inputs: dict = field(default_factory=dict)
    smooth: bool = True
    rtol64: float = 1e-10
    rtol32: float = 2e-5


def normal(*shape):
    return lambda r: r.standard_normal(shape)


def positive(*shape, lo=0.5, hi=2.0):
    return lambda r: r.uniform(lo, hi, shape)


def away_from_zero(*shape):
    """Normal samples pushed away from 0 (relu, abs, sign kinks)."""
    def g(r):
        x = r.standard_normal(shape)
        return np.where(np.abs(x) < 0.2, np.sign(x) * 0.2 + x, x)
    return g


def gens(**kw):
    """A generator from per-name generators: gens(x=normal(3, 4), y=positive(4))."""
    return lambda r: {k: g(r) for k, g in kw.items()}


def _fix_shapes(rows):
    """Fill param shapes from one sample of the generator (rows give shapes once)."""
    r = np.random.default_rng(0)
    for row in rows:
        sample = row.gen(r)
        for k in row.params:
            if row.params[k] is None:
                row.params[k] = np.shape(sample[k])
    return rows


def _ties_gen(r):
    x = np.array([[1.0, 3.0, 3.0, -1.0], [2.0, 2.0, 0.5, 2.0], [0.1, -0.4, 0.7, 0.3]])
    return {"x": x}


def _ties_pair(r):
    a = np.array([1.0, 2.0, -0.5, 3.0, 0.25])
    b = np.array([1.0, 1.5, -0.5, 4.0, 0.25])
    return {"a": a, "b": b}


mish_z = sp.Symbol("z")
MISH = bp.elementwise(mish_z * sp.tanh(sp.log(1 + sp.exp(mish_z))), mish_z, name="mish")
SWISH2 = bp.elementwise(
    sp.Symbol("p") * sp.exp(-sp.Symbol("q") ** 2), (sp.Symbol("p"), sp.Symbol("q")), name="gauss")

GELU = bp.elementwise(  # the tanh approximation: its body holds the NumberSymbol pi
    mish_z / 2 * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (mish_z + sp.Rational(44715, 10**6)
                                                    * mish_z**3))), mish_z, name="gelu")
LEAKY = bp.elementwise(sp.Piecewise((mish_z, mish_z > 0), (mish_z / 10, True)), mish_z,
                       name="leaky_relu")


def _jsoftplus(x):
    return jnp.logaddexp(0.0, x)


def _labels(n, k, shape=None):
    return lambda r: r.integers(0, k, shape if shape is not None else (n,)).astype(np.int32)


def _xent_int(P, I):
    return bp.cross_entropy(P["z"], I["labels"])


def _jxent_int(P, I):
    lsm = P["z"] - jax.scipy.special.logsumexp(P["z"], axis=-1, keepdims=True)
    return -jnp.mean(jnp.take_along_axis(lsm, I["labels"][:, None], axis=1))


def _onehot_targets(r):
    lab = r.integers(0, 5, 4)
    return np.eye(5)[lab]


def _soft_targets(r):
    t = r.uniform(0.1, 1.0, (4, 5))
    return t / t.sum(-1, keepdims=True)


def _bce_ref(z, t):
    # -t log σ(z) - (1-t) log(1-σ(z)), written with jax.nn.log_sigmoid
    return jnp.mean(-t * jax.nn.log_sigmoid(z) - (1 - t) * jax.nn.log_sigmoid(-z))


def _iota_row(P, I):
    io = bp.iota((3, 4), 1).astype(P["x"].dtype)
    return P["x"] * io


def _where_cmp(cmp, jcmp):
    return (lambda P, I: bp.where(cmp(P["x"], P["y"]), P["x"] * P["y"], bp.sin(P["x"])),
            lambda P, I: jnp.where(jcmp(P["x"], P["y"]), P["x"] * P["y"], jnp.sin(P["x"])))


def _separated_pair(shape):
    """x, y with |x - y| >= 0.1 everywhere so comparisons do not flip under perturbation."""
    def g(r):
        x = r.standard_normal(shape)
        d = r.uniform(0.1, 1.0, shape) * np.where(r.random(shape) < 0.5, -1, 1)
        return {"x": x, "y": x + d}
    return g


_lt = _where_cmp(lambda a, b: a < b, lambda a, b: a < b)
_le = _where_cmp(lambda a, b: a <= b, lambda a, b: a <= b)
_gt = _where_cmp(lambda a, b: a > b, lambda a, b: a > b)
_ge = _where_cmp(lambda a, b: a >= b, lambda a, b: a >= b)


def _np_or_jnp(x):
    return bp if isinstance(x, bp.Node) else jnp


def _softplus_prim(x, w):  # log(1 + e^(xw)) written naively; its rule is the stable one
    m = _np_or_jnp(x)
    return m.log(1.0 + m.exp(x * w))


def _softplus_fwd(x, w):
    return _softplus_prim(x, w), (x, w)


def _softplus_bwd(res, g):
    x, w = res
    m = _np_or_jnp(x)
    s = g * (bp.sigmoid(x * w) if m is bp else jax.nn.sigmoid(x * w))
    return s * w, m.sum(s * x, axis=0)


_softplus_cv = bp.custom_vjp(_softplus_prim, _softplus_fwd, _softplus_bwd, name="softplus_xw")
if jax is not None:
    _jsoftplus_cv = jax.custom_vjp(_softplus_prim)
    _jsoftplus_cv.defvjp(_softplus_fwd, _softplus_bwd)


def _sincos_prim(x, w):
    m = _np_or_jnp(x)
    return m.sin(x * w), m.cos(x * w)


def _sincos_jvp(primals, tangents):
    # the true derivative, so finite differences and JAX's own derivative agree with it
    (x, w), (tx, tw) = primals, tangents
    s, c = _sincos_prim(x, w)
    d = tx * w + x * tw
    return (s, c), (c * d, -s * d)


_sincos_cj = bp.custom_jvp(_sincos_prim, jvp=_sincos_jvp, name="sincos_xw")
if jax is not None:
    _jsincos_cj = jax.custom_jvp(_sincos_prim)
    _jsincos_cj.defjvp(_sincos_jvp)


ROWS: list[Row] = [
    # ---- unary elementwise ---------------------------------------------------------------
    Row("exp", ("exp",), {"x": (3, 4)}, lambda P, I: bp.exp(P["x"]),
        lambda P, I: jnp.exp(P["x"]), gens(x=normal(3, 4))),
    Row("log", ("log",), {"x": (3, 4)}, lambda P, I: bp.log(P["x"]),
        lambda P, I: jnp.log(P["x"]), gens(x=positive(3, 4))),
    Row("log1p", ("log1p",), {"x": (3, 4)}, lambda P, I: bp.log1p(P["x"]),
        lambda P, I: jnp.log1p(P["x"]), gens(x=positive(3, 4, lo=-0.5, hi=2.0))),
    Row("expm1", ("expm1",), {"x": (3, 4)}, lambda P, I: bp.expm1(P["x"]),
        lambda P, I: jnp.expm1(P["x"]), gens(x=normal(3, 4))),
    Row("sqrt", ("sqrt",), {"x": (3, 4)}, lambda P, I: bp.sqrt(P["x"]),
        lambda P, I: jnp.sqrt(P["x"]), gens(x=positive(3, 4))),
    Row("abs", ("abs", "ge", "where"), {"x": (3, 4)}, lambda P, I: bp.abs(P["x"]),
        lambda P, I: jnp.abs(P["x"]), gens(x=away_from_zero(3, 4))),
    Row("sign", ("sign",), {"x": (3, 4)}, lambda P, I: bp.sign(P["x"]) * P["x"] + P["x"],
        lambda P, I: jnp.sign(P["x"]) * P["x"] + P["x"], gens(x=away_from_zero(3, 4))),
    Row("sin", ("sin", "cos"), {"x": (3, 4)}, lambda P, I: bp.sin(P["x"]),
        lambda P, I: jnp.sin(P["x"]), gens(x=normal(3, 4))),
    Row("cos", ("cos", "sin"), {"x": (3, 4)}, lambda P, I: bp.cos(P["x"]),
        lambda P, I: jnp.cos(P["x"]), gens(x=normal(3, 4))),
    Row("tanh", ("tanh",), {"x": (3, 4)}, lambda P, I: bp.tanh(P["x"]),
        lambda P, I: jnp.tanh(P["x"]), gens(x=normal(3, 4))),
    Row("sigmoid", ("sigmoid",), {"x": (3, 4)}, lambda P, I: bp.sigmoid(P["x"]),
        lambda P, I: jax.nn.sigmoid(P["x"]), gens(x=normal(3, 4))),
    Row("relu", ("relu", "gt"), {"x": (3, 4)}, lambda P, I: bp.relu(P["x"]),
        lambda P, I: jax.nn.relu(P["x"]), gens(x=away_from_zero(3, 4))),
    Row("softplus", ("softplus",), {"x": (3, 4)}, lambda P, I: bp.softplus(P["x"]),
        lambda P, I: _jsoftplus(P["x"]), gens(x=normal(3, 4))),
    Row("neg", ("neg",), {"x": (3, 4)}, lambda P, I: -P["x"] * bp.exp(P["x"]),
        lambda P, I: -P["x"] * jnp.exp(P["x"]), gens(x=normal(3, 4))),
    Row("square", ("mul",), {"x": (3, 4)}, lambda P, I: bp.square(P["x"]),
        lambda P, I: jnp.square(P["x"]), gens(x=normal(3, 4))),
    Row("floor_stop_gradient", ("floor", "stop_gradient"), {"x": (3, 4)},
        lambda P, I: P["x"] * bp.floor(bp.stop_gradient(P["x"]) * 3.0),
        lambda P, I: P["x"] * jnp.floor(lax.stop_gradient(P["x"]) * 3.0),
        gens(x=lambda r: (r.integers(-5, 5, (3, 4)) + r.uniform(0.2, 0.8, (3, 4))) / 3.0)),
    Row("round_stop_gradient", ("round", "stop_gradient"), {"x": (3, 4)},
        lambda P, I: P["x"] * bp.round(bp.stop_gradient(P["x"])),
        lambda P, I: P["x"] * jnp.round(lax.stop_gradient(P["x"])),
        gens(x=lambda r: r.integers(-5, 5, (3, 4)) + r.uniform(0.1, 0.4, (3, 4)))),
    Row("stop_gradient", ("stop_gradient",), {"x": (3, 4)},
        lambda P, I: P["x"] * bp.stop_gradient(P["x"] * P["x"]),
        lambda P, I: P["x"] * lax.stop_gradient(P["x"] * P["x"]), gens(x=normal(3, 4)),
        smooth=False),  # finite differences see through stop_gradient; JAX's jvp does not
    # ---- binary elementwise, broadcasting ------------------------------------------------
    Row("add_same", ("add",), {"a": (3, 4), "b": (3, 4)}, lambda P, I: P["a"] + P["b"],
        lambda P, I: P["a"] + P["b"], gens(a=normal(3, 4), b=normal(3, 4))),
    Row("add_size1_both_ways", ("add",), {"a": (3, 1), "b": (1, 4)},
        lambda P, I: P["a"] + P["b"], lambda P, I: P["a"] + P["b"],
        gens(a=normal(3, 1), b=normal(1, 4))),
    Row("sub_rank_promotion", ("sub", "neg"), {"a": (4,), "b": (2, 3, 4)},
        lambda P, I: P["a"] - P["b"], lambda P, I: P["a"] - P["b"],
        gens(a=normal(4), b=normal(2, 3, 4))),
    Row("sub_scalar_param", ("sub",), {"a": (2, 3), "s": ()},
        lambda P, I: P["s"] - P["a"] * P["s"], lambda P, I: P["s"] - P["a"] * P["s"],
        gens(a=normal(2, 3), s=normal())),
    Row("mul_broadcast_mid", ("mul",), {"a": (2, 1, 4), "b": (3, 1)},
        lambda P, I: P["a"] * P["b"], lambda P, I: P["a"] * P["b"],
        gens(a=normal(2, 1, 4), b=normal(3, 1))),
    Row("div_both_ways", ("div",), {"a": (3, 4), "b": (4,)},
        lambda P, I: P["a"] / P["b"] + P["b"] / P["a"],
        lambda P, I: P["a"] / P["b"] + P["b"] / P["a"],
        gens(a=positive(3, 4), b=positive(4))),
    Row("div_python_scalar", ("div", "mul"), {"a": (3, 4)},
        lambda P, I: 2.0 / P["a"] + P["a"] / 4.0, lambda P, I: 2.0 / P["a"] + P["a"] / 4.0,
        gens(a=positive(3, 4))),
    Row("pow_const_exponent", ("pow",), {"a": (3, 4)},
        lambda P, I: P["a"] ** 3.0 + P["a"] ** 2 + (P["a"] * P["a"]) ** 0.5 + P["a"] ** -1.5,
        lambda P, I: P["a"] ** 3.0 + P["a"] ** 2 + (P["a"] * P["a"]) ** 0.5 + P["a"] ** -1.5,
        gens(a=positive(3, 4))),
    Row("pow_variable_exponent", ("pow", "log", "eq", "where"), {"a": (3, 4), "b": (4,)},
        lambda P, I: P["a"] ** P["b"], lambda P, I: P["a"] ** P["b"],
        gens(a=positive(3, 4), b=normal(4))),
    Row("rpow_scalar_base", ("pow",), {"b": (5,)},
        lambda P, I: 2.0 ** P["b"], lambda P, I: 2.0 ** P["b"], gens(b=normal(5))),
    Row("maximum_minimum", ("maximum", "minimum"), {"x": (3, 4), "y": (3, 4)},
        lambda P, I: bp.maximum(P["x"], P["y"]) * 2.0 + bp.minimum(P["x"], P["y"]),
        lambda P, I: jnp.maximum(P["x"], P["y"]) * 2.0 + jnp.minimum(P["x"], P["y"]),
        _separated_pair((3, 4))),
    Row("maximum_broadcast_scalar", ("maximum",), {"x": (3, 4)},
        lambda P, I: bp.maximum(P["x"], 0.1) + bp.minimum(0.3, P["x"]),
        lambda P, I: jnp.maximum(P["x"], 0.1) + jnp.minimum(0.3, P["x"]),
        gens(x=lambda r: np.where(r.random((3, 4)) < .5, -1, 1) * r.uniform(.5, 2, (3, 4)))),
    Row("maximum_minimum_ties", ("maximum", "minimum", "eq"), {"a": (5,), "b": (5,)},
        lambda P, I: bp.maximum(P["a"], P["b"]) + 3.0 * bp.minimum(P["a"], P["b"]),
        lambda P, I: jnp.maximum(P["a"], P["b"]) + 3.0 * jnp.minimum(P["a"], P["b"]),
        _ties_pair, smooth=False),
    Row("where_lt", ("where", "lt"), {"x": (3, 4), "y": (3, 4)}, *_lt, _separated_pair((3, 4))),
    Row("where_le", ("where", "le"), {"x": (3, 4), "y": (3, 4)}, *_le, _separated_pair((3, 4))),
    Row("where_gt", ("where", "gt"), {"x": (3, 4), "y": (3, 4)}, *_gt, _separated_pair((3, 4))),
    Row("where_ge", ("where", "ge"), {"x": (3, 4), "y": (3, 4)}, *_ge, _separated_pair((3, 4))),
    Row("where_eq_ne_int", ("where", "eq", "ne"), {"x": (6,)},
        lambda P, I: bp.where(bp.equal(I["k"], 1), P["x"] * 2.0, bp.exp(P["x"]))
        + bp.where(bp.not_equal(I["k"], 2), P["x"], 0.0),
        lambda P, I: jnp.where(I["k"] == 1, P["x"] * 2.0, jnp.exp(P["x"]))
        + jnp.where(I["k"] != 2, P["x"], 0.0),
        lambda r: {"x": r.standard_normal(6), "k": np.array([0, 1, 2, 1, 0, 2], np.int32)},
        inputs={"k": ((6,), "int32")}),
    Row("where_broadcast", ("where", "gt"), {"x": (3, 1), "y": (4,)},
        lambda P, I: bp.where(I["m"] > 0.0, P["x"], P["y"]),
        lambda P, I: jnp.where(I["m"] > 0.0, P["x"], P["y"]),
        lambda r: {"x": r.standard_normal((3, 1)), "y": r.standard_normal(4),
                   "m": r.standard_normal((3, 4))},
        inputs={"m": ((3, 4), "float")}),
    Row("cast_bool_and_int", ("cast", "gt"), {"x": (3, 4)},
        lambda P, I: (P["x"] > 0.0).astype(P["x"].dtype) * P["x"] + I["k"] * P["x"],
        lambda P, I: (P["x"] > 0.0).astype(P["x"].dtype) * P["x"] + I["k"] * P["x"],
        lambda r: {"x": away_from_zero(3, 4)(r), "k": r.integers(-3, 3, (4,)).astype(np.int32)},
        inputs={"k": ((4,), "int32")}),
    Row("cast_float_float", ("cast",), {"x": (3, 4)},
        lambda P, I: bp.exp(P["x"].astype("float32").astype(P["x"].dtype)),
        lambda P, I: jnp.exp(P["x"].astype("float32").astype(P["x"].dtype)),
        gens(x=normal(3, 4)), rtol64=1e-6, smooth=False),  # float32 rounding spoils FD
    # ---- reductions -----------------------------------------------------------------------
    Row("sum_all", ("sum",), {"x": (3, 4)}, lambda P, I: bp.sum(P["x"] * P["x"]),
        lambda P, I: jnp.sum(P["x"] * P["x"]), gens(x=normal(3, 4))),
    Row("sum_axis", ("sum",), {"x": (2, 3, 4)}, lambda P, I: bp.sum(P["x"], axis=1),
        lambda P, I: jnp.sum(P["x"], axis=1), gens(x=normal(2, 3, 4))),
    Row("sum_axes_keepdims", ("sum",), {"x": (2, 3, 4)},
        lambda P, I: bp.sum(P["x"], axis=(0, 2), keepdims=True) * P["x"],
        lambda P, I: jnp.sum(P["x"], axis=(0, 2), keepdims=True) * P["x"],
        gens(x=normal(2, 3, 4))),
    Row("sum_negative_axis", ("sum",), {"x": (2, 3, 4)},
        lambda P, I: bp.sum(bp.exp(P["x"]), axis=-1),
        lambda P, I: jnp.sum(jnp.exp(P["x"]), axis=-1), gens(x=normal(2, 3, 4))),
    Row("mean_axis_keepdims", ("sum", "mul"), {"x": (3, 5)},
        lambda P, I: P["x"] - bp.mean(P["x"], axis=1, keepdims=True) + bp.mean(P["x"]),
        lambda P, I: P["x"] - jnp.mean(P["x"], axis=1, keepdims=True) + jnp.mean(P["x"]),
        gens(x=normal(3, 5))),
    Row("max_axis", ("max", "eq", "cast"), {"x": (3, 4)}, lambda P, I: bp.max(P["x"], axis=1),
        lambda P, I: jnp.max(P["x"], axis=1), gens(x=normal(3, 4))),
    Row("max_all", ("max",), {"x": (3, 4)}, lambda P, I: bp.max(P["x"]) * P["x"],
        lambda P, I: jnp.max(P["x"]) * P["x"], gens(x=normal(3, 4))),
    Row("max_axis0_keepdims", ("max",), {"x": (2, 3, 4)},
        lambda P, I: bp.max(P["x"], axis=(0, 2), keepdims=True) + P["x"],
        lambda P, I: jnp.max(P["x"], axis=(0, 2), keepdims=True) + P["x"],
        gens(x=normal(2, 3, 4))),
    Row("max_ties", ("max",), {"x": (3, 4)}, lambda P, I: bp.max(P["x"], axis=1),
        lambda P, I: jnp.max(P["x"], axis=1), _ties_gen, smooth=False),
    Row("max_ties_all", ("max",), {"x": (3, 4)}, lambda P, I: bp.max(P["x"]),
        lambda P, I: jnp.max(P["x"]), _ties_gen, smooth=False),
    # ---- movement -------------------------------------------------------------------------
    Row("reshape", ("reshape",), {"x": (2, 6)},
        lambda P, I: bp.reshape(P["x"], (3, -1)) * bp.reshape(P["x"], (3, 4)),
        lambda P, I: jnp.reshape(P["x"], (3, -1)) * jnp.reshape(P["x"], (3, 4)),
        gens(x=normal(2, 6))),
    Row("transpose_2d", ("transpose",), {"x": (3, 4)}, lambda P, I: P["x"].T * 1.5,
        lambda P, I: P["x"].T * 1.5, gens(x=normal(3, 4))),
    Row("transpose_perm", ("transpose",), {"x": (2, 3, 4)},
        lambda P, I: bp.transpose(P["x"], (1, 2, 0)) * bp.transpose(P["x"], (1, 2, 0)),
        lambda P, I: jnp.transpose(P["x"], (1, 2, 0)) ** 2, gens(x=normal(2, 3, 4))),
    Row("broadcast_to", ("broadcast_to",), {"x": (3, 1)},
        lambda P, I: bp.broadcast_to(P["x"], (2, 3, 4)) * 1.0,
        lambda P, I: jnp.broadcast_to(P["x"], (2, 3, 4)) * 1.0, gens(x=normal(3, 1))),
    Row("concatenate", ("concatenate", "slice"), {"a": (2, 3), "b": (2, 2)},
        lambda P, I: bp.concatenate([P["a"], bp.exp(P["b"]), P["a"]], axis=1),
        lambda P, I: jnp.concatenate([P["a"], jnp.exp(P["b"]), P["a"]], axis=1),
        gens(a=normal(2, 3), b=normal(2, 2))),
    Row("concatenate_axis0", ("concatenate",), {"a": (2, 3), "b": (1, 3)},
        lambda P, I: bp.concatenate([P["a"], P["b"]], axis=-2),
        lambda P, I: jnp.concatenate([P["a"], P["b"]], axis=-2),
        gens(a=normal(2, 3), b=normal(1, 3))),
    Row("slice_steps", ("slice", "pad"), {"x": (5, 7)}, lambda P, I: P["x"][1:5:2, ::3],
        lambda P, I: P["x"][1:5:2, ::3], gens(x=normal(5, 7))),
    Row("slice_int_none", ("slice", "reshape"), {"x": (4, 5)},
        lambda P, I: P["x"][2, None, 1:4] * P["x"][-1, 1:4],
        lambda P, I: P["x"][2, None, 1:4] * P["x"][-1][1:4],
        gens(x=normal(4, 5))),
    Row("slice_ellipsis", ("slice",), {"x": (2, 3, 4)}, lambda P, I: P["x"][..., 1:3],
        lambda P, I: P["x"][..., 1:3], gens(x=normal(2, 3, 4))),
    Row("slice_ellipsis_int", ("slice",), {"x": (2, 3, 4)},
        lambda P, I: P["x"][0, ..., -1] + P["x"][..., 2, :][1, 1:],
        lambda P, I: P["x"][0, ..., -1] + P["x"][..., 2, :][1, 1:],
        gens(x=normal(2, 3, 4))),
    Row("slice_negative_start", ("slice",), {"x": (6,)}, lambda P, I: P["x"][-4:-1] * 2.0,
        lambda P, I: P["x"][-4:-1] * 2.0, gens(x=normal(6))),
    Row("pad", ("pad", "slice"), {"x": (2, 3)}, lambda P, I: bp.pad(P["x"], (1, 0), (2, 1)),
        lambda P, I: jnp.pad(P["x"], ((1, 2), (0, 1))), gens(x=normal(2, 3))),
    Row("pad_interior", ("pad", "slice"), {"x": (3, 2)},
        lambda P, I: bp.pad(P["x"], (0, 1), (1, 0), (2, 1)),
        lambda P, I: lax.pad(P["x"], jnp.zeros((), P["x"].dtype), ((0, 1, 2), (1, 0, 1))),
        gens(x=normal(3, 2))),
    # ---- matmul ---------------------------------------------------------------------------
    Row("matmul_2d", ("matmul", "transpose"), {"a": (3, 4), "b": (4, 5)},
        lambda P, I: P["a"] @ P["b"], lambda P, I: P["a"] @ P["b"],
        gens(a=normal(3, 4), b=normal(4, 5))),
    Row("matmul_batched", ("matmul",), {"a": (2, 3, 4), "b": (2, 4, 5)},
        lambda P, I: P["a"] @ P["b"], lambda P, I: P["a"] @ P["b"],
        gens(a=normal(2, 3, 4), b=normal(2, 4, 5))),
    Row("matmul_batch_broadcast", ("matmul", "sum"), {"a": (2, 1, 3, 4), "b": (3, 4, 2)},
        lambda P, I: P["a"] @ P["b"], lambda P, I: P["a"] @ P["b"],
        gens(a=normal(2, 1, 3, 4), b=normal(3, 4, 2))),
    Row("matmul_2d_by_batch", ("matmul",), {"a": (3, 4), "b": (2, 4, 5)},
        lambda P, I: P["a"] @ P["b"], lambda P, I: P["a"] @ P["b"],
        gens(a=normal(3, 4), b=normal(2, 4, 5))),
    Row("matmul_vec_right", ("matmul", "reshape"), {"a": (3, 4), "v": (4,)},
        lambda P, I: P["a"] @ P["v"], lambda P, I: P["a"] @ P["v"],
        gens(a=normal(3, 4), v=normal(4))),
    Row("matmul_vec_left", ("matmul", "reshape"), {"v": (3,), "a": (2, 3, 4)},
        lambda P, I: P["v"] @ P["a"], lambda P, I: P["v"] @ P["a"],
        gens(v=normal(3), a=normal(2, 3, 4))),
    Row("matmul_vec_vec", ("matmul", "reshape"), {"v": (4,), "w": (4,)},
        lambda P, I: (P["v"] @ P["w"]) * P["v"], lambda P, I: (P["v"] @ P["w"]) * P["v"],
        gens(v=normal(4), w=normal(4))),
    # ---- indexing -------------------------------------------------------------------------
    Row("take_axis0", ("take", "one_hot", "matmul"), {"E": (6, 3)},
        lambda P, I: bp.take(P["E"], I["idx"], axis=0),
        lambda P, I: jnp.take(P["E"], I["idx"], axis=0),
        lambda r: {"E": r.standard_normal((6, 3)),
                   "idx": np.array([[0, 5, 2], [2, 2, 1]], np.int32)},
        inputs={"idx": ((2, 3), "int32")}),
    Row("take_axis1", ("take",), {"x": (2, 5, 3)},
        lambda P, I: bp.take(P["x"], I["idx"], axis=1),
        lambda P, I: jnp.take(P["x"], I["idx"], axis=1),
        lambda r: {"x": r.standard_normal((2, 5, 3)), "idx": np.array([4, 0, 4, 1], np.int32)},
        inputs={"idx": ((4,), "int32")}),
    Row("getitem_int_tensor", ("take",), {"E": (5, 2)}, lambda P, I: P["E"][I["idx"]],
        lambda P, I: P["E"][I["idx"]],
        lambda r: {"E": r.standard_normal((5, 2)), "idx": np.array([3, 3, 0], np.int32)},
        inputs={"idx": ((3,), "int32")}),
    Row("one_hot", ("one_hot",), {"x": (4, 3)},
        lambda P, I: bp.one_hot(I["labels"], 3, P["x"].dtype) * P["x"],
        lambda P, I: jax.nn.one_hot(I["labels"], 3, dtype=P["x"].dtype) * P["x"],
        lambda r: {"x": r.standard_normal((4, 3)), "labels": _labels(4, 3)(r)},
        inputs={"labels": ((4,), "int32")}),
    Row("iota", ("cast",), {"x": (3, 4)}, _iota_row,
        lambda P, I: P["x"] * jnp.arange(4, dtype=P["x"].dtype), gens(x=normal(3, 4))),
    # ---- issue 16: min, argmax/argmin, logical ops, scatter_add, iota folding ---------------
    Row("min_axis", ("min", "eq", "cast"), {"x": (3, 4)}, lambda P, I: bp.min(P["x"], axis=1),
        lambda P, I: jnp.min(P["x"], axis=1), gens(x=normal(3, 4))),
    Row("min_all_keepdims", ("min",), {"x": (2, 3, 4)},
        lambda P, I: P["x"].min(axis=(0, 2), keepdims=True) * P["x"] + bp.min(P["x"]),
        lambda P, I: jnp.min(P["x"], axis=(0, 2), keepdims=True) * P["x"] + jnp.min(P["x"]),
        gens(x=normal(2, 3, 4))),
    Row("min_ties", ("min",), {"x": (3, 4)}, lambda P, I: bp.min(-P["x"], axis=1),
        lambda P, I: jnp.min(-P["x"], axis=1), _ties_gen, smooth=False),
    Row("argmax_argmin", ("min", "max", "iota", "where", "logical_or", "ne"), {"x": (3, 4)},
        lambda P, I: P["x"] * (bp.argmax(P["x"], axis=1, keepdims=True)
                               - P["x"].argmin(axis=0)).astype(P["x"].dtype)
        + bp.argmax(P["x"]).astype(P["x"].dtype),
        lambda P, I: P["x"] * (jnp.argmax(P["x"], axis=1, keepdims=True)
                               - jnp.argmin(P["x"], axis=0)).astype(P["x"].dtype)
        + jnp.argmax(P["x"]).astype(P["x"].dtype), _ties_gen, smooth=False),
    Row("logical_and_or_xor_not",
        ("logical_and", "logical_or", "logical_xor", "logical_not", "where"),
        {"x": (3, 4), "y": (3, 4)},
        lambda P, I: bp.where(((P["x"] > 0) & (P["y"] < 0.5)) | ~(P["x"] < P["y"]),
                              P["x"] * P["y"], bp.sin(P["x"]))
        + bp.where(bp.logical_xor(P["x"] > 0.3, P["y"] > 0.3), P["y"], 0.0),
        lambda P, I: jnp.where(((P["x"] > 0) & (P["y"] < 0.5)) | ~(P["x"] < P["y"]),
                               P["x"] * P["y"], jnp.sin(P["x"]))
        + jnp.where(jnp.logical_xor(P["x"] > 0.3, P["y"] > 0.3), P["y"], 0.0),
        _separated_pair((3, 4))),
    Row("scatter_add_axis0", ("scatter_add", "take"), {"x": (5, 3), "v": (2, 3, 3)},
        lambda P, I: bp.scatter_add(P["x"], I["idx"], P["v"] * P["v"]) * P["x"],
        lambda P, I: P["x"].at[I["idx"]].add(P["v"] * P["v"]) * P["x"],
        lambda r: {"x": r.standard_normal((5, 3)), "v": r.standard_normal((2, 3, 3)),
                   "idx": np.array([[0, 4, 2], [2, -1, 2]], np.int32)},
        inputs={"idx": ((2, 3), "int32")}),
    Row("take_large_axis_scatter_grad", ("take", "scatter_add"), {"E": (80, 3)},
        lambda P, I: bp.take(P["E"], I["idx"], axis=0) ** 2,
        lambda P, I: jnp.take(P["E"], I["idx"], axis=0) ** 2,
        lambda r: {"E": r.standard_normal((80, 3)),
                   "idx": np.array([[0, 79, 5], [5, -1, 40]], np.int32)},
        inputs={"idx": ((2, 3), "int32")}),
    Row("scatter_add_at_axis1", ("scatter_add",), {"x": (2, 4, 3), "v": (2, 5, 3)},
        lambda P, I: bp.exp(P["x"].at[:, I["idx"]].add(P["v"])),
        lambda P, I: jnp.exp(P["x"].at[:, I["idx"]].add(P["v"])),
        lambda r: {"x": r.standard_normal((2, 4, 3)), "v": r.standard_normal((2, 5, 3)),
                   "idx": np.array([3, 0, 3, 1, 3], np.int32)},
        inputs={"idx": ((5,), "int32")}),
    Row("power_of_arange_folds", ("mul",), {"x": (3, 4)},
        lambda P, I: P["x"] * (bp.const(0.5, P["x"].dtype) ** bp.arange(4).astype(P["x"].dtype))
        + bp.arange(1, 8, 2).astype(P["x"].dtype),
        lambda P, I: P["x"] * (0.5 ** jnp.arange(4, dtype=P["x"].dtype))
        + jnp.arange(1, 8, 2).astype(P["x"].dtype), gens(x=normal(3, 4))),
    Row("custom_vjp_softplus", ("custom_vjp",), {"x": (3, 4), "w": (4,)},
        lambda P, I: _softplus_cv(P["x"], P["w"]) * P["x"],
        lambda P, I: _jsoftplus_cv(P["x"], P["w"]) * P["x"],
        gens(x=normal(3, 4), w=normal(4))),
    Row("custom_jvp_sincos", ("custom_jvp", "result"), {"x": (3, 4), "w": (4,)},
        lambda P, I: _sincos_cj(P["x"], P["w"])[0] * _sincos_cj(P["x"], P["w"])[1] + P["x"],
        lambda P, I: _jsincos_cj(P["x"], P["w"])[0] * _jsincos_cj(P["x"], P["w"])[1] + P["x"],
        gens(x=normal(3, 4), w=normal(4))),
    # ---- composites -----------------------------------------------------------------------
    Row("softmax", ("exp", "max", "sum", "log"), {"z": (3, 5)}, lambda P, I: bp.softmax(P["z"]),
        lambda P, I: jax.nn.softmax(P["z"], axis=-1), gens(z=normal(3, 5))),
    Row("softmax_axis0", ("exp",), {"z": (3, 5)}, lambda P, I: bp.softmax(P["z"], axis=0),
        lambda P, I: jax.nn.softmax(P["z"], axis=0), gens(z=normal(3, 5))),
    Row("log_softmax", ("sub",), {"z": (3, 5)}, lambda P, I: bp.log_softmax(P["z"]),
        lambda P, I: jax.nn.log_softmax(P["z"], axis=-1), gens(z=normal(3, 5))),
    Row("logsumexp", ("log", "exp"), {"z": (3, 5)}, lambda P, I: bp.logsumexp(P["z"], axis=1),
        lambda P, I: jax.scipy.special.logsumexp(P["z"], axis=1), gens(z=normal(3, 5))),
    Row("logsumexp_keepdims_axes", ("log",), {"z": (2, 3, 4)},
        lambda P, I: bp.logsumexp(P["z"], axis=(0, 2), keepdims=True),
        lambda P, I: jax.scipy.special.logsumexp(P["z"], axis=(0, 2), keepdims=True),
        gens(z=normal(2, 3, 4))),
    Row("mse", ("sub", "mul", "sum"), {"p": (4, 3)}, lambda P, I: bp.mse(P["p"], I["t"]),
        lambda P, I: jnp.mean((P["p"] - I["t"]) ** 2),
        lambda r: {"p": r.standard_normal((4, 3)), "t": r.standard_normal((4, 3))},
        inputs={"t": ((4, 3), "float")}),
    Row("cross_entropy_int_labels", ("one_hot",), {"z": (4, 5)}, _xent_int, _jxent_int,
        lambda r: {"z": r.standard_normal((4, 5)), "labels": _labels(4, 5)(r)},
        inputs={"labels": ((4,), "int32")}),
    Row("cross_entropy_one_hot", ("mul",), {"z": (4, 5)},
        lambda P, I: bp.cross_entropy(P["z"], I["t"]),
        lambda P, I: -jnp.mean(jnp.sum(jax.nn.log_softmax(P["z"]) * I["t"], axis=-1)),
        lambda r: {"z": r.standard_normal((4, 5)), "t": _onehot_targets(r)},
        inputs={"t": ((4, 5), "float")}),
    Row("cross_entropy_soft_targets", ("mul",), {"z": (4, 5)},
        lambda P, I: bp.cross_entropy(P["z"], I["t"]),
        lambda P, I: -jnp.mean(jnp.sum(jax.nn.log_softmax(P["z"]) * I["t"], axis=-1)),
        lambda r: {"z": r.standard_normal((4, 5)), "t": _soft_targets(r)},
        inputs={"t": ((4, 5), "float")}),
    Row("binary_cross_entropy_with_logits", ("softplus",), {"z": (6,)},
        lambda P, I: bp.binary_cross_entropy_with_logits(P["z"], I["t"]),
        lambda P, I: _bce_ref(P["z"], I["t"]),
        lambda r: {"z": 2 * r.standard_normal(6), "t": r.uniform(0, 1, 6)},
        inputs={"t": ((6,), "float")}),
    Row("dense_tanh", ("matmul", "add", "tanh"), {"W": (3, 4), "b": (4,)},
        lambda P, I: bp.dense(I["x"], P["W"], P["b"], "tanh"),
        lambda P, I: jnp.tanh(I["x"] @ P["W"] + P["b"]),
        lambda r: {"W": r.standard_normal((3, 4)), "b": r.standard_normal(4),
                   "x": r.standard_normal((5, 3))},
        inputs={"x": ((5, 3), "float")}),
    Row("dense_sigmoid_2layer", ("matmul", "sigmoid"), {"W1": (3, 4), "W2": (4, 2)},
        lambda P, I: bp.dense(bp.dense(I["x"], P["W1"], None, "sigmoid"), P["W2"]),
        lambda P, I: jax.nn.sigmoid(I["x"] @ P["W1"]) @ P["W2"],
        lambda r: {"W1": r.standard_normal((3, 4)), "W2": r.standard_normal((4, 2)),
                   "x": r.standard_normal((5, 3))},
        inputs={"x": ((5, 3), "float")}),
    Row("elementwise_mish", ("kernel",), {"x": (3, 4)}, lambda P, I: MISH(P["x"]),
        lambda P, I: P["x"] * jnp.tanh(_jsoftplus(P["x"])), gens(x=normal(3, 4))),
    Row("elementwise_gelu_with_pi", ("kernel",), {"x": (3, 4)}, lambda P, I: GELU(P["x"]),
        lambda P, I: P["x"] / 2 * (1 + jnp.tanh(jnp.sqrt(2 / jnp.pi)
                                                * (P["x"] + 0.044715 * P["x"] ** 3))),
        gens(x=normal(3, 4))),
    Row("elementwise_piecewise", ("kernel",), {"x": (3, 4)}, lambda P, I: LEAKY(P["x"]),
        lambda P, I: jnp.where(P["x"] > 0, P["x"], P["x"] / 10), gens(x=away_from_zero(3, 4))),
    Row("elementwise_two_args_broadcast", ("kernel",), {"p": (3, 4), "q": (4,)},
        lambda P, I: SWISH2(P["p"], P["q"]),
        lambda P, I: P["p"] * jnp.exp(-P["q"] ** 2), gens(p=normal(3, 4), q=normal(4))),
]



def _rnn_rows():
    """scan (a loop primitive) when the package has it: a tanh RNN against jax.lax.scan."""
    try:
        from bpcompile.ops.scan import scan
    except ImportError:
        return []

    def rows(reverse, checkpoint):
        def f(P, I):
            def step(h, x):
                h2 = bp.tanh(h @ P["W"] + x)
                return h2, h2 * 2.0 + x
            hT, ys = scan(step, P["h0"], P["xs"], reverse=reverse, checkpoint=checkpoint)
            return ys * hT

        def jf(P, I):
            def step(h, x):
                h2 = jnp.tanh(h @ P["W"] + x)
                return h2, h2 * 2.0 + x
            hT, ys = lax.scan(step, P["h0"], P["xs"], reverse=reverse)
            return ys * hT

        name = "scan_rnn" + ("_reverse" if reverse else "") + (
            f"_checkpoint{checkpoint}" if checkpoint else "")
        return Row(name, ("scan",), {"W": (3, 3), "h0": (3,), "xs": (5, 3)}, f, jf,
                   gens(W=normal(3, 3), h0=normal(3), xs=normal(5, 3)))

    return [rows(False, None), rows(True, None), rows(False, 2)]


ROWS += _rnn_rows()


def _while_rows():
    """bp.while_loop (not differentiable): the number of halvings of a stop_gradient'ed
    value, a data-dependent trip count, scaling x; against jax.lax.while_loop."""
    def halvings(s, cond, loop):
        return loop(lambda c: cond(c[1] > 1.0), lambda c: (c[0] + 1.0, c[1] * 0.5),
                    (s * 0.0, s))[0]

    return [Row("while_loop_halvings", ("while_loop",), {"x": (3, 4)},
                lambda P, I: P["x"] * halvings(bp.sum(bp.stop_gradient(P["x"]) ** 2),
                                               lambda b: b, bp.while_loop),
                lambda P, I: P["x"] * halvings(jnp.sum(lax.stop_gradient(P["x"]) ** 2),
                                               lambda b: b, lax.while_loop),
                gens(x=normal(3, 4)), smooth=False)]


ROWS += _while_rows()


def _checkpoint_rows():
    """bp.checkpoint (ops remat, remat_barrier): a checkpointed tanh block, nested, against
    jax.checkpoint."""
    def block(h, W):
        return bp.tanh(h @ W) * h

    def jblock(h, W):
        return jnp.tanh(h @ W) * h

    return [
        Row("checkpoint_block", ("remat", "remat_barrier"), {"x": (3, 4), "W": (4, 4)},
            lambda P, I: bp.checkpoint(block)(bp.checkpoint(block)(P["x"], P["W"]), P["W"]),
            lambda P, I: jax.checkpoint(jblock)(jax.checkpoint(jblock)(P["x"], P["W"]), P["W"]),
            gens(x=normal(3, 4), W=lambda r: 0.5 * r.standard_normal((4, 4)))),
    ]


ROWS += _checkpoint_rows()
ROWS = _fix_shapes(ROWS)
BY_NAME = {r.name: r for r in ROWS}
assert len(BY_NAME) == len(ROWS), "duplicate row names"

# Ops that are leaves (no lowering of their own needed in the table) and ops a row covers only
# through a leaf-like builder.
LEAVES = ("input", "param", "const", "iota")


def build(row: Row, dtype: str = "float64", seed: int = 0):
    """Declare the row's params/inputs in `dtype`, build f and loss = sum(f * u).

    Returns (P, I, f, loss, values) with values for every param and input (incl. u)."""
    P = {k: bp.param(k, shape, dtype) for k, shape in row.params.items()}
    I = {k: bp.input(k, shape, dtype if kind == "float" else kind)
         for k, (shape, kind) in row.inputs.items()}
    f = row.f(P, I)
    assert f.dtype == dtype, f"{row.name}: f has dtype {f.dtype}, expected {dtype}"
    u = bp.input("u", f.shape, dtype)
    loss = bp.sum(f * u)
    r = np.random.default_rng(seed)
    values = dict(row.gen(r))
    values["u"] = r.standard_normal(f.shape)
    for k, v in list(values.items()):
        kind = row.inputs.get(k, (None, "float"))[1]
        values[k] = np.asarray(v, dtype if kind == "float" else kind)
    return P, {**I, "u": u}, f, loss, values


def jax_loss(row: Row):
    """The row's loss sum(f * u) in jax.numpy: (params dict, inputs dict incl. u) -> scalar."""
    def loss(Pj, Ij):
        return jnp.sum(row.jf(Pj, Ij) * Ij["u"])
    return loss


def directions(row: Row, seed: int = 5) -> dict:
    """Fixed random tangent directions, one per param (float64)."""
    r = np.random.default_rng(seed)
    return {k: r.standard_normal(s) for k, s in row.params.items()}


_ORACLE: dict = {}
# The oracles are tiny programs run once: spend less XLA compile time on them (~20% faster).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jax_oracle(row: Row, dtype: str = "float64"):
    """(value, grads, hvp) of the row's loss from one jitted JAX function, cached per row and
    dtype: jax.value_and_grad, and jax.jvp(jax.grad) along `directions(row)` (float64 only)."""
    key = (row.name, dtype)
    if key not in _ORACLE:
        _, _, _, _, values = build(row, dtype)
        Pj = {k: jnp.asarray(values[k]) for k in row.params}
        Ij = {k: jnp.asarray(v) for k, v in values.items() if k not in row.params}
        Vj = {k: jnp.asarray(v.astype(dtype)) for k, v in directions(row).items()}
        loss = jax_loss(row)

        def oracle(p, i, v):
            value, grads = jax.value_and_grad(loss)(p, i)
            if dtype != "float64":  # HVPs are only compared in float64
                return value, grads, grads
            hvp = jax.jvp(lambda q: jax.grad(loss)(q, i), (p,), (v,))[1]
            return value, grads, hvp

        value, grads, hvp = jax.jit(oracle, compiler_options=FAST_COMPILE)(Pj, Ij, Vj)
        _ORACLE[key] = (np.asarray(value), {k: np.asarray(g) for k, g in grads.items()},
                        {k: np.asarray(h) for k, h in hvp.items()})
    return _ORACLE[key]
