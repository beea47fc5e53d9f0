"""Callbacks of `bp.train.fit`, in the shape of Keras callbacks: hooks the loop calls at the
start and end of the run, of each epoch and after each batch.

The loop trains and measures; everything it does besides (early stopping, checkpoints, the
learning rate on a plateau, progress output, the history record) is a callback, so a user's
own reaction to an epoch is one small class rather than another `fit` keyword. Callbacks see
the run through `self.run` (a `Run`) and run in list order.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..optim import ReduceLROnPlateau
from .checkpoint import load_state, save_state

if TYPE_CHECKING:
    from .history import History
    from .step import TrainStep


@dataclass
class Run:
    """What callbacks see of a running `fit`.

    `monitor` is "val_loss" with validation data, else "loss". The loop judges improvement
    once per epoch (`improved`, `best`; `min_delta` comes from the `EarlyStopping` callback,
    0 without one), so the history, best.npz and early stopping agree on the best epoch. A
    callback ends the run by setting `stop_training` (and `stop_reason`, which `Progress`
    prints); `ModelCheckpoint` sets `start_epoch` when it resumes.
    """

    step: TrainStep
    history: History
    epochs: int
    batch_size: int
    monitor: str
    callbacks: list = field(default_factory=list)
    min_delta: float = 0.0
    start_epoch: int = 0
    batches: int = 0  # full batches in the current epoch
    best: float = math.inf
    improved: bool = False
    stop_training: bool = False
    stop_reason: str | None = None


class Callback:
    """Base class: override the hooks you need. `logs` of `on_epoch_end` holds the epoch's
    loss, val_loss (None without validation), lr, seconds, examples_per_s and, with
    diagnostics, grad_norm and update_ratio (param -> mean) and warnings (key -> message).

    A callback with state to keep across a resume sets `state_key` and implements
    `state_dict()`/`load_state_dict(d)`; `ModelCheckpoint` saves it under `<state_key>/`.
    """

    run: Run | None = None
    state_key: str | None = None

    def on_train_begin(self) -> None:
        pass

    def on_epoch_begin(self, epoch: int) -> None:
        pass

    def on_batch_end(self, batch: int, loss: float) -> None:
        """After each step, with that batch's loss (before the update, as the step reports)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        pass

    def on_train_end(self) -> None:
        pass


def overrides(cb: Callback, hook: str) -> bool:
    """Whether `cb` defines `hook` itself: the loop calls per-batch hooks only where they do
    something, since a step can take a microsecond."""
    return getattr(type(cb), hook) is not getattr(Callback, hook)


# ---- early stopping --------------------------------------------------------------------------
class EarlyStopping(Callback):
    """Stop when the monitored loss has not improved by more than `min_delta` for `patience`
    epochs; with `restore_best`, end with the params of the best epoch."""

    def __init__(self, patience: int = 10, min_delta: float = 0.0, restore_best: bool = True):
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.restore_best = bool(restore_best)
        self.bad, self.best_params = 0, None

    def on_train_begin(self) -> None:
        self.bad, self.best_params = 0, None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        run = self.run
        if run.improved:
            self.bad = 0
            if self.restore_best:
                self.best_params = {k: v.copy() for k, v in run.step.params.items()}
        else:
            self.bad += 1
        if self.bad >= self.patience:
            run.stop_training = run.history.stopped_early = True
            run.stop_reason = (
                f"early stopping after epoch {epoch + 1}: no {run.monitor} improvement for "
                f"{self.patience} epochs (best {run.best:.6g} at epoch {run.history.best_epoch})")

    def on_train_end(self) -> None:
        if self.best_params is not None:
            self.run.step.set_params(self.best_params)


def early_stopping_from(es) -> EarlyStopping | None:
    """`fit(early_stopping=...)`: a patience, True (patience 10), or a dict with 'patience'
    and optionally 'min_delta', 'restore_best'."""
    if es is None or es is False:
        return None
    if isinstance(es, EarlyStopping):
        return es
    if isinstance(es, bool):
        es = 10
    if isinstance(es, int):
        es = {"patience": es}
    if not isinstance(es, dict) or "patience" not in es:
        from ..errors import ArgumentError

        raise ArgumentError("early_stopping must be a patience (int) or a dict with 'patience'")
    return EarlyStopping(es["patience"], es.get("min_delta", 0.0), es.get("restore_best", True))


