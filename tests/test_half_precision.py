"""float16 and bfloat16 on every backend, IEEE edge cases, and float64 models with NumPy
constants (issue 15).

Tolerance of the op-table comparison: both sides round every stored value to the 16-bit type
(relative error <= eps/2 each, eps = 2**-10 for float16, 2**-7 for bfloat16), but at different
places: our LLVM kernels keep a fused chain in float32 registers and round once on store,
NumPy rounds after every ufunc, XLA fuses as it likes; sums and products accumulate in float32
on all sides. Over the table's chains (a few rounded ops, a cotangent-weighted sum) the
outcomes may differ by several eps at the scale of the largest value; 12 eps of
max(1, |reference|) allows that (the worst observed is ~7 eps) and still fails for any wrong
lowering or VJP, whose errors are of order 1.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import op_table as T
import pytest

import bpcompile as bp

jax = pytest.importorskip("jax")
jnp = jax.numpy

HALF = ("float16", "bfloat16")
BACKENDS = ("numpy", "llvm", "jax")
EPS_MULTIPLE = 12


def _err_in_eps(ours, ref, dtype) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if not ref.size:
        return 0.0
    scale = max(1.0, float(np.max(np.abs(ref))))
    return float(np.max(np.abs(ours - ref))) / scale / float(ml_dtypes.finfo(dtype).eps)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", HALF)
def test_op_table_in_16_bits_matches_jax(dtype, backend):
    bad = []
    for row in T.ROWS:
        P, I, f, loss, values = T.build(row, dtype)
        assert all(np.asarray(v).dtype != np.float32 for v in values.values())
        value, grads = bp.compile(loss, wrt=list(P.values()), backend=backend)(**values)
        ref_v, ref_g, _ = T.jax_oracle(row, dtype)
        assert np.asarray(value).dtype == np.dtype(dtype), (row.name, np.asarray(value).dtype)
        errs = [_err_in_eps(value, ref_v, dtype)]
        for k in row.params:  # gradients come back in the param's dtype
            assert grads[k].dtype == np.dtype(dtype), (row.name, k, grads[k].dtype)
            errs.append(_err_in_eps(grads[k], ref_g[k], dtype))
        if max(errs) > EPS_MULTIPLE:
            bad.append(f"{row.name}: {max(errs):.1f} eps")
    assert not bad, f"{dtype} on {backend}: " + ", ".join(bad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", HALF)
def test_low_precision_is_really_used(dtype, backend):
    """A dense tanh layer in 16 bits differs from the float32 computation by about eps."""
    row = T.BY_NAME["dense_tanh"]
    out = {}
    for dt in (dtype, "float32"):
        P, I, f, loss, _ = T.build(row, dt)
        values = {k: v.astype(dt) for k, v in T.build(row, dtype)[4].items()}  # same inputs
        out[dt] = bp.compile(loss, wrt=list(P.values()), backend=backend)(**values)
    grads16, grads32 = out[dtype][1], out["float32"][1]
    diff = max(_err_in_eps(grads16[k], grads32[k], dtype) for k in row.params)
    assert 0.01 < diff < EPS_MULTIPLE


def _ieee_cases(dtype):
    fi = ml_dtypes.finfo(dtype)
    tiny, smallest = float(fi.tiny), float(fi.smallest_subnormal)
    x = np.array([float(fi.max), float(fi.max) / 2, 1.0, tiny, smallest, 3 * smallest,
                  -smallest, 1.5 * tiny, -float(fi.max)], dtype)
    return x, tiny, smallest


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", HALF)
def test_overflow_and_subnormals_follow_ieee(dtype, backend):
    """65504 (float16's max) doubled is inf, max + max/2 rounds to inf, subnormals are kept
    (no flush to zero) and round to nearest-even. A product or sum of two 16-bit values is exact
    in float32, so one rounding gives the IEEE result: compared bit for bit with ml_dtypes'."""
    x, tiny, smallest = _ieee_cases(dtype)
    xs = bp.input("x", x.shape, dtype)
    outs = {"twice": xs * 2.0, "half": xs * 0.5, "quarter": xs * 0.25,
            "plus_half_max": xs + float(ml_dtypes.finfo(dtype).max) / 2, "sq": xs * xs,
            "scaled_down": xs * (smallest / tiny)}
    fn = bp.function(outs, backend=backend)
    got = fn(x=x)
    two, half = np.array(2.0, dtype), np.array(0.5, dtype)
    with np.errstate(over="ignore"):  # overflow to inf is the point
        want = {"twice": x * two, "half": x * half, "quarter": x * np.array(0.25, dtype),
                "plus_half_max": x + np.array(float(ml_dtypes.finfo(dtype).max) / 2, dtype),
                "sq": x * x, "scaled_down": x * np.array(smallest / tiny, dtype)}
    if dtype == "float16":
        assert float(want["twice"][0]) == np.inf and float(x[0]) == 65504.0
    # XLA on CPU flushes float32-range subnormals to zero, and bfloat16's subnormals are in
    # float32's range (float16's are normal float32s, so JAX keeps those): JAX's choice
    ftz = backend == "jax" and dtype == "bfloat16"
    for k in outs:
        g = np.asarray(got[k])
        assert g.dtype == np.dtype(dtype), k
        w = want[k]
        if ftz:
            sub = np.abs(w.astype(np.float64)) < tiny
            assert (g.astype(np.float64)[sub] == 0).all(), k
            g, w = g[~sub], w[~sub]
        np.testing.assert_array_equal(g.view(np.uint16), w.view(np.uint16), err_msg=k)
    assert np.isinf(np.asarray(got["twice"], np.float64)[0])
    assert np.asarray(got["half"], np.float64)[4] == 0.0  # smallest/2: a tie, to even (0)
    if not ftz:
        assert np.asarray(got["quarter"], np.float64)[3] == tiny / 4  # normal -> subnormal


def _float64_model():
    """An MLP and an RNN written with NumPy float64 constants, as a float64 user would."""
    rng = np.random.default_rng(3)
    W1 = bp.param("W1", (4, 5), "float64")
    Wh = bp.param("Wh", (5, 5), "float64")
    x = bp.input("x", (6, 3, 4), "float64")
    scale = bp.const(np.linspace(0.5, 1.5, 5))       # float64 data stays float64
    h0 = bp.const(np.zeros((3, 5)))                   # the natural initial state

    def step(h, xt):
        h = bp.tanh(bp.matmul(xt, W1) * scale + bp.matmul(h, Wh) + np.float64(0.1))
        return h, h

    hT, ys = bp.scan(step, h0, x)
    loss = bp.mean(ys * ys) + bp.sum(hT) * 1e-3
    values = {"W1": rng.normal(size=(4, 5)) * 0.5, "Wh": rng.normal(size=(5, 5)) * 0.3,
              "x": rng.normal(size=(6, 3, 4))}

    def jloss(p, xv):
        sc = jnp.linspace(0.5, 1.5, 5)

        def jstep(h, xt):
            h = jnp.tanh(xt @ p["W1"] * sc + h @ p["Wh"] + 0.1)
            return h, h

        hT, ys = jax.lax.scan(jstep, jnp.zeros((3, 5)), xv)
        return jnp.mean(ys * ys) + jnp.sum(hT) * 1e-3

    return loss, [W1, Wh], values, jloss


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_model_with_numpy_constants_matches_jax(backend):
    loss, wrt, values, jloss = _float64_model()
    assert loss.dtype == "float64"
    value, grads = bp.compile(loss, wrt, backend=backend)(**values)
    with jax.enable_x64(True):
        p = {k: jnp.asarray(values[k]) for k in ("W1", "Wh")}
        ref_v, ref_g = jax.value_and_grad(jloss)(p, jnp.asarray(values["x"]))
        assert ref_v.dtype == jnp.float64
    np.testing.assert_allclose(value, ref_v, rtol=1e-7)
    for k in ("W1", "Wh"):
        assert grads[k].dtype == np.float64
        np.testing.assert_allclose(grads[k], ref_g[k], rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("dtype", HALF)
def test_arguments_and_declarations_in_16_bits(dtype):
    npdt = np.dtype(dtype)
    W = bp.param("W", (3, 2), dtype)
    x = bp.input("x", (4, 3), dtype)
    loss = bp.sum(bp.tanh(x @ W))
    fn = bp.compile(loss, [W], backend="llvm")
    w = np.ones((3, 2), npdt)
    v1, g1 = fn(W=w, x=np.ones((4, 3), npdt))
    v2, g2 = fn(W=w.astype(np.float32), x=np.ones((4, 3)))  # same_kind: any float width
    assert np.asarray(v1).dtype == npdt and g1["W"].dtype == npdt
    assert float(v1) == float(v2)
    v3, _ = fn(W=np.ones((3, 2), np.int32), x=np.ones((4, 3), np.int64))  # int -> float
    assert float(v3) == float(v1)
    with pytest.raises(bp.ArgumentError, match="same_kind"):
        bp.function({"i2": bp.input("i", (2,), "int32") * 2}, backend="numpy")(
            i=np.ones(2, npdt))
    assert bp.cast(x, "float32").dtype == "float32" and bp.cast(W, npdt).dtype == dtype
    assert bp.const(np.ones(2, npdt)).dtype == dtype
    assert (x * 3.0).dtype == dtype  # a Python float never widens a tensor


def test_float16_meets_bfloat16_in_float32():
    a, b = bp.input("a", (3,), "float16"), bp.input("b", (3,), "bfloat16")
    out = bp.function({"s": a + b}, backend="llvm")(
        a=np.array([1, 2, 3], np.float16), b=np.array([0.5, 0.25, 1 / 3], "bfloat16"))
    assert np.asarray(out["s"]).dtype == np.float32
    np.testing.assert_array_equal(out["s"], np.array([1.5, 2.25, 3 + float(
        np.array(1 / 3, "bfloat16"))], np.float32))


def test_spec_file_in_bfloat16(tmp_path):
    src = (Path(__file__).parent.parent / "examples" / "xor.toml").read_text()
    spec = tmp_path / "xor_bf16.toml"
    spec.write_text(src.replace('dtype = "float64"', 'dtype = "bfloat16"'))
    model = bp.load_model(str(spec))
    assert {p.dtype for p in model.params} == {"bfloat16"}
    fn = model.compile(backend="llvm")
    value, grads = fn(**model.example_inputs(), **model.init_params())
    assert np.asarray(value).dtype == np.dtype("bfloat16")
    assert all(g.dtype == np.dtype("bfloat16") for g in grads.values())


@pytest.mark.parametrize("dtype", HALF)
def test_bp_check_on_a_16_bit_model(dtype):
    """bp.check rebuilds every float in float64 for finite differences and compares the 16-bit
    gradient with JAX's at the dtype's default tolerance."""
    W = bp.param("W", (3, 2), dtype)
    x = bp.input("x", (4, 3), dtype)
    loss = bp.mean(bp.tanh(x @ W) ** 2)
    rng = np.random.default_rng(0)
    values = {k: rng.normal(size=s).astype(dtype) for k, s in (("W", (3, 2)), ("x", (4, 3)))}
    report = bp.check(loss, [W], values, backend="llvm")
    assert report.ok, str(report)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_trains_bfloat16_params_with_float32_state(backend):
    """In bfloat16 b2 = 0.999 rounds to 1.0, so Adam's bias correction 1 - b2**t would be 0 and
    the step NaN/zero: optimizer state and math run in float32, deltas round to bfloat16."""
    W = bp.param("W", (3, 2), "bfloat16")
    x, y = bp.input("x", (8, 3), "bfloat16"), bp.input("y", (8, 2), "bfloat16")
    step = bp.compile_train_step(bp.mean((x @ W - y) ** 2), [W], bp.optim.adam(0.05),
                                 backend=backend, seed=0)
    X = np.random.default_rng(0).normal(size=(8, 3))
    Y = X @ np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    losses = [float(step(x=X, y=Y)) for _ in range(60)]
    assert losses[-1] < 0.05 * losses[0]
    assert step.params["W"].dtype == np.dtype("bfloat16")
    assert {v.dtype for v in step.opt_state.values()} == {np.dtype(np.float32)}
