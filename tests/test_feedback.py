"""Feedback alignment (FA) and direct feedback alignment (DFA) as rule sets of the reverse sweep:
step-for-step agreement with hand-written NumPy updates (Lillicrap et al. 2016; Nøkland 2016)
on every backend, the B = W identity (FA with the transported weights is backprop, conv too),
and clear errors where the rules do not apply."""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import optim
from bpcompile.errors import ArgumentError, GradientError

N, D, H, H2, O = 8, 5, 7, 6, 3
LR, STEPS = 0.5, 4
BACKENDS = ["numpy", "llvm", "jax"]


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, D)), rng.integers(0, O, N).astype(np.int32)


def _init(shapes, seed=1):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s) * 0.5 for k, s in shapes.items()}


def _net(hidden):
    """tanh MLP with mean softmax cross-entropy, float64."""
    x, labels = bp.input("x", (N, D), "float64"), bp.input("labels", (N,), "int32")
    sizes, h, shapes = [D, *hidden, O], x, {}
    for i in range(len(sizes) - 1):
        W = bp.param(f"W{i + 1}", (sizes[i], sizes[i + 1]), "float64")
        b = bp.param(f"b{i + 1}", (sizes[i + 1],), "float64")
        shapes[W.name], shapes[b.name] = W.shape, b.shape
        z = h @ W + b
        h = bp.tanh(z) if i < len(sizes) - 2 else z
    return bp.cross_entropy(h, labels), shapes


