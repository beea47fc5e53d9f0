"""Training: compiled train steps, the `fit` loop, diagnostics, plots, second-order methods."""

from .second_order import HVP, MinimizeResult, hessian, hvp, minimize  # noqa: F401
from .step import NonFiniteError, TrainStep, compile_train_step  # noqa: F401
