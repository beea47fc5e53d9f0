"""Type aliases of the public API. Annotations only: nothing here changes what runs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .node import Node

Shape = int | Sequence[int]  # one size or a tuple of static sizes
Axis = int | Sequence[int] | None  # None: every axis
DTypeLike = str | np.dtype | type  # "float32", np.float32, np.dtype("int32"), ...
TensorLike = Node | float | int | bool | np.ndarray | np.generic  # what `as_node` lifts
Wrt = Node | Sequence[Node]  # one bp.param or a list of them
