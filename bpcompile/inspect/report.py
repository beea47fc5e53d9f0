"""One self-contained HTML page per model: pictures, equations, code, passes, memory, checks.

Everything is inline (SVG pictures, CSS; no script, no network), so the file opens anywhere
and can be mailed or archived. Sections: per-parameter gradient norms at the example data
(a log-scale bar chart: vanishing or exploding gradients show at a glance), the gradient check
against JAX and finite differences (bp.check), the δ equations, the graph at three stages, the
generated code of each backend side by side, what each rewrite pass did (fn.stats()), and the
bytes live over the schedule (fn.memory(timeline=True)).
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..ir.node import Node
from . import latex
from .dot import graph_image

BACKENDS = ("numpy", "jax", "llvm")
CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
pre { background: #f6f8fa; padding: .6em; overflow: auto; font-size: 11px; max-height: 40em; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
th { background: #eef; } td:first-child { text-align: left; }
.side { display: grid; grid-template-columns: repeat(auto-fit, minmax(30em, 1fr)); gap: 1em; }
.pic { overflow: auto; border: 1px solid #ddd; margin-bottom: 1em; }
.bad { color: #b00; font-weight: bold; } .ok { color: #070; }
.note { color: #666; font-size: 12px; }
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _svg_only(svg: str) -> str:
    """An SVG document as an element to inline in HTML (no XML prolog or DOCTYPE)."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def _bars(rows: list[tuple[str, float]], title: str) -> str:
    """A horizontal log10 bar chart as SVG (no dependency)."""
    if not rows:
        return "<p class='note'>no gradients</p>"
    logs = [np.log10(v) if v > 0 else None for _, v in rows]
    finite = [v for v in logs if v is not None and np.isfinite(v)]
    lo = min(finite + [0.0]) - 1 if finite else -1.0
    hi = max(finite + [0.0]) + 0.5 if finite else 1.0
    w, bar, left = 640, 18, 140
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + left + 90}" '
             f'height="{len(rows) * (bar + 6) + 40}" role="img" aria-label="{_e(title)}">',
             f'<text x="4" y="14" font-size="12">{_e(title)}</text>']
    for k, ((name, v), lg) in enumerate(zip(rows, logs)):
        y = 24 + k * (bar + 6)
        frac = 0.0 if lg is None or not np.isfinite(lg) else (lg - lo) / (hi - lo)
        colour = "#b00" if lg is None or not np.isfinite(lg) or lg < -6 or lg > 3 else "#4a7fd0"
        parts.append(f'<text x="4" y="{y + 13}" font-size="12">{_e(name)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{max(1.0, frac * w):.1f}" '
                     f'height="{bar}" fill="{colour}"/>')
        parts.append(f'<text x="{left + max(1.0, frac * w) + 4:.1f}" y="{y + 13}" '
                     f'font-size="11">{v:.3g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bytes_live(fn: Any) -> tuple[list[int], list[str], int]:
    """Bytes live at each step of `fn`'s memory timeline (`fn.memory(timeline=True)`: the
    LLVM backend's own plan, elsewhere the graph-order estimate of backends/memory_estimate.py),
    the step names, and how many steps run before the backward pass."""
    rows = fn.memory(timeline=True)["timeline"]
    live = [int(r["live_bytes"]) for r in rows]
    labels = [str(r.get("name") or r.get("op", "")) for r in rows]
    return live, labels, sum(r.get("phase") == "forward" for r in rows)


def _memory_svg(live: list[int], labels: list[str], n_forward: int) -> str:
    if not live:
        return "<p class='note'>nothing to schedule</p>"
    w, h, pad = 760, 220, 40
    peak = max(live) or 1
    dx = w / max(1, len(live))
    pts = " ".join(f"{pad + k * dx:.1f},{pad + h - v / peak * h:.1f} "
                   f"{pad + (k + 1) * dx:.1f},{pad + h - v / peak * h:.1f}"
                   for k, v in enumerate(live))
    split = pad + n_forward * dx
    top = live.index(peak)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + 2 * pad}" height="{h + 2 * pad}"'
            ' role="img" aria-label="bytes live over the schedule">'
            f'<polyline points="{pad},{pad + h} {pts} {pad + w},{pad + h}" fill="#9ec5fe" '
            'stroke="#2a5ca8"/>'
            f'<line x1="{split:.1f}" y1="{pad}" x2="{split:.1f}" y2="{pad + h}" stroke="#b05a00" '
            'stroke-dasharray="4"/>'
            f'<text x="{split + 4:.1f}" y="{pad + 12}" font-size="11">backward →</text>'
            f'<text x="{pad}" y="{pad - 8}" font-size="12">peak {peak:,} bytes at statement '
            f'{top + 1} ({_e(labels[top])}) of {len(live)}</text>'
            f'<text x="{pad}" y="{pad + h + 16}" font-size="11">statement →</text></svg>')


