"""K-FAC (bpcompile/optim/kfac.py): factors against their definitions from hand-written NumPy
activations and cotangents, the step against the exact natural gradient on a linear-Gaussian
model, every backend against NumPy, and a small MLP training faster than SGD."""

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.errors import ArgumentError
from bpcompile.optim.kfac import damped_inverses
from bpcompile.train import compile_train_step

N, D, H, C = 32, 5, 7, 3


def _mlp(dtype="float64", n=N):
    x = bp.input("x", (n, D), dtype)
    y = bp.input("y", (n,), "int32")
    W1, b1 = bp.param("W1", (D, H), dtype), bp.param("b1", (H,), dtype)
    W2 = bp.param("W2", (H, C), dtype)  # no bias: the A factor has no ones column
    logits = bp.tanh(x @ W1 + b1) @ W2
    return bp.nn.cross_entropy(logits, y), logits


def _data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D))
    Y = ((X[:, 0] > 0).astype(np.int32) + (X[:, 1] > 0.5)).astype(np.int32)
    return X, Y


def _init(seed=1):
    rng = np.random.default_rng(seed)
    return {"W1": rng.normal(size=(D, H)) / np.sqrt(D), "b1": 0.1 * rng.normal(size=H),
            "W2": rng.normal(size=(H, C)) / np.sqrt(H)}


def _numpy_factors(p, X, labels):
    """The definitions: forward activations and pre-activation cotangents by hand."""
    z1 = X @ p["W1"] + p["b1"]
    h = np.tanh(z1)
    z2 = h @ p["W2"]
    e = np.exp(z2 - z2.max(1, keepdims=True))
    prob = e / e.sum(1, keepdims=True)
    g2 = prob - np.eye(C)[labels]  # per-example dℓ/dz2
    g1 = (g2 @ p["W2"].T) * (1 - h**2)
    a1 = np.hstack([X, np.ones((len(X), 1))])
    n = len(X)
    return {"W1": (a1.T @ a1 / n, g1.T @ g1 / n), "W2": (h.T @ h / n, g2.T @ g2 / n)}


def assert_close(a, b, rtol, what):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=0, err_msg=what)


@pytest.mark.parametrize("fisher", ["empirical", "sampled"])
def test_factors_equal_definitions(fisher):
    loss, logits = _mlp()
    X, Y = _data()
    opt = bp.optim.kfac(0.1, fisher=fisher, output=logits if fisher == "sampled" else None)
    step = compile_train_step(loss, optimizer=opt, init=_init())
    p0 = {k: v.copy() for k, v in step.params.items()}
    step(x=X, y=Y)
    want = _numpy_factors(p0, X, _labels(step, p0, X, Y, fisher))
    for k in ("W1", "W2"):  # step 0: the running averages are this batch's factors
        assert_close(step.opt_state[f"kfac_A_{k}"], want[k][0], 1e-10, f"A {k}")
        assert_close(step.opt_state[f"kfac_G_{k}"], want[k][1], 1e-10, f"G {k}")
    for k in p0:  # the first step only gathers curvature
        np.testing.assert_array_equal(step.params[k], p0[k])
    # a second batch: the running average weighs it eps = min(1 - 1/2, decay) = 1/2
    X2, Y2 = _data(5)
    step(x=X2, y=Y2)
    want2 = _numpy_factors(p0, X2, _labels(step, p0, X2, Y2, fisher))
    for k in ("W1", "W2"):
        for i, f in enumerate("AG"):
            assert_close(step.opt_state[f"kfac_{f}_{k}"], (want[k][i] + want2[k][i]) / 2,
                         1e-10, f"running {f} {k}")
    assert not np.allclose(step.params["W1"], p0["W1"])  # now it moves


def _labels(step, p, X, Y, fisher):
    """The targets the last step differentiated: the true labels, or the sampled ones
    (Gumbel-max over the logits with the noise the step was fed)."""
    if fisher == "empirical":
        return Y
    z2 = np.tanh(X @ p["W1"] + p["b1"]) @ p["W2"]
    labels = np.argmax(z2 + step._scalars["kfac_noise"], 1)
    assert (labels != Y).any()  # sampled, not the true labels
    return labels