def _output_error(y, labels):
    p = np.exp(y - y.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return (p - np.eye(O)[labels]) / len(labels)


def _fa_reference(P, B, x, labels):
    """One SGD step of Lillicrap et al.'s rule on a 1-hidden-layer net: δh = e Bᵀ."""
    h = np.tanh(x @ P["W1"] + P["b1"])
    e = _output_error(h @ P["W2"] + P["b2"], labels)
    dz1 = (e @ B["B_W2"].T) * (1 - h**2)
    grads = {"W2": h.T @ e, "b2": e.sum(0), "W1": x.T @ dz1, "b1": dz1.sum(0)}
    return {k: P[k] - LR * grads[k] for k in P}


def _dfa_reference(P, B, x, labels):
    """One SGD step of Nøkland's rule on 2 hidden layers: δh_l = e B_l, from the output error."""
    h1 = np.tanh(x @ P["W1"] + P["b1"])
    h2 = np.tanh(h1 @ P["W2"] + P["b2"])
    e = _output_error(h2 @ P["W3"] + P["b3"], labels)
    dz2 = (e @ B["B_W3"]) * (1 - h2**2)
    dz1 = (e @ B["B_W2"]) * (1 - h1**2)
    grads = {"W3": h2.T @ e, "b3": e.sum(0), "W2": h1.T @ dz2, "b2": dz2.sum(0),
             "W1": x.T @ dz1, "b1": dz1.sum(0)}
    return {k: P[k] - LR * grads[k] for k in P}


def assert_steps_match(hidden, mode, reference, backend):
    loss, shapes = _net(hidden)
    P = _init(shapes)
    step = bp.compile_train_step(loss, optimizer=optim.sgd(LR), backend=backend, init=P,
                                 feedback=mode, feedback_seed=3)
    B = step.feedback_values
    x, labels = _data()
    for t in range(STEPS):
        P = reference(P, B, x, labels)
        step(x=x, labels=labels)
        for k, v in P.items():
            np.testing.assert_allclose(np.asarray(step.params[k]), v, rtol=1e-10, atol=1e-12,
                                       err_msg=f"{mode} {backend} step {t} {k}")
    return B


@pytest.mark.parametrize("backend", BACKENDS)
def test_feedback_alignment_equals_lillicrap_update(backend):
    B = assert_steps_match([H], "alignment", _fa_reference, backend)
    assert set(B) == {"B_W2"} and B["B_W2"].shape == (H, O)  # the input layer sends nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_feedback_alignment_equals_nokland_update(backend):
    B = assert_steps_match([H, H2], "direct", _dfa_reference, backend)
    assert {k: v.shape for k, v in B.items()} == {"B_W3": (O, H2), "B_W2": (O, H)}


def test_matrices_are_seeded_inputs_shown_in_source():
    loss, shapes = _net([H])
    fn = bp.compile(loss, [bp.param(k, s, "float64") for k, s in shapes.items()],
                    feedback="alignment", feedback_seed=7)
    assert "B_W2" in fn.signature.names and "B_W2" in fn.source("function")
    assert not re.search(r"(?<!B_)W2[._]T", fn.source("function"))  # no transported W2ᵀ
    again = bp.feedback_matrices(fn, seed=7)
    np.testing.assert_array_equal(again["B_W2"], fn.feedback_values["B_W2"])
    assert not np.array_equal(bp.feedback_matrices(fn, seed=8)["B_W2"], again["B_W2"])
    exact = bp.compile(loss, [bp.param(k, s, "float64") for k, s in shapes.items()])
    assert "B_W2" not in exact.source("function") and "W2" in exact.source("function")


def test_transported_weights_give_backprop_dense_and_conv():
    """FA with B := W is backprop exactly: the rule replaces only the transported matrix,
    also through a conv kernel's reshape/transpose (im2col)."""
    x = bp.input("x", (2, 3, 6, 6), "float64")
    k = bp.param("k", (4, 3, 3, 3), "float64")
    W = bp.param("W", (4 * 4 * 4, O), "float64")
    h = bp.tanh(bp.conv2d(bp.tanh(bp.conv2d(x, k)), bp.param("k2", (4, 4, 1, 1), "float64")))
    loss = bp.mean(bp.square(bp.reshape(h, (2, 64)) @ W))
    wrt = [k, W, bp.param("k2", (4, 4, 1, 1), "float64")]
    fa = bp.compile(loss, wrt, "llvm", feedback="alignment")  # native caller: keywords only
    assert set(fa.feedback_values) == {"B_W", "B_k2"}
    rng = np.random.default_rng(0)
    vals = {"x": rng.standard_normal(x.shape), "k": rng.standard_normal(k.shape) * 0.3,
            "W": rng.standard_normal(W.shape) * 0.3, "k2": rng.standard_normal((4, 4, 1, 1))}
    exact = bp.compile(loss, wrt)(**vals)[1]
    with_w = fa(**vals, B_W=vals["W"], B_k2=vals["k2"])[1]
    for name in exact:
        np.testing.assert_allclose(with_w[name], exact[name], rtol=1e-12, atol=1e-14)
    positional = fa(*(vals[n] for n in fa.signature.names[:4]), B_W=vals["W"],
                    B_k2=vals["k2"])[1]
    np.testing.assert_allclose(positional["k"], exact["k"], rtol=1e-12, atol=1e-14)
    random_b = fa(**vals)[1]  # the fixed random B: the conv kernel's update differs, W's not
    np.testing.assert_allclose(random_b["W"], exact["W"], rtol=1e-12)
    assert not np.allclose(random_b["k"], exact["k"])


def test_errors_name_the_op_and_where():
    q = bp.input("q", (4, 8), "float64")
    Wq = bp.param("Wq", (8, 8), "float64")
    a = q @ Wq
    loss = bp.sum(bp.softmax(a @ bp.transpose(a)))  # attention's q @ kᵀ
    with pytest.raises(GradientError, match=r"created at test_feedback.py.*no param operand"):
        bp.grad(loss, [Wq], feedback="alignment")
    y = bp.scaled_dot_product_attention(q @ Wq, q @ Wq, q @ Wq)  # the attention layer
    with pytest.raises(GradientError, match="no param operand"):
        bp.grad(bp.sum(y), [Wq], feedback="direct")
    h = bp.tanh(q @ Wq)
    W5, W6 = bp.param("W5", (8, 2), "float64"), bp.param("W6", (8, 2), "float64")
    with pytest.raises(GradientError, match="one output layer.*test_feedback.py"):  # two heads
        bp.grad(bp.sum(h @ W5) + bp.sum(h @ W6), [Wq, W5, W6], feedback="direct")
    with pytest.raises(GradientError, match="choose from"):
        bp.grad(loss, [Wq], feedback="aligned")
    x = bp.input("xs", (5, 2, 3), "float64")
    Wh = bp.param("Wh", (3, 3), "float64")
    _, hs = bp.scan(lambda h, xt: (bp.tanh(xt + h @ Wh),) * 2,
                    bp.const(np.zeros((2, 3))), x)
    with pytest.raises(GradientError, match="scan body"):
        bp.grad(bp.sum(hs), [Wh], feedback="alignment")
    loss, shapes = _net([H])
    with pytest.raises(ArgumentError, match="accumulate"):
        bp.compile_train_step(loss, feedback="direct", accumulate=2)
    Wl, Wc = bp.param("Wl", (6, 8), "float64"), bp.param("Wc", (6, 2), "float64")
    left = bp.transpose(bp.tanh(Wl @ bp.transpose(h)))  # the weight as the left operand
    with pytest.raises(GradientError, match="dense layers.*conv layers.*left operand"):
        bp.grad(bp.sum(left @ Wc), [Wq, Wl, Wc], feedback="direct")


SPEC = f"""
[model]
dtype = "float64"
[[inputs]]
name = "x"
shape = [{N}, {D}]
[[inputs]]
name = "labels"
shape = [{N}]
dtype = "int32"
[[layers]]
type = "dense"
units = {H}
activation = "tanh"
[[layers]]
type = "dense"
units = {O}
[loss]
type = "cross_entropy"
target = "labels"
[feedback]
mode = "alignment"
seed = 5
"""


def test_spec_table_and_cli_flags(tmp_path, capsys):
    from bpcompile.cli import main

    spec = tmp_path / "fa.toml"
    spec.write_text(SPEC)
    model = bp.load_model(str(spec))
    assert model.feedback == {"mode": "alignment", "seed": 5}
    step = bp.compile_train_step(model, optimizer=optim.sgd(LR))
    fn = model.compile()
    name = next(iter(fn.feedback_values))
    np.testing.assert_array_equal(step.feedback_values[name], fn.feedback_values[name])
    x, labels = _data()
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    assert main(["train", str(spec), "--data", str(tmp_path / "d.npz"), "--epochs", "2",
                 "--no-progress", "--feedback", "direct", "--feedback-seed", "1"]) == 0
    assert "trained 2 epochs" in capsys.readouterr().out
    assert main(["compile", str(spec), "--feedback", "direct"]) == 0
    src = capsys.readouterr().out
    assert f"B_{name[2:]}" in src and f"f64[{O},{H}]" in src  # DFA's B: (outputs, hidden)
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC.replace('mode = "alignment"', 'mode = "backprop"'))
    with pytest.raises(bp.SpecError, match=r"\[feedback\].*mode"):
        bp.load_model(str(bad))


