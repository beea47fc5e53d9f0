"""`custom_vjp`: a user's own derivative rule for a composite, with jax.custom_vjp's semantics.

    @bp.custom_vjp
    def f(x, y): ...                 # the primal: tensors in, one tensor out
    def f_fwd(x, y): return f(x, y), residuals      # residuals: a tensor or tuple of them
    def f_bwd(residuals, g): return (dx, dy)        # one cotangent (or None) per argument
    f.defvjp(f_fwd, f_bwd)

Calling `f(a, b)` builds one `custom_vjp` node over (a, b) holding a `Rule`: the primal, the
forward rule's residuals and the backward rule, each traced once on placeholder inputs (as
`scan` traces its body), so one rule serves every call. Its VJP substitutes the call's
operands into the residual graph and the residuals and the cotangent into the backward graph:
ordinary IR, so the rule is differentiated again by `bp.grad` (where the user's backward is
differentiable), runs in scan bodies and on every backend. The node never reaches generated
code as an op: the rewrite pipeline inlines the primal first (`inline`), the NumPy and JAX
backends print an unsimplified node as a call to a function with the user's name, and the
LLVM schedule inlines it. Names: the primal's result is named after the function, its
cotangents d<name>_<arg> (`dsoftplus_x`), and names the user gives inside the rules stay.

`custom_jvp` (ops/custom_jvp.py) shares `substitute` and `inline`.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from ..errors import DTypeError, GradientError, ShapeError
from ..ir.dtypes import is_float
from ..ir.naming import legal
from ..ir.node import NAMES, Node, make, rebuild
from ..ir.provenance import GRAD_OF
from ..ir.traverse import toposort
from .elementwise import as_node
from .registry import Op, register

_SCOPES = itertools.count(1)


def _placeholder(name: str, like: Node, scope: int) -> Node:
    return make("input", (), name=name, shape=like.shape, dtype=like.dtype,
                scope=("custom", scope))


def _tensors(what: str, value: Any) -> tuple[Node, ...]:
    items = value if isinstance(value, (tuple, list)) else (value,)
    try:
        return tuple(as_node(v) for v in items)
    except DTypeError as e:
        raise DTypeError(f"custom_vjp {what}: {e}") from None


def split_static(kind: str, name: str, argnums: tuple[int, ...],
                 args: Sequence[Any]) -> tuple[tuple, tuple[Node, ...]]:
    """(the `nondiff_argnums` values, the other arguments as nodes); a static value must be a
    hashable Python value (it keys the traced rule)."""
    static = []
    for i in argnums:
        if i >= len(args):
            raise GradientError(f"{kind} {name}: nondiff_argnums has {i}, but it was called "
                                f"with {len(args)} arguments")
        if isinstance(args[i], Node) or not isinstance(args[i], Hashable):
            raise GradientError(f"{kind} {name}: argument {i} is in nondiff_argnums, so it "
                                f"must be a hashable Python value, not {type(args[i]).__name__}")
        static.append(args[i])
    nodes = tuple(as_node(a) for i, a in enumerate(args) if i not in argnums)
    if not nodes:
        raise GradientError(f"{kind} {name}: needs at least one tensor argument")
    return tuple(static), nodes


def merge_static(argnums: tuple[int, ...], static: Sequence[Any],
                 tensors: Sequence[Any]) -> list[Any]:
    """The call's arguments in order: static values at `argnums`, tensors elsewhere."""
    it_s, it_t = iter(static), iter(tensors)
    return [next(it_s) if i in argnums else next(it_t)
            for i in range(len(static) + len(tensors))]


