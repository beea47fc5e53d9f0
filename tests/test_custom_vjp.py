"""bp.custom_vjp (issue 16 item 3) against jax.custom_vjp on every backend: a stable gradient
for a naive log(1+e^x), a straight-through estimator, gradient clipping and gradient reversal
inside the graph; in scan bodies, differentiated twice, and named in the generated code."""

from __future__ import annotations

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.errors import GradientError, ShapeError
from bpcompile.ir.traverse import toposort

jax = pytest.importorskip("jax")
jnp = jax.numpy
jax.config.update("jax_enable_x64", True)

BACKENDS = ["numpy", "llvm", "jax"]


def _np(d):
    return {k: np.asarray(v) for k, v in d.items()}


def _both(prim, fwd, bwd, name):
    """The same rule as bp.custom_vjp and jax.custom_vjp (rules written against `m`)."""
    ours = bp.custom_vjp(lambda *a: prim(bp, *a), lambda *a: fwd(bp, *a),
                         lambda r, g: bwd(bp, r, g), name=name)
    theirs = jax.custom_vjp(lambda *a: prim(jnp, *a))
    theirs.defvjp(lambda *a: fwd(jnp, *a), lambda r, g: bwd(jnp, r, g))
    return ours, theirs


def _sigmoid(m, x):
    return bp.sigmoid(x) if m is bp else jax.nn.sigmoid(x)


def _softplus_rule():
    # ours is written naively (the pipeline stabilises its forward); JAX's forward is written
    # stably, since it computes log(1 + e^800) = inf as written
    def prim(m, x):
        return m.log(1.0 + m.exp(x)) if m is bp else jnp.logaddexp(0.0, x)

    return _both(prim, lambda m, x: (prim(m, x), x),
                 lambda m, x, g: (g * _sigmoid(m, x),), "softplus_naive")


def _straight_through():
    return _both(lambda m, x: m.round(x), lambda m, x: (m.round(x), ()),
                 lambda m, r, g: (g,), "ste_round")


def _clip_grad(c):
    return _both(lambda m, x: x * 1.0, lambda m, x: (x * 1.0, ()),
                 lambda m, r, g: (m.minimum(m.maximum(g, -c), c),), "clip_grad")


def _reverse_grad(lam):
    return _both(lambda m, x: x * 1.0, lambda m, x: (x * 1.0, ()),
                 lambda m, r, g: (g * -lam,), "reverse_grad")


