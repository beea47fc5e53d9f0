"""Parameter initialisers of model specs: `Init(method, scale)` samples one param's values.

Kept apart from spec reading so layer builders and Python model files can name an initialiser
without the TOML reader, and a new method is one branch of `Init.sample`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SpecError

INIT_METHODS = ("normal", "glorot", "uniform", "zeros")
# Default `scale` per init method: normal's std, uniform's half-width, glorot's multiplier.
DEFAULT_SCALE = {"normal": 0.1, "uniform": 0.5, "glorot": 1.0, "zeros": 0.0}


@dataclass(frozen=True)
class Init:
    """How to initialise one parameter: method in INIT_METHODS; `scale` None -> the default."""

    method: str = "glorot"
    scale: float | None = None

    def __post_init__(self):
        if self.scale is not None and not (np.isfinite(self.scale) and self.scale >= 0):
            raise SpecError(f"Init({self.method!r}): scale must be a finite number >= 0, "
                            f"got {self.scale}")

    def sample(self, rng: np.random.Generator, shape: tuple, dtype: str) -> np.ndarray:
        scale = DEFAULT_SCALE[self.method] if self.scale is None else self.scale
        if self.method == "zeros":
            out = np.zeros(shape)
        elif self.method == "normal":
            out = scale * rng.standard_normal(shape)
        elif self.method == "uniform":
            out = rng.uniform(-scale, scale, shape)
        elif self.method == "glorot":
            fan_in = shape[-2] if len(shape) >= 2 else (shape[0] if shape else 1)
            fan_out = shape[-1] if shape else 1
            limit = scale * np.sqrt(6.0 / max(fan_in + fan_out, 1))
            out = rng.uniform(-limit, limit, shape)
        else:
            raise SpecError(f"unknown init method {self.method!r}; expected one of {INIT_METHODS}")
        return np.asarray(out, dtype=dtype)

