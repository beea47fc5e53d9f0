"""Rebuild a graph in another float precision (float32 -> float64 for finite differences)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .node import ConstValue, Node, make
from .traverse import transform


@runtime_checkable
class Retypable(Protocol):
    """A sub-graph attribute (a scan body) that rebuilds itself in another precision."""

    def retype(self, src: str, dst: str) -> Any: ...


def retype(outputs: list[Node], src: str = "float32", dst: str = "float64") -> list[Node]:
    """The same computation with every `src` leaf, constant and dtype attribute made `dst`."""

    def build(n: Node, memo: dict[Node, Node]) -> Node:
        attrs = dict(n.attrs)
        if attrs.get("dtype") == src:
            attrs["dtype"] = dst
        for k, v in attrs.items():
            if isinstance(v, Retypable):
                attrs[k] = v.retype(src, dst)
        if n.op == "const" and n.dtype == src:
            attrs["value"] = ConstValue(attrs["value"].array.astype(dst))
        return make(n.op, [memo[i] for i in n.inputs], **attrs)

    return transform(outputs, build=build)
