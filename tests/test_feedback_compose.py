"""Feedback alignment composed with the rest of the compiler: checkpointed regions and
memory_budget= (the rules apply inside the recomputed region's sweep), fn.report."""

import re

import numpy as np
import pytest

import bpcompile as bp

N, D, H, H2, O = 8, 5, 7, 6, 3


def _mlp(ck: bool, nested: bool = False, top_inside: bool = False):
    """2-hidden-layer tanh MLP, float64; `ck` checkpoints the hidden block (nested: its second
    layer again; top_inside: the output layer too, so DFA finds its error inside a region)."""
    x, labels = bp.input("x", (N, D), "float64"), bp.input("labels", (N,), "int32")
    sizes = [(D, H), (H, H2), (H2, O)]
    W = [bp.param(f"W{i + 1}", s, "float64") for i, s in enumerate(sizes)]
    b = [bp.param(f"b{i + 1}", (s[1],), "float64") for i, s in enumerate(sizes)]

    def second(a):
        return bp.tanh(a @ W[1] + b[1])

    def block(h):
        h2 = (bp.checkpoint(second) if nested else second)(bp.tanh(h @ W[0] + b[0]))
        return h2 @ W[2] + b[2] if top_inside else h2

    y = (bp.checkpoint(block) if ck else block)(x)
    if not top_inside:
        y = y @ W[2] + b[2]
    return bp.cross_entropy(y, labels), [*W, *b]


def _values(wrt, seed=0):
    rng = np.random.default_rng(seed)
    vals = {"x": rng.standard_normal((N, D)), "labels": rng.integers(0, O, N).astype(np.int32)}
    vals.update({w.name: rng.standard_normal(w.shape) * 0.5 for w in wrt})
    return vals


