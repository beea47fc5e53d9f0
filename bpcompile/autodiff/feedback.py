"""Feedback alignment: the reverse sweep with the weight transport replaced by random matrices.

Backpropagation sends a layer's error back through the transpose of its forward weights,
δ_in = δ_out Wᵀ: the "weight transport" a brain is unlikely to do. Two rule sets, chosen by
name, replace that one step of the sweep (ops/sweep.py's `rules` hook) and nothing else:

- "alignment" (Lillicrap et al. 2016): for every matmul whose one operand is a param W
  (directly or through reshape/transpose/cast, as a conv kernel is), the cotangent of the
  *other* (activation) operand uses a fixed random B of W's shape: δ_in = δ_out Bᵀ.
- "direct" (Nøkland 2016): the output error e (the cotangent of the network's top param
  matmul: the logits before their bias) reaches every dense layer's input directly,
  δ_in = e B_W with B_W of shape (outputs, features of W's input); δ then passes f'(z) as usual.
  A conv layer's input (N, C, H, W) gets reshape(e B_k, (N, C, H, W)) with B_k of shape
  (outputs, C·H·W) (Nøkland's conv variant), added by the sweep's `add_cotangent`; nothing
  flows back through the conv's im2col.

Weight gradients stay local (aᵀ δ), and every other op keeps its exact rule. Each B is an
`input` leaf named `B_<param>` (so `fn.source()` shows `B_W2` where `W2.T` was), marked by its
attribute `feedback_of` (the param's name; a user's own input named `B_W2` is not one), whose values
`feedback_matrices` draws from a seed (deterministic per name); bp.compile and the train step
feed them. Without `feedback` nothing here runs: the exact gradient's code is unchanged.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import GradientError
from ..ir.dtypes import np_dtype
from ..ir.node import Node, make, rebuild
from ..ir.traverse import toposort
from ..ops.elementwise import cast
from ..ops.linalg import matmul2
from ..ops.movement import reshape, swap_last
from ..ops.registry import get_op
from ..ops.sweep import add_cotangent

MODES = ("alignment", "direct")
# what a conv's im2col puts between its input's strided windows and the matmul
IM2COL = ("reshape", "transpose", "concatenate")
# the ops a weight may pass through between its param and the matmul (a conv's kernel)
WEIGHT_VIEWS = ("reshape", "transpose", "cast")
# ops whose VJP runs a sweep of its own, which these rules cannot reach into
# (a checkpoint's region is swept with these rules: FeedbackRules.enter)
INNER_SWEEPS = {"scan": "a scan body (RNN, loop)", "custom_vjp": "a custom_vjp rule"}


def check_mode(feedback: str | None, what: str = "feedback") -> str | None:
    if feedback is None or feedback in MODES:
        return feedback
    raise GradientError(f"{what}={feedback!r}: choose from {MODES} (or None for the exact "
                        "gradient)")


def refuse(what: str, feedback: str | None) -> None:
    """A transformation with no feedback-alignment variant names itself and the way out."""
    if feedback is None:
        return
    check_mode(feedback, f"{what}: feedback")
    raise GradientError(
        f"{what}(feedback={feedback!r}): feedback alignment replaces the weight transport of a "
        "reverse sweep, so its updates are not derivatives of the output and have no "
        f"{what}; use bp.grad / bp.vjp / bp.compile with feedback= for the updates, and "
        "fn.report() to check them against another backend and the exact gradient")


def weight_of(x: Node) -> tuple[Node, list[Node]] | None:
    """(param, views from it to x) when x is a param seen through reshape/transpose/cast."""
    views = []
    while x.op in WEIGHT_VIEWS:
        views.append(x)
        x = x.inputs[0]
    return (x, views) if x.op == "param" else None


def _where(n: Node) -> str:
    return f" (created at {n.where})" if n.where else ""


def _describe(n: Node) -> str:
    shapes = " @ ".join(f"{i.dtype}{list(i.shape)}" for i in n.inputs)
    return f"{n.op} {shapes}{_where(n)}"


@dataclass
class _Direct:
    """What direct FA learns during the sweep, shared by a sweep and its regions' sweeps."""
    error: Node | None = None  # the output error e, once the top is reached
    top: Node | None = None  # found at the first matmul the sweep reaches


