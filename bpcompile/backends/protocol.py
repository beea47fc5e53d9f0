"""What the front end (`compiled.py`, `train/step.py`) needs of a backend, declared once.

Every backend is a `Backend`; the optional capabilities are protocols of their own, tested
with `isinstance` where a `hasattr` probe used to guess: `FastCall` (its own validated call
path; LLVM and JAX), `MemoryPlan` (`fn.memory()`; LLVM), `InPlace` (pinned native callers
whose outputs stay in place, for ping-pong training steps; LLVM) and `JaxProgram` (the
JAX-only inspection and interop methods). A capability a backend lacks is an error that
names the backend, never an AttributeError. A backend *class* may also be `Rewrites`: it
brings its own rewrite rules, which the pipeline applies before constructing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # annotations only
    from ..rewrite.engine import BackendRules
    from .signature import Signature


@runtime_checkable
class Backend(Protocol):
    """A compiled graph: `run` takes the arguments (converted, in `args` order) and returns
    (first output, [other outputs]); `source` the generated code at a stage."""

    name: str

    def run(self, arrays: list[Any]) -> tuple[Any, Sequence[Any]]: ...

    def source(self, stage: str | None = None) -> str: ...


# A backend's constructor: `cls(outputs, args, title=..., **options)`; each backend names the
# options it takes, and refuses others.
BackendClass = Callable[..., Backend]


@runtime_checkable
class Rewrites(Protocol):
    """A backend class with rewrite rules of its own (its `rules.py`), for the shared engine
    to apply after the shared passes; `options` are the compile's backend options."""

    @classmethod
    def backend_rules(cls, options: dict[str, Any]) -> BackendRules: ...


@runtime_checkable
class NativeCaller(Protocol):
    """A caller backed by a C-level builtin, which `Compiled` installs as its `__call__`."""

    bp_native: Callable[..., Any]


class Arena(Protocol):
    """A native output (and workspace) buffer set; the outputs are views into it."""

    out_arrays: list[np.ndarray]


class PinnedCaller(NativeCaller, Protocol):
    """A native caller over one arena of its own, read in place by the train step."""

    arena: Arena


@runtime_checkable
class FastCall(Protocol):
    """A backend with its own validated call path (None when unavailable for this graph)."""

    def make_caller(self, signature: Signature,
                    grad_names: list[str]) -> Callable[..., Any] | None: ...


@runtime_checkable
class InPlace(Protocol):
    """A backend whose pinned callers write fixed native buffers (ping-pong training)."""

    def new_arena(self) -> Arena: ...

    def make_caller(self, signature: Signature, grad_names: list[str],
                    pinned: bool = False) -> Any: ...


@runtime_checkable
class KernelStats(Protocol):
    """Native kernels: `kernel_stats` = {"llvm_kernels": distinct functions, "llvm_kernel_calls":
    the steps calling them} (LLVM; issue #14). `fn.stats()` reports it."""

    kernel_stats: dict[str, int]


@runtime_checkable
class MemoryPlan(Protocol):
    """A backend with a static memory plan (peak bytes, buffers, saved for backward) and the
    bytes live at each step of its schedule (docs/memory.md)."""

    def memory(self) -> dict[str, Any]: ...

    def memory_timeline(self) -> list[dict[str, Any]]: ...


class Sharding(Protocol):
    """A data-parallel program: places a batch with the program's shardings."""

    def shard(self, **arrays: Any) -> dict[str, Any]: ...


@runtime_checkable
class JaxProgram(Protocol):
    """The JAX backend's extras: lowering, JAX interop and data parallelism."""

    dp: Sharding | None

    def lowered(self) -> Any: ...

    def as_jax_function(self, grad_names: list[str]) -> Callable[..., Any]: ...

    def data_parallel(self, signature: Signature, grad_names: list[str],
                      batch_inputs: Any = None, devices: Any = None) -> Any: ...
