"""Primitive ops. Importing this package registers every op in the registry."""

from . import elementwise, index, kernel, leaves, linalg, movement, reduce, scan  # noqa: F401
from .registry import Op, all_ops, get_op  # noqa: F401
