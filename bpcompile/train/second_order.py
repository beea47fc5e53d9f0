"""Second-order methods on top of the differentiable adjoint.

Because gradients are ordinary graph nodes, a Hessian-vector product is the gradient of
⟨∇L, v⟩: `bp.grad(bp.sum(bp.grad(loss, W) * v), W)`. `hvp` compiles that graph (the gradient
and H·v in one function), `hessian` stacks H·eᵢ for models with few parameters, and `minimize`
drives SciPy's optimizers with our compiled value-and-gradient (L-BFGS-B), exact Hessian-vector
products (Newton-CG, trust-krylov) or the full Hessian (trust-exact, a Newton method with a
trust region). L-BFGS is SciPy's L-BFGS-B, not an implementation of our own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..autodiff.forward import jvp as _jvp
from ..autodiff.reverse import check_loss, check_wrt
from ..autodiff.reverse import grad as _raw_grad
from ..compiled import compile as _compile
from ..compiled import function as _function
from ..compiled import grad as _grad
from ..errors import ArgumentError
from ..ir.node import Node
from ..ops.elementwise import add, mul
from ..ops.leaves import input as _input
from ..ops.reduce import sum_

MAX_HESSIAN_PARAMS = 4096
HVP_MODE = "fwd"  # faster than "rev" on mlp_mnist (LLVM): benchmarks/bench_hvp.py


def hvp_graph(loss: Node, wrt, mode: str = HVP_MODE) -> tuple[dict, dict]:
    """({name: v input node}, {"d<name>": gradient, "hv_<name>": H·v}) as graph nodes.

    mode "fwd": forward-over-reverse, the JVP of the gradient graph along v (as JAX's
    `jvp(grad(f))`); "rev": reverse-over-reverse, the gradient of ⟨∇L, v⟩. Both are exact;
    docs/performance.md has which is faster where.
    """
    if mode not in ("fwd", "rev"):
        raise ArgumentError(f"hvp: mode must be 'fwd' or 'rev', got {mode!r}")
    loss, wrt = check_loss(loss), check_wrt(wrt)
    grads = _grad(loss, wrt)
    vs = {w.attr("name"): _input(f"v_{w.attr('name')}", w.shape, w.dtype) for w in wrt}
    if mode == "fwd":
        _, hv = _jvp(list(grads), wrt, [vs[w.attr("name")] for w in wrt])
    else:
        inner = None
        for w, g in zip(wrt, grads):
            term = sum_(mul(g, vs[w.attr("name")]))
            inner = term if inner is None else add(inner, term)
        hv = _raw_grad(inner, wrt)
    outputs = {}
    for w, g, h in zip(wrt, grads, hv):
        outputs[f"d{w.attr('name')}"] = g
        outputs[f"hv_{w.attr('name')}"] = h
    return vs, outputs


class HVP:
    """Compiled gradient and Hessian-vector product: `grads, hv = H(v, **inputs_and_params)`
    with `v` a dict by param name; both results are dicts by param name. With
    `with_grad=False`, `hv = H(v, ...)` alone: the weight-gradient products that only the
    gradient needs are not computed (Newton-CG calls H·v many times at one point, as
    `jax.jvp(jax.grad(f), ...)[1]` under jit drops them)."""

    def __init__(self, loss: Node, wrt, backend: str = "numpy", mode: str = HVP_MODE,
                 with_grad: bool = True, **options: Any):
        self.wrt = check_wrt(wrt)
        self.names = [w.attr("name") for w in self.wrt]
        self.with_grad = bool(with_grad)
        _, outputs = hvp_graph(loss, self.wrt, mode)
        if not self.with_grad:
            outputs = {k: o for k, o in outputs.items() if k.startswith("hv_")}
        # the loss first (its forward is shared with the gradient's): a scalar first output
        # gets LLVM's native call path (bp.function), ~70 us less per call
        self.fn = _function({"loss": check_loss(loss), **outputs}, backend=backend, **options)

    def __call__(self, v: dict, **values):
        kw = dict(values)
        for k in self.names:
            kw[f"v_{k}"] = v[k]
        out = self.fn(**kw)
        hv = {k: out[f"hv_{k}"] for k in self.names}
        return ({k: out[f"d{k}"] for k in self.names}, hv) if self.with_grad else hv


def hvp(loss: Node, wrt, backend: str = "numpy", mode: str = HVP_MODE,
        with_grad: bool = True, **options: Any) -> HVP:
    """Compile ∇L and H·v for `loss` w.r.t. `wrt` (exact, from differentiating the adjoint;
    mode "fwd" forward-over-reverse, "rev" reverse-over-reverse); `with_grad=False`: H·v
    only. `options` go to the backend (bp.function), e.g. `blas_threads=1` on LLVM."""
    return HVP(loss, wrt, backend, mode, with_grad, **options)


class _Flat:
    """Pack named arrays into one float64 vector and back (for SciPy)."""

    def __init__(self, wrt):
        self.names = [w.attr("name") for w in wrt]
        self.shapes = [w.shape for w in wrt]
        self.dtypes = [w.dtype for w in wrt]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.n = sum(self.sizes)

    def pack(self, d: dict) -> np.ndarray:
        return np.concatenate([np.asarray(d[k], np.float64).ravel() for k in self.names])

    def unpack(self, x: np.ndarray) -> dict:
        out, i = {}, 0
        for k, s, n, dt in zip(self.names, self.shapes, self.sizes, self.dtypes):
            out[k] = x[i:i + n].reshape(s).astype(dt)
            i += n
        return out


def hessian(loss: Node, wrt, backend: str = "numpy", **values) -> np.ndarray:
    """The full Hessian (n × n, params flattened and concatenated in `wrt` order) at `values`,
    from n exact Hessian-vector products; for models with at most MAX_HESSIAN_PARAMS params."""
    wrt = check_wrt(wrt)
    flat = _Flat(wrt)
    if flat.n > MAX_HESSIAN_PARAMS:
        raise ArgumentError(f"hessian: {flat.n} parameters is too many for a dense Hessian "
                            f"(limit {MAX_HESSIAN_PARAMS}); use bp.train.hvp instead")
    H = HVP(loss, wrt, backend, with_grad=False)
    return _hessian_from(H, flat, values)


def _hessian_from(H: HVP, flat: _Flat, values: dict) -> np.ndarray:
    """The dense Hessian from n products H·eᵢ (`H` compiled with_grad=False), symmetrised."""
    out = np.empty((flat.n, flat.n))
    e = np.zeros(flat.n)
    for i in range(flat.n):
        e[i] = 1.0
        out[:, i] = flat.pack(H(flat.unpack(e), **values))
        e[i] = 0.0
    return 0.5 * (out + out.T)


@dataclass
class MinimizeResult:
    """Params at the optimum by name, the loss there, and SciPy's full result."""

    params: dict
    fun: float
    grad_norm: float
    nit: int
    success: bool
    message: str
    scipy_result: object