def _digits_example():
    path = Path(__file__).resolve().parent.parent / "examples" / "feedback_alignment_digits.py"
    spec = importlib.util.spec_from_file_location("_ex_feedback_alignment_digits", path)
    ex = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ex
    spec.loader.exec_module(ex)
    return ex


def test_alignment_angle_below_90_degrees_after_training():
    """Lillicrap et al.'s claim, on a tiny run of examples/feedback_alignment_digits.py: after
    training, the FA update of each hidden layer is within 90° of the true gradient."""
    ex = _digits_example()
    train, test = ex.load(0)
    # (measured: both hidden layers start near 90° and end near 50°)
    r = ex.train_method("alignment", train, test, epochs=8, batch_size=32, lr=5e-3,
                        hidden=(32, 32))
    assert len(r["angles"]) == 8 and set(r["angles"][-1]) == {"W1", "W2", "W3"}
    assert r["angles"][-1]["W3"] < 1e-3  # the output layer's update is the gradient
    for k in ("W1", "W2"):
        assert 0 < r["angles"][-1][k] < 90, r["angles"]
    assert ex.angle(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(90)
    assert r["test_accuracy"] > 0.85  # it learns (10 classes: chance is 0.1)


def test_digits_example_runs_every_method(tmp_path):
    ex = _digits_example()
    train, test = ex.load(0)
    train = {k: v[:64] for k, v in train.items()}
    results = [ex.train_method(m, train, test, epochs=1, hidden=(8, 8), es_pairs=2)
               for m in ex.METHODS]
    assert [r["method"] for r in results] == list(ex.METHODS)
    assert all(0 <= r["test_accuracy"] <= 1 and r["train_s"] > 0 for r in results)
    assert [bool(r["angles"]) for r in results] == [False, True, True, False]
    text = ex.table(results, 1)
    assert text.count("\n") == len(ex.METHODS) + 1 and "| direct |" in text
    pytest.importorskip("matplotlib")
    assert Path(ex.plot(results, str(tmp_path / "fa.png"))).stat().st_size > 0


def test_jax_data_parallel_and_jax_function_fill_feedback_matrices():
    pytest.importorskip("jax")
    loss, shapes = _net([H])
    wrt = [bp.param(k, s, "float64") for k, s in shapes.items()]
    fn = bp.compile(loss, wrt, "jax", feedback="alignment")
    x, labels = _data()
    vals = {"x": x, "labels": labels, **_init(shapes)}
    want, got = fn(**vals)[1], fn.data_parallel()(**vals)[1]
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-12)
    import jax

    params = {k: vals[k] for k in shapes}
    f = fn.as_jax_function()
    jgrad = jax.grad(lambda p: f(p, x=x, labels=labels))(params)  # our FA backward, via JAX
    for k in want:
        np.testing.assert_allclose(np.asarray(jgrad[k]), np.asarray(want[k]), rtol=1e-12)
