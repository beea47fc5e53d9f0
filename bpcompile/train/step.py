"""A compiled training step: forward, backward and optimizer update as ONE compiled function.

`compile_train_step(loss, params, optimizer, backend)` builds a multi-output graph whose
outputs are the loss, the new value of every param and every optimizer state slot (and, with
`diagnostics=True`, per-param gradient norms and update/weight ratios), compiles it with
`bp.function`, and wraps it in a `TrainStep` that holds the current params and state as NumPy
arrays: `loss = step(x=..., y=...)` runs one update. The update count and a learning-rate
multiplier are scalar inputs (`step`, `lr_scale`), so schedules are evaluated inside the
compiled code and one compilation serves every step.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from ..autodiff.feedback import check_mode, feedback_matrices
from ..backends.protocol import InPlace, JaxProgram, NativeCaller
from ..backends.signature import check_host_range
from ..budget import parse_budget
from ..compiled import Function
from ..compiled import grad as _grad
from ..errors import ArgumentError, BPError
from ..ir.dtypes import is_half
from ..ir.node import Node
from ..ir.traverse import leaves, toposort
from ..ops.elementwise import add, as_node, cast, div, mul, unary
from ..ops.leaves import input as _input
from ..ops.reduce import sum_
from ..optim import OPTIMIZERS, Optimizer, adam
from ..optim.transforms import OptContext
from ..rewrite.compress import check_mode as compress_mode
from ..rewrite.compress import compress_saved
from ..rewrite.pipeline import run_forward
from ..rewrite.precision import Policy, apply_policy, recompute_casts
from .accumulate import accumulated
from .loss_scale import loss_scale_of
from .step_budget import fit_step_budget

if TYPE_CHECKING:  # annotations only (spec is imported where it is used)
    from ..spec import Model

VANISHING = 1e-7  # gradient norm below this: warn "vanishing"
EXPLODING = 1e3  # gradient norm above this: warn "exploding"


class NonFiniteError(BPError, FloatingPointError):
    """A training step produced NaN or inf; the message names the first graph node that did."""


class TrainStep:
    """Holds params and optimizer state; `step(**batch) -> loss` applies one compiled update.

    Attributes: `params` and `opt_state` (dicts of NumPy arrays, replaced every step),
    `count` (updates applied), `lr_scale` (host multiplier), `last` (the last step's
    diagnostics when compiled with `diagnostics=True`: `gnorm_<p>` gradient norms,
    `uratio_<p>` = |update| / |param|, and `warnings`), `fn` (the compiled `bp.Function`:
    `step.fn.source()` shows the whole fused update).

    Thread-safe: steps (and reset/set_params/load_state_dict/evaluate) from several threads
    run one at a time under a lock, so N threads x k steps apply N*k updates in some order.
    """

    last: dict[str, Any]  # the last step's diagnostics
    _eval: Function | None  # the loss-only function, compiled on first `evaluate`

    def __init__(self, loss: Node | Model, params: Sequence[Node | str] | None = None,
                 optimizer: Optimizer | str | None = None, backend: str = "numpy",
                 init: dict[str, ArrayLike] | None = None, seed: int = 0,
                 diagnostics: bool = False, check_finite: bool = True,
                 native: bool | None = None, accumulate: int = 1,
                 accumulate_reduce: str = "mean", memory_budget: int | str | None = None,
                 **options: Any) -> None:
        from ..spec import Init, Model

        model = loss if isinstance(loss, Model) else None
        if model is not None and model.memory:  # the spec's [memory] table: defaults
            if memory_budget is None:
                memory_budget = model.memory.get("memory_budget")
            if options.get("compress_activations") is None:
                options["compress_activations"] = model.memory.get("compress_activations")
        if model is not None:
            loss = model.loss
            params = model.wrt if params is None else params
            if model.feedback and "feedback" not in options:  # the spec's [feedback] table
                options.update(feedback=model.feedback["mode"],
                               feedback_seed=model.feedback.get("seed", 0))
            for k in ("precision", "loss_scale"):  # the spec's, unless given here
                if options.get(k) is None and getattr(model, k) is not None:
                    options[k] = getattr(model, k)
        if not isinstance(loss, Node):
            raise TypeError(f"compile_train_step: loss must be a bp node or a spec Model, "
                            f"got {type(loss).__name__}")
        all_params = leaves([loss], ops=("param",))
        by_name = {p.attr("name"): p for p in all_params}
        if params is None:
            params = all_params
        wrt = []
        for p in ([params] if isinstance(params, (Node, str)) else list(params)):
            if isinstance(p, str):
                if p not in by_name:
                    raise ArgumentError(f"compile_train_step: {p!r} is not a param of the loss; "
                                        f"params: {sorted(by_name)}")
                p = by_name[p]
            wrt.append(p)
        # mixed precision (rewrite/precision.py): the policy pass before autodiff, as bp.compile
        self.precision = Policy.of(options.pop("precision", None))
        # loss scaling (loss_scale.py): the scale is a float32 input kept on the host
        self.loss_scaler = loss_scale_of(options.pop("loss_scale", None))
        # feedback alignment (autodiff/feedback.py): fixed random B inputs kept on the host
        self.feedback = check_mode(options.pop("feedback", None), "compile_train_step: feedback")
        self.feedback_seed = int(options.pop("feedback_seed", 0))
        if self.feedback is not None and accumulate != 1:
            raise ArgumentError("compile_train_step: feedback with accumulate != 1 is not "
                                "supported (the accumulation scan differentiates exactly)")
        if self.precision.compute != "float32":
            loss = apply_policy(run_forward(loss), self.precision)
        self.compress = compress_mode(options.pop("compress_activations", None))
        self.compress_report: dict | None = None
        self.remat_report: dict | None = None
        budget = None if memory_budget is None else parse_budget(memory_budget)
        self.loss_node, self.wrt = loss, wrt
        self.param_names = [p.attr("name") for p in wrt]
        self.frozen_names = [n for n in by_name if n not in self.param_names]
        self.input_nodes = leaves([loss], ops=("input",))
        # gradient accumulation (accumulate.py): the loss is declared per micro-batch, the
        # step takes `accumulate` of them stacked along each batched input's leading axis
        self.micro_nodes = self.input_nodes
        self.accumulate, self.accumulate_reduce = accumulate, accumulate_reduce
        self._acc: tuple[dict[str, Node], Node, list[Node]] | None = None
        if accumulate != 1:
            self._acc = self._accumulate(loss)
            self.input_nodes = [self._acc[0].get(x.attr("name"), x) for x in self.input_nodes]
        self.input_names = [x.attr("name") for x in self.input_nodes]
        if isinstance(optimizer, str):  # by name, at its default learning rate
            if optimizer not in OPTIMIZERS:
                raise ArgumentError(f"compile_train_step: unknown optimizer {optimizer!r}; "
                                    f"choose from {sorted(OPTIMIZERS)}")
            optimizer = OPTIMIZERS[optimizer]()
        self.optimizer = optimizer if optimizer is not None else adam(1e-3)
        # optimizers that read the graph (K-FAC: dense layers, activations, cotangents)
        self._host_opt = callable(getattr(self.optimizer, "bind", None))
        if self._host_opt:
            if accumulate != 1 or self.loss_scaler is not None or \
                    self.precision.compute != "float32":
                raise ArgumentError(f"compile_train_step: optimizer {self.optimizer.name!r} "
                                    "does not support accumulate != 1, loss_scale or "
                                    "precision=")
            self.optimizer = self.optimizer.bind(run_forward(loss), wrt)  # type: ignore
            if budget is not None:
                raise ArgumentError(f"compile_train_step: optimizer {self.optimizer.name!r} "
                                    "does not support memory_budget= (it reads every layer's "
                                    "activations and cotangents for its factors)")
        self.backend, self.diagnostics, self.check_finite = backend, diagnostics, check_finite

        # -- initial values ------------------------------------------------------------------
        if init is None:
            if model is not None:
                init = model.init_params(seed)
            else:
                init = {}
                for i, p in enumerate(all_params):
                    rng = np.random.default_rng([int(seed), i])
                    kind = Init("glorot") if p.ndim >= 2 else Init("zeros")
                    init[p.attr("name")] = kind.sample(rng, p.shape, p.dtype)
        params0: dict[str, np.ndarray] = {}
        self.frozen: dict[str, np.ndarray] = {}
        for name, node in by_name.items():
            if name not in init:
                raise ArgumentError(f"compile_train_step: no initial value for param {name!r} "
                                    f"(expected {node.dtype}{list(node.shape)})")
            arr = np.array(init[name], dtype=node.dtype)
            if arr.shape != node.shape:
                raise ArgumentError(f"compile_train_step: initial {name!r} has shape "
                                    f"{arr.shape}, expected {node.shape}")
            (params0 if name in self.param_names else self.frozen)[name] = arr
        state0 = self.optimizer.init(params0)
        self.state_names = list(state0)
        self.count, self.lr_scale, self.last = 0, 1.0, {}
        self.warn = True  # emit diagnostics warnings with `warnings.warn` (fit collects them)
        scalars = ("step", "lr_scale", "loss_scale")
        clash = [n for n in self.input_names if n in state0 or n in scalars]
        if clash:
            raise ArgumentError(f"compile_train_step: input names {clash} clash with optimizer "
                                "state / step inputs; rename them")

        if budget is not None:  # recompute forward segments until the step's own plan fits
            def graph_of(marked: Node) -> dict:
                self.loss_node = marked
                if self._acc is not None:
                    self._acc = self._accumulate(marked)
                return self._graph(state0)

            marked, self.remat_report = fit_step_budget(
                loss, budget, graph_of, backend, options, wrt, state0)
            graph_of(marked)

        # -- the fused graph -----------------------------------------------------------------
        graph = self._graph(state0)
        self.feedback_values = (feedback_matrices(list(graph.values()), self.feedback_seed)
                                if self.feedback else {})
        if options.get("data_parallel") and options.get("batch_inputs") is None:
            # shard the model's data inputs only: optimizer state and `step` are replicated
            options["batch_inputs"] = {x.attr("name"): 0 for x in self.input_nodes if x.ndim}
        self.fn = Function(graph, backend=backend, **options)
        # JAX data parallel: batches are placed with the program's shardings (jax.distributed)
        impl = self.fn.impl
        self._dp = impl.dp if isinstance(impl, JaxProgram) else None
        self._arg_names = list(self.fn.signature.names)
        self._outs = self.fn.names
        self._eval = None
        dt = np.dtype(_count_dtype(self.wrt))
        self._scalars = {"step": np.zeros((), dt), "lr_scale": np.ones((), dt)}
        if self.loss_scaler is not None:
            self._scalars["loss_scale"] = np.ones((), np.float32)
        self._scalars.update(self.feedback_values)  # fixed inputs, fed like step and lr_scale
        if self._host_opt:  # host-written inputs (K-FAC's inverses and sampling noise)
            self._scalars.update(self.optimizer.host_inputs())  # type: ignore[attr-defined]
        self._step_arr, self._scale_arr = self._scalars["step"], self._scalars["lr_scale"]
        self._input_set = set(self.input_names)
        self._carried = self.param_names + self.state_names  # updated every step
        self._native = None
        self._lock = threading.Lock()  # one step at a time: no lost or interleaved updates
        if native is not False:
            self._native = _PingPong.create(self, graph, backend, options)
        if self._native is None:
            self._cur = {**self.frozen, **self._scalars}
        else:
            self._cur = self._native.feeds[0]
        self._write_carried({**params0, **state0})

    # ---- graph construction --------------------------------------------------------------------
    def _accumulate(self, loss: Node) -> tuple[dict[str, Node], Node, list[Node]]:
        scale = None if self.loss_scaler is None else _input("loss_scale", (), "float32")
        rep: dict = {}  # compression happens inside the micro-batch scan body
        acc = accumulated(loss, self.wrt, self.accumulate, self.accumulate_reduce, scale,
                          self.compress, rep)
        self.compress_report = rep if self.compress is not None else None
        return acc

    def _graph(self, state0: dict) -> dict:
        dt = _count_dtype(self.wrt)
        ctx = OptContext(count=_input("step", (), dt), lr_scale=_input("lr_scale", (), dt))
        loss = self.loss_node
        grads: Any
        scaler = self.loss_scaler
        if self._acc is not None:
            _, loss, grads = self._acc
        elif scaler is not None:
            grads = _scaled_grads(loss, self.wrt, _input("loss_scale", (), "float32"),
                                  self.feedback)
        else:
            grads = _grad(self.loss_node, self.wrt, feedback=self.feedback)
        if self._acc is None and self.precision.compute != "float32" and self.backend != "jax":
            grads = recompute_casts(loss, list(grads))  # 16-bit saved activations (bp.compile's)
        if self.compress is not None and self._acc is None:  # stored smaller (compress.py)
            (loss, *grads), self.compress_report = compress_saved([loss, *grads], self.compress)
        pnodes = {p.attr("name"): p for p in self.wrt}
        gnodes = dict(zip(self.param_names, grads))
        state = {k: _input(k, v.shape, v.dtype.name) for k, v in state0.items()}
        deltas, new_state = self.optimizer.updates(gnodes, state, pnodes, ctx)
        outputs = {"loss": loss}
        if scaler is not None and scaler.dynamic:  # NaN/inf iff some gradient is not finite
            total = [sum_(cast(g, "float32") if is_half(g.dtype) else g) for g in grads]
            outputs["grads_finite"] = total[0] if len(total) == 1 else _sum_all(total)
        for k in self.param_names:
            outputs[f"{k}_next"] = add(pnodes[k], deltas[k])
        for k in state0:
            outputs[f"{k}_next"] = new_state[k]
        if self.diagnostics:
            for k in self.param_names:
                g, p, d = gnodes[k], pnodes[k], deltas[k]
                outputs[f"gnorm_{k}"] = _norm(g)
                outputs[f"uratio_{k}"] = div(_norm(d), add(_norm(p), as_node(1e-12, p)))
        return outputs

    # ---- state -------------------------------------------------------------------------------
    @property
    def params(self) -> dict:
        """The current params by name. On a native backend these are views of the buffers the
        compiled code updates in place: copy them to keep a snapshot across steps."""
        return {k: self._cur[k] for k in self.param_names}

    @property
    def opt_state(self) -> dict:
        """The current optimizer state by slot name (`mu_W1`, ...); views, like `params`."""
        return {k: self._cur[k] for k in self.state_names}

    def set_params(self, values: dict[str, ArrayLike]) -> None:
        """Overwrite some or all params (e.g. restore the best epoch's)."""
        with self._lock:
            self._write_carried({k: v for k, v in values.items() if k in self.param_names})

    def reset(self, init: dict[str, ArrayLike]) -> None:
        """Start over from `init` params (fresh optimizer state, count 0), keeping the compiled
        function: cheap restarts for many seeds."""
        with self._lock:
            self._reset(init)

    def _reset(self, init: dict):
        params = {k: np.asarray(init[k], self.fn.signature.by_name[k].dtype)
                  for k in self.param_names}
        for k in self.frozen:
            if k in init:
                np.copyto(self.frozen[k], init[k], casting="same_kind")
        self._write_carried({**params, **self.optimizer.init(params)})
        if self._host_opt:
            for k, v in self.optimizer.host_inputs().items():  # type: ignore[attr-defined]
                self._scalars[k][...] = v
        self.count, self.lr_scale, self.last = 0, 1.0, {}
        if self.loss_scaler is not None:
            self.loss_scaler.reset()

    def _write_carried(self, values: dict):
        for k, v in values.items():
            if self._native is None:
                self._cur[k] = np.array(v, dtype=self.fn.signature.by_name[k].dtype)
            else:
                np.copyto(self._cur[k], v, casting="same_kind")

    # ---- running -------------------------------------------------------------------------------
    def _check_batch(self, batch: dict):
        extra = [k for k in batch if k not in self.input_names]
        missing = [k for k in self.input_names if k not in batch]
        if extra or missing:
            want = ", ".join(f"{x.attr('name')}:{x.dtype}{list(x.shape)}" for x in self.input_nodes)
            parts = ([f"missing {missing}"] if missing else []) + (
                [f"unexpected {extra}"] if extra else [])
            raise ArgumentError(f"train step: {'; '.join(parts)}; the model's inputs are {want}")

    def __call__(self, **batch: ArrayLike) -> float:
        """Apply one update on `batch` (arrays by input name); return the loss before it."""
        if batch.keys() != self._input_set:
            self._check_batch(batch)
        lock = self._lock  # one step at a time (threads): no update is lost
        lock.acquire()  # (explicit calls: ~0.1 us cheaper per step than `with`)
        try:
            self._step_arr[()] = self.count
            self._scale_arr[()] = self.lr_scale
            if self._host_opt:
                self.optimizer.before_step(self.count, self._scalars)  # type: ignore
            scaler = self.loss_scaler
            if scaler is not None:
                self._scalars["loss_scale"][()] = scaler.scale
            native = self._native
            if native is not None:  # one native call on fixed buffers (see _PingPong)
                i = native.phase
                feed = native.feeds[i]
                feed.update(batch)
                loss, values = native.callers[i](**feed)
            elif self._dp is not None:  # several devices, possibly several processes
                for name, bound in self.fn.signature.bounds.items():  # host labels: range check
                    check_host_range(name, batch.get(name), bound)
                batch, cur = self._dp.shard(**batch), self._cur
                arrays = [batch[n] if n in batch else cur[n] for n in self._arg_names]
                loss, rest = self.fn.impl.run(arrays)
                values = dict(zip(self._outs[1:], rest))
            else:
                sig, cur = self.fn.signature, self._cur
                arrays = [sig.convert(n, batch[n]) if n in batch else cur[n]
                          for n in self._arg_names]
                loss, rest = self.fn.impl.run(arrays)
                values = dict(zip(self._outs[1:], rest))
            loss = float(loss)
            if self.diagnostics:
                self.last = self._diagnose(loss, values)
                if self.warn:
                    for msg in self.last["warnings"]:
                        warnings.warn(msg, RuntimeWarning, stacklevel=2)
                finite = math.isfinite(loss) and all(
                    math.isfinite(self.last[f"gnorm_{k}"]) for k in self.param_names)
            else:
                finite = math.isfinite(loss)
            skip = False
            if scaler is not None and scaler.dynamic:
                skip = not math.isfinite(float(values["grads_finite"]))
                finite = math.isfinite(loss)  # non-finite gradients skip the step instead
            if self.check_finite and not finite:
                raise NonFiniteError(self.locate_nonfinite(batch))  # the update is not committed
            if scaler is not None:
                scaler.update(not skip)
                if self.diagnostics:
                    self.last["loss_scale"] = scaler.scale
                    self.last["skipped_steps"] = getattr(scaler, "skipped", 0)
                    self.last["skipped"] = skip
                if skip:  # params, optimizer state and count stay as they were
                    return loss
            if native is not None:
                native.phase = 1 - i
                self._cur = native.feeds[1 - i]
            else:
                for k in self._carried:
                    self._cur[k] = values[f"{k}_next"]
            self.count += 1
            if self._host_opt:
                self.optimizer.after_step(  # type: ignore[attr-defined]
                    self.count - 1, self.opt_state, self._scalars)
            return loss
        finally:
            lock.release()

    def evaluate(self, **batch: ArrayLike) -> float:
        """The loss at the current params, without updating (compiled once, lazily)."""
        with self._lock:
            return self._evaluate(batch)

    def _evaluate(self, batch: dict) -> float:
        if self.accumulate != 1:  # the loss graph is per micro-batch: reduce theirs
            parts = [self._evaluate_one(b) for b in self._micro_batches(batch)]
            return sum(parts) / (len(parts) if self.accumulate_reduce == "mean" else 1)
        return self._evaluate_one(batch)

    def _micro_batches(self, batch: dict) -> list[dict]:
        """`batch` split into the micro-batches the loss graph is declared for."""
        out = []
        for j in range(self.accumulate):
            sub = {}
            for x in self.micro_nodes:
                v, name = batch[x.attr("name")], x.attr("name")
                b = x.shape[0] if x.ndim else 0
                sub[name] = np.asarray(v)[j * b:(j + 1) * b] if x.ndim else v
            out.append(sub)
        return out

    def _evaluate_one(self, batch: dict) -> float:
        if self._eval is None:
            self._eval = Function({"loss": self.loss_node}, backend=self.backend)
        kw = dict(batch)
        kw.update(self.params)
        kw.update(self.frozen)
        need = set(self._eval.signature.names)
        return float(self._eval(**{k: v for k, v in kw.items() if k in need})["loss"])

    @property
    def learning_rate(self) -> float:
        """The learning rate the next step will use (schedule × lr_scale)."""
        return self.optimizer.learning_rate(self.count, self.lr_scale)

    # ---- diagnostics ---------------------------------------------------------------------------
    def _diagnose(self, loss, values) -> dict:
        """Gradient norms and update/weight ratios by param, and warning messages for
        vanishing (< VANISHING) or exploding (> EXPLODING) gradients."""
        d = {"loss": loss, "warnings": []}
        for k in self.param_names:
            g = float(values[f"gnorm_{k}"])
            d[f"gnorm_{k}"] = g
            d[f"uratio_{k}"] = float(values[f"uratio_{k}"])
            if math.isfinite(g) and g < VANISHING:
                d["warnings"].append(f"step {self.count}: vanishing gradient for {k}: "
                                     f"|d{k}| = {g:.3g} < {VANISHING:g}")
            elif math.isfinite(g) and g > EXPLODING:
                d["warnings"].append(f"step {self.count}: exploding gradient for {k}: "
                                     f"|d{k}| = {g:.3g} > {EXPLODING:g}")
        return d

    def locate_nonfinite(self, batch: dict) -> str:
        """Re-run loss and gradients at the current params with the NumPy reference, node by
        node, and describe the first node whose value is NaN/inf while its inputs are finite."""
        if self.accumulate != 1:
            for j, sub in enumerate(self._micro_batches(batch)):
                msg = self._locate_one(sub)
                if msg is not None:
                    return f"{msg} (micro-batch {j} of {self.accumulate})"
            return f"step {self.count}: the compiled step produced NaN/inf, but no " \
                   "micro-batch's NumPy reference evaluation does (a backend difference)"
        msg = self._locate_one(batch)
        return msg if msg is not None else (
            f"step {self.count}: the compiled step produced NaN/inf, but the NumPy "
            "reference evaluation of the same graph stays finite (a backend difference)")

    def _locate_one(self, batch: dict) -> str | None:
        from ..backends.numpy.codegen import evaluate

        env = {**self.params, **self.frozen, **self.feedback_values}
        for x in self.micro_nodes:
            env[x.attr("name")] = np.asarray(batch[x.attr("name")], x.dtype)
        for name, v in env.items():
            if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
                kind = "input" if name in self.input_names else "param"
                return f"step {self.count}: {kind} {name!r} already contains NaN/inf"
        grads = _grad(self.loss_node, self.wrt, feedback=self.feedback)
        order = [n for n in toposort([self.loss_node] + list(grads))  # (a scan's results
                 if n.op not in ("input", "param", "const") and n.results is None]  # are nodes)
        values = dict(zip(order, evaluate(order, env)))
        forward = set(toposort([self.loss_node]))
        for n in order:
            v = values[n]
            if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
                bad = [i for i in n.inputs if i in values and not np.isfinite(values[i]).all()]
                if bad:
                    continue
                label = n.name or n.op
                where = f", created at {n.where}" if n.where and n in forward else ""
                ins = ", ".join(i.name or i.op for i in n.inputs)
                kind = "nan" if np.isnan(v).any() else "inf"
                pass_ = "forward" if n in forward else "backward"
                msg = (f"step {self.count}: non-finite value ({kind}) first produced by node "
                       f"{label!r} (op {n.op}, {pass_} pass{where}) from inputs ({ins})")
                if n not in forward:
                    near = _forward_sources(n, forward)
                    if near:
                        msg += ("; it is part of the derivative through forward value(s) "
                                + ", ".join(f"{m.name!r}" + (f" ({m.where})" if m.where else "")
                                            for m in near))
                return msg
        return None

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        out = {f"param/{k}": v for k, v in self.params.items()}
        out.update({f"frozen/{k}": v for k, v in self.frozen.items()})
        out.update({f"opt/{k}": v for k, v in self.opt_state.items()})
        out["meta/count"] = np.asarray(self.count)
        out["meta/lr_scale"] = np.asarray(self.lr_scale)
        if self.loss_scaler is not None:
            for k, v in self.loss_scaler.state_dict().items():
                out[f"meta/loss_scale_{k}"] = np.asarray(v)
        return out

    def load_state_dict(self, d: dict) -> None:
        with self._lock:
            self._load_state_dict(d)

    def _load_state_dict(self, d: dict):
        values = {}
        for group, names, ref in (("param", self.param_names, None),
                                  ("frozen", list(self.frozen), self.frozen),
                                  ("opt", self.state_names, None)):
            for k in names:
                key = f"{group}/{k}"
                if key not in d:
                    raise ArgumentError(f"checkpoint has no {key!r}; it was saved from a "
                                        "different model or optimizer")
                arr = np.asarray(d[key])
                want = self.fn.signature.by_name[k].shape
                if arr.shape != want:
                    raise ArgumentError(f"checkpoint {key!r} has shape {arr.shape}, "
                                        f"expected {want}")
                if ref is not None:
                    np.copyto(ref[k], arr, casting="unsafe")
                else:
                    values[k] = arr
        self._write_carried(values)
        self.count = int(d.get("meta/count", 0))
        self.lr_scale = float(d.get("meta/lr_scale", 1.0))
        if self._host_opt:  # inverses from the restored factors
            self.optimizer.refresh(self.opt_state, self._scalars)  # type: ignore
        if self.loss_scaler is not None:
            pre = "meta/loss_scale_"
            self.loss_scaler.load_state_dict(
                {k[len(pre):]: v for k, v in d.items() if k.startswith(pre)})

    def __repr__(self):
        return (f"<TrainStep {self.backend} {self.optimizer!r}: params "
                f"{', '.join(self.param_names)}; {self.count} steps>")


def _forward_sources(n: Node, forward: set, depth: int = 3) -> list:
    """Named forward-pass nodes within `depth` inputs of backward node `n` (what it
    differentiates), nearest first."""
    out, frontier, seen = [], [n], {n}
    for _ in range(depth):
        nxt = []
        for m in frontier:
            for i in m.inputs:
                if i in seen or i.op in ("const", "param", "input"):
                    continue
                seen.add(i)
                if i in forward and i.name:
                    out.append(i)
                else:
                    nxt.append(i)
        if out:
            return out
        frontier = nxt
    return out


def _scaled_grads(loss: Node, wrt: list, scale: Node, feedback: str | None = None) -> list:
    """Gradients of `loss * scale` (in float32, so the float16 backward carries scaled
    cotangents), unscaled in float32 and returned in each param's dtype."""
    if is_half(loss.dtype):
        loss = cast(loss, "float32")
    out = []
    for p, g in zip(wrt, _grad(mul(loss, scale), wrt, feedback=feedback)):
        g = div(cast(g, "float32") if is_half(g.dtype) else g, scale)
        out.append(cast(g, p.dtype) if g.dtype != p.dtype else g)
    return out


def _sum_all(xs: list) -> Node:
    total = xs[0]
    for x in xs[1:]:
        total = add(total, x)
    return total


def _norm(x: Node) -> Node:
    return unary("sqrt", sum_(mul(x, x)))


def compile_train_step(loss: Node | Model, params: Sequence[Node | str] | None = None,
                       optimizer: Optimizer | str | None = None, backend: str = "numpy",
                       **kw: Any) -> TrainStep:
    """Compile forward + backward + `optimizer` update of `params` into one function.

    `loss` is a scalar node or a spec `Model`; `params` a list of param nodes or names
    (default: every param). Keyword options: `init` (initial arrays by name; default the
    model's init or Glorot weights / zero biases from `seed`), `diagnostics`, `check_finite`,
    `accumulate=k` (the loss is declared per micro-batch; each step takes k micro-batches
    stacked along the inputs' leading axis, sums their gradients in a scan and applies one
    update with their mean, or sum with `accumulate_reduce="sum"`: the full-batch step for a
    mean (sum) loss, with one micro-batch's activations alive at a time),
    `memory_budget` (bytes or "64MB": forward segments are recomputed until the step's own
    planned peak fits: the backend's plan of loss, gradients, update, new params and optimizer
    state, step_budget.py; `step.remat_report`).
    `precision="float16"` (rewrite/precision.py), `loss_scale` ("dynamic", a number for a
    static scale, or a `DynamicLossScale`: the loss is scaled before differentiation and the
    gradients unscaled in float32; a dynamic scale skips steps with non-finite gradients,
    see loss_scale.py; `step.loss_scaler` holds the scale and the skipped-step count; with
    `accumulate`, unscaled once after the micro-batch loop). A spec `Model`'s `precision`
    and `loss_scale` are the defaults of these two.
    `feedback="alignment" | "direct"`, `feedback_seed=0`: train with feedback alignment's
    updates (autodiff/feedback.py); `step.feedback_values` holds the fixed B matrices.
    `compress_activations` ("bfloat16" or "int8": the activations saved for the backward pass
    are stored compressed, rewrite/compress.py; `step.compress_report`).
    """
    return TrainStep(loss, params, optimizer, backend, **kw)


def _count_dtype(wrt) -> str:
    """The dtype of the step count and lr scale: the first param's, but float32 for 16-bit
    params (bfloat16 counts exactly only to 256; the optimizer math is float32 there)."""
    dt = wrt[0].dtype
    return "float32" if is_half(dt) else dt


class _PingPong:
    """In-place training on a backend whose compiled function writes its outputs into
    preallocated native buffers and offers a validated native call path (LLVM).

    Two instances of the same compiled code (the second is a cache hit) take turns: A reads
    params and state from B's output buffers and writes the new ones into its own, then B reads
    A's. No array is allocated or copied per step: the per-step Python work is one native call
    with a dict of the batch plus fixed buffers. The current params are whichever buffers the
    next call reads (`feeds[phase]`); a failed (non-finite) step simply does not flip.
    """

    @classmethod
    def create(cls, step: TrainStep, graph: dict, backend: str, options: dict):
        impl = step.fn.impl
        if not isinstance(impl, InPlace):
            return None
        other = Function(graph, backend=backend, **options)
        # pinned: each instance writes one arena of its own whichever thread steps (steps
        # hold the TrainStep's lock), not the calling thread's
        callers = [f.impl.make_caller(f.signature, f.names[1:], pinned=True)
                   if isinstance(f.impl, InPlace) else None for f in (step.fn, other)]
        if not all(isinstance(c, NativeCaller) for c in callers):
            return None
        return cls(step, [step.fn, other], callers)

    def __init__(self, step: TrainStep, fns: list, callers: list):
        self.step, self.fns = step, fns
        self.callers = [c.bp_native for c in callers]
        names = set(fns[0].signature.names)  # `step` is no input when no transform reads it
        fixed = {k: v for k, v in {**step.frozen, **step._scalars}.items() if k in names}
        idx = {n: j for j, n in enumerate(fns[0].names)}
        # feeds[i] is what fns[i] reads: the carried values from the other function's buffers
        self.feeds = []
        for i in (0, 1):
            outs = callers[1 - i].arena.out_arrays
            feed = dict(fixed)
            for k in step._carried:
                feed[k] = outs[idx[f"{k}_next"]]
            self.feeds.append(feed)
        self.phase = 0
