"""Every row of tests/op_table.py against three oracles (docs/design.md principle 10):

(a) JAX: value and jax.grad of the same loss written independently in jax.numpy, float64 at
    rtol 1e-10 and float32 at rtol ~2e-5;
(b) central finite differences of the compiled loss in float64 (coordinates and directions);
(c) the dot-product test of the VJP: <u, J v> (J v by finite differences of the forward, or
    jax.jvp where the row has ties) equals <Jᵀ u, v> with Jᵀ u from bp.grad(sum(f * u), x),
    evaluated on the unoptimised gradient graph.
"""

from __future__ import annotations

import functools

import numpy as np
import op_table as T
import pytest

import bpcompile as bp
from bpcompile.backends.numpy.codegen import evaluate

jax = pytest.importorskip("jax")
jnp = jax.numpy

IDS = [r.name for r in T.ROWS]


@functools.cache
def compiled(name: str, dtype: str):
    row = T.BY_NAME[name]
    P, I, f, loss, values = T.build(row, dtype)
    fn = bp.compile(loss, wrt=list(P.values()))
    return row, P, I, f, loss, values, fn


def assert_close(ours, ref, rtol, what):
    ref = np.asarray(ref)
    atol = rtol * max(1.0, float(np.max(np.abs(ref)))) if ref.size else 0.0
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol, err_msg=what)


@pytest.mark.parametrize("name", IDS)
def test_float64_matches_jax(name):
    row, P, I, f, loss, values, fn = compiled(name, "float64")
    value, grads = fn(**values)
    ref_v, ref_g, _ = T.jax_oracle(row, "float64")
    assert np.shape(value) == () and np.asarray(value).dtype == np.float64
    assert_close(value, ref_v, row.rtol64, f"{name}: loss value")
    assert set(grads) == set(row.params)
    for k in row.params:
        assert grads[k].shape == tuple(row.params[k]) and grads[k].dtype == np.float64, k
        assert_close(grads[k], ref_g[k], row.rtol64, f"{name}: d{k}")


@pytest.mark.parametrize("name", IDS)
def test_float32_matches_jax(name):
    row, P, I, f, loss, values, fn = compiled(name, "float32")
    value, grads = fn(**values)
    ref_v, ref_g, _ = T.jax_oracle(row, "float32")
    assert ref_v.dtype == np.float32  # the reference really ran in float32
    assert np.asarray(value).dtype == np.float32
    assert_close(value, ref_v, row.rtol32, f"{name}: loss value (float32)")
    for k in row.params:
        assert grads[k].dtype == np.float32, k
        assert_close(grads[k], ref_g[k], row.rtol32, f"{name}: d{k} (float32)")


def _perturbed(values, direction, h):
    return {k: (v + h * direction[k] if k in direction else v) for k, v in values.items()}


@pytest.mark.parametrize("name", [r.name for r in T.ROWS if r.smooth])
def test_grad_matches_finite_differences(name):
    row, P, I, f, loss, values, fn = compiled(name, "float64")
    _, grads = fn(**values)
    rng = np.random.default_rng(1)
    h = 1e-5

    def fd(direction):
        lp = fn(**_perturbed(values, direction, h))[0]
        lm = fn(**_perturbed(values, direction, -h))[0]
        return (lp - lm) / (2 * h)

    for k, shape in row.params.items():
        size = int(np.prod(shape))
        coords = rng.choice(size, size=min(3, size), replace=False)
        for c in coords:
            e = np.zeros(size)
            e[c] = 1.0
            num, ana = fd({k: e.reshape(shape)}), grads[k].reshape(-1)[c]
            assert abs(num - ana) <= 1e-6 * max(1.0, abs(ana)), (k, int(c), num, ana)
    # one random direction through all params at once
    d = {k: rng.standard_normal(shape) for k, shape in row.params.items()}
    ana = sum(float(np.sum(grads[k] * d[k])) for k in row.params)
    num = fd(d)
    assert abs(num - ana) <= 1e-6 * max(1.0, abs(ana)), (num, ana)


@pytest.mark.parametrize("name", IDS)
def test_vjp_dot_product(name):
    """<u, J v> = <Jᵀ u, v> on the raw gradient graph (bp.grad, no compile passes)."""
    row, P, I, f, loss, values, fn = compiled(name, "float64")
    params = list(P.values())
    vjps = bp.grad(loss, params)
    jtu = evaluate(vjps, values)
    rng = np.random.default_rng(2)
    v = {k: rng.standard_normal(shape) for k, shape in row.params.items()}
    if row.smooth:
        h = 1e-5
        fp = evaluate([f], _perturbed(values, v, h))[0]
        fm = evaluate([f], _perturbed(values, v, -h))[0]
        jv = (fp - fm) / (2 * h)
    else:  # at ties the one-sided limits differ: take J v from JAX's forward mode
        Pj = {k: jnp.asarray(values[k]) for k in row.params}
        Ij = {k: jnp.asarray(x) for k, x in values.items() if k not in row.params}
        Vj = {k: jnp.asarray(x) for k, x in v.items()}
        jv = np.asarray(jax.jvp(lambda p: row.jf(p, Ij), (Pj,), (Vj,))[1])
    assert jv.shape == f.shape
    lhs = float(np.sum(values["u"] * jv))
    rhs = sum(float(np.sum(g * v[k])) for g, k in zip(jtu, row.params))
    assert abs(lhs - rhs) <= 1e-7 * max(1.0, abs(lhs)), (lhs, rhs)