def tensor_names(fun: Callable[..., Any], argnums: tuple[int, ...], n: int) -> list[str]:
    """Placeholder names: the parameter names of the tensor arguments' positions."""
    try:
        params = [p.name for p in inspect.signature(fun).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    pos = [i for i in range(n + len(argnums)) if i not in argnums]
    return [legal(params[i]) if i < len(params) else f"a{i}" for i in pos]


def substitute(outputs: Sequence[Node], mapping: dict[Node, Node]) -> list[Node]:
    """`outputs` rebuilt with the nodes in `mapping` replaced (placeholders by operands); the
    user's names carry over to the rebuilt nodes."""
    memo: dict[Node, Node] = {}
    for n in toposort(outputs):
        if n in mapping:
            memo[n] = mapping[n]
            continue
        new = memo[n] = rebuild(n, [memo[i] for i in n.inputs])
        if new is not n and n in NAMES and new not in NAMES:
            NAMES[new] = NAMES[n]
        if new is not n and n in GRAD_OF:
            GRAD_OF.setdefault(new, GRAD_OF[n])
    return [memo[o] for o in outputs]


class Rule:
    """A traced custom rule: placeholders `args` -> `primal`; `residuals` (over `args`);
    `res_args` + `g` placeholders -> `cotangents` (None where the rule gives no gradient).
    Hashable by identity, so nodes that hold it are interned per rule."""

    def __init__(self, name: str, args: Sequence[Node], primal: Node,
                 residuals: Sequence[Node], res_args: Sequence[Node], g: Node,
                 cotangents: Sequence[Node | None]):
        self.name, self.args, self.primal = name, tuple(args), primal
        self.residuals, self.res_args, self.g = tuple(residuals), tuple(res_args), g
        self.cotangents = tuple(cotangents)
        for what, outs, allowed in (
            ("primal", [primal], self.args), ("fwd", self.residuals, self.args),
            ("bwd", [c for c in self.cotangents if c is not None], self.res_args + (g,)),
        ):
            ok = set(allowed)
            stray = [n for n in toposort(outs) if n.op in ("input", "param") and n not in ok]
            if stray:
                raise GradientError(
                    f"custom_vjp {name}: the {what} function reads {stray[0]!r}, which is not "
                    "one of its arguments; pass it as an argument instead of closing over it")

    def retype(self, src: str, dst: str) -> Rule:
        """The same rule in another float precision (bp.check's float64 finite differences);
        one copy per precision, so retyped nodes that hold it still intern together."""
        from ..ir.retype import retype

        cache = self.__dict__.setdefault("_retyped", {})
        if (src, dst) not in cache:
            cts = [c for c in self.cotangents if c is not None]
            na, nr = len(self.args), len(self.residuals)
            nodes = retype(list(self.args) + [self.primal] + list(self.residuals)
                           + list(self.res_args) + [self.g] + cts, src, dst)
            args, primal = nodes[:na], nodes[na]
            res, rest = nodes[na + 1:na + 1 + nr], nodes[na + 1 + nr:]
            res_args, g, new_cts = rest[:nr], rest[nr], iter(rest[nr + 1:])
            cache[(src, dst)] = Rule(self.name, args, primal, res, res_args, g,
                                     [None if c is None else next(new_cts)
                                      for c in self.cotangents])
        return cache[(src, dst)]

    @property
    def primals(self) -> tuple[Node, ...]:
        return (self.primal,)

    def __repr__(self):
        return f"custom_vjp {self.name}({', '.join(a.attr('name') for a in self.args)})"


def _infer(inputs, attrs):
    rule: Rule = attrs["rule"]
    for i, (v, p) in enumerate(zip(inputs, rule.args)):
        if v.shape != p.shape or v.dtype != p.dtype:
            raise ShapeError(f"custom_vjp {rule.name}: operand {i} is {v.dtype}{list(v.shape)}, "
                             f"the rule was traced for {p.dtype}{list(p.shape)}")
    return rule.primal.shape, rule.primal.dtype


def _vjp(y: Node, g: Node, needs):
    rule: Rule = y.attr("rule")
    res = substitute(rule.residuals, dict(zip(rule.args, y.inputs)))
    mapping = dict(zip(rule.res_args, res))
    mapping[rule.g] = g
    return rule_cotangents(rule.name, rule.args, rule.cotangents, needs, mapping)


def rule_cotangents(name: str, args: Sequence[Node], cts: Sequence[Node | None],
                    needs: Sequence[bool], mapping: dict) -> tuple[Node | None, ...]:
    """A user rule's cotangents `cts` (traced on the placeholders in `mapping`) substituted in
    one pass; None where not needed; named `d<rule>_<arg>` in the generated code."""
    todo = [c for c, need in zip(cts, needs) if c is not None and need]
    done = iter(substitute(todo, mapping))
    out: list[Node | None] = []
    for c, need, arg in zip(cts, needs, args):
        if c is None or not need:
            out.append(None)
            continue
        ct = next(done)
        if ct not in NAMES and ct.op not in ("input", "param", "const"):
            NAMES[ct] = f"d{name}_{arg.attr('name')}"
        out.append(ct)
    return tuple(out)


CUSTOM_OPS = ("custom_vjp", "custom_jvp")  # nodes `inline` replaces by their primals

register(Op("custom_vjp", "control", _infer, _vjp,
            "a user's function with the user's VJP rule (jax.custom_vjp); attr `rule`"))


def inline(outputs: Sequence[Node], only: set[Node] | None = None) -> list[Node]:
    """Every custom_vjp / custom_jvp node reachable from `outputs` (those in `only`, when given)
    replaced by its primal on its operands (the rule has served the sweeps); the result keeps
    the function's name. A custom_jvp node has several results: its projections are replaced."""
    if not any(n.op in CUSTOM_OPS and (only is None or n in only) for n in toposort(outputs)):
        return list(outputs)
    memo: dict[Node, Node] = {}
    multi: dict[Node, list[Node]] = {}
    for n in toposort(outputs):
        if n.op == "result" and n.inputs[0] in multi:
            new = multi[n.inputs[0]][n.attr("index")]
            if new not in NAMES and new.op not in ("input", "param", "const") and n in NAMES:
                NAMES[new] = NAMES[n]
            memo[n] = new
            continue
        ins = [memo[i] for i in n.inputs]
        if n.op in CUSTOM_OPS and (only is None or n in only):
            rule = n.attr("rule")
            news = substitute(rule.primals, dict(zip(rule.args, ins)))
            if only is None:  # a rule whose primal calls another custom function
                news = inline(news)
            if n.op == "custom_jvp":
                multi[n] = news
                continue
            (new,) = news
            if new not in NAMES and new.op not in ("input", "param", "const"):
                NAMES[new] = NAMES.get(n, rule.name)
        else:
            new = rebuild(n, ins)
            if new is not n and n in NAMES and new not in NAMES:
                NAMES[new] = NAMES[n]
            if new is not n and n in GRAD_OF:
                GRAD_OF.setdefault(new, GRAD_OF[n])
        memo[n] = new
    return [memo[o] for o in outputs]


class custom_vjp:  # noqa: N801  (named as jax.custom_vjp, used as a decorator)
    """`jax.custom_vjp` for bpcompile graphs: decorate the primal, then `defvjp(fwd, bwd)`.

    The primal takes tensors (nodes, arrays or scalars) and returns one tensor; `fwd` takes the
    same arguments and returns (output, residuals); `bwd(residuals, g)` returns a tuple with one
    cotangent per argument, each of that argument's shape and dtype, or None for no gradient.
    The rules are traced once per argument signature (shapes and dtypes). Function form:
    `custom_vjp(f, fwd, bwd)`. `nondiff_argnums` (as in JAX): positions of static (hashable,
    non-tensor) arguments; fwd gets them in place, bwd first, `bwd(*static, res, g)`, and
    returns cotangents for the other arguments only; one trace per static values.
    """

    def __init__(self, fun: Callable[..., Any], fwd: Callable[..., Any] | None = None,
                 bwd: Callable[..., Any] | None = None, name: str | None = None,
                 nondiff_argnums: Sequence[int] = ()):
        self.fun = fun
        self.nondiff_argnums = tuple(sorted(set(nondiff_argnums)))
        self.name = legal(name or getattr(fun, "__name__", "custom") or "custom")
        if self.name in ("lambda", "_lambda_", ""):
            self.name = "custom"
        self.fwd: Callable[..., Any] | None = None
        self.bwd: Callable[..., Any] | None = None
        self._rules: dict[tuple, Rule] = {}
        self._tracing = False
        functools.update_wrapper(self, fun)
        if (fwd is None) != (bwd is None):
            raise TypeError("custom_vjp: give both fwd and bwd, or neither (then call defvjp)")
        if fwd is not None and bwd is not None:
            self.defvjp(fwd, bwd)

    def defvjp(self, fwd: Callable[..., Any], bwd: Callable[..., Any]) -> None:
        """Set the forward rule fwd(*args) -> (out, residuals) and the backward rule
        bwd(residuals, g) -> (one cotangent or None per argument)."""
        self.fwd, self.bwd, self._rules = fwd, bwd, {}

    def __call__(self, *args: Any) -> Node:
        if self.fwd is None or self.bwd is None:
            raise GradientError(f"custom_vjp {self.name}: call defvjp(fwd, bwd) before using it")
        if self._tracing:  # fwd calling f (the usual `return f(x), res`): the plain primal
            return as_node(self.fun(*args))
        static, nodes = split_static("custom_vjp", self.name, self.nondiff_argnums, args)
        key = (static, tuple((n.shape, n.dtype) for n in nodes))
        rule = self._rules.get(key)
        if rule is None:
            self._tracing = True
            try:
                rule = self._rules[key] = self._trace(static, nodes)
            finally:
                self._tracing = False
        out = make("custom_vjp", nodes, rule=rule)
        NAMES.setdefault(out, self.name)
        return out

    def _trace(self, static: tuple, nodes: tuple[Node, ...]) -> Rule:
        scope, name = next(_SCOPES), self.name
        names = tensor_names(self.fun, self.nondiff_argnums, len(nodes))
        args = [_placeholder(nm, n, scope) for nm, n in zip(names, nodes)]
        call = merge_static(self.nondiff_argnums, static, args)
        (primal,) = _one("primal", name, self.fun(*call))
        fwd_out = self.fwd(*call)  # type: ignore[misc]
        if not isinstance(fwd_out, (tuple, list)) or len(fwd_out) != 2:
            raise GradientError(f"custom_vjp {name}: fwd must return (output, residuals)")
        (out,) = _one("fwd output", name, fwd_out[0])
        if out.shape != primal.shape or out.dtype != primal.dtype:
            raise ShapeError(f"custom_vjp {name}: fwd's output is {out.dtype}{list(out.shape)}, "
                             f"the primal's {primal.dtype}{list(primal.shape)}")
        residuals = _tensors("residuals", fwd_out[1])
        res_args = [_placeholder(f"res{j}", r, scope) for j, r in enumerate(residuals)]
        g = _placeholder(f"d{name}", primal, scope)
        packed = tuple(res_args) if isinstance(fwd_out[1], (tuple, list)) else res_args[0]
        cts = self.bwd(*static, packed, g)  # type: ignore[misc]
        if not isinstance(cts, (tuple, list)) or len(cts) != len(args):
            raise GradientError(f"custom_vjp {name}: bwd must return a tuple of {len(args)} "
                                "cotangents (None for no gradient), one per argument")
        out_cts: list[Node | None] = []
        for i, (c, a) in enumerate(zip(cts, args)):
            if c is None:
                out_cts.append(None)
                continue
            c = as_node(c, a)
            if not is_float(a.dtype):
                raise GradientError(f"custom_vjp {name}: argument {i} ({a.attr('name')}) is "
                                    f"{a.dtype}; give None as its cotangent")
            if c.shape != a.shape or c.dtype != a.dtype:
                raise ShapeError(
                    f"custom_vjp {name}: bwd's cotangent {i} ({a.attr('name')}) is "
                    f"{c.dtype}{list(c.shape)}, the argument is {a.dtype}{list(a.shape)}")
            out_cts.append(c)
        return Rule(name, args, primal, residuals, res_args, g, out_cts)


def _one(what: str, name: str, value: Any) -> tuple[Node]:
    if isinstance(value, (tuple, list)):
        raise GradientError(f"custom_vjp {name}: the {what} must be one tensor, got a "
                            f"{type(value).__name__}")
    return (as_node(value),)
