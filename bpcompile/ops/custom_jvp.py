"""`custom_jvp`: a user's own forward-mode rule for a composite, with jax.custom_jvp's semantics.

    @bp.custom_jvp
    def f(x, y): ...                          # the primal: tensors in, a tensor (or tuple) out
    @f.defjvp
    def f_jvp(primals, tangents):             # -> (primal_out, tangent_out)
        x, y = primals; x_dot, y_dot = tangents
        return f(x, y), x_dot * y + x * y_dot

Calling `f(a, b)` builds one `custom_jvp` node over (a, b) holding a `JvpRule`: the primal and
the JVP rule, each traced once on placeholder primals and tangents (as `scan` traces its body).
The node always has several results (one per output, read through `result` projections), so a
tuple-valued function needs nothing extra. Forward mode substitutes the call's operands and
tangents into the traced tangent graph. Reverse mode is JAX's linearize-then-transpose: the
tangent graph is linear in the tangents, so its transpose is the reverse sweep over it from
the outputs' cotangents to the tangent placeholders (built once per rule, on first use), with
the operands substituted in; a rule that is not linear in its tangents is refused there, as
JAX's transpose refuses it. Both are ordinary IR, so a second derivative differentiates the
rule, and a call of `f` inside its own rule stays a `custom_jvp` node (JAX's higher-order
semantics). The rewrite pipeline inlines the primal before code generation (ops/custom.py
`inline`); tangents are named `<f>_t`, cotangents `d<f>_<arg>`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import GradientError, ShapeError
from ..ir.dtypes import is_float
from ..ir.naming import legal
from ..ir.node import NAMES, Node, make
from ..ir.traverse import toposort
from .custom import (
    _placeholder,
    merge_static,
    rule_cotangents,
    split_static,
    substitute,
    tensor_names,
)
from .elementwise import add, as_node
from .leaves import const
from .movement import broadcast_to
from .registry import Op, register
from .results import result
from .sweep import backward

_SCOPES = itertools.count(1)


def _zeros(like: Node) -> Node:
    return broadcast_to(const(0.0, like.dtype), like.shape)


class JvpRule:
    """A traced custom JVP rule: placeholders `args` -> `primals` (one per output); tangent
    placeholders `targs` (None for int/bool arguments) -> `touts` (None: a zero tangent).
    `multi`: the function returned a tuple. Hashable by identity."""

    def __init__(self, name: str, args: Sequence[Node], primals: Sequence[Node], multi: bool):
        self.name, self.args, self.primals, self.multi = name, tuple(args), tuple(primals), multi
        self.targs: tuple[Node | None, ...] = ()
        self.touts: tuple[Node | None, ...] = ()
        self._transposed: tuple[tuple[Node, ...], tuple[Node | None, ...]] | None = None
        _check_closed(name, "primal", self.primals, self.args)

    def set_jvp(self, targs: Sequence[Node | None], touts: Sequence[Node | None]) -> None:
        self.targs, self.touts = tuple(targs), tuple(touts)
        allowed = self.args + tuple(t for t in self.targs if t is not None)
        _check_closed(self.name, "jvp", [t for t in self.touts if t is not None], allowed)

    def transposed(self) -> tuple[tuple[Node, ...], tuple[Node | None, ...]]:
        """(cotangent placeholders, one per output; the cotangent of each argument over them
        and `args`): the reverse sweep over the linear tangent graph (JAX's transpose)."""
        if self._transposed is None:
            scope = next(_SCOPES)
            gs = tuple(make("input", (), name=f"d{self.name}{i}", shape=p.shape, dtype=p.dtype,
                            scope=("custom_jvp_ct", scope)) for i, p in enumerate(self.primals))
            seeds: dict[Node, Node] = {}
            for t, g in zip(self.touts, gs):
                if t is not None and is_float(t.dtype):
                    seeds[t] = add(seeds[t], g) if t in seeds else g
            live = [t for t in self.targs if t is not None]
            cts = backward(seeds, live) if seeds and live else [None] * len(live)
            tangent_set = set(live)
            for ct, arg in zip(cts, [a for a, t in zip(self.args, self.targs) if t is not None]):
                if ct is not None and any(n in tangent_set for n in toposort([ct])):
                    raise GradientError(
                        f"custom_jvp {self.name}: reverse mode transposes the JVP rule, which "
                        f"must be linear in the tangents; the cotangent of {arg.attr('name')} "
                        "still depends on them (jax.custom_jvp refuses the same rule in "
                        "reverse mode); use bp.custom_vjp for a non-linear backward rule")
            done = iter(cts)
            self._transposed = (gs, tuple(next(done) if t is not None else None
                                          for t in self.targs))
        return self._transposed

    def retype(self, src: str, dst: str) -> JvpRule:
        """The same rule in another float precision (bp.check's float64 finite differences).
        The copy is cached before its tangent graph is retyped: that graph may call the rule."""
        from ..ir.retype import retype

        cache = self.__dict__.setdefault("_retyped", {})
        if (src, dst) not in cache:
            na = len(self.args)
            nodes = retype(list(self.args) + list(self.primals), src, dst)
            new = cache[(src, dst)] = JvpRule(self.name, nodes[:na], nodes[na:], self.multi)
            live_t = [t for t in self.targs if t is not None]
            live_o = [t for t in self.touts if t is not None]
            out = retype(list(self.args) + live_t + live_o, src, dst)[na:]
            it_t, it_o = iter(out[:len(live_t)]), iter(out[len(live_t):])
            new.set_jvp([None if t is None else next(it_t) for t in self.targs],
                        [None if t is None else next(it_o) for t in self.touts])
        return cache[(src, dst)]

    def __repr__(self):
        return f"custom_jvp {self.name}({', '.join(a.attr('name') for a in self.args)})"


def _check_closed(name: str, what: str, outs: Sequence[Node], allowed: Sequence[Node]) -> None:
    ok = set(allowed)
    stray = [n for n in toposort(outs) if n.op in ("input", "param") and n not in ok]
    if stray:
        raise GradientError(
            f"custom_jvp {name}: the {what} function reads {stray[0]!r}, which is not one of "
            "its arguments; pass it as an argument instead of closing over it")


def _infer(inputs, attrs):
    rule: JvpRule = attrs["rule"]
    for i, (v, p) in enumerate(zip(inputs, rule.args)):
        if v.shape != p.shape or v.dtype != p.dtype:
            raise ShapeError(f"custom_jvp {rule.name}: operand {i} is {v.dtype}{list(v.shape)}, "
                             f"the rule was traced for {p.dtype}{list(p.shape)}")
    return [(p.shape, p.dtype) for p in rule.primals]


def _jvp(n: Node, ts: Sequence[Node | None]) -> list[Node | None]:
    rule: JvpRule = n.attr("rule")
    mapping = dict(zip(rule.args, n.inputs))
    for ta, t, x in zip(rule.targs, ts, n.inputs):
        if ta is not None:  # a symbolic zero reaches the rule as zeros (as in JAX)
            mapping[ta] = t if t is not None else _zeros(x)
    live = [t for t in rule.touts if t is not None]
    done = iter(substitute(live, mapping))
    return [None if t is None else next(done) for t in rule.touts]


def _vjp(n: Node, gs: Sequence[Node | None], needs) -> tuple[Node | None, ...]:
    rule: JvpRule = n.attr("rule")
    gph, cts = rule.transposed()
    mapping = dict(zip(rule.args, n.inputs))
    for p, g in zip(gph, gs):
        mapping[p] = g if g is not None else _zeros(p)
    return rule_cotangents(rule.name, rule.args, cts, needs, mapping)


register(Op("custom_jvp", "control", _infer, _vjp,
            "a user's function with the user's JVP rule (jax.custom_jvp); reverse mode "
            "transposes the rule; attr `rule`", multiple_results=True, jvp=_jvp))


class custom_jvp:  # noqa: N801  (named as jax.custom_jvp, used as a decorator)
    """`jax.custom_jvp` for bpcompile graphs: decorate the primal, then `defjvp(rule)`.

    The primal takes tensors (nodes, arrays or scalars) and returns one tensor or a tuple of
    them. `rule(primals, tangents)` (after the `nondiff_argnums` values, as in JAX) returns
    `(primal_out, tangent_out)` of the primal's structure; `tangent_out` must be linear in the
    tangents (reverse mode transposes it). Int/bool arguments get a None tangent; a tangent
    output may be None (zero). Function form: `custom_jvp(f, jvp=rule)`; `defjvps(*fns)` as
    in JAX. `nondiff_argnums`: positions of static (hashable, non-tensor) arguments, passed
    to the rule first; the rule is traced once per static values and argument signature.
    """

    def __init__(self, fun: Callable[..., Any], jvp: Callable[..., Any] | None = None,
                 nondiff_argnums: Sequence[int] = (), name: str | None = None):
        self.fun = fun
        self.name = legal(name or getattr(fun, "__name__", "custom") or "custom")
        if self.name in ("lambda", "_lambda_", ""):
            self.name = "custom"
        self.nondiff_argnums = tuple(sorted(set(nondiff_argnums)))
        self.jvp: Callable[..., Any] | None = None
        self._rules: dict[tuple, JvpRule] = {}
        functools.update_wrapper(self, fun)
        if jvp is not None:
            self.defjvp(jvp)

    def defjvp(self, jvp: Callable[..., Any]) -> Callable[..., Any]:
        """Set the rule jvp(*nondiff, primals, tangents) -> (primal_out, tangent_out); returns
        it, so it works as a decorator."""
        self.jvp, self._rules = jvp, {}
        return jvp

    def defjvps(self, *jvps: Callable[..., Any] | None) -> None:
        """One rule per argument, jvps[i](t_i, primal_out, *primals) -> its tangent
        contribution (None: the output does not depend on it); contributions add up."""
        def rule(*a):
            primals, tangents = a[-2], a[-1]
            out = self.fun(*merge_static(self.nondiff_argnums, a[:-2], primals))
            total = None
            for fn, t in zip(jvps, tangents):
                if fn is None or t is None:
                    continue
                c = fn(t, out, *primals)
                total = c if total is None else (
                    tuple(x + y for x, y in zip(total, c)) if isinstance(c, tuple) else total + c)
            return out, total

        self.defjvp(rule)

    def __call__(self, *args: Any) -> Node | tuple[Node, ...]:
        if self.jvp is None:
            raise GradientError(f"custom_jvp {self.name}: call defjvp(rule) before using it")
        static, nodes = split_static("custom_jvp", self.name, self.nondiff_argnums, args)
        key = (static, tuple((n.shape, n.dtype) for n in nodes))
        rule = self._rules.get(key)
        if rule is None:
            rule = self._trace(key, static, nodes)
        node = make("custom_jvp", nodes, rule=rule)
        NAMES.setdefault(node, self.name)  # "grad of <name> = custom_jvp(...)" comments
        outs = []
        for i in range(len(rule.primals)):
            r = result(node, i)
            NAMES.setdefault(r, self.name if not rule.multi else f"{self.name}_{i}")
            outs.append(r)
        return tuple(outs) if rule.multi else outs[0]

    def _trace(self, key: tuple, static: tuple, nodes: tuple[Node, ...]) -> JvpRule:
        scope, name = next(_SCOPES), self.name
        names = tensor_names(self.fun, self.nondiff_argnums, len(nodes))
        args = [_placeholder(nm, n, scope) for nm, n in zip(names, nodes)]
        primal_out = self.fun(*merge_static(self.nondiff_argnums, static, args))
        multi = isinstance(primal_out, (tuple, list))
        primals = _tensors(name, "primal", primal_out)
        rule = JvpRule(name, args, primals, multi)
        self._rules[key] = rule  # the rule may call the function: that call uses this rule
        try:
            targs = [_placeholder(f"{nm}_dot", a, scope) if is_float(a.dtype) else None
                     for nm, a in zip(names, args)]
            out = self.jvp(*static, tuple(args), tuple(targs))  # type: ignore[misc]
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise GradientError(f"custom_jvp {name}: the rule must return "
                                    "(primal_out, tangent_out)")
            p_out = _tensors(name, "rule's primal_out", out[0])
            if out[1] is None:
                t_raw: list[Any] = [None] * len(primals)
            elif multi:
                t_raw = list(out[1]) if isinstance(out[1], (tuple, list)) else [out[1]]
            else:
                t_raw = [out[1]]
            if len(p_out) != len(primals) or len(t_raw) != len(primals):
                raise GradientError(f"custom_jvp {name}: the rule returned {len(p_out)} primal "
                                    f"and {len(t_raw)} tangent outputs; the function has "
                                    f"{len(primals)}")
            touts: list[Node | None] = []
            for i, (p, q, t) in enumerate(zip(primals, p_out, t_raw)):
                if q.shape != p.shape or q.dtype != p.dtype:
                    raise ShapeError(f"custom_jvp {name}: the rule's primal output {i} is "
                                     f"{q.dtype}{list(q.shape)}, the function's "
                                     f"{p.dtype}{list(p.shape)}")
                if t is None or not is_float(p.dtype):
                    touts.append(None)
                    continue
                if not isinstance(t, Node):  # a Python/NumPy scalar broadcasts
                    t = as_node(t, p)
                    t = broadcast_to(t, p.shape) if len(t.shape) <= len(p.shape) else t
                if t.shape != p.shape or t.dtype != p.dtype:
                    raise ShapeError(f"custom_jvp {name}: the rule's tangent output {i} is "
                                     f"{t.dtype}{list(t.shape)}, the output is "
                                     f"{p.dtype}{list(p.shape)}")
                touts.append(t)
            rule.set_jvp(targs, touts)
        except BaseException:
            del self._rules[key]
            raise
        return rule


def _tensors(name: str, what: str, value: Any) -> tuple[Node, ...]:
    items = value if isinstance(value, (tuple, list)) else (value,)
    if not items:
        raise GradientError(f"custom_jvp {name}: the {what} is an empty tuple")
    return tuple(as_node(v) for v in items)
