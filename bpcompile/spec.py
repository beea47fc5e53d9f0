"""Model specs: a declarative TOML file or a Python model file, loaded into a `Model`.

A TOML spec declares inputs, a layer stack, a loss, parameter init and optional literal data;
a Python model file defines `build()`. Both give a `Model` holding the loss node, the params
to differentiate, and ways to make example params and inputs. This module reads and validates
specs; layer types and losses are looked up in the registries of `spec_registry.py` (`LAYERS`,
`LOSSES`), so a new layer is one `@layer("conv2d")` function and no change to the parser, and
initialisers are `initializers.Init`. Every malformed spec raises `SpecError` naming the file,
the table or key, and what was expected. The format is documented in docs/spec.md.
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import enum
import importlib.util
import re
import sys
import traceback
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from . import nn
from .errors import BPError, SpecError
from .initializers import DEFAULT_SCALE, INIT_METHODS, Init
from .ir.dtypes import DTYPES, FLOATS, is_float
from .ir.node import LOCATION_OVERRIDE, Node
from .ir.traverse import consumers, leaves, toposort
from .ops.index import input_ranges
from .ops.leaves import input as _input
from .ops.leaves import param as _param
from .spec_registry import (
    ACTIVATIONS,
    LAYERS,
    LOSSES,
    LayerBuilder,
    LayerContext,
    LossDef,
    layer,
    loss,
)
from .toml_read import toml_module

if TYPE_CHECKING:  # annotations only: compiled.py is imported when a model compiles
    from .compiled import Compiled

# Public names of the registries and initialisers are re-exported: `bpcompile.spec` stays the
# one import for spec users.
__all__ = ["Model", "Init", "LAYERS", "LOSSES", "ACTIVATIONS", "INIT_METHODS", "layer", "loss",
           "load", "load_toml", "load_python", "from_dict", "LayerContext", "LayerBuilder",
           "LossDef", "DEFAULT_SCALE"]

class _Missing(enum.Enum):
    """The default of a required key: its absence is an error."""

    MISSING = 0


_MISSING = _Missing.MISSING


# ---- the Model ----------------------------------------------------------------------------
@dataclass
class Model:
    """A loss, the params to differentiate, and example values for both.

    `inputs` (in calling order) defaults to every `bp.input` leaf of the loss, also when
    given empty. `data` holds literal arrays by name
    (inputs or params) that override random ones. `init` maps a param name to its `Init`
    (params not listed use `default_init`). `input_kinds` says how to sample an input:
    ("normal",), ("unit",) for [0, 1), ("onehot",) or ("int", high); int inputs that feed
    `one_hot`/`take` get their range from the graph.
    """

    loss: Node
    wrt: list[Node]
    inputs: list[Node] = field(default_factory=list)
    name: str = "model"
    data: dict = field(default_factory=dict)
    init: dict = field(default_factory=dict)
    default_init: Init = field(default_factory=Init)
    seed: int = 0
    input_kinds: dict = field(default_factory=dict)
    source: str | None = None
    feedback: dict = field(default_factory=dict)  # [feedback]: {"mode": ..., "seed": ...}
    # mixed precision ([model] precision, loss_scale): the defaults of compile / training
    precision: str | None = None
    loss_scale: str | float | None = None
    # [memory]: memory_budget / compress_activations, defaults of compile() and train steps
    memory: dict = field(default_factory=dict)

    def __post_init__(self):
        where = self.source or self.name
        if not isinstance(self.loss, Node):
            raise SpecError(f"{where}: loss must be a bpcompile Node, "
                            f"got {type(self.loss).__name__}")
        if isinstance(self.wrt, Node):
            self.wrt = [self.wrt]
        self.wrt = list(self.wrt)
        for w in self.wrt:
            if not isinstance(w, Node) or w.op != "param":
                raise SpecError(f"{where}: wrt must be a list of bp.param nodes, got {w!r}")
        graph_inputs = leaves([self.loss], ops=("input",))
        if not self.inputs:
            self.inputs = graph_inputs
        self.inputs = list(self.inputs)
        for kind_input in graph_inputs:
            if kind_input.attr("name") not in self.input_kinds:
                kind = _infer_kind(self.loss, kind_input)
                if kind is not None:
                    self.input_kinds[kind_input.attr("name")] = kind

    # -- names ----------------------------------------------------------------------------
    @property
    def params(self) -> list[Node]:
        """Every param leaf of the loss (the `wrt` ones and any held fixed)."""
        return leaves([self.loss], ops=("param",))

    def describe(self) -> str:
        def sig(n):
            return f"{n.attr('name')}:{n.dtype}{list(n.shape)}"

        return (f"model {self.name}: inputs {', '.join(sig(n) for n in self.inputs)}; "
                f"params {', '.join(sig(n) for n in self.params)}")

    # -- example values -------------------------------------------------------------------
    def init_params(self, seed: int | None = None) -> dict:
        """Initial values for every param: literal data if given, else sampled per its Init."""
        seed = self.seed if seed is None else seed
        out = {}
        for i, p in enumerate(self.params):
            name = p.attr("name")
            if name in self.data:
                out[name] = np.array(self.data[name], dtype=p.dtype)
                continue
            rng = np.random.default_rng([int(seed), i])
            out[name] = self.init.get(name, self.default_init).sample(rng, p.shape, p.dtype)
        return out

    def example_inputs(self, seed: int | None = None) -> dict:
        """Values for every input: literal data if given, else random of the right shape/dtype
        (int labels within their class range)."""
        seed = self.seed if seed is None else seed
        out = {}
        for i, x in enumerate(self.inputs):
            name = x.attr("name")
            if name in self.data:
                out[name] = np.array(self.data[name], dtype=x.dtype)
                continue
            rng = np.random.default_rng([int(seed), 1000 + i])
            out[name] = _sample_input(rng, x, self.input_kinds.get(name))
        return out

    def compile(self, backend: str = "numpy", **options: Any) -> Compiled:
        """`bp.compile(self.loss, self.wrt, backend)` (with the spec's `precision` unless
        `options` give one)."""
        from .compiled import compile as _compile

        if options.get("precision") is None and self.precision is not None:
            options["precision"] = self.precision

        # Nodes the passes create cite the model file rather than the caller of compile().
        LOCATION_OVERRIDE.append(Path(self.source).name if self.source else self.name)
        if self.feedback and "feedback" not in options:  # the spec's [feedback] table
            options = {"feedback": self.feedback["mode"],
                       "feedback_seed": self.feedback.get("seed", 0), **options}
        try:
            return _compile(self.loss, self.wrt, backend, **{**self.memory, **options})
        finally:
            LOCATION_OVERRIDE.pop()


def _infer_kind(loss: Node, x: Node):
    """The int range of an input that feeds one_hot (depth n) or take (axis size); for a float
    loss target, what its loss recorded (BCE targets in [0, 1), soft labels one-hot)."""
    if x.dtype != "int32":
        return nn.TARGET_KINDS.get(x)
    order = toposort([loss])
    for user in consumers(order)[x]:
        if user.op == "one_hot":
            return ("int", user.attr("n"))
        if user.op == "take" and user.inputs[1] is x:
            return ("int", user.inputs[0].shape[user.attr("axis")])
    return None


def _sample_input(rng, x: Node, kind) -> np.ndarray:
    kind = kind or (("int", 2) if x.dtype == "int32" else ("normal",))
    if x.dtype == "bool":
        return rng.random(x.shape) < 0.5
    if kind[0] == "int":
        return rng.integers(0, kind[1], x.shape).astype(x.dtype)
    if kind[0] == "unit":
        return rng.random(x.shape).astype(x.dtype)
    if kind[0] == "onehot":
        n = x.shape[-1] if x.shape else 1
        idx = rng.integers(0, n, x.shape[:-1])
        return (idx[..., None] == np.arange(n)).astype(x.dtype)
    return rng.standard_normal(x.shape).astype(x.dtype)


# ---- reading TOML tables with located errors ------------------------------------------------
class Table:
    """A spec table that remembers where it came from and which keys were read, so every
    error names the file and table, and unread (unknown) keys are reported with a suggestion."""

    def __init__(self, data: Any, source: str, loc: str, line: int | None = None):
        self.source, self.loc, self.line = source, loc, line  # line: the table's header line
        if not isinstance(data, dict):
            self.error(f"expected a table, got {_describe(data)}")
        self.data = data
        self.used: set[str] = set()  # keys read, for `finish`

    def error(self, msg: str, key: str | None = None) -> NoReturn:
        where = f"{self.loc}, key {key!r}" if key else self.loc
        at = f":{self.line}" if self.line else ""
        raise SpecError(f"{self.source}{at}: {where}: {msg}")

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = _MISSING, expected: str = "a value") -> Any:
        """The value at `key` as TOML gave it (any type), or `default` when absent."""
        self.used.add(key)
        if key not in self.data:
            if default is _MISSING:
                self.error(f"missing key {key!r} (expected {expected})")
            return default
        return self.data[key]

    def _absent(self, key: str, default: object) -> bool:
        """Whether `key` is absent and has a default to return instead (then it counts as
        read). A default is returned as given, never checked."""
        if key in self.data or default is _MISSING:
            return False
        self.used.add(key)
        return True

    # `int`, `float`, `bool` and `str` are methods of this class, so annotations below their
    # definitions name the types as `builtins.int` etc.
    def int(self, key: str, default: int | _Missing = _MISSING,
            min: int | None = None) -> int:  # noqa: A002
        expected = "an integer" + (f" >= {min}" if min is not None else "")
        if not isinstance(default, _Missing) and self._absent(key, default):
            return default
        v = self.raw(key, _MISSING, expected)
        if isinstance(v, bool) or not isinstance(v, int) or (min is not None and v < min):
            self.error(f"expected {expected}, got {v!r}", key)
        return v

    def float(self, key: str, default: float | _Missing = _MISSING) -> float:
        if not isinstance(default, _Missing) and self._absent(key, default):
            return default
        v = self.raw(key, _MISSING, "a number")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.error(f"expected a number, got {v!r}", key)
        return float(v)

    def scale(self, key: str,
              default: builtins.float | None | _Missing = _MISSING) -> builtins.float | None:
        """An init scale: finite and >= 0 (nan/inf would give nan params silently); `default`
        (None: none given) when absent."""
        if not isinstance(default, _Missing) and self._absent(key, default):
            return default
        v = self.float(key)
        if not (np.isfinite(v) and v >= 0):
            self.error(f"init scale must be a finite number >= 0, got {v}; e.g. scale = 0.1",
                       key)
        return v

    def bool(self, key: str, default: builtins.bool | _Missing = _MISSING) -> builtins.bool:
        if not isinstance(default, _Missing) and self._absent(key, default):
            return default
        v = self.raw(key, _MISSING, "true or false")
        if not isinstance(v, bool):
            self.error(f"expected true or false, got {v!r}", key)
        return v

    def str(self, key: str, default: str | _Missing = _MISSING,
            choices: Collection[builtins.str] | None = None) -> str:
        expected = f"one of {list(choices)}" if choices else "a string"
        if not isinstance(default, _Missing) and self._absent(key, default):
            return default
        v = self.raw(key, _MISSING, expected)
        if not isinstance(v, str):
            self.error(f"expected {expected}, got {v!r}", key)
        if choices and v not in choices:
            self.error(f"unknown value {v!r}; expected {expected}{_suggest(v, choices)}", key)
        return v

    def shape(self, key: builtins.str) -> tuple[builtins.int, ...]:
        v = self.raw(key, _MISSING, "a list of non-negative integers, e.g. [128, 784]")
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v):
            self.error(f"expected a list of non-negative integers, e.g. [128, 784], got {v!r}", key)
        return tuple(v)

    def check_keys(self, allowed: Collection[builtins.str]) -> None:
        """Reject keys outside `allowed` up front (so a typo beats a 'missing key' error)."""
        for k in self.data:
            if k not in allowed:
                self.error(f"unknown key {k!r}{_suggest(k, allowed)}; "
                           f"known keys here: {sorted(allowed)}")

    def finish(self, allowed_extra: Collection[builtins.str] = ()) -> None:
        """Raise on keys nobody read: a typo like `unit` for `units` must not pass silently."""
        unknown = [k for k in self.data if k not in self.used and k not in allowed_extra]
        if unknown:
            known = sorted(self.used | set(allowed_extra))
            k = unknown[0]
            self.error(f"unknown key {k!r}{_suggest(k, known)}; known keys here: {known}")


def _describe(v) -> str:
    return f"{type(v).__name__} {v!r}" if not isinstance(v, (dict, list)) else type(v).__name__


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""



# ---- the TOML spec builder ------------------------------------------------------------------
TOP_KEYS = ("model", "inputs", "layers", "loss", "init", "data", "feedback", "memory")
PRECISIONS = ("float32", "bfloat16", "float16")


class SpecBuilder:
    """Turns a parsed spec document into a Model, one table at a time."""

    def __init__(self, doc: dict, source: str, default_name: str, text: str | None = None):
        self.source = source
        self.lines = _header_lines(text or "")
        self.top = Table(doc, source, "<top level>")
        self.nodes: dict[str, Node] = {}  # inputs and layer outputs by name
        self.params: dict[str, Node] = {}
        self.param_init: dict[str, Init] = {}
        self.activations: dict[Node, str] = {}  # layer output -> its activation
        self.input_kinds: dict[str, tuple] = {}
        self.default_name = default_name

    def build(self) -> Model:
        top = self.top
        top.check_keys(TOP_KEYS)
        model = Table(top.raw("model", {}), self.source, "[model]")
        name = model.str("name", self.default_name)
        self.dtype = model.str("dtype", "float32", choices=FLOATS)
        precision, loss_scale = self._read_precision(model)
        model.str("description", "")
        model.finish()
        self._read_init(top.raw("init", {}))
        inputs = self._read_inputs(top.raw("inputs", _MISSING, "an [[inputs]] array of tables"))
        out = self._read_layers(top.raw("layers", _MISSING, "a [[layers]] array of tables"))
        loss_node = self._read_loss(top.raw("loss", _MISSING, "a [loss] table"), out)
        used = {n.attr("name") for n in leaves([loss_node], ops=("input",))}
        for x in inputs:
            if x.attr("name") not in used:
                Table({}, self.source, "[inputs]").error(
                    f"input {x.attr('name')!r} is declared but not used by any layer or the loss")
        data = self._read_data(top.raw("data", {}),
                               input_ranges(toposort([loss_node]), wrap=False))
        feedback = self._read_feedback(top.raw("feedback", {}))
        memory = self._read_memory(top.raw("memory", {}))
        top.finish()
        return Model(loss_node, list(self.params.values()), inputs, name=name, data=data,
                     init=self.param_init, default_init=self.init, seed=self.seed,
                     input_kinds=self.input_kinds, source=self.source, feedback=feedback,
                     precision=precision, loss_scale=loss_scale, memory=memory)

    # -- [feedback]: train with feedback alignment (autodiff/feedback.py) -----------------
    def _read_feedback(self, raw) -> dict:
        if isinstance(raw, str):
            raw = {"mode": raw}
        if not raw:
            return {}
        t = Table(raw, self.source, "[feedback]", self.line_of("feedback", 0))
        out = {"mode": t.str("mode", choices=("alignment", "direct")),
               "seed": t.int("seed", 0, min=0)}
        t.finish()
        return out

    def _read_precision(self, model: Table) -> tuple[str | None, str | float | None]:
        """[model] precision ("float32" | "bfloat16" | "float16") and loss_scale ("dynamic"
        or a positive number), as bp.compile / compile_train_step take them."""
        precision = model.str("precision", None, choices=PRECISIONS)  # type: ignore[arg-type]
        if precision not in (None, "float32") and self.dtype != "float32":
            model.error(f"mixed precision keeps float32 master weights: precision = "
                        f"{precision!r} needs dtype = \"float32\", got {self.dtype!r}",
                        "precision")
        scale = model.raw("loss_scale", None)
        ok = scale == "dynamic" or (isinstance(scale, (int, float)) and not isinstance(
            scale, bool) and np.isfinite(scale) and scale > 0)
        if scale is not None and not ok:
            model.error(f"expected \"dynamic\" or a finite number > 0 (a static scale), got "
                        f"{scale!r}", "loss_scale")
        return precision, (float(scale) if ok and scale != "dynamic" else scale)

    # -- [memory] -------------------------------------------------------------------------
    def _read_memory(self, raw) -> dict:
        """`budget` (bytes or "64MB": memory_budget=) and `compress_activations`."""
        from .budget import parse_budget
        from .rewrite.compress import MODES

        t = Table(raw, self.source, "[memory]", self.line_of("memory", 0))
        out: dict = {}
        if t.has("budget"):
            v = t.raw("budget", _MISSING, 'bytes or a string like "64MB"')
            try:
                out["memory_budget"] = parse_budget(v)
            except ValueError as e:
                t.error(str(e), "budget")
        if t.has("compress_activations"):
            out["compress_activations"] = t.str("compress_activations", choices=MODES)
        t.finish(allowed_extra=("budget", "compress_activations"))
        return out

    # -- [init] ---------------------------------------------------------------------------
    def _read_init(self, raw):
        if isinstance(raw, str):
            raw = {"method": raw}
        t = Table(raw, self.source, "[init]", self.line_of("init", 0))
        method = t.str("method", "glorot", choices=INIT_METHODS)
        self.init = Init(method, t.scale("scale", None))
        self.seed = t.int("seed", 0, min=0)
        bias = t.str("bias", "zeros", choices=("zeros", "same"))
        self.bias_init = Init("zeros") if bias == "zeros" else (
            self.init if method != "glorot" else Init("normal"))
        t.finish()

    # -- [[inputs]] -----------------------------------------------------------------------
    def _read_inputs(self, raw) -> list:
        if isinstance(raw, dict):  # [inputs.x] shape = ... form
            items = []
            for k, v in raw.items():
                if not isinstance(v, dict):
                    Table({}, self.source, f"[inputs.{k}]").error(
                        f"expected a table like {{ shape = [4, 2] }}, got {_describe(v)}")
                items.append(({"name": k, **v}, f"[inputs.{k}]"))
        elif isinstance(raw, list) and raw:
            items = [(v, f"[[inputs]] #{i + 1}") for i, v in enumerate(raw)]
        else:
            self.top.error("'inputs' must be a non-empty [[inputs]] array of tables, "
                           f"got {_describe(raw)}", "inputs")
        nodes = []
        for k, (v, loc) in enumerate(items):
            t = Table(v, self.source, loc, self.line_of("inputs", k))
            name = t.str("name")
            if not name.isidentifier():
                t.error(f"input name must be a Python identifier, got {name!r}", "name")
            if name in self.nodes:
                t.error(f"input {name!r} is declared twice", "name")
            shape = t.shape("shape")
            dtype = t.str("dtype", self.dtype, choices=DTYPES)
            t.finish()
            node = _input(name, shape, dtype)
            self.nodes[name] = node
            nodes.append(node)
        self.first_input = nodes[0]
        return nodes

    # -- [[layers]] -----------------------------------------------------------------------
    def _read_layers(self, raw) -> Node:
        if not isinstance(raw, list) or not raw:
            self.top.error("'layers' must be a non-empty [[layers]] array of tables, "
                           f"got {_describe(raw)}", "layers")
        x = self.first_input
        for i, v in enumerate(raw):
            t = Table(v, self.source, f"[[layers]] #{i + 1}", self.line_of("layers", i))
            kind = t.str("type")
            if kind not in LAYERS:
                t.error(f"unknown layer type {kind!r}{_suggest(kind, LAYERS)}; "
                        f"known types: {sorted(LAYERS)}", "type")
            t.loc = f"[[layers]] #{i + 1} ({kind})"
            name = str(t.raw("name", str(i + 1)))
            if not ("W" + name).isidentifier():
                t.error(f"layer name must be letters, digits or _, got {name!r}", "name")
            if name in self.nodes:
                t.error(f"name {name!r} is already used by an earlier input or layer", "name")
            if t.has("input"):
                x = self.lookup(t.str("input"), t, "input")
            ctx = LayerContext(x=x, name=name, dtype=self.dtype, table=t, builder=self)
            try:
                with self.at("layers", i):
                    out = LAYERS[kind](ctx)
            except SpecError:
                raise
            except (BPError, ValueError, TypeError) as e:
                t.error(f"{type(e).__name__}: {e}")
            t.finish()
            self.nodes[name] = out
            if kind == "dense":
                self.activations[out] = v.get("activation", "identity")
            elif kind == "activation":
                self.activations[out] = v.get("function")
            self.last_name = name
            x = out
        return x

    @contextlib.contextmanager
    def at(self, header: str, index: int) -> Iterator[None]:
        """Nodes built inside point at the spec's line for this table in generated code."""
        line = self.lines.get(header, [])
        where = Path(self.source).name + (f":{line[index]}" if index < len(line) else
                                          f":[{header}]")
        LOCATION_OVERRIDE.append(where)
        try:
            yield
        finally:
            LOCATION_OVERRIDE.pop()

    def line_of(self, header: str, index: int) -> int | None:
        """The spec line of the index-th `[header]`/`[[header]]` table, when known."""
        line = self.lines.get(header, [])
        return line[index] if index < len(line) else None

    def lookup(self, name: str, t: Table, key: str) -> Node:
        if name not in self.nodes:
            t.error(f"{name!r} is not an input or an earlier layer; known: {sorted(self.nodes)}"
                    f"{_suggest(name, self.nodes)}", key)
        return self.nodes[name]

    def new_param(self, name: str, shape: tuple, init: Init, t: Table) -> Node:
        if name in self.params or name in self.nodes:
            t.error(f"parameter name {name!r} is already taken; give the layer a unique name")
        p = _param(name, shape, self.dtype)
        self.params[name] = p
        self.param_init[name] = init
        return p

    # -- [loss] ---------------------------------------------------------------------------
    def _read_loss(self, raw, pred: Node) -> Node:
        t = Table(raw, self.source, "[loss]", self.line_of("loss", 0))
        kind = t.str("type", choices=LOSSES)
        t.loc = f"[loss] ({kind})"
        ldef = LOSSES[kind]
        pred_name = self.last_name
        if t.has("prediction"):
            pred_name = t.str("prediction")
            pred = self.lookup(pred_name, t, "prediction")
        target_name = t.str("target", "y")
        if target_name not in self.nodes or self.nodes[target_name].op != "input":
            t.error(f"target {target_name!r} is not a declared input; inputs: "
                    f"{sorted(k for k, n in self.nodes.items() if n.op == 'input')}", "target")
        target = self.nodes[target_name]
        t.finish()
        act = self.activations.get(pred)
        if ldef.takes_logits and act == ldef.takes_logits:
            t.error(f"{kind} takes logits and applies {act} itself, but layer {pred_name!r} "
                    f"already ends in {act}; set that layer's activation to \"identity\"")
        if ldef.target == "labels" and pred.ndim and pred.shape[-1] == 1:
            t.error(f"{kind} over one class (layer {pred_name!r} has shape {list(pred.shape)}) "
                    "is always 0 with zero gradients; for a yes/no target use type = "
                    "\"binary_cross_entropy_with_logits\" and give that layer activation = "
                    "\"identity\"", "type")
        if ldef.target == "labels" and is_float(target.dtype) and pred.ndim and \
                target.shape == pred.shape[:-1]:
            t.error(f"target {target_name!r} has the shape of class indices "
                    f"{list(target.shape)} but dtype {target.dtype}; declare it with dtype = "
                    "\"int32\" in [[inputs]]", "target")
        ok_int = ldef.target == "labels" and target.dtype == "int32"
        if ok_int:
            if target.shape != pred.shape[:-1]:
                t.error(f"int labels {target_name!r} have shape {list(target.shape)} but the "
                        f"prediction (layer {pred_name!r}) has shape {list(pred.shape)}; expected "
                        f"labels of shape {list(pred.shape[:-1])}")
            self.input_kinds[target_name] = ("int", pred.shape[-1])
        else:
            if not is_float(target.dtype):
                t.error(f"target {target_name!r} must be float"
                        f"{' or int32 labels' if ldef.target == 'labels' else ''}, "
                        f"got {target.dtype}")
            if target.shape != pred.shape:
                hint = (f"; {kind} takes int32 labels of shape {list(pred.shape[:-1])} or float "
                        f"targets of shape {list(pred.shape)}" if ldef.target == "labels" else "")
                t.error(f"shape mismatch: the prediction (layer {pred_name!r}) has shape "
                        f"{list(pred.shape)} but target {target_name!r} has shape "
                        f"{list(target.shape)}{hint}")
            self.input_kinds.setdefault(target_name, ldef.sample)
        try:
            with self.at("loss", 0):
                return ldef.fn(pred, target)
        except (BPError, ValueError, TypeError) as e:
            t.error(f"{type(e).__name__}: {e}")

    # -- [data] ---------------------------------------------------------------------------
    def _read_data(self, raw, bounds: dict[str, tuple[int, int]]) -> dict:
        t = Table(raw, self.source, "[data]")
        out = {}
        for key, value in raw.items():
            node = self.params.get(key) or (self.nodes.get(key) if key in self.nodes and
                                            self.nodes[key].op == "input" else None)
            if node is None:
                known = sorted(k for k, n in self.nodes.items() if n.op == "input")
                known += sorted(self.params)
                t.error(f"{key!r} is not an input or parameter{_suggest(key, known)}; "
                        f"known: {known}", key)
            try:
                arr = np.array(value, dtype=node.dtype)
            except (ValueError, TypeError) as e:
                t.error(f"cannot make a {node.dtype} array: {e}", key)
            if arr.shape != node.shape:
                t.error(f"shape mismatch: data has shape {list(arr.shape)}, but "
                        f"{key!r} is declared with shape {list(node.shape)}", key)
            bound = bounds.get(key)
            if bound is not None and arr.size and (arr.min() < bound[0] or arr.max() >= bound[1]):
                t.error(f"labels must lie in [{bound[0]}, {bound[1]}), got values "
                        f"{arr.min()}..{arr.max()}", key)
            t.used.add(key)
            out[key] = arr
        return out


