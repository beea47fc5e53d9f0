"""`History`: the per-epoch record of a `fit` run, kept by the loop's first callback."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .callbacks import Callback
from .step import TrainStep


@dataclass
class History(Callback):
    """Per-epoch records of a `fit` run, and the trained `step` (params: `history.params`).

    As a callback it appends each epoch's logs and the best epoch (as the run judged it);
    `fit` always puts it first, so later callbacks see the epoch already recorded.
    """

    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    examples_per_s: list = field(default_factory=list)
    grad_norm: dict = field(default_factory=dict)  # param -> per-epoch mean ‖grad‖
    update_ratio: dict = field(default_factory=dict)  # param -> per-epoch mean ‖Δ‖/‖param‖
    warnings: list = field(default_factory=list)
    loss_scale: list = field(default_factory=list)  # with loss scaling: the scale at epoch end
    skipped_steps: list = field(default_factory=list)  # ... and the steps skipped in the epoch
    best_epoch: int | None = None
    best_loss: float | None = None
    stopped_early: bool = False
    step: TrainStep | None = None

    @property
    def params(self) -> dict:
        return self.step.params if self.step is not None else {}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self.epoch.append(epoch + 1)
        for key in ("loss", "val_loss", "lr", "seconds", "examples_per_s"):
            getattr(self, key).append(logs[key])
        for key in ("grad_norm", "update_ratio"):
            for k, v in logs.get(key, {}).items():
                getattr(self, key).setdefault(k, []).append(v)
        for key in ("loss_scale", "skipped_steps"):
            if key in logs:
                getattr(self, key).append(logs[key])
        for msg in logs.get("warnings", {}).values():
            self.warnings.append(f"epoch {epoch + 1}, {msg}")
        if self.run.improved:
            self.best_epoch, self.best_loss = epoch + 1, self.run.best

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "step"}
        return json.loads(json.dumps(d, default=float))

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def save_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    def load_json(self, path: Path) -> None:
        """Continue a saved record in place (a resumed run appends to it)."""
        saved = History.from_dict(json.loads(Path(path).read_text()))
        for f in fields(self):
            if f.name != "step":
                setattr(self, f.name, getattr(saved, f.name))

    def plot(self, path) -> Path:
        from .plot import plot_history

        return plot_history(self, path)
