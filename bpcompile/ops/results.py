"""`result`: one result of a node with several results (a get-tuple-element projection).

A `scan` node is a tuple of its final carries, stacked ys and saved carries (ir/node.py,
`TUPLE`); `result(node, index=i)` is its i-th result as an ordinary node with its own shape
and dtype. Backends lower a projection as an alias of the tuple's storage (a name bound by
tuple unpacking in Python source, a view of the result's buffer in LLVM), never as a copy. Its
cotangent goes to slot i of the tuple node's cotangents: the reverse sweep (ops/sweep.py)
collects them and calls the tuple op's VJP once with one cotangent per result.
"""

from __future__ import annotations

from ..errors import ShapeError
from ..ir.node import Node, make
from .registry import Op, register


def _infer(inputs, attrs):
    (t,) = inputs
    i = attrs["index"]
    if t.results is None:
        raise ShapeError(f"result: {t.op} has a single result; use the node itself")
    if not 0 <= i < len(t.results):
        raise ShapeError(f"result: index {i} out of range for {t.op} with "
                         f"{len(t.results)} results")
    return t.results[i]


def _vjp_result(n: Node, g: Node, needs):
    # never called: the sweep routes a projection's cotangent to its tuple node's slot
    raise AssertionError("the reverse sweep handles `result` nodes itself")


register(Op("result", "control", _infer, _vjp_result,
            "the result number `index` of a node with several results (a scan's final carry, "
            "stacked y or saved carries); an alias, never a copy",
            attrs_doc={"index": "result number"}))


def result(node: Node, index: int) -> Node:
    """The `index`-th result of the tuple node `node`."""
    return make("result", (node,), index=int(index))


def results(node: Node) -> list[Node]:
    """Every result of the tuple node `node`, in order."""
    if node.results is None:
        raise ShapeError(f"results: {node.op} has a single result")
    return [result(node, i) for i in range(len(node.results))]
