"""Use a compiled bpcompile gradient inside user JAX code.

`as_jax_function` wraps the jitted forward+backward program in `jax.custom_vjp`: the primal is
the loss; the forward rule also returns our gradient as the residual, and the backward rule
scales it by the incoming cotangent. So `jax.grad`, `jax.value_and_grad`, `optax` and friends
get the compiler's own backward pass (not JAX's autodiff), and the function composes with
`jax.jit` and `jax.vmap` like any JAX function.
"""

from __future__ import annotations

import jax

from ...errors import ArgumentError, GradientError


def as_jax_function(backend, grad_names: list[str]):
    """`f(params: dict, **inputs) -> loss` (a 0-d JAX array) differentiable w.r.t. `params`.

    `params` maps names to arrays (a pytree, so optimisers can update it unchanged); every
    other argument of the compiled program is passed by keyword. Differentiating w.r.t. an
    argument whose gradient was not compiled (not in `wrt`) is an error, not a silent zero.
    """
    program = backend.jitted  # a nested jit is inlined into an enclosing trace
    has_grad = set(grad_names)

    def split(params, inputs):
        if not isinstance(params, dict):
            raise ArgumentError(
                f"as_jax_function: params must be a dict of arrays, got {type(params).__name__}"
            )
        both = sorted(set(params) & set(inputs))
        if both:
            raise ArgumentError(f"as_jax_function: {both} passed both in params and as inputs")
        return {**inputs, **params}

    @jax.custom_vjp
    def core(params, inputs):
        return program(**split(params, inputs))[0]

    def fwd(params, inputs):
        p = {k: v.value for k, v in params.items()}
        x = {k: v.value for k, v in inputs.items()}
        perturbed = sorted(
            k for k, v in {**params, **inputs}.items() if v.perturbed and k not in has_grad
        )
        if perturbed:
            raise GradientError(_no_gradient_advice(backend, perturbed, sorted(has_grad)))
        loss, grads = program(**split(p, x))
        grads = dict(zip(grad_names, grads))
        # Residuals: our gradient per param and per input (None, a leafless pytree, where
        # none was compiled: an input not in wrt), so bwd can rebuild the structure.
        return loss, ({k: grads.get(k) for k in p}, {k: grads.get(k) for k in x})

    def bwd(res, ct):
        def scale(gs):
            if isinstance(ct, jax.custom_derivatives.SymbolicZero):
                return {k: None for k in gs}
            return {k: None if g is None else (ct * g).astype(g.dtype) for k, g in gs.items()}

        grads, input_grads = res
        return scale(grads), scale(input_grads)

    core.defvjp(fwd, bwd, symbolic_zeros=True)

    def f(params: dict, **inputs):
        return core(params, inputs)

    f.__doc__ = (
        f"Loss of the compiled program; differentiable w.r.t. {grad_names} through "
        "bpcompile's own backward pass (jax.custom_vjp)."
    )
    f.__name__ = "bpcompile_loss"
    return f


def _no_gradient_advice(backend, names: list[str], wrt: list[str]) -> str:
    """The fix is to compile with the names in wrt (params and float inputs alike) or, for an
    input JAX should not differentiate, to stop its gradient on the JAX side."""
    by_name = getattr(backend, "by_name", {})
    inputs = [n for n in names if n in by_name and by_name[n].op == "input"]
    params = [n for n in names if n not in inputs]
    msg = (f"as_jax_function: JAX asks for the gradient w.r.t. {names}, but this function was "
           f"compiled with wrt={wrt}")
    if params:
        msg += f"; add the params {params} to wrt when compiling"
    if inputs:
        msg += (f"; {inputs} {'is a bp.input' if len(inputs) == 1 else 'are bp.inputs'}: "
                "list them in wrt when compiling to differentiate them (float inputs may be), "
                "or wrap them in jax.lax.stop_gradient (or differentiate only w.r.t. the "
                "params dict)")
    return msg
