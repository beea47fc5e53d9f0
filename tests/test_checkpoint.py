"""bp.checkpoint / bp.remat (ops/checkpoint.py): gradients equal to the plain build on every
backend, less memory saved for the backward pass, recomputation kept by every pass and shown
in the generated source, policies, nesting."""

from __future__ import annotations

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.ir.traverse import toposort

B, D, L = 4, 16, 4
RNG = np.random.default_rng(7)
VALS = {"x": RNG.standard_normal((B, D))}
VALS.update({f"W{i}": 0.3 * RNG.standard_normal((D, D)) for i in range(L)})
VALS.update({f"b{i}": 0.1 * RNG.standard_normal(D) for i in range(L)})


def block(h, W, b):
    return h + bp.tanh(bp.sigmoid(h @ W + b) * h)


def mlp(mode=None, policy=None):
    """A residual MLP; mode None (plain), "block" (each block checkpointed), "nested" (pairs of
    checkpointed blocks inside an outer checkpoint), "closure" (params read from outside)."""
    x = bp.input("x", (B, D), "float64")
    Ws = [bp.param(f"W{i}", (D, D), "float64") for i in range(L)]
    bs = [bp.param(f"b{i}", (D,), "float64") for i in range(L)]
    h = x
    if mode == "nested":
        inner = bp.checkpoint(block, policy=policy)

        def pair(h, Wa, ba, Wb, bb):
            return inner(inner(h, Wa, ba), Wb, bb)

        for i in range(0, L, 2):
            h = bp.checkpoint(pair, name="pair")(h, Ws[i], bs[i], Ws[i + 1], bs[i + 1])
    else:
        for W, b in zip(Ws, bs):
            if mode == "block":
                h = bp.checkpoint(block, policy=policy)(h, W, b)
            elif mode == "closure":
                h = bp.checkpoint(lambda h, W=W, b=b: block(h, W, b))(h)
            else:
                h = block(h, W, b)
    return bp.mean(h * h), Ws + bs


def _grads(mode, backend, policy=None):
    loss, wrt = mlp(mode, policy)
    fn = bp.compile(loss, wrt, backend=backend)
    v, g = fn(**VALS)
    return fn, float(v), {k: np.asarray(a) for k, a in g.items()}


BACKENDS = ["numpy", "llvm", "jax"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode,policy", [("block", None), ("block", "dots_saveable"),
                                         ("nested", None), ("closure", None)])
def test_gradients_equal_the_plain_build(backend, mode, policy):
    if backend == "jax":
        pytest.importorskip("jax")
        import jax

        jax.config.update("jax_enable_x64", True)
    _, v0, g0 = _grads(None, backend)
    fn, v, g = _grads(mode, backend, policy)
    assert v == pytest.approx(v0, rel=1e-12)
    assert g.keys() == g0.keys()
    for k in g0:
        np.testing.assert_allclose(g[k], g0[k], rtol=1e-10, atol=1e-14, err_msg=k)
    final = toposort(fn.outputs)
    assert any(n.op == "remat_barrier" for n in final)  # the pipeline kept the recompute
    assert not any(n.op == "remat" for n in final)  # marks are gone once gradients exist


def test_saved_bytes_go_down_on_llvm():
    plain = _grads(None, "llvm")[0].memory()
    ck = _grads("block", "llvm")[0].memory()
    assert ck["saved_for_backward_bytes"] < plain["saved_for_backward_bytes"]
    assert plain["recomputed_bytes"] == plain["recompute_flops"] == 0
    # each block recomputes h@W (2·B·D·D flops) and the elementwise work after it
    assert ck["recompute_flops"] >= L * 2 * B * D * D and ck["recomputed_bytes"] >= L * B * D * 8
    assert ck["peak_bytes"] <= plain["peak_bytes"]


def test_everything_saveable_is_the_plain_gradient_graph():
    loss, wrt = mlp("block", "everything_saveable")
    fn = bp.compile(loss, wrt)
    assert not any(n.op == "remat_barrier" for n in toposort(fn.outputs))


def test_recompute_is_distinct_and_late():
    """The recomputed matmul is a node of its own, computed after the loss (backward)."""
    loss, wrt = mlp("block")
    fn = bp.compile(loss, wrt)
    order = toposort(fn.outputs)
    forward = set(toposort(fn.outputs[:1]))
    mats = [n for n in order if n.op == "matmul" and n.inputs[1].op in ("param",)]
    remats = [n for n in order if n.op == "matmul" and n.inputs[1].op == "remat_barrier"]
    assert len(mats) == L and len(remats) == L
    assert all(n in forward for n in mats) and not any(n in forward for n in remats)


def test_source_shows_the_recompute_section():
    src = _grads("block", "numpy")[0].source()
    assert src.count("# ---- recompute (checkpoint block) ----") >= L
    assert "W3_r = W3" in src