def _header_lines(text: str) -> dict:
    """1-based line numbers of each `[[layers]]` and the `[loss]` header, in order."""
    out: dict = {}
    for no, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*\[\[?\s*([A-Za-z_]+)\s*\]\]?", line)
        if m:
            out.setdefault(m.group(1), []).append(no)
    return out


# ---- entry points ---------------------------------------------------------------------------
def from_dict(doc: dict, source: str = "<spec>", name: str = "model",
              text: str | None = None) -> Model:
    """Build a Model from an already-parsed spec document (what tomllib returns); `text`, the
    spec's source, lets generated code cite spec line numbers."""
    return SpecBuilder(doc, source, name, text).build()


def load_toml(path: str | Path) -> Model:
    """Load a TOML spec (docs/spec.md)."""
    path = Path(path)
    tomllib = toml_module(f"{path}: reading TOML")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
        doc = tomllib.loads(text)
    except OSError as e:
        raise SpecError(f"{path}: cannot read spec: {e.strerror or e}") from None
    except UnicodeDecodeError as e:  # TOML is UTF-8: name the line, not a codec traceback
        line = raw.count(b"\n", 0, e.start) + 1
        raise SpecError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x}); TOML specs "
                        "must be saved as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: invalid TOML: {e}") from None
    return from_dict(doc, str(path), path.stem, text)


