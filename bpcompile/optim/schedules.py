"""Learning-rate schedules as formulas evaluated either on the host or as graph nodes.

Each schedule is written once, against a tiny math namespace: `_NP` evaluates it with NumPy
(for logging, plots and tests), `_BP` builds IR nodes, so a compiled training step computes its
own learning rate from the scalar `step` input and one compiled function serves every step.
`count` is the number of updates already applied (0 for the first step), as in optax, and the
formulas match optax's schedules of the same name.

`ReduceLROnPlateau` is the exception: it reacts to validation losses, which live on the host, so
it is a host-side object that multiplies the compiled step's `lr_scale` input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..ir.node import Node


class _NP:
    """Host evaluation: plain NumPy on float64 scalars."""

    cos = staticmethod(np.cos)
    floor = staticmethod(np.floor)
    minimum = staticmethod(np.minimum)
    maximum = staticmethod(np.maximum)
    power = staticmethod(np.power)
    where = staticmethod(np.where)

    @staticmethod
    def le(a, b):
        return np.less_equal(a, b)

    @staticmethod
    def lt(a, b):
        return np.less(a, b)


class _BP:
    """Graph evaluation: every formula becomes IR nodes over the scalar `step` input."""

    @staticmethod
    def cos(x):
        from ..ops.elementwise import unary

        return unary("cos", x)

    @staticmethod
    def floor(x):
        from ..ops.elementwise import unary

        return unary("floor", x)

    @staticmethod
    def minimum(a, b):
        from ..ops.elementwise import minimum

        return minimum(a, b)

    @staticmethod
    def maximum(a, b):
        from ..ops.elementwise import maximum

        return maximum(a, b)

    @staticmethod
    def power(a, b):
        from ..ops.elementwise import as_node, power

        if not hasattr(a, "op"):
            a = as_node(float(a), b)
        return power(a, b)

    @staticmethod
    def where(c, a, b):
        from ..ops.elementwise import where

        return where(c, a, b)

    @staticmethod
    def le(a, b):
        from ..ops.elementwise import le

        return le(a, b)

    @staticmethod
    def lt(a, b):
        from ..ops.elementwise import lt

        return lt(a, b)


class Schedule:
    """A map from update count to learning rate: `sched(count) -> float`, `sched.node(step)`."""

    def formula(self, count: Any, m: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, count: float) -> float:
        return float(self.formula(np.float64(count), _NP))

    def node(self, count: Node) -> Node:
        """The schedule as graph nodes of the scalar `count` node's dtype."""
        from ..ops.elementwise import as_node

        out = self.formula(count, _BP)
        return as_node(out, count) if not hasattr(out, "op") else out

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


# A learning rate: a number (constant) or a schedule. `count` in a formula is a float64 on the
# host and a scalar Node in the graph; `m` is the matching math namespace (_NP or _BP).
LearningRate = float | Schedule


@dataclass(repr=False)
class Constant(Schedule):
    value: float

    def formula(self, count: Any, m: Any) -> Any:
        return count * 0.0 + self.value


@dataclass(repr=False)
class PiecewiseConstant(Schedule):
    """Step decay: multiply by `scale` once `count` reaches each boundary (optax's
    piecewise_constant_schedule)."""

    init_value: float
    boundaries_and_scales: dict

    def formula(self, count: Any, m: Any) -> Any:
        v = count * 0.0 + self.init_value
        for boundary, scale in sorted(self.boundaries_and_scales.items()):
            v = m.where(m.lt(count, float(boundary)), v, v * float(scale))
        return v


@dataclass(repr=False)
class ExponentialDecay(Schedule):
    """init * rate ** ((count - begin) / transition_steps), floored when `staircase`."""

    init_value: float
    transition_steps: int
    decay_rate: float
    transition_begin: int = 0
    staircase: bool = False
    end_value: float | None = None

    def formula(self, count: Any, m: Any) -> Any:
        dc = count - float(self.transition_begin)
        p = dc / float(self.transition_steps)
        if self.staircase:
            p = m.floor(p)
        v = m.where(m.le(dc, 0.0), count * 0.0 + self.init_value,
                    m.power(self.decay_rate, p) * self.init_value)
        if self.end_value is not None:
            clip = m.maximum if self.decay_rate < 1.0 else m.minimum
            v = clip(v, self.end_value)
        return v


@dataclass(repr=False)
class CosineDecay(Schedule):
    """Cosine annealing: init * ((1 - alpha) * ½(1 + cos(π min(count, T) / T)) + alpha)."""

    init_value: float
    decay_steps: int
    alpha: float = 0.0

    def formula(self, count: Any, m: Any) -> Any:
        c = m.minimum(count, float(self.decay_steps))
        cosine = (m.cos(c * (math.pi / self.decay_steps)) + 1.0) * 0.5
        return (cosine * (1.0 - self.alpha) + self.alpha) * self.init_value


@dataclass(repr=False)
class Linear(Schedule):
    """Linear from init to end over `transition_steps`, starting at `transition_begin`."""

    init_value: float
    end_value: float
    transition_steps: int
    transition_begin: int = 0

    def formula(self, count: Any, m: Any) -> Any:
        c = m.minimum(m.maximum(count - float(self.transition_begin), 0.0),
                      float(self.transition_steps))
        frac = 1.0 - c / float(self.transition_steps)
        return frac * (self.init_value - self.end_value) + self.end_value


