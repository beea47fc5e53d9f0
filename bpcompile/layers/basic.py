"""Small composites: residual connections, embedding lookup, dropout with an explicit key.

Dropout's mask is DATA, not a graph computation: `dropout(x, rate, name)` declares a float
input `name` of x's shape holding the scaled keep-mask (0 or 1/(1-rate)), and
`dropout_masks(outputs, key)` generates every such input of a graph on the host from an
integer key with NumPy's Philox generator (keyed by (key, input name)). The same key gives the
same mask bits on every platform, so numpy, llvm and jax backends see identical masks, and a
training loop changes masks by changing the key. Nothing random happens inside compiled code.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir.hints import DTypeLike, TensorLike
from ..ir.node import Node
from ..ir.traverse import leaves
from ..ops.elementwise import add, as_node, mul
from ..ops.index import take
from ..ops.leaves import input as bp_input

# input name -> dropout rate, for dropout_masks()
DROPOUT_INPUTS: dict[str, float] = {}


def residual(x: TensorLike, fn: Callable[..., TensorLike], *args: Any, **kwargs: Any) -> Node:
    """x + fn(x, ...): a residual (skip) connection; fn must preserve x's shape."""
    x = as_node(x)
    y = as_node(fn(x, *args, **kwargs))
    if y.shape != x.shape:
        raise ShapeError(f"residual: the branch changes the shape {x.shape} -> {y.shape}")
    return add(x, y)


def embedding(tokens: TensorLike, table: TensorLike) -> Node:
    """table[tokens]: int32 token ids (any shape) -> (..., d) rows of a (vocab, d) table.

    The gradient w.r.t. the table scatters-adds rows (take's VJP); ids are range-checked at
    call time for int32 inputs.
    """
    tokens, table = as_node(tokens), as_node(table)
    if tokens.dtype != "int32":
        raise DTypeError(f"embedding: token ids must be int32, got {tokens.dtype}")
    if table.ndim != 2:
        raise ShapeError(f"embedding: table must be (vocab, dim), got {table.shape}")
    return take(table, tokens, axis=0)


def dropout(x: TensorLike, rate: float, name: str = "dropout_mask", training: bool = True) -> Node:
    """Inverted dropout: x · mask where `mask` is the input `name` (fill it with dropout_masks).

    rate 0 or training=False is the identity (no input is declared).
    """
    x = as_node(x)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout: rate must be in [0, 1), got {rate}")
    if not training or rate == 0.0:
        return x
    if DROPOUT_INPUTS.get(name, rate) != rate:
        raise ValueError(f"dropout: input {name!r} already used with rate {DROPOUT_INPUTS[name]}")
    DROPOUT_INPUTS[name] = float(rate)
    return mul(x, bp_input(name, x.shape, x.dtype))


def dropout_mask(key: int, name: str, shape: Sequence[int], rate: float,
                 dtype: DTypeLike = "float32") -> np.ndarray:
    """The scaled keep-mask for input `name` under integer `key` (deterministic everywhere)."""
    seed = [int(key) & 0xFFFFFFFF, zlib.crc32(name.encode())]
    u = np.random.Generator(np.random.Philox(seed)).random(tuple(shape))
    return np.where(u >= rate, 1.0 / (1.0 - rate), 0.0).astype(dtype)


def dropout_masks(outputs: Node | Sequence[Node], key: int) -> dict[str, np.ndarray]:
    """{name: mask} for every dropout input reachable from `outputs` (a node or list)."""
    outputs = [outputs] if isinstance(outputs, Node) else list(outputs)
    masks = {}
    for leaf in leaves(outputs, ("input",)):
        name = leaf.attr("name")
        if name in DROPOUT_INPUTS:
            masks[name] = dropout_mask(key, name, leaf.shape, DROPOUT_INPUTS[name], leaf.dtype)
    return masks
