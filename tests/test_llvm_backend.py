"""The LLVM backend against the NumPy reference (and JAX on the benchmark models).

Every op-table row is compiled by both backends in float64 (rtol 1e-10) and float32 (rtol 1e-5:
float32 exp/tanh are inline polynomials with ~3e-7 relative error), with matmul both through
BLAS and through inline loops. The fast native call path is checked for refusing everything
Signature.bind refuses.
"""

from __future__ import annotations

import re

import numpy as np
import op_table as T
import pytest

import bpcompile as bp
from bpcompile.errors import ArgumentError
from bpcompile.ops import all_ops

pytest.importorskip("llvmlite")
from bpcompile.backends.llvm import lower as llvm_lower  # noqa: E402

RTOL = {"float64": 1e-10, "float32": 1e-5}


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BPCOMPILE_CACHE_DIR", str(tmp_path / "cache"))


def _assert_agree(a, b, dtype):
    rt = RTOL[dtype]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rt, atol=rt)


def _assert_matches_numpy(loss, wrt, values, dtype, **options):
    ref = bp.compile(loss, wrt, backend="numpy")
    fn = bp.compile(loss, wrt, backend="llvm", **options)
    v1, g1 = ref(**values)
    v2, g2 = fn(**values)
    assert np.asarray(v2).dtype == np.asarray(v1).dtype
    _assert_agree(v1, v2, dtype)
    assert set(g1) == set(g2)
    for k in g1:
        assert g2[k].shape == g1[k].shape and g2[k].dtype == g1[k].dtype, k
        _assert_agree(g1[k], g2[k], dtype)
    return fn


def test_every_registered_op_has_an_llvm_lowering():
    missing = sorted(set(all_ops()) - llvm_lower.lowered_ops())
    assert not missing, f"ops without an LLVM lowering: {missing}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("row", T.ROWS, ids=[r.name for r in T.ROWS])
def test_op_table_matches_numpy(row, dtype):
    P, I, f, loss, values = T.build(row, dtype)
    # gemm_threshold=0 sends every matmul through BLAS; the default keeps tiny ones inline
    for thr in (0, 10**9) if {"matmul", "take", "scan"} & set(row.ops) else (10**9,):
        _assert_matches_numpy(loss, list(P.values()), values, dtype, gemm_threshold=thr)


def _mlp(batch=5, dtype="float64", act=bp.tanh):
    x = bp.input("x", (batch, 3), dtype)
    W1, b1 = bp.param("W1", (3, 4), dtype), bp.param("b1", (4,), dtype)
    W2, b2 = bp.param("W2", (4, 2), dtype), bp.param("b2", (2,), dtype)
    lab = bp.input("labels", (batch,), "int32")
    loss = bp.cross_entropy(act(x @ W1 + b1) @ W2 + b2, lab)
    r = np.random.default_rng(1)
    vals = dict(
        x=r.standard_normal((batch, 3)),
        W1=r.standard_normal((3, 4)),
        b1=r.standard_normal(4),
        W2=r.standard_normal((4, 2)),
        b2=r.standard_normal(2),
    )
    vals = {k: v.astype(dtype) for k, v in vals.items()}
    vals["labels"] = r.integers(0, 2, batch).astype(np.int32)
    return loss, [W1, b1, W2, b2], vals


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_classifier_both_matmul_paths(dtype):
    loss, wrt, vals = _mlp(dtype=dtype)
    for thr in (0, 10**9):
        _assert_matches_numpy(loss, wrt, vals, dtype, gemm_threshold=thr)


def test_batched_broadcast_matmul_with_transposed_and_sliced_operands():
    a = bp.param("a", (2, 1, 5, 6), "float64")
    b = bp.param("b", (3, 7, 8), "float64")
    w = bp.param("w", (3, 4, 6), "float64")
    # b[:, 1:7, ::2] is a strided view (BLAS needs a copy); the transpose of w is free
    c = a @ b[:, 1:7, ::2] + a @ bp.transpose(w, (0, 2, 1))  # (2,3,5,4)
    loss = bp.sum(bp.tanh(c) * c)
    r = np.random.default_rng(2)
    vals = {
        "a": r.standard_normal((2, 1, 5, 6)),
        "b": r.standard_normal((3, 7, 8)),
        "w": r.standard_normal((3, 4, 6)),
    }
    for thr in (0, 10**9):
        _assert_matches_numpy(loss, [a, b, w], vals, "float64", gemm_threshold=thr)