RULES = {"softplus": _softplus_rule, "straight_through": _straight_through,
         "clip": lambda: _clip_grad(0.5), "reversal": lambda: _reverse_grad(0.3)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_matches_jax_custom_vjp(rule, backend, dtype):
    ours, theirs = RULES[rule]()
    x = bp.param("x", (2, 5), dtype)
    w = bp.param("w", (5,), dtype)
    loss = bp.sum(ours(x * w) * bp.cos(w) * 3.0)
    xv = np.array([[-800.0, -2.3, -0.4, 0.6, 1.7], [2.2, -1.1, 30.0, 0.2, 700.0]], dtype)
    if rule != "softplus":
        xv = np.clip(xv, -3, 3)
    wv = np.linspace(0.5, 1.5, 5).astype(dtype)
    value, grads = bp.compile(loss, wrt=[x, w], backend=backend)(x=xv, w=wv)

    def jloss(x, w):
        return jnp.sum(theirs(x * w) * jnp.cos(w) * 3.0)

    ref_v, (gx, gw) = jax.value_and_grad(jloss, argnums=(0, 1))(xv, wv)
    rtol = 1e-12 if dtype == "float64" else 2e-5
    grads = _np(grads)
    assert np.all(np.isfinite(grads["x"])) and np.all(np.isfinite(grads["w"]))
    np.testing.assert_allclose(value, ref_v, rtol=rtol, atol=50 * rtol)  # a sum that cancels
    np.testing.assert_allclose(grads["x"], gx, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grads["w"], gw, rtol=rtol, atol=rtol)


def test_rule_shows_in_generated_code_under_the_users_name():
    @bp.custom_vjp
    def softplus_naive(x):
        return bp.log(1.0 + bp.exp(x))

    softplus_naive.defvjp(lambda x: (softplus_naive(x), x), lambda x, g: (g * bp.sigmoid(x),))
    ours = softplus_naive
    x = bp.param("x", (3,), "float64")
    fn = bp.compile(bp.sum(ours(x)), wrt=[x], backend="numpy")
    src = fn.source()
    assert "softplus_naive = " in src and "dsoftplus_naive_x" in src, src
    assert "grad of softplus_naive = custom_vjp" in src


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_a_scan_body(backend):
    clip, jclip = _clip_grad(0.2)
    W = bp.param("W", (3, 3), "float64")
    h0 = bp.input("h0", (3,), "float64")

    def step(h, _):
        h = clip(bp.tanh(h @ W))
        return h, h

    hT, hs = bp.scan(step, h0, length=4)
    loss = bp.sum(hs * hs) + bp.sum(hT)
    Wv = np.linspace(-1, 1, 9).reshape(3, 3) * 1.5
    h0v = np.array([0.5, -1.0, 2.0])
    value, grads = bp.compile(loss, wrt=[W, h0], backend=backend)(W=Wv, h0=h0v)

    def jloss(W, h0):
        def jstep(h, _):
            h = jclip(jnp.tanh(h @ W))
            return h, h
        hT, hs = jax.lax.scan(jstep, h0, None, length=4)
        return jnp.sum(hs * hs) + jnp.sum(hT)

    ref_v, (gW, gh) = jax.value_and_grad(jloss, argnums=(0, 1))(Wv, h0v)
    np.testing.assert_allclose(value, ref_v, rtol=1e-12)
    np.testing.assert_allclose(_np(grads)["W"], gW, rtol=1e-12)
    np.testing.assert_allclose(_np(grads)["h0"], gh, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_of_grad_differentiates_the_users_backward(backend):
    """A rule with an (intentionally) unusual but differentiable backward: the second
    derivative differentiates bwd, as jax.grad(jax.grad) of a jax.custom_vjp does."""
    ours, theirs = _both(lambda m, x: m.sin(x), lambda m, x: (m.sin(x), x),
                         lambda m, x, g: (g * x * x,), "odd_rule")
    x = bp.input("x", (4,), "float64")
    d1 = bp.grad(bp.sum(ours(x) * x), wrt=[x])[0]
    d2 = bp.grad(bp.sum(d1 * d1), wrt=[x])[0]
    fn = bp.function({"d1": d1, "d2": d2}, backend=backend)
    xv = np.array([-1.2, 0.3, 0.9, 2.0])
    got = _np(fn(x=xv))

    def jd1(x):
        return jax.grad(lambda x: jnp.sum(theirs(x) * x))(x)

    np.testing.assert_allclose(got["d1"], jd1(xv), rtol=1e-12)
    np.testing.assert_allclose(got["d2"], jax.grad(lambda x: jnp.sum(jd1(x) ** 2))(xv),
                               rtol=1e-12)


def test_pipeline_inlines_every_custom_node():
    ours, _ = _reverse_grad(1.0)
    x = bp.param("x", (3,), "float32")
    for passes in (None, []):
        fn = bp.compile(bp.sum(ours(x) ** 2), wrt=[x], passes=passes)
        assert "custom_vjp" not in {n.op for n in toposort(fn.outputs)}
        value, grads = fn(x=np.array([1.0, -2.0, 3.0], np.float32))
        np.testing.assert_allclose(grads["x"], -2 * np.array([1.0, -2.0, 3.0]), rtol=1e-6)


def test_decorator_form_and_one_trace_per_signature():
    @bp.custom_vjp
    def double(x):
        return x * 2.0

    def fwd(x):
        return double(x), ()

    def bwd(res, g):
        return (g * 10.0,)

    double.defvjp(fwd, bwd)
    a = bp.param("a", (2,), "float64")
    b = bp.param("b", (2,), "float64")
    assert double(a).attr("rule") is double(b).attr("rule")
    fn = bp.compile(bp.sum(double(a) + double(b)), wrt=[a, b])
    _, grads = fn(a=np.ones(2), b=np.ones(2))
    np.testing.assert_allclose(grads["a"], [10.0, 10.0])


def test_errors_name_the_function():
    W = bp.param("W", (2,), "float32")
    closes = bp.custom_vjp(lambda x: x * W, lambda x: (x * W, ()), lambda r, g: (g,),
                           name="closes")
    with pytest.raises(GradientError, match=r"custom_vjp closes: the primal function reads"):
        closes(bp.param("x", (2,), "float32"))
    bad = bp.custom_vjp(lambda x: x * 2.0, lambda x: (x * 2.0, ()),
                        lambda r, g: (bp.sum(g),), name="bad_shape")
    with pytest.raises(ShapeError, match=r"bad_shape: bwd's cotangent 0 \(x\) is float32\[\]"):
        bad(bp.param("y", (2,), "float32"))
    undefined = bp.custom_vjp(lambda x: x)
    with pytest.raises(GradientError, match="defvjp"):
        undefined(bp.param("z", (2,), "float32"))
    wrong_count = bp.custom_vjp(lambda x, y: x * y, lambda x, y: (x * y, ()),
                                lambda r, g: (g,), name="two_args")
    with pytest.raises(GradientError, match="tuple of 2 cotangents"):
        wrong_count(bp.param("p", (2,), "float32"), bp.param("q", (2,), "float32"))


def test_bp_check_passes_for_a_true_derivative_rule_in_float32():
    """bp.check retypes the graph (and the rule) to float64 for finite differences; a rule that
    is the true derivative agrees with JAX's derivative of the primal and with them."""
    @bp.custom_vjp
    def softplus_naive(x):
        return bp.log(1.0 + bp.exp(x))

    softplus_naive.defvjp(lambda x: (softplus_naive(x), x), lambda x, g: (g * bp.sigmoid(x),))
    W = bp.param("W", (3, 2), "float32")
    x = bp.input("x", (4, 3), "float32")
    loss = bp.sum(softplus_naive(x @ W))
    report = bp.check(loss, [W], inputs={"x": np.linspace(-2, 2, 12).reshape(4, 3)})
    assert report.ok, str(report)


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_nondiff_argnums_as_jax(backend):
    """A static clip bound: fwd gets it in place, bwd first; one trace per bound."""
    def rule(m, clip):
        f = clip(lambda c, x: x * 1.0, nondiff_argnums=(0,))
        f.defvjp(lambda c, x: (x * 1.0, ()),
                 lambda c, r, g: (m.minimum(m.maximum(g, -c), c),))
        return f

    ours = rule(bp, lambda fn, **kw: bp.custom_vjp(fn, name="clip_grad", **kw))
    theirs = rule(jnp, jax.custom_vjp)
    x = bp.param("x", (4,), "float64")
    loss = bp.sum(ours(0.5, x) * x * 3.0) + bp.sum(ours(2.0, x) ** 2)
    assert ours(0.5, x).attr("rule") is not ours(2.0, x).attr("rule")
    xv = np.array([-1.5, -0.1, 0.3, 2.0])
    _, grads = bp.compile(loss, wrt=[x], backend=backend)(x=xv)
    ref = jax.grad(lambda x: jnp.sum(theirs(0.5, x) * x * 3.0) + jnp.sum(theirs(2.0, x) ** 2))(xv)
    np.testing.assert_allclose(grads["x"], ref, rtol=1e-12)
    with pytest.raises(GradientError, match=r"clip_grad: argument 0 is in nondiff_argnums"):
        ours(x, x)
