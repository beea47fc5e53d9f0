"""Loss scaling for float16 training (PyTorch's GradScaler, jmp's Static/DynamicLossScale).

float16 gradients below ~6e-8 flush to zero. The train step differentiates `loss * scale`
(the scale is a float32 input, so the float16 backward sees cotangents `scale` times larger)
and divides the float32 gradients by `scale` before the optimizer. The scale lives on the
host: a dynamic scale halves on a step whose gradients are not finite (that step's update is
not committed: params, optimizer state and step count stay as they were) and doubles after
`growth_interval` finite steps in a row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ArgumentError


@dataclass
class StaticLossScale:
    """A constant scale: gradients are scaled and unscaled, steps are never skipped."""

    scale: float = 2.0 ** 15

    def __post_init__(self):
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale)
                and self.scale > 0):
            raise ArgumentError(f"loss_scale: the scale must be a finite positive number, "
                                f"got {self.scale!r}")
        self.scale = float(self.scale)

    dynamic = False

    def reset(self) -> None:
        """Nothing to reset: the scale is constant."""

    def update(self, finite: bool) -> None:
        """A static scale ignores the step's outcome."""

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale}

    def load_state_dict(self, d: dict) -> None:
        self.scale = float(d.get("scale", self.scale))


@dataclass
class DynamicLossScale:
    """Start at `init`; on non-finite gradients skip the step and divide the scale by
    `factor` (not below `min_scale`); after `growth_interval` finite steps in a row multiply
    it by `factor`. `good_steps` counts the current run of finite steps, `skipped` all
    skipped steps."""

    init: float = 2.0 ** 15
    growth_interval: int = 2000
    factor: float = 2.0
    min_scale: float = 1.0

    dynamic = True

    def __post_init__(self):
        for name in ("init", "factor", "min_scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ArgumentError(f"DynamicLossScale: {name} must be a finite positive "
                                    f"number, got {v!r}")
        if self.factor <= 1:
            raise ArgumentError(f"DynamicLossScale: factor must be > 1, got {self.factor!r}")
        if not isinstance(self.growth_interval, int) or self.growth_interval < 1:
            raise ArgumentError(f"DynamicLossScale: growth_interval must be a positive int, "
                                f"got {self.growth_interval!r}")
        self.reset()

    def reset(self) -> None:
        """Back to the initial scale with no good or skipped steps."""
        self.scale = max(float(self.init), float(self.min_scale))
        self.good_steps, self.skipped = 0, 0

    def update(self, finite: bool) -> None:
        """Adjust the scale after a step whose gradients were (not) all finite."""
        if finite:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                grown = self.scale * self.factor
                if math.isfinite(float(grown)) and grown < 3.0e38:  # stays a float32
                    self.scale = grown
                self.good_steps = 0
        else:
            self.scale = max(self.scale / self.factor, float(self.min_scale))
            self.good_steps = 0
            self.skipped += 1

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def __repr__(self) -> str:
        return (f"DynamicLossScale(scale={self.scale:g}, good_steps={self.good_steps}, "
                f"skipped={self.skipped}; init={self.init:g}, growth_interval="
                f"{self.growth_interval}, factor={self.factor:g}, min_scale={self.min_scale:g})")

    def load_state_dict(self, d: dict) -> None:
        self.scale = float(d.get("scale", self.scale))
        self.good_steps = int(d.get("good_steps", 0))
        self.skipped = int(d.get("skipped", 0))


LossScale = StaticLossScale | DynamicLossScale


def loss_scale_of(spec: object) -> LossScale | None:
    """`None`, "dynamic", a number (static) or a Static/DynamicLossScale -> a fresh scaler."""
    if spec is None:
        return None
    if isinstance(spec, (StaticLossScale, DynamicLossScale)):
        return spec
    if spec == "dynamic":
        return DynamicLossScale()
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return StaticLossScale(float(spec))
    raise ArgumentError(f"loss_scale must be None, 'dynamic', a positive number or a "
                        f"bp.train.DynamicLossScale, got {spec!r}")
