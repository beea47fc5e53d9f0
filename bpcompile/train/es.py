"""Evolution strategies (OpenAI-ES, Salimans et al. 2017): the backprop-free baseline.

The loss is compiled forward-only (`bp.function`, no adjoint graph). Each step draws `pairs`
Gaussian directions ε_i and evaluates the loss at θ ± σε_i on the same batch (antithetic
sampling: the pair's difference cancels the even part of the loss, so for a quadratic
(f(θ+σε) − f(θ−σε)) / 2σ = ∇f·ε exactly). The estimate

    g = 1/n Σ_i (f(θ+σε_i) − f(θ−σε_i)) / (2σ) ε_i          (rank_shaping=False)

is unbiased for the gradient of the Gaussian-smoothed loss (the gradient itself on a quadratic),
with variance ≈ |∇f|² d / n for d parameters: what backpropagation buys is that factor d/n.
With `rank_shaping=True` (OpenAI's default) the 2n losses are replaced by their centred ranks
in [−0.5, 0.5] before differencing: invariant to the loss's scale and robust to outliers, but
a descent direction, not the gradient's magnitude (use Adam with it). The update is any
`bp.optim` optimizer applied to g, compiled once as its own small graph (the same transforms a
train step compiles, so SGD/Adam here are those of `compile_train_step`).

The population is evaluated by ONE compiled call (`population="scan"`, the default): a
`bp.scan` over the stacked directions whose body is the loss graph rebuilt twice with each
param W replaced by W ± σε (the data are loop constants), so the 2n forward passes run in
native code without n Python calls; `population="loop"` calls the compiled loss once per
member instead (the same numbers; tests/test_es.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from ..compiled import Function
from ..errors import ArgumentError
from ..ir.node import Node, rebuild
from ..ir.traverse import leaves, transform
from ..ops.elementwise import add, mul, sub
from ..ops.leaves import const
from ..ops.leaves import input as _input
from ..ops.scan import scan
from ..optim import Optimizer, adam
from ..optim.transforms import OptContext

if TYPE_CHECKING:
    from ..spec import Model


def centered_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of x scaled to [−0.5, 0.5] (ties broken by position), OpenAI-ES's fitness shaping."""
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[np.argsort(x.ravel(), kind="stable")] = np.arange(x.size)
    return (ranks / max(x.size - 1, 1) - 0.5).reshape(x.shape)


def _moved(moved: dict, n: Node, memo: dict) -> Node:
    """`transform`'s build: the moved param for a param, else n on its rebuilt inputs."""
    return moved[n] if n in moved else rebuild(n, [memo[i] for i in n.inputs])


def _noise_dtype(dt: np.dtype) -> type:
    return np.float64 if dt == np.float64 else np.float32  # (16-bit params: float32 noise)


