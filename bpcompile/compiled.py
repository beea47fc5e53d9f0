"""bp.compile: loss -> adjoint graph -> passes -> backend -> a callable with inspection methods."""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .autodiff.feedback import check_mode, feedback_inputs, feedback_matrices
from .autodiff.reverse import check_loss, check_wrt
from .autodiff.reverse import grad as _grad
from .backends.memory_estimate import estimate_timeline, recompute_cost
from .backends.protocol import (
    Backend,
    BackendClass,
    FastCall,
    InPlace,
    JaxProgram,
    KernelStats,
    MemoryPlan,
    NativeCaller,
    Rewrites,
)
from .backends.signature import Signature
from .budget import InfeasibleBudget, fit_budget, parse_budget
from .errors import BackendError, BPError
from .ir.hints import Wrt
from .ir.node import NAMES, Node
from .ir.printer import format_graph
from .ir.traverse import leaves
from .rewrite import pipeline
from .rewrite.compress import check_mode as compress_mode
from .rewrite.compress import compress_saved
from .rewrite.precision import Policy, apply_policy, apply_policy_all, recompute_casts
from .warm_cache import Entry, backend_state, open_program

BACKENDS = ("numpy", "llvm", "jax")


def get_backend(name: str) -> BackendClass:
    if name == "numpy":
        from .backends.numpy.codegen import NumpyBackend

        return NumpyBackend
    if name == "llvm":
        try:
            from .backends.llvm.backend import LLVMBackend
        except ImportError as e:
            raise BackendError(f"llvm backend unavailable: {e}") from e
        return LLVMBackend
    if name == "jax":
        try:
            from .backends.jax.backend import JaxBackend
        except ImportError as e:
            raise BackendError(
                f"jax backend unavailable ({e}); pip install 'bpcompile[jax]'"
            ) from e
        return JaxBackend
    raise BackendError(f"unknown backend {name!r}; choose from {BACKENDS}")


def _gc_paused(init):
    """Run a compile with Python's cyclic GC paused: a deep model's compile allocates ~10⁵
    objects that live until it ends, and each full collection walks them all (GC made LLVM IR
    building ~2x slower on a 32-block CNN). The previous GC state is restored afterwards."""

    @functools.wraps(init)
    def run(*args, **kwargs):
        was = gc.isenabled()
        gc.disable()
        try:
            return init(*args, **kwargs)
        finally:
            if was:
                gc.enable()

    return run


def grad(loss: Node, wrt: Wrt, stabilize: bool = True,
         feedback: str | None = None) -> list[Node] | Node:
    """Gradient of a scalar loss w.r.t. params, as graph nodes (composable, differentiable).

    The forward graph is stabilised first (log(sigmoid) -> -softplus(-x), ...) so the gradient
    is stable too; pass stabilize=False for the literal derivative. feedback="alignment" or
    "direct": feedback-alignment updates instead, reading random `B_<param>` inputs
    (`bp.feedback_matrices` makes their values; docs/training.md).
    """
    loss = check_loss(loss)
    if stabilize:
        loss = pipeline.run_forward(loss)
    return _grad(loss, wrt, feedback=feedback)