def test_update_is_damped_preconditioned_gradient():
    loss, logits = _mlp()
    X, Y = _data()
    lr, lam = 0.3, 1e-2
    step = compile_train_step(loss, optimizer=bp.optim.kfac(lr, damping=lam, fisher="empirical"),
                              init=_init())
    step(x=X, y=Y)
    p1 = {k: v.copy() for k, v in step.params.items()}
    A1, G1 = step.opt_state["kfac_A_W1"].copy(), step.opt_state["kfac_G_W1"].copy()
    A2, G2 = step.opt_state["kfac_A_W2"].copy(), step.opt_state["kfac_G_W2"].copy()
    step(x=X, y=Y)
    grads = bp.compile(loss, [n for n in _params(loss)], "numpy")(x=X, y=Y, **p1)[1]
    Ai, Gi = damped_inverses(A1, G1, lam)
    pre1 = Ai @ np.vstack([grads["W1"], grads["b1"][None]]) @ Gi
    Ai, Gi = damped_inverses(A2, G2, lam)
    pre2 = Ai @ grads["W2"] @ Gi
    assert_close(step.params["W1"], p1["W1"] - lr * pre1[:-1], 1e-10, "W1")
    assert_close(step.params["b1"], p1["b1"] - lr * pre1[-1], 1e-10, "b1")
    assert_close(step.params["W2"], p1["W2"] - lr * pre2, 1e-10, "W2")


def _params(loss):
    from bpcompile.ir.traverse import leaves

    return leaves([loss], ops=("param",))


def test_linear_gaussian_step_is_natural_gradient():
    """Linear model f = xW + b, y ~ N(f, I): the Fisher is exactly E[ā āᵀ] ⊗ I, so the K-FAC
    step equals the natural-gradient step up to the Monte Carlo error of the sampled G
    (≈ I ± 1/sqrt(n)); rtol 5e-2 at n = 4096."""
    n, d, o = 16384, 3, 2
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)) * np.array([1.0, 3.0, 0.3]) + 0.5
    Yt = X @ rng.normal(size=(d, o)) + 0.3 * rng.normal(size=(n, o))
    x, y = bp.input("x", (n, d), "float64"), bp.input("y", (n, o), "float64")
    W, b = bp.param("W", (d, o), "float64"), bp.param("b", (o,), "float64")
    f = x @ W + b
    loss = 0.5 * bp.sum((y - f) ** 2) / n
    lr = 1.0
    opt = bp.optim.kfac(lr, damping=1e-20, output=f, likelihood="gaussian", inverse_every=1)
    init = {"W": rng.normal(size=(d, o)), "b": rng.normal(size=o)}
    step = compile_train_step(loss, optimizer=opt, init=init)
    step(x=X, y=Yt)
    G = step.opt_state["kfac_G_W"].copy()  # what the second step preconditions with
    step(x=X, y=Yt)
    a = np.hstack([X, np.ones((n, 1))])
    theta = np.vstack([init["W"], init["b"][None]])
    grad = a.T @ (a @ theta - Yt) / n  # (d+1, o)
    F = np.kron(a.T @ a / n, np.eye(o))  # the Fisher of vec(theta), row-major
    ng = -lr * np.linalg.solve(F, grad.reshape(-1)).reshape(d + 1, o)
    got = np.vstack([step.params["W"], step.params["b"][None]]) - theta
    assert_rel_norm(got, ng, 3e-2, "natural-gradient step")
    # the natural-gradient step with lr 1 solves least squares in one step
    lstsq = np.linalg.lstsq(a, Yt, rcond=None)[0]
    assert_rel_norm(theta + got, lstsq, 3e-2, "one step to the least-squares solution")
    # and it is the exact natural-gradient step for the sampled G it estimated
    exact = -lr * np.linalg.solve(np.kron(a.T @ a / n, G), grad.reshape(-1)).reshape(d + 1, o)
    assert_close(got, exact, 1e-8, "step with the sampled G")


def assert_rel_norm(a, b, tol, what):
    err = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol}"


@pytest.mark.parametrize("backend", ["llvm", "jax"])
def test_backends_match_numpy(backend):
    loss, logits = _mlp()
    X, Y = _data()
    runs = {}
    for be in ("numpy", backend):
        opt = bp.optim.kfac(0.2, output=logits, momentum=0.5, inverse_every=2, seed=3)
        step = compile_train_step(loss, optimizer=opt, backend=be, init=_init())
        runs[be] = [step(x=X, y=Y) for _ in range(5)], {k: v.copy()
                                                          for k, v in step.params.items()}
    assert_close(runs[backend][0], runs["numpy"][0], 1e-9, "losses")
    for k, v in runs["numpy"][1].items():
        assert_close(runs[backend][1][k], v, 1e-8, k)


def test_kfac_beats_sgd_per_step():
    loss, logits = _mlp("float32", 128)
    X, Y = _data(2, 128)
    steps = 25

    def final(opt):
        st = compile_train_step(loss, optimizer=opt, backend="llvm",
                                init={k: v.astype(np.float32) for k, v in _init().items()})
        for _ in range(steps):
            st(x=X.astype(np.float32), y=Y)
        return st.evaluate(x=X.astype(np.float32), y=Y)

    # SGD at the best of a learning-rate grid (3.0 here) against one K-FAC setting (its
    # final loss is 0.16-0.19 over sampling seeds 0-3, SGD's 0.23)
    best_sgd = min(final(bp.optim.sgd(lr)) for lr in (0.3, 1.0, 3.0, 10.0))
    k = final(bp.optim.kfac(0.5, damping=1e-2, output=logits, inverse_every=2))
    assert k < 0.85 * best_sgd, (k, best_sgd)


