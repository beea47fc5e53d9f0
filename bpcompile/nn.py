"""Composites built from primitives: softmax family, losses and a dense layer.

Only primitives carry VJPs; these get their gradients by decomposition. logsumexp subtracts a
stop-gradient max so forward and backward are both stable at large logits.
"""

from __future__ import annotations

import weakref

from .errors import DTypeError, ShapeError
from .ir.dtypes import is_float
from .ir.hints import Axis, TensorLike
from .ir.node import Node
from .ops.composites import logsumexp
from .ops.elementwise import UNARY, add, as_node, mul, neg, sub, unary
from .ops.index import one_hot
from .ops.linalg import matmul
from .ops.reduce import mean, sum_

# How to sample example values for an input used as a loss target (spec.Model reads it for
# .py models): BCE targets lie in [0, 1), soft cross-entropy targets are one-hot rows.
TARGET_KINDS: weakref.WeakKeyDictionary[Node, tuple] = weakref.WeakKeyDictionary()


def log_softmax(x: TensorLike, axis: Axis = -1) -> Node:
    x = as_node(x)
    return sub(x, logsumexp(x, axis, keepdims=True))


def softmax(x: TensorLike, axis: Axis = -1) -> Node:
    """exp(log_softmax(x)): stable at large logits; log(softmax) rewrites to log_softmax."""
    return unary("exp", log_softmax(x, axis))


def mse(pred: TensorLike, target: TensorLike) -> Node:
    """Mean squared error over all elements."""
    pred, target = as_node(pred), as_node(target)
    _same_shape("mse", pred, target)
    d = sub(pred, target)
    return mean(mul(d, d))


def cross_entropy(logits: TensorLike, labels: TensorLike) -> Node:
    """Mean softmax cross-entropy of (batch, classes) logits against int32 labels (batch,),
    or against float targets of the logits' shape (probabilities / one-hot)."""
    logits, labels = as_node(logits), as_node(labels)
    if logits.ndim < 1:
        raise ShapeError("cross_entropy: logits must have a class axis")
    if logits.shape[-1] == 1:  # softmax over one class is 1: loss 0, every gradient 0
        raise ShapeError(
            f"cross_entropy: logits of shape {logits.shape} have one class, so the loss is "
            "always 0; for a yes/no target use binary_cross_entropy_with_logits on a one-unit "
            "output without an activation (it applies the sigmoid itself)"
        )
    if labels.dtype == "int32":
        if labels.shape != logits.shape[:-1]:
            raise ShapeError(
                f"cross_entropy: int labels of shape {labels.shape} do not match "
                f"logits {logits.shape} (expected {logits.shape[:-1]})"
            )
        target = one_hot(labels, logits.shape[-1], logits.dtype)
    elif is_float(labels.dtype):
        if labels.shape == logits.shape[:-1]:
            raise DTypeError(
                f"cross_entropy: labels of shape {labels.shape} look like class indices but "
                f"are {labels.dtype}; declare them int32 (or pass float targets of the logits' "
                f"shape {logits.shape})"
            )
        _same_shape("cross_entropy", logits, labels)
        target = labels
        if labels.op == "input":
            TARGET_KINDS.setdefault(labels, ("onehot",))
    else:
        raise DTypeError(f"cross_entropy: labels must be int32 or float, got {labels.dtype}")
    per_example = neg(sum_(mul(log_softmax(logits), target), -1))
    return mean(per_example)


def binary_cross_entropy_with_logits(logits: TensorLike, targets: TensorLike) -> Node:
    """Mean of softplus(z) - z*t, the stable form of -t log σ(z) - (1-t) log(1-σ(z))."""
    logits, targets = as_node(logits), as_node(targets, logits)
    _same_shape("binary_cross_entropy_with_logits", logits, targets)
    if targets.op == "input":
        TARGET_KINDS.setdefault(targets, ("unit",))
    return mean(sub(unary("softplus", logits), mul(logits, targets)))


# Named activations besides the elementwise ops themselves (any UNARY row: sigmoid, tanh, ...,
# and ops defined later with ops.elementwise.define_unary).
ACTIVATIONS = ("identity", "linear", "softmax")


def activation(x: Node, name: str | None) -> Node:
    if name in ("identity", "linear", None):
        return x
    if name == "softmax":
        return softmax(x)
    if name not in UNARY:
        raise ValueError(f"unknown activation {name!r}; choose from "
                         f"{', '.join(ACTIVATIONS + tuple(sorted(UNARY)))}")
    return unary(name, x)


def dense(x: TensorLike, W: TensorLike, b: TensorLike | None = None,
          activation_fn: str | None = None, name: str | None = None) -> Node:
    """activation(x @ W + b); names the pre-activation z<name> and output a<name> for codegen."""
    z = matmul(x, W)
    if b is not None:
        z = add(z, b)
    if name:
        z.named(f"z{name}")
    a = activation(z, activation_fn) if activation_fn else z
    if name and a is not z:
        a.named(f"a{name}")
    return a


def _same_shape(op, a, b):
    if a.shape != b.shape:
        raise ShapeError(f"{op}: prediction shape {a.shape} != target shape {b.shape}")