# ---- learning rate on a plateau --------------------------------------------------------------
class LROnPlateau(Callback):
    """Feed the monitored loss to an `optim.ReduceLROnPlateau` after each epoch and write its
    scale to the step's `lr_scale` (so the rate changes without recompiling). Give the
    scheduler, or its arguments (`LROnPlateau(factor=0.5, patience=2)`)."""

    state_key = "plateau"

    def __init__(self, plateau: ReduceLROnPlateau | None = None, **kwargs):
        if plateau is not None and kwargs:
            raise TypeError("LROnPlateau: give a ReduceLROnPlateau or its arguments, not both")
        self.plateau = plateau if plateau is not None else ReduceLROnPlateau(**kwargs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self.run.step.lr_scale = self.plateau.update(logs[self.run.monitor])

    def state_dict(self) -> dict:
        return self.plateau.state_dict()

    def load_state_dict(self, d: dict) -> None:
        self.plateau.load_state_dict(d)


# ---- checkpoints -----------------------------------------------------------------------------
class ModelCheckpoint(Callback):
    """Write `last.npz` every epoch and `best.npz` at each improvement (params, frozen params,
    optimizer state, step count, lr scale, epoch and every stateful callback's state; atomic),
    then `history.json`. With `resume=True` a run continues from `last.npz` when it exists.

    Put it after the callbacks whose state it saves; `fit` places its own last but `Progress`.
    """

    def __init__(self, directory, resume: bool = False):
        self.dir, self.resume = Path(directory), bool(resume)

    def _stateful(self) -> dict:
        return {c.state_key: c for c in self.run.callbacks if c.state_key is not None}

    def on_train_begin(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.resume and (self.dir / "last.npz").is_file():
            self.run.start_epoch = load_state(self.dir / "last.npz", self.run.step,
                                              self._stateful())
            if (self.dir / "history.json").is_file():
                self.run.history.load_json(self.dir / "history.json")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        stateful = self._stateful()
        save_state(self.dir / "last.npz", self.run.step, epoch, stateful)
        if self.run.improved:
            save_state(self.dir / "best.npz", self.run.step, epoch, stateful)
        self.run.history.save_json(self.dir / "history.json")


# ---- progress --------------------------------------------------------------------------------
class Progress(Callback):
    """One tqdm bar for the whole run when tqdm is installed and stderr is a terminal; else a
    plain log line every `every` epochs (and the first and last), so a piped log of a
    3000-epoch run holds ~20 lines and no bar fragments. Diagnostic warnings are printed once
    per run, and the reason the run stopped early. `tty` None: ask stderr."""

    def __init__(self, out=None, every: int | None = None, tty: bool | None = None):
        self.out, self.every_arg, self.tty = out, every, tty
        self.tqdm, self.bar, self.seen = None, None, set()

    def on_train_begin(self) -> None:
        run = self.run
        self.out = self.out or sys.stdout
        self.every = self.every_arg or max(1, math.ceil(run.epochs / 20))
        tty = isatty(sys.stderr) if self.tty is None else self.tty
        if tty:  # a bar in a log file is noise
            try:
                from tqdm.auto import tqdm

                self.tqdm = tqdm
            except ImportError:
                pass
        if self.tqdm is not None:
            self.bar = self.tqdm(total=run.epochs, initial=run.start_epoch, unit="epoch",
                                 desc="training", dynamic_ncols=True, leave=False)

    def on_epoch_begin(self, epoch: int) -> None:
        self.total, self.seen_batches = 0.0, 0
        self.every_batch = max(1, self.run.batches // 50)
        self.t0 = time.perf_counter()

    def on_batch_end(self, batch: int, loss: float) -> None:
        self.total += loss  # the running loss inside an epoch: the bar's postfix only
        i = batch + 1
        if self.bar is not None and (i % self.every_batch == 0 or i == self.run.batches):
            dt = time.perf_counter() - self.t0
            ex_s = i * self.run.batch_size / max(dt, 1e-9)
            self.bar.set_postfix_str(f"loss {self.total / i:.4g}, {ex_s:,.0f} ex/s",
                                     refresh=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        run = self.run
        line = (f"epoch {epoch + 1}/{run.epochs}  loss {logs['loss']:.6g}"
                + (f"  val_loss {logs['val_loss']:.6g}" if logs["val_loss"] is not None else "")
                + f"  lr {logs['lr']:.3g}  {logs['examples_per_s']:,.0f} ex/s")
        if "loss_scale" in logs:
            line += f"  loss scale {logs['loss_scale']:g} ({logs['skipped_steps']} skipped)"
        if self.bar is not None:
            self.bar.update(1)
        elif ((epoch + 1) % self.every == 0 or epoch == run.start_epoch
              or epoch + 1 == run.epochs):
            self.note(line)
        for key, msg in logs.get("warnings", {}).items():
            if key not in self.seen:  # once per run: a warning every epoch drowns the log
                self.seen.add(key)
                self.note(f"  warning (epoch {epoch + 1}, shown once): {msg}")
        if run.stop_training and run.stop_reason:
            self.close(run.stop_reason)

    def on_train_end(self) -> None:
        self.close()

    def note(self, line: str) -> None:
        if self.bar is not None:
            self.tqdm.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    def close(self, line: str | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if line:
            self.note(line)


def isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False
