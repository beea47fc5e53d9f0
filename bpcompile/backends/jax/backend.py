"""JAX backend: the compiler's own forward+backward graph as jax.numpy source, run through XLA.

The simplified graph (after autodiff and every rewrite pass) is printed one statement per node
with the shared emitter (`pysource.emit_function`) and the jnp lowering table (`lower.py`),
exec'd, and wrapped in `jax.jit`. JAX never differentiates anything here: the backward pass is
ours, XLA only compiles it. So the derivative code you read with `fn.source()` is the code that
runs, on whatever device JAX's default backend is (CPU here, a GPU where present).

Calls:
- `fn(**arrays)` -> `(loss, {name: grad})`, JAX arrays on the default device. Inputs may be
  NumPy or JAX arrays, by keyword or by position. JAX arrays' shapes and dtypes are validated
  when JAX traces (once per new signature), so a call with an already-seen signature costs only
  JAX's own dispatch. NumPy arguments of exactly the declared dtypes go to JAX as they are
  (small ones as one vector per dtype, packing.py, `_dispatcher`); any other host value is
  first converted on the host by the rule of signature.py (byte order, casts, Python data).
  With `sync=True` (default) the call returns once the results are computed, like the NumPy
  backend; `sync=False` keeps JAX's asynchronous dispatch (queue the next step while this one
  runs).
- `fn.as_jax_function()` -> `f(params: dict, **inputs) -> loss` for use inside user JAX code;
  `jax.grad` of it runs our compiled backward through `jax.custom_vjp`.
- `fn.data_parallel(batch_inputs=...)` / `bp.compile(..., data_parallel=True)`: the same
  program with the batch axis of the data inputs sharded over `jax.devices()`.
"""

from __future__ import annotations

import functools
import operator
import os

import numpy as np

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ...errors import ArgumentError, BackendError
from ...ir.node import Node
from ...ir.printer import type_str
from ...ir.traverse import toposort
from ...rewrite.engine import BackendRules
from ..numpy.codegen import exec_source
from ..pysource import emit_function
from ..signature import check_host_range, check_names, refusal
from .lower import NAMESPACE, lower_program
from .packing import Packer, dtype_of, shape_of, signature_of, tuple_getter
from .rules import BACKEND_RULES

STAGES = (None, "jax", "stablehlo", "hlo")


def x64_enabled() -> bool:
    """Whether float64 arrays are available now (honours `jax.enable_x64` contexts)."""
    return jax.dtypes.canonicalize_dtype(np.float64) == np.dtype(np.float64)


def _require_x64(nodes, where: str):
    if x64_enabled():
        return
    wide = [n for n in nodes if n.dtype == "float64"]
    if wide:
        n = wide[0]
        what = n.attr("name") if n.op in ("input", "param") else n.op
        raise BackendError(
            f"jax backend ({where}): the graph uses float64 ({what}: {type_str(n)}) but JAX "
            "has 64-bit types disabled, so XLA would silently compute in float32. Enable them "
            "first: jax.config.update('jax_enable_x64', True) (or JAX_ENABLE_X64=1), or "
            "declare the graph in float32."
        )


