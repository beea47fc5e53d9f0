"""K-FAC (Martens & Grosse, 2015): natural-gradient steps with a Kronecker-factored Fisher,
for dense layers and (KFC, Grosse & Martens 2016) conv2d layers as im2col matmuls.

For each dense layer s = a @ W (+ b) the Fisher block of vec([W; b]) is approximated by
A ⊗ G with A = E[ā āᵀ] (ā: the layer input with a ones column when the layer has a bias) and
G = E[g gᵀ] (g: the per-example derivative of the per-example loss w.r.t. the pre-activation
s, i.e. the batch-mean loss's cotangent of s times the batch size, as in the paper). Both
factors are built in the train step's own graph from the forward values and the reverse
sweep's cotangents, so they cost two matmuls per layer in the same compiled call.

`fisher="sampled"` (the default, the true Fisher): g comes from a SECOND backward sweep of the
loss at targets sampled from the model's predictive distribution (`likelihood="categorical"`:
y ~ softmax(output), drawn in the graph by Gumbel-max from host-drawn Gumbel noise;
`"bernoulli"`: independent y_k ~ Bernoulli(sigmoid(output_k)); `"gaussian"`: y ~ N(output,
sigma² I)); `fisher="empirical"` reuses the true labels' cotangents
(no second sweep). The update of a layer is G⁻¹-preconditioned on the output side and
A⁻¹-preconditioned on the input side, [dW; db] ← (A + π√λ I)⁻¹ [dW; db] (G + √λ/π I)⁻¹
(factored Tikhonov damping with the paper's π = sqrt((tr A / dim A) / (tr G / dim G))), then
optional momentum and the learning rate. A conv2d layer's A sums over its T output positions
and G averages over them (A = Σ ā āᵀ / N, G = (N/T) gᵀg over the patch rows). Params that are
not the weight or bias of such a layer get the plain gradient.

Where the inverses are computed: on the host with NumPy (`refresh`), every `inverse_every`
steps, from the running averages the compiled step returns; the compiled step reads them as
inputs. The IR has no inverse/solve/eigh primitive, and the paper refreshes inverses rarely
anyway, so a host refresh costs O(d³) once per k steps and keeps every backend's step the
same plain graph (matmuls). Consequences: step t preconditions with factors from steps < t,
and the first step only gathers curvature (its update is zero, as the inverses start at 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ArgumentError
from ..ir.node import Node
from ..ir.traverse import consumers, toposort
from ..ops.elementwise import (
    add,
    as_node,
    cast,
    div,
    lt,
    minimum,
    mul,
    neg,
    stop_gradient,
    sub,
    unary,
)
from ..ops.index import one_hot
from ..ops.leaves import const
from ..ops.leaves import input as _input
from ..ops.linalg import matmul2
from ..ops.movement import broadcast_to, concatenate, reshape, slice_, swap_last
from ..ops.reduce import argmax, max_, sum_
from ..ops.sweep import backward
from .schedules import LearningRate
from .transforms import Nodes, OptContext, Optimizer, ScaleByLearningRate, Trace, Transform

FISHERS = ("sampled", "empirical")
LIKELIHOODS = ("categorical", "gaussian", "bernoulli")


@dataclass(frozen=True)
class DenseLayer:
    """One K-FAC block: s = a @ W (+ b); `name` is the weight param's name. A conv2d layer
    (KFC, Grosse & Martens 2016) is the same block on its im2col patches: `a` holds
    N·T rows (T output positions per example) and `W` is the (O, C, kh, kw) kernel."""

    name: str
    W: Node
    b: Node | None
    a: Node  # (batch x positions, fan_in) layer input (conv: patches)
    s: Node  # (batch x positions, fan_out) pre-activation
    positions: int = 1  # T: output positions per example (1 for a dense layer)

    @property
    def dims(self) -> tuple[int, int]:
        """(dim A, dim G): fan_in (+1 with a bias) and fan_out."""
        return self.a.shape[1] + (self.b is not None), self.s.shape[1]

    @property
    def conv(self) -> bool:
        return self.W.ndim == 4

    def as_matrix(self, g: Node) -> Node:
        """A weight-shaped gradient as the (fan_in, fan_out) matrix the matmul multiplies."""
        if not self.conv:
            return g
        return swap_last(reshape(g, (self.W.shape[0], self.a.shape[1])))

    def from_matrix(self, m: Node) -> Node:
        return m if not self.conv else reshape(swap_last(m), self.W.shape)


def _only(users: dict, n: Node, op: str) -> Node | None:
    us = users.get(n, [])
    return us[0] if len(us) == 1 and us[0].op == op else None


def _conv_layer(W: Node, users: dict, want: set) -> DenseLayer | None:
    """conv2d (groups=1) as layers/conv.py builds it: matmul(patches, reshape(W)ᵀ), then
    reshape to (N, Ho, Wo, O), transpose, + reshape(b, (1, O, 1, 1))."""
    o = W.shape[0]
    r = _only(users, W, "reshape")
    t = _only(users, r, "transpose") if r is not None and r.shape[0] == o else None
    m = _only(users, t, "matmul") if t is not None else None
    if m is None or m.inputs[1] is not t or m.inputs[0].ndim != 2:
        return None
    out = _only(users, m, "reshape")
    if out is None or out.ndim != 4:
        return None
    n, positions = out.shape[0], out.shape[1] * out.shape[2]
    tr = _only(users, out, "transpose")
    b = None
    if tr is not None:
        for c in users.get(tr, []):
            other = c.inputs[1] if c.inputs[0] is tr else c.inputs[0]
            if c.op == "add" and other.op == "reshape" and other.shape == (1, o, 1, 1):
                cand = other.inputs[0]
                if cand in want and cand.shape == (o,) and users.get(cand) == [other]:
                    b = cand
    assert m.inputs[0].shape[0] == n * positions
    return DenseLayer(W.attr("name"), W, b, m.inputs[0], m, positions)


def dense_layers(loss: Node, wrt: Sequence[Node]) -> list[DenseLayer]:
    """The dense and conv2d layers of `loss`'s graph whose weight is in `wrt`: matmul(a, W)
    with a 2-d input a (batch, fan_in) and W a param, plus `+ b` for a (fan_out,) param b in
    `wrt`; and conv2d (groups=1) kernels with their bias."""
    want = {p for p in wrt if p.op == "param"}
    order = toposort([loss])
    users = consumers(order)
    uses: dict[Node, list[Node]] = {}
    for n in order:
        for i in n.inputs:
            if i in want:
                uses.setdefault(i, []).append(n)
    layers = []
    for W in [p for p in wrt if p in uses]:
        if W.ndim == 4:
            conv = _conv_layer(W, users, want)
            if conv is not None:
                layers.append(conv)
            continue
        mm = [n for n in uses[W] if n.op == "matmul" and n.inputs[1] is W]
        if not mm:
            continue
        name = W.attr("name")
        # other elementwise uses (an L2 penalty) are fine: their gradient is preconditioned too
        shared = [n for n in uses[W] if n.op in ("matmul", "transpose", "reshape", "take")]
        if len(shared) != 1 or W.ndim != 2:
            ops = sorted({n.op for n in shared})
            raise ArgumentError(
                f"kfac: param {name!r} {W.dtype}{list(W.shape)} is used by {len(shared)} "
                f"matmul/transpose/reshape/take node(s) ({', '.join(ops)}); K-FAC here "
                "handles a 2-d weight multiplied once, as x @ W (shared or transposed "
                "weights have no single Kronecker block)")
        m = mm[0]
        a = m.inputs[0]
        if a.ndim != 2:
            raise ArgumentError(
                f"kfac: dense weight {name!r} multiplies an input of shape {list(a.shape)}; "
                "K-FAC here needs a (batch, features) layer input (reshape sequences first)")
        s, b = m, None
        for c in users.get(m, []):
            if c.op != "add":
                continue
            other = c.inputs[1] if c.inputs[0] is m else c.inputs[0]
            if other in want and other.shape == (W.shape[1],) and uses.get(other) == [c]:
                s, b = c, other
        layers.append(DenseLayer(name, W, b, a, s))
    if not layers:
        raise ArgumentError("kfac: the loss has no dense or conv2d layer (x @ W with W a "
                            "trained 2-d param) to precondition; use sgd/adam for this model")
    return layers


def sampled_loss(output: Node, likelihood: str, noise: Node, sigma: float = 1.0) -> Node:
    """The batch-mean negative log-likelihood at targets drawn from the model's predictive
    distribution: categorical y = argmax(output + Gumbel noise) (Gumbel-max sampling),
    bernoulli y = [uniform noise < sigmoid(output)] per unit (binary cross-entropy with
    logits), or gaussian y = output + sigma * noise; the targets are constants."""
    n = output.shape[0]
    if likelihood == "categorical":
        y = one_hot(argmax(add(stop_gradient(output), noise), -1), output.shape[-1],
                    output.dtype)
        m = stop_gradient(max_(output, -1, keepdims=True))
        lse = add(unary("log", sum_(unary("exp", sub(output, m)), -1, keepdims=True)), m)
        nll = neg(sum_(mul(sub(output, lse), y)))
    elif likelihood == "bernoulli":  # independent units: y = [u < sigmoid(output)]
        y = cast(lt(noise, unary("sigmoid", stop_gradient(output))), output.dtype)
        nll = sum_(sub(unary("softplus", output), mul(output, y)))
    else:
        y = add(stop_gradient(output), mul(noise, as_node(sigma, output)))
        d = sub(y, output)
        nll = mul(sum_(mul(d, d)), as_node(0.5 / sigma**2, output))
    return div(nll, as_node(float(n), nll))


def batch_factors(loss: Node, layers: Sequence[DenseLayer],
                  fisher_loss: Node | None = None) -> dict[str, tuple[Node, Node]]:
    """This batch's (A, G) per layer as graph nodes: A = āᵀā / N, G = N gᵀg with g the
    cotangents of the pre-activations from `fisher_loss` (sampled) or `loss` (empirical);
    both are batch means, so N x cotangent is the per-example derivative."""
    seed = fisher_loss if fisher_loss is not None else loss
    cts = backward({seed: const(1.0, seed.dtype)}, [ly.s for ly in layers])
    out = {}
    for ly, g in zip(layers, cts):
        rows = ly.a.shape[0]
        n = rows // ly.positions  # examples; KFC: A sums over positions, G averages
        a = ly.a
        if ly.b is not None:
            a = concatenate([a, broadcast_to(const(1.0, a.dtype), (rows, 1))], 1)
        A = mul(matmul2(swap_last(a), a), as_node(1.0 / n, a))
        if g is None:  # the pre-activation does not reach the loss: no curvature
            G = const(np.zeros((ly.dims[1],) * 2, np.dtype(ly.s.dtype)))
        else:
            G = mul(matmul2(swap_last(g), g), as_node(n / ly.positions, g))
        out[ly.name] = (A, G)
    return out


class KFAC(Optimizer):
    """The `kfac` optimizer (see the module docstring); `bind` it to a loss graph first
    (`compile_train_step` does). State: running factors `kfac_A_<W>`, `kfac_G_<W>` (and the
    momentum trace); host-fed inputs: the inverses `kfac_Ainv_<W>`, `kfac_Ginv_<W>` and, for
    the sampled Fisher, `kfac_noise`."""

    def __init__(self, learning_rate: LearningRate = 1e-2, damping: float = 1e-3,
                 decay: float = 0.95, inverse_every: int = 10, momentum: float | None = None,
                 fisher: str = "sampled", output: Node | None = None,
                 likelihood: str = "categorical", sigma: float = 1.0, seed: int = 0,
                 pi_damping: bool = True) -> None:
        if fisher not in FISHERS:
            raise ArgumentError(f"kfac: fisher must be one of {FISHERS}, got {fisher!r}")
        if likelihood not in LIKELIHOODS:
            raise ArgumentError(f"kfac: likelihood must be one of {LIKELIHOODS}, "
                                f"got {likelihood!r}")
        if fisher == "sampled" and output is None:
            raise ArgumentError(
                "kfac: fisher='sampled' draws targets from the model's predictive "
                "distribution, so it needs output=<the logits / prediction node> (and "
                "likelihood='categorical', 'bernoulli' or 'gaussian'); or pass "
                "fisher='empirical'")
        if output is not None and (output.ndim != 2 or not output.shape[-1]):
            raise ArgumentError(f"kfac: output must be (batch, classes/features), got shape "
                                f"{list(output.shape)}")
        if not (damping > 0 and 0 <= decay < 1 and int(inverse_every) >= 1 and sigma > 0):
            raise ArgumentError(
                f"kfac: need damping > 0, 0 <= decay < 1, inverse_every >= 1, sigma > 0; got "
                f"damping={damping}, decay={decay}, inverse_every={inverse_every}, "
                f"sigma={sigma}")
        ts: list[Transform] = [Trace(momentum)] if momentum else []
        ts.append(ScaleByLearningRate(learning_rate))
        super().__init__(ts, "kfac", {"learning_rate": learning_rate, "damping": damping,
                                      "decay": decay, "inverse_every": inverse_every,
                                      "fisher": fisher})
        self.damping, self.decay, self.inverse_every = float(damping), float(decay), \
            int(inverse_every)
        self.fisher, self.output, self.likelihood = fisher, output, likelihood
        self.sigma, self.seed, self.pi_damping = float(sigma), int(seed), bool(pi_damping)
        self.layers: list[DenseLayer] | None = None
        self.loss: Node | None = None
        self._rng = np.random.default_rng(self.seed)

    # ---- binding to a graph --------------------------------------------------------------
    def bind(self, loss: Node, wrt: Sequence[Node]) -> KFAC:
        """A copy of this optimizer for `loss` (the stabilised loss graph the train step
        differentiates): finds its dense layers."""
        new = KFAC.__new__(KFAC)
        new.__dict__.update(self.__dict__)
        new.loss, new.layers = loss, dense_layers(loss, wrt)
        half = [f"{ly.name} ({ly.W.dtype})" for ly in new.layers
                if ly.W.dtype not in ("float32", "float64")]
        if half:  # factors and inverses need float32 or wider
            raise ArgumentError(f"kfac: 16-bit layer weights {half} are not supported; "
                                "declare the params float32")
        new._rng = np.random.default_rng(self.seed)
        if self.output is not None and self.output not in set(toposort([loss])):
            raise ArgumentError("kfac: output= is not a node of the loss graph (pass the "
                                "logits/prediction the loss is computed from)")
        return new

    def _need_bound(self) -> list[DenseLayer]:
        if self.layers is None:
            raise ArgumentError("kfac: the optimizer is not bound to a loss; use it through "
                                "compile_train_step / fit (or call .bind(loss, params))")
        return self.layers

    def init(self, params: dict) -> dict:
        out = super().init(params)
        for ly in self._need_bound():
            da, dg = ly.dims
            dt = np.dtype(ly.W.dtype)
            out[f"kfac_A_{ly.name}"] = np.zeros((da, da), dt)
            out[f"kfac_G_{ly.name}"] = np.zeros((dg, dg), dt)
        return out

    def host_inputs(self) -> dict[str, np.ndarray]:
        """Arrays the host writes before steps (inverses, sampling noise), by input name;
        the first step's inverses are 0 (it only gathers curvature)."""
        out = {}
        for ly in self._need_bound():
            da, dg = ly.dims
            dt = np.dtype(ly.W.dtype)
            out[f"kfac_Ainv_{ly.name}"] = np.zeros((da, da), dt)
            out[f"kfac_Ginv_{ly.name}"] = np.zeros((dg, dg), dt)
        if self.fisher == "sampled":
            o = self.output
            assert o is not None
            out["kfac_noise"] = np.zeros(o.shape, np.dtype(o.dtype))
        return out

    # ---- the graph -------------------------------------------------------------------------
    def updates(self, grads: Nodes, state: Nodes, params: Nodes,
                ctx: OptContext) -> tuple[Nodes, Nodes]:
        layers = self._need_bound()
        assert self.loss is not None
        fisher_loss = None
        if self.fisher == "sampled":
            o = self.output
            assert o is not None
            noise = _input("kfac_noise", o.shape, o.dtype)
            fisher_loss = sampled_loss(o, self.likelihood, noise, self.sigma)
        factors = batch_factors(self.loss, layers, fisher_loss)
        pre = dict(grads)
        new_state: Nodes = {}
        for ly in layers:
            A, G = factors[ly.name]
            # running mean early on, exponential average later: eps = min(1 - 1/(t+1), decay)
            t1 = add(ctx.count, as_node(1.0, ctx.count))
            eps = minimum(sub(as_node(1.0, t1), div(as_node(1.0, t1), t1)),
                          as_node(self.decay, t1))
            for key, f in ((f"kfac_A_{ly.name}", A), (f"kfac_G_{ly.name}", G)):
                e = eps if eps.dtype == f.dtype else cast(eps, f.dtype)
                new_state[key] = add(mul(e, state[key]), mul(sub(as_node(1.0, e), e), f))
            da, dg = ly.dims
            Ainv = _input(f"kfac_Ainv_{ly.name}", (da, da), ly.W.dtype)
            Ginv = _input(f"kfac_Ginv_{ly.name}", (dg, dg), ly.W.dtype)
            wname = ly.name
            g = ly.as_matrix(grads[wname])
            if ly.b is not None:
                bname = ly.b.attr("name")
                g = concatenate([g, reshape(grads[bname], (1, dg))], 0)
            p = matmul2(matmul2(Ainv, g), Ginv)
            if ly.b is not None:
                pre[wname] = ly.from_matrix(slice_(p, (0, 0), (da - 1, dg), (1, 1)))
                pre[bname] = reshape(slice_(p, (da - 1, 0), (da, dg), (1, 1)), (dg,))
            else:
                pre[wname] = ly.from_matrix(p)
        deltas, st = super().updates(pre, state, params, ctx)
        new_state.update(st)
        return deltas, new_state

    # ---- the host side ---------------------------------------------------------------------
    def before_step(self, count: int, host: dict[str, np.ndarray]) -> None:
        """Draw this step's sampling noise (Gumbel or standard normal) into `host`."""
        if self.fisher != "sampled":
            return
        buf = host["kfac_noise"]
        if self.likelihood == "categorical":
            u = self._rng.random(buf.shape)
            u = np.clip(u, np.finfo(np.float64).tiny, 1.0)
            buf[...] = -np.log(-np.log(u))
        elif self.likelihood == "bernoulli":
            buf[...] = self._rng.random(buf.shape)
        else:
            buf[...] = self._rng.standard_normal(buf.shape)

    def after_step(self, count: int, state: dict[str, Any], host: dict[str, np.ndarray]) -> None:
        """After step `count` (0-based): refresh the inverses every `inverse_every` steps."""
        if count % self.inverse_every == 0:
            self.refresh(state, host)

    def refresh(self, state: dict[str, Any], host: dict[str, np.ndarray]) -> None:
        """Damped inverses of the running factors in `state`, written into `host`."""
        for ly in self._need_bound():
            A = np.asarray(state[f"kfac_A_{ly.name}"], np.float64)
            G = np.asarray(state[f"kfac_G_{ly.name}"], np.float64)
            Ainv, Ginv = damped_inverses(A, G, self.damping, self.pi_damping)
            host[f"kfac_Ainv_{ly.name}"][...] = Ainv
            host[f"kfac_Ginv_{ly.name}"][...] = Ginv

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"bp.optim.kfac({hp})"


