"""The op registry the primitives in this package fill: the table itself is the IR's
(`ir/optable.py`), since building a node looks up its op's shape rule there."""

from ..ir.optable import _OPS, KINDS, Op, all_ops, get_op, register, unregister  # noqa: F401