class JaxBackend:
    """Compiles (outputs, args) to a jitted function of the arg names (keyword arguments)."""

    name = "jax"

    @classmethod
    def backend_rules(cls, options: dict) -> BackendRules:
        """rules.py's rule list (the pipeline applies it, protocol.Rewrites)."""
        return BACKEND_RULES

    def __init__(
        self,
        outputs: list[Node],
        args: list[Node],
        title: str = "",
        sync: bool = True,
        data_parallel: bool = False,
        batch_inputs=None,
        devices=None,
    ):
        self.outputs, self.args = list(outputs), list(args)
        self.names = [a.attr("name") for a in args]
        self.by_name = dict(zip(self.names, args))
        self.sync = bool(sync)
        self._all_nodes = toposort(self.outputs) + self.args
        _require_x64(self._all_nodes, "compile")
        self.src, consts = emit_function(
            self.outputs, self.args, lower_program, "forward_backward", "jnp", title
        )
        self.consts, self.namespace = consts, NAMESPACE  # for the standalone module text
        consts = {k: jnp.asarray(v) for k, v in consts.items()}  # so `const @ x` stays jnp
        self.fn = exec_source(self.src, consts, "forward_backward", NAMESPACE)
        traced = self._traced

        def forward_backward(**arrays):  # the name JAX gives the jitted/lowered module
            return traced(**arrays)

        def forward_backward_positional(*arrays):
            return traced(**dict(zip(self.names, arrays)))

        forward_backward_positional.__name__ = "forward_backward"
        self._positional = forward_backward_positional
        self.jitted = jax.jit(forward_backward)  # by keyword (as_jax_function)
        # By position: the call path (JAX's C++ dispatch takes positional arrays faster than
        # keywords, which it flattens as a dict) and `lowered()`.
        self.jitted_positional = jax.jit(forward_backward_positional)
        self.dp = None
        if data_parallel or batch_inputs is not None:
            self.dp = DataParallel(self, batch_inputs, devices)

    # -- tracing (runs once per new argument signature) -------------------------------------
    def _traced(self, **kw):
        """The traced body: validate the abstract arguments, cast, run the emitted function."""
        _require_x64(self._all_nodes, "call")
        check_names(self.args, kw)
        return self.fn(*[self._arg(n, kw[n]) for n in self.names])

    def _arg(self, name: str, v):
        node = self.by_name[name]
        # Python numbers are weakly typed (signature.refusal): traced as weak-typed scalars
        weak = isinstance(v, (list, tuple)) or getattr(getattr(v, "aval", None), "weak_type", 0)
        if isinstance(v, (list, tuple)):  # nested Python sequences, as NumPy would take them
            try:
                v = jnp.asarray(v)
            except (TypeError, ValueError) as e:
                raise ArgumentError(
                    f"argument {name!r}: cannot convert {type(v).__name__} to an array ({e})"
                ) from None
        if not hasattr(v, "shape") or not hasattr(v, "dtype"):
            raise ArgumentError(
                f"argument {name!r}: expected an array {type_str(node)}, got {type(v).__name__}"
            )
        dt = np.dtype(v.dtype)
        why = refusal(name, node, dt, bool(weak))
        if why:
            raise ArgumentError(why)
        if tuple(v.shape) != node.shape:
            raise ArgumentError(
                f"argument {name!r}: expected shape {node.shape} "
                f"({node.dtype}), got {tuple(v.shape)}"
            )
        return v if dt == np.dtype(node.dtype) else v.astype(node.dtype)

    # -- the Backend interface ------------------------------------------------------------
    def abstract_args(self) -> dict:
        return {
            n: jax.ShapeDtypeStruct(a.shape, np.dtype(a.dtype))
            for n, a in zip(self.names, self.args)
        }

    def lowered(self):
        """`jax.stages.Lowered` for the program at its declared shapes and dtypes (sharded
        over the mesh when compiled with data_parallel)."""
        if self.dp is not None:
            return self.dp.lowered()
        args = self.abstract_args()  # positional, so the module's arguments keep our order
        return self.jitted_positional.lower(*[args[n] for n in self.names])

    def source(self, stage: str | None = None) -> str:
        """stage None/"jax": the emitted jax.numpy source; "stablehlo": the StableHLO module
        JAX lowers it to; "hlo": XLA's optimised HLO for the default device."""
        if stage in (None, "jax"):
            return self.src
        if stage == "stablehlo":
            return self.lowered().as_text()
        if stage == "hlo":
            return self.lowered().compile().as_text()
        raise ArgumentError(f"jax backend: unknown source stage {stage!r}; choose from {STAGES}")

    def run(self, arrays: list):
        if self.dp is not None:
            return self.dp.run(arrays)
        first, rest = self.jitted_positional(*arrays)
        if self.sync:
            first.block_until_ready()
        return first, list(rest)

    def make_caller(self, signature, grad_names):
        """The fast call path: `fn(**arrays)` goes straight to a jitted program.

        Per call: one C-level pick of the arguments out of the keywords in program order,
        JAX's C++ dispatch of the positional program, the gradients paired with their names
        (in wrt order; a dict out of jit would come back sorted by name) and a block on the
        loss (with sync). A missing or unexpected name surfaces as a failed pick or a wrong
        count and only then gets its ArgumentError; shapes and dtypes are checked when JAX
        traces (once per new signature, see `_traced`), after host values of other dtypes,
        byte orders or types are converted by signature.py's rule (`_dispatcher`). When every
        argument is a NumPy array of its declared dtype and shape, the small ones cross to the
        device packed (packing.py). Positional arguments are named by `signature.call_positional`.
        """
        if self.dp is not None:
            return self.dp.make_caller(signature, grad_names)
        jitted, names, sync = self.jitted_positional, tuple(grad_names), self.sync
        pick, count, bad = tuple_getter(self.names), len(self.names), self._bad_names
        bounds = _host_bounds(signature)
        positional = signature.call_positional
        dispatch = _dispatcher(jitted, Packer(self.args, self._positional),
                               _host_converter(signature, self.names))
        wait = _waiter(self._all_nodes)
        if not bounds and sync:

            def call(*pos, **kw):
                if pos:  # named in signature order (signature.merge)
                    return positional(call, pos, kw)
                if len(kw) != count:
                    bad(kw)
                try:
                    args = pick(kw)
                except KeyError:
                    bad(kw)
                value, grads = dispatch(args)
                grads = dict(zip(names, grads))  # while XLA runs: see `_SYNC_NOTE`
                wait(value)  # one executable: every output is ready with the loss
                return value, grads

            # A partial is not bound as a method, so Compiled can make it its __call__ and
            # fn(**kw) skips one Python frame (see Compiled.__init__).
            call.bp_native = functools.partial(call)
            return call

        def call_checked(*pos, **kw):
            if pos:
                return positional(call_checked, pos, kw)
            if len(kw) != count:
                bad(kw)
            try:
                args = pick(kw)
            except KeyError:
                bad(kw)
            for name, bound in bounds:
                check_host_range(name, kw[name], bound)
            value, grads = dispatch(args)
            grads = dict(zip(names, grads))
            if sync:
                wait(value)
            return value, grads

        call_checked.bp_native = functools.partial(call_checked)
        return call_checked

    def _bad_names(self, kw):
        """Raise the ArgumentError naming what is missing or unexpected in `kw`."""
        try:
            check_names(self.args, kw)
        except ArgumentError as e:
            raise e from None  # not "during handling of KeyError"
        raise ArgumentError(f"arguments {sorted(kw)} do not match {self.names}")  # unreachable

    def as_jax_function(self, grad_names):
        from .interop import as_jax_function

        return as_jax_function(self, list(grad_names))

    def data_parallel(self, signature, grad_names, batch_inputs=None, devices=None):
        return DataParallel(self, batch_inputs, devices).make_caller(signature, grad_names)


