"""bpcompile: a symbolic-to-code autodiff compiler for neural networks."""

from . import optim, spec, train  # noqa: F401  (issue 6: training)
from .api import (  # noqa: F401
    abs_ as abs,
)
from .api import (  # noqa: F401  (issue 16: reductions, indexing and logic the AD benchmarks use)
    add,
    arange,
    argmax,
    argmin,
    binary,
    broadcast_to,
    cast,
    concatenate,
    const,
    cos,
    custom_jvp,
    custom_vjp,
    div,
    elementwise,
    equal,
    exp,
    expm1,
    floor,
    getitem,
    greater,
    greater_equal,
    input,
    iota,
    less,
    less_equal,
    log,
    log1p,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    mul,
    neg,
    not_equal,
    one_hot,
    pad,
    param,
    power,
    relu,
    reshape,
    scatter_add,
    sigmoid,
    sign,
    sin,
    softplus,
    sqrt,
    square,
    stack,
    stop_gradient,
    sub,
    sum,
    take,
    tanh,
    transpose,
    unary,
    where,
)
from .api import (
    round_ as round,
)
from .autodiff.feedback import feedback_matrices  # noqa: F401  (issue 19)
from .check import CheckReport, check  # noqa: F401
from .compiled import Compiled, Function, compile, export, function, grad  # noqa: F401
from .errors import (  # noqa: F401
    ArgumentError,
    BackendError,
    BPError,
    DTypeError,
    GradientError,
    NonDifferentiableError,
    ShapeError,
    SpecError,
)
from .ir.node import Node  # noqa: F401
from .ir.optable import seal_builtins as _seal_builtins
from .layers import *  # noqa: F403  (conv, pooling, attention, norms, dropout, scan, ...)
from .layers import spec_layers  # noqa: F401,I001  (registers the [[layers]] types of specs)
from .nn import (  # noqa: F401
    binary_cross_entropy_with_logits,
    cross_entropy,
    dense,
    log_softmax,
    logsumexp,
    mse,
    softmax,
)
from .ops.checkpoint import checkpoint, remat  # noqa: F401  (issue 17: rematerialisation)
from .ops.loops import fori_loop, while_loop  # noqa: F401  (issue 16: loops)
from .spec import load as load_model  # noqa: F401
from .train import compile_train_step  # noqa: F401  (issue 6: training)
from .transforms import hessian, jacobian, jvp, vjp  # noqa: F401  (issue 16)
from .version import __version__  # noqa: F401

_seal_builtins()  # every op registered so far is bpcompile's own (the compile cache relies on it)
