"""The JAX backend runs the compiler's own forward+backward graph through XLA.

Oracles: the NumPy reference backend (same graph, other backend) and jax.grad of the JAX
translation of the forward graph (independent of our adjoint). x64 is on for the test session
(conftest.py), so float64 graphs compare at rtol 1e-10.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy as sp

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import op_table as T  # noqa: E402

import bpcompile as bp  # noqa: E402
from bpcompile.backends.jax import lower as jax_lower  # noqa: E402
from bpcompile.backends.jax.translate import to_jax_function  # noqa: E402
from bpcompile.ir.traverse import leaves, toposort  # noqa: E402
from bpcompile.ops import all_ops  # noqa: E402

RTOL = {"float64": 1e-10, "float32": 1e-5}
ATOL = {"float64": 1e-12, "float32": 1e-6}

_z = sp.Symbol("z")
MISH = bp.elementwise(_z * sp.tanh(sp.log(1 + sp.exp(_z))), _z, name="mish")


# ---- a compact table of small graphs; together they use every op family --------------------
# Each entry: name -> (builder(P, I) -> scalar loss, {param: shape}, {input: (shape, kind)},
#                      generator(rng) -> {name: value}).
def _pos(r, *s):
    return r.uniform(0.5, 2.0, s)


def _sep(r, *s):
    x = r.standard_normal(s)
    return np.where(np.abs(x) < 0.2, 0.2 * np.sign(x) + x, x)


GRAPHS = {
    "unary": (
        lambda P, I: bp.sum(
            bp.exp(P["x"])
            + bp.log(P["p"])
            + bp.log1p(P["p"])
            + bp.expm1(P["x"])
            + bp.sqrt(P["p"])
            + bp.abs(P["x"])
            + bp.sign(P["x"]) * P["x"]
            + bp.sin(P["x"]) * bp.cos(P["x"])
            + bp.tanh(P["x"])
            + bp.sigmoid(P["x"])
            + bp.relu(P["x"])
            + bp.softplus(P["x"])
            - P["x"]
        ),
        {"x": (3, 4), "p": (3, 4)},
        {},
        lambda r: {"x": _sep(r, 3, 4), "p": _pos(r, 3, 4)},
    ),
    "binary_broadcast": (
        lambda P, I: bp.sum(
            P["a"] * P["b"]
            + P["a"] / P["c"]
            - P["c"]
            + P["c"] ** P["b"]
            + P["a"] ** 2.0
            + bp.maximum(P["a"], P["b"])
            + bp.minimum(P["a"], 0.1)
        ),
        {"a": (2, 3, 4), "b": (4,), "c": (3, 1)},
        {},
        lambda r: {"a": _sep(r, 2, 3, 4), "b": r.standard_normal(4) + 3.0, "c": _pos(r, 3, 1)},
    ),
    "compare_where_cast": (
        lambda P, I: bp.sum(
            bp.where(P["x"] < P["y"], P["x"] * P["y"], bp.sin(P["x"]))
            + bp.where(P["x"] >= 0.0, P["x"], 0.5 * P["y"])
            + bp.where(bp.equal(I["k"], 1), P["x"], 0.0)
            + bp.where(bp.not_equal(I["k"], 2), P["y"], 1.0)
            + (P["x"] > 0.0).astype(P["x"].dtype) * P["y"]
            + bp.where(P["x"] <= P["y"], P["x"], 2.0) * P["x"]
            + I["k"] * P["x"]
        ),
        {"x": (3, 4), "y": (3, 4)},
        {"k": ((4,), "int32")},
        lambda r: {
            "x": _sep(r, 3, 4),
            "y": _sep(r, 3, 4) + 3.0,
            "k": np.array([0, 1, 2, 1], np.int32),
        },
    ),
    "floor_round_stop_gradient": (
        lambda P, I: bp.sum(
            P["x"] * bp.floor(bp.stop_gradient(P["x"]) * 3.0)
            + P["x"] * bp.round(bp.stop_gradient(P["x"]))
        ),
        {"x": (3, 4)},
        {},
        lambda r: {"x": r.integers(-4, 4, (3, 4)) + r.uniform(0.1, 0.4, (3, 4))},
    ),
    "reductions": (
        lambda P, I: (
            bp.sum(bp.max(P["x"], axis=1) * bp.sum(P["x"], axis=0)[:3])
            + bp.mean(P["x"] - bp.mean(P["x"], axis=1, keepdims=True))
            + bp.max(P["x"])
            + bp.logsumexp(P["x"], axis=0)[1]
        ),
        {"x": (3, 4)},
        {},
        lambda r: {"x": r.standard_normal((3, 4))},
    ),
    "movement": (
        lambda P, I: (
            bp.sum(
                bp.reshape(P["x"], (4, 6)) * bp.transpose(bp.reshape(P["x"], (6, 4)), (1, 0))
                + bp.broadcast_to(P["v"], (4, 6))
            )
            + bp.sum(bp.concatenate([P["x"], bp.exp(P["x"])], axis=1)[:, 1:7:2] ** 2)
            + bp.sum(bp.pad(P["x"], (1, 0), (2, 1), (0, 1)) * 0.5)
            + bp.sum(bp.transpose(bp.reshape(P["x"], (2, 3, 4)), (2, 0, 1))[1])
        ),
        {"x": (2, 12), "v": (6,)},
        {},
        lambda r: {"x": r.standard_normal((2, 12)), "v": r.standard_normal(6)},
    ),
    "matmul": (
        lambda P, I: (
            bp.sum((P["a"] @ P["b"]) ** 2)
            + bp.sum(P["a"] @ P["v"])
            + bp.sum(P["c"] @ P["d"])
            + P["v"] @ P["v"]
        ),
        {"a": (3, 4), "b": (4, 5), "v": (4,), "c": (2, 3, 4), "d": (2, 4, 2)},
        {},
        lambda r: {
            k: r.standard_normal(s)
            for k, s in {
                "a": (3, 4),
                "b": (4, 5),
                "v": (4,),
                "c": (2, 3, 4),
                "d": (2, 4, 2),
            }.items()
        },
    ),
    "index": (
        lambda P, I: (
            bp.sum(bp.take(P["E"], I["idx"], axis=0) ** 2)
            + bp.sum(bp.one_hot(I["idx"][0], 6, P["E"].dtype) @ P["E"])
            + bp.sum(P["E"] * bp.iota((6, 3), 1).astype(P["E"].dtype))
        ),
        {"E": (6, 3)},
        {"idx": ((2, 3), "int32")},
        lambda r: {
            "E": r.standard_normal((6, 3)),
            "idx": np.array([[0, 5, 2], [2, 2, 1]], np.int32),
        },
    ),
    "min_logical_scatter": (
        lambda P, I: (
            bp.sum(bp.min(P["x"], axis=1) * bp.argmax(P["x"], axis=0)[:3].astype(P["x"].dtype))
            + bp.sum(bp.where(((P["x"] > 0) & ~(P["x"] > 1)) | ((P["x"] < 0) ^ (P["x"] < -1)),
                              P["x"], 0.0))
            + bp.sum(bp.scatter_add(P["x"], I["idx"], P["v"], axis=1) ** 2)
        ),
        {"x": (3, 4), "v": (3, 5)},
        {"idx": ((5,), "int32")},
        lambda r: {
            "x": r.standard_normal((3, 4)),
            "v": r.standard_normal((3, 5)),
            "idx": np.array([0, 3, 3, -1, 1], np.int32),
        },
    ),
    "kernel_and_losses": (
        lambda P, I: (
            bp.sum(MISH(P["z"]))
            + bp.cross_entropy(P["z"], I["lab"])
            + bp.binary_cross_entropy_with_logits(P["z"][:, 0], I["t"])
            + bp.mse(bp.softmax(P["z"]), I["soft"])
        ),
        {"z": (4, 5)},
        {"lab": ((4,), "int32"), "t": ((4,), "float"), "soft": ((4, 5), "float")},
        lambda r: {
            "z": r.standard_normal((4, 5)),
            "lab": r.integers(0, 5, 4).astype(np.int32),
            "t": r.uniform(0, 1, 4),
            "soft": r.uniform(0, 1, (4, 5)),
        },
    ),
}


def build(name, dtype):
    f, params, inputs, gen = GRAPHS[name]
    P = {k: bp.param(k, s, dtype) for k, s in params.items()}
    Iv = {k: bp.input(k, s, dtype if kind == "float" else kind) for k, (s, kind) in inputs.items()}
    loss = f(P, Iv)
    values = gen(np.random.default_rng(0))
    for k in values:
        kind = inputs.get(k, (None, "float"))[1]
        values[k] = np.asarray(values[k], dtype if kind == "float" else kind)
    return loss, list(P.values()), values


def assert_close(ours, ref, dtype, what):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, what
    np.testing.assert_allclose(
        ours,
        ref,
        rtol=RTOL[dtype],
        atol=ATOL[dtype] * max(1.0, float(np.abs(ref).max(initial=0.0))),
        err_msg=what,
    )


def assert_backends_agree(loss, wrt, values, dtype, passes=None):
    fj = bp.compile(loss, wrt, backend="jax", passes=passes)
    fn = bp.compile(loss, wrt, backend="numpy", passes=passes)
    vj, gj = fj(**values)
    vn, gn = fn(**values)
    assert isinstance(vj, jax.Array) and vj.dtype == np.dtype(dtype)
    assert_close(vj, vn, dtype, "loss")
    for k in gn:
        assert gj[k].dtype == np.dtype(dtype), k
        assert_close(gj[k], gn[k], dtype, f"d{k}")
    return fj, vj, gj


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(GRAPHS))
def test_op_table_matches_numpy_backend(name, dtype):
    loss, wrt, values = build(name, dtype)
    assert_backends_agree(loss, wrt, values, dtype)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_op_table_matches_jax_grad(name):
    loss, wrt, values = build(name, "float64")
    v, g = bp.compile(loss, wrt, backend="jax")(**values)
    args = leaves([loss] + wrt)
    f, _ = to_jax_function([loss], args)
    names = [a.attr("name") for a in args]
    wn = [w.attr("name") for w in wrt]

    def jl(p):
        env = {**values, **p}
        return f(*[env[n] for n in names])[0]

    rv, rg = jax.jit(jax.value_and_grad(jl))({k: jnp.asarray(values[k]) for k in wn})
    assert_close(v, rv, "float64", "loss")
    for k in wn:
        assert_close(g[k], rg[k], "float64", f"d{k}")


def test_every_op_is_lowered_and_exercised():
    """Unfused (passes=[]) graphs of the table use every primitive; each runs on JAX."""
    used = set()
    for name in GRAPHS:
        loss, wrt, values = build(name, "float64")
        fj, _, _ = assert_backends_agree(loss, wrt, values, "float64", passes=[])
        used |= {n.op for n in toposort(fj.outputs)}
        fused, _, _ = assert_backends_agree(loss, wrt, values, "float64")
        used |= {n.op for n in toposort(fused.outputs)}
    assert set(all_ops()) <= jax_lower.lowered_ops(), set(all_ops()) - jax_lower.lowered_ops()
    # control-flow ops (scan) carry sub-graphs; tests/test_scan.py runs them on this backend
    ops = {name for name, op in all_ops().items() if op.kind != "control"}
    assert ops - used == set(), f"ops no table graph exercises: {sorted(ops - used)}"


# ---- the scorecard models ---------------------------------------------------------------------
def scorecard_models(dtype="float32"):
    r = np.random.default_rng(0)
    A = lambda *s: (r.standard_normal(s) * 0.1).astype(dtype)
    out = {}
    x, y = bp.input("x", (4, 2), dtype), bp.input("y", (4, 1), dtype)
    ps = [
        bp.param("W1", (2, 4), dtype),
        bp.param("b1", (4,), dtype),
        bp.param("W2", (4, 1), dtype),
        bp.param("b2", (1,), dtype),
    ]
    loss = 0.5 * bp.sum((bp.sigmoid(bp.sigmoid(x @ ps[0] + ps[1]) @ ps[2] + ps[3]) - y) ** 2)
    vals = dict(
        W1=A(2, 4),
        b1=A(4),
        W2=A(4, 1),
        b2=A(1),
        x=np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype),
        y=np.array([[0], [1], [1], [0]], dtype),
    )
    out["xor"] = (loss, ps, vals)
    x, y = bp.input("x", (1, 10), dtype), bp.input("y", (1, 1), dtype)
    ps = [
        bp.param(n, s, dtype)
        for n, s in [
            ("W1", (10, 32)),
            ("b1", (32,)),
            ("W2", (32, 32)),
            ("b2", (32,)),
            ("W3", (32, 1)),
            ("b3", (1,)),
        ]
    ]
    h = bp.tanh(bp.tanh(x @ ps[0] + ps[1]) @ ps[2] + ps[3])
    loss = bp.mean((h @ ps[4] + ps[5] - y) ** 2)
    vals = {p.attr("name"): A(*p.shape) for p in ps} | dict(x=A(1, 10), y=A(1, 1))
    out["mlp_small"] = (loss, ps, vals)
    x, lab = bp.input("x", (128, 784), dtype), bp.input("labels", (128,), "int32")
    ps = [
        bp.param(n, s, dtype)
        for n, s in [
            ("W1", (784, 256)),
            ("b1", (256,)),
            ("W2", (256, 256)),
            ("b2", (256,)),
            ("W3", (256, 10)),
            ("b3", (10,)),
        ]
    ]
    h = bp.relu(bp.relu(x @ ps[0] + ps[1]) @ ps[2] + ps[3])
    loss = bp.cross_entropy(h @ ps[4] + ps[5], lab)
    vals = {p.attr("name"): A(*p.shape) for p in ps} | dict(
        x=A(128, 784), labels=r.integers(0, 10, 128).astype(np.int32)
    )
    out["mlp_mnist"] = (loss, ps, vals)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scorecard_models(dtype):
    for name, (loss, wrt, vals) in scorecard_models(dtype).items():
        # float32 matmuls over 784 terms: JAX/XLA and NumPy/BLAS sum in different orders.
        fj = bp.compile(loss, wrt, backend="jax")
        fn = bp.compile(loss, wrt, backend="numpy")
        vj, gj = fj(**vals)
        vn, gn = fn(**vals)
        rtol = RTOL[dtype] if name != "mlp_mnist" or dtype == "float64" else 1e-4
        np.testing.assert_allclose(float(vj), float(vn), rtol=rtol, err_msg=name)
        assert list(gj) == [w.attr("name") for w in wrt]  # wrt order, like numpy
        for k in gn:
            scale = float(np.abs(gn[k]).max())
            np.testing.assert_allclose(
                np.asarray(gj[k]), gn[k], rtol=rtol, atol=rtol * scale, err_msg=f"{name} d{k}"
            )


def test_jax_array_inputs_and_dtype_casts():
    loss, wrt, vals = scorecard_models("float32")["xor"]
    fn = bp.compile(loss, wrt, backend="jax")
    v0, g0 = fn(**vals)
    v1, g1 = fn(**{k: jnp.asarray(v) for k, v in vals.items()})  # device arrays
    v2, g2 = fn(**{k: v.astype(np.float64) for k, v in vals.items()})  # cast like numpy
    assert float(v0) == float(v1) == float(v2)
    for k in g0:
        assert g2[k].dtype == np.float32
        np.testing.assert_array_equal(np.asarray(g0[k]), np.asarray(g1[k]))


def test_argument_errors():
    loss, wrt, vals = scorecard_models("float32")["mlp_mnist"]
    fn = bp.compile(loss, wrt, backend="jax")
    with pytest.raises(bp.ArgumentError, match="missing W1"):
        fn(**{k: v for k, v in vals.items() if k != "W1"})
    with pytest.raises(bp.ArgumentError, match=r"'x': expected shape \(128, 784\)"):
        fn(**{**vals, "x": vals["x"][:64]})
    with pytest.raises(bp.ArgumentError, match="unexpected 'zz'"):
        fn(**vals, zz=1.0)
    with pytest.raises(bp.ArgumentError, match="expected dtype int32"):
        fn(**{**vals, "labels": vals["labels"].astype(np.float32)})
    bad = vals["labels"].copy()
    bad[3] = 10
    with pytest.raises(bp.ArgumentError, match="index 10 out of range"):
        fn(**{**vals, "labels": bad})


def test_call_path_keyword_order_and_single_argument():
    """The fast path picks arguments by name (any keyword order); one-argument programs too."""
    loss, wrt, vals = scorecard_models("float32")["xor"]
    fn = bp.compile(loss, wrt, backend="jax")
    v0, g0 = fn(**vals)
    v1, g1 = fn(**dict(reversed(list(vals.items()))))
    assert float(v0) == float(v1) and list(g1) == [w.attr("name") for w in wrt]
    for k in g0:
        np.testing.assert_array_equal(np.asarray(g0[k]), np.asarray(g1[k]))
    w = bp.param("w", (3,), "float64")
    f1 = bp.compile(bp.sum(w * w), [w], backend="jax")
    v, g = f1(w=np.array([1.0, 2.0, 3.0]))
    assert float(v) == 14.0 and list(g) == ["w"]
    np.testing.assert_array_equal(np.asarray(g["w"]), [2.0, 4.0, 6.0])
    with pytest.raises(bp.ArgumentError, match=r"missing w \(expected f64\[3\]\)") as e:
        f1(v=np.ones(3))  # right count, wrong name: the pick fails, then names are checked
    assert e.value.__suppress_context__  # reported on its own, not "during KeyError"
    with pytest.raises(bp.ArgumentError, match="unexpected 'v'"):
        f1(w=np.ones(3), v=np.ones(3))
    with pytest.raises(bp.ArgumentError, match=r"'w': expected shape \(3,\)"):
        f1(w=np.ones(4))


# ---- small reductions: unrolled in the backend's program -------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_small_reductions_are_unrolled_and_agree(dtype):
    """Reductions over <= SMALL_REDUCTION elements per output are emitted as elementwise
    chains; they agree with the NumPy backend and with jax.grad of the op-for-op oracle,
    including max ties (ReLU zeros in the pooling windows) and reductions over several axes."""
    r = np.random.default_rng(3)
    x = bp.input("x", (6, 1, 8, 8), dtype)
    K, bk = bp.param("K", (4, 1, 3, 3), dtype), bp.param("bk", (4,), dtype)
    W = bp.param("W", (6, 4), dtype)
    z = bp.max_pool2d(bp.relu(bp.conv2d(x, K, bk)), 2)  # (6, 4, 3, 3): max over 4 (ties)
    s = bp.sum(z * z, axis=(2, 3))  # over 9 elements: stays jnp.sum
    t = bp.sum(bp.max(bp.reshape(z, (6, 4, 9)), axis=2), axis=0)  # max over 9, sum over 6
    u = bp.sum(bp.reshape(z, (6, 2, 2, 9)), axis=(1, 2), keepdims=True)  # 2x2 per output
    loss = bp.sum(s * W) + bp.sum(t) + bp.sum(u * u) + bp.sum(bp.max(W, axis=0))
    wrt = [K, bk, W]
    values = {
        "x": r.standard_normal((6, 1, 8, 8)).astype(dtype),
        "K": r.standard_normal((4, 1, 3, 3)).astype(dtype),
        "bk": (r.standard_normal(4) - 0.5).astype(dtype),
        "W": np.repeat(r.standard_normal((1, 4)), 6, axis=0).astype(dtype),  # max ties
    }
    fj, v, g = assert_backends_agree(loss, wrt, values, dtype)
    src = fj.source("function")  # the statements, without the helper definitions
    assert "max_unrolled(" in src and "sum_unrolled(" in src
    assert "jnp.sum(" in src and "jnp.max(" in src  # larger reductions keep the jnp form
    unrolled_max = [ln for ln in src.split("\n") if "max_unrolled(" in ln]
    assert any("keepdims=True" in ln for ln in unrolled_max)  # the pooling window's max
    if dtype == "float64":
        args = leaves([loss] + wrt)
        f, oracle_src = to_jax_function([loss], args)
        assert "_unrolled(" not in oracle_src  # the oracle keeps each primitive's own VJP
        names = [a.attr("name") for a in args]
        wn = [w.attr("name") for w in wrt]

        def jl(p):
            env = {**values, **p}
            return f(*[env[n] for n in names])[0]

        rv, rg = jax.value_and_grad(jl)({k: jnp.asarray(values[k]) for k in wn})
        assert_close(v, rv, dtype, "loss")
        for k in wn:
            assert_close(g[k], rg[k], dtype, f"d{k}")


def test_unrolled_reduction_helpers():
    """sum_unrolled/max_unrolled equal jnp.sum/jnp.max (any axes, keepdims, NaN)."""
    r = np.random.default_rng(4)
    x = r.standard_normal((3, 2, 4, 2))
    x[1, 0, 2, 1] = np.nan
    for axes in [(0,), (3,), (1, 3), (0, 2), (0, 1, 2, 3)]:
        for keep in (True, False):
            for mine, ref in [
                (jax_lower.sum_unrolled, jnp.sum),
                (jax_lower.max_unrolled, jnp.max),
            ]:
                got = np.asarray(mine(jnp.asarray(x), axes, keepdims=keep))
                want = np.asarray(ref(jnp.asarray(x), axis=axes, keepdims=keep))
                assert got.shape == want.shape, (mine.__name__, axes, keep)
                np.testing.assert_allclose(got, want, rtol=1e-14, err_msg=f"{axes} {keep}")


def test_one_hot_scatter_matches_jax_one_hot():
    """The program's one_hot (a scatter) equals jax.nn.one_hot on labels in [0, n) and, like
    the plain table's `one_hot`, gives a NaN row for any other label (ops/index.py: a jitted
    program cannot raise; a zero row would let cross_entropy's loss and gradient disagree)."""
    for labels in ([0, 3, -1, 4, 2], [[1, 7], [-3, 0]], 2):
        lab = jnp.asarray(labels, jnp.int32)
        bad = np.asarray((lab < 0) | (lab >= 4))
        for dtype in (jnp.float32, jnp.float64):
            want = np.array(jax.nn.one_hot(lab, 4, dtype=dtype))
            want[bad] = np.nan
            for mine in (jax_lower.one_hot_scatter, jax_lower.one_hot):
                got = mine(lab, 4, dtype)
                assert got.dtype == dtype and got.shape == want.shape
                np.testing.assert_array_equal(np.asarray(got), want)
            wrapped = np.array(jax.nn.one_hot(jnp.where(lab < 0, lab + 4, lab), 4, dtype=dtype))
            wrapped[np.asarray((lab < -4) | (lab >= 4))] = np.nan
            for mine in (jax_lower.one_hot_scatter, jax_lower.one_hot):
                np.testing.assert_array_equal(np.asarray(mine(lab, 4, dtype, wrap=True)), wrapped)
    loss, wrt, vals = scorecard_models("float32")["mlp_mnist"]
    src = bp.compile(loss, wrt, backend="jax").source()
    assert "one_hot_scatter(labels, 10, jnp.float32)" in src