def _equations_svg(program: Any) -> str:
    """The δ equations as SVG drawn by matplotlib's mathtext (glyphs as paths: no fonts)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "<p class='note'>matplotlib is not installed: equations as LaTeX only</p>"
    eqs = latex.equations(program)
    lines = [(f"${latex._mathtext(e.lhs)} = {latex._mathtext(e.rhs)}$", e.section) for e in eqs]
    height = 0.42 * len(lines) + 0.3
    fig = plt.figure(figsize=(10, height))
    for k, (text, section) in enumerate(lines):
        fig.text(0.02, 1 - (k + 0.8) * 0.42 / height, text, fontsize=13,
                 color="#1d3f73" if section == "forward" else "#8a4500")
    buf = io.StringIO()
    try:
        fig.savefig(buf, format="svg")
    except ValueError as e:  # mathtext cannot parse something: say so, keep the LaTeX
        return f"<p class='note'>mathtext could not draw these equations ({_e(e)})</p>"
    finally:
        plt.close(fig)
    return _svg_only(buf.getvalue())


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _check_table(report: Any) -> str:
    def f(v):
        return "-" if v is None else f"{v:.2e}"

    rows = "".join(
        f"<tr><td>{_e(r.name)}</td><td>{_e(r.shape)}</td><td>{f(r.max_abs_err_jax)}</td>"
        f"<td>{f(r.rel_err_jax)}</td><td>{f(r.rel_err_fd)}</td>"
        f"<td class='{'ok' if r.ok else 'bad'}'>{'ok' if r.ok else 'MISMATCH'}</td>"
        f"<td>{_e('; '.join(r.notes))}</td></tr>" for r in report.rows)
    return (f"<p>loss: ours {report.loss_ours:.8g}"
            + ("" if report.loss_jax is None else f", JAX {report.loss_jax:.8g}") + "</p>"
            "<table><tr><th>param</th><th>shape</th><th>max |Δ| JAX</th><th>rel JAX</th>"
            f"<th>rel FD (float64)</th><th>result</th><th>notes</th></tr>{rows}</table>"
            f"<p>tolerances: JAX rel {report.rtol:g}, finite differences rel "
            f"{report.fd_rtol:g}: <b class='{'ok' if report.ok else 'bad'}'>"
            f"{'PASS' if report.ok else 'FAIL'}</b></p>")


def _graphs(program: Any, max_nodes: int) -> str:
    out = []
    for stage in ("forward", "adjoint", "final"):
        try:
            pic = _svg_only(str(graph_image(program, stage, "svg", max_nodes=max_nodes)))
            out.append(f"<h3>{stage}</h3><div class='pic graph'>{pic}</div>")
        except RuntimeError as e:  # no Graphviz: the DOT text, which any viewer draws
            dot = graph_image(program, stage, "dot", max_nodes=max_nodes)
            out.append(f"<h3>{stage}</h3><p class='note'>{_e(e)}</p><pre>{_e(dot)}</pre>")
        except ValueError as e:  # too large even collapsed
            out.append(f"<h3>{stage}</h3><p class='note'>{_e(e)}</p>")
    return "\n".join(out)


def _code(loss: Node, wrt: list[Node], backends: Sequence[str],
          feedback: str | None = None) -> str:
    from ..compiled import compile as bp_compile

    cols = []
    opts = {"feedback": feedback} if feedback else {}  # the code fn runs: B where Wᵀ was
    for b in backends:
        try:
            if b == "jax":  # a float64 model needs JAX's 64-bit mode, as `bp.check` sets it
                from ..check import _x64

                with _x64():
                    text = bp_compile(loss, wrt, backend=b, **opts).source()
            else:
                text = bp_compile(loss, wrt, backend=b, **opts).source()
        except Exception as e:  # a backend that is not installed or cannot take this graph
            text = f"({b} backend unavailable: {type(e).__name__}: {e})"
        cols.append(f"<div><h3>{_e(b)}</h3><pre>{_e(text)}</pre></div>")
    return f"<div class='side'>{''.join(cols)}</div>"


def _checked(fn: Any, inputs: dict, params: dict, seed: int, use_jax: bool) -> str:
    from ..check import check

    try:
        rep = check(fn.loss, fn.wrt, inputs=inputs, params=params, seed=seed, use_jax=use_jax)
        return _check_table(rep) + ("" if use_jax else
                                    "<p class='note'>JAX not installed: FD only</p>")
    except Exception as e:  # the report still shows everything else
        return f"<p class='bad'>gradient check failed to run: {_e(e)}</p>"


def _angle(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if not (nu and nv):
        return float("nan")
    return float(np.degrees(np.arccos(np.clip(np.vdot(u, v) / (nu * nv), -1.0, 1.0))))


def _feedback_checked(fn: Any, values: dict, updates: dict) -> str:
    """Feedback alignment's updates are not gradients of the loss, so the gradient check does
    not apply. Instead: the updates recomputed by the NumPy backend (the reference) from the
    same B matrices, and each update's angle to the exact gradient (Lillicrap et al.'s
    measure: below 90° the update still descends)."""
    from ..compiled import compile as bp_compile

    try:
        ref_backend = "jax" if fn.backend_name == "numpy" else "numpy"
        if ref_backend == "jax":
            import jax  # noqa: F401
    except ImportError:
        ref_backend = ""
    try:
        exact = bp_compile(fn.loss, fn.wrt)(**{a.attr("name"): values[a.attr("name")]
                                                for a in fn.args
                                                if a.attr("name") not in fn.feedback_values})[1]
        ref = None
        if ref_backend:
            from ..check import _x64

            with _x64():
                ref = bp_compile(fn.loss, fn.wrt, ref_backend, feedback=fn.feedback)(
                    **{n: values[n] for n in fn.signature.names})[1]
    except Exception as e:  # the report still shows everything else
        return f"<p class='bad'>feedback check failed to run: {_e(e)}</p>"
    rows, worst = [], 0.0
    for n in fn.grad_names:
        u = np.asarray(updates[n], np.float64)
        err = "-"
        if ref is not None:
            r = np.asarray(ref[n], np.float64)
            rel = float(np.linalg.norm(u - r) / max(np.linalg.norm(r), 1e-300))
            worst, err = max(worst, rel), f"{rel:.2e}"
        rows.append(f"<tr><td>{_e(n)}</td><td>{_e(list(u.shape))}</td><td>{err}</td>"
                    f"<td>{np.linalg.norm(u):.4g}</td>"
                    f"<td>{np.linalg.norm(np.asarray(exact[n], np.float64)):.4g}</td>"
                    f"<td>{_angle(u.ravel(), np.asarray(exact[n], np.float64).ravel()):.1f}"
                    "</td></tr>")
    tol = 1e-10 if all(np.asarray(updates[n]).dtype == np.float64 for n in fn.grad_names) \
        else 1e-4
    verdict = ("" if ref is None else
               f"<p>{_e(ref_backend)} reference, rel tolerance {tol:g}: <b class="
               f"'{'ok' if worst <= tol else 'bad'}'>{'PASS' if worst <= tol else 'FAIL'}"
               "</b></p>")
    return (f"<p class='note'>feedback={fn.feedback!r}: these are feedback-alignment updates, "
            "not gradients of the loss, so the gradient check (JAX, finite differences) does "
            "not apply. Shown instead: the same updates recomputed by another backend from "
            "the function's own B matrices (fn.feedback_values), and the angle between each "
            "update and the exact gradient.</p>"
            "<table><tr><th>param</th><th>shape</th><th>rel Δ reference</th>"
            "<th>‖update‖</th><th>‖exact grad‖</th><th>angle to exact grad (°)</th></tr>"
            f"{''.join(rows)}</table>{verdict}")


def build(fn: Any, values: dict[str, np.ndarray], title: str = "",
          backends: Sequence[str] = BACKENDS, seed: int = 0, max_nodes: int = 300,
          check_gradients: bool = True) -> str:
    """The report's HTML for a Compiled `fn` at `values` (every input and param by name; a
    feedback-alignment function's B matrices default to its own, fn.feedback_values)."""
    feedback = getattr(fn, "feedback", None)
    values = {**getattr(fn, "feedback_values", {}), **values}
    missing = [n for n in fn.signature.names if n not in values]
    if missing:
        raise ValueError(f"report: no value for {missing}; give every input and param")
    value, grads = fn(**{n: values[n] for n in fn.signature.names})
    norms = [(n, float(np.linalg.norm(np.asarray(grads[n], np.float64))))
             for n in fn.grad_names]
    pnorm = {n: float(np.linalg.norm(np.asarray(values[n], np.float64))) for n in fn.grad_names}
    table = "".join(f"<tr><td>{_e(n)}</td><td>{_e(list(np.shape(grads[n])))}</td>"
                    f"<td>{g:.4g}</td><td>{pnorm[n]:.4g}</td>"
                    f"<td>{(g / pnorm[n]) if pnorm[n] else float('nan'):.3g}</td></tr>"
                    for n, g in norms)
    inputs = {a.attr("name"): values[a.attr("name")] for a in fn.args if a.op == "input"}
    params = {a.attr("name"): values[a.attr("name")] for a in fn.args if a.op == "param"}
    try:
        import jax  # noqa: F401

        use_jax = True
    except ImportError:
        use_jax = False
    if not check_gradients:
        check_html = "<p class='note'>skipped (check_gradients=False)</p>"
    elif feedback:
        check_html = _feedback_checked(fn, values, grads)
    else:
        check_html = _checked(fn, inputs, params, seed, use_jax)
    live, labels, n_fwd = bytes_live(fn)
    name = title or "bpcompile report"
    sections = [
        _section("Gradient norms at the example data",
                 _bars(norms, ("‖feedback-alignment update‖" if feedback else "‖∂L/∂p‖")
                       + " per parameter (log scale; red: < 1e-6, > 1e3 or not finite)")
                 + "<table><tr><th>param</th><th>shape</th><th>‖grad‖</th><th>‖param‖</th>"
                 f"<th>ratio</th></tr>{table}</table><p>loss {float(value):.8g}</p>", "norms"),
        _section("Feedback-alignment updates: reference and angle to the gradient" if feedback
                 else "Gradient check: JAX and finite differences", check_html, "check"),
        _section("The backward pass in δ notation", _equations_svg(fn)
                 + f"<details><summary>LaTeX</summary><pre>{_e(latex.to_latex(fn))}</pre>"
                 "</details>", "equations"),
        _section("Graphs (forward, adjoint, final)", _graphs(fn, max_nodes), "graphs"),
        _section("Generated code", _code(fn.loss, fn.wrt, backends, feedback), "code"),
        _section("Rewrite passes", f"<pre>{_e(fn.stats())}</pre>", "passes"),
        _section("Memory: bytes live over the schedule",
                 _memory_svg(live, labels, n_fwd)
                 + "<p class='note'>fn.memory(timeline=True): the LLVM backend's own memory "
                 "plan; on NumPy and JAX an estimate in graph order (each value alive from its "
                 "step to its last reader, views free). docs/memory.md.</p>", "memory"),
    ]
    toc = " · ".join(f"<a href='#{a}'>{t}</a>" for a, t in [
        ("norms", "norms"), ("check", "check"), ("equations", "equations"),
        ("graphs", "graphs"), ("code", "code"), ("passes", "passes"), ("memory", "memory")])
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(name)}</title><style>{CSS}</style></head><body>"
            f"<h1>{_e(name)}</h1><p>{_e(fn.signature.describe())}</p><nav>{toc}</nav>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def example_values(fn: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded values for every argument: normal floats (params scaled 0.5), zero indices; a
    feedback-alignment function's B matrices are its own (fn.feedback_values)."""
    rng = np.random.default_rng(seed)
    out = dict(getattr(fn, "feedback_values", {}))
    for a in fn.args:
        if a.attr("name") in out:
            continue
        dt = np.dtype(a.dtype)
        if dt.kind == "f":
            scale = 0.5 if a.op == "param" else 1.0
            out[a.attr("name")] = (rng.standard_normal(a.shape) * scale).astype(dt)
        else:
            out[a.attr("name")] = np.zeros(a.shape, dt)
    return out


def write(fn: Any, path: str | Path, values: dict | None = None, title: str = "",
          **kw: Any) -> Path:
    """Write the report of Compiled `fn` to `path` (values: seeded random when None)."""
    text = build(fn, values if values is not None else example_values(fn), title, **kw)
    if re.search(r"""(src|href)=["']?(https?:)?//""", text):  # self-contained means no fetch
        raise RuntimeError("report: an external reference slipped into the HTML (a bug)")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p
