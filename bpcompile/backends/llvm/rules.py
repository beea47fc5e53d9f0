"""The LLVM backend's own rewrite rules, applied by the shared engine after the shared passes
(`rewrite.pipeline.run_backend`), in scan bodies too: a body is compiled like any graph.

A rule here marks a node with how to lower it (an attribute the schedule reads) and never
changes what it computes, so the marked graph means what it meant, every other reader of it
(printers, the NumPy reference, another backend) stays right, and names and statement order,
which come from op names, stay as they were.
"""

from __future__ import annotations

from ...ir.node import Node, make
from ...rewrite.engine import BackendRules, Pat, Rules, X, rule, used_once
from . import blas
from .accumulate import MARK


def _plain_add(n: Node) -> bool:
    """An unmarked float add of two operands of its own shape and dtype (no broadcasting)."""
    return (n.attr(MARK) is None and n.dtype in blas.GLOBALS
            and all(i.shape == n.shape and i.dtype == n.dtype for i in n.inputs))


def _product(gemm_threshold: int) -> Pat:
    """A BLAS product read only by the add (directly, or through the reshape of the flattened
    (B·M,K)@(K,N) form, itself read only by the add)."""
    def blas_once(p: Node) -> bool:
        a, b = p.inputs
        return used_once(p) and blas.plan_shape(a.shape, b.shape, gemm_threshold)

    return (Pat("matmul", name="p", where=blas_once)
            | Pat("reshape", Pat("matmul", name="p", where=blas_once), name="m",
                  where=used_once))


def _accumulate(n: Node, p: Node, x: Node, m: Node | None = None) -> Node:
    return make("add", n.inputs, **{MARK: n.inputs.index(p if m is None else m)})


def rules(gemm_threshold: int) -> Rules:
    """The rule list for one compile (which products go to BLAS depends on the threshold)."""
    return Rules("llvm", [
        # x + A@B -> add[accumulate=k]: x is copied into the add's buffer and the GEMM adds
        # A@B onto it (beta = 1), so the product needs no buffer of its own (accumulate.py).
        # The product on the left is tried first.
        rule("accumulate_matmul",
             Pat("add", _product(gemm_threshold), X("x"), commute=True, where=_plain_add),
             _accumulate),
    ])


def backend_rules(gemm_threshold: int) -> BackendRules:
    return BackendRules(rules(gemm_threshold), bodies=True)
