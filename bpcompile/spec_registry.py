"""The layer and loss registries of model specs: `[[layers]] type = ...` -> builder, and
`[loss] type = ...` -> `LossDef`.

A new layer type is one `@layer("name")` function (`layers/spec_layers.py` registers the
architecture layers this way) and a new loss one `loss(name, LossDef(...))` call; the spec
reader (`spec.py`) looks types up here and never changes for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from . import nn
from .initializers import INIT_METHODS, Init
from .ir.dtypes import is_float
from .ir.node import Node
from .ops.elementwise import mul, sub
from .ops.reduce import sum_

if TYPE_CHECKING:  # annotations only: the reader imports this module, not the reverse
    from .spec import SpecBuilder, Table

ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "softplus", "softmax")


@dataclass
class LayerContext:
    """What a layer builder gets: the layer's input node `x`, its name, the model dtype, and
    helpers to declare params, look up earlier outputs and raise located errors."""

    x: Node
    name: str
    dtype: str
    table: Table
    builder: SpecBuilder

    def param(self, prefix: str, shape: tuple, init: Init) -> Node:
        """Declare param `<prefix><layer name>` (e.g. W1, b1) with its initialiser."""
        return self.builder.new_param(f"{prefix}{self.name}", shape, init, self.table)

    def lookup(self, name: str, key: str = "input") -> Node:
        return self.builder.lookup(name, self.table, key)

    def error(self, msg: str, key: str | None = None) -> NoReturn:
        self.table.error(msg, key)

    def weight_init(self) -> Init:
        """The layer's weight Init: its own `init`/`scale` keys over the spec-wide [init]."""
        t, base = self.table, self.builder.init
        method = t.str("init", base.method, choices=INIT_METHODS)
        scale = t.scale("scale", base.scale if method == base.method else None)
        return Init(method, scale)


LayerBuilder = Callable[[LayerContext], Node]
LAYERS: dict[str, LayerBuilder] = {}


def layer(type_name: str) -> Callable[[LayerBuilder], LayerBuilder]:
    """Register a layer builder: `fn(ctx) -> Node` reads its keys from `ctx.table`."""

    def deco(fn: LayerBuilder) -> LayerBuilder:
        LAYERS[type_name] = fn
        return fn

    return deco


@layer("dense")
def _dense(ctx: LayerContext) -> Node:
    """activation(x @ W + b), W: (in, units), b: (units,)."""
    t = ctx.table
    units = t.int("units", min=1)
    act = t.str("activation", "identity", choices=ACTIVATIONS)
    use_bias = t.bool("bias", True)
    init = ctx.weight_init()
    x = ctx.x
    if x.ndim < 1 or not is_float(x.dtype):
        ctx.error(f"dense needs a float input with a feature axis, got {x!r}")
    W = ctx.param("W", (x.shape[-1], units), init)
    b = ctx.param("b", (units,), ctx.builder.bias_init) if use_bias else None
    return nn.dense(x, W, b, None if act == "identity" else act, name=ctx.name)


@layer("activation")
def _activation(ctx: LayerContext) -> Node:
    """An activation on its own: `function` in ACTIVATIONS."""
    fn = ctx.table.str("function", choices=ACTIVATIONS)
    out = nn.activation(ctx.x, fn)
    return out.named(f"a{ctx.name}") if out is not ctx.x else out


@layer("flatten")
def _flatten(ctx: LayerContext) -> Node:
    """Reshape (batch, ...) to (batch, features)."""
    from .ops.movement import reshape

    x = ctx.x
    if x.ndim < 1:
        ctx.error(f"flatten needs an input with a batch axis, got {x!r}")
    return reshape(x, (x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64))))


@dataclass(frozen=True)
class LossDef:
    """fn(pred, target) -> scalar; `kinds` maps a target dtype class to its sampling hint."""

    fn: Callable
    target: str  # "same" (float, pred's shape) or "labels" (int (batch,) or float like pred)
    takes_logits: str | None = None  # the activation it applies itself (a spec error to repeat)
    sample: tuple = ("normal",)


def _sum_squares(pred: Node, target: Node) -> Node:
    """0.5 * sum((pred - target)^2): the error E of Rumelhart, Hinton & Williams (1986)."""
    d = sub(pred, target).named("err")
    return mul(sum_(mul(d, d)), 0.5)


LOSSES: dict[str, LossDef] = {}


def loss(name: str, loss_def: LossDef) -> None:
    """Register a loss type for the `[loss] type = ...` key."""
    LOSSES[name] = loss_def


loss("mse", LossDef(nn.mse, "same"))
loss("sum_squares", LossDef(_sum_squares, "same"))
loss("cross_entropy", LossDef(nn.cross_entropy, "labels", "softmax", ("onehot",)))
loss("binary_cross_entropy_with_logits",
     LossDef(nn.binary_cross_entropy_with_logits, "same", "sigmoid", ("unit",)))