def test_source_and_stablehlo():
    loss, wrt, vals = scorecard_models("float32")["xor"]
    fn = bp.compile(loss, wrt, backend="jax")
    src = fn.source()
    assert src == fn.source("jax")
    assert "def forward_backward(" in src and "# ---- backward ----" in src
    # xor's tiny products and sums are emitted as fused elementwise chains (lower.py)
    assert "sum_unrolled(" in src and "matmul_unrolled(" in src and "# matmul -> f32[2,4]" in src
    assert "jax.grad" not in src and "value_and_grad" not in src
    hlo = fn.source("stablehlo")
    assert "stablehlo" in hlo and "func.func" in hlo
    assert "stablehlo.multiply" in hlo and "stablehlo.dot_general" not in hlo
    assert "HloModule" in fn.source("hlo")
    assert fn.lowered().as_text() == hlo
    assert "module @jit_forward_backward" in hlo
    assert "tensor<4x2xf32>" in hlo.split("func.func public @main(")[1].split(",")[0]  # x first
    with pytest.raises(ValueError, match="stage"):
        fn.source("ptx")
    with pytest.raises(bp.BackendError, match="backend='jax'"):
        bp.compile(loss, wrt, backend="numpy").lowered()


def test_async_dispatch_option():
    loss, wrt, vals = scorecard_models("float32")["xor"]
    v, g = bp.compile(loss, wrt, backend="jax", sync=False)(**vals)
    v0, _ = bp.compile(loss, wrt, backend="numpy")(**vals)
    np.testing.assert_allclose(float(jax.block_until_ready(v)), float(v0), rtol=1e-6)