class FeedbackRules:
    """The `rules` of one reverse sweep for `mode` over the graph of `outputs` (a loss, or
    the outputs bp.vjp seeds)."""

    def __init__(self, outputs: Node | Sequence[Node], mode: str):
        self.mode = check_mode(mode)
        self.order = toposort([outputs] if isinstance(outputs, Node) else list(outputs))
        self.names = {n.attr("name") for n in self.order if n.op in ("input", "param")}
        self.state = _Direct()
        # a checkpoint's region sweep (enter) walks a copy of the region on placeholder leaves:
        # alias maps the copy's nodes and placeholders to the forward nodes they stand for
        self.alias: dict[Node, Node] = {}
        self.parent: FeedbackRules | None = None
        self._before: Node | None = None  # the output error when this region was entered

    def enter(self, alias: dict[Node, Node]) -> FeedbackRules:
        """The rules for the sweep of a checkpoint's recomputed region (ops/checkpoint.py):
        the same rules, seeing through the copy to the forward graph's params and layers."""
        child = copy.copy(self)
        child.alias, child.parent, child._before = alias, self, self.state.error
        return child

    def leave(self, fix: Callable[[list[Node]], list[Node]]) -> None:
        """The region's sweep is done: an output error found inside it is rebuilt by `fix` on
        the real graph (its copy reads the region's placeholders)."""
        if self.state.error is not None and self.state.error is not self._before:
            self.state.error = fix([self.state.error])[0]

    def resolve(self, n: Node) -> Node:
        """The forward node that n (maybe a node of a checkpoint region's copy) stands for."""
        n = self.alias.get(n, n)
        return self.parent.resolve(n) if self.parent is not None else n

    def weight(self, x: Node) -> tuple[Node, list[Node]] | None:
        """weight_of, seeing through a region copy's placeholders to the params they stand
        for (the views found on the way are kept: B is seen as the matmul sees W)."""
        views: list[Node] = []
        while True:
            while x.op in WEIGHT_VIEWS:
                views.append(x)
                x = x.inputs[0]
            if x.op == "param":
                return x, views
            forward = self.resolve(x)
            if forward is x:
                return None
            x = forward

    def _top(self) -> Node:
        """The param matmul no other param matmul reads: the network's output layer."""
        layers = {n for n in self.order if n.op == "matmul"
                  and any(weight_of(i) for i in n.inputs)}
        if not layers:
            raise GradientError("feedback='direct': the loss has no matmul with a param "
                                "operand (a dense layer) to send the output error from")
        below: dict[Node, frozenset] = {}
        inner: set[Node] = set()
        for n in self.order:
            up = frozenset().union(*(below.get(i, frozenset()) for i in n.inputs))
            inner |= up if n in layers else set()
            below[n] = up | {n} if n in layers else up
        tops = [m for m in self.order if m in layers and m not in inner]
        if len(tops) != 1:
            raise GradientError(
                "feedback='direct' needs one output layer (one param matmul that no other "
                "reads); found " + "; ".join(_describe(t) for t in tops))
        return tops[0]

    def feedback_input(self, w: Node, shape: tuple, dtype: str, summed: int) -> Node:
        name = f"B_{w.attr('name')}"
        if name in self.names:
            raise GradientError(f"feedback: the graph already has a leaf named {name!r}, the "
                                f"name of {w.attr('name')!r}'s feedback matrix; rename it")
        # marked on the node itself (a user's input named B_W2 is another node): which
        # param it stands in for, and the axis the backward product sums over (its scale)
        return make("input", (), name=name, shape=tuple(shape), dtype=dtype,
                    feedback_of=w.attr("name"), fan=int(max(summed, 1)))

    def __call__(self, n: Node, g: Node | list[Node | None],
                 needs: tuple) -> Sequence[Node | None] | None:
        if n.op in INNER_SWEEPS and any(needs) and (
                n.op != "custom_vjp" or any(self.weight(i) for i in n.inputs)):
            raise GradientError(
                f"feedback={self.mode!r} does not apply through {INNER_SWEEPS[n.op]}: "
                f"{_describe(n)} differentiates with its own sweep; use the exact gradient "
                "(feedback=None) for this model")
        if n.op != "matmul" or not isinstance(g, Node):  # (a matmul has one result)
            return None
        a, b = n.inputs
        wa, wb = self.weight(a), self.weight(b)
        if not (wa or wb):
            if not any(needs):
                return None
            raise GradientError(
                f"feedback={self.mode!r} replaces a layer's weight Wᵀ in the backward pass, "
                f"but {_describe(n)} has no param operand (a product of activations, such as "
                "attention's q @ kᵀ); feedback alignment does not apply to this model")
        if self.mode == "direct" and self.state.top is None:
            # the first param matmul in reverse order is a maximal one: the top if unique
            self.state.top = self._top()
        if self.resolve(n) is self.state.top:
            self.state.error = g
        if wa and wb:  # a product of two params: no activation flows through it
            return None
        side = 0 if wb else 1  # the activation operand
        if not needs[side]:
            return None
        w, views = wb or wa or (n, [])  # (one of them is set)
        vjp = get_op("matmul").vjp
        assert vjp is not None
        out = list(vjp(n, g, tuple(need and i != side for i, need in enumerate(needs))))
        out[side] = (self._direct(n, w, side) if self.mode == "direct"
                     else self._aligned(n, g, w, views, side))
        return out

    def _aligned(self, n: Node, g: Node, w: Node, views: list[Node], side: int) -> Node:
        op = n.inputs[1 - side]
        summed = op.shape[-1] if side == 0 else op.shape[-2]  # the axis δ_out Bᵀ sums over
        fb = self.feedback_input(w, w.shape, w.dtype, summed)
        for v in reversed(views):  # B seen as the matmul sees W (a conv's reshaped kernel)
            fb = rebuild(v, [fb])
        # the activation's cotangent of a @ B (or B @ b): δ Bᵀ (or Bᵀ δ)
        return matmul2(g, swap_last(fb)) if side == 0 else matmul2(swap_last(fb), g)

    def _direct(self, n: Node, w: Node, side: int) -> Node | None:
        e, a = self.state.error, n.inputs[side]
        source = conv_input(a) if side == 0 else None
        if e is not None and e.ndim == 2 and source is not None \
                and source.shape[0] == e.shape[0]:
            # a conv layer (Nøkland's conv variant): e reaches the layer's input (N, C, H, W)
            # through B (outputs, C·H·W) reshaped; nothing flows back through its im2col
            feats = math.prod(source.shape[1:])
            fb = self.feedback_input(w, (e.shape[1], feats), source.dtype, e.shape[1])
            ec = e if e.dtype == source.dtype else cast(e, source.dtype)
            add_cotangent(source, reshape(matmul2(ec, fb), source.shape))
            return None
        if e is None or side != 0 or a.ndim != 2 or e.ndim != 2 or a.shape[0] != e.shape[0]:
            where = ("the weight is the left operand" if side != 0 else
                     f"activation {a.dtype}{list(a.shape)} vs output error "
                     f"{'none' if e is None else list(e.shape)}")
            raise GradientError(
                f"feedback='direct' sends the output error (batch, outputs) to dense layers' "
                f"(batch, features) and conv layers' (batch, channels, ...) inputs; "
                f"{_describe(n)} is neither ({where}). Use feedback='alignment' for it")
        fb = self.feedback_input(w, (e.shape[1], a.shape[1]), a.dtype, e.shape[1])
        return matmul2(e if e.dtype == a.dtype else cast(e, a.dtype), fb)