# _SYNC_NOTE: XLA:CPU runs a program of over ~1000 flops on a worker thread, which spins for
# ~10 us after finishing and then sleeps; waking it again cost ~45 us on our 2-core VM. So on
# small models, whatever Python does between a result being ready and the next dispatch decides
# whether the next call takes 15 us or 60 us: the caller's work after a sync call is not
# overlapped with XLA, so the call does its own bookkeeping before it blocks.


SPIN_WORK = 100_000  # elements computed (multiply-adds for matmuls) below which a call spins
SPIN_POLLS = 64  # is_ready() polls before blocking: ~17 us at ~0.26 us each


def _waiter(nodes):
    """value -> None once `value` is computed. For a small program (under SPIN_WORK) the
    caller polls `is_ready()` for up to SPIN_POLLS times before it blocks: a thread that
    sleeps in block_until_ready must be woken by XLA's worker, and on a VM that wake-up can
    cost more than the whole program, and it delays the next dispatch past the worker's spin
    window (_SYNC_NOTE). mlp_small with NumPy arguments: calls in the slow mode 19-24 % ->
    3-4 %. Bigger programs, and any program on a single usable CPU (where polling would keep
    XLA's worker from running), block at once."""
    if _work(nodes) > SPIN_WORK or _usable_cpus() < 2:  # with one CPU, polling starves XLA
        return operator.methodcaller("block_until_ready")

    def wait(value):
        ready = value.is_ready
        for _ in range(SPIN_POLLS):
            if ready():
                return
        value.block_until_ready()

    return wait


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _work(nodes) -> int:
    """A rough size of the program: elements of every node, K times that for matmuls."""
    total = 0
    for n in nodes:
        k = n.inputs[0].shape[-1] if n.op == "matmul" else 1
        total += n.size * k
    return total