class EvolutionStrategy:
    """`es = EvolutionStrategy(loss, sigma=0.05, pairs=32)`; `es.step(**batch) -> loss` applies
    one update from 2·pairs forward evaluations; `es.estimate(**batch)` is the gradient
    estimate alone; `es.params` the current params (NumPy arrays by name)."""

    def __init__(self, loss: Node | Model, params: Sequence[Node | str] | None = None,
                 sigma: float = 0.05, pairs: int = 32, optimizer: Optimizer | None = None,
                 rank_shaping: bool = True, seed: int = 0, backend: str = "numpy",
                 init: dict[str, ArrayLike] | None = None, population: str = "scan") -> None:
        from ..spec import Init, Model

        model = loss if isinstance(loss, Model) else None
        if model is not None:
            loss, params = model.loss, model.wrt if params is None else params
        if not isinstance(loss, Node) or loss.shape != ():
            raise ArgumentError("EvolutionStrategy: loss must be a scalar bp node or a spec "
                                f"Model, got {loss!r}")
        if not (isinstance(sigma, (int, float)) and sigma > 0):
            raise ArgumentError(f"EvolutionStrategy: sigma must be a positive float, got "
                                f"{sigma!r}")
        if not (isinstance(pairs, int) and pairs >= 1):
            raise ArgumentError(f"EvolutionStrategy: pairs must be an int >= 1, got {pairs!r}")
        all_params = leaves([loss], ops=("param",))
        by_name = {p.attr("name"): p for p in all_params}
        chosen = all_params if params is None else (
            [params] if isinstance(params, (Node, str)) else list(params))
        names = []
        for p in chosen:
            name = p if isinstance(p, str) else p.attr("name")
            if name not in by_name:
                raise ArgumentError(f"EvolutionStrategy: {name!r} is not a param of the loss; "
                                    f"params: {sorted(by_name)}")
            names.append(name)
        self.param_names, self.sigma, self.pairs = names, float(sigma), pairs
        self.rank_shaping, self.count = rank_shaping, 0
        self.rng = np.random.default_rng(seed)
        if init is None:
            init = model.init_params(seed) if model is not None else {
                k: (Init("glorot") if p.ndim >= 2 else Init("zeros")).sample(
                    np.random.default_rng([int(seed), i]), p.shape, p.dtype)
                for i, (k, p) in enumerate(by_name.items())}
        missing = [k for k in by_name if k not in init]
        if missing:
            raise ArgumentError(f"EvolutionStrategy: no initial value for params {missing}")
        self.values = {k: np.array(init[k], dtype=by_name[k].dtype) for k in by_name}
        if population not in ("scan", "loop"):
            raise ArgumentError(f"EvolutionStrategy: population must be 'scan' or 'loop', got "
                                f"{population!r}")
        self.population = population
        self.loss_fn = Function({"loss": loss}, backend=backend)  # forward only
        self.population_fn = (self._compile_population(loss, by_name, backend)
                              if population == "scan" else None)
        self.optimizer = optimizer if optimizer is not None else adam(1e-2)
        self.opt_state = self.optimizer.init({k: self.values[k] for k in names})
        self._update = self._compile_update(by_name, backend)

    def _compile_population(self, loss: Node, by_name: dict, backend: str) -> Function:
        """f(θ ± σε_i) for every pair i in one call: a scan over the stacked ε_i (inputs
        `eps_<param>`, (pairs, *shape)) whose body rebuilds the loss at the moved params."""
        eps = [_input(f"eps_{k}", (self.pairs, *by_name[k].shape), by_name[k].dtype)
               for k in self.param_names]
        params = [by_name[k] for k in self.param_names]

        def member(carry, e):
            out = []
            for sign in (1.0, -1.0):
                moved = {p: (add if sign > 0 else sub)(p, mul(ei, self.sigma))
                         for p, ei in zip(params, e)}
                out.append(transform([loss], build=partial(_moved, moved))[0])
            return carry, tuple(out)

        _, (f_plus, f_minus) = scan(member, const(0.0, loss.dtype), tuple(eps),
                                    name="population")
        return Function({"f_plus": f_plus, "f_minus": f_minus}, backend=backend)

    def _compile_update(self, by_name: dict, backend: str) -> Function:
        """The optimizer's update as a graph of (params, estimate, state) -> new ones."""
        dt = by_name[self.param_names[0]].dtype
        ctx = OptContext(count=_input("step", (), dt), lr_scale=_input("lr_scale", (), dt))
        ps = {k: _input(k, by_name[k].shape, by_name[k].dtype) for k in self.param_names}
        gs = {k: _input(f"grad_{k}", p.shape, p.dtype) for k, p in ps.items()}
        state = {k: _input(k, v.shape, v.dtype.name) for k, v in self.opt_state.items()}
        deltas, new_state = self.optimizer.updates(gs, state, ps, ctx)
        outputs = {f"{k}_next": add(ps[k], deltas[k]) for k in self.param_names}
        outputs.update({f"{k}_next": v for k, v in new_state.items()})
        self._count_dtype = dt
        return Function(outputs, backend=backend)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The current values of the trained params by name."""
        return {k: self.values[k] for k in self.param_names}

    def evaluate(self, **batch: ArrayLike) -> float:
        """The loss at the current params."""
        return self._loss(self.values, batch)

    def _loss(self, values: dict, batch: dict) -> float:
        return float(self.loss_fn(**batch, **values)["loss"])

    def estimate(self, **batch: ArrayLike) -> dict[str, np.ndarray]:
        """The antithetic ES estimate of the loss gradient at the current params on `batch`."""
        return self._estimate(batch)[0]

    def _estimate(self, batch: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
        n, sigma = self.pairs, self.sigma
        eps = {k: self.rng.standard_normal((n, *self.values[k].shape), dtype=_noise_dtype(
               self.values[k].dtype)) for k in self.param_names}  # drawn in the param's dtype
        f = np.empty((n, 2))
        if self.population_fn is not None:  # one call: the scan over the population
            out = self.population_fn(**batch, **self.values, **{
                f"eps_{k}": e.astype(self.values[k].dtype, copy=False) for k, e in eps.items()})
            f[:, 0], f[:, 1] = out["f_plus"], out["f_minus"]
        else:
            for i in range(n):
                for j, sign in enumerate((1.0, -1.0)):
                    trial = dict(self.values)
                    for k in self.param_names:
                        v = self.values[k]
                        trial[k] = (v + sign * sigma * eps[k][i]).astype(v.dtype)
                    f[i, j] = self._loss(trial, batch)
        w = centered_ranks(f) if self.rank_shaping else f
        diff = (w[:, 0] - w[:, 1]) / (2.0 * sigma * n)
        est = {k: np.tensordot(diff, e, axes=1).astype(self.values[k].dtype)
               for k, e in eps.items()}
        return est, f

    def step(self, **batch: ArrayLike) -> float:
        """One update from 2·pairs forward evaluations on `batch`; returns the mean loss of
        the population (each member's loss at θ ± σε, an estimate of the smoothed loss)."""
        est, f = self._estimate(batch)
        dt = np.dtype(self._count_dtype)
        out = self._update(step=np.asarray(self.count, dt), lr_scale=np.asarray(1.0, dt),
                           **self.params, **self.opt_state,
                           **{f"grad_{k}": g for k, g in est.items()})
        for k in self.param_names:
            self.values[k] = np.asarray(out[f"{k}_next"])
        self.opt_state = {k: np.asarray(out[f"{k}_next"]) for k in self.opt_state}
        self.count += 1
        return float(f.mean())

    def __repr__(self) -> str:
        return (f"<EvolutionStrategy sigma={self.sigma:g} pairs={self.pairs} "
                f"{self.optimizer!r}: params {', '.join(self.param_names)}; {self.count} steps>")