@pytest.mark.parametrize("name", IDS)
def test_row_declares_only_ops_it_uses(name):
    """The `ops` column is truthful: each op it names occurs in the forward or gradient graph."""
    from bpcompile.ir.traverse import toposort

    row, P, I, f, loss, values, fn = compiled(name, "float64")
    present = {n.op for n in toposort([loss] + bp.grad(loss, list(P.values())))}
    fused_ok = {n.op for n in toposort(fn.outputs)}
    missing = set(row.ops) - present - fused_ok
    assert not missing, f"{name}: declares {sorted(missing)} but its graphs do not contain them"


CHECK_ROWS = ["softmax", "cross_entropy_int_labels", "matmul_batch_broadcast", "pad_interior",
              "take_axis1", "elementwise_mish"]


@pytest.mark.parametrize("name", CHECK_ROWS)
def test_bp_check_agrees_on_table_rows(name):
    """bp.check (JAX translation + float64 finite differences) passes where our oracles do."""
    row, P, I, f, loss, values, fn = compiled(name, "float64")
    report = bp.check(loss, list(P.values()), inputs={k: v for k, v in values.items()
                                                      if k not in P},
                      params={k: values[k] for k in P})
    assert report.ok, str(report)
    assert sorted(r.name for r in report.rows) == sorted(P)
    assert all(r.ok and r.rel_err_jax < 1e-8 for r in report.rows), str(report)


def test_oracles_catch_a_broken_vjp(monkeypatch):
    """Mutation check of the harness: a wrong VJP rule (sin' = sin) fails every oracle."""
    import dataclasses

    from bpcompile.ops import elementwise as ew
    from bpcompile.ops import registry

    row = T.BY_NAME["sin"]
    P, I, f, loss, values = T.build(row, "float64")
    good = registry.get_op("sin")
    bad = dataclasses.replace(good, vjp=lambda y, g, needs: (ew.mul(g, ew.unary("sin",
                                                                              y.inputs[0])),))
    monkeypatch.setitem(registry._OPS, "sin", bad)
    _, grads = bp.compile(loss, wrt=list(P.values()))(**values)
    _, ref_g, _ = T.jax_oracle(row, "float64")
    assert not np.allclose(grads["x"], ref_g["x"], rtol=1e-3)
    report = bp.check(loss, list(P.values()), inputs={"u": values["u"]},
                      params={"x": values["x"]})
    assert not report.ok


def _degenerate_cases():
    s = bp.param("s", (), "float64")
    x = bp.input("x", (), "float64")
    W = bp.param("W", (2, 2), "float64")
    v = bp.param("v", (3,), "float64")
    vv = np.arange(3.0)
    return {
        # name: (loss, wrt, args, expected value, expected grads)
        "loss_is_a_param": (s, [s], {"s": 2.0}, 2.0, {"s": 1.0}),
        "loss_is_minus_a_param": (-s, [s], {"s": 2.0}, -2.0, {"s": -1.0}),
        "loss_ignores_the_param": (x * 1.0, [s], {"s": 2.0, "x": 3.0}, 3.0, {"s": 0.0}),
        "max_with_diagonal_ties": (bp.max(W), [W], {"W": np.eye(2)}, 1.0,
                                   {"W": np.eye(2) / 2}),
        "vector_dot_itself": (v @ v, [v], {"v": vv}, 5.0, {"v": 2 * vv}),
        "scalar_elements": (v[1] * v[2], [v], {"v": vv}, 2.0, {"v": [0.0, 2.0, 1.0]}),
        "sum_of_empty_slice": (bp.sum(v[0:0]) + bp.sum(v), [v], {"v": vv}, 3.0,
                               {"v": np.ones(3)}),
    }


@pytest.mark.parametrize("case", sorted(_degenerate_cases()))
def test_degenerate_losses(case):
    loss, wrt, args, value, grads = _degenerate_cases()[case]
    v, g = bp.compile(loss, wrt=wrt)(**args)
    assert np.shape(v) == () and float(v) == value
    for k, ref in grads.items():
        np.testing.assert_array_equal(g[k], np.broadcast_to(ref, g[k].shape))
        assert g[k].shape == dict((w.name, w.shape) for w in wrt)[k]


def test_abs_gradient_at_zero_matches_jax():
    """d|x|/dx at exactly 0 is +1 in JAX (select(x >= 0, g, -g)); ours must agree."""
    jax = pytest.importorskip("jax")
    x = bp.param("x_abs0", (3,), "float64")
    fn = bp.compile(bp.sum(bp.abs(x)), wrt=[x])
    xv = np.array([-1.0, 0.0, 2.0])
    _, g = fn(x_abs0=xv)
    ref = jax.grad(lambda v: jax.numpy.sum(jax.numpy.abs(v)))(xv)
    np.testing.assert_array_equal(g["x_abs0"], np.asarray(ref))