def _dispatcher(jitted, packer, convert):
    """args -> the program's outputs: packed when every argument is a NumPy array of its
    declared dtype and shape (packing.py); the positional program directly when every
    argument is a JAX array (validated when JAX traces); anything else is first converted on
    the host by `convert` (signature.py's rule), so JAX never sees a NumPy array of another
    dtype than the declared one. (A warm jit reads a byte-swapped array's bytes as native:
    `jax.jit(f)(a.astype(">f4"))` returned 0.0 for 6.0 with JAX 0.10.)

    The exact shape and dtype test runs after the packed dispatch, while XLA computes (on the
    NumPy path it would otherwise sit between one result and the next dispatch, _SYNC_NOTE):
    a call that fails it discards the packed result and runs the converting path, which raises
    the ArgumentError or converts. Before the dispatch come only the type test and the few
    unpacked arguments' test (Packer.rest_signature).
    """
    host, shapes, dtypes = packer.types, packer.shapes, packer.dtypes
    device = (_DEVICE_ARRAY,) * len(host)

    def slow(args):
        return jitted(*convert(args))

    if not packer.useful:

        def dispatch_unpacked(args):
            types = tuple(map(type, args))
            if types == device or (types == host and tuple(map(dtype_of, args)) == dtypes):
                return jitted(*args)  # (shapes: a new one retraces, and _traced checks it)
            return slow(args)

        return dispatch_unpacked
    packed, rest, rest_signature = packer.call, packer.rest, packer.rest_signature

    def dispatch(args):
        types = tuple(map(type, args))
        if types != host:
            return jitted(*args) if types == device else slow(args)
        if rest is not None and tuple(map(signature_of, rest(args))) != rest_signature:
            return slow(args)
        out = packed(args)  # None when the bytes do not add up to the declared sizes
        if (
            out is None
            or tuple(map(shape_of, args)) != shapes
            or tuple(map(dtype_of, args)) != dtypes
        ):
            return slow(args)
        return out

    return dispatch


_DEVICE_ARRAY = type(jnp.zeros(()))  # JAX's concrete array class (jax.Array is abstract)


def _host_converter(signature, names):
    """args -> args with every host value (NumPy arrays and scalars, Python data) converted by
    signature.py's rule; JAX arrays and tracers pass through (checked when JAX traces)."""
    conv = signature.convert

    def convert(args):
        return [a if isinstance(a, jax.Array) else conv(n, a) for n, a in zip(names, args)]

    return convert


def _host_bounds(signature) -> list:
    return list(signature.bounds.items())


