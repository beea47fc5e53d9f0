"""Gradient transformations that build IR: the pieces every optimizer is chained from.

A `Transform` says which per-parameter state slots it keeps (Adam: `mu`, `nu`) and how to turn
incoming updates (gradients at first) into outgoing ones, given graph nodes for the updates,
the state, the params and an `OptContext` holding the scalar `count` (updates already applied)
and `lr_scale` inputs. Nothing here touches arrays: `apply` returns nodes, so forward pass,
backward pass and optimizer update compile into one function. The algebra follows optax
transform by transform (same names, same defaults, same order of operations) so results agree
step for step; each formula is in its docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import cast as cast_type

import numpy as np

from ..ir.dtypes import is_half
from ..ir.node import Node
from ..ops.elementwise import (
    add,
    as_node,
    cast,
    div,
    lt,
    maximum,
    minimum,
    mul,
    power,
    sub,
    unary,
    where,
)
from ..ops.reduce import sum_
from .schedules import LearningRate, Schedule, as_schedule

Nodes = dict[str, Node]  # graph nodes by param name (updates, params) or state key
State = dict[str, Nodes]  # a transform's slots: {slot: {param name: node}}
Mask = Callable[[str], bool] | Collection[str] | None  # weight decay: which params (None: all)


@dataclass
class OptContext:
    """Scalar graph inputs shared by every transform of one compiled step."""

    count: Node  # float scalar: number of updates applied before this one (0 first)
    lr_scale: Node  # float scalar: host-side multiplier (ReduceLROnPlateau), 1.0 by default


def _wide(x: Node) -> Node:
    """A 16-bit float tensor as float32, the dtype optimizer math runs in for it."""
    return cast(x, "float32") if is_half(x.dtype) else x


def _compute_array(p) -> np.ndarray:
    p = np.asarray(p)
    return p.astype(np.float32) if is_half(p.dtype.name) else p


def _c(value: float, like: Node) -> Node:
    return as_node(float(value), like)


class Transform:
    """One stage of an optimizer: `slots` per-param state arrays, zero-initialised unless
    `init_slot` says otherwise; `apply(updates, state, params, ctx) -> (updates, state)`."""

    slots: tuple = ()

    def init_slot(self, slot: str, p: np.ndarray) -> np.ndarray:
        return np.zeros_like(p)

    def apply(self, updates: Nodes, state: State, params: Nodes,
              ctx: OptContext) -> tuple[Nodes, State]:
        raise NotImplementedError  # pragma: no cover

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class ClipByGlobalNorm(Transform):
    """g <- g * max_norm / ‖g‖ when the global norm ‖g‖ over all params is ≥ max_norm."""

    def __init__(self, max_norm: float):
        if not max_norm > 0:
            raise ValueError(f"clip_by_global_norm: max_norm must be > 0, got {max_norm}")
        self.max_norm = float(max_norm)

    def apply(self, updates: Nodes, state: State, params: Nodes,
              ctx: OptContext) -> tuple[Nodes, State]:
        sq = None
        for g in updates.values():
            s = sum_(mul(g, g))
            s = cast(s, ctx.count.dtype) if s.dtype != ctx.count.dtype else s
            sq = s if sq is None else add(sq, s)
        norm = unary("sqrt", cast_type(Node, sq))  # (at least one param: sq is a node)
        keep = lt(norm, _c(self.max_norm, norm))
        out = {}
        for k, g in updates.items():
            n = cast(norm, g.dtype) if norm.dtype != g.dtype else norm
            out[k] = where(keep, g, mul(div(g, n), _c(self.max_norm, g)))
        return out, {}


class ClipByValue(Transform):
    """g <- clip(g, -max_delta, max_delta) elementwise."""

    def __init__(self, max_delta: float):
        if not max_delta > 0:
            raise ValueError(f"clip_by_value: max_delta must be > 0, got {max_delta}")
        self.max_delta = float(max_delta)

    def apply(self, updates: Nodes, state: State, params: Nodes,
              ctx: OptContext) -> tuple[Nodes, State]:
        return {k: minimum(maximum(g, _c(-self.max_delta, g)), _c(self.max_delta, g))
                for k, g in updates.items()}, {}


class Trace(Transform):
    """Momentum: trace <- g + decay * trace; update = trace, or g + decay * trace (Nesterov)."""

    slots = ("trace",)

    def __init__(self, decay: float, nesterov: bool = False):
        self.decay, self.nesterov = float(decay), bool(nesterov)

    def apply(self, updates: Nodes, state: State, params: Nodes,
              ctx: OptContext) -> tuple[Nodes, State]:
        out: Nodes = {}
        new: State = {}
        for k, g in updates.items():
            t = add(g, mul(_c(self.decay, g), state["trace"][k]))
            new.setdefault("trace", {})[k] = t
            out[k] = add(g, mul(_c(self.decay, g), t)) if self.nesterov else t
        return out, new


class ScaleByRms(Transform):
    """RMSprop: nu <- decay * nu + (1 - decay) g²; update = g / sqrt(nu + eps) (optax's default
    `eps_in_sqrt=True`; False gives PyTorch's g / (sqrt(nu) + eps))."""

    slots = ("nu",)

    def __init__(self, decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0,
                 eps_in_sqrt: bool = True):
        self.decay, self.eps = float(decay), float(eps)
        self.initial_scale, self.eps_in_sqrt = float(initial_scale), bool(eps_in_sqrt)

    def init_slot(self, slot: str, p: np.ndarray) -> np.ndarray:
        return np.full_like(p, self.initial_scale)

    def apply(self, updates: Nodes, state: State, params: Nodes,
              ctx: OptContext) -> tuple[Nodes, State]:
        out: Nodes = {}
        new: State = {"nu": {}}
        for k, g in updates.items():
            nu = add(mul(_c(1.0 - self.decay, g), mul(g, g)),
                     mul(_c(self.decay, g), state["nu"][k]))
            new["nu"][k] = nu
            if self.eps_in_sqrt:
                out[k] = div(g, unary("sqrt", add(nu, _c(self.eps, g))))
            else:
                out[k] = div(g, add(unary("sqrt", nu), _c(self.eps, g)))
        return out, new


class ScaleByAdam(Transform):
    """Adam: mu <- b1 mu + (1-b1) g; nu <- b2 nu + (1-b2) g²; t = count + 1;
    update = (mu / (1 - b1^t)) / (sqrt(nu / (1 - b2^t) + eps_root) + eps)."""

    slots = ("mu", "nu")

    def __init__(self, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                 eps_root: float = 0.0):
        self.b1, self.b2 = float(b1), float(b2)
        self.eps, self.eps_root = float(eps), float(eps_root)

    def apply(self, updates: Nodes, state: State, params: Nodes,
              ctx: OptContext) -> tuple[Nodes, State]:
        t = add(ctx.count, _c(1.0, ctx.count))
        bc1 = sub(_c(1.0, t), power(_c(self.b1, t), t))
        bc2 = sub(_c(1.0, t), power(_c(self.b2, t), t))
        out: Nodes = {}
        new: State = {"mu": {}, "nu": {}}
        for k, g in updates.items():
            mu = add(mul(_c(1.0 - self.b1, g), g), mul(_c(self.b1, g), state["mu"][k]))
            nu = add(mul(_c(1.0 - self.b2, g), mul(g, g)), mul(_c(self.b2, g), state["nu"][k]))
            new["mu"][k], new["nu"][k] = mu, nu
            c1 = cast(bc1, g.dtype) if bc1.dtype != g.dtype else bc1
            c2 = cast(bc2, g.dtype) if bc2.dtype != g.dtype else bc2
            nu_hat = div(nu, c2)
            if self.eps_root:
                nu_hat = add(nu_hat, _c(self.eps_root, g))
            out[k] = div(div(mu, c1), add(unary("sqrt", nu_hat), _c(self.eps, g)))
        return out, new


class AddDecayedWeights(Transform):
    """Decoupled weight decay (AdamW): update <- update + weight_decay * param."""

    def __init__(self, weight_decay: float, mask: Mask = None) -> None:
        self.weight_decay = float(weight_decay)
        self.mask = mask  # None: every param; else a callable name -> bool or a set of names

    def _applies(self, name):
        if self.mask is None:
            return True
        return self.mask(name) if callable(self.mask) else name in self.mask

    def apply(self, updates: Nodes, state: State, params: Nodes,
              ctx: OptContext) -> tuple[Nodes, State]:
        return {k: add(u, mul(_c(self.weight_decay, u), params[k])) if self._applies(k) else u
                for k, u in updates.items()}, {}


class ScaleByLearningRate(Transform):
    """update <- -lr(count) * lr_scale * update, lr a number or a schedule."""

    def __init__(self, learning_rate: LearningRate) -> None:
        self.schedule: Schedule = as_schedule(learning_rate)

    def apply(self, updates: Nodes, state: State, params: Nodes,
              ctx: OptContext) -> tuple[Nodes, State]:
        lr = mul(self.schedule.node(ctx.count), ctx.lr_scale)
        out = {}
        for k, u in updates.items():
            step = cast(lr, u.dtype) if lr.dtype != u.dtype else lr
            out[k] = mul(u, mul(step, _c(-1.0, step)))
        return out, {}


@dataclass
class Optimizer:
    """An ordered chain of transforms ending in a learning-rate scaling; `name` for display.

    `init(params)` gives the initial state arrays, keyed `<slot>_<param>` (e.g. `mu_W1`);
    `update(grads, state, params, ctx)` gives the new params and state as graph nodes.
    """

    transforms: list[Transform]
    name: str = "optimizer"
    hyper: dict = field(default_factory=dict)

    def _slot_names(self):
        """(transform index, slot) -> state key prefix, made unique across the chain."""
        seen, out = {}, {}
        for i, t in enumerate(self.transforms):
            for s in t.slots:
                prefix = s if s not in seen else f"{s}{i}"
                seen[prefix] = True
                out[(i, s)] = prefix
        return out

    @property
    def schedule(self) -> Schedule | None:
        for t in self.transforms:
            if isinstance(t, ScaleByLearningRate):
                return t.schedule
        return None

    def learning_rate(self, count: int, lr_scale: float = 1.0) -> float:
        s = self.schedule
        return (s(count) if s is not None else 1.0) * lr_scale

    def init(self, params: dict) -> dict:
        names = self._slot_names()
        out = {}
        for i, t in enumerate(self.transforms):
            for s in t.slots:
                for k, p in params.items():
                    out[f"{names[(i, s)]}_{k}"] = t.init_slot(s, _compute_array(p))
        return out

    def state_keys(self, param_names: Iterable[str]) -> list[str]:
        names = self._slot_names()
        return [f"{names[(i, s)]}_{k}" for i, t in enumerate(self.transforms)
                for s in t.slots for k in param_names]

    def update(self, grads: Nodes, state: Nodes, params: Nodes,
               ctx: OptContext) -> tuple[Nodes, Nodes]:
        """Graph nodes for (new params, new state) from gradient/state/param nodes by name."""
        updates, new_state = self.updates(grads, state, params, ctx)
        return {k: add(params[k], updates[k]) for k in params}, new_state

    def updates(self, grads: Nodes, state: Nodes, params: Nodes,
                ctx: OptContext) -> tuple[Nodes, Nodes]:
        """Graph nodes for (param deltas, new state): new param = param + delta."""
        names = self._slot_names()
        # 16-bit params: state and update math in float32 (0.999 is 1.0 in bfloat16, Adam's
        # second moment underflows in float16); the delta is rounded to the param's dtype
        low = {k: p.dtype for k, p in params.items() if is_half(p.dtype)}
        updates, new_state = {k: _wide(g) for k, g in grads.items()}, {}
        params = {k: _wide(p) for k, p in params.items()}
        for i, t in enumerate(self.transforms):
            sub_state = {s: {k: state[f"{names[(i, s)]}_{k}"] for k in params} for s in t.slots}
            updates, ns = t.apply(updates, sub_state, params, ctx)
            for s, per in ns.items():
                for k, v in per.items():
                    new_state[f"{names[(i, s)]}_{k}"] = v
        return {k: cast(u, low[k]) if k in low else u for k, u in updates.items()}, new_state

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"bp.optim.{self.name}({hp})"
