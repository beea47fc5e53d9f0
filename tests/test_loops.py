"""bp.fori_loop and bp.while_loop against jax.lax.fori_loop / while_loop, with jax.grad and
jax.jvp, on every backend, float64."""

from __future__ import annotations

import numpy as np
import pytest
from layers_harness import BACKENDS, available, jax, jnp

import bpcompile as bp
from bpcompile.errors import GradientError, ShapeError
from bpcompile.ops.scan import scan_stats

lax = jax.lax
F64 = "float64"
RTOL = 1e-7
rng = np.random.default_rng(16)
VALS = {"W": rng.standard_normal((3, 3)) * 0.5, "x": rng.standard_normal(3),
        "v": rng.standard_normal((3, 3))}


def assert_close(got, want, what: str, rtol=RTOL):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=1e-12,
                               err_msg=what)


def _backends():
    return [b for b in BACKENDS if available(b)]


# --- fori_loop -----------------------------------------------------------------------------


def _bp_fori(checkpoint=None, lower=1, upper=7):
    W, x = bp.param("W", (3, 3), F64), bp.input("x", (3,), F64)

    def body(i, c):  # a dict carry: its keys name the body's arguments
        h = bp.tanh(W @ c["h"] + 0.1 * bp.cast(i, F64))
        return {"h": h, "s": c["s"] + bp.sum(h * h)}

    out = bp.fori_loop(lower, upper, body, {"h": x, "s": bp.const(0.0, F64)},
                       checkpoint=checkpoint)
    return out["s"] + bp.sum(bp.sin(out["h"])), W, x


def _jax_fori(W, x, lower=1, upper=7):
    def body(i, c):
        h = jnp.tanh(W @ c["h"] + 0.1 * i)
        return {"h": h, "s": c["s"] + jnp.sum(h * h)}

    out = lax.fori_loop(lower, upper, body, {"h": x, "s": jnp.zeros((), x.dtype)})
    return out["s"] + jnp.sum(jnp.sin(out["h"]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("checkpoint", [None, 2])
def test_fori_loop_grad_and_jvp_match_jax(backend, checkpoint):
    if not available(backend):
        pytest.skip(f"{backend} unavailable")
    loss, W, x = _bp_fori(checkpoint)
    gW = bp.grad(loss, W)
    _, loss_t = bp.jvp(loss, W, bp.input("v", (3, 3), F64))
    f = bp.function({"loss": loss, "gW": gW, "loss_t": loss_t}, backend=backend)
    r = f(**VALS)
    jf = jax.jit(lambda W, x, v: (_jax_fori(W, x), jax.grad(_jax_fori)(W, x),
                                  jax.jvp(lambda w: _jax_fori(w, x), (W,), (v,))[1]))
    jl, jg, jt = jf(VALS["W"], VALS["x"], VALS["v"])
    assert_close(r["loss"], jl, f"{backend}: loss")
    assert_close(r["gW"], jg, f"{backend}: d loss / dW")
    assert_close(r["loss_t"], jt, f"{backend}: forward-mode tangent")


def test_fori_loop_checkpoint_stores_fewer_carries():
    plain, ck = _bp_fori(None)[0], _bp_fori(3)[0]
    (row,) = scan_stats(plain)
    (row_ck,) = scan_stats(ck)
    assert row["saved_carries"] == 7 and row_ck["saved_carries"] == 2


def test_fori_loop_hessian_vector_product_matches_jax():
    """Forward-over-reverse through the loop (the JVP of the BPTT gradient)."""
    loss, W, _ = _bp_fori()
    _, hv = bp.jvp(bp.grad(loss, W), W, bp.input("v", (3, 3), F64))
    r = bp.function({"hv": hv}, backend="numpy")(**VALS)
    jhv = jax.jvp(jax.grad(_jax_fori), (VALS["W"], VALS["x"]),
                  (VALS["v"], np.zeros(3)))[1]
    assert_close(r["hv"], jhv, "H v")


def test_fori_loop_tuple_carry_index_and_empty_range():
    a = bp.input("a", (2,), F64)
    t = bp.fori_loop(-2, 3, lambda k, c: (c[0] * 2.0, c[1] + bp.cast(k, F64)), (a, 0.5))
    r = bp.function({"p": t[0], "s": t[1]})(a=np.array([1.0, -1.0]))
    assert_close(r["p"], [32.0, -32.0], "doubled five times")
    assert_close(r["s"], 0.5 + sum(range(-2, 3)), "sum of the indices")
    assert bp.fori_loop(3, 3, lambda k, c: c * 2.0, a) is a  # zero trips: init itself


def test_fori_loop_errors_name_the_loop():
    a = bp.input("a", (2,), F64)
    with pytest.raises(TypeError, match="fori_loop: upper must be a Python int"):
        bp.fori_loop(0, bp.input("n", (), "int32"), lambda i, c: c, a)
    with pytest.raises(ShapeError, match=r"fori_loop: body grow returns a carry of structure"):
        def grow(i, c):
            return (c, c)

        bp.fori_loop(0, 2, grow, a)
    with pytest.raises(TypeError, match="init must be a tensor"):
        bp.fori_loop(0, 2, lambda i, c: c, "a")