def test_recompute_labels_come_from_the_graph_not_the_side_table(monkeypatch):
    """The sections are read from the barrier nodes (their `name` attr) and what depends on
    them, so a stale or empty side table (interned nodes shared with an earlier compile that
    awaits GC) cannot relabel them."""
    from bpcompile.ir import provenance

    monkeypatch.setattr(provenance, "RECOMPUTED", {})
    loss, wrt = mlp(None)
    h = bp.input("x", (B, D), "float64")
    for i in range(L):
        h = bp.checkpoint(block, name=f"blk{i}")(h, wrt[i], wrt[L + i])
    src = bp.compile(bp.mean(h * h), wrt, backend="numpy").source()
    for i in range(L):
        sec = src.split(f"# ---- recompute (checkpoint blk{i}) ----")[1].split("# ----")[0]
        assert f"W{i}_r = W{i}" in sec and "@" in sec, sec


def test_jax_source_uses_an_optimization_barrier():
    pytest.importorskip("jax")
    import jax

    jax.config.update("jax_enable_x64", True)
    src = _grads("block", "jax")[0].source()
    assert "lax.optimization_barrier" in src


def test_dots_saveable_reads_the_forward_matmul():
    loss, wrt = mlp("block", "dots_saveable")
    fn = bp.compile(loss, wrt)
    order = toposort(fn.outputs)
    # matmul outputs are saved: no forward product is recomputed from barriers
    assert not any(n.op == "matmul" and any(i.op == "remat_barrier" for i in n.inputs)
                   and n.shape == (B, D) and n.inputs[1].shape == (D, D)
                   and n.inputs[1].op == "remat_barrier" for n in order)
    assert any(n.op == "remat_barrier" for n in order)


def test_multi_output_and_second_order():
    x = bp.param("x", (3,), "float64")

    def two(a):
        return bp.sin(a) * a, bp.exp(a)

    p, q = bp.checkpoint(two)(x)
    loss = bp.sum(p * q)
    loss0 = bp.sum(bp.sin(x) * x * bp.exp(x))
    xv = np.array([0.3, -0.7, 1.1])
    g = bp.compile(loss, [x])(x=xv)[1]["x"]
    g0 = bp.compile(loss0, [x])(x=xv)[1]["x"]
    np.testing.assert_allclose(g, g0, rtol=1e-12)
    # grad of grad through the recomputation (barrier's VJP is the identity)
    u = bp.input("u", (3,), "float64")
    hvp = bp.grad(bp.sum(bp.grad(loss, x) * u), x, stabilize=False)
    hvp0 = bp.grad(bp.sum(bp.grad(loss0, x) * u), x, stabilize=False)
    f = bp.function({"h": hvp, "h0": hvp0})
    out = f(x=xv, u=np.array([1.0, 2.0, -1.0]))
    np.testing.assert_allclose(out["h"], out["h0"], rtol=1e-10)


def test_bad_policy_is_named():
    with pytest.raises(ValueError, match="no_such_policy"):
        bp.checkpoint(block, policy="no_such_policy")
    with pytest.raises(TypeError, match="policy"):
        bp.checkpoint(block, policy=3)
    with pytest.raises(TypeError, match="callable"):
        bp.checkpoint(42)


def test_decorator_forms():
    @bp.checkpoint
    def f(a):
        return bp.tanh(a) * a

    @bp.remat(policy="dots_saveable")
    def g(a):
        return bp.tanh(a) * a

    x = bp.param("x", (3,), "float64")
    assert f(x).op == "remat" and g(x).op == "remat"
    assert f.__name__ == "f"


def test_planned_peak_drops_when_activations_dominate():
    """Batch 512, width 16: activations dominate the parameters; checkpointing every block
    keeps one block's activations plus the block inputs, in a last-layer-first backward."""
    def build(ck):
        x = bp.input("x", (512, 16), "float32")
        Ws = [bp.param(f"W{i}", (16, 16), "float32") for i in range(8)]
        h = x
        for W in Ws:
            def blk(h, W):
                return h + bp.relu(bp.tanh(h @ W) * h)
            h = bp.checkpoint(blk)(h, W) if ck else blk(h, W)
        return bp.mean(h * h), Ws

    plain = bp.compile(*build(False), backend="llvm").memory()["peak_bytes"]
    ck = bp.compile(*build(True), backend="llvm").memory()["peak_bytes"]
    assert ck < 0.6 * plain, (ck, plain)


def _row_ids():
    import op_table as T

    return [r.name for r in T.ROWS]


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
@pytest.mark.parametrize("name", _row_ids())
def test_every_op_table_row_checkpointed_has_the_same_gradient(name, backend):
    """Each op-table row's f wrapped whole in bp.checkpoint (params and inputs as arguments):
    the gradient equals the plain one in float64."""
    import op_table as T

    row = next(r for r in T.ROWS if r.name == name)
    P, I, f, loss, values = T.build(row, "float64")
    pk, ik = list(P), [k for k in I if k != "u"]

    def whole(*args):
        return row.f(dict(zip(pk, args[:len(pk)])), dict(zip(ik, args[len(pk):])))

    fc = bp.checkpoint(whole)(*P.values(), *(I[k] for k in ik))
    loss_c = bp.sum(fc * I["u"])
    _, g0 = bp.compile(loss, list(P.values()), backend=backend)(**values)
    _, g = bp.compile(loss_c, list(P.values()), backend=backend)(**values)
    for k in g0:
        np.testing.assert_allclose(g[k], g0[k], rtol=1e-10, atol=1e-13, err_msg=k)
