"""Whole models through every transformation on every backend, against JAX's own.

The table: model (MLP, CNN, scan RNN, attention block, an RK4 ODE integrated over 60 steps with
bp.fori_loop, a 4x4 determinant by cofactor expansion and by LU) × transform (bp.jvp vs
jax.jvp, bp.vjp vs jax.vjp, bp.jacobian rev/fwd vs jax.jacrev/jacfwd, bp.hessian vs
jax.hessian, and the dot-product test <u, J v> = <J^T u, v>) × backend (numpy, llvm, jax),
float64, rtol 1e-7. Each model is built and differentiated once, compiled once per backend into
one function holding every result, and its JAX oracles are jitted and evaluated once. A
while_loop model (Newton's method on Kepler's equation) goes through the forward transforms.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from op_table import FAST_COMPILE

import bpcompile as bp
from bpcompile.ir.traverse import toposort
from bpcompile.rewrite.pipeline import run

jax = pytest.importorskip("jax")
jnp = jax.numpy

BACKENDS = ["numpy", "llvm", "jax"]
F = "float64"


def assert_close(ours, ref, what, rtol=1e-7, atol=1e-10):
    ref = np.asarray(ref)
    assert np.shape(ours) == ref.shape, (what, np.shape(ours), ref.shape)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol, err_msg=what)


# ---- models: (output, params, inputs, the same function in JAX, values) ---------------------

def _mlp():
    x = bp.input("x", (4, 3), F)
    W1, b1, W2 = bp.param("W1", (3, 5), F), bp.param("b1", (5,), F), bp.param("W2", (5, 2), F)
    y = bp.tanh(x @ W1 + b1) @ W2

    def jf(p, i):
        return jnp.tanh(i["x"] @ p["W1"] + p["b1"]) @ p["W2"]
    return y, {"W1": W1, "b1": b1, "W2": W2}, {"x": x}, jf


def _cnn():
    x = bp.input("x", (2, 1, 5, 5), F)
    K, b = bp.param("K", (2, 1, 3, 3), F), bp.param("b", (2,), F)
    W = bp.param("W", (18, 2), F)
    h = bp.relu(bp.conv2d(x, K) + b.reshape(1, 2, 1, 1))
    y = bp.tanh(h.reshape(2, 18) @ W)

    def jf(p, i):
        c = jax.lax.conv_general_dilated(i["x"], p["K"], (1, 1), "VALID")
        h = jax.nn.relu(c + p["b"].reshape(1, 2, 1, 1))
        return jnp.tanh(h.reshape(2, 18) @ p["W"])
    return y, {"K": K, "b": b, "W": W}, {"x": x}, jf


def _rnn():
    xs = bp.input("xs", (5, 2, 3), F)
    Wx, Wh = bp.param("Wx", (3, 4), F), bp.param("Wh", (4, 4), F)

    def step(h, x):
        h = bp.tanh(x @ Wx + h @ Wh)
        return h, h
    hT, hs = bp.scan(step, bp.const(np.zeros((2, 4)), F), xs)
    y = bp.sum(hs, axis=0) + hT

    def jf(p, i):
        def st(h, x):
            h = jnp.tanh(x @ p["Wx"] + h @ p["Wh"])
            return h, h
        hT, hs = jax.lax.scan(st, jnp.zeros((2, 4)), i["xs"])
        return jnp.sum(hs, axis=0) + hT
    return y, {"Wx": Wx, "Wh": Wh}, {"xs": xs}, jf


def _attention():
    x = bp.input("x", (3, 4), F)
    Wq, Wk, Wv = (bp.param(n, (4, 4), F) for n in ("Wq", "Wk", "Wv"))
    y = bp.softmax((x @ Wq) @ (x @ Wk).T / 2.0, axis=-1) @ (x @ Wv) + x

    def jf(p, i):
        x = i["x"]
        s = (x @ p["Wq"]) @ (x @ p["Wk"]).T / 2.0
        return jax.nn.softmax(s, axis=-1) @ (x @ p["Wv"]) + x
    return y, {"Wq": Wq, "Wk": Wk, "Wv": Wv}, {"x": x}, jf


ODE_STEPS, ODE_DT = 60, 0.05


def _lotka_volterra(u, th, stack):
    """du/dt of Lotka–Volterra, (a u0 - b u0 u1, c u0 u1 - d u1), in either library."""
    return stack([th[0] * u[0] - th[1] * u[0] * u[1], th[2] * u[0] * u[1] - th[3] * u[1]])


def _rk4(f, u, h):
    k1 = f(u)
    k2 = f(u + h / 2 * k1)
    k3 = f(u + h / 2 * k2)
    k4 = f(u + h * k3)
    return u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def _ode():
    u0 = bp.param("u0", (2,), F)
    th = bp.param("theta", (4,), F)

    def f(u):
        return _lotka_volterra(u, th, bp.stack)
    y = bp.fori_loop(0, ODE_STEPS, lambda i, u: _rk4(f, u, ODE_DT), u0)

    def jf(p, i):
        def g(u):
            return _lotka_volterra(u, p["theta"], jnp.stack)
        return jax.lax.fori_loop(0, ODE_STEPS, lambda k, u: _rk4(g, u, ODE_DT), p["u0"])
    return y, {"u0": u0, "theta": th}, {}, jf


def _cofactor_det(A, n_rows: int, cols: tuple[int, ...], row: int = 0):
    """Laplace expansion along the first remaining row (works on bp and jnp matrices)."""
    if len(cols) == 1:
        return A[row, cols[0]]
    out = 0.0
    for k, c in enumerate(cols):
        minor = _cofactor_det(A, n_rows, cols[:k] + cols[k + 1:], row + 1)
        out = out + (-1.0) ** k * A[row, c] * minor
    return out


def _lu_det(A, n: int):
    """Doolittle LU without pivoting (A is made diagonally dominant): det = Π U_ii."""
    a = [[A[i, j] for j in range(n)] for i in range(n)]
    det = 1.0
    for k in range(n):
        det = det * a[k][k]
        for i in range(k + 1, n):
            m = a[i][k] / a[k][k]
            for j in range(k + 1, n):
                a[i][j] = a[i][j] - m * a[k][j]
    return det


def _det(which):
    A = bp.param("A", (4, 4), F)
    B = bp.input("B", (4, 4), F)  # an input matrix too: derivatives wrt params only

    def build(M, stack):
        C = M + B if stack is bp.stack else M
        d = _cofactor_det(C, 4, (0, 1, 2, 3)) if which == "cofactor" else _lu_det(C, 4)
        return stack([d, d * d])
    y = build(A, bp.stack)

    def jf(p, i):
        return build(p["A"] + i["B"], jnp.stack)
    return y, {"A": A}, {"B": B}, jf


MODELS = {"mlp": _mlp, "cnn": _cnn, "rnn": _rnn, "attention": _attention, "ode_rk4": _ode,
          "det_cofactor": functools.partial(_det, "cofactor"),
          "det_lu": functools.partial(_det, "lu")}


def _values(P, I, seed):
    r = np.random.default_rng(seed)
    v = {k: 0.5 * r.standard_normal(n.shape) for k, n in {**P, **I}.items()}
    if "theta" in v:  # a predator-prey cycle, well inside RK4's stable step
        v["theta"], v["u0"] = np.array([1.1, 0.4, 0.4, 0.9]) + 0.05 * v["theta"], \
            np.array([1.5, 0.8]) + 0.1 * v["u0"]
    if "A" in v:  # diagonally dominant: LU needs no pivoting
        v["A"] = v["A"] + 3.0 * np.eye(4)
    return v


@functools.cache
def model(name):
    """The model's transformed outputs (graph nodes) and JAX's results for the same values."""
    y, P, I, jf = MODELS[name]()
    ws = list(P.values())
    tans = {f"t_{k}": bp.input(f"t_{k}", w.shape, F) for k, w in P.items()}
    ct = bp.input("ct", y.shape, F)
    _, y_t = bp.jvp(y, ws, list(tans.values()))
    outs = {"y": y, "y_t": y_t}
    outs.update({f"vjp_{k}": g for k, g in zip(P, bp.vjp(y, ws, ct))})
    outs.update({f"rev_{k}": j for k, j in zip(P, bp.jacobian(y, ws, mode="rev"))})
    outs.update({f"fwd_{k}": j for k, j in zip(P, bp.jacobian(y, ws, mode="fwd"))})
    k0 = next(iter(P))
    outs["H"] = bp.hessian(bp.sum(y * y), P[k0])

    v = _values(P, I, seed=len(name))
    r = np.random.default_rng(1)
    v.update({k: r.standard_normal(t.shape) for k, t in tans.items()})
    v["ct"] = r.standard_normal(ct.shape)
    Pj = {k: jnp.asarray(v[k]) for k in P}
    Ij = {k: jnp.asarray(v[k]) for k in I}

    def oracle(Pj, Ij, Tj, ctj):
        f = functools.partial(jf, i=Ij)
        y, y_t = jax.jvp(f, (Pj,), (Tj,))
        _, pull = jax.vjp(f, Pj)
        return {"y": y, "y_t": y_t, "vjp": pull(ctj)[0], "rev": jax.jacrev(f)(Pj),
                "fwd": jax.jacfwd(f)(Pj),
                "H": jax.hessian(lambda w: jnp.sum(f({**Pj, k0: w}) ** 2))(Pj[k0])}
    Tj = {k: jnp.asarray(v[f"t_{k}"]) for k in P}
    ref = jax.jit(oracle, compiler_options=FAST_COMPILE)(Pj, Ij, Tj, jnp.asarray(v["ct"]))
    want = {"y": ref["y"], "y_t": ref["y_t"], "H": ref["H"]}
    for k in P:
        for t in ("vjp", "rev", "fwd"):
            want[f"{t}_{k}"] = ref[t][k]
    return outs, v, want


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_transforms_match_jax(name, backend):
    outs, values, want = model(name)
    fn = bp.function(outs, backend=backend)
    got = fn(**{k: values[k] for k in fn.signature.names})
    for key, ref in want.items():
        assert_close(got[key], ref, f"{name} {backend} {key}")
    # the dot-product test on our own results: <u, J v> = <J^T u, v>
    jv = float(np.sum(values["ct"] * got["y_t"]))
    jtu = sum(float(np.sum(got[k] * values["t_" + k[4:]])) for k in got if k.startswith("vjp_"))
    assert abs(jv - jtu) <= 1e-9 * max(1.0, abs(jv)), (name, backend, jv, jtu)


def test_ode_model_differentiates_through_the_loop():
    """The RK4 model stays a loop (a `scan`, not 60 unrolled steps), so the table tests
    differentiation through bp.fori_loop in both modes."""
    outs, _, _ = model("ode_rk4")
    for key in ("y", "y_t", "rev_theta", "fwd_theta", "H"):
        ops = [n.op for n in toposort([outs[key]])]
        assert "scan" in ops, key
        assert ops.count("add") < 200, (key, ops.count("add"))


def test_stack_matches_jnp_stack_and_names_bad_shapes():
    a, b = bp.input("a", (2, 3), F), bp.input("b", (2, 3), F)
    fn = bp.function({"s0": bp.stack([a, b]), "s2": bp.stack([a, b], axis=-1)})
    r = np.random.default_rng(0)
    va, vb = r.standard_normal((2, 3)), r.standard_normal((2, 3))
    got = fn(a=va, b=vb)
    assert_close(got["s0"], jnp.stack([va, vb]), "stack axis 0")
    assert_close(got["s2"], jnp.stack([va, vb], axis=-1), "stack axis -1")
    with pytest.raises(bp.ShapeError, match=r"stack: .*\(2, 3\).*\(3,\)"):
        bp.stack([a, bp.input("c", (3,), F)])


def _kepler(M, e, lib):
    """Kepler's equation E - e sin E = M solved by Newton's method in a while_loop."""
    sin, cos = (bp.sin, bp.cos) if lib is bp else (jnp.sin, jnp.cos)
    amax = bp.max if lib is bp else jnp.max

    def resid(E):
        return E - e * sin(E) - M

    def body(c):
        i, E = c
        return i + 1, E - resid(E) / (1.0 - e * cos(E))

    def cond(c):
        return (c[0] < 30) & (amax(abs(resid(c[1]))) > 1e-13)

    i0 = bp.const(0, "int32") if lib is bp else jnp.int32(0)
    loop = bp.while_loop if lib is bp else jax.lax.while_loop
    return loop(cond, body, (i0, M))[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_while_loop_model_forward_mode_matches_jax(backend):
    """A while_loop model (Newton's method to a tolerance: a data-dependent trip count) through
    bp.jvp and bp.jacobian(mode="fwd") against jax.jvp / jax.jacfwd of lax.while_loop; the
    primal, its tangent and the Jacobian's batched tangents share one loop."""
    M, e = bp.param("M", (3,), F), bp.param("e", (3,), F)
    E = _kepler(M, e, bp)
    tM, te = bp.input("tM", (3,), F), bp.input("te", (3,), F)
    _, E_t = bp.jvp(E, [M, e], [tM, te])
    JM, Je = bp.jacobian(E, [M, e], mode="fwd")
    outs = {"E": E, "E_t": E_t, "JM": JM, "Je": Je}
    ops = [n.op for n in toposort(run(list(outs.values()))[0])]
    assert ops.count("while_loop") == 1, ops.count("while_loop")
    fn = bp.function(outs, backend=backend)
    r = np.random.default_rng(3)
    v = {"M": r.uniform(0.2, 3.0, 3), "e": r.uniform(0.1, 0.8, 3), "tM": r.standard_normal(3),
         "te": r.standard_normal(3)}
    got = fn(**v)

    def jf(M, e):
        return _kepler(M, e, jnp)

    @jax.jit
    def oracle(M, e, tM, te):
        y, y_t = jax.jvp(jf, (M, e), (tM, te))
        JM, Je = jax.jacfwd(jf, argnums=(0, 1))(M, e)
        return {"E": y, "E_t": y_t, "JM": JM, "Je": Je}

    want = oracle(*(jnp.asarray(v[k]) for k in ("M", "e", "tM", "te")))
    for key, ref in want.items():
        assert_close(got[key], ref, f"kepler {backend} {key}")
    # the implicit function theorem: dE/dM = 1 / (1 - e cos E), diagonal
    Ev = np.asarray(got["E"])
    assert_close(got["JM"], np.diag(1.0 / (1.0 - v["e"] * np.cos(Ev))), "kepler dE/dM")