METHODS = ("L-BFGS-B", "Newton-CG", "trust-krylov", "trust-exact", "CG", "BFGS")


def minimize(loss, wrt=None, init: dict | None = None, inputs: dict | None = None,
             method: str = "L-BFGS-B", backend: str = "numpy", tol: float | None = None,
             maxiter: int = 1000, callback=None) -> MinimizeResult:
    """Full-batch minimisation of `loss` over `wrt` with SciPy, fed by compiled derivatives.

    `loss` is a node or a spec Model; `init` the starting params by name (default: the
    model's init); `inputs` the fixed data by name. Methods: L-BFGS-B (value and gradient),
    Newton-CG and trust-krylov (exact Hessian-vector products), trust-exact (full Hessian,
    small models only), CG and BFGS.
    """
    import scipy.optimize

    from ..spec import Model

    if isinstance(loss, Model):
        model = loss
        loss, wrt = model.loss, model.wrt if wrt is None else wrt
        init = model.init_params() if init is None else init
    if method not in METHODS:
        raise ValueError(f"minimize: unknown method {method!r}; choose from {METHODS}")
    wrt = check_wrt(wrt)
    if init is None:
        raise ArgumentError("minimize: give initial params with init={name: array}")
    flat = _Flat(wrt)
    wrt_names = set(flat.names)
    fixed = {k: v for k, v in (inputs or {}).items()}
    fixed.update({k: v for k, v in init.items() if k not in wrt_names})
    vg = _compile(loss, wrt, backend)

    def fun(x):
        value, grads = vg(**fixed, **flat.unpack(x))
        return float(value), flat.pack(grads)

    kw = {}
    if method in ("Newton-CG", "trust-krylov", "trust-exact"):
        H = HVP(loss, wrt, backend, with_grad=False)  # the gradient comes from `fun`
        if method == "trust-exact":
            kw["hess"] = lambda x: _hessian_from(H, flat, {**fixed, **flat.unpack(x)})
        else:
            kw["hessp"] = lambda x, p: flat.pack(
                H(flat.unpack(p.astype(np.float64)), **fixed, **flat.unpack(x)))
    cb = None
    if callback is not None:
        cb = lambda xk, *a: callback(flat.unpack(np.asarray(getattr(xk, "x", xk))))
    res = scipy.optimize.minimize(fun, flat.pack(init), jac=True, method=method, tol=tol,
                                  options={"maxiter": maxiter}, callback=cb, **kw)
    value, g = fun(res.x)
    return MinimizeResult(flat.unpack(res.x), value, float(np.linalg.norm(g)),
                          int(getattr(res, "nit", 0)), bool(res.success), str(res.message), res)