def load_python(path: str | Path) -> Model:
    """Run a Python model file and call its `build()`; it returns a Model or a dict with
    `loss`, `wrt` and optionally `inputs`/`params` (example arrays by name) and `name`."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such model file")
    mod_name = f"_bpcompile_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"{path}: Python cannot load this file as a module")
    try:
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    except SystemExit as e:  # exit(0) at import must not make `bpcompile check` pass silently
        raise SpecError(f"{path}{_user_line(e, path)}: the model file called exit() "
                        f"(SystemExit({e.code!r})) while loading; a model file must define "
                        "build() and return its loss and params, not exit") from None
    except Exception as e:
        raise SpecError(f"{path}{_user_line(e, path)}: loading the model file raised "
                        f"{type(e).__name__}: {e}") from e
    finally:
        sys.modules.pop(mod_name, None)
    build = getattr(module, "build", None)
    if not callable(build):
        raise SpecError(f"{path}: a Python model file must define build() returning a Model "
                        "or a dict with 'loss' and 'wrt'")
    try:
        result = build()
    except SystemExit as e:
        raise SpecError(f"{path}{_user_line(e, path)}: build() called exit() "
                        f"(SystemExit({e.code!r})); it must return the model's loss and "
                        "params") from None
    except Exception as e:
        raise SpecError(f"{path}{_user_line(e, path)}: build() raised "
                        f"{type(e).__name__}: {e}") from e
    return _model_from_result(result, path)


def _user_line(e: BaseException, path: Path) -> str:
    if isinstance(e, SyntaxError) and e.lineno:
        return f":{e.lineno}"
    target = str(path.resolve())
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
             if str(Path(f.filename).resolve()) == target]
    return f":{lines[-1]}" if lines else ""


def _model_from_result(result, path: Path) -> Model:
    where = str(path)
    if isinstance(result, Model):
        if result.name == "model":
            result.name = path.stem
        result.source = result.source or where
        return result
    if not isinstance(result, dict):
        raise SpecError(f"{where}: build() must return a Model or a dict with 'loss' and 'wrt', "
                        f"got {type(result).__name__}")
    allowed = ("loss", "wrt", "inputs", "params", "name")
    for k in result:
        if k not in allowed:
            raise SpecError(f"{where}: build() returned unknown key {k!r}"
                            f"{_suggest(k, allowed)}; expected keys {list(allowed)}")
    for k in ("loss", "wrt"):
        if k not in result:
            raise SpecError(f"{where}: build() result is missing {k!r}")
    model = Model(result["loss"], result["wrt"], name=result.get("name", path.stem),
                  source=where)
    by_name = {n.attr("name"): n for n in model.inputs + model.params}
    for group in ("inputs", "params"):
        values = result.get(group) or {}
        if not isinstance(values, dict):
            raise SpecError(f"{where}: build()[{group!r}] must be a dict of arrays by name")
        for k, v in values.items():
            node = by_name.get(k)
            want = "input" if group == "inputs" else "param"
            if node is None or node.op != want:
                raise SpecError(f"{where}: build()[{group!r}] names {k!r}, which is not a "
                                f"{want} of the loss{_suggest(k, by_name)}")
            arr = np.asarray(v, dtype=node.dtype)
            if arr.shape != node.shape:
                raise SpecError(f"{where}: build()[{group!r}][{k!r}] has shape "
                                f"{list(arr.shape)}, expected {list(node.shape)}")
            model.data[k] = arr
    return model


def load(path: str | Path) -> Model:
    """Load a model from a `.toml` spec or a `.py` model file."""
    path = Path(path)
    if path.suffix == ".toml":
        return load_toml(path)
    if path.suffix == ".py":
        return load_python(path)
    raise SpecError(f"{path}: unknown model file type {path.suffix or '(none)'!r}; "
                    "expected a .toml spec or a .py model file")

