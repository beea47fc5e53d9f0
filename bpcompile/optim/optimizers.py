"""The optimizers users ask for by name, each an optax-compatible chain of transforms.

Every constructor takes `clip_norm=` (clip by global norm first) and `clip_value=` (clip each
gradient element first), so `adam(1e-3, clip_norm=1.0)` equals
`optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .kfac import KFAC, kfac
from .schedules import LearningRate
from .transforms import (
    AddDecayedWeights,
    ClipByGlobalNorm,
    ClipByValue,
    Mask,
    Optimizer,
    ScaleByAdam,
    ScaleByLearningRate,
    ScaleByRms,
    Trace,
    Transform,
)


def _clips(clip_norm: float | None, clip_value: float | None) -> list[Transform]:
    out: list[Transform] = []
    if clip_value is not None:
        out.append(ClipByValue(clip_value))
    if clip_norm is not None:
        out.append(ClipByGlobalNorm(clip_norm))
    return out


def sgd(learning_rate: LearningRate = 1e-2, momentum: float | None = None,
        nesterov: bool = False, clip_norm: float | None = None,
        clip_value: float | None = None) -> Optimizer:
    """p <- p - lr * g; with `momentum` m: trace <- g + m trace, p <- p - lr * trace
    (Nesterov: p <- p - lr * (g + m trace)). Same as optax.sgd."""
    ts = _clips(clip_norm, clip_value)
    if momentum:
        ts.append(Trace(momentum, nesterov))
    elif nesterov:
        raise ValueError("sgd: nesterov=True needs a momentum > 0")
    ts.append(ScaleByLearningRate(learning_rate))
    name = "nesterov" if nesterov else ("momentum" if momentum else "sgd")
    return Optimizer(ts, name, {"learning_rate": learning_rate, "momentum": momentum})


def momentum(learning_rate: LearningRate = 1e-2, beta: float = 0.9, **kw: Any) -> Optimizer:
    """Heavy-ball momentum SGD (optax.sgd(lr, momentum=beta))."""
    return sgd(learning_rate, beta, False, **kw)


def nesterov(learning_rate: LearningRate = 1e-2, beta: float = 0.9, **kw: Any) -> Optimizer:
    """Nesterov momentum SGD (optax.sgd(lr, momentum=beta, nesterov=True))."""
    return sgd(learning_rate, beta, True, **kw)


def rmsprop(learning_rate: LearningRate = 1e-3, decay: float = 0.9, eps: float = 1e-8,
            momentum: float | None = None, nesterov: bool = False, eps_in_sqrt: bool = True,
            clip_norm: float | None = None, clip_value: float | None = None) -> Optimizer:
    """nu <- decay nu + (1-decay) g²; p <- p - lr g / sqrt(nu + eps) (optax.rmsprop)."""
    ts = _clips(clip_norm, clip_value)
    ts += [ScaleByRms(decay, eps, 0.0, eps_in_sqrt), ScaleByLearningRate(learning_rate)]
    if momentum:
        ts.append(Trace(momentum, nesterov))
    return Optimizer(ts, "rmsprop", {"learning_rate": learning_rate, "decay": decay})


def adam(learning_rate: LearningRate = 1e-3, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8, eps_root: float = 0.0, clip_norm: float | None = None,
         clip_value: float | None = None) -> Optimizer:
    """Adam with bias correction (optax.adam)."""
    ts = _clips(clip_norm, clip_value)
    ts += [ScaleByAdam(b1, b2, eps, eps_root), ScaleByLearningRate(learning_rate)]
    return Optimizer(ts, "adam", {"learning_rate": learning_rate, "b1": b1, "b2": b2})


def adamw(learning_rate: LearningRate = 1e-3, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, eps_root: float = 0.0, weight_decay: float = 1e-4, mask: Mask = None,
          clip_norm: float | None = None, clip_value: float | None = None) -> Optimizer:
    """Adam with decoupled weight decay: p <- p - lr (adam_update + wd p) (optax.adamw)."""
    ts = _clips(clip_norm, clip_value)
    ts += [ScaleByAdam(b1, b2, eps, eps_root), AddDecayedWeights(weight_decay, mask),
           ScaleByLearningRate(learning_rate)]
    return Optimizer(ts, "adamw", {"learning_rate": learning_rate, "weight_decay": weight_decay})


def chain(*transforms: Transform, name: str = "chain") -> Optimizer:
    """Build an optimizer from transforms in order, like optax.chain."""
    flat: list[Transform] = []
    for t in transforms:
        flat.extend(t.transforms if isinstance(t, Optimizer) else [t])
    return Optimizer(flat, name)


def kfac_empirical(learning_rate: LearningRate = 1e-2, **kw: Any) -> KFAC:
    """K-FAC chosen by name (CLI): the empirical Fisher, since a spec names no predictive
    distribution to sample targets from (bp.optim.kfac(output=...) for the true Fisher)."""
    if kw.pop("clip_norm", None) is not None or kw.pop("clip_value", None) is not None:
        raise ValueError("kfac: gradient clipping is not supported (the preconditioned step "
                         "is damped instead)")
    return kfac(learning_rate, fisher="empirical", **kw)


OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": sgd, "momentum": momentum, "nesterov": nesterov, "rmsprop": rmsprop, "adam": adam,
    "adamw": adamw, "kfac": kfac_empirical}


def get(name: str, learning_rate: LearningRate, **kw: Any) -> Optimizer:
    """An optimizer by name (for the CLI and the trainer)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](learning_rate, **kw)
