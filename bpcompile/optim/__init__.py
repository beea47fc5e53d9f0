"""Optimizers, learning-rate schedules and gradient clipping as compiled graph code."""

from .kfac import KFAC, DenseLayer, damped_inverses, dense_layers, kfac  # noqa: F401
from .optimizers import (  # noqa: F401
    OPTIMIZERS,
    adam,
    adamw,
    chain,
    get,
    momentum,
    nesterov,
    rmsprop,
    sgd,
)
from .schedules import (  # noqa: F401
    ReduceLROnPlateau,
    Schedule,
    as_schedule,
    constant,
    cosine_decay,
    exponential_decay,
    join,
    linear,
    linear_warmup,
    piecewise_constant,
    step_decay,
    warmup_cosine_decay,
)
from .transforms import (  # noqa: F401
    AddDecayedWeights,
    ClipByGlobalNorm,
    ClipByValue,
    OptContext,
    Optimizer,
    ScaleByAdam,
    ScaleByLearningRate,
    ScaleByRms,
    Trace,
    Transform,
)

clip_by_global_norm = ClipByGlobalNorm
clip_by_value = ClipByValue
