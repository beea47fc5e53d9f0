"""`bp.train.fit`: seeded minibatch training with progress, validation, early stopping,
checkpoints that resume, and gradient diagnostics recorded per epoch.

The loop itself is plain Python over batches; every step is one call of the compiled
`TrainStep` (forward + backward + optimizer update fused). Data order depends only on
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..compiled import Function
from ..errors import ArgumentError
from ..ir.node import Node
from ..ir.traverse import toposort
from ..ops.index import input_ranges
from ..optim import Optimizer, ReduceLROnPlateau, adam
from ..toml_read import toml_module
from .data import DataError, cast_data, check_data, epoch_batches, load_npz, split
from .step import TrainStep


# ---- models at a batch size ------------------------------------------------------------------
class ModelSource:
    """A model that can be rebuilt at another batch size where possible.

    Graph shapes are static, so training at `batch_size` needs the loss built for it: a TOML
    spec is re-read with its inputs' leading axis changed; a callable `batch_size -> Model or
    loss` is called; a bare loss node (or a Python-file model) is usable only at its own batch.
    """

    def __init__(self, model_or_loss):
        from ..spec import Model

        self.builder = None
        if isinstance(model_or_loss, (str, Path)):
            from ..spec import load

            model_or_loss = load(model_or_loss)
        if isinstance(model_or_loss, Model):
            self.model = model_or_loss
            src = model_or_loss.source
            if src and str(src).endswith(".toml") and Path(src).is_file():
                self.builder = lambda b, p=Path(src): rebatch_toml(p, b)
        elif isinstance(model_or_loss, Node):
            self.model = _as_model(model_or_loss)
        elif callable(model_or_loss):
            self.builder = lambda b, f=model_or_loss: _as_model(f(b))
            self.model = None
        else:
            raise TypeError("fit: expected a spec Model, a loss node, a spec path or a function "
                            f"batch_size -> loss, got {type(model_or_loss).__name__}")

    @property
    def batch(self) -> int | None:
        if self.model is None:
            return None
        shapes = [x.shape for x in self.model.inputs]
        return shapes[0][0] if shapes and shapes[0] else None

    def at(self, batch_size: int):
        if self.model is not None and self.batch == batch_size:
            return self.model
        if self.builder is None:
            raise ArgumentError(
                f"the model's inputs have batch size {self.batch} and the graph's shapes are "
                f"static; train with batch_size={self.batch}, or pass a TOML spec or a function "
                f"batch_size -> loss so the model can be rebuilt at batch size {batch_size}")
        m = self.builder(batch_size)
        if self.model is None:
            self.model = m
        return m


def _as_model(x):
    from ..spec import Model

    if isinstance(x, Model):
        return x
    if isinstance(x, Node):
        from ..ir.traverse import leaves

        return Model(x, leaves([x], ops=("param",)), name="loss")
    raise TypeError(f"expected a spec Model or a loss node, got {type(x).__name__}")


def rebatch_toml(path: Path, batch_size: int):
    """Re-read a TOML spec with every input's leading (batch) axis set to `batch_size`."""
    from ..spec import from_dict

    doc = toml_module().loads(Path(path).read_text())
    inputs = doc.get("inputs")
    items = list(inputs.values()) if isinstance(inputs, dict) else list(inputs or [])
    names = []
    for v in items:
        if isinstance(v, dict) and isinstance(v.get("shape"), list) and v["shape"]:
            v["shape"] = [batch_size] + list(v["shape"][1:])
            names.append(v.get("name"))
    if isinstance(inputs, dict):
        names = list(inputs)
    data = doc.get("data")
    if isinstance(data, dict):  # literal input data no longer fits the new batch
        for k in names:
            data.pop(k, None)
        if not data:
            doc.pop("data")
    return from_dict(doc, str(path), Path(path).stem)


def _bounds(model) -> dict[str, tuple[int, int]]:
    return input_ranges(toposort([model.loss]), wrap=False)


# ---- history ---------------------------------------------------------------------------------
@dataclass
class History:
    """Per-epoch records of a `fit` run, and the trained `step` (params: `history.params`)."""

    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    examples_per_s: list = field(default_factory=list)
    grad_norm: dict = field(default_factory=dict)  # param -> per-epoch mean ‖grad‖
    update_ratio: dict = field(default_factory=dict)  # param -> per-epoch mean ‖Δ‖/‖param‖
    warnings: list = field(default_factory=list)
    best_epoch: int | None = None
    best_loss: float | None = None
    stopped_early: bool = False
    step: TrainStep | None = None

    @property
    def params(self) -> dict:
        return self.step.params if self.step is not None else {}

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "step"}
        return json.loads(json.dumps(d, default=float))

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def plot(self, path) -> Path:
        from .plot import plot_history

        return plot_history(self, path)


# ---- progress --------------------------------------------------------------------------------
class _Progress:
    """One tqdm bar for the whole run when tqdm is installed and stderr is a terminal; else a
    plain log line every `every` epochs (and the first and last), so a piped log of a
    3000-epoch run holds ~20 lines and no bar fragments. Nothing at all when disabled."""

    def __init__(self, enabled: bool, epochs: int, out=None, every: int | None = None):
        self.enabled, self.epochs = enabled, epochs
        self.out = out or sys.stdout
        self.every = every or max(1, math.ceil(epochs / 20))
        self.tqdm, self.bar, self.seen = None, None, set()
        if enabled and _isatty(sys.stderr):  # a bar in a log file is noise
            try:
                from tqdm.auto import tqdm

                self.tqdm = tqdm
            except ImportError:
                pass

    def begin(self, start: int):
        if self.tqdm is not None:
            self.bar = self.tqdm(total=self.epochs, initial=start, unit="epoch",
                                 desc="training", dynamic_ncols=True, leave=False)

    def update(self, loss: float, ex_per_s: float):
        """Running loss inside an epoch (the bar's postfix only)."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4g}, {ex_per_s:,.0f} ex/s", refresh=False)

    def epoch(self, epoch: int, start: int, line: str):
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled and ((epoch + 1) % self.every == 0 or epoch == start
                               or epoch + 1 == self.epochs):
            self.note(line)

    def warn(self, key: str, line: str):
        if key not in self.seen:  # once per run: a warning every epoch drowns the log
            self.seen.add(key)
            self.note(line)

    def note(self, line: str):
        if not self.enabled:
            return
        if self.bar is not None:
            self.tqdm.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    def close(self, line: str | None = None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if line:
            self.note(line)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


# ---- the loop --------------------------------------------------------------------------------
def fit(model_or_loss, data, epochs: int = 10, batch_size: int | None = None,
        optimizer: Optimizer | None = None, seed: int | None = None, validation=None,
        early_stopping=None, checkpoint_dir=None, resume: bool = False, progress: bool = True,
        backend: str = "numpy", init: dict | None = None, params=None,
        diagnostics: bool = True, shuffle: bool = True, plateau: ReduceLROnPlateau | None = None,
        log_every: int | None = None, out=None) -> History:
    """Train with seeded shuffled minibatches; return a `History` (its `.step` holds params).

    model_or_loss: a spec Model or path, a loss node, or a function batch_size -> loss.
    data: arrays by input name with the examples on the leading axis, or an .npz path.
    validation: the same kind of data, or a fraction in (0, 1) to hold out (seeded).
    early_stopping: patience in epochs, or {"patience": p, "min_delta": d, "restore_best": b};
    monitors the validation loss (the training loss without validation data).
    checkpoint_dir: writes last.npz every epoch and best.npz at each improvement (params,
    optimizer state, step count) plus history.json; `resume=True` continues from last.npz.
    plateau: a ReduceLROnPlateau fed the monitored loss each epoch (scales the learning rate).
    progress: one bar for the run in a terminal (tqdm), else a line every `log_every` epochs
    (default: about 20 lines per run) plus the first and last.
    """
    src = ModelSource(model_or_loss)
    if seed is None:  # the spec's own [init] seed, else 0
        seed = src.model.seed if src.model is not None else 0
    if isinstance(data, (str, Path)):
        data = load_npz(data)
    if isinstance(validation, (str, Path)):
        validation = load_npz(validation)
    if isinstance(validation, float):
        data, validation = split(dict(data), validation, seed)
    if batch_size is None:
        batch_size = src.batch
        if batch_size is None:
            raise ArgumentError("fit: give batch_size when the model is a function of it")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ArgumentError(f"fit: batch_size must be a positive int, got {batch_size!r}")
    model = src.at(batch_size)
    bounds = _bounds(model)
    n = check_data(data, model.inputs, bounds, "training data")
    data = cast_data(data, model.inputs)
    if n < batch_size:
        raise DataError(f"training data has {n} examples, fewer than batch_size={batch_size}")
    if validation is not None:
        check_data(validation, model.inputs, bounds, "validation data")
        validation = cast_data(validation, model.inputs)
    optimizer = optimizer if optimizer is not None else adam(1e-3)
    step = TrainStep(model, params, optimizer, backend,
                     init=init if init is not None else model.init_params(seed),
                     diagnostics=diagnostics)
    step.warn = False
    evaluator = _Evaluator(src, step, batch_size, backend)

    es = _early_stopping(early_stopping)
    hist = History(step=step)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start = 0
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
        if resume and (ckpt / "last.npz").is_file():
            start = _load_checkpoint(ckpt / "last.npz", step, plateau)
            if (ckpt / "history.json").is_file():
                saved = History.from_dict(json.loads((ckpt / "history.json").read_text()))
                saved.step = step
                hist = saved
    elif resume:
        raise ArgumentError("fit: resume=True needs a checkpoint_dir")

    bar = _Progress(progress, epochs, out, log_every)
    bar.begin(start)
    best, bad = (hist.best_loss if hist.best_loss is not None else math.inf), 0
    best_params = None
    monitor = "val_loss" if validation is not None else "loss"
    names = step.param_names
    for epoch in range(start, epochs):
        batches = epoch_batches(n, batch_size, seed, epoch, shuffle)
        total, gsum, usum, warned = 0.0, dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0), {}
        t0 = time.perf_counter()
        every = max(1, len(batches) // 50)
        for i, idx in enumerate(batches):
            loss = step(**{k: v[idx] for k, v in data.items()})
            total += loss
            if diagnostics:
                for k in names:
                    gsum[k] += step.last[f"gnorm_{k}"]
                    usum[k] += step.last[f"uratio_{k}"]
                for msg in step.last["warnings"]:
                    key = msg.split(": ", 1)[1].split(":")[0]  # "vanishing gradient for W1"
                    warned.setdefault(key, msg)
            if (i + 1) % every == 0 or i + 1 == len(batches):
                dt = time.perf_counter() - t0
                bar.update(total / (i + 1), (i + 1) * batch_size / max(dt, 1e-9))
        seconds = time.perf_counter() - t0
        nb = len(batches)
        train_loss = total / nb
        val_loss = evaluator(validation) if validation is not None else None
        hist.epoch.append(epoch + 1)
        hist.loss.append(train_loss)
        hist.val_loss.append(val_loss)
        hist.lr.append(step.learning_rate)
        hist.seconds.append(seconds)
        hist.examples_per_s.append(nb * batch_size / max(seconds, 1e-9))
        if diagnostics:
            for k in names:
                hist.grad_norm.setdefault(k, []).append(gsum[k] / nb)
                hist.update_ratio.setdefault(k, []).append(usum[k] / nb)
            for msg in warned.values():
                hist.warnings.append(f"epoch {epoch + 1}, {msg}")
        current = val_loss if monitor == "val_loss" else train_loss
        if plateau is not None:
            step.lr_scale = plateau.update(current)
        improved = current < best - (es["min_delta"] if es else 0.0)
        if improved:
            best, bad = current, 0
            hist.best_epoch, hist.best_loss = epoch + 1, current
            if es and es["restore_best"]:
                best_params = {k: v.copy() for k, v in step.params.items()}
        else:
            bad += 1
        if ckpt is not None:
            _save_checkpoint(ckpt / "last.npz", step, epoch, plateau)
            if improved:
                _save_checkpoint(ckpt / "best.npz", step, epoch, plateau)
            (ckpt / "history.json").write_text(json.dumps(hist.to_dict()))
        line = (f"epoch {epoch + 1}/{epochs}  loss {train_loss:.6g}"
                + (f"  val_loss {val_loss:.6g}" if val_loss is not None else "")
                + f"  lr {hist.lr[-1]:.3g}  {hist.examples_per_s[-1]:,.0f} ex/s")
        bar.epoch(epoch, start, line)
        for key, msg in warned.items():
            bar.warn(key, f"  warning (epoch {epoch + 1}, shown once): {msg}")
        if es and bad >= es["patience"]:
            hist.stopped_early = True
            bar.close(f"early stopping after epoch {epoch + 1}: no {monitor} improvement for "
                      f"{es['patience']} epochs (best {best:.6g} at epoch {hist.best_epoch})")
            break
    bar.close()
    if best_params is not None:
        step.set_params(best_params)
    return hist


class _Evaluator:
    """Mean loss over a dataset: full batches with the step's own eval graph, and the
    remainder with a graph rebuilt at its size when the model allows (else it is skipped)."""

    def __init__(self, src: ModelSource, step: TrainStep, batch_size: int, backend: str):
        self.src, self.step, self.b, self.backend = src, step, batch_size, backend
        self.rest: dict[int, Function | None] = {}

    def __call__(self, data: dict) -> float:
        n = len(next(iter(data.values())))
        total, count = 0.0, 0
        for i in range(0, n - self.b + 1, self.b):
            total += self.b * self.step.evaluate(**{k: v[i:i + self.b] for k, v in data.items()})
            count += self.b
        r = n % self.b
        if r:
            fn = self._fn(r)
            if fn is not None:
                kw = {k: v[n - r:] for k, v in data.items()}
                kw.update(self.step.params)
                kw.update(self.step.frozen)
                need = set(fn.signature.names)
                total += r * float(fn(**{k: v for k, v in kw.items() if k in need})["loss"])
                count += r
        if count == 0:
            raise DataError(f"validation data has {n} examples, fewer than the batch size "
                            f"{self.b}, and the model cannot be rebuilt at batch size {n}")
        return total / count

    def _fn(self, r: int):
        if r not in self.rest:
            try:
                m = self.src.at(r)
                self.rest[r] = Function({"loss": m.loss}, backend=self.backend)
            except ArgumentError:
                self.rest[r] = None
        return self.rest[r]


def _early_stopping(es):
    if es is None or es is False:
        return None
    if isinstance(es, bool):
        es = 10
    if isinstance(es, int):
        es = {"patience": es}
    if not isinstance(es, dict) or "patience" not in es:
        raise ArgumentError("early_stopping must be a patience (int) or a dict with 'patience'")
    return {"patience": int(es["patience"]), "min_delta": float(es.get("min_delta", 0.0)),
            "restore_best": bool(es.get("restore_best", True))}


def _save_checkpoint(path: Path, step: TrainStep, epoch: int, plateau):
    d = step.state_dict()
    d["meta/epoch"] = np.asarray(epoch)
    if plateau is not None:
        for k, v in plateau.state_dict().items():
            d[f"plateau/{k}"] = np.asarray(v)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **d)
    tmp.replace(path)  # atomic: an interrupted save never leaves a broken last.npz


def _load_checkpoint(path: Path, step: TrainStep, plateau) -> int:
    """Restore params, optimizer state and step count; return the epoch to continue from."""
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    step.load_state_dict(d)
    if plateau is not None and "plateau/scale" in d:
        plateau.load_state_dict({k[len("plateau/"):]: d[k] for k in d if k.startswith("plateau/")})
    return int(d["meta/epoch"]) + 1


def load_checkpoint(path) -> dict:
    """The params saved in a checkpoint `.npz`, by name."""
    with np.load(path, allow_pickle=False) as z:
        return {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
