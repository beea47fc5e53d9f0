"""Training: compiled train steps, the `fit` loop, diagnostics, plots, second-order methods."""

from .callbacks import (  # noqa: F401
    Callback,
    EarlyStopping,
    LROnPlateau,
    ModelCheckpoint,
    Progress,
    Run,
)
from .data import DataError  # noqa: F401
from .es import EvolutionStrategy, centered_ranks  # noqa: F401  (issue 19)
from .fit import History, fit, load_checkpoint, rebatch_toml  # noqa: F401
from .learned import LearnedOptimizer, MetaResult, meta_train, optimizee_losses  # noqa: F401
from .loss_scale import DynamicLossScale, StaticLossScale  # noqa: F401
from .plot import plot_history, plot_memory  # noqa: F401
from .second_order import HVP, MinimizeResult, hessian, hvp, minimize  # noqa: F401
from .step import NonFiniteError, TrainStep, compile_train_step  # noqa: F401
