"""bp.custom_jvp (issue 16 item 3) against jax.custom_jvp on every backend, forward mode (the
rule) and reverse mode (the rule transposed): a stable log(1+e^x), a sqrt with a safe gradient
at 0, a straight-through round, a tuple-valued function, nondiff_argnums and defjvps; second
order, names in the generated code, and the errors."""

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
X = np.array([[-800.0, -2.3, 0.0, 0.6], [2.2, 0.0, 30.0, 700.0]])


def _sig(m, x):
    return bp.sigmoid(x) if m is bp else jax.nn.sigmoid(x)


def _both(prim, rule, name, **kw):
    """The same primal and JVP rule as bp.custom_jvp and jax.custom_jvp (written against m)."""
    ours = bp.custom_jvp(lambda *a: prim(bp, *a), name=name, **kw)
    ours.defjvp(lambda *a: rule(bp, ours, *a))
    theirs = jax.custom_jvp(lambda *a: prim(jnp, *a), **kw)
    theirs.defjvp(lambda *a: rule(jnp, theirs, *a))
    return ours, theirs


def _log1pexp():
    # naive primal (our pipeline stabilises it; JAX's is written stably, as it runs as written)
    def prim(m, x):
        return m.log(1.0 + m.exp(x)) if m is bp else jnp.logaddexp(0.0, x)

    return _both(prim, lambda m, f, p, t: (f(*p), t[0] * _sig(m, p[0])), "log1pexp")


def _safe_sqrt():
    # gradient 0 (not inf/NaN) at 0, as a jnp.where-guarded rule gives
    def rule(m, f, p, t):
        (x,), (tx,) = p, t
        y = f(x)
        return y, m.where(x > 0.0, tx * 0.5 / m.sqrt(m.maximum(x, 1e-300)), 0.0 * tx)

    return _both(lambda m, x: m.sqrt(x), rule, "safe_sqrt")


def _ste_round():
    return _both(lambda m, x: m.round(x), lambda m, f, p, t: (f(*p), t[0]), "ste_round")


def _sincos():
    # a tuple-valued function: both outputs' tangents from one rule
    def rule(m, f, p, t):
        (x, w), (tx, tw) = p, t
        s, c = f(x, w)
        return (s, c), (c * (tx * w + x * tw), -s * (tx * w + x * tw))

    return _both(lambda m, x, w: (m.sin(x * w), m.cos(x * w)), rule, "sincos")


def _scaled():
    # nondiff_argnums: a static power k, passed to the rule first
    def rule(m, f, k, p, t):
        (x,), (tx,) = p, t
        return f(k, x), tx * k * x ** (k - 1)

    return _both(lambda m, k, x: x ** k, rule, "power", nondiff_argnums=(0,))


def _model(f, m, x, w, kind):
    """A small loss around the custom function (the same for both libraries)."""
    if kind == "sincos":
        s, c = f(x, w)
        return m.sum(s * c + 2.0 * c)
    if kind == "power":
        return m.sum(f(3, x * w) * w)
    z = x * w if kind != "safe_sqrt" else x * x * w
    return m.sum(f(z) * m.cos(w) * 3.0)


RULES = {"log1pexp": _log1pexp, "safe_sqrt": _safe_sqrt, "ste_round": _ste_round,
         "sincos": _sincos, "power": _scaled}


def _inputs(kind):
    x = X.copy() if kind == "log1pexp" else np.clip(X, -3, 3)
    return x, np.linspace(0.5, 1.5, 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(RULES))
def test_reverse_and_forward_match_jax_custom_jvp(kind, backend):
    ours, theirs = RULES[kind]()
    xv, wv = _inputs(kind)
    x = bp.param("x", xv.shape, "float64")
    w = bp.param("w", wv.shape, "float64")
    loss = _model(ours, bp, x, w, kind)
    tx, tw = bp.input("tx", xv.shape, "float64"), bp.input("tw", wv.shape, "float64")
    _, lt = bp.jvp(loss, [x, w], [tx, tw])
    gx, gw = bp.grad(loss, wrt=[x, w])
    fn = bp.function({"loss": loss, "gx": gx, "gw": gw, "lt": lt}, backend=backend)
    txv, twv = np.cos(np.arange(8.0)).reshape(2, 4), np.sin(np.arange(4.0))
    got = {k: np.asarray(v) for k, v in fn(x=xv, w=wv, tx=txv, tw=twv).items()}

    def jloss(x, w):
        return _model(theirs, jnp, x, w, kind)

    ref_v, (rx, rw) = jax.jit(jax.value_and_grad(jloss, argnums=(0, 1)))(xv, wv)
    _, ref_t = jax.jit(lambda x, w, a, b: jax.jvp(jloss, (x, w), (a, b)))(xv, wv, txv, twv)
    for k, ref in (("loss", ref_v), ("gx", rx), ("gw", rw), ("lt", ref_t)):
        assert np.all(np.isfinite(got[k])), (k, got[k])
        np.testing.assert_allclose(got[k], ref, rtol=1e-12, atol=1e-300, err_msg=k)