def conv_input(a: Node) -> Node | None:
    """The input (N, C, ...) of the conv whose im2col patches `a` is (layers/conv.py: pad,
    strided slices, concatenate, reshape/transpose), or None where `a` is no conv's patches."""
    stack, seen, sources, slices = [a], set(), set(), 0
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        if m.op in IM2COL:
            stack.extend(m.inputs)
        elif m.op == "slice":
            slices += 1
            x = m.inputs[0]
            sources.add(x.inputs[0] if x.op == "pad" else x)
        else:
            sources.add(m)
    if not slices or len(sources) != 1:
        return None
    (x,) = sources
    return x if x.ndim >= 3 else None


def feedback_inputs(graph: Iterable[Node] | Node | object) -> list[Node]:
    """The feedback-matrix inputs (`B_<param>`) of a graph, a compiled function or nodes."""
    args = getattr(graph, "args", graph)
    nodes = [args] if isinstance(args, Node) else list(args)  # type: ignore[call-overload]
    return [n for n in toposort(nodes) if is_feedback_input(n)]


def is_feedback_input(n: Node) -> bool:
    """Whether n is a feedback matrix B that FeedbackRules made (its `feedback_of` mark)."""
    return n.op == "input" and n.attr("feedback_of") is not None


def feedback_matrices(graph: Iterable[Node] | Node | object,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Values of every feedback matrix `B_<param>` a graph reads, drawn from N(0, 1/k) (k the
    axis the backward product sums over) by a generator keyed by (seed, name): the same seed
    gives the same matrices on every backend and platform."""
    out = {}
    for n in feedback_inputs(graph):
        name = n.attr("name")
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
        # N(0, 1/fan): δ = e B keeps unit scale
        draw = rng.standard_normal(n.shape) / math.sqrt(n.attr("fan"))
        out[name] = draw.astype(np_dtype(n.dtype))
    return out