def test_errors_name_the_problem():
    loss, logits = _mlp()
    with pytest.raises(ArgumentError, match="output="):
        bp.optim.kfac(0.1)
    with pytest.raises(ArgumentError, match="likelihood"):
        bp.optim.kfac(0.1, output=logits, likelihood="poisson")
    with pytest.raises(ArgumentError, match="accumulate"):
        compile_train_step(loss, optimizer=bp.optim.kfac(0.1, fisher="empirical"),
                           accumulate=2, init=_init())
    with pytest.raises(ArgumentError, match="precision"):
        compile_train_step(loss, optimizer=bp.optim.kfac(0.1, fisher="empirical"),
                           precision="bfloat16", init=_init())
    xh, Wh = bp.input("xh", (4, 3), "float16"), bp.param("Wh", (3, 2), "float16")
    with pytest.raises(ArgumentError, match="16-bit"):
        compile_train_step(bp.sum(bp.tanh(xh @ Wh)),
                           optimizer=bp.optim.kfac(0.1, fisher="empirical"))
    x = bp.input("x", (4, 3), "float64")
    W = bp.param("W", (3, 3), "float64")
    shared = bp.sum(bp.tanh(bp.tanh(x @ W) @ W))
    with pytest.raises(ArgumentError, match="'W'.*used by 2"):
        compile_train_step(shared, optimizer=bp.optim.kfac(0.1, fisher="empirical"))
    # an L2 penalty on a dense weight is not sharing: the layer stays a K-FAC block
    l2 = loss + 1e-3 * bp.sum(_params(loss)[0] ** 2)
    st = compile_train_step(l2, optimizer=bp.optim.kfac(0.1, fisher="empirical"), init=_init())
    assert [ly.name for ly in st.optimizer.layers] == ["W1", "W2"]
    v = bp.param("v", (3,), "float64")
    with pytest.raises(ArgumentError, match="no dense or conv2d layer"):
        compile_train_step(bp.sum(x * v), optimizer=bp.optim.kfac(0.1, fisher="empirical"))
    other = bp.input("z", (N, C), "float64")
    with pytest.raises(ArgumentError, match="not a node of the loss"):
        compile_train_step(loss, optimizer=bp.optim.kfac(0.1, output=other), init=_init())


def test_fit_by_name_and_checkpoint_restore():
    """`optimizer="kfac"` by name (empirical Fisher) through `fit`; a restored checkpoint
    refreshes the inverses from the restored factors, so the next step matches."""
    loss, _ = _mlp()
    X, Y = _data()
    hist = bp.train.fit(loss, {"x": X, "y": Y}, epochs=3, batch_size=N, progress=False,
                        optimizer=bp.optim.get("kfac", 0.3, inverse_every=1), init=_init())
    assert hist.step.optimizer.fisher == "empirical"
    by_name = compile_train_step(loss, optimizer="kfac", init=_init())  # default lr 1e-2
    assert by_name.optimizer.name == "kfac" and by_name.optimizer.fisher == "empirical"
    with pytest.raises(ArgumentError, match="unknown optimizer 'kfc'"):
        compile_train_step(loss, optimizer="kfc", init=_init())
    assert hist.loss[-1] < hist.loss[0]
    a = hist.step
    assert a is not None
    b = compile_train_step(loss, optimizer=bp.optim.get("kfac", 0.3, inverse_every=1),
                           init=_init())
    b.load_state_dict(a.state_dict())
    a(x=X, y=Y)
    b(x=X, y=Y)
    for k, v in a.params.items():
        assert_close(b.params[k], v, 1e-12, k)


def test_digits_example_kfac_needs_fewer_steps():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
    from kfac_digits import main

    rows = main(["--seeds", "0", "--only", "sgd", "kfac", "--max-steps", "300"])
    steps = {r["optimizer"]: r["steps"] for r in rows if r["reached"]}
    assert set(steps) == {"sgd", "kfac"} and steps["kfac"] < steps["sgd"] / 2, rows


def test_cli_optimizer_kfac(capsys):
    """`bpcompile train --optimizer kfac` (empirical Fisher): the 1986 XOR net in 200 epochs
    (momentum needs ~3000 to the same loss, docs/training.md)."""
    from pathlib import Path

    from bpcompile.cli import main

    xor = str(Path(__file__).parent.parent / "examples" / "xor.toml")
    assert main(["train", xor, "--epochs", "200", "--optimizer", "kfac", "--lr", "0.5",
                 "--no-progress"]) == 0
    loss = float(capsys.readouterr().out.split("loss ")[1].split(",")[0])
    assert loss < 1e-3
    assert main(["train", xor, "--optimizer", "kfac", "--clip-norm", "1"]) == 2
    assert "clipping" in capsys.readouterr().err


