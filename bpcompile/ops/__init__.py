"""Primitive ops. Importing this package registers every op in the registry."""

from . import (  # noqa: F401
    checkpoint,
    elementwise,
    index,
    kernel,
    leaves,
    linalg,
    loops,
    movement,
    reduce,
    results,
    scan,
    sweep,
)
from .registry import Op, all_ops, get_op  # noqa: F401