def test_rule_and_transpose_show_in_generated_code_under_the_users_name():
    ours, _ = _log1pexp()
    x = bp.param("x", (3,), "float64")
    W = bp.param("W", (3, 3), "float64")
    y = ours(W @ x)
    src = bp.compile(bp.sum(y * y), wrt=[x, W], backend="numpy").source()
    assert "dlog1pexp_a0 = " in src and "log1pexp = softplus(" in src, src
    _, yt = bp.jvp(y, x, bp.input("t", (3,), "float64"))
    assert "log1pexp_t = " in bp.function({"yt": yt}, backend="numpy").source()


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_second_order_differentiates_the_rule_as_jax_does(backend):
    """grad of grad, and forward-over-reverse, through a rule that calls the function."""
    ours, theirs = _log1pexp()
    x = bp.input("x", (4,), "float64")
    d1 = bp.grad(bp.sum(ours(x) * x), wrt=x)
    d2 = bp.grad(bp.sum(d1 * d1), wrt=x)
    _, hv = bp.jvp(d1, x, bp.input("v", (4,), "float64"))
    xv, vv = np.array([-1.2, 0.3, 0.9, 2.0]), np.array([0.5, -1.0, 2.0, 0.25])
    got = bp.function({"d2": d2, "hv": hv}, backend=backend)(x=xv, v=vv)

    def jd1(x):
        return jax.grad(lambda x: jnp.sum(theirs(x) * x))(x)

    np.testing.assert_allclose(got["d2"], jax.grad(lambda x: jnp.sum(jd1(x) ** 2))(xv),
                               rtol=1e-12)
    np.testing.assert_allclose(got["hv"], jax.jvp(jd1, (xv,), (vv,))[1], rtol=1e-12)


def test_defjvps_jacobian_and_scan_body():
    @bp.custom_jvp
    def mulsin(x, y):
        return x * bp.sin(y)

    mulsin.defjvps(lambda tx, ans, x, y: tx * bp.sin(y),
                   lambda ty, ans, x, y: ty * x * bp.cos(y))
    h0 = bp.input("h0", (3,), "float64")
    W = bp.param("W", (3,), "float64")

    def step(h, _):
        return mulsin(h, W) + 0.5, h

    hT, _ = bp.scan(step, h0, length=3)
    jac = bp.jacobian(hT, W, mode="rev")
    jf = bp.jacobian(hT, W, mode="fwd")
    Wv, hv = np.array([0.3, -1.2, 2.0]), np.array([1.0, -0.5, 0.25])
    got = bp.function({"jr": jac, "jf": jf}, backend="numpy")(W=Wv, h0=hv)

    def jh(W):
        h = hv
        for _ in range(3):
            h = h * jnp.sin(W) + 0.5
        return h

    ref = jax.jacrev(jh)(Wv)
    np.testing.assert_allclose(got["jr"], ref, rtol=1e-12)
    np.testing.assert_allclose(got["jf"], ref, rtol=1e-12)


def test_pipeline_inlines_every_custom_jvp_node_and_check_passes():
    ours, _ = _log1pexp()
    W = bp.param("W", (3, 2), "float32")
    x = bp.input("x", (4, 3), "float32")
    loss = bp.sum(ours(x @ W))
    fn = bp.compile(loss, wrt=[W], backend="llvm")
    assert not {"custom_jvp", "result"} & {n.op for n in toposort(fn.outputs)}
    report = bp.check(loss, [W], inputs={"x": np.linspace(-2, 2, 12).reshape(4, 3)})
    assert report.ok, str(report)