@dataclass(repr=False)
class Join(Schedule):
    """`schedules[i]` from `boundaries[i-1]` on, restarted at count 0 (optax.join_schedules)."""

    schedules: list
    boundaries: list

    def formula(self, count: Any, m: Any) -> Any:
        out = self.schedules[0].formula(count, m)
        for sched, b in zip(self.schedules[1:], self.boundaries):
            out = m.where(m.lt(count, float(b)), out, sched.formula(count - float(b), m))
        return out


# ---- constructors (the names optax uses) ----------------------------------------------------
def constant(value: float) -> Schedule:
    return Constant(float(value))


def piecewise_constant(init_value: float, boundaries_and_scales: dict) -> Schedule:
    """Step schedule: `{100: 0.1, 200: 0.1}` divides the rate by 10 at steps 100 and 200."""
    return PiecewiseConstant(float(init_value), dict(boundaries_and_scales))


def step_decay(init_value: float, step_size: int, gamma: float = 0.1,
               num_steps: int = 10) -> Schedule:
    """Multiply by `gamma` every `step_size` updates (PyTorch's StepLR), for `num_steps` drops."""
    return piecewise_constant(init_value, {step_size * (k + 1): gamma for k in range(num_steps)})


def exponential_decay(init_value: float, transition_steps: int, decay_rate: float,
                      transition_begin: int = 0, staircase: bool = False,
                      end_value: float | None = None) -> Schedule:
    if transition_steps <= 0:
        raise ValueError(f"exponential_decay: transition_steps must be > 0, got {transition_steps}")
    return ExponentialDecay(float(init_value), transition_steps, float(decay_rate),
                            transition_begin, staircase, end_value)


def cosine_decay(init_value: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    if decay_steps <= 0:
        raise ValueError(f"cosine_decay: decay_steps must be > 0, got {decay_steps}")
    return CosineDecay(float(init_value), int(decay_steps), float(alpha))


def linear(init_value: float, end_value: float, transition_steps: int,
           transition_begin: int = 0) -> Schedule:
    if transition_steps <= 0:
        raise ValueError(f"linear: transition_steps must be > 0, got {transition_steps}")
    return Linear(float(init_value), float(end_value), int(transition_steps), transition_begin)


def join(schedules: list, boundaries: list) -> Schedule:
    if len(boundaries) != len(schedules) - 1:
        raise ValueError("join: need one boundary between each pair of schedules")
    return Join([as_schedule(s) for s in schedules], list(boundaries))


def linear_warmup(schedule: LearningRate, warmup_steps: int, init_value: float = 0.0) -> Schedule:
    """Ramp linearly from `init_value` to `schedule(0)` over `warmup_steps`, then `schedule`."""
    schedule = as_schedule(schedule)
    return join([linear(init_value, schedule(0), warmup_steps), schedule], [warmup_steps])


def warmup_cosine_decay(init_value: float, peak_value: float, warmup_steps: int,
                        decay_steps: int, end_value: float = 0.0) -> Schedule:
    """Linear warm-up to `peak_value`, then cosine annealing to `end_value` at `decay_steps`
    (optax.warmup_cosine_decay_schedule)."""
    alpha = 0.0 if peak_value == 0 else end_value / peak_value
    return join([linear(init_value, peak_value, warmup_steps),
                 cosine_decay(peak_value, decay_steps - warmup_steps, alpha)], [warmup_steps])


def as_schedule(lr: LearningRate) -> Schedule:
    if isinstance(lr, Schedule):
        return lr
    if isinstance(lr, (int, float, np.floating, np.integer)) and not isinstance(lr, bool):
        return constant(float(lr))
    raise TypeError(f"learning rate must be a number or a bp.optim schedule, got {lr!r}")


class ReduceLROnPlateau:
    """Host-side: scale the learning rate by `factor` when the monitored loss has not improved
    by more than `threshold` (relative) for `patience` evaluations; never below `min_scale`.

    It cannot be a graph formula because it depends on validation losses seen between steps;
    the trainer feeds its `scale` to the compiled step's `lr_scale` input.
    """

    def __init__(self, factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                 cooldown: int = 0, min_scale: float = 0.0):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        self.factor, self.patience, self.threshold = factor, patience, threshold
        self.cooldown, self.min_scale = cooldown, min_scale
        self.scale, self.best, self.bad, self.cool = 1.0, math.inf, 0, 0

    def update(self, value: float) -> float:
        """Record a monitored value (e.g. validation loss); return the new scale."""
        if value < self.best * (1.0 - self.threshold):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.cool > 0:
            self.cool -= 1
            self.bad = 0
        elif self.bad > self.patience:
            self.scale = max(self.scale * self.factor, self.min_scale)
            self.cool, self.bad = self.cooldown, 0
        return self.scale

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad": self.bad, "cool": self.cool}

    def load_state_dict(self, d: dict) -> None:
        self.scale, self.best = float(d["scale"]), float(d["best"])
        self.bad, self.cool = int(d["bad"]), int(d["cool"])