def assert_same_updates(a, b, vals, rtol=1e-12):
    ga, gb = a(**vals)[1], b(**vals)[1]
    assert set(ga) == set(gb)
    for k in ga:
        np.testing.assert_allclose(gb[k], ga[k], rtol=rtol, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("mode,shape", [("alignment", {}), ("direct", {}),
                                        ("alignment", {"nested": True}),
                                        ("direct", {"nested": True, "top_inside": True})])
def test_feedback_through_checkpoint_equals_without(mode, shape):
    plain, wrt = _mlp(False, **shape)
    marked, _ = _mlp(True, **shape)
    fa = bp.compile(plain, wrt, feedback=mode, feedback_seed=4)
    fa_ck = bp.compile(marked, wrt, feedback=mode, feedback_seed=4)
    assert "recompute (checkpoint block)" in fa_ck.source("function")
    assert fa_ck.feedback_values.keys() == fa.feedback_values.keys() == {"B_W2", "B_W3"}
    vals = _values(wrt)
    assert_same_updates(fa, fa_ck, vals)
    exact = bp.compile(plain, wrt)(**vals)[1]  # and it is not the exact gradient
    assert not np.allclose(fa_ck(**vals)[1]["W1"], exact["W1"])


def test_feedback_with_memory_budget():
    """memory_budget= adds checkpoints; with feedback= the updates are the unbudgeted ones."""
    x, labels = bp.input("x", (32, 16), "float64"), bp.input("labels", (32,), "int32")
    h, wrt = x, []
    for i in range(6):
        wrt.append(bp.param(f"W{i}", (16, 16 if i < 5 else O), "float64"))
        h = h @ wrt[-1]
        h = bp.tanh(h) if i < 5 else h
    loss = bp.cross_entropy(h, labels)
    rng = np.random.default_rng(1)
    vals = {"x": rng.standard_normal((32, 16)), "labels": rng.integers(0, O, 32).astype("int32")}
    vals.update({w.name: rng.standard_normal(w.shape) * 0.4 for w in wrt})
    for mode in ("alignment", "direct"):
        full = bp.compile(loss, wrt, feedback=mode)
        peak = full.memory(timeline=True)["peak_bytes"]
        fit = bp.compile(loss, wrt, feedback=mode, memory_budget=int(peak * 0.85))
        assert fit.remat_report["recompute_groups"] > 0
        assert fit.memory(timeline=True)["peak_bytes"] < peak
        assert_same_updates(full, fit, vals)
    init = {w.name: vals[w.name] for w in wrt}  # a train step too, step for step
    data = {"x": vals["x"], "labels": vals["labels"]}
    plain = bp.compile_train_step(loss, optimizer=bp.optim.sgd(0.1), init=init,
                                  feedback="direct")
    budget = bp.compile_train_step(loss, optimizer=bp.optim.sgd(0.1), init=init,
                                   feedback="direct", memory_budget=int(peak * 0.85))
    assert budget.remat_report["recompute_groups"] > 0
    for _ in range(2):
        plain(**data)
        budget(**data)
    for k in init:
        np.testing.assert_allclose(np.asarray(budget.params[k]), np.asarray(plain.params[k]),
                                   rtol=1e-12, err_msg=k)


def test_feedback_through_checkpoint_on_llvm():
    plain, wrt = _mlp(False)
    marked, _ = _mlp(True, nested=True)
    vals = _values(wrt, 2)
    assert_same_updates(bp.compile(plain, wrt, feedback="direct"),
                        bp.compile(marked, wrt, "llvm", feedback="direct"), vals)


def test_report_uses_the_functions_own_feedback_matrices(tmp_path):
    from bpcompile.inspect.report import example_values

    loss, wrt = _mlp(False)
    fn = bp.compile(loss, wrt, "llvm", feedback="alignment", feedback_seed=5)
    vals = example_values(fn)
    for k, B in fn.feedback_values.items():
        np.testing.assert_array_equal(vals[k], B)
    text = fn.report(tmp_path / "fa.html", backends=("numpy",)).read_text()
    assert "Gradient check: JAX" not in text and "does not apply" in text
    assert "numpy reference" in text and "PASS" in text and "FAIL" not in text
    updates = fn(**{k: v for k, v in vals.items() if k not in fn.feedback_values})[1]
    rows = dict(re.findall(r"<tr><td>(\w+)</td><td>\[[\d, ]*\]</td><td>[^<]*</td>"
                           r"<td>([^<]*)</td>", text))
    for k in ("W1", "W3"):  # the table's ‖update‖ is fn's update with its own B
        assert float(rows[k]) == pytest.approx(np.linalg.norm(updates[k]), rel=1e-3)
    angle = re.search(r"<tr><td>W3</td>(?:<td>[^<]*</td>){4}<td>([^<]*)</td>", text)
    assert float(angle.group(1)) == pytest.approx(0.0, abs=0.1)  # the top layer's is exact
    assert "B_W2" in text  # the code section shows the FA backward pass


def _conv_ref(x, k, stride=1, pad=0):
    """(cross-correlation NCHW/OIHW, its windows (kh, kw, N, C, Ho, Wo)) in plain NumPy."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    _, _, kh, kw = k.shape
    ho, wo = (xp.shape[2] - kh) // stride + 1, (xp.shape[3] - kw) // stride + 1
    win = np.stack([np.stack([xp[:, :, i:i + stride * (ho - 1) + 1:stride,
                                 j:j + stride * (wo - 1) + 1:stride] for j in range(kw)])
                    for i in range(kh)])
    return np.einsum("ijncab,ocij->noab", win, k), win


def _dfa_conv_reference(v, B):
    """Nøkland's DFA on conv(3x3) -> tanh -> conv(3x3, stride 2, pad 1) -> tanh -> dense: each
    conv layer's input gets reshape(e B, (N, C, H, W)); weight updates stay local."""
    z1, win1 = _conv_ref(v["x"], v["k1"])
    h1 = np.tanh(z1 + v["c1"][None, :, None, None])
    z2, win2 = _conv_ref(h1, v["k2"], 2, 1)
    h2 = np.tanh(z2)
    flat = h2.reshape(len(h2), -1)
    y = flat @ v["W"] + v["b"]
    p = np.exp(y - y.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = (p - np.eye(y.shape[1])[v["labels"]]) / len(y)
    dz2 = (e @ B["B_W"]).reshape(h2.shape) * (1 - h2**2)
    dz1 = (e @ B["B_k2"]).reshape(h1.shape) * (1 - h1**2)
    return {"W": flat.T @ e, "b": e.sum(0), "k2": np.einsum("ijncab,noab->ocij", win2, dz2),
            "k1": np.einsum("ijncab,noab->ocij", win1, dz1), "c1": dz1.sum((0, 2, 3))}


@pytest.mark.parametrize("backend,ck", [("numpy", False), ("llvm", False), ("numpy", True)])
def test_direct_feedback_through_conv_layers_equals_nokland_reference(backend, ck):
    n = 4
    x, labels = bp.input("x", (n, 1, 6, 6), "float64"), bp.input("labels", (n,), "int32")
    k1, c1 = bp.param("k1", (4, 1, 3, 3), "float64"), bp.param("c1", (4,), "float64")
    k2 = bp.param("k2", (3, 4, 3, 3), "float64")
    W, b = bp.param("W", (12, O), "float64"), bp.param("b", (O,), "float64")

    def convs(x):
        return bp.tanh(bp.conv2d(bp.tanh(bp.conv2d(x, k1, c1)), k2, stride=2, padding=1))

    h2 = (bp.checkpoint(convs) if ck else convs)(x)  # ck: the conv block recomputed
    loss = bp.cross_entropy(bp.reshape(h2, (n, 12)) @ W + b, labels)
    wrt = [k1, c1, k2, W, b]
    fn = bp.compile(loss, wrt, backend, feedback="direct", feedback_seed=1)
    B = fn.feedback_values
    assert {k: v.shape for k, v in B.items()} == {"B_W": (O, 12), "B_k2": (O, 64)}
    rng = np.random.default_rng(3)
    v = {"x": rng.standard_normal(x.shape), "labels": rng.integers(0, O, n).astype(np.int32)}
    v.update({w.name: rng.standard_normal(w.shape) * 0.5 for w in wrt})
    got, want = fn(**v)[1], _dfa_conv_reference(v, B)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_a_users_input_named_like_a_feedback_matrix_stays_the_users():
    """B matrices are recognised by their node's `feedback_of` mark, never by name and shape."""
    loss, wrt = _mlp(False)
    fa = bp.compile(loss, wrt, feedback="alignment")  # makes B_W2 of shape (H, H2)
    assert {n.attr("feedback_of") for n in bp.autodiff.feedback.feedback_inputs(fa)} == {
        "W2", "W3"}
    x = bp.input("x", (N, D), "float64")
    user_b = bp.input("B_W2", (H, H2), "float64")  # the user's own input: same name and shape
    V, U = bp.param("V", (D, H), "float64"), bp.param("U", (H2, 1), "float64")
    Wh = bp.param("Wh", (H, H2), "float64")
    loss2 = bp.mean(bp.tanh(bp.tanh(x @ V) @ Wh + bp.sum(user_b, axis=0)) @ U)
    assert bp.feedback_matrices(loss2) == {}
    fn = bp.compile(loss2, [V, Wh, U], feedback="alignment")
    assert set(fn.feedback_values) == {"B_Wh", "B_U"}  # its own, not the user's B_W2
    assert fn.signature.names.count("B_W2") == 1
    rng = np.random.default_rng(0)
    vals = {"x": rng.standard_normal((N, D)), "V": rng.standard_normal((D, H)),
            "U": rng.standard_normal((H2, 1)), "B_W2": rng.standard_normal((H, H2)),
            "Wh": rng.standard_normal((H, H2))}
    one = fn(**vals)
    two = fn(**{**vals, "B_W2": 2 * vals["B_W2"]})
    assert one[0] != two[0]  # the user's value is read, never replaced by a random matrix
    with pytest.raises(bp.errors.ArgumentError, match="missing B_W2"):
        fn(**{k: v for k, v in vals.items() if k != "B_W2"})


def test_vjp_with_feedback_equals_hand_written_rule():
    """bp.vjp(feedback=) runs the FA rules on any seeded outputs: from the logits with a
    cotangent c, δh = c B_W2ᵀ (Lillicrap et al.), whatever the loss above them."""
    x = bp.input("x", (N, D), "float64")
    W1, W2 = bp.param("W1", (D, H), "float64"), bp.param("W2", (H, O), "float64")
    h = bp.tanh(x @ W1)
    c = bp.input("c", (N, O), "float64")
    d1, d2 = bp.vjp(h @ W2, [W1, W2], c, feedback="alignment")
    B = bp.feedback_matrices([d1, d2], seed=2)
    assert {k: v.shape for k, v in B.items()} == {"B_W2": (H, O)}
    rng = np.random.default_rng(4)
    v = {"x": rng.standard_normal((N, D)), "c": rng.standard_normal((N, O)),
         "W1": rng.standard_normal((D, H)), "W2": rng.standard_normal((H, O)), **B}
    fn = bp.function({"d1": d1, "d2": d2})
    assert "W2" not in fn.signature.names  # no weight transport: W2 is not read
    got = fn(**{k: v[k] for k in fn.signature.names})
    hv = np.tanh(v["x"] @ v["W1"])
    np.testing.assert_allclose(got["d2"], hv.T @ v["c"], rtol=1e-12)
    want = v["x"].T @ ((v["c"] @ v["B_W2"].T) * (1 - hv**2))
    np.testing.assert_allclose(got["d1"], want, rtol=1e-12)
    loss, wrt = _mlp(False)  # a scalar seeded with 1 is bp.grad's sweep
    vals = {**_values(wrt), **bp.feedback_matrices(bp.grad(loss, wrt, feedback="direct"))}
    by_vjp = bp.function(dict(zip("abcdef", bp.vjp(loss, wrt, 1.0, feedback="direct"))))
    by_grad = bp.function(dict(zip("abcdef", bp.grad(loss, wrt, feedback="direct"))))
    a = by_vjp(**{k: vals[k] for k in by_vjp.signature.names})
    b = by_grad(**{k: vals[k] for k in by_grad.signature.names})
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12)


def test_transforms_without_a_feedback_variant_refuse_it(tmp_path, capsys):
    loss, wrt = _mlp(False)
    vals = _values(wrt)
    for call, what in [(lambda: bp.check(loss, wrt, {"x": vals["x"], "labels": vals["labels"]},
                                         feedback="alignment"), "check"),
                       (lambda: bp.jacobian(loss, wrt[0], feedback="direct"), "jacobian"),
                       (lambda: bp.hessian(loss, wrt[0], feedback="alignment"), "hessian"),
                       (lambda: bp.jvp(loss, wrt[0], np.ones(wrt[0].shape),
                                       feedback="alignment"), "jvp")]:
        with pytest.raises(bp.errors.GradientError, match=rf"{what}\(feedback=.*not derivatives"):
            call()
    with pytest.raises(bp.errors.GradientError, match="vjp: feedback='backprop'.*choose from"):
        bp.vjp(loss, wrt, 1.0, feedback="backprop")
    from bpcompile.cli import main

    spec = tmp_path / "fa.toml"
    spec.write_text("\n".join([
        '[model]', 'dtype = "float64"', '[[inputs]]', 'name = "x"', f'shape = [{N}, {D}]',
        '[[inputs]]', 'name = "y"', f'shape = [{N}, 1]', '[[layers]]', 'type = "dense"',
        f'units = {H}', 'activation = "tanh"', '[[layers]]', 'type = "dense"', 'units = 1',
        '[loss]', 'type = "mse"', 'target = "y"', '[feedback]', 'mode = "alignment"', '']))
    assert main(["check", str(spec)]) == 0
    assert "feedback-alignment updates, which are not gradients" in capsys.readouterr().err