def test_conv_factors_equal_kfc_definitions():
    """KFC (Grosse & Martens 2016) for conv2d: A = Σ_positions ā āᵀ / N over im2col patches
    (with a ones column for the bias), G = (1/(N T)) Σ (N δ)(N δ)ᵀ over examples and the T
    output positions, δ the batch-mean loss's cotangent of the conv output (from JAX)."""
    import jax
    import jax.numpy as jnp

    n, c, hw, o, k = 3, 2, 5, 4, 3
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, c, hw, hw))
    Y = np.array([0, 1, 1], np.int32)
    Wv, bv = rng.normal(size=(o, c, k, k)) / 3, rng.normal(size=o)
    Vv = rng.normal(size=(o * 9, 2)) / 6
    x, y = bp.input("x", X.shape, "float64"), bp.input("y", (n,), "int32")
    W, b = bp.param("W", Wv.shape, "float64"), bp.param("b", (o,), "float64")
    V = bp.param("V", Vv.shape, "float64")
    z = bp.conv2d(x, W, b)
    loss = bp.nn.cross_entropy(bp.reshape(bp.tanh(z), (n, o * 9)) @ V, y)
    step = compile_train_step(loss, optimizer=bp.optim.kfac(0.1, fisher="empirical"),
                              init={"W": Wv, "b": bv, "V": Vv})
    step(x=X, y=Y)

    def head(zv):
        logits = jnp.tanh(zv).reshape(n, -1) @ Vv
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(n), Y])

    zv = jax.lax.conv_general_dilated(X, Wv, (1, 1), "VALID") + bv[None, :, None, None]
    delta = np.asarray(jax.grad(head)(zv))  # (n, o, 3, 3)
    t = 9
    d = delta.transpose(0, 2, 3, 1).reshape(n * t, o) * n  # per-example derivatives
    patches = np.stack([X[:, :, i:i + 3, j:j + 3].reshape(n, c * k * k)
                        for i in range(3) for j in range(3)], 1).reshape(n * t, c * k * k)
    a = np.hstack([patches, np.ones((n * t, 1))])
    assert_close(step.opt_state["kfac_A_W"], a.T @ a / n, 1e-10, "conv A")
    assert_close(step.opt_state["kfac_G_W"], d.T @ d / (n * t), 1e-10, "conv G")
    # the next step: [dWm; db] <- A⁻¹ [dWm; db] G⁻¹ with dWm the kernel gradient as the
    # (C·kh·kw, O) matrix the im2col matmul multiplies, mapped back to (O, C, kh, kw)
    A, G = step.opt_state["kfac_A_W"].copy(), step.opt_state["kfac_G_W"].copy()
    step(x=X, y=Y)
    g = bp.compile(loss, [W, b, V])(x=X, y=Y, W=Wv, b=bv, V=Vv)[1]
    Ai, Gi = damped_inverses(A, G, 1e-3)
    pre = Ai @ np.vstack([g["W"].reshape(o, -1).T, g["b"][None]]) @ Gi
    assert_close(step.params["W"], Wv - 0.1 * pre[:-1].T.reshape(Wv.shape), 1e-10, "conv W")
    assert_close(step.params["b"], bv - 0.1 * pre[-1], 1e-10, "conv b")


def test_bernoulli_sampled_factor():
    """Binary cross-entropy with logits: targets y_k = [u_k < sigmoid(z_k)] from the step's
    uniform noise; G = (1/N) Σ (σ(z) − y)(σ(z) − y)ᵀ."""
    n, d, k = 40, 3, 2
    rng = np.random.default_rng(4)
    X, T = rng.normal(size=(n, d)), (rng.random((n, k)) < 0.5).astype(np.float64)
    x, t = bp.input("x", (n, d), "float64"), bp.input("t", (n, k), "float64")
    W = bp.param("W", (d, k), "float64")
    z = x @ W
    loss = bp.nn.binary_cross_entropy_with_logits(z, t) * k  # the batch mean of Σ_k
    Wv = rng.normal(size=(d, k))
    step = compile_train_step(loss, optimizer=bp.optim.kfac(
        0.1, output=z, likelihood="bernoulli"), init={"W": Wv})
    step(x=X, t=T)
    p = 1 / (1 + np.exp(-X @ Wv))
    ys = (step._scalars["kfac_noise"] < p).astype(np.float64)
    assert_close(step.opt_state["kfac_G_W"], (p - ys).T @ (p - ys) / n, 1e-10, "G")
    assert_close(step.opt_state["kfac_A_W"], X.T @ X / n, 1e-10, "A")