def test_function_on_jax():
    x, W = bp.input("x", (3, 2), "float64"), bp.param("W", (2, 4), "float64")
    y = bp.tanh(x @ W)
    vals = {"x": np.ones((3, 2)), "W": np.arange(8.0).reshape(2, 4) / 10}
    out = bp.function({"y": y, "s": bp.sum(y)}, backend="jax")(**vals)
    ref = bp.function({"y": y, "s": bp.sum(y)}, backend="numpy")(**vals)
    for k in ref:
        np.testing.assert_allclose(np.asarray(out[k]), ref[k], rtol=1e-12)


def test_bp_check_on_jax_backend():
    loss, wrt, values = build("kernel_and_losses", "float64")
    rep = bp.check(
        loss,
        wrt,
        {k: v for k, v in values.items() if k not in ("z",)},
        params={"z": values["z"]},
        backend="jax",
    )
    assert rep.ok, str(rep)
    assert rep.backend == "jax"
    loss, wrt, vals = scorecard_models("float32")["xor"]
    rep = bp.check(loss, wrt, {"x": vals["x"], "y": vals["y"]}, backend="jax")
    assert rep.ok, str(rep)


# ---- float64 needs x64 -----------------------------------------------------------------------
def test_float64_without_x64_is_a_clear_error():
    loss, wrt, vals = build("matmul", "float64")
    fn = bp.compile(loss, wrt, backend="jax")  # x64 is on for the session
    with jax.enable_x64(False):
        with pytest.raises(bp.BackendError, match="float64.*jax_enable_x64"):
            bp.compile(loss, wrt, backend="jax")
        with pytest.raises(bp.BackendError, match="float64"):
            fn(**vals)  # a new trace under the other setting checks again
    fn(**vals)


