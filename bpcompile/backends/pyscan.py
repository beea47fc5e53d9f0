"""Lowering of the `scan` op for the Python-source backends (numpy and jax).

A scan node becomes a call to two generated module-level functions placed above the main one:
`<name>_body`, the step sub-graph emitted like any graph (after the usual rewrite passes),
and `<name>_loop`, which threads the carries through it - a plain `for` loop over time in
NumPy, `jax.lax.scan` in JAX - and packs final carries, stacked ys and saved carries into
the node's flat output (ops/scan.py describes the layout). The helpers reach the emitter as
attributes of the returned expression (`Lowered.defs`, `Lowered.consts`).
"""

from __future__ import annotations

import itertools

import numpy as np

from ..ir.node import NAMES, Node
from ..ir.traverse import toposort

_ids = itertools.count(1)


class Lowered(str):
    """An expression string that also carries module-level definitions it needs."""

    defs: str = ""
    consts: dict = {}


def _body_source(body, lower, ns: str, fn_name: str, optimize: bool):
    """(source of `def fn_name(params...)`, constants) for the body.

    optimize: run the rewrite passes on it first (numpy). The jax lowering emits the body as
    traced: it also serves bp.check's JAX oracle (backends/jax/translate.py), which JAX then
    differentiates, so stop_gradient must survive - and XLA optimises the body anyway.
    """
    from ..rewrite import pipeline
    from .pysource import emit_function

    outs = list(body.outputs)
    if optimize:
        outs = list(pipeline.run(outs)[0])
    for c in toposort(outs):  # array constants live at module level: give them unique names
        if c.op == "const" and c.ndim > 0:
            NAMES[c] = f"{fn_name}_const"
    src, consts = emit_function(outs, list(body.params), lower, fn_name, ns,
                                title=f"scan body {body.name}: "
                                f"({', '.join(p.attr('name') for p in body.params)}) -> "
                                f"{len(body.new_carries)} carries, {len(body.ys)} ys")
    return src, consts


def _shape(s) -> str:
    return repr(tuple(int(d) for d in s))


def _prefix(n: Node) -> str:
    return f"{n.attr('body').name}{next(_ids)}"


def numpy_scan(n: Node, a: list[str]) -> Lowered:
    from .numpy.lower import NP_DTYPE, lower

    return _emit(n, a, lower, "np", NP_DTYPE, _numpy_loop, optimize=True)


def jax_scan(n: Node, a: list[str]) -> Lowered:
    from .jax.lower import JNP_DTYPE, lower

    return _emit(n, a, lower, "jnp", JNP_DTYPE, _jax_loop, optimize=False)


def _emit(n: Node, a: list[str], lower, ns, dtypes, loop, optimize: bool) -> Lowered:
    body = n.attr("body")
    pre = _prefix(n)
    body_src, consts = _body_source(body, lower, ns, f"{pre}_body", optimize)
    loop_src = loop(n, pre, dtypes)
    out = Lowered(f"{pre}_loop({', '.join(a)})")
    out.defs = body_src + "\n\n" + loop_src
    out.consts = consts
    return out


def _args(n: Node):
    body = n.attr("body")
    nc, nx = len(body.carries), len(body.xs)
    init = [f"init{i}" for i in range(nc)]
    xs = [f"xs{i}" for i in range(nx)]
    ks = [p.attr("name") for p in body.consts]
    return init, xs, ks


def _loop_names(body):
    """Readable, unique local names for the numpy loop: carry `h` starts as `h_init`, is saved
    into `h_saved`; an x `x` is read from `x_seq[t]`; constants keep their names."""
    taken = {"out", "t", "np"} | {f"y{j}" for j in range(len(body.ys))} | {
        f"ys{j}" for j in range(len(body.ys))}

    def fresh(base):
        base = base if base.isidentifier() else "v"
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    ks = [fresh(p.attr("name")) for p in body.consts]
    c = [fresh(p.attr("name")) for p in body.carries]
    init = [fresh(f"{p.attr('name')}_init") for p in body.carries]
    saved = [fresh(f"{p.attr('name')}_saved") for p in body.carries]
    xs = [fresh(f"{p.attr('name')}_seq") for p in body.xs]
    return c, init, saved, xs, ks


