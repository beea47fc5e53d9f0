"""A learned optimizer (Andrychowicz et al., 2016, "Learning to learn by gradient descent by
gradient descent"): a coordinate-wise two-layer LSTM with weights shared by every coordinate
reads each parameter's preprocessed gradient and outputs its update.

Preprocessing (the paper's, p = 10): g ↦ (log|g|/p, sign g) when |g| ≥ e^-p, else (-1, e^p g).
The update is `out_scale` × a linear read-out of the second layer's hidden state.

`meta_train` builds ONE compiled program per meta-step: `horizon` optimizer steps (unrolled
in Python, or one `bp.scan` with `loop="scan"`), each taking the optimizee's gradient at θ_t
with the reverse sweep (nested in the graph) behind a stop-gradient (the paper drops the
second derivatives through the optimizee's gradient); it outputs the meta-loss (the
optimizee's loss averaged over the horizon), its gradient w.r.t. the LSTM weights, and the
final θ and LSTM states. The host meta-optimises with Adam and runs truncated BPTT: each
sampled problem is optimised for `unrolls` x `horizon` steps, carrying θ and the LSTM states
between the truncated segments.
The trained `LearnedOptimizer` is an ordinary `Optimizer` (`compile_train_step(...,
optimizer=learned)`, `fit`): its LSTM states are optimizer state slots, its weights constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..compiled import Function
from ..compiled import grad as _grad
from ..errors import ArgumentError
from ..ir.node import Node
from ..layers.recurrent import lstm_cell
from ..ops.elementwise import (
    add,
    as_node,
    cast,
    div,
    ge,
    maximum,
    mul,
    stop_gradient,
    unary,
    where,
)
from ..ops.leaves import const
from ..ops.leaves import input as _input
from ..ops.leaves import param as _param
from ..ops.linalg import matmul
from ..ops.movement import concatenate, reshape
from ..ops.scan import scan
from ..ops.sweep import backward
from ..optim.transforms import Nodes, OptContext, Optimizer, State, Transform
from .step import compile_train_step

LossFn = Callable[[dict[str, Node], dict[str, Node]], Node]  # (theta, data) -> scalar loss
Sampler = Callable[[np.random.Generator], tuple[dict, dict]]  # rng -> (theta0, data)
WEIGHTS = ("Wx1", "Wh1", "b1", "Wx2", "Wh2", "b2", "Wo", "bo")
SLOTS = ("h1", "c1", "h2", "c2")


def preprocess(g: Node, p: float = 10.0) -> Node:
    """(..., 2) features of a gradient: (log|g|/p, sign g) if |g| >= e^-p else (-1, e^p g)."""
    a = unary("abs", g)
    big = ge(a, as_node(math.exp(-p), a))
    f1 = where(big, div(unary("log", maximum(a, as_node(math.exp(-p), a))), as_node(p, a)),
               as_node(-1.0, a))
    f2 = where(big, unary("sign", g), mul(g, as_node(math.exp(p), g)))
    shape = g.shape + (1,)
    return concatenate([reshape(f1, shape), reshape(f2, shape)], -1)


def lstm_update(g: Node, state: Mapping[str, Node], w: Mapping[str, Node],
                out_scale: float, p: float = 10.0) -> tuple[Node, dict[str, Node]]:
    """One coordinate-wise step: gradient g (any shape) and states (g.shape + (H,)) ->
    (update of g's shape, new states). The same weights serve every coordinate."""
    n, hid = max(1, int(np.prod(g.shape))), w["Wh1"].shape[0]
    x = reshape(preprocess(g, p), (n, 2))
    flat = {k: reshape(state[k], (n, hid)) for k in SLOTS}
    h1, c1 = lstm_cell(flat["h1"], flat["c1"], add(matmul(x, w["Wx1"]), w["b1"]), w["Wh1"])
    h2, c2 = lstm_cell(flat["h2"], flat["c2"], add(matmul(h1, w["Wx2"]), w["b2"]), w["Wh2"])
    out = mul(add(matmul(h2, w["Wo"]), w["bo"]), as_node(out_scale, h2))
    new = {k: reshape(v, g.shape + (hid,)) for k, v in zip(SLOTS, (h1, c1, h2, c2))}
    return reshape(out, g.shape), new


def init_weights(hidden: int = 20, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Uniform ±1/sqrt(fan_in) weights, forget-gate bias 1, zero read-out bias."""
    rng = np.random.default_rng(seed)
    h = hidden

    def u(fan_in, shape):
        return rng.uniform(-1, 1, shape) / math.sqrt(fan_in)

    b = np.zeros(4 * h)
    b[h:2 * h] = 1.0  # forget gate (gate order i, f, g, o as in layers/recurrent.py)
    w = {"Wx1": u(2, (2, 4 * h)), "Wh1": u(h, (h, 4 * h)), "b1": b,
         "Wx2": u(h, (h, 4 * h)), "Wh2": u(h, (h, 4 * h)), "b2": b.copy(),
         "Wo": u(h, (h, 1)), "bo": np.zeros(1)}
    return {k: v.astype(dtype) for k, v in w.items()}


class LSTMUpdate(Transform):
    """The learned update as a gradient transformation; its weights are graph constants."""

    slots = SLOTS

    def __init__(self, weights: Mapping[str, np.ndarray], out_scale: float, p: float):
        self.weights = {k: np.asarray(v) for k, v in weights.items()}
        self.hidden = self.weights["Wh1"].shape[0]
        self.out_scale, self.p = float(out_scale), float(p)

    def init_slot(self, slot: str, p: np.ndarray) -> np.ndarray:
        return np.zeros(p.shape + (self.hidden,), p.dtype)

    def apply(self, updates: Nodes, state: State, params: Nodes,
              ctx: OptContext) -> tuple[Nodes, State]:
        out: Nodes = {}
        new: State = {s: {} for s in SLOTS}
        for k, g in updates.items():
            w = {n: const(v.astype(g.dtype)) for n, v in self.weights.items()}
            u, st = lstm_update(g, {s: state[s][k] for s in SLOTS}, w, self.out_scale, self.p)
            scale = ctx.lr_scale if ctx.lr_scale.dtype == u.dtype else cast(ctx.lr_scale, u.dtype)
            out[k] = mul(u, scale)  # the host's multiplier (ReduceLROnPlateau) still applies
            for s in SLOTS:
                new[s][k] = st[s]
        return out, new

    def __repr__(self):
        return f"LSTMUpdate(hidden={self.hidden}, out_scale={self.out_scale})"


class LearnedOptimizer(Optimizer):
    """A meta-trained LSTM optimizer, usable as `optimizer=` wherever an Optimizer is: the
    update is the LSTM's output times the step's `lr_scale` (no learning rate)."""

    def __init__(self, weights: Mapping[str, np.ndarray], out_scale: float = 0.1,
                 p: float = 10.0) -> None:
        missing = [k for k in WEIGHTS if k not in weights]
        if missing:
            raise ArgumentError(f"LearnedOptimizer: weights missing {missing}")
        t = LSTMUpdate(weights, out_scale, p)
        super().__init__([t], "learned", {"hidden": t.hidden, "out_scale": out_scale})
        self.weights = t.weights

    def __repr__(self):
        return f"bp.train.LearnedOptimizer(hidden={self.hyper['hidden']})"


@dataclass
class MetaResult:
    """`optimizer`: the trained LearnedOptimizer; `meta_losses`: the meta-loss of every
    meta-step (the optimizee's loss averaged over one truncated segment)."""

    optimizer: LearnedOptimizer
    meta_losses: list[float] = field(default_factory=list)


def _optimizer_step(loss_fn: LossFn, theta: dict, state: dict, data: dict, w: dict,
                    out_scale: float, p: float) -> tuple[dict, dict, Node]:
    """One optimizee step: (new theta, new LSTM states, the optimizee's loss after it)."""
    f = loss_fn(theta, data)
    names = list(theta)
    # the optimizee gradient, a constant for the meta-gradient (the paper's choice)
    gs = backward({f: const(1.0, f.dtype)}, [theta[k] for k in names])
    new_theta, new_state = {}, {}
    for k, g in zip(names, gs):
        g = stop_gradient(g) if g is not None else const(np.zeros(theta[k].shape,
                                                                  theta[k].dtype))
        delta, new_state[k] = lstm_update(g, state[k], w, out_scale, p)
        new_theta[k] = add(theta[k], delta)
    return new_theta, new_state, loss_fn(new_theta, data)


def _segment(loss_fn: LossFn, theta_shapes: Mapping[str, tuple], data_shapes: Mapping[str, tuple],
             hidden: int, horizon: int, out_scale: float, p: float, dtype: str,
             loop: str = "unroll"):
    """The graph of one truncated segment: outputs meta-loss, its gradient w.r.t. the LSTM
    weights, final theta and states. `loop="scan"` traces one step into a `bp.scan` body
    (graph size independent of the horizon) instead of unrolling it in Python."""
    w = {k: _param(f"lstm_{k}", v.shape, dtype)
         for k, v in init_weights(hidden, 0, dtype).items()}
    theta = {k: _input(f"theta_{k}", s, dtype) for k, s in theta_shapes.items()}
    data = {k: _input(k, s, d) for k, (s, d) in data_shapes.items()}
    state = {k: {s: _input(f"{s}_{k}", tuple(shape) + (hidden,), dtype) for s in SLOTS}
             for k, shape in theta_shapes.items()}
    names = list(theta)
    if loop == "scan":
        def body(carry, _):
            th = dict(zip(names, carry[:len(names)]))
            flat = carry[len(names):-1]
            st = {k: dict(zip(SLOTS, flat[i * 4:(i + 1) * 4])) for i, k in enumerate(names)}
            th, st, ft = _optimizer_step(loss_fn, th, st, data, w, out_scale, p)
            out = [th[k] for k in names] + [st[k][s] for k in names for s in SLOTS]
            return tuple(out + [add(carry[-1], ft)]), None

        init = [theta[k] for k in names] + [state[k][s] for k in names for s in SLOTS]
        final, _ = scan(body, tuple(init + [const(0.0, dtype)]), length=horizon)
        theta = dict(zip(names, final[:len(names)]))
        flat = final[len(names):-1]
        state = {k: dict(zip(SLOTS, flat[i * 4:(i + 1) * 4])) for i, k in enumerate(names)}
        total = final[-1]
    elif loop == "unroll":
        total = None
        for _ in range(horizon):
            theta, state, ft = _optimizer_step(loss_fn, theta, state, data, w, out_scale, p)
            total = ft if total is None else add(total, ft)
    else:
        raise ArgumentError(f"meta_train: loop must be 'unroll' or 'scan', got {loop!r}")
    assert total is not None
    meta = div(total, as_node(float(horizon), total))
    outputs = {"meta_loss": meta}
    wlist = list(w.values())
    for k, g in zip(w, _grad(meta, wlist)):
        outputs[f"d_{k}"] = g
    for k in theta:
        outputs[f"theta_{k}_next"] = theta[k]
        for s in SLOTS:
            outputs[f"{s}_{k}_next"] = state[k][s]
    return outputs


def meta_train(loss_fn: LossFn, theta_shapes: Mapping[str, tuple],
               data_shapes: Mapping[str, tuple], sample: Sampler, meta_steps: int = 100,
               horizon: int = 20, unrolls: int = 5, hidden: int = 20, meta_lr: float = 1e-2,
               out_scale: float = 0.1, p: float = 10.0, seed: int = 0, dtype: str = "float32",
               backend: str = "numpy", clip: float = 1.0,
               init: Mapping[str, np.ndarray] | None = None, loop: str = "unroll") -> MetaResult:
    """Meta-train a coordinate-wise LSTM optimizer on problems drawn by `sample(rng) ->
    (theta0, data)` (arrays by name, shapes `theta_shapes` / `data_shapes` {name: (shape,
    dtype)}), whose loss is `loss_fn(theta_nodes, data_nodes)` (a scalar).

    Every meta-step runs one compiled segment of `horizon` unrolled optimizer steps and takes
    one Adam step (`meta_lr`, gradient clipped to global norm `clip`) on the LSTM weights; a
    problem is resampled every `unrolls` segments (truncated BPTT over unrolls x horizon
    optimizer steps). `loop="scan"` runs the segment's steps as one `bp.scan` (compile time
    and code size independent of `horizon`) instead of unrolling them. Returns a `MetaResult`.
    """
    if horizon < 1 or unrolls < 1 or meta_steps < 1:
        raise ArgumentError(f"meta_train: horizon, unrolls and meta_steps must be >= 1, got "
                            f"{horizon}, {unrolls}, {meta_steps}")
    fn = Function(_segment(loss_fn, theta_shapes, data_shapes, hidden, horizon, out_scale, p,
                           dtype, loop), backend=backend)
    weights = dict(init) if init is not None else init_weights(hidden, seed, dtype)
    weights = {k: np.array(v, dtype) for k, v in weights.items()}
    rng = np.random.default_rng(seed)
    m = {k: np.zeros_like(v) for k, v in weights.items()}
    v2 = {k: np.zeros_like(v) for k, v in weights.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    losses: list[float] = []
    feed: dict[str, np.ndarray] = {}
    for step in range(meta_steps):
        if step % unrolls == 0:  # a fresh problem, fresh LSTM states
            theta0, data = sample(rng)
            feed = {f"theta_{k}": np.asarray(v, dtype) for k, v in theta0.items()}
            feed.update({k: np.asarray(v) for k, v in data.items()})
            for k, shape in theta_shapes.items():
                for s in SLOTS:
                    feed[f"{s}_{k}"] = np.zeros(tuple(shape) + (hidden,), dtype)
        out = fn(**feed, **{f"lstm_{k}": v for k, v in weights.items()})
        loss = float(out["meta_loss"])
        if not math.isfinite(loss):
            raise FloatingPointError(f"meta_train: meta-loss became {loss} at meta-step {step}; "
                                     "lower meta_lr or out_scale")
        losses.append(loss)
        grads = {k: np.asarray(out[f"d_{k}"], np.float64) for k in weights}
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        scale = min(1.0, clip / norm) if norm > 0 else 1.0
        t = step + 1
        for k in weights:  # Adam (optax.adam's formula)
            g = grads[k] * scale
            m[k] = b1 * m[k] + (1 - b1) * g
            v2[k] = b2 * v2[k] + (1 - b2) * g * g
            upd = (m[k] / (1 - b1**t)) / (np.sqrt(v2[k] / (1 - b2**t)) + eps)
            weights[k] = (weights[k] - meta_lr * upd).astype(dtype)
        for k in theta_shapes:  # truncated BPTT: carry theta and states to the next segment
            feed[f"theta_{k}"] = np.array(out[f"theta_{k}_next"])
            for s in SLOTS:
                feed[f"{s}_{k}"] = np.array(out[f"{s}_{k}_next"])
    return MetaResult(LearnedOptimizer(weights, out_scale, p), losses)


def optimizee_losses(loss_fn: LossFn, theta_shapes: Mapping[str, tuple],
                     data_shapes: Mapping[str, tuple], optimizer: Optimizer,
                     problems: list[tuple[dict, dict]], steps: int, backend: str = "numpy",
                     dtype: str = "float32") -> np.ndarray:
    """Loss curves (problems x steps + 1) of `optimizer` on `problems` [(theta0, data)], each
    run by one compiled train step (compiled once, `reset` per problem)."""
    theta = {k: _param(k, s, dtype) for k, s in theta_shapes.items()}
    data = {k: _input(k, s, d) for k, (s, d) in data_shapes.items()}
    loss = loss_fn(theta, data)
    step = None
    out = np.zeros((len(problems), steps + 1))
    for i, (theta0, batch) in enumerate(problems):
        init: dict[str, Any] = {k: np.asarray(v, dtype) for k, v in theta0.items()}
        if step is None:
            step = compile_train_step(loss, list(theta.values()), optimizer, backend, init=init)
        else:
            step.reset(init)
        for t in range(steps):
            out[i, t] = step(**batch)
        out[i, steps] = step.evaluate(**batch)
    return out
