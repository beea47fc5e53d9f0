"""`bp.train.fit`: seeded minibatch training with validation and gradient diagnostics
recorded per epoch; early stopping, checkpoints that resume, the learning rate on a plateau,
progress and the history are callbacks (`callbacks.py`), which `fit`'s keywords construct.

The loop itself is plain Python over batches; every step is one call of the compiled
`TrainStep` (forward + backward + optimizer update fused). Data order depends only on
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, Union

import numpy as np
from numpy.typing import ArrayLike

from ..compiled import Function
from ..errors import ArgumentError
from ..ir.node import Node
from ..ir.traverse import toposort
from ..ops.index import input_ranges
from ..optim import Optimizer, ReduceLROnPlateau, adam
from ..toml_read import toml_module
from .callbacks import (
    Callback,
    EarlyStopping,
    LROnPlateau,
    ModelCheckpoint,
    Progress,
    Run,
    early_stopping_from,
    overrides,
)
from .callbacks import isatty as _isatty  # a module global, so tests can pretend a terminal
from .checkpoint import load_checkpoint  # noqa: F401  (re-exported: bp.train.load_checkpoint)
from .data import DataError, cast_data, check_data, epoch_batches, load_npz, split
from .history import History
from .loss_scale import DynamicLossScale, StaticLossScale
from .step import TrainStep

if TYPE_CHECKING:  # annotations only: spec is imported when a model is read
    from ..spec import Model

# What `fit` trains: a spec Model or a path to one, a loss node, or batch_size -> either.
ModelLike = Union["Model", Node, str, Path, Callable[[int], Union["Model", Node]]]
# Arrays by input name (examples on the leading axis), or an .npz path holding them.
Data = dict[str, ArrayLike] | str | Path
LossScaleLike = str | float | DynamicLossScale | StaticLossScale | None


# ---- models at a batch size ------------------------------------------------------------------
class ModelSource:
    """A model that can be rebuilt at another batch size where possible.

    Graph shapes are static, so training at `batch_size` needs the loss built for it: a TOML
    spec is re-read with its inputs' leading axis changed; a callable `batch_size -> Model or
    loss` is called; a bare loss node (or a Python-file model) is usable only at its own batch.
    """

    def __init__(self, model_or_loss: ModelLike):
        from ..spec import Model

        self.builder: Callable[[int], Model] | None = None
        self.model: Model | None
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

    def at(self, batch_size: int) -> Model:
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


def _as_model(x: object) -> Model:
    from ..spec import Model

    if isinstance(x, Model):
        return x
    if isinstance(x, Node):
        from ..ir.traverse import leaves

        return Model(x, leaves([x], ops=("param",)), name="loss")
    raise TypeError(f"expected a spec Model or a loss node, got {type(x).__name__}")


def rebatch_toml(path: str | Path, batch_size: int) -> Model:
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


def _bounds(model: Model) -> dict[str, tuple[int, int]]:
    return input_ranges(toposort([model.loss]), wrap=False)


# ---- the loop --------------------------------------------------------------------------------
def fit(model_or_loss: ModelLike, data: Data, epochs: int = 10, batch_size: int | None = None,
        optimizer: Optimizer | str | None = None, seed: int | None = None,
        validation: Data | float | None = None,
        early_stopping: int | bool | dict[str, Any] | EarlyStopping | None = None,
        checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
        backend: str = "numpy", init: dict[str, ArrayLike] | None = None,
        params: Sequence[Node | str] | None = None,
        diagnostics: bool = True, shuffle: bool = True, plateau: ReduceLROnPlateau | None = None,
        log_every: int | None = None, out: TextIO | None = None,
        callbacks: Sequence[Callback] | None = None, micro_batches: int = 1,
        memory_budget: int | str | None = None, precision: str | None = None,
        loss_scale: LossScaleLike = None, feedback: str | None = None,
        feedback_seed: int = 0, compress_activations: str | None = None) -> History:
    """Train with seeded shuffled minibatches; return a `History` (its `.step` holds params).

    model_or_loss: a spec Model or path, a loss node, or a function batch_size -> loss.
    data: arrays by input name with the examples on the leading axis, or an .npz path.
    validation: the same kind of data, or a fraction in (0, 1) to hold out (seeded).
    callbacks: `Callback`s, run in order after the history, plateau and early stopping
    ones and before the checkpoint and progress ones (docs/training.md).
    The remaining keywords are shorthands that add callbacks:
    early_stopping: patience in epochs, or {"patience": p, "min_delta": d, "restore_best": b};
    monitors the validation loss (the training loss without validation data): EarlyStopping.
    checkpoint_dir: writes last.npz every epoch and best.npz at each improvement (params,
    optimizer state, step count) plus history.json; `resume=True` continues from last.npz:
    ModelCheckpoint.
    plateau: a ReduceLROnPlateau fed the monitored loss each epoch (scales the learning rate):
    LROnPlateau.
    progress: one bar for the run in a terminal (tqdm), else a line every `log_every` epochs
    (default: about 20 lines per run) plus the first and last, to `out`: Progress.
    micro_batches=k: gradient accumulation - each step of `batch_size` examples runs as k
    micro-batches of batch_size / k (the model is built at that size) and one update, equal
    to the full-batch step for a loss that averages over the batch, with the activation memory
    of one micro-batch.
    memory_budget: bytes or "64MB": recompute forward segments until the training step's own
    planned peak fits (compile_train_step's option; docs/memory.md). compress_activations:
    "bfloat16" or "int8", the saved activations stored compressed (docs/memory.md).
    precision, loss_scale: mixed precision ("float16", "bfloat16") and loss scaling ("dynamic",
    a number, or a DynamicLossScale) as compile_train_step takes them (docs/dtypes.md); the
    history records the scale and the skipped steps of every epoch.
    feedback, feedback_seed: train with feedback alignment ("alignment") or direct feedback
    alignment ("direct") instead of backpropagation (compile_train_step's option).
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
        if isinstance(micro_batches, int) and micro_batches > 1:  # the model is one micro-batch
            batch_size *= micro_batches
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ArgumentError(f"fit: batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(micro_batches, int) or micro_batches < 1 or batch_size % micro_batches:
        raise ArgumentError(f"fit: micro_batches must be a positive int dividing batch_size="
                            f"{batch_size}, got {micro_batches!r}")
    model = src.at(batch_size // micro_batches)
    bounds = _bounds(model)
    n = check_data(data, model.inputs, bounds, "training data")
    arrays = cast_data(data, model.inputs)
    if n < batch_size:
        raise DataError(f"training data has {n} examples, fewer than batch_size={batch_size}")
    if validation is not None:
        check_data(validation, model.inputs, bounds, "validation data")
    held_out = cast_data(validation, model.inputs) if validation is not None else None
    optimizer = optimizer if optimizer is not None else adam(1e-3)
    fb: dict[str, Any] = ({"feedback": feedback, "feedback_seed": feedback_seed}
                          if feedback is not None else {})
    step = TrainStep(model, params, optimizer, backend,
                     init=init if init is not None else model.init_params(seed),
                     diagnostics=diagnostics, accumulate=micro_batches,
                     memory_budget=memory_budget, precision=precision,
                     loss_scale=loss_scale, compress_activations=compress_activations, **fb)
    step.warn = False
    evaluator = _Evaluator(src, step, batch_size, backend)
    es = early_stopping_from(early_stopping)
    if resume and checkpoint_dir is None:
        raise ArgumentError("fit: resume=True needs a checkpoint_dir")

    # History first (later callbacks see the epoch recorded), the checkpoint after every
    # callback whose state it saves, progress last (it reports what the others decided).
    hist = History(step=step)
    user = list(callbacks or ())
    cbs: list[Callback] = [hist]
    cbs += [LROnPlateau(plateau)] if plateau is not None else []
    cbs += [es] if es is not None else []
    cbs += user
    cbs += [ModelCheckpoint(checkpoint_dir, resume)] if checkpoint_dir is not None else []
    if progress and not any(isinstance(c, Progress) for c in user):
        cbs.append(Progress(out, log_every, tty=_isatty(sys.stderr)))
    stoppers = [c for c in cbs if isinstance(c, EarlyStopping)]
    run = Run(step, hist, epochs, batch_size, "val_loss" if held_out is not None else "loss",
              cbs, min_delta=stoppers[0].min_delta if stoppers else 0.0)
    for c in cbs:
        c.run = run
    for c in cbs:
        c.on_train_begin()
    run.best = hist.best_loss if hist.best_loss is not None else math.inf  # kept on resume
    on_batch = [c.on_batch_end for c in cbs if overrides(c, "on_batch_end")]
    names = step.param_names
    for epoch in range(run.start_epoch, epochs):
        batches = epoch_batches(n, batch_size, seed, epoch, shuffle)
        run.batches = nb = len(batches)
        for c in cbs:
            c.on_epoch_begin(epoch)
        total, gsum, usum = 0.0, dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
        scaler = step.loss_scaler
        skipped0 = getattr(scaler, "skipped", 0)
        warned: dict[str, str] = {}  # what a warning is about -> its first message
        t0 = time.perf_counter()
        for i, idx in enumerate(batches):
            loss = step(**{k: v[idx] for k, v in arrays.items()})
            total += loss
            if diagnostics and not step.last.get("skipped"):  # (a skipped step's norms: inf)
                for k in names:
                    gsum[k] += step.last[f"gnorm_{k}"]
                    usum[k] += step.last[f"uratio_{k}"]
                for msg in step.last["warnings"]:
                    key = msg.split(": ", 1)[1].split(":")[0]  # "vanishing gradient for W1"
                    warned.setdefault(key, msg)
            for hook in on_batch:
                hook(i, loss)
        seconds = time.perf_counter() - t0
        logs: dict[str, Any] = {"loss": total / nb,  # Keras-shaped: values of several types
                "val_loss": evaluator(held_out) if held_out is not None else None,
                "lr": step.learning_rate, "seconds": seconds,
                "examples_per_s": nb * batch_size / max(seconds, 1e-9), "warnings": warned}
        good = nb
        if scaler is not None:
            logs["loss_scale"] = scaler.scale
            logs["skipped_steps"] = getattr(scaler, "skipped", 0) - skipped0
            good = max(nb - logs["skipped_steps"], 1)
        if diagnostics:
            logs["grad_norm"] = {k: gsum[k] / good for k in names}
            logs["update_ratio"] = {k: usum[k] / good for k in names}
        current = logs[run.monitor]
        run.improved = current < run.best - run.min_delta
        if run.improved:
            run.best = current
        for c in cbs:
            c.on_epoch_end(epoch, logs)
        if run.stop_training:
            break
    for c in cbs:
        c.on_train_end()
    return hist


class _Evaluator:
    """Mean loss over a dataset: full batches with the step's own eval graph, and the
    remainder with a graph rebuilt at its size when the model allows (else it is skipped)."""

    def __init__(self, src: ModelSource, step: TrainStep, batch_size: int, backend: str):
        self.src, self.step, self.b, self.backend = src, step, batch_size, backend
        self.rest: dict[int, Function | None] = {}

    def __call__(self, data: dict[str, np.ndarray]) -> float:
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

    def _fn(self, r: int) -> Function | None:
        if r not in self.rest:
            try:
                m = self.src.at(r)
                self.rest[r] = Function({"loss": m.loss}, backend=self.backend)
            except ArgumentError:
                self.rest[r] = None
        return self.rest[r]
