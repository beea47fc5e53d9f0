"""bp.check: compare a compiled gradient with JAX autodiff and with finite differences.

Two independent oracles, reported per parameter:
- JAX: jax.grad of a JAX translation of the *forward* graph (no rewrites, no adjoint of ours),
  at the graph's declared dtypes, against our compiled gradient on the chosen backend;
- finite differences: central differences of the forward graph rebuilt in float64, against our
  adjoint graph rebuilt in float64 (so it checks the derivation, free of float32 rounding).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .autodiff.feedback import refuse as refuse_feedback
from .autodiff.reverse import check_loss, check_wrt
from .errors import ArgumentError
from .ir.dtypes import FLOATS
from .ir.hints import Wrt
from .ir.node import Node
from .ir.retype import retype
from .ir.traverse import leaves
from .rewrite.pipeline import run_forward
from .rewrite.precision import Policy, apply_policy

# float16/bfloat16: a few eps (2**-10, 2**-7) of a compiled gradient against JAX's own 16 bits
DEFAULT_RTOL = {"float16": 1e-2, "bfloat16": 6e-2, "float32": 2e-4, "float64": 1e-9}
FD_RTOL = 1e-4  # float64 FD on relu nets: kinks vs rounding leave ~1e-5 noise


@dataclass
class Row:
    name: str
    shape: tuple
    max_abs_err_jax: float | None
    rel_err_jax: float | None
    rel_err_fd: float | None
    ok: bool
    notes: list = field(default_factory=list)


@dataclass
class CheckReport:
    rows: list
    loss_ours: float
    loss_jax: float | None
    backend: str
    rtol: float
    fd_rtol: float
    precision: str = "float32"  # the policy's compute dtype (JAX ran the same casts)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def __bool__(self):
        return self.ok

    def __str__(self) -> str:
        def f(v):
            return "-" if v is None else f"{v:.2e}"

        lines = [
            f"gradient check ({self.backend} backend"
            + ("" if self.precision == "float32" else f", {self.precision} mixed precision")
            + f"): loss ours={self.loss_ours:.8g}"
            + ("" if self.loss_jax is None else f" jax={self.loss_jax:.8g}"),
            f"{'param':12s} {'shape':14s} {'max|Δ| jax':>11s} {'rel jax':>9s} "
            f"{'rel fd64':>9s}  result",
        ]
        for r in self.rows:
            lines.append(
                f"{r.name:12s} {str(r.shape):14s} {f(r.max_abs_err_jax):>11s} "
                f"{f(r.rel_err_jax):>9s} {f(r.rel_err_fd):>9s}  "
                f"{'ok' if r.ok else 'MISMATCH'}{'  ' + '; '.join(r.notes) if r.notes else ''}"
            )
        lines.append(
            f"tolerances: jax rel {self.rtol:g}, finite differences rel {self.fd_rtol:g}"
            f" -> {'PASS' if self.ok else 'FAIL'}"
        )
        return "\n".join(lines)


def init_params(wrt: Wrt, seed: int = 0, scale: float = 0.5) -> dict[str, np.ndarray]:
    """Random normal values for params (a convenience for checks and examples)."""
    rng = np.random.default_rng(seed)
    return {w.attr("name"): (rng.standard_normal(w.shape) * scale).astype(w.dtype) for w in wrt}


def _x64():
    import jax

    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older JAX

    return enable_x64()


def jax_gradient(loss: Node, wrt: Wrt, values: dict) -> tuple[float, dict[str, np.ndarray]]:
    """(loss, {name: grad}) from jax.grad of the JAX translation of the forward graph."""
    import jax

    from .backends.jax.translate import to_jax_function

    args = leaves([loss] + list(wrt))
    fn, _ = to_jax_function([loss], args)
    names = [a.attr("name") for a in args]
    wrt_names = [w.attr("name") for w in wrt]
    need64 = any(a.dtype == "float64" for a in args) or loss.dtype == "float64"
    ctx = _x64() if need64 else contextlib.nullcontext()
    with ctx:

        def f(params):
            env = {**values, **params}
            return fn(*[env[n] for n in names])[0]

        import jax.numpy as jnp

        p = {k: jnp.asarray(values[k]) for k in wrt_names}
        v, g = jax.value_and_grad(f)(p)
        return float(v), {k: np.asarray(g[k]) for k in wrt_names}


def _fd_errors(loss, wrt, values, seed, samples):
    """Relative error of our float64 adjoint against float64 central differences, per param."""
    from .autodiff.reverse import grad
    from .backends.numpy.codegen import NumpyBackend

    loss64, wrt64 = loss, list(wrt)
    for src in ("float16", "bfloat16", "float32"):  # every float in float64
        loss64, *wrt64 = retype([loss64] + wrt64, src, "float64")
    loss64 = run_forward(loss64)
    grads64 = grad(loss64, wrt64)
    args = leaves([loss64] + wrt64)
    names = [a.attr("name") for a in args]
    be = NumpyBackend([loss64] + list(grads64), args, title="float64 check")
    base = {
        k: np.asarray(v, np.float64) if np.asarray(v).dtype.name in FLOATS else np.asarray(v)
        for k, v in values.items()
    }

    def run(env):
        return be.run([np.asarray(env[n], a.dtype) for n, a in zip(names, args)])

    f0_arr, g64 = run(base)
    f0 = float(f0_arr)
    rng = np.random.default_rng(seed + 1)
    errors = {}
    for w, g in zip(wrt64, g64):
        name = w.attr("name")
        p0 = base[name]
        dirs = [rng.standard_normal(p0.shape) for _ in range(samples)]
        if p0.size <= 4:
            dirs += [np.eye(p0.size)[i].reshape(p0.shape) for i in range(p0.size)]
        worst = 0.0
        for v in dirs:
            v = v / max(np.linalg.norm(v), 1e-300)
            # Fourth-order central stencil at two step sizes; the better agreement counts:
            # a large step keeps float64 rounding near 1e-13 on smooth losses, a small one
            # stays clear of kinks (relu, max) that a large step would straddle.
            scale_p = max(1.0, float(np.abs(p0).max(initial=0.0)))
            fds = []
            for h in (1e-3 * scale_p, 1e-6 * scale_p):
                f = [float(run({**base, name: p0 + k * h * v})[0]) for k in (-2, -1, 1, 2)]
                fds.append((f[0] - 8 * f[1] + 8 * f[2] - f[3]) / (12 * h))
            an = float(np.sum(g * v))
            err = min(
                abs(fd - an) / max(abs(fd), abs(an), 1e-6 * max(1.0, abs(f0))) for fd in fds
            )
            worst = max(worst, err)
        errors[name] = worst
    return errors


def check(
    loss: Node,
    wrt: Wrt,
    inputs: dict,
    params: dict | None = None,
    backend: str = "numpy",
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    fd: bool = True,
    use_jax: bool = True,
    fd_samples: int = 4,
    feedback: str | None = None,
    precision: str | Policy | None = None,
) -> CheckReport:
    """Compile `loss`'s gradient on `backend` and compare it per param with JAX and with FD.

    `inputs` gives every input's value; `params` may omit params (seeded random values fill in).
    `feedback=` raises: feedback-alignment updates are not gradients (fn.report checks them).
    `precision` (a 16-bit policy, docs/dtypes.md): compiled under it, compared with JAX's
    gradient of the graph under the same policy (the same casts) at the compute dtype's
    tolerance (DEFAULT_RTOL); the float64 finite differences check the derivation as always.
    """
    from .compiled import compile as bp_compile

    refuse_feedback("check", feedback)

    loss, wrt = check_loss(loss), check_wrt(wrt)
    args = leaves([loss] + wrt)
    values = dict(init_params([a for a in args if a.op == "param"], seed))
    values.update(params or {})
    missing = [a.attr("name") for a in args if a.op == "input" and a.attr("name") not in inputs]
    if missing:
        raise ArgumentError(f"check: no value given for inputs {missing}")
    values.update(inputs)
    values = {k: v for k, v in values.items() if k in {a.attr("name") for a in args}}
    policy = Policy.of(precision)
    low = [policy.compute] if policy.compute != "float32" else []
    options: dict[str, Any] = {"precision": policy} if low else {}
    fn = bp_compile(loss, wrt, backend=backend, **options)
    v_ours, g_ours = fn(**values)
    g_ours = {k: np.array(g, copy=True) for k, g in g_ours.items()}
    tol = rtol if rtol is not None else max(DEFAULT_RTOL[d] for d in [w.dtype for w in wrt] + low)
    loss_jax: float | None = None
    g_jax: dict[str, np.ndarray] = {}
    if use_jax:
        bound = fn.signature.bind(values)  # validates the arguments first
        oracle = apply_policy(run_forward(loss), policy) if low else loss
        loss_jax, g_jax = jax_gradient(oracle, wrt, values if bound else {})
    fd_err = _fd_errors(loss, wrt, values, seed, fd_samples) if fd else {}
    rows = []
    for w in wrt:
        name = w.attr("name")
        ours = np.asarray(g_ours[name], np.float64)
        notes, ok = [], True
        mabs = rel = None
        if use_jax:
            ref = np.asarray(g_jax[name], np.float64)
            diff = np.abs(ours - ref)
            mabs = float(diff.max(initial=0.0))
            scale = max(float(np.abs(ref).max(initial=0.0)), atol or 0.0, 1e-30)
            rel = mabs / scale if np.isfinite(mabs) else float("inf")
            if not np.all(np.isfinite(ours)) and np.all(np.isfinite(ref)):
                notes.append("non-finite gradient")
                ok = False
            if not (rel <= tol or (atol is not None and mabs <= atol)):
                ok = False
        fde = fd_err.get(name)
        if fde is not None and not fde <= FD_RTOL:
            ok = False
        rows.append(Row(name, tuple(w.shape), mabs, rel, fde, ok, notes))
    return CheckReport(rows, float(v_ours), loss_jax, backend, tol, FD_RTOL, policy.compute)