def test_nan_and_inf_propagate_like_numpy():
    x = bp.param("x", (6,), "float64")
    loss = bp.sum(bp.exp(x) + bp.max(bp.reshape(x, (2, 3)), axis=1)[0] + bp.relu(x))
    vals = {"x": np.array([0.0, np.nan, np.inf, -np.inf, 1.0, -2.0])}
    ref = bp.compile(loss, [x], backend="numpy")
    fn = bp.compile(loss, [x], backend="llvm")
    v1, g1 = ref(**vals)
    v2, g2 = fn(**vals)
    assert np.isnan(v1) and np.isnan(v2)
    np.testing.assert_array_equal(np.isnan(g1["x"]), np.isnan(g2["x"]))
    np.testing.assert_allclose(g1["x"], g2["x"], rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_activations_stay_finite(dtype):
    x = bp.param("x", (8,), dtype)
    loss = bp.sum(bp.sigmoid(x) + bp.softplus(x) * 1e-3 + bp.tanh(x))
    vals = {"x": np.array([-1e4, -100, -20, -1e-8, 0, 1e-8, 20, 1e4], dtype)}
    fn = _assert_matches_numpy(loss, [x], vals, dtype)
    v, g = fn(**vals)
    assert np.isfinite(v) and np.all(np.isfinite(g["x"]))


def _xor():
    x, y = bp.input("x", (4, 2)), bp.input("y", (4, 1))
    ps = [
        bp.param("W1", (2, 4)),
        bp.param("b1", (4,)),
        bp.param("W2", (4, 1)),
        bp.param("b2", (1,)),
    ]
    loss = 0.5 * bp.sum((bp.sigmoid(bp.sigmoid(x @ ps[0] + ps[1]) @ ps[2] + ps[3]) - y) ** 2)
    r = np.random.default_rng(0)
    vals = {p.name: (r.standard_normal(p.shape) * 0.5).astype(np.float32) for p in ps}
    vals["x"] = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    vals["y"] = np.array([[0], [1], [1], [0]], np.float32)
    return loss, ps, vals


def test_benchmark_models_match_jax():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    loss, ps, vals = _xor()
    fn = _assert_matches_numpy(loss, ps, vals, "float32")

    def jl(p, x, y):
        h = jax.nn.sigmoid(x @ p["W1"] + p["b1"])
        return 0.5 * jnp.sum((jax.nn.sigmoid(h @ p["W2"] + p["b2"]) - y) ** 2)

    P = {k: jnp.asarray(vals[k]) for k in ("W1", "b1", "W2", "b2")}
    jv, jg = jax.value_and_grad(jl)(P, jnp.asarray(vals["x"]), jnp.asarray(vals["y"]))
    v, g = fn(**vals)
    np.testing.assert_allclose(v, np.asarray(jv), rtol=1e-5)
    for k in P:
        np.testing.assert_allclose(g[k], np.asarray(jg[k]), rtol=1e-4, atol=1e-6)


def test_mnist_shaped_model_matches_numpy():
    r = np.random.default_rng(0)
    x = bp.input("x", (32, 50))
    lab = bp.input("labels", (32,), dtype="int32")
    ps = [
        bp.param("W1", (50, 64)),
        bp.param("b1", (64,)),
        bp.param("W2", (64, 10)),
        bp.param("b2", (10,)),
    ]
    loss = bp.cross_entropy(bp.relu(x @ ps[0] + ps[1]) @ ps[2] + ps[3], lab)
    vals = {p.name: (r.standard_normal(p.shape) * 0.1).astype(np.float32) for p in ps}
    vals.update(
        x=r.standard_normal((32, 50)).astype(np.float32),
        labels=r.integers(0, 10, 32).astype(np.int32),
    )
    fn = _assert_matches_numpy(loss, ps, vals, "float32", gemm_threshold=0)
    mem = fn.memory()
    assert mem["peak_bytes"] >= mem["workspace_bytes"] > 0
    assert mem["saved_for_backward_bytes"] > 0
    assert mem["workspace_bytes"] <= mem["intermediate_bytes_without_reuse"]


# ---- the native call path --------------------------------------------------------------------


def test_fast_path_is_native_and_refuses_what_bind_refuses():
    loss, ps, vals = _xor()
    fn = bp.compile(loss, ps, backend="llvm")
    assert type(type(fn).__dict__["__call__"]).__name__ == "builtin_function_or_method"
    v0, g0 = fn(**vals)
    v0, g0 = float(v0), {k: g.copy() for k, g in g0.items()}
    bad = [
        (dict(vals, x=np.zeros((3, 2), np.float32)), "expected shape"),
        (dict(vals, z=np.zeros(1)), "unexpected"),
        ({k: v for k, v in vals.items() if k != "y"}, "missing"),
        (dict(vals, x=np.zeros((4, 2), complex)), "dtype"),
    ]
    for kw, msg in bad:
        with pytest.raises(ArgumentError, match=msg):
            fn(**kw)
    with pytest.raises(ArgumentError, match="'x' given both by position and by keyword"):
        fn(1, **vals)  # positional arguments fill the signature's order (test_arguments.py)
    # accepted after conversion by the slow path: lists, float64, non-contiguous, big-endian
    x = vals["x"]
    for xx in (
        x.tolist(),
        x.astype(np.float64),
        np.asfortranarray(x),
        np.repeat(x, 2, axis=1)[:, ::2],
        x.astype(">f4"),
    ):
        v, g = fn(**dict(vals, x=xx))
        assert float(v) == pytest.approx(v0, rel=1e-6)
        for k in g0:
            np.testing.assert_allclose(g[k], g0[k], rtol=1e-6)


def test_out_of_range_labels_are_refused():
    loss, wrt, vals = _mlp(dtype="float64")
    fn = bp.compile(loss, wrt, backend="llvm")
    fn(**vals)
    for bad in (2, -1, 2**31 - 1):
        lab = vals["labels"].copy()
        lab[3] = bad
        with pytest.raises(ArgumentError, match="out of range"):
            fn(**dict(vals, labels=lab))


def test_gradients_fed_back_as_inputs_are_read_before_being_overwritten():
    loss, ps, vals = _xor()
    fn = bp.compile(loss, ps, backend="llvm")
    ref = bp.compile(loss, ps, backend="numpy")
    _, g = fn(**vals)
    kw = dict(vals, W1=g["W1"], b1=g["b1"])  # views of the function's own output buffers
    expect = ref(**{k: np.array(v) for k, v in kw.items()})
    v, g2 = fn(**kw)
    np.testing.assert_allclose(v, expect[0], rtol=1e-5)
    for k in g2:
        np.testing.assert_allclose(g2[k], expect[1][k], rtol=1e-5, atol=1e-7)


def test_copy_outputs_option_returns_fresh_arrays():
    loss, ps, vals = _xor()
    fn = bp.compile(loss, ps, backend="llvm", copy_outputs=True)
    _, g1 = fn(**vals)
    _, g2 = fn(**dict(vals, W1=vals["W1"] * 2))
    assert not np.allclose(g1["W1"], g2["W1"])
    fn2 = bp.compile(loss, ps, backend="llvm")
    _, h1 = fn2(**vals)
    _, h2 = fn2(**vals)
    assert h1["W1"] is h2["W1"]  # the default: preallocated, valid until the next call


def test_source_stages_and_errors():
    loss, ps, vals = _xor()
    fn = bp.compile(loss, ps, backend="llvm")
    raw, opt, asm = fn.source("llvm-unoptimized"), fn.source(), fn.source("asm")
    assert re.search(r'define void @"?bp_main', raw) and re.search(r'define void @"?bp_main', opt)
    assert "@llvm.exp" not in opt  # float32 exp is inline
    assert "bp_main" in asm and ("vfmadd" in asm or "vmul" in asm or "mulss" in asm)
    with pytest.raises(ValueError, match="stage"):
        fn.source("bogus")
    with pytest.raises(TypeError, match="unknown options"):
        bp.compile(loss, ps, backend="llvm", bogus=1)


def test_outputs_that_are_views_inputs_or_constants():
    x = bp.param("x", (3, 4), "float64")
    y = bp.param("y", (4, 3), "float64")
    z = bp.param("z", (2,), "float64")
    u = bp.input("u", (3, 4), "float64")
    # dx = u (an input), dy = transpose(u) (a view), dz = 0 (a constant)
    loss = bp.sum(x * u) + bp.sum(bp.transpose(y) * u) + 0.0 * bp.sum(z)
    r = np.random.default_rng(3)
    vals = {
        "x": r.standard_normal((3, 4)),
        "y": r.standard_normal((4, 3)),
        "z": r.standard_normal(2),
        "u": r.standard_normal((3, 4)),
    }
    _assert_matches_numpy(loss, [x, y, z], vals, "float64")


def test_int_and_bool_tensors():
    x = bp.param("x", (4, 5), "float64")
    k = bp.input("k", (4, 5), "int32")
    m = bp.maximum(k, 2) * k - bp.minimum(k, -1)  # int32 arithmetic
    s = bp.sum(k, axis=1)
    keep = bp.not_equal(k > 0, k > 2)  # bool compared with bool: 0 < k <= 2
    f = bp.where(keep, x * bp.cast(m, "float64"), bp.cast(s, "float64")[:, None] * x)
    loss = bp.sum(f * bp.cast(bp.iota((4, 5), 1), "float64"))
    r = np.random.default_rng(4)
    vals = {"x": r.standard_normal((4, 5)), "k": r.integers(-5, 5, (4, 5)).astype(np.int32)}
    _assert_matches_numpy(loss, [x], vals, "float64")


def test_concurrent_calls_from_threads_agree():
    import threading

    loss, wrt, vals = _mlp(batch=64, dtype="float64")
    fn = bp.compile(loss, wrt, backend="llvm", gemm_threshold=0, copy_outputs=True)
    ref = bp.compile(loss, wrt, backend="numpy")
    inputs = [dict(vals, W1=vals["W1"] * s) for s in (0.5, 1.0, 2.0)]
    expect = [ref(**kw)[1]["W1"] for kw in inputs]
    errors = []

    def work(k):
        for _ in range(30):
            for kw, e in zip(inputs[k:] + inputs[:k], expect[k:] + expect[:k]):
                if not np.allclose(fn(**kw)[1]["W1"], e, rtol=1e-10):
                    errors.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("threads", [2, "auto"])
def test_blas_thread_options_agree(threads):
    loss, wrt, vals = _mlp(batch=64, dtype="float64")
    ref = bp.compile(loss, wrt, backend="numpy")(**vals)
    fn = bp.compile(loss, wrt, backend="llvm", gemm_threshold=0, blas_threads=threads)
    for _ in range(12):  # "auto" explores both modes in its first calls
        v, g = fn(**vals)
        np.testing.assert_allclose(v, ref[0], rtol=1e-10)
        for k in g:
            np.testing.assert_allclose(g[k], ref[1][k], rtol=1e-10, atol=1e-12)


def test_size_zero_and_size_one_dimensions():
    x = bp.input("x", (0, 3), "float64")
    W = bp.param("W", (3, 1), "float64")
    v = bp.param("v", (1, 1), "float64")
    e = bp.param("e", (2, 0), "float64")
    # an empty batch, an empty inner dimension (K = 0 matmul), size-1 broadcasting both ways
    loss = (
        bp.sum(bp.tanh(x @ W) + v)
        + bp.sum(e @ bp.transpose(e)) * v[0, 0]
        + bp.sum(W * v + bp.transpose(W))
    )
    vals = {
        "x": np.zeros((0, 3)),
        "W": np.arange(3.0).reshape(3, 1) / 4,
        "v": np.array([[0.5]]),
        "e": np.zeros((2, 0)),
    }
    for thr in (0, 10**9):
        _assert_matches_numpy(loss, [W, v, e], vals, "float64", gemm_threshold=thr)
    with pytest.raises(bp.ShapeError, match="empty"):
        bp.max(x, axis=0)


def test_workspace_loops_vectorise_with_noalias_metadata(monkeypatch):
    """Kernels between workspace buffers (all offsets of one pointer) vectorise only because
    codegen states which buffers are disjoint; without it LLVM keeps them scalar. The result
    must not change, including where the memory plan reuses bytes."""
    from bpcompile.backends.llvm import codegen

    x, W = bp.input("x", (16, 64, 64)), bp.param("W", (64, 64))
    s = bp.softmax((x @ W) * 0.125, axis=-1)
    loss = bp.mean(bp.tanh(s @ W) ** 2)
    rng = np.random.default_rng(5)
    vals = {"x": rng.standard_normal((16, 64, 64)).astype(np.float32),
            "W": rng.standard_normal((64, 64)).astype(np.float32) * 0.1}

    def vector_ops(fn):
        return len(re.findall(r"= f(?:mul|add|sub) [a-z ]*<\d+ x float>", fn.source("llvm")))

    tagged = bp.compile(loss, [W], backend="llvm", cache=False)
    want = bp.compile(loss, [W], backend="numpy")(**vals)
    got = tagged(**vals)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1]["W"], want[1]["W"], rtol=1e-4, atol=1e-7)
    assert "!alias.scope" in tagged.source("llvm-unoptimized")
    monkeypatch.setattr(codegen.Context, "tag", lambda self, instr, buf: instr)
    untagged = bp.compile(loss, [W], backend="llvm", cache=False)
    assert vector_ops(tagged) > vector_ops(untagged)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_add_of_a_product_folds_into_the_gemm(dtype):
    """x + A @ B runs as copy x -> out, then GEMM with beta = 1 (no product buffer): batched,
    product on either side, and the BPTT accumulation dW + hᵀδ inside a scan."""
    from bpcompile.backends.llvm import rules
    from bpcompile.backends.llvm.codegen import Program
    from bpcompile.rewrite.pipeline import run_backend

    rng = np.random.default_rng(9)
    x, W, V = bp.input("x", (4, 64, 64), dtype), bp.param("W", (64, 64), dtype), bp.param(
        "V", (64, 64), dtype)
    b, xs = bp.param("b", (64,), dtype), bp.input("xs", (6, 32, 64), dtype)
    h = x + bp.tanh(x) @ W  # (4,64,64) @ (64,64): one flattened GEMM added onto a copy of x
    g = bp.reshape(h, (256, 64)) @ V
    loss = bp.mean(bp.tanh(g @ W + g) ** 2)
    marked = run_backend([loss], rules.backend_rules(48**3), [])
    assert len(Program(marked, [x, W, V], 48**3).accumulate) >= 2
    assert not Program([loss], [x, W, V], 48**3).accumulate  # the rule decides, not the schedule
    hT, _ = bp.rnn(xs, bp.broadcast_to(bp.const(0.0, dtype), (32, 64)), W, V, b)
    loss2 = bp.mean(hT**2)
    vals = {"x": rng.standard_normal((4, 64, 64)) * 0.3, "W": rng.standard_normal((64, 64)) * 0.1,
            "V": rng.standard_normal((64, 64)) * 0.1, "xs": rng.standard_normal((6, 32, 64)),
            "b": rng.standard_normal(64) * 0.1}
    vals = {k: v.astype(dtype) for k, v in vals.items()}
    rtol = 1e-10 if dtype == "float64" else 2e-4
    cases = ((loss, [W, V], ("x", "W", "V")), (loss2, [W, V, b], ("xs", "W", "V", "b")))
    for lo, wrt, names in cases:
        args = {k: vals[k] for k in names}
        v0, g0 = bp.compile(lo, wrt, backend="numpy")(**args)
        v1, g1 = bp.compile(lo, wrt, backend="llvm", cache=False)(**args)
        np.testing.assert_allclose(v1, v0, rtol=rtol)
        for w in wrt:
            k = w.attr("name")
            np.testing.assert_allclose(g1[k], g0[k], rtol=rtol, atol=rtol * 1e-2, err_msg=k)