class DataParallel:
    """Shard the batch axis of the data inputs over devices; params and outputs replicated.

    The whole program (forward and our backward) is compiled once with `jax.jit` and
    `NamedSharding`s; XLA's SPMD partitioner splits every op along the batch axis and inserts
    the all-reduces wherever the graph sums over it. A mean stays a mean over the *global*
    batch (the graph's 1/N is the global N), so results equal the single-device run up to the
    order of floating-point summation.
    """

    def __init__(self, backend: JaxBackend, batch_inputs=None, devices=None):
        self.backend = backend
        self.devices = list(devices) if devices is not None else jax.devices()
        self.mesh = Mesh(np.array(self.devices), ("batch",))
        self.axes = self._batch_axes(batch_inputs)
        ndev = len(self.devices)
        specs = []
        for name, a in zip(backend.names, backend.args):
            ax = self.axes.get(name)
            if ax is None:
                specs.append(PartitionSpec())
                continue
            if a.shape[ax] % ndev:
                raise BackendError(
                    f"jax data parallel: batch input {name!r} ({type_str(a)}) has size "
                    f"{a.shape[ax]} on axis {ax}, not divisible by {ndev} devices; pick a "
                    f"batch size that is a multiple of {ndev} or pass devices=[...]"
                )
            specs.append(PartitionSpec(*([None] * ax + ["batch"])))
        self.in_shardings = tuple(NamedSharding(self.mesh, s) for s in specs)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.jitted = jax.jit(
            backend._positional, in_shardings=self.in_shardings, out_shardings=self.replicated
        )

    def _batch_axes(self, batch_inputs) -> dict:
        be = self.backend
        if batch_inputs is None:  # every data input with a leading axis
            return {n: 0 for n, a in zip(be.names, be.args) if a.op == "input" and a.ndim}
        axes = (
            dict(batch_inputs) if isinstance(batch_inputs, dict) else {n: 0 for n in batch_inputs}
        )
        for n, ax in axes.items():
            if n not in be.by_name:
                raise ArgumentError(
                    f"jax data parallel: {n!r} is not an argument; arguments: {be.names}"
                )
            nd = be.by_name[n].ndim
            if not -nd <= ax < nd:
                raise ArgumentError(
                    f"jax data parallel: axis {ax} out of range for {n!r} "
                    f"({type_str(be.by_name[n])})"
                )
            axes[n] = ax % nd
        return axes

    def shard(self, **arrays) -> dict:
        """Place arrays with this program's shardings. With several processes each process
        passes, for a batch input, either its own rows (the global batch divided by
        `jax.process_count()`, in process order) or the whole global batch; a `jax.Array`
        already of the global shape is passed through."""
        out = {}
        for name, s in zip(self.backend.names, self.in_shardings):
            if name not in arrays:
                continue
            v = arrays[name]
            shape = self.backend.by_name[name].shape
            if isinstance(v, jax.Array) and tuple(v.shape) == shape:
                out[name] = v
            elif jax.process_count() > 1 and name in self.axes:
                # global_shape: local rows and the full global batch are both accepted
                out[name] = jax.make_array_from_process_local_data(s, np.asarray(v), shape)
            else:
                out[name] = jax.device_put(v, s)
        return out

    def lowered(self):
        args = self.backend.abstract_args()
        return self.jitted.lower(*[args[n] for n in self.backend.names])

    def run(self, arrays: list):
        """The sharded program on positional arrays (sharded by `shard` or host arrays)."""
        try:
            first, rest = self.jitted(*arrays)
            if self.backend.sync:
                first.block_until_ready()
        except jax.errors.JaxRuntimeError as e:
            if jax.process_count() < 2:
                raise
            raise _peer_error(e) from e
        return first, list(rest)

    def make_caller(self, signature, grad_names):
        jitted, names, sync = self.jitted, tuple(grad_names), self.backend.sync
        order = tuple(self.backend.names)
        bounds = _host_bounds(signature)
        convert = _host_converter(signature, order)

        def call(*pos, **kw):
            if pos:
                return signature.call_positional(call, pos, kw)
            missing = [n for n in order if n not in kw]
            if missing or len(kw) != len(order):
                self.backend._traced(**kw)  # raises the ArgumentError naming what is wrong
            for name, bound in bounds:
                check_host_range(name, kw.get(name), bound)
            try:
                value, grads = jitted(*convert([kw[n] for n in order]))
                if sync:
                    value.block_until_ready()
            except jax.errors.JaxRuntimeError as e:
                if jax.process_count() < 2:
                    raise
                raise _peer_error(e) from e
            return value, dict(zip(names, grads))

        call.mesh, call.shard, call.lowered = self.mesh, self.shard, self.lowered
        call.source = lambda stage=None: (
            self.lowered().as_text() if stage == "stablehlo" else self.backend.source(stage)
        )
        return call


def _peer_error(e: Exception) -> BackendError:
    """A runtime failure of a program sharded over several processes is, in practice, a
    collective that lost a peer (killed, crashed, unreachable): say so, not only Gloo's words.
    (With one process the caller re-raises JAX's own error unchanged.)"""
    return BackendError(
        f"jax data parallel: the sharded program failed in process {jax.process_index()} of "
        f"{jax.process_count()}; another process has probably died or become unreachable "
        f"(a collective lost its peer). Stop every process and restart them from the last "
        f"checkpoint. JAX said: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    )
