"""bp.fori_loop and bp.while_loop against jax.lax.fori_loop / while_loop, with jax.grad and
jax.jvp, on every backend, float64."""

from __future__ import annotations

import numpy as np
import pytest
from layers_harness import BACKENDS, available, jax, jnp

import bpcompile as bp
from bpcompile.errors import DTypeError, GradientError, ShapeError
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
        bp.fori_loop(0, 2.0, lambda i, c: c, a)
    with pytest.raises(TypeError, match=r"upper must be a Python int or an int32 scalar tensor, "
                                        r"got float64\[\]"):
        bp.fori_loop(0, bp.input("n", (), F64), lambda i, c: c, a)
    with pytest.raises(ShapeError, match=r"fori_loop: body grow returns a carry of structure"):
        def grow(i, c):
            return (c, c)

        bp.fori_loop(0, 2, grow, a)
    with pytest.raises(TypeError, match="init must be a tensor"):
        bp.fori_loop(0, 2, lambda i, c: c, "a")


# --- while_loop ----------------------------------------------------------------------------


def _bp_while(max_steps=None):
    x, E = bp.param("x", (3,), F64), bp.param("E", (5, 3), F64)
    n = bp.input("n", (), "int32")

    def cond(c):
        return (c[0] < n) & (bp.sum(c[1]) < 50.0)

    def body(c):  # an int counter carry, indexing a table
        i, v = c
        return (i + 1, bp.tanh(v) * 2.0 + bp.take(E, i, 0))

    return bp.while_loop(cond, body, (bp.const(0, "int32"), x), max_steps=max_steps), x, E


def _jax_while(x, E, n):
    def body(c):
        i, v = c
        return (i + 1, jnp.tanh(v) * 2.0 + E[i])

    return lax.while_loop(lambda c: (c[0] < n) & (jnp.sum(c[1]) < 50.0), body,
                          (jnp.int32(0), x))


WVALS = {"x": rng.standard_normal(3), "E": rng.standard_normal((5, 3))}


@pytest.mark.parametrize("backend", BACKENDS)
def test_while_loop_forward_matches_jax(backend):
    if not available(backend):
        pytest.skip(f"{backend} unavailable")
    (i, v), _, _ = _bp_while()
    f = bp.function({"i": i, "v": v}, backend=backend)
    for n in (0, 3, 5):  # no step, stopped by the counter, (with these values) by the sum
        r = f(n=np.int32(n), **WVALS)
        ji, jv = jax.jit(_jax_while)(WVALS["x"], jnp.asarray(WVALS["E"]), n)
        assert int(r["i"]) == int(ji) and np.asarray(r["i"]).dtype == np.int32
        assert_close(r["v"], jv, f"{backend}: final carry, n={n}")


