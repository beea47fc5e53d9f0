"""Translate a (forward) graph into a plain jax.numpy function, op for op.

bp.check differentiates this with jax.grad, so the JAX gradient is independent of our adjoint
construction and of our rewrite passes.
"""

from __future__ import annotations

from ...ir.node import Node
from ..numpy.codegen import exec_source
from ..pysource import emit_function
from .lower import NAMESPACE, lower


def to_jax_function(outputs: list[Node], args: list[Node], name: str = "jax_forward"):
    """Return (fn, source): fn(*arrays in `args` order) -> (outputs[0], (outputs[1:]...))."""
    src, consts = emit_function(
        list(outputs), list(args), lower, name, "jnp", title="JAX translation of the forward graph"
    )
    import jax.numpy as jnp

    consts = {k: jnp.asarray(v) for k, v in consts.items()}
    return exec_source(src, consts, name, NAMESPACE), src
