"""bp.compile: loss -> adjoint graph -> passes -> backend -> a callable with inspection methods."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .autodiff.reverse import check_loss, check_wrt
from .autodiff.reverse import grad as _grad
from .backends.protocol import (
    Backend,
    BackendClass,
    FastCall,
    JaxProgram,
    MemoryPlan,
    NativeCaller,
    Rewrites,
)
from .backends.signature import Signature
from .errors import BackendError
from .ir.hints import Wrt
from .ir.node import NAMES, Node
from .ir.printer import format_graph
from .ir.traverse import leaves
from .rewrite import pipeline

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


def grad(loss: Node, wrt: Wrt, stabilize: bool = True) -> list[Node] | Node:
    """Gradient of a scalar loss w.r.t. params, as graph nodes (composable, differentiable).

    The forward graph is stabilised first (log(sigmoid) -> -softplus(-x), ...) so the gradient
    is stable too; pass stabilize=False for the literal derivative.
    """
    loss = check_loss(loss)
    if stabilize:
        loss = pipeline.run_forward(loss)
    return _grad(loss, wrt)


class Program:
    """What every compiled graph shares: passes, a backend, and inspection methods."""

    args: list[Node]  # inputs and params in declared order (set by the subclass)
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

    def memory(self) -> dict:
        """The backend's static memory plan (peak bytes, buffers, saved for backward), if any."""
        if not isinstance(self.impl, MemoryPlan):
            raise NotImplementedError(f"the {self.backend_name} backend has no memory plan")
        return self.impl.memory()

    def source(self, stage: str | None = None) -> str:
        """The generated code (NumPy source, LLVM IR, or JAX source, per backend)."""
        return self.impl.source(stage)

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
        return "\n".join(rows)

    def __repr__(self):
        return f"<bpcompile.{type(self).__name__} {self.backend_name}: {self.signature.describe()}>"


class Compiled(Program):
    """A compiled loss-and-gradient function: `value, grads = fn(**inputs_and_params)`.

    Arguments may also go by position, in the order of `fn.signature.names` (see repr(fn)).
    """

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
        stages = [pipeline._stage("forward", [self.loss])]
        forward = pipeline.run_forward(self.loss, stages[0].hits)
        grads = _grad(forward, self.wrt)
        stages.append(pipeline._stage("adjoint", [forward] + list(grads)))
        self._build(
            [forward] + list(grads),
            ["loss"] + ["d" + n for n in self.grad_names],
            backend,
            passes,
            options,
            stages,
            t0,
        )
        # A backend may supply its own validated fast call path (see docs/architecture.md).
        caller = (self.impl.make_caller(self.signature, self.grad_names)
                  if isinstance(self.impl, FastCall) else None)
        self._call = caller or self._default_call
        if isinstance(caller, NativeCaller):
            # A C-level caller becomes the class's __call__ (a builtin is not bound to self),
            # so fn(**kw) reaches native code without a Python frame.
            self.__class__ = type(type(self).__name__, (type(self),),
                                  {"__call__": caller.bp_native})

    def as_jax_function(self) -> Callable[..., Any]:
        """(jax backend) `f(params: dict, **inputs) -> loss` for user JAX code; jax.grad of it
        runs this compiled backward (jax.custom_vjp). Composes with jax.jit and jax.vmap."""
        return self._jax("as_jax_function").as_jax_function(self.grad_names)

    def data_parallel(self, batch_inputs: Sequence[str] | dict[str, int] | None = None,
                      devices: Sequence[Any] | None = None) -> Any:
        """(jax backend) The same program with the batch axis of `batch_inputs` (names, or
        {name: axis}; default every input) sharded over `devices` (default jax.devices())."""
        return self._jax("data_parallel").data_parallel(
            self.signature, self.grad_names, batch_inputs, devices
        )

    def _title(self):
        return (
            f"bpcompile {self.backend_name} backend: loss and d/d({', '.join(self.grad_names)}); "
            f"args: {self.signature.describe()}"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        return self._call(*args, **kwargs)

    def _default_call(self, *args, **kwargs):
        arrays = self.signature.bind(kwargs, args)
        value, grads = self.impl.run(arrays)
        return value, dict(zip(self.grad_names, grads))


class Function(Program):
    """A compiled graph with any named outputs: `bp.function({"y": y, "g": g})(**args)` -> dict.

    Used for inference, Hessian-vector products, and training steps (new params as outputs).
    """

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
        self.args = _declared_order(leaves(nodes))
        _check_unique_names(self.args)
        self.signature = Signature(self.args, nodes)
        stages = [pipeline._stage("forward", nodes)]
        nodes = [pipeline.run_forward(n, stages[0].hits) if n.shape == () else n for n in nodes]
        self._build(nodes, self.names, backend, passes, options, stages, t0)

    def _title(self):
        return (
            f"bpcompile {self.backend_name} backend: outputs {', '.join(self.names)}; "
            f"args: {self.signature.describe()}"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
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
            passes: Sequence[str] | None = None, **options: Any) -> Compiled:
    """Compile `loss` and its gradient w.r.t. `wrt` (a list of params) for `backend`."""
    return Compiled(loss, wrt, backend, passes, **options)


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