def _numpy_loop(n: Node, pre: str, dtypes) -> str:
    from ..ops.scan import layout, n_saved

    body, T, rev, save = (n.attr(k) for k in ("body", "length", "reverse", "save"))
    nc, ny = len(body.carries), len(body.ys)
    c, init, sv, xs, ks = _loop_names(body)
    lay = layout(n)
    direction = "reversed, " if rev else ""
    saves = {0: "no carries", 1: f"all {T + 1} carries"}.get(
        save, f"{n_saved(T, save)} checkpoint carries (every {save} steps)")
    lines = [f"def {pre}_loop({', '.join(init + xs + ks)}):",
             f'    """scan {body.name} over {T} steps ({direction}saves {saves})."""',
             f"    out = np.empty({n.shape[0]}, {dtypes[n.dtype]})"]
    for kind, i, off, shape in lay:
        size = int(np.prod(shape, dtype=np.int64))
        if kind == "y":
            lines.append(f"    ys{i} = out[{off}:{off + size}].reshape({_shape(shape)})")
        elif kind == "saved":
            lines.append(f"    {sv[i]} = out[{off}:{off + size}].reshape({_shape(shape)})")
    lines.append(f"    {', '.join(c)}{',' if nc == 1 else ''} = {', '.join(init)}"
                 f"{',' if nc == 1 else ''}")
    rng = f"range({T} - 1, -1, -1)" if rev else f"range({T})"
    lines.append(f"    for t in {rng}:")
    if save == 1:
        at = "t + 1" if rev else "t"
        lines += [f"        {sv[i]}[{at}] = {c[i]}" for i in range(nc)]
    elif save > 1:
        lines.append(f"        if t % {save} == 0:")
        lines += [f"            {sv[i]}[t // {save}] = {c[i]}" for i in range(nc)]
    call_args = c + [f"{x}[t]" for x in xs] + ks
    outs = c + [f"y{j}" for j in range(ny)]
    lines.append(f"        {outs[0]}, ({''.join(o + ', ' for o in outs[1:])}) = "
                 f"{pre}_body({', '.join(call_args)})")
    lines += [f"        ys{j}[t] = y{j}" for j in range(ny)]
    if save == 1:
        at = "0" if rev else str(T)
        lines += [f"    {sv[i]}[{at}] = {c[i]}" for i in range(nc)]
    for kind, i, off, shape in lay:
        if kind == "carry":
            size = int(np.prod(shape, dtype=np.int64))
            lines.append(f"    out[{off}:{off + size}] = np.ravel({c[i]})")
    lines.append("    return out")
    return "\n".join(lines)


def _jax_loop(n: Node, pre: str, dtypes) -> str:
    body, T, rev, save = (n.attr(k) for k in ("body", "length", "reverse", "save"))
    nc, ny, nx = len(body.carries), len(body.ys), len(body.xs)
    init, xs, ks = _args(n)
    c = [f"c{i}" for i in range(nc)]
    x = [f"x{i}" for i in range(nx)]
    nxt = [f"n{i}" for i in range(nc)]
    outs = nxt + [f"y{j}" for j in range(ny)]
    saved_now = c if save == 1 else []  # the carries entering the step
    lines = [f"def {pre}_loop({', '.join(init + xs + ks)}):",
             f'    """scan {body.name} over {T} steps with jax.lax.scan'
             f'{" (reverse)" if rev else ""}."""',
             "    def step(carry, x):",
             f"        ({''.join(ci + ', ' for ci in c)}) = carry",
             f"        ({''.join(xi + ', ' for xi in x)}) = x",
             f"        {outs[0]}, ({''.join(o + ', ' for o in outs[1:])}) = "
             f"{pre}_body({', '.join(c + x + ks)})",
             f"        return ({''.join(ni + ', ' for ni in nxt)}), "
             f"(({''.join(f'y{j}, ' for j in range(ny))}), "
             f"({''.join(s + ', ' for s in saved_now)}))"]
    tup = _tuple
    if save > 1:  # checkpoints: an outer scan over k-step segments keeps only their first carry
        k = save
        full, r = divmod(T, k)
        lines += [
            "    def segment(carry, xseg):",
            f"        carry2, (ys, _) = lax.scan(step, carry, xseg, length={k})",
            "        return carry2, (ys, carry)",
            f"    xs_main = tuple(a[:{full * k}].reshape(({full}, {k}) + a.shape[1:]) "
            f"for a in {tup(xs)})",
            f"    carry, (ys, saved) = lax.scan(segment, {tup(init)}, xs_main, length={full})",
            f"    ys = tuple(a.reshape(({full * k},) + a.shape[2:]) for a in ys)"]
        if r:
            lines += [
                "    tail_start = carry",
                f"    carry, (ys_tail, _) = lax.scan(step, carry, tuple(a[{full * k}:] for a in "
                f"{tup(xs)}), length={r})",
                "    ys = tuple(jnp.concatenate([a, b]) for a, b in zip(ys, ys_tail))",
                "    saved = tuple(jnp.concatenate([a, b[None]])"
                " for a, b in zip(saved, tail_start))"]
        lines.append(f"    {tup(c)} = carry")
    else:
        lines.append(f"    {tup(c)}, (ys, saved) = lax.scan(step, {tup(init)}, {tup(xs)}, "
                     f"length={T}, reverse={rev})")
    parts = [f"jnp.ravel(c{i})" for i in range(nc)] + [f"jnp.ravel(ys[{j}])" for j in range(ny)]
    for i in range(nc if save else 0):
        if save == 1:  # layout: saved[t] enters element t (reverse: saved[t + 1])
            both = [f"c{i}[None]", f"saved[{i}]"] if rev else [f"saved[{i}]", f"c{i}[None]"]
            parts.append(f"jnp.ravel(jnp.concatenate([{', '.join(both)}]))")
        else:
            parts.append(f"jnp.ravel(saved[{i}])")
    lines.append(f"    return jnp.concatenate([{', '.join(parts)}]).astype({dtypes[n.dtype]})")
    return "\n".join(lines)


def _tuple(names) -> str:
    return "(" + "".join(nm + ", " for nm in names) + ")"