def test_float64_without_x64_subprocess():
    code = textwrap.dedent("""
        import jax, bpcompile as bp
        assert not jax.config.read("jax_enable_x64")
        x = bp.param("x", (3,), "float64")
        try:
            bp.compile(bp.sum(x * x), [x], backend="jax")
        except bp.BackendError as e:
            print("ERR", e)
        x = bp.param("x", (3,), "float32")
        print("F32", bp.compile(bp.sum(x * x), [x], backend="jax")(x=[1.0, 2.0, 3.0])[0])
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_env(JAX_ENABLE_X64="0"),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "ERR jax backend (compile): the graph uses float64 (x: f64[3])" in out.stdout
    assert "F32 14.0" in out.stdout


def _env(**kw):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_ENABLE_X64")}
    env.update(JAX_PLATFORMS="cpu", **kw)
    return env


# ---- interop: as_jax_function ------------------------------------------------------------------
def _mlp64():
    x, lab = bp.input("x", (6, 3), "float64"), bp.input("lab", (6,), "int32")
    W1, b1 = bp.param("W1", (3, 5), "float64"), bp.param("b1", (5,), "float64")
    W2 = bp.param("W2", (5, 4), "float64")
    loss = bp.cross_entropy(bp.tanh(x @ W1 + b1) @ W2, lab)
    r = np.random.default_rng(1)
    params = {
        "W1": r.standard_normal((3, 5)),
        "b1": r.standard_normal(5),
        "W2": r.standard_normal((5, 4)),
    }
    inputs = {"x": r.standard_normal((6, 3)), "lab": r.integers(0, 4, 6).astype(np.int32)}
    return loss, [W1, b1, W2], params, inputs


def _reference_loss(loss, wrt):
    args = leaves([loss] + wrt)
    f, _ = to_jax_function([loss], args)
    names = [a.attr("name") for a in args]

    def ref(params, **inputs):
        env = {**inputs, **params}
        return f(*[env[n] for n in names])[0]

    return ref


def test_as_jax_function_grad_uses_our_backward():
    loss, wrt, params, inputs = _mlp64()
    fn = bp.compile(loss, wrt, backend="jax")
    f = fn.as_jax_function()
    ref = _reference_loss(loss, wrt)
    v, g = jax.value_and_grad(f)(params, **inputs)
    rv, rg = jax.value_and_grad(ref)(params, **inputs)
    ov, og = fn(**inputs, **params)
    assert_close(v, rv, "float64", "loss")
    for k in params:
        assert_close(g[k], rg[k], "float64", k)
        np.testing.assert_array_equal(np.asarray(g[k]), np.asarray(og[k]))
    # the cotangent scales our gradient: d(3 f)/dp = 3 df/dp
    g3 = jax.grad(lambda p: 3.0 * f(p, **inputs))(params)
    for k in params:
        assert_close(g3[k], 3 * np.asarray(rg[k]), "float64", k)
    # JAX really goes through custom_vjp (our backward), not through the traced forward
    assert "custom_vjp_call" in str(jax.make_jaxpr(f)(params, **inputs))
    # under grad, the gradient is the output of our compiled program (pjit _traced), scaled
    grad_jaxpr = str(jax.make_jaxpr(jax.grad(f))(params, **inputs))
    assert "forward_backward" in grad_jaxpr and "mul 1.0" in grad_jaxpr


def test_as_jax_function_under_jit_and_vmap():
    loss, wrt, params, inputs = _mlp64()
    f = bp.compile(loss, wrt, backend="jax").as_jax_function()
    ref = _reference_loss(loss, wrt)
    g = jax.jit(jax.grad(f))(params, **inputs)
    rg = jax.grad(ref)(params, **inputs)
    for k in params:
        assert_close(g[k], rg[k], "float64", k)
    # vmap over a batch of data sets (leading axis of the inputs), and of per-set gradients
    r = np.random.default_rng(2)
    xs = r.standard_normal((5, 6, 3))
    labs = r.integers(0, 4, (5, 6)).astype(np.int32)
    per = jax.vmap(lambda x, lab: f(params, x=x, lab=lab))(xs, labs)
    per_ref = np.array([float(ref(params, x=x, lab=lab)) for x, lab in zip(xs, labs)])
    assert_close(per, per_ref, "float64", "vmap loss")
    pg = jax.jit(jax.vmap(lambda x, lab: jax.grad(f)(params, x=x, lab=lab)))(xs, labs)
    for i in range(5):
        gi = jax.grad(ref)(params, x=xs[i], lab=labs[i])
        for k in params:
            assert_close(pg[k][i], gi[k], "float64", f"vmap d{k}[{i}]")
    mean_g = jax.grad(lambda p: jnp.mean(jax.vmap(lambda x, lab: f(p, x=x, lab=lab))(xs, labs)))(
        params
    )
    for k in params:
        assert_close(mean_g[k], np.mean(np.asarray(pg[k]), axis=0), "float64", k)


def test_as_jax_function_refuses_gradient_it_does_not_have():
    loss, wrt, params, inputs = _mlp64()
    f = bp.compile(loss, wrt[:2], backend="jax").as_jax_function()
    with pytest.raises(bp.GradientError, match=r"\['W2'\].*wrt=\['W1', 'b1'\]"):
        jax.grad(f)(params, **inputs)
    fixed = {k: params[k] for k in ("W1", "b1")}
    g = jax.grad(f)(fixed, W2=params["W2"], **inputs)  # W2 as a non-differentiated input: fine
    assert set(g) == {"W1", "b1"}
    with pytest.raises(bp.GradientError, match=r"\['x'\]"):
        jax.grad(lambda x: f(fixed, x=x, lab=inputs["lab"], W2=params["W2"]))(inputs["x"])


def test_as_jax_function_with_optax():
    optax = pytest.importorskip("optax")
    loss, wrt, params, inputs = _mlp64()
    f = bp.compile(loss, wrt, backend="jax").as_jax_function()
    opt = optax.adam(0.05)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        v, g = jax.value_and_grad(f)(p, **inputs)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, v

    p = {k: jnp.asarray(v) for k, v in params.items()}
    losses = []
    for _ in range(30):
        p, state, v = step(p, state)
        losses.append(float(v))
    assert set(p) == set(params) and losses[-1] < 0.5 * losses[0]


def test_small_numpy_inputs_are_packed_into_one_transfer(monkeypatch):
    """Small NumPy arguments go to the device as one vector per dtype; big ones stay apart.
    JAX arrays, other dtypes and shapes, and non-contiguous arrays take the ordinary
    (validating, casting) path, either before the packed dispatch or by discarding its result.
    Every call gives the NumPy reference's result."""
    from bpcompile.backends.jax import packing

    monkeypatch.setattr(packing, "SMALL_BYTES", 64)  # x (4 KiB) and W (512 B) are not small
    rng = np.random.default_rng(4)
    x, lab = bp.input("x", (32, 32)), bp.input("lab", (32,), "int32")
    W, b, c = bp.param("W", (32, 4)), bp.param("b", (4,)), bp.param("c", (4,))
    loss = bp.cross_entropy((x @ W + b) * c, lab)
    vals = {
        "x": rng.standard_normal((32, 32)).astype(np.float32),
        "lab": rng.integers(0, 4, 32).astype(np.int32),
        "W": rng.standard_normal((32, 4)).astype(np.float32) * 0.1,
        "b": rng.standard_normal(4).astype(np.float32) * 0.1,
        "c": 1 + rng.standard_normal(4).astype(np.float32) * 0.1,
    }
    attempts = []  # per packed attempt: did it run the packed program?
    init = packing.Packer.__init__

    def counting_init(self, *a):
        init(self, *a)
        inner = self.call

        def call(args):
            out = inner(args)
            attempts.append(out is not None)
            return out

        self.call = call

    monkeypatch.setattr(packing.Packer, "__init__", counting_init)
    fn = bp.compile(loss, [W, b, c], backend="jax")
    v0, g0 = bp.compile(loss, [W, b, c], backend="numpy")(**vals)
    c_int = np.array([1, 2, 1, 1], np.int32)  # same bytes as float32: run, then discarded
    cases = [
        (vals, [True], (v0, g0)),  # b and c went as one vector
        ({k: jnp.asarray(v) for k, v in vals.items()}, [], (v0, g0)),
        (dict(vals, c=jnp.asarray(vals["c"])), [], (v0, g0)),
        (dict(vals, b=vals["b"].astype(np.float64)), [False], (v0, g0)),  # sizes differ
        (dict(vals, b=vals["b"][::-1].copy()[::-1]), [False], (v0, g0)),  # not contiguous
        (dict(vals, x=vals["x"].astype(np.float64)), [], (v0, g0)),  # unpacked: tested first
    ]
    for call, expected, (vr, gr) in cases:
        attempts.clear()
        v, g = fn(**call)
        assert attempts == expected
        np.testing.assert_allclose(v, vr, rtol=1e-5)
        for k in gr:
            np.testing.assert_allclose(g[k], gr[k], rtol=1e-5, atol=1e-7)
    # the same bytes in another dtype is run, discarded, then converted by the rule
    # (signature.refusal: int32 -> float32 is NumPy same_kind), never read as float32 bytes
    attempts.clear()
    v, g = fn(**dict(vals, c=c_int))
    assert attempts == [True]
    vr, gr = bp.compile(loss, [W, b, c], backend="numpy")(**dict(vals, c=c_int.astype("f4")))
    np.testing.assert_allclose(v, vr, rtol=1e-5)
    np.testing.assert_allclose(g["c"], gr["c"], rtol=1e-5, atol=1e-7)
    # ... and a dtype the rule refuses is an error after the discarded attempt
    attempts.clear()
    with pytest.raises(bp.errors.ArgumentError, match="'c': expected dtype float32.*complex"):
        fn(**dict(vals, c=c_int.astype(np.complex64)))
    # the same bytes in another shape is not packed blindly
    with pytest.raises(bp.errors.ArgumentError, match="'c'"):
        fn(**dict(vals, c=vals["c"].reshape(2, 2)))
    with pytest.raises(bp.errors.ArgumentError, match="'c'"):
        fn(**dict(vals, c=vals["c"][:3]))
    with pytest.raises(bp.errors.ArgumentError, match="index 9"):
        fn(**dict(vals, lab=np.full(32, 9, np.int32)))


@pytest.mark.parametrize(
    "sa,sb", [((4, 2), (2, 3)), ((3, 1), (1, 5)), ((2, 3, 4), (4, 2)), ((2, 1, 3, 2), (3, 2, 4))]
)
def test_small_matmuls_as_outer_products(sa, sb):
    """matmul_unrolled (tiny products in the backend program) equals a @ b, batched too."""
    from bpcompile.backends.jax.lower import matmul_unrolled

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    np.testing.assert_allclose(np.asarray(matmul_unrolled(jnp.asarray(a), jnp.asarray(b))), a @ b,
                               rtol=1e-5, atol=1e-6)


# ---- the core op table (tests/op_table.py), every row on this backend -----------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("row", T.ROWS, ids=[r.name for r in T.ROWS])
def test_core_op_table_rows(row, dtype):
    """Every row of the core op table, compiled for JAX, against the NumPy reference backend
    (same graph) and jax.grad of the row's independent jax.numpy definition."""
    P, I, f, loss, values = T.build(row, dtype)
    wrt = list(P.values())
    v0, g0 = bp.compile(loss, wrt, backend="numpy")(**values)
    v1, g1 = bp.compile(loss, wrt, backend="jax")(**values)
    jv, jg, _ = T.jax_oracle(row, dtype)
    assert list(g1) == list(g0)
    rt = RTOL[dtype]
    np.testing.assert_allclose(np.asarray(v1), v0, rtol=rt, atol=ATOL[dtype])
    np.testing.assert_allclose(np.asarray(v1), jv, rtol=max(rt, row.rtol64 if dtype == "float64"
                                                             else row.rtol32), atol=ATOL[dtype])
    for k in g0:
        assert g1[k].shape == g0[k].shape and g1[k].dtype == g0[k].dtype, k
        np.testing.assert_allclose(np.asarray(g1[k]), g0[k], rtol=rt, atol=rt, err_msg=k)
        jt = row.rtol64 if dtype == "float64" else row.rtol32
        np.testing.assert_allclose(np.asarray(g1[k]), jg[k], rtol=jt, atol=jt, err_msg=k)


def test_constant_scalar_outputs_keep_the_graph_dtype():
    """A gradient that simplifies to a scalar constant (an unused 0-d param) is returned in
    the graph's dtype, not as a Python literal that x64 (on in this test session) would make
    float64."""
    assert jax.config.jax_enable_x64
    p, s = bp.param("p", (2,)), bp.param("s", ())
    loss = bp.sum(p * 2.0)
    vals = {"p": np.ones(2, np.float32), "s": np.float32(3)}
    for backend in ("jax", "numpy", "llvm"):
        v, g = bp.compile(loss, [p, s], backend=backend)(**vals)
        assert np.asarray(v).dtype == np.float32, backend
        assert g["s"].shape == () and np.asarray(g["s"]).dtype == np.float32, backend
        assert float(g["s"]) == 0.0
    out = bp.function({"y": bp.const(np.float32(1.5)) + 0.0 * s, "z": p}, backend="jax")(**vals)
    assert out["y"].dtype == np.float32 and float(out["y"]) == 1.5


@pytest.mark.parametrize("backend", ["jax", "llvm"])
def test_empty_batch_agrees_with_numpy(backend):
    """A zero-size batch: every backend agrees with the reference (the weight gradient is a
    matmul contracting over zero terms, which the JAX program must not unroll into nothing)."""
    x, W, b = bp.input("x", (0, 3)), bp.param("W", (3, 2)), bp.param("b", (2,))
    loss = bp.sum(bp.tanh(x @ W + b)) + bp.sum(b * b)
    vals = {"x": np.zeros((0, 3), np.float32), "W": np.ones((3, 2), np.float32),
            "b": np.ones(2, np.float32)}
    v0, g0 = bp.compile(loss, [W, b], backend="numpy")(**vals)
    v, g = bp.compile(loss, [W, b], backend=backend)(**vals)
    np.testing.assert_allclose(float(v), float(v0))
    for k in g0:
        np.testing.assert_allclose(np.asarray(g[k]), g0[k])
