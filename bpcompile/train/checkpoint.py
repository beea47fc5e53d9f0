"""Training checkpoints: one `.npz` holding the step's params, frozen params, optimizer state,
step count and lr scale, the epoch, and the state of stateful callbacks (`<key>/<name>`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .step import TrainStep


def save_state(path: Path, step: TrainStep, epoch: int, stateful: dict) -> None:
    """Write `path` atomically: an interrupted save never leaves a broken last.npz."""
    d = step.state_dict()
    d["meta/epoch"] = np.asarray(epoch)
    for key, cb in stateful.items():
        for k, v in cb.state_dict().items():
            d[f"{key}/{k}"] = np.asarray(v)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **d)
    tmp.replace(path)


def load_state(path: Path, step: TrainStep, stateful: dict) -> int:
    """Restore params, optimizer state, step count and callback state; return the epoch to
    continue from."""
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    step.load_state_dict(d)
    for key, cb in stateful.items():
        mine = {k[len(key) + 1:]: v for k, v in d.items() if k.startswith(f"{key}/")}
        if mine:  # a checkpoint written without this callback leaves it as it is
            cb.load_state_dict(mine)
    return int(d["meta/epoch"]) + 1


def load_checkpoint(path) -> dict:
    """The params saved in a checkpoint `.npz`, by name."""
    with np.load(path, allow_pickle=False) as z:
        return {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