def damped_inverses(A: np.ndarray, G: np.ndarray, damping: float,
                    pi_damping: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """((A + π√λ I)⁻¹, (G + √λ/π I)⁻¹), π = sqrt((tr A / dim A) / (tr G / dim G)) (1 without
    `pi_damping` or when a trace is 0)."""
    pi = 1.0
    ta, tg = np.trace(A) / len(A), np.trace(G) / len(G)
    if pi_damping and ta > 0 and tg > 0:
        pi = math.sqrt(ta / tg)
    r = math.sqrt(damping)
    return _spd_inverse(A, pi * r), _spd_inverse(G, r / pi)


def _spd_inverse(M: np.ndarray, shift: float) -> np.ndarray:
    # LU inverse of the shifted PSD factor: eigh (LAPACK syevd) took ~50x longer here
    M = (M + M.T) / 2 + shift * np.eye(len(M))
    inv = np.linalg.inv(M)
    return (inv + inv.T) / 2


def kfac(learning_rate: LearningRate = 1e-2, damping: float = 1e-3, decay: float = 0.95,
         inverse_every: int = 10, momentum: float | None = None, fisher: str = "sampled",
         output: Node | None = None, likelihood: str = "categorical", sigma: float = 1.0,
         seed: int = 0) -> KFAC:
    """K-FAC natural-gradient descent for dense layers (Martens & Grosse, 2015).

    `output`: the logits (likelihood "categorical", softmax cross-entropy; "bernoulli", binary
    cross-entropy with logits) or prediction ("gaussian", N(output,
    sigma² I), i.e. the loss 0.5‖y - output‖²/sigma² per example) the loss is computed from;
    needed for the true Fisher (`fisher="sampled"`, targets drawn from the model, a second
    backward sweep); `fisher="empirical"` uses the true labels' gradients instead. `damping`
    λ (factored, π-corrected), `decay` of the factors' running averages, inverses refreshed on
    the host every `inverse_every` steps, optional `momentum`. The loss must be a batch mean.
    """
    return KFAC(learning_rate, damping, decay, inverse_every, momentum, fisher, output,
                likelihood, sigma, seed)