def test_errors_name_the_function():
    x = bp.param("x", (2,), "float32")
    nonlinear = bp.custom_jvp(lambda x: x * x, jvp=lambda p, t: (p[0] * p[0], t[0] * t[0]),
                              name="square_t")
    y = nonlinear(x)
    _, yt = bp.jvp(y, x, np.ones(2, np.float32))  # forward mode runs the rule as written
    assert yt.shape == (2,)
    with pytest.raises(GradientError, match=r"custom_jvp square_t: reverse mode .* linear"):
        bp.grad(bp.sum(y), wrt=x)
    W = bp.param("W", (2,), "float32")
    closes = bp.custom_jvp(lambda x: x * W, jvp=lambda p, t: (p[0] * W, t[0] * W),
                           name="closes")
    with pytest.raises(GradientError, match=r"custom_jvp closes: the primal function reads"):
        closes(x)
    bad = bp.custom_jvp(lambda x: x * 2.0, jvp=lambda p, t: (p[0] * 2.0, bp.sum(t[0])),
                        name="bad_shape")
    with pytest.raises(ShapeError, match=r"bad_shape: the rule's tangent output 0 is float32\[\]"):
        bad(x)
    with pytest.raises(GradientError, match="defjvp"):
        bp.custom_jvp(lambda x: x)(x)
    static = bp.custom_jvp(lambda k, x: x * k, jvp=lambda k, p, t: (p[0] * k, t[0] * k),
                           nondiff_argnums=(0,), name="scale")
    with pytest.raises(GradientError, match=r"scale: argument 0 is in nondiff_argnums"):
        static(x, x)


def test_unsimplified_graph_prints_the_tuple_call():
    """A graph evaluated without the pipeline (the reference evaluation of a raw graph, and
    bp.check's JAX oracle) calls the primal as a generated function returning both outputs."""
    from bpcompile.backends.jax.translate import to_jax_function
    from bpcompile.backends.numpy.codegen import evaluate

    ours, _ = _sincos()
    x = bp.input("x", (3,), "float64")
    w = bp.input("w", (3,), "float64")
    s, c = ours(x, w)
    xv, wv = np.array([0.1, -0.7, 2.0]), np.array([1.5, 0.5, -1.0])
    got = evaluate([s, c], {"x": xv, "w": wv})
    np.testing.assert_allclose(got[0], np.sin(xv * wv), rtol=1e-15)
    np.testing.assert_allclose(got[1], np.cos(xv * wv), rtol=1e-15)
    jf, src = to_jax_function([c], [x, w])
    assert "def sincos" in src, src
    np.testing.assert_allclose(np.asarray(jf(xv, wv)[0]), np.cos(xv * wv), rtol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_a_scan_body(backend):
    """BPTT through a scan whose step calls a custom_jvp (a rule that halves tanh's slope),
    and forward mode through the same scan, against jax.lax.scan."""
    ours, theirs = _both(lambda m, x: m.tanh(x),
                         lambda m, f, p, t: (f(*p), t[0] * (1.0 - m.tanh(p[0]) ** 2) * 0.5),
                         "half_tanh")
    W = bp.param("W", (3, 3), "float64")
    h0 = bp.input("h0", (3,), "float64")

    def step(h, _):
        h = ours(h @ W)
        return h, h

    hT, hs = bp.scan(step, h0, length=4)
    loss = bp.sum(hs * hs) + bp.sum(hT)
    _, lt = bp.jvp(loss, W, bp.input("tW", (3, 3), "float64"))
    gW = bp.grad(loss, wrt=W)
    Wv, h0v, tWv = np.linspace(-1, 1, 9).reshape(3, 3), np.array([0.5, -1.0, 2.0]), np.eye(3)
    got = bp.function({"gW": gW, "lt": lt}, backend=backend)(W=Wv, h0=h0v, tW=tWv)

    def jloss(W):
        def jstep(h, _):
            h = theirs(h @ W)
            return h, h
        hT, hs = jax.lax.scan(jstep, h0v, None, length=4)
        return jnp.sum(hs * hs) + jnp.sum(hT)

    np.testing.assert_allclose(got["gW"], jax.grad(jloss)(Wv), rtol=1e-12)
    np.testing.assert_allclose(got["lt"], jax.jvp(jloss, (Wv,), (tWv,))[1], rtol=1e-12)