def test_while_loop_in_reverse_mode_names_the_fix():
    (_, v), x, _ = _bp_while()
    with pytest.raises(GradientError, match=r"bp\.while_loop \(body body.*reverse mode.*"
                                            r"max_steps.*fori_loop"):
        bp.grad(bp.sum(v), x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_while_loop_forward_mode_matches_jax(backend):
    """bp.jvp through the unbounded loop (JAX's rule: the loop carries the tangents), and
    the forward-mode Jacobian built on it."""
    if not available(backend):
        pytest.skip(f"{backend} unavailable")
    (_, v), x, E = _bp_while()
    loss = bp.sum(v * v)
    _, t = bp.jvp(loss, [x, E], [bp.input("vx", (3,), F64), bp.input("vE", (5, 3), F64)])
    J = bp.jacobian(v, x, mode="fwd")
    f = bp.function({"t": t, "J": J}, backend=backend)
    vx, vE = rng.standard_normal(3), rng.standard_normal((5, 3))

    def jloss(x, E, n):
        return jnp.sum(_jax_while(x, E, n)[1] ** 2)

    for n in (0, 3, 5):
        r = f(n=np.int32(n), vx=vx, vE=vE, **WVALS)
        jt = jax.jvp(lambda x, E: jloss(x, E, n), (WVALS["x"], jnp.asarray(WVALS["E"])),
                     (vx, jnp.asarray(vE)))[1]
        jJ = jax.jacfwd(lambda x: _jax_while(x, jnp.asarray(WVALS["E"]), n)[1])(WVALS["x"])
        assert_close(r["t"], jt, f"{backend}: tangent, n={n}")
        assert_close(r["J"], jJ, f"{backend}: forward Jacobian, n={n}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bounded_while_loop_gradient_matches_jax(backend):
    """max_steps: JAX's own bounded while (a fori_loop that masks finished steps) as oracle."""
    if not available(backend):
        pytest.skip(f"{backend} unavailable")
    (_, v), x, E = _bp_while(max_steps=6)
    loss = bp.sum(v * v)
    gx, gE = bp.grad(loss, [x, E])

    def jloss(x, E, n):
        def body(_, c):
            i, v = c
            go = (i < n) & (jnp.sum(v) < 50.0)
            return (jnp.where(go, i + 1, i), jnp.where(go, jnp.tanh(v) * 2.0 + E[i], v))

        _, v = lax.fori_loop(0, 6, body, (jnp.int32(0), x))
        return jnp.sum(v * v)

    f = bp.function({"loss": loss, "gx": gx, "gE": gE}, backend=backend)
    jf = jax.jit(jax.value_and_grad(jloss, (0, 1)))
    for n in (2, 4):  # (masked steps still run the body: with n=5 it would read E[5])
        r = f(n=np.int32(n), **WVALS)
        jl, (jgx, jgE) = jf(WVALS["x"], jnp.asarray(WVALS["E"]), n)
        assert_close(r["loss"], jl, f"{backend}: bounded loss, n={n}")
        # ... and it is the unbounded loop's value while the bound is not reached
        _, jv = _jax_while(WVALS["x"], jnp.asarray(WVALS["E"]), n)
        assert_close(r["loss"], np.sum(np.asarray(jv) ** 2), f"{backend}: = unbounded, n={n}")
        assert_close(r["gx"], jgx, f"{backend}: d/dx, n={n}")
        assert_close(r["gE"], jgE, f"{backend}: d/dE, n={n}")


def test_while_loop_errors_name_the_function():
    x = bp.input("x", (3,), F64)
    with pytest.raises(ShapeError, match="while_loop: cond bad_cond must return a bool scalar"):
        def bad_cond(c):
            return c > 0.0

        bp.while_loop(bad_cond, lambda c: c, x)
    with pytest.raises(ShapeError, match="while_loop: body widen returns carry c of shape"):
        def widen(c):
            return bp.concatenate([c, c], 0)

        bp.while_loop(lambda c: bp.sum(c) < 1.0, widen, x)
    with pytest.raises(TypeError, match="while_loop: max_steps must be a Python int"):
        bp.while_loop(lambda c: bp.sum(c) < 1.0, lambda c: c, x, max_steps=2.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_while_loop_edge_cases_agree_on_every_backend(backend):
    """A dict carry with an unchanged entry, a while nested in a fori_loop whose bound reads
    the index, and a loop whose cond is false at the start."""
    if not available(backend):
        pytest.skip(f"{backend} unavailable")
    x, k = bp.input("x", (3,), F64), bp.input("k", (2, 2), F64)
    out = bp.while_loop(lambda c: c["n"] < 3.0,
                        lambda c: {"n": c["n"] + 1.0, "v": c["v"] * 2.0, "k": c["k"]},
                        {"n": bp.const(0.0, F64), "v": x, "k": k})

    def outer(i, s):
        return bp.while_loop(lambda c: bp.sum(c) < 10.0 * bp.cast(i + 1, F64),
                             lambda c: c + 1.0, s)

    nested = bp.fori_loop(0, 3, outer, x)
    never = bp.while_loop(lambda c: bp.sum(c) < -1e9, lambda c: c * 0.0, x)
    r = bp.function({"n": out["n"], "v": out["v"], "k": out["k"], "nested": nested,
                     "never": never}, backend=backend)(x=np.array([1.0, 2.0, 3.0]), k=np.eye(2))
    assert_close(r["n"], 3.0, "counter")
    assert_close(r["v"], [8.0, 16.0, 24.0], "doubled three times")
    assert_close(r["k"], np.eye(2), "unchanged carry")
    assert_close(r["nested"], [9.0, 10.0, 11.0], "sums past 10, 20, 30 in turn")
    assert_close(r["never"], [1.0, 2.0, 3.0], "no step")


def test_fori_loop_with_a_tensor_bound_is_a_while_loop():
    """As in JAX: a traced bound makes the trip count data (evaluated, not differentiable)."""
    x, n = bp.param("x", (2,), F64), bp.input("n", (), "int32")
    out = bp.fori_loop(1, n, lambda i, c: c * 2.0 + bp.cast(i, F64), x)
    f = bp.function({"out": out}, backend="numpy")
    for nv in (0, 1, 4):
        want = lax.fori_loop(1, nv, lambda i, c: c * 2.0 + i, np.array([1.0, -1.0]))
        assert_close(f(x=np.array([1.0, -1.0]), n=np.int32(nv))["out"], want, f"n={nv}")
    with pytest.raises(GradientError, match="while_loop"):
        bp.grad(bp.sum(out), x)


def test_fori_loop_carry_mismatch_names_the_carry():
    a = bp.input("a", (2,), F64)
    with pytest.raises(ShapeError, match=r"fori_loop: body grow returns carry c of shape \[4\]"):
        def grow(i, c):
            return bp.concatenate([c, c], 0)

        bp.fori_loop(0, 2, grow, a)
    with pytest.raises(DTypeError, match="fori_loop: body to_int returns carry c as int32"):
        def to_int(i, c):
            return i + bp.const(np.zeros(2, np.int32))

        bp.fori_loop(0, 2, to_int, a)


def test_bounded_while_loop_checkpoint_gives_the_same_gradient():
    plain, x, E = _bp_while(max_steps=6)
    gx = bp.grad(bp.sum(plain[1] ** 2), x)
    xs, Es = bp.param("x", (3,), F64), bp.param("E", (5, 3), F64)
    n = bp.input("n", (), "int32")
    ck = bp.while_loop(lambda c: (c[0] < n) & (bp.sum(c[1]) < 50.0),
                       lambda c: (c[0] + 1, bp.tanh(c[1]) * 2.0 + bp.take(Es, c[0], 0)),
                       (bp.const(0, "int32"), xs), max_steps=6, checkpoint=3)
    loss_ck = bp.sum(ck[1] ** 2)
    (row,) = scan_stats(loss_ck)
    assert row["saved_carries"] == 2
    g1 = bp.function({"g": gx})(n=np.int32(4), **WVALS)["g"]
    g2 = bp.function({"g": bp.grad(loss_ck, xs)})(n=np.int32(4), **WVALS)["g"]
    assert_close(g2, g1, "checkpointed = stored carries")
    with pytest.raises(ValueError, match="checkpoint= needs max_steps"):
        bp.while_loop(lambda c: bp.sum(c) < 1.0, lambda c: c, xs, checkpoint=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_while_loop_jvp_shares_its_primal_loop(backend):
    """y and its tangent compiled together run one loop: the tangent loop carries the primal
    (rewrite/loop_share.py), as jax.jvp of a while_loop does; the forward Jacobian is one
    batched tangent loop (autodiff/batched.py) sharing it too; values still match JAX."""
    from bpcompile.ir.traverse import toposort
    from bpcompile.rewrite.pipeline import run

    if not available(backend):
        pytest.skip(f"{backend} unavailable")
    (i, v), x, E = _bp_while()
    y, y_t = bp.jvp(v, [x, E], [bp.input("vx", (3,), F64), bp.input("vE", (5, 3), F64)])
    outs, _ = run([i, v, y_t])
    assert [n.op for n in toposort(outs)].count("while_loop") == 1
    raw = [n.op for n in toposort([i, v, y_t])].count("while_loop")
    assert raw == 2  # as built: the primal loop, and the tangent loop running it again
    J = bp.jacobian(v, x, mode="fwd")  # all 3 seeds in one batched tangent loop, no scan
    ops = [n.op for n in toposort(run([v, J])[0])]
    assert (ops.count("while_loop"), ops.count("scan")) == (1, 0), ops
    f = bp.function({"i": i, "v": v, "y": y, "t": y_t, "J": J}, backend=backend)
    vx, vE = rng.standard_normal(3), rng.standard_normal((5, 3))
    for n in (0, 4):
        r = f(n=np.int32(n), vx=vx, vE=vE, **WVALS)
        (ji, jv), (_, jt) = jax.jvp(lambda x, E: _jax_while(x, E, n), (
            WVALS["x"], jnp.asarray(WVALS["E"])), (vx, jnp.asarray(vE)))
        assert int(r["i"]) == int(ji)
        jJ = jax.jacfwd(lambda x: _jax_while(x, jnp.asarray(WVALS["E"]), n)[1])(WVALS["x"])
        assert_close(r["J"], jJ, f"{backend}: forward Jacobian, n={n}")
        for k, want in (("v", jv), ("y", jv), ("t", jt)):
            assert_close(r[k], want, f"{backend}: {k}, n={n}")