class Program:
    """What every compiled graph shares: passes, a backend, and inspection methods."""

    args: list[Node]  # inputs and params in declared order (set by the subclass)
    remat_report: dict | None = None  # what memory_budget= chose (bp.compile)
    # the graph-level compile-cache (warm_cache.py): "hit", "miss", or why it was not used
    cache_status: str = "not used"
    compress_report: dict | None = None  # what compress_activations= stored smaller
    signature: Signature

    def _title(self) -> str:
        raise NotImplementedError  # each subclass describes its outputs

    def _build(
        self,
        outputs: list[Node],
        labels: list[str],
        backend: str,
        passes,
        options,
        stages: list,
        t0: float,
    ):
        self.backend_name = backend
        backend_cls = get_backend(backend)  # fail early on a bad backend name
        rules = backend_cls.backend_rules(options) if isinstance(backend_cls, Rewrites) else None
        outputs, self.stages = pipeline.run(outputs, passes, record=stages, backend=rules)
        self.outputs, self.labels = outputs, labels
        _name_outputs(outputs, labels)
        t1 = time.perf_counter()
        self.impl: Backend = backend_cls(outputs, self.args, title=self._title(), **options)
        self.timings = {"graph": t1 - t0, "codegen": time.perf_counter() - t1}

    # -- the compiled-program cache (warm_cache.py) ---------------------------------------------
    def _warm_start(self, kind: str, outputs: list[Node], extra: list[Node], labels: list[str],
                    backend: str, passes, options: dict, rebuild: Callable[[], Program],
                    t0: float) -> bool:
        """Load this compile's program from the graph-level cache; False on a miss (the caller
        compiles, then `_warm_store`s). `rebuild`: the full compile, run once if something
        asks for the graph (fn.graph(), fn.source(), fn.outputs)."""
        self._warm: Entry | None = None
        # `cache` is the LLVM backend's option; the NumPy backend, which has none, gets it here
        no_cache = backend == "numpy" and not options.pop("cache", True)
        if not options.pop("_warm_cache", True):
            self.cache_status = "rebuilt for inspection"
            return False
        if no_cache:
            self.cache_status = "cache=False"
            return False
        plain = {k: v for k, v in options.items() if k != "precision"}
        entry = Entry.of(kind, outputs, extra, self.args, labels, backend, passes, plain,
                         Policy.of(options.get("precision")))
        if isinstance(entry, str):
            self.cache_status = entry
            return False
        self._warm, self.cache_status = entry, "miss"
        t1 = time.perf_counter()
        loaded = entry.load()
        if loaded is None:
            return False
        payload, arrays = loaded
        self._rebuild: Callable[[], Program] = rebuild
        self._full: Program | None = None
        try:
            self.impl = open_program(backend, payload, arrays, self.args,
                                     lambda: self._full_program().impl)
        except (LookupError, KeyError, TypeError, ValueError) as e:  # object gone or refused
            entry.discard()
            self.cache_status = f"miss: stale entry ({e})"
            return False
        self.cache_status = "hit"
        self.backend_name, self.labels, self._warm_payload = backend, labels, payload
        self.compress_report = payload.get("compress")
        self.precision = Policy.of(options.pop("precision", None))
        self.timings = {"graph": t1 - t0, "codegen": time.perf_counter() - t1}
        return True

    def _warm_store(self) -> None:
        state = (backend_state(self.backend_name, self.impl, self._warm.key.digest[:16])
                 if self._warm is not None else None)
        if state is not None and self._warm is not None:
            self._warm.store({"backend": state[0], "stats": self.stats(),
                              "recompute": recompute_cost(self.outputs),
                              "compress": self.compress_report}, state[1])

    def _full_program(self) -> Program:
        """The full compile of a warm hit (graph, stages, backend), made once."""
        full: Program | None = self._full
        if full is None:
            full = self._full = self._rebuild()
            self.outputs, self.stages = full.outputs, full.stages
        return full

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes not set: a warm hit's graph, compiled on first use
        if name in ("outputs", "stages") and "_rebuild" in self.__dict__:
            return getattr(self._full_program(), name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def memory(self, timeline: bool = False) -> dict:
        """The backend's static memory plan (peak bytes, buffers, saved for backward), if any.

        timeline=True adds `timeline`: bytes live at each step (forward, recompute, backward),
        from the plan on LLVM; on a backend without one, an estimate from the graph's order
        (`estimate: True`, with its `peak_bytes`), backends/memory_estimate.py."""
        if not isinstance(self.impl, MemoryPlan):
            if timeline:
                rows = estimate_timeline(self.outputs)
                est = {"estimate": True, "timeline": rows,
                       "peak_bytes": max((r["live_bytes"] for r in rows), default=0),
                       **recompute_cost(self.outputs)}
                if self.remat_report:
                    est["remat"] = dict(self.remat_report)
                if self.compress_report:
                    est["compress"] = dict(self.compress_report)
                return est
            raise NotImplementedError(f"the {self.backend_name} backend has no memory plan")
        warm = self.__dict__.get("_warm_payload")
        out = {**self.impl.memory(),
               **(warm["recompute"] if warm else recompute_cost(self.outputs))}
        if self.compress_report:  # compress_activations=
            out["compress"] = dict(self.compress_report)
        if self.remat_report:  # compiled with memory_budget=
            out["remat"] = dict(self.remat_report)
        if timeline:
            out["timeline"] = self.impl.memory_timeline()
        return out

    def source(self, stage: str | None = None) -> str:
        """The generated code (NumPy source, LLVM IR, or JAX source, per backend).

        On the NumPy and JAX backends the default stage is a complete module (imports, the
        helpers it calls, constants, the function) that runs without bpcompile; "function"
        is the bare function as the backend runs it. "latex"/"markdown" (any backend): the
        forward and backward pass as equations in δ notation."""
        if stage == "function":
            return self.impl.source(None)
        if stage in ("latex", "markdown"):  # the adjoint as equations (docs/inspection.md)
            from .inspect import latex

            return latex.to_latex(self) if stage == "latex" else latex.to_markdown(self)
        if stage in (None, self.backend_name) and self.backend_name in ("numpy", "jax"):
            from .inspect.standalone import module_source

            impl: Any = self.impl
            return module_source(impl.src, impl.consts, impl.namespace,
                                 "np" if self.backend_name == "numpy" else "jnp", self._title())
        return self.impl.source(stage)

    def graph_image(self, stage: str = "final", format: str = "svg",  # noqa: A002
                    path: str | Path | None = None, max_nodes: int = 300,
                    expand: Sequence[str] = ()) -> str | bytes | Path:
        """The graph at `stage` as a picture: format "dot" (text, no dependency), "svg" (text)
        or "png" (bytes), the last two rendered by Graphviz's `dot`; written to `path` if
        given. Over `max_nodes` nodes, each source line collapses into one box."""
        from .inspect.dot import graph_image

        return graph_image(self, stage, format, path, max_nodes, expand)

    def equations_image(self, path: str | Path) -> Path:
        """The δ-notation equations as a PNG (matplotlib mathtext; no LaTeX needed)."""
        from .inspect.latex import render_png

        return render_png(self, path)

    def save_source(self, path: str | Path, stage: str | None = None) -> Path:
        """Write `source(stage)` to `path` (a standalone module on NumPy/JAX); returns it."""
        from .inspect.standalone import save_source

        return save_source(self.source(stage), path)

    def lowered(self) -> Any:
        """(jax backend) The `jax.stages.Lowered` program: `.as_text()`, `.compile()`, ..."""
        return self._jax("lowered").lowered()

    def _jax(self, method: str) -> JaxProgram:
        if not isinstance(self.impl, JaxProgram):
            raise BackendError(f"{method}() needs backend='jax' (this is {self.backend_name!r})")
        return self.impl

    def graph(self, stage: str = "final") -> str:
        """The graph at a stage: forward, adjoint (raw), a pass name, or final."""
        names = [s.name for s in self.stages]
        if stage == "final":
            st = self.stages[-1]
        elif stage in names:
            st = self.stages[names.index(stage)]
        else:
            raise ValueError(f"unknown stage {stage!r}; choose from {names + ['final']}")
        labels = self.labels if len(st.outputs) == len(self.labels) else self.labels[:1]
        return format_graph(st.outputs, labels)

    def stats(self) -> str:
        """Node counts after each stage, rewrites per named rule, and compile timings."""
        warm = self.__dict__.get("_warm_payload")
        if warm:  # the stored compile's report, and how this one was loaded
            t = self.timings
            return (f"{warm['stats']}\nwarm compile-cache hit (graph-level key): key "
                    f"{t['graph'] * 1e3:.1f} ms, load {t['codegen'] * 1e3:.1f} ms")
        rows = [f"{'stage':16s} {'nodes':>6s}  ops"]
        for s in self.stages:
            top = ", ".join(f"{k}:{v}" for k, v in s.ops.most_common(6))
            rows.append(f"{s.name:16s} {s.nodes:6d}  {top}")
        bodies = pipeline.body_stages(self.stages[-1].outputs)
        if bodies:  # the sub-graphs the final stage runs, nested ones indented
            rows.append("scan bodies (final):")
            for depth, b in bodies:
                top = ", ".join(f"{k}:{v}" for k, v in b.ops.most_common(6))
                rows.append(f"  {'  ' * depth + b.name:14s} {b.nodes:6d}  {top}")
        # the "forward" row's hits are those of the passes run on it before autodiff
        rows.append("rule hits per stage:")
        for s in self.stages:
            if s.hits:
                hits = ", ".join(f"{k}:{v}" for k, v in sorted(s.hits.items()))
                rows.append(f"  {s.name:14s} {hits}")
        rows.append(
            f"graph build+autodiff+passes {self.timings['graph'] * 1e3:.1f} ms, "
            f"codegen ({self.backend_name}) {self.timings['codegen'] * 1e3:.1f} ms"
        )
        kernels = self.impl.kernel_stats if isinstance(self.impl, KernelStats) else None
        if kernels and kernels["llvm_kernel_calls"]:  # a split LLVM schedule (issue #14)
            rows.append(f"native kernels {kernels['llvm_kernels']} for "
                        f"{kernels['llvm_kernel_calls']} steps")
        return "\n".join(rows)

    def _repr_html_(self) -> str:
        """Jupyter: the equations, the final graph's picture and the generated code."""
        from .inspect.notebook import program_html

        return program_html(self)

    def __repr__(self):
        return f"<bpcompile.{type(self).__name__} {self.backend_name}: {self.signature.describe()}>"


class Compiled(Program):
    """A compiled loss-and-gradient function: `value, grads = fn(**inputs_and_params)`.

    Arguments may also go by position, in the order of `fn.signature.names` (see repr(fn)).
    """

    @_gc_paused
    def __init__(self, loss: Node, wrt: Wrt, backend: str = "numpy",
                 passes: Sequence[str] | None = None, **options: Any) -> None:
        t0 = time.perf_counter()
        self.loss = check_loss(loss)
        self.wrt = check_wrt(wrt)
        self.args = _declared_order(leaves([self.loss] + self.wrt))
        _check_unique_names(self.args)
        self.signature = Signature(self.args, [self.loss])
        self.grad_names = [w.attr("name") for w in self.wrt]
        get_backend(backend)  # a bad backend name fails before any graph work
        self.feedback = check_mode(options.pop("feedback", None))
        feedback_seed = options.pop("feedback_seed", 0)
        self.feedback_values: dict[str, Any] = {}
        labels = ["loss"] + ["d" + n for n in self.grad_names]
        again = dict(options, _warm_cache=False)
        if self.feedback is not None:  # its B inputs are made from the adjoint graph
            self._warm, self.cache_status = None, "not cached: feedback alignment"
        elif self._warm_start("grad", [self.loss], self.wrt, labels, backend, passes, options,
                              lambda: Compiled(loss, wrt, backend, passes, **again), t0):
            self._install_caller()
            return
        stages = [pipeline._stage("forward", [self.loss])]
        forward = pipeline.run_forward(self.loss, stages[0].hits)
        self.precision = Policy.of(options.pop("precision", None))
        forward = apply_policy(forward, self.precision, stages[0].hits)  # before autodiff
        grads = _grad(forward, self.wrt, feedback=self.feedback)
        # feedback alignment's random matrices: inputs after the user's, fed by __call__
        self.feedback_values = feedback_matrices(grads, feedback_seed) if self.feedback else {}
        if self.feedback_values:
            self.args = self.args + feedback_inputs(grads)
            self.signature = Signature(self.args, [self.loss])
        if self.precision.compute != "float32" and backend != "jax":  # XLA plans its own
            grads = recompute_casts(forward, list(grads), stages[0].hits)
        # compress_activations: saved tensors stored in bfloat16/int8 (rewrite/compress.py)
        outs, self.compress_report = compress_saved(
            [forward] + list(grads), compress_mode(options.pop("compress_activations", None)))
        stages.append(pipeline._stage("adjoint", outs))
        self._build(
            outs,
            labels,
            backend,
            passes,
            options,
            stages,
            t0,
        )
        self._warm_store()
        self._install_caller()

    def _install_caller(self) -> None:
        # A backend may supply its own validated fast call path (see docs/architecture.md).
        caller = (self.impl.make_caller(self.signature, self.grad_names)
                  if isinstance(self.impl, FastCall) else None)
        self._call = caller or self._default_call
        if self.feedback_values:  # the B matrices are fixed: fill them in every call
            self._inner, self._call = self._call, self._feedback_call
        elif isinstance(caller, NativeCaller):
            # A C-level caller becomes the class's __call__ (a builtin is not bound to self),
            # so fn(**kw) reaches native code without a Python frame.
            self.__class__ = type(type(self).__name__, (type(self),),
                                  {"__call__": caller.bp_native})

    def as_jax_function(self) -> Callable[..., Any]:
        """(jax backend) `f(params: dict, **inputs) -> loss` for user JAX code; jax.grad of it
        runs this compiled backward (jax.custom_vjp). Composes with jax.jit and jax.vmap.
        With `feedback=`, jax.grad of it is the feedback-alignment update (B filled in)."""
        f = self._jax("as_jax_function").as_jax_function(self.grad_names)
        fixed = self.feedback_values
        return (lambda params, **inputs: f(params, **{**fixed, **inputs})) if fixed else f

    def data_parallel(self, batch_inputs: Sequence[str] | dict[str, int] | None = None,
                      devices: Sequence[Any] | None = None) -> Any:
        """(jax backend) The same program with the batch axis of `batch_inputs` (names, or
        {name: axis}; default every input) sharded over `devices` (default jax.devices())."""
        fixed = self.feedback_values
        if fixed and batch_inputs is None:  # feedback matrices are replicated, not batches
            batch_inputs = [a.attr("name") for a in self.args
                            if a.op == "input" and a.ndim and a.attr("name") not in fixed]
        caller = self._jax("data_parallel").data_parallel(
            self.signature, self.grad_names, batch_inputs, devices
        )
        if not fixed:
            return caller
        return lambda **kw: caller(**{**fixed, **kw})  # the B matrices, as fn fills them

    def report(self, path: str | Path, values: dict[str, Any] | None = None,
               title: str = "", backends: Sequence[str] = ("numpy", "jax", "llvm"),
               check_gradients: bool = True) -> Path:
        """Write one self-contained HTML page about this function to `path`: gradient norms
        and the gradient check at `values` (every input and param by name; seeded random
        when None), δ equations, graph pictures, each backend's code, passes, memory.
        `check_gradients=False` skips the check (finite differences cost a call per sample)."""
        from .inspect.report import write

        return write(self, path, values, title, backends=backends,
                     check_gradients=check_gradients)

    def _title(self):
        return (
            f"bpcompile {self.backend_name} backend: loss and d/d({', '.join(self.grad_names)}); "
            f"args: {self.signature.describe()}"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        return self._call(*args, **kwargs)

    def _feedback_call(self, *args, **kwargs):
        """Positional arguments by name (a native caller takes keywords only), the fixed
        feedback matrices where the caller gives none."""
        names = self.signature.names
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional "
                            f"arguments ({', '.join(names)}), got {len(args)}")
        kw = {**self.feedback_values, **dict(zip(names, args))}
        dup = sorted(set(kwargs) & set(names[:len(args)]))
        if dup:
            raise TypeError(f"arguments {dup} given by position and by keyword")
        return self._inner(**{**kw, **kwargs})

    def _default_call(self, *args, **kwargs):
        arrays = self.signature.bind(kwargs, args)
        value, grads = self.impl.run(arrays)
        return value, dict(zip(self.grad_names, grads))


class Function(Program):
    """A compiled graph with any named outputs: `bp.function({"y": y, "g": g})(**args)` -> dict.

    Used for inference, Hessian-vector products, and training steps (new params as outputs).
    """

    _native: Callable[..., Any] | None = None

    @_gc_paused
    def __init__(self, outputs: dict[str, Node], backend: str = "numpy",
                 passes: Sequence[str] | None = None, **options: Any) -> None:
        t0 = time.perf_counter()
        if not isinstance(outputs, dict) or not outputs:
            raise TypeError("bp.function takes a non-empty dict {name: node}")
        for k, v in outputs.items():
            if not isinstance(v, Node):
                raise TypeError(f"bp.function: output {k!r} is {type(v).__name__}, not a node")
        self.names = list(outputs)
        nodes = list(outputs.values())
        self._scalar_first = nodes[0].shape == ()
        self.args = _declared_order(leaves(nodes))
        _check_unique_names(self.args)
        self.signature = Signature(self.args, nodes)
        again = dict(options, _warm_cache=False)
        if self._warm_start("function", nodes, [], self.names, backend, passes, options,
                            lambda: Function(outputs, backend, passes, **again), t0):
            self._install_caller()
            return
        stages = [pipeline._stage("forward", nodes)]
        nodes = [pipeline.run_forward(n, stages[0].hits) if n.shape == () else n for n in nodes]
        self.precision = Policy.of(options.pop("precision", None))
        nodes = apply_policy_all(nodes, self.precision, stages[0].hits)
        self._build(nodes, self.names, backend, passes, options, stages, t0)
        self._warm_store()
        self._install_caller()

    def _install_caller(self) -> None:
        # LLVM's native checked call path (pycall.py, as Compiled's) where the first output is
        # a float scalar (a loss, as HVP puts first): it skips Signature.bind + ctypes, ~70 us
        caller = (self.impl.make_caller(self.signature, self.names[1:])
                  if isinstance(self.impl, InPlace) and self._scalar_first
                  else None)
        self._native = caller.bp_native if isinstance(caller, NativeCaller) else None

    def _title(self):
        return (
            f"bpcompile {self.backend_name} backend: outputs {', '.join(self.names)}; "
            f"args: {self.signature.describe()}"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self._native is not None:  # positional or bad arguments: its slow path binds them
            first, named = self._native(*args, **kwargs)
            return {self.names[0]: first, **named}
        first, rest = self.impl.run(self.signature.bind(kwargs, args))
        return dict(zip(self.names, [first] + list(rest)))


def _name_outputs(outputs, labels):
    for o, label in zip(outputs, labels):
        if o.op not in ("input", "param", "const") and o not in NAMES:
            NAMES[o] = label


def _declared_order(args: list[Node]) -> list[Node]:
    """Inputs and params in the order the user declared them: the order positional arguments
    follow (as a Python function's parameters do), independent of where the graph reads them."""
    return sorted(args, key=lambda n: n.serial)


def _check_unique_names(args):
    seen = {}
    for a in args:
        name = a.attr("name")
        if name in seen:
            raise ValueError(
                f"two different leaves are named {name!r}: "
                f"{seen[name]!r} and {a!r}; names must be unique"
            )
        seen[name] = a


def compile(loss: Node, wrt: Wrt, backend: str = "numpy",  # noqa: A001
            passes: Sequence[str] | None = None, memory_budget: int | str | None = None,
            **options: Any) -> Compiled:
    """Compile `loss` and its gradient w.r.t. `wrt` (params and float inputs) for `backend`.

    memory_budget: bytes (int, or "64MB", "1.5GiB"): recompute forward segments in the
    backward pass (bp.checkpoint) until the planned peak fits (budget.py, docs/memory.md);
    `fn.memory()["remat"]` reports the choice. An infeasible budget raises a BPError naming
    the smallest feasible one. feedback="alignment" | "direct" (and feedback_seed=0):
    feedback-alignment updates instead of gradients, the random `B_<param>` matrices drawn
    from the seed and filled in by every call (`fn.feedback_values`; docs/training.md)."""
    if memory_budget is None:
        return Compiled(loss, wrt, backend, passes, **options)
    return _compile_in_budget(loss, wrt, backend, passes, parse_budget(memory_budget), options)


def _compile_in_budget(loss, wrt, backend, passes, budget: int, options) -> Compiled:
    """Search on the NumPy estimate (cheap, no code generation); where the target has its own
    static plan (LLVM) and that plan is over the budget, search again measuring the target's
    plan (each trial compiles)."""
    squeeze = {k: v for k, v in options.items() if k == "compress_activations"}

    def estimate(marked: Node) -> tuple[int, int]:
        m = Compiled(marked, wrt, "numpy", passes, **squeeze).memory(timeline=True)
        return m["peak_bytes"], m["recompute_flops"]

    built: dict[Node, Compiled] = {}

    def target(marked: Node) -> Compiled:
        if marked not in built:
            built[marked] = Compiled(marked, wrt, backend, passes, **options)
        return built[marked]

    def planned(marked: Node) -> int:
        return int(target(marked).memory(timeline=True)["peak_bytes"])

    def planned_and_flops(marked: Node) -> tuple[int, int]:
        return planned(marked), int(target(marked).memory(timeline=True)["recompute_flops"])

    loss = check_loss(loss)
    try:
        marked, report = fit_budget(loss, budget, estimate)
        fn = target(marked)
        if not isinstance(fn.impl, MemoryPlan) or planned(marked) <= budget:
            report["planned_peak_bytes"] = planned(marked)
            fn.remat_report = report
            return fn
    except InfeasibleBudget:
        if backend == "numpy":
            raise
    try:  # the target's plan packs differently from the estimate: measure it
        marked, report = fit_budget(loss, budget, planned_and_flops)
    except InfeasibleBudget as e:
        raise BPError(f"memory_budget={budget} bytes is infeasible on the {backend} backend: "
                      f"the smallest planned peak found is {e.need} bytes; give "
                      f"memory_budget >= {e.need}") from None
    fn = target(marked)
    fn.remat_report = report
    return fn


def function(outputs: dict[str, Node], backend: str = "numpy",
             passes: Sequence[str] | None = None, **options: Any) -> Function:
    """Compile a graph with named outputs (no gradient added) for `backend`."""
    return Function(outputs, backend, passes, **options)


def export(loss: Node, wrt: Wrt, out_dir: str, name: str = "model", cc: str | None = None) -> dict:
    """Write lib<name>.so and <name>.h (a C ABI for loss and gradients) to `out_dir`.

    See bpcompile/backends/llvm/export.py; llvmlite is imported only when this is called.
    """
    from .backends.llvm.export import check_name
    from .backends.llvm.export import export as _export

    check_name(name)  # before compiling
    fn = compile(loss, wrt, backend="numpy")  # the backend reads only its simplified graph
    return _export(fn, out_dir, name=name, cc=cc)
