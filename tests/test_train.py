"""The compiled training step, the fit loop, checkpoints, data errors, diagnostics, plots, CLI."""

import json
import warnings

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import optim, train
from bpcompile.train.cli import main as train_main

SPEC = """
[model]
name = "tiny"
dtype = "float64"
[[inputs]]
name = "x"
shape = [8, 3]
[[inputs]]
name = "labels"
shape = [8]
dtype = "int32"
[[layers]]
type = "dense"
units = 6
activation = "tanh"
[[layers]]
type = "dense"
units = 3
[loss]
type = "cross_entropy"
target = "labels"
[init]
method = "glorot"
seed = 0
"""


@pytest.fixture()
def spec_path(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(SPEC)
    return p


def _data(n=100, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    labels = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    return {"x": x, "labels": labels}


def _regression(batch=4):
    x = bp.input("x", (batch, 2), "float64")
    y = bp.input("y", (batch, 1), "float64")
    W = bp.param("W", (2, 1), "float64")
    b = bp.param("b", (1,), "float64")
    return bp.mse(x @ W + b, y), W, b


# ---- the compiled step -----------------------------------------------------------------------
def test_train_step_is_one_function_and_matches_manual_sgd():
    loss, W, b = _regression()
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((4, 2)), rng.standard_normal((4, 1))
    init = {"W": rng.standard_normal((2, 1)), "b": np.zeros(1)}
    step = bp.compile_train_step(loss, [W, b], optim.sgd(0.1), init=init)
    vg = bp.compile(loss, [W, b])
    p = dict(init)
    for _ in range(5):
        value, g = vg(x=X, y=Y, **p)
        got = step(x=X, y=Y)
        assert got == pytest.approx(float(value), rel=1e-12)
        p = {k: p[k] - 0.1 * g[k] for k in p}
        for k in p:
            np.testing.assert_allclose(step.params[k], p[k], rtol=1e-12)
    assert isinstance(step.params["W"], np.ndarray) and step.count == 5
    src = step.fn.source()
    assert "W_next" in src and "dW" in src  # backward and update in the same generated code


def test_train_step_param_names_and_frozen_params():
    loss, W, b = _regression()
    step = bp.compile_train_step(loss, ["W"], optim.sgd(0.1),
                                 init={"W": np.ones((2, 1)), "b": np.full(1, 3.0)})
    step(x=np.ones((4, 2)), y=np.zeros((4, 1)))
    assert step.frozen["b"][0] == 3.0 and "b" not in step.params
    with pytest.raises(bp.ArgumentError, match="'V' is not a param"):
        bp.compile_train_step(loss, ["V"])
    with pytest.raises(bp.ArgumentError, match="missing \\['y'\\]"):
        step(x=np.ones((4, 2)))


def test_diagnostics_are_extra_outputs_and_warn():
    loss, W, b = _regression()
    init = {"W": np.full((2, 1), 1e4), "b": np.zeros(1)}
    step = bp.compile_train_step(loss, [W, b], optim.sgd(1e-9), init=init, diagnostics=True)
    assert "gnorm_W" in step.fn.names and "uratio_W" in step.fn.names
    X = np.ones((4, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step(x=X, y=np.zeros((4, 1)))
    msgs = sorted(str(w.message) for w in caught)
    assert len(msgs) == 2 and "exploding gradient for W" in msgs[0]
    assert "exploding gradient for b" in msgs[1]
    # residual r = X W = 2e4 on every row; dW = (2/4) X^T r = 4e4 per entry
    g = 4e4 * np.sqrt(2)
    assert step.last["gnorm_W"] == pytest.approx(g, rel=1e-9)
    assert step.last["uratio_W"] == pytest.approx(1e-9 * g / (1e4 * np.sqrt(2)), rel=1e-6)
    step.reset({"W": np.zeros((2, 1)), "b": np.zeros(1)})
    with pytest.warns(RuntimeWarning, match="vanishing gradient for [Wb]") as caught:
        step(x=np.zeros((4, 2)), y=np.zeros((4, 1)))
    assert {str(w.message).split(" for ")[1][0] for w in caught} == {"W", "b"}


def test_nonfinite_names_the_first_node():
    x = bp.input("x", (3,), "float64")
    w = bp.param("w", (3,), "float64")
    z = (x * w).named("z")
    loss = bp.sum(bp.log(z).named("logz"))
    step = bp.compile_train_step(loss, [w], optim.sgd(0.1), init={"w": np.ones(3)})
    step(x=np.ones(3))
    before = step.params["w"].copy()
    with pytest.raises(train.NonFiniteError, match="'logz'.*op log.*forward pass"):
        step(x=np.array([1.0, -1.0, 1.0]))
    np.testing.assert_array_equal(step.params["w"], before)  # the bad update is not applied
    with pytest.raises(train.NonFiniteError, match="input 'x' already contains NaN"):
        step(x=np.array([1.0, np.nan, 1.0]))


def test_nonfinite_in_the_backward_pass_names_the_forward_value():
    w = bp.param("w", (3,), "float64")
    x = bp.input("x", (3,), "float64")
    r = bp.sqrt(w * x).named("r")  # d sqrt(u)/du = 1/(2 sqrt u) is inf at u = 0
    step = bp.compile_train_step(bp.sum(r), [w], optim.sgd(0.1), diagnostics=True,
                                 init={"w": np.array([1.0, 0.0, 1.0])})
    with pytest.raises(train.NonFiniteError,
                       match="backward pass.*derivative through forward value\\(s\\) 'r'"):
        step(x=np.ones(3))


def test_jax_backend_train_step_matches_numpy():
    from bpcompile.compiled import get_backend

    try:
        get_backend("jax")
    except bp.BackendError as e:
        pytest.skip(str(e))
    x = bp.input("x", (4, 2), "float32")
    y = bp.input("y", (4, 1), "float32")
    W = bp.param("W", (2, 1), "float32")
    loss = bp.mse(bp.tanh(x @ W), y)
    init = {"W": np.array([[0.3], [-0.2]], np.float32)}
    a = bp.compile_train_step(loss, [W], optim.adam(0.1), init=init)
    b = bp.compile_train_step(loss, [W], optim.adam(0.1), init=init, backend="jax")
    rng = np.random.default_rng(0)
    for _ in range(5):
        X = rng.standard_normal((4, 2)).astype(np.float32)
        Y = rng.standard_normal((4, 1)).astype(np.float32)
        assert b(x=X, y=Y) == pytest.approx(a(x=X, y=Y), rel=1e-5)
    np.testing.assert_allclose(b.params["W"], a.params["W"], rtol=1e-5)


# ---- fit -------------------------------------------------------------------------------------
def test_fit_learns_and_is_seeded(spec_path):
    data = _data()
    h1 = train.fit(bp.spec.load(spec_path), data, epochs=8, optimizer=optim.adam(0.05),
                   seed=3, progress=False)
    h2 = train.fit(bp.spec.load(spec_path), data, epochs=8, optimizer=optim.adam(0.05),
                   seed=3, progress=False)
    assert h1.loss == h2.loss  # same seed: same init and the same batch order
    assert h1.loss[-1] < 0.6 * h1.loss[0]
    assert len(h1.grad_norm["W1"]) == 8 and all(v > 0 for v in h1.grad_norm["W1"])
    h3 = train.fit(bp.spec.load(spec_path), data, epochs=2, optimizer=optim.adam(0.05),
                   seed=4, progress=False)
    assert h3.loss[0] != h1.loss[0]


def test_fit_rebuilds_a_spec_at_another_batch_size_and_validates(spec_path):
    data, val = _data(96), _data(21, seed=1)  # 21 = 2 batches of 8 + a remainder of 5
    h = train.fit(spec_path, data, epochs=3, batch_size=16, validation=val, progress=False,
                  optimizer=optim.adam(0.05))
    assert h.step.input_nodes[0].shape == (16, 3)
    # the validation loss covers all 21 examples: compare with a full-size evaluation
    m = train.rebatch_toml(spec_path, 21)
    full = bp.function({"loss": m.loss})(**val, **h.params)["loss"]
    assert h.val_loss[-1] == pytest.approx(float(full), rel=1e-10)


def test_fit_with_a_function_of_batch_size_and_early_stopping():
    def build(b):
        return _regression(b)[0]

    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 2))
    data = {"x": X, "y": X @ np.array([[1.0], [-2.0]]) + 0.5}
    # lr 0: no improvement after the first epoch, so patience 2 stops at epoch 3
    h = train.fit(build, data, epochs=20, batch_size=8, optimizer=optim.sgd(0.0),
                  early_stopping=2, validation=0.25, progress=False)
    assert h.stopped_early and len(h.epoch) == 3 and h.best_epoch == 1
    h = train.fit(build, data, epochs=30, batch_size=8, optimizer=optim.sgd(0.1),
                  progress=False, init={"W": np.zeros((2, 1)), "b": np.zeros(1)})
    np.testing.assert_allclose(h.params["W"].ravel(), [1.0, -2.0], atol=1e-3)


def test_fit_prints_progress_lines_without_tqdm(spec_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *a, **k):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    train.fit(spec_path, _data(), epochs=2, progress=True)
    out = capsys.readouterr().out
    assert "epoch 1/2  loss" in out and "ex/s" in out and "epoch 2/2" in out


def test_checkpoint_resume_equals_uninterrupted_run(spec_path, tmp_path):
    data = _data()
    kw = dict(optimizer=optim.adam(0.05), seed=1, progress=False)
    full = train.fit(spec_path, data, epochs=6, **kw)
    ck = tmp_path / "ck"
    train.fit(spec_path, data, epochs=3, checkpoint_dir=ck, **kw)
    assert {"last.npz", "best.npz", "history.json"} <= {p.name for p in ck.iterdir()}
    resumed = train.fit(spec_path, data, epochs=6, checkpoint_dir=ck, resume=True, **kw)
    np.testing.assert_allclose(resumed.loss, full.loss, rtol=1e-12)
    for k in full.params:
        np.testing.assert_allclose(resumed.params[k], full.params[k], rtol=1e-12)
    saved = train.load_checkpoint(ck / "last.npz")
    np.testing.assert_array_equal(saved["W1"], resumed.params["W1"])
    assert json.loads((ck / "history.json").read_text())["epoch"] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("bad, message", [
    ({"x": np.zeros((10, 3))}, r"missing \['labels'\]"),
    ({"x": np.zeros((10, 3)), "labels": np.zeros(10, np.int32), "z": 1}, r"unexpected \['z'\]"),
    ({"x": np.zeros((10, 4)), "labels": np.zeros(10, np.int32)}, r"'x' has shape \(10, 4\)"),
    ({"x": np.zeros((10, 3)), "labels": np.zeros(10)}, r"'labels' has dtype float64"),
    ({"x": np.zeros((10, 3)), "labels": np.full(10, 3, np.int32)}, r"must lie in \[0, 3\)"),
    ({"x": np.zeros((10, 3)), "labels": np.zeros(9, np.int32)}, r"9 examples but 'x' has 10"),
    ({"x": np.full((10, 3), np.nan), "labels": np.zeros(10, np.int32)}, r"NaN"),
    ({"x": np.zeros((4, 3)), "labels": np.zeros(4, np.int32)}, r"fewer than batch_size=8"),
])
def test_fit_refuses_data_that_do_not_match(spec_path, bad, message):
    with pytest.raises(train.DataError, match=message):
        train.fit(spec_path, bad, epochs=1, progress=False)


def test_fixed_batch_loss_cannot_change_batch_size():
    loss = _regression(4)[0]
    with pytest.raises(bp.ArgumentError, match="batch size 4"):
        train.fit(loss, {"x": np.zeros((16, 2)), "y": np.zeros((16, 1))}, batch_size=8,
                  progress=False)


def test_reduce_on_plateau_lowers_lr_in_fit(spec_path):
    p = optim.ReduceLROnPlateau(factor=0.5, patience=0)
    h = train.fit(spec_path, _data(), epochs=4, optimizer=optim.sgd(0.0), plateau=p,
                  progress=False)
    assert h.lr == [0.0, 0.0, 0.0, 0.0] and p.scale < 1.0
    h = train.fit(spec_path, _data(), epochs=4, optimizer=optim.sgd(1e-9),
                  plateau=optim.ReduceLROnPlateau(factor=0.5, patience=0), progress=False)
    assert h.lr[-1] < h.lr[0]


# ---- plots and CLI ---------------------------------------------------------------------------
def test_plot_writes_a_png(spec_path, tmp_path):
    pytest.importorskip("matplotlib")
    h = train.fit(spec_path, _data(), epochs=3, validation=0.2, progress=False)
    out = h.plot(tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_cli_train_checkpoint_resume_plot(spec_path, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    data = tmp_path / "d.npz"
    np.savez(data, **_data())
    ck, png = tmp_path / "ck", tmp_path / "p.png"
    args = ["train", str(spec_path), "--data", str(data), "--epochs", "2", "--lr", "0.05",
            "--checkpoint", str(ck), "--no-progress", "--val-split", "0.2"]
    assert train_main(args) == 0
    assert train_main(args[:5] + ["4"] + args[6:] + ["--resume", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "trained 4 epochs" in out and png.is_file()
    assert json.loads((ck / "history.json").read_text())["epoch"] == [1, 2, 3, 4]


def test_cli_train_reports_bad_data(spec_path, tmp_path, capsys):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((10, 3)), y=np.zeros(10))
    assert train_main(["train", str(spec_path), "--data", str(data), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "missing ['labels']" in err and "unexpected ['y']" in err


def test_warnings_are_collected_per_epoch_in_fit():
    def build(b):
        return _regression(b)[0]

    data = {"x": np.zeros((16, 2)), "y": np.zeros((16, 1))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fit collects them instead of warning every step
        h = train.fit(build, data, epochs=2, batch_size=8, progress=False,
                      init={"W": np.zeros((2, 1)), "b": np.zeros(1)})
    assert len(h.warnings) == 4 and "vanishing gradient for W" in h.warnings[0]


# ---- the LLVM backend: in-place native buffers -----------------------------------------------
def _llvm_or_skip():
    try:
        from bpcompile.compiled import get_backend

        get_backend("llvm")
    except bp.BackendError as e:
        pytest.skip(f"llvm backend unavailable: {e}")


@pytest.mark.parametrize("opt", ["adam", "nesterov"])
def test_llvm_train_step_matches_numpy_and_updates_in_place(opt):
    _llvm_or_skip()
    loss, W, b = _regression()
    rng = np.random.default_rng(0)
    init = {"W": rng.standard_normal((2, 1)), "b": np.zeros(1)}
    make = {"adam": lambda: optim.adam(0.05, clip_norm=1.0),
            "nesterov": lambda: optim.nesterov(0.05)}
    ref = bp.compile_train_step(loss, [W, b], make[opt](), init=init, diagnostics=True)
    nat = bp.compile_train_step(loss, [W, b], make[opt](), backend="llvm", init=init,
                                diagnostics=True)
    assert nat._native is not None  # two compiled instances taking turns, no per-step copies
    buffers = {id(nat.params["W"])}
    for _ in range(6):
        X, Y = rng.standard_normal((4, 2)), rng.standard_normal((4, 1))
        assert nat(x=X, y=Y) == pytest.approx(ref(x=X, y=Y), rel=1e-12)
        buffers.add(id(nat.params["W"]))
        np.testing.assert_allclose(nat.last["gnorm_W"], ref.last["gnorm_W"], rtol=1e-12)
    for k in ref.params:
        np.testing.assert_allclose(nat.params[k], ref.params[k], rtol=1e-12)
    for k in ref.opt_state:
        np.testing.assert_allclose(nat.opt_state[k], ref.opt_state[k], rtol=1e-12)
    assert len(buffers) == 2  # two native buffers, alternating, reused every step
    # checkpoints round-trip through the native buffers
    saved = {k: v.copy() for k, v in nat.state_dict().items()}
    nat(x=X, y=Y)
    nat.load_state_dict(saved)
    ref.load_state_dict(saved)
    assert nat(x=X, y=Y) == pytest.approx(ref(x=X, y=Y), rel=1e-12)
    np.testing.assert_allclose(nat.params["W"], ref.params["W"], rtol=1e-12)


def test_llvm_nonfinite_step_is_not_committed():
    _llvm_or_skip()
    x = bp.input("x", (3,), "float64")
    w = bp.param("w", (3,), "float64")
    loss = bp.sum(bp.log((x * w).named("z")).named("logz"))
    step = bp.compile_train_step(loss, [w], optim.sgd(0.1), backend="llvm",
                                 init={"w": np.ones(3)})
    step(x=np.ones(3))
    before = step.params["w"].copy()
    with pytest.raises(train.NonFiniteError, match="'logz'"):
        step(x=np.array([1.0, -1.0, 1.0]))
    np.testing.assert_array_equal(step.params["w"], before)
    step(x=np.ones(3))
    np.testing.assert_allclose(step.params["w"], before - 0.1 / before)


def test_llvm_fit_equals_numpy_fit(spec_path):
    _llvm_or_skip()
    kw = dict(epochs=3, optimizer=optim.adam(0.05), seed=2, progress=False, validation=0.2)
    a = train.fit(spec_path, _data(), backend="numpy", **kw)
    b = train.fit(spec_path, _data(), backend="llvm", **kw)
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-10)
    np.testing.assert_allclose(b.val_loss, a.val_loss, rtol=1e-10)


def test_main_cli_has_the_train_subcommand(spec_path, tmp_path, capsys):
    from bpcompile.cli import main

    data = tmp_path / "d.npz"
    np.savez(data, **_data())
    assert main(["train", str(spec_path), "--data", str(data), "--epochs", "2",
                 "--optimizer", "sgd", "--lr", "0.1", "--no-progress"]) == 0
    assert "trained 2 epochs" in capsys.readouterr().out
    assert main(["train", str(spec_path), "--data", str(tmp_path / "nope.npz")]) == 2
    assert "no such data file" in capsys.readouterr().err
