"""bp.jacobian (rev/fwd/auto), bp.hessian and bp.vjp against jax.jacrev / jax.jacfwd /
jax.hessian / jax.vjp: every op-table row, whole models on every backend, composition of
bp.jvp and bp.grad in both orders, hypothesis random graphs through jvp."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import op_table as T
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bpcompile as bp
from bpcompile.backends.numpy.codegen import evaluate

jax = pytest.importorskip("jax")
jnp = jax.numpy
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import graph_recipes as gr  # noqa: E402

IDS = [r.name for r in T.ROWS]
BACKENDS = ["numpy", "llvm", "jax"]


def assert_close(ours, ref, rtol=1e-7, what=""):
    ref = np.asarray(ref)
    assert np.shape(ours) == ref.shape, (what, np.shape(ours), ref.shape)
    atol = rtol * max(1.0, float(np.max(np.abs(ref)))) if ref.size else 0.0
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol, err_msg=what)


def _row(name):
    row = T.BY_NAME[name]
    P, I, f, loss, values = T.build(row, "float64")
    Pj = {k: jnp.asarray(values[k]) for k in row.params}
    Ij = {k: jnp.asarray(v) for k, v in values.items() if k not in row.params}
    return row, P, f, loss, values, Pj, Ij


@pytest.mark.parametrize("mode", ["rev", "fwd"])
@pytest.mark.parametrize("name", IDS)
def test_jacobian_matches_jax(name, mode):
    row, P, f, loss, values, Pj, Ij = _row(name)
    J = bp.jacobian(f, list(P.values()), mode=mode)
    ours = evaluate(J, values)
    # JAX refuses forward mode through a jax.custom_vjp function; ours transposes the user's
    # VJP, so the custom rule's Jacobian (jacrev) is the reference there
    jac = jax.jacrev if mode == "rev" or "custom_vjp" in row.ops else jax.jacfwd
    ref = jac(lambda p: row.jf(p, Ij))(Pj)
    for k, j in zip(row.params, ours):
        assert_close(j, ref[k], 1e-7, f"{name} d/d{k} ({mode})")


@pytest.mark.parametrize("name", IDS)
def test_vjp_matches_jax(name):
    row, P, f, loss, values, Pj, Ij = _row(name)
    ct = bp.input("ct", f.shape, "float64")
    values["ct"] = np.random.default_rng(5).standard_normal(f.shape)
    ours = evaluate(bp.vjp(f, list(P.values()), ct), values)
    _, pull = jax.vjp(lambda p: row.jf(p, Ij), Pj)
    (ref,) = pull(jnp.asarray(values["ct"]))
    for k, g in zip(row.params, ours):
        assert_close(g, ref[k], 1e-7, f"{name} vjp d{k}")


@pytest.mark.parametrize("name", [r.name for r in T.ROWS if r.smooth][::3])
def test_hessian_matches_jax(name):
    row, P, f, loss, values, Pj, Ij = _row(name)
    H = bp.hessian(loss, list(P.values()))
    flat = [h for hs in H for h in hs]
    ours = evaluate(flat, values)
    ref = jax.hessian(lambda p: T.jax_loss(row)(p, Ij))(Pj)
    it = iter(ours)
    for a in row.params:
        for b in row.params:
            assert_close(next(it), ref[a][b], 1e-7, f"{name} d2/d{a}d{b}")


# ---- whole models, compiled on every backend ------------------------------------------------

def _mlp():
    x = bp.input("x", (4, 3), "float64")
    W1, b1 = bp.param("W1", (3, 5), "float64"), bp.param("b1", (5,), "float64")
    W2 = bp.param("W2", (5, 2), "float64")
    h1 = bp.tanh((x @ W1 + b1).named("z1")).named("h1")
    y = (h1 @ W2).named("y")

    def jf(p, x):
        return jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"]
    return y, {"W1": W1, "b1": b1, "W2": W2}, {"x": x}, jf


def _rnn():
    xs = bp.input("xs", (5, 2, 3), "float64")
    Wx, Wh = bp.param("Wx", (3, 4), "float64"), bp.param("Wh", (4, 4), "float64")
    h0 = bp.const(np.zeros((2, 4)), "float64")

    def step(h, x):
        h = bp.tanh(x @ Wx + h @ Wh)
        return h, h
    hT, hs = bp.scan(step, h0, xs)
    y = bp.sum(hs, axis=0) + hT

    def jf(p, xs):
        def st(h, x):
            h = jnp.tanh(x @ p["Wx"] + h @ p["Wh"])
            return h, h
        hT, hs = jax.lax.scan(st, jnp.zeros((2, 4)), xs)
        return jnp.sum(hs, axis=0) + hT
    return y, {"Wx": Wx, "Wh": Wh}, {"xs": xs}, jf


def _attention():
    x = bp.input("x", (3, 4), "float64")
    Wq, Wk = bp.param("Wq", (4, 4), "float64"), bp.param("Wk", (4, 4), "float64")
    q, k = x @ Wq, x @ Wk
    y = bp.softmax(q @ k.T / 2.0, axis=-1) @ x

    def jf(p, x):
        s = (x @ p["Wq"]) @ (x @ p["Wk"]).T / 2.0
        return jax.nn.softmax(s, axis=-1) @ x
    return y, {"Wq": Wq, "Wk": Wk}, {"x": x}, jf


def _values(P, I, seed=0):
    r = np.random.default_rng(seed)
    return {k: 0.5 * r.standard_normal(n.shape) for k, n in {**P, **I}.items()}


# whole models through every transform on every backend: test_transforms_models.py


def test_one_program_not_one_function_per_row():
    """The rows of a Jacobian are one scan, whatever the output size."""
    y, P, I, jf = _mlp()
    fn = bp.function({"J": bp.jacobian(y, P["W1"], mode="rev")}, backend="numpy")
    src = fn.source()
    assert src.count("def jacobian_row_body") == 1 and "over 8 steps" in src, src


def test_auto_mode_picks_by_size():
    W = bp.param("W", (6, 6), "float64")
    wide = bp.sum(bp.tanh(W), axis=0)  # 6 outputs, 36 inputs -> reverse
    tall = bp.reshape(bp.tanh(W), (36, 1)) @ bp.const(np.ones((1, 2)), "float64")  # 72 > 36
    src_w = bp.function({"J": bp.jacobian(wide, W)}).source()
    src_t = bp.function({"J": bp.jacobian(tall, W)}).source()
    assert "jacobian_row" in src_w
    assert "jacobian_row" not in src_t and "W_t" in src_t  # forward: one batched pass


def test_forward_jacobian_batched_or_scan():
    """Forward Jacobians are one batched pass (a matrix-matrix product for a dense layer);
    a graph with an op that has no batched rule (scan) falls back to a scan over seeds."""
    from bpcompile.autodiff.jacobian import jacobian_fwd
    from bpcompile.ir.traverse import toposort

    y, P, I, jf = _mlp()
    ws = list(P.values())
    batched = jacobian_fwd([y], ws)[0]
    looped = jacobian_fwd([y], ws, batched=False)[0]
    assert not any(n.op == "scan" for n in toposort(batched))
    assert any(n.op == "scan" for n in toposort(looped))
    values = _values(P, I)
    for a, b in zip(evaluate(batched, values), evaluate(looped, values)):
        assert_close(a, b, 1e-12)
    y, P, I, jf = _rnn()
    src = bp.function({"J": bp.jacobian(y, P["Wx"], mode="fwd")}).source()
    assert "jacobian_column" in src


# ---- composition with bp.grad -----------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_jvp_of_grad_is_hvp_and_grad_of_jvp(backend):
    y, P, I, jf = _mlp()
    loss = bp.sum(bp.sin(y))
    ws = list(P.values())
    V = [bp.input("v_" + k, p.shape, "float64") for k, p in P.items()]
    values = _values(P, I)
    r = np.random.default_rng(7)
    values.update({"v_" + k: r.standard_normal(p.shape) for k, p in P.items()})
    grads = bp.grad(loss, ws)
    _, hvp = bp.jvp(grads, ws, V)                    # forward-over-reverse
    _, lt = bp.jvp(loss, ws, V)                      # a directional derivative ...
    gl = bp.grad(lt, ws)                             # ... differentiated in reverse
    outs = {f"hvp_{k}": h for k, h in zip(P, hvp)}
    outs.update({f"gl_{k}": g for k, g in zip(P, gl)})
    fn = bp.function(outs, backend=backend)
    got = fn(**{k: values[k] for k in fn.signature.names})
    Pj = {k: jnp.asarray(values[k]) for k in P}
    Vj = {k: jnp.asarray(values["v_" + k]) for k in P}
    xj = jnp.asarray(values["x"])

    def jl(p):
        return jnp.sum(jnp.sin(jf(p, xj)))
    ref = jax.jvp(jax.grad(jl), (Pj,), (Vj,))[1]
    for k in P:  # grad <∇L, v> = H v as well
        assert_close(got[f"hvp_{k}"], ref[k], 1e-7, f"hvp {k}")
        assert_close(got[f"gl_{k}"], ref[k], 1e-7, f"grad of jvp {k}")


def test_tangent_code_reads_as_tangents():
    y, P, I, jf = _mlp()
    V = [bp.input("v_" + k, p.shape, "float64") for k, p in P.items()]
    _, yt = bp.jvp(y, list(P.values()), V)
    src = bp.function({"y_t": yt}, passes=[]).source()
    assert "z1_t" in src and "h1_t" in src, src


def test_jvp_errors_name_the_argument():
    W = bp.param("W", (2, 3), "float64")
    with pytest.raises(bp.ShapeError, match=r"tangent .*\(3, 2\).*\(2, 3\)"):
        bp.jvp(bp.tanh(W), W, np.zeros((3, 2)))
    with pytest.raises(bp.ShapeError, match="cotangent"):
        bp.vjp(bp.tanh(W), W, np.zeros((3,)))
    with pytest.raises(ValueError, match="mode"):
        bp.jacobian(bp.tanh(W), W, mode="sideways")
    x = bp.param("x", (3,), "float64")
    with pytest.raises(bp.NonDifferentiableError, match="floor"):
        bp.jvp(bp.floor(x), x, np.ones(3))


def test_scan_tangent_graph_stays_small():
    """The scan fallback (transposed VJP) is linear in the graph size, not exponential."""
    from bpcompile.ir.traverse import toposort

    y, P, I, jf = _rnn()
    V = [bp.input("v_" + k, p.shape, "float64") for k, p in P.items()]
    _, yt = bp.jvp(y, list(P.values()), V)
    _, ytt = bp.jvp(yt, list(P.values()), V)  # second order through the same machinery
    n1, n2, n0 = len(toposort([yt])), len(toposort([ytt])), len(toposort([y]))
    assert n1 < 40 * n0 and n2 < 40 * n1, (n0, n1, n2)
    assert all(n.attr("name") not in ("jvp_u", "jvp_u0") for n in toposort([ytt]))


# ---- hypothesis: random graphs through jvp ---------------------------------------------------

@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 10_000))
def test_random_graphs_jvp_equals_grad_dot_v(seed):
    recipe = dict(gr.generate(seed), dtype="float64")
    loss, wrt, values = gr.build(recipe)
    if not wrt:
        return
    r = np.random.default_rng(seed)
    V = [bp.input("v_" + w.attr("name"), w.shape, "float64") for w in wrt]
    values.update({"v_" + w.attr("name"): r.standard_normal(w.shape) for w in wrt})
    _, lt = bp.jvp(loss, wrt, V)
    grads = bp.grad(loss, wrt, stabilize=False)
    out = evaluate([lt] + list(grads), values)
    ref = sum(float(np.sum(g * values["v_" + w.attr("name")])) for g, w in zip(out[1:], wrt))
    assert abs(float(out[0]) - ref) <= 1e-7 * max(1.0, abs(ref)), (recipe, out[0], ref)


def test_second_order_hvp_modes_agree():
    from bpcompile.train.second_order import hvp

    y, P, I, jf = _mlp()
    loss = bp.sum(bp.sin(y))
    values = _values(P, I)
    r = np.random.default_rng(9)
    v = {k: r.standard_normal(p.shape) for k, p in P.items()}
    inputs = {k: values[k] for k in list(P) + list(I)}
    g_f, hv_f = hvp(loss, list(P.values()), mode="fwd")(v, **inputs)
    g_r, hv_r = hvp(loss, list(P.values()), mode="rev")(v, **inputs)
    xj = jnp.asarray(values["x"])
    Pj = {k: jnp.asarray(values[k]) for k in P}
    ref = jax.jvp(jax.grad(lambda p: jnp.sum(jnp.sin(jf(p, xj)))), (Pj,),
                  ({k: jnp.asarray(x) for k, x in v.items()},))[1]
    for k in P:
        assert_close(hv_f[k], ref[k], 1e-7, k)
        assert_close(hv_r[k], ref[k], 1e-7, k)
        assert_close(g_f[k], g_r[k], 1e-12, k)


def test_jacobian_wrt_inputs_scalar_outputs_and_array_tangents():
    y, P, I, jf = _mlp()
    x = I["x"]
    values = _values(P, I)
    Pj = {k: jnp.asarray(values[k]) for k in P}
    xj = jnp.asarray(values["x"])
    s = bp.sum(y * y)
    tv = np.random.default_rng(4).standard_normal((4, 3))
    _, s_t = bp.jvp(s, x, tv)                       # tangent given as an array, wrt an input
    h1 = y.inputs[0]
    _, z_t = bp.jvp(y, h1, np.ones(h1.shape))       # primal: an intermediate node
    outs = {"Jx_rev": bp.jacobian(y, x, mode="rev"), "Jx_fwd": bp.jacobian(y, x, mode="fwd"),
            "Js": bp.jacobian(s, P["W2"]), "s_t": s_t, "z_t": z_t}
    fn = bp.function(outs, backend="llvm")
    got = fn(**{k: values[k] for k in fn.signature.names})
    jx = jax.jacrev(lambda x: jf(Pj, x))(xj)
    assert_close(got["Jx_rev"], jx, 1e-7, "jacrev wrt input")
    assert_close(got["Jx_fwd"], jx, 1e-7, "jacfwd wrt input")
    assert_close(got["Js"], jax.grad(lambda w: jnp.sum(jf({**Pj, "W2": w}, xj) ** 2))(Pj["W2"]))
    s_t = jax.jvp(lambda x: jnp.sum(jf(Pj, x) ** 2), (xj,), (jnp.asarray(tv),))[1]
    assert_close(got["s_t"], s_t)
    assert_close(got["z_t"], np.ones(h1.shape) @ values["W2"])


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 10_000))
def test_random_graphs_batched_forward_jacobian_equals_grad(seed):
    """The batched rules (autodiff/batched.py) on random graphs: the forward Jacobian of the
    scalar loss is its gradient (a graph with a scan takes the scan fallback)."""
    from bpcompile.autodiff.jacobian import jacobian_fwd

    recipe = dict(gr.generate(seed), dtype="float64")
    loss, wrt, values = gr.build(recipe)
    if not wrt:
        return
    J = jacobian_fwd([loss], wrt)[0]
    out = evaluate(list(J) + list(bp.grad(loss, wrt, stabilize=False)), values)
    for a, b in zip(out[: len(wrt)], out[len(wrt):]):
        assert_close(a, b, 1e-7, repr(recipe))
