"""`fit` callbacks: the hook order a user callback sees, and each built-in callback used
directly, agreeing with the `fit` keyword that is its shorthand."""

import io
import json

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import optim, train
from bpcompile.train import Callback, EarlyStopping, History, LROnPlateau, ModelCheckpoint, Progress


def _build(batch):
    x = bp.input("x", (batch, 2), "float64")
    y = bp.input("y", (batch, 1), "float64")
    W = bp.param("W", (2, 1), "float64")
    b = bp.param("b", (1,), "float64")
    return bp.mse(x @ W + b, y)


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2))
    return {"x": x, "y": x @ np.array([[1.0], [-2.0]]) + 0.5}


def _fit(**kw):
    kw = {"epochs": 4, "batch_size": 8, "optimizer": optim.sgd(0.05), "progress": False, **kw}
    return train.fit(_build, _data(), **kw)


class Recorder(Callback):
    """A user callback: records every hook call, and each epoch's params."""

    def __init__(self, stop_after=None):
        self.calls, self.params, self.stop_after = [], [], stop_after

    def on_train_begin(self):
        self.calls.append(("train_begin", self.run.start_epoch))

    def on_epoch_begin(self, epoch):
        self.calls.append(("epoch_begin", epoch))

    def on_batch_end(self, batch, loss):
        self.calls.append(("batch", batch, round(float(loss), 12)))

    def on_epoch_end(self, epoch, logs):
        self.calls.append(("epoch_end", epoch, logs["loss"], logs["val_loss"]))
        self.params.append({k: v.copy() for k, v in self.run.step.params.items()})
        if self.stop_after is not None and epoch + 1 >= self.stop_after:
            self.run.stop_training = True

    def on_train_end(self):
        self.calls.append(("train_end",))


def test_a_user_callback_sees_every_hook_in_order_and_can_stop_the_run():
    rec = Recorder(stop_after=3)
    h = _fit(epochs=10, callbacks=[rec])
    assert h.epoch == [1, 2, 3] and not h.stopped_early  # stopped by the user, not patience
    kinds = [c[0] for c in rec.calls]
    per_epoch = ["epoch_begin"] + ["batch"] * 4 + ["epoch_end"]  # 32 examples / batch 8
    assert kinds == ["train_begin"] + per_epoch * 3 + ["train_end"]
    batches = [c for c in rec.calls if c[0] == "batch"]
    assert [c[1] for c in batches[:4]] == [0, 1, 2, 3]
    ends = [c for c in rec.calls if c[0] == "epoch_end"]
    assert [c[2] for c in ends] == h.loss and all(c[3] is None for c in ends)
    # the epoch loss is the mean of its batches' losses
    assert ends[0][2] == pytest.approx(np.mean([c[2] for c in batches[:4]]), rel=1e-10)


def test_early_stopping_callback_equals_the_keyword_and_restores_the_best_params():
    kw = dict(epochs=20, optimizer=optim.sgd(0.0), validation=0.25)  # lr 0: never improves
    a = _fit(early_stopping=2, **kw)
    rec = Recorder()
    b = _fit(callbacks=[EarlyStopping(patience=2), rec], **kw)
    assert a.to_dict().keys() == b.to_dict().keys()
    assert a.epoch == b.epoch == [1, 2, 3] and a.stopped_early and b.stopped_early
    assert b.best_epoch == 1 and a.val_loss == b.val_loss
    # a rate that improves, then diverges: the run ends on the best epoch's params
    rec = Recorder()
    h = _fit(epochs=30, optimizer=optim.sgd(1.3), callbacks=[EarlyStopping(2), rec])
    assert h.stopped_early and h.best_epoch < len(h.epoch)
    for k, v in rec.params[h.best_epoch - 1].items():
        np.testing.assert_array_equal(h.params[k], v)
    h = _fit(epochs=30, optimizer=optim.sgd(1.3),
             callbacks=[EarlyStopping(2, restore_best=False), rec := Recorder()])
    np.testing.assert_array_equal(h.params["W"], rec.params[-1]["W"])


def test_min_delta_decides_what_counts_as_an_improvement():
    h = _fit(epochs=10, callbacks=[EarlyStopping(patience=1, min_delta=1e9)])
    assert h.epoch == [1, 2] and h.best_epoch == 1  # only the first epoch beats inf - 1e9


def test_lr_on_plateau_callback_scales_the_rate_and_resumes_its_state(tmp_path):
    h = _fit(optimizer=optim.sgd(1e-12), callbacks=[LROnPlateau(factor=0.5, patience=0)])
    assert h.lr[0] == 1e-12 and h.lr[-1] < h.lr[0]
    p = optim.ReduceLROnPlateau(factor=0.5, patience=0)
    cb = LROnPlateau(p)
    _fit(optimizer=optim.sgd(1e-12), callbacks=[cb, ModelCheckpoint(tmp_path)])
    saved = np.load(tmp_path / "last.npz")
    assert float(saved["plateau/scale"]) == p.scale < 1.0
    again = LROnPlateau(factor=0.5, patience=0)
    h = _fit(epochs=5, optimizer=optim.sgd(1e-12),
             callbacks=[again, ModelCheckpoint(tmp_path, resume=True)])
    assert h.epoch == [1, 2, 3, 4, 5] and again.plateau.scale < p.scale  # continued, not reset
    with pytest.raises(TypeError, match="not both"):
        LROnPlateau(p, factor=0.5)


def test_checkpoint_callback_writes_last_best_and_history_and_resumes(tmp_path):
    full = _fit(epochs=6, optimizer=optim.sgd(1.3))  # improves, then diverges
    _fit(epochs=3, optimizer=optim.sgd(1.3), callbacks=[ModelCheckpoint(tmp_path)])
    resumed = _fit(epochs=6, optimizer=optim.sgd(1.3),
                   callbacks=[ModelCheckpoint(tmp_path, resume=True)])
    np.testing.assert_allclose(resumed.loss, full.loss, rtol=1e-12)
    assert json.loads((tmp_path / "history.json").read_text())["epoch"] == [1, 2, 3, 4, 5, 6]
    best = np.load(tmp_path / "best.npz")
    assert int(best["meta/epoch"]) + 1 == full.best_epoch < 6
    np.testing.assert_array_equal(np.load(tmp_path / "last.npz")["param/W"], resumed.params["W"])


def test_progress_callback_writes_epoch_lines_and_replaces_the_keyword_one():
    out = io.StringIO()
    _fit(epochs=6, progress=True, callbacks=[Progress(out, every=2, tty=False)])
    lines = out.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines] == ["1/6", "2/6", "4/6", "6/6"]
    out = io.StringIO()
    _fit(epochs=3, callbacks=[EarlyStopping(1, min_delta=1e9), Progress(out, tty=False)])
    assert out.getvalue().splitlines()[-1].startswith("early stopping after epoch 2")


def test_history_records_the_run_and_round_trips_through_json(tmp_path):
    h = _fit(epochs=3, validation=0.25)
    assert isinstance(h, History) and h.epoch == [1, 2, 3] and len(h.grad_norm["W"]) == 3
    d = h.to_dict()
    assert "run" not in d and "step" not in d and d["val_loss"] == h.val_loss
    h.save_json(tmp_path / "h.json")
    fresh = History()
    fresh.load_json(tmp_path / "h.json")
    assert fresh.to_dict() == d
