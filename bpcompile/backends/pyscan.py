"""Lowering of the `scan` op for the Python-source backends (numpy and jax).

A scan node becomes a call to two generated module-level functions placed above the main one:
`<name>_body`, the step sub-graph emitted like any graph (as the rewrite pipeline left it),
and `<name>_loop`, which threads the carries through it - a plain `for` loop over time in
NumPy, `jax.lax.scan` in JAX - and returns the node's results as a tuple (final carries,
stacked ys, saved carries: ops/scan.py), which the emitter unpacks into the names of the
node's `result` projections (`h_final, ys = step_loop(...)`). The helpers reach the emitter as
attributes of the returned expression (`Lowered.defs`, `Lowered.consts`).

Every identifier here comes from the namespace of the module being emitted
(`pysource.current_namespace`, ir/naming.py): the helper names are fresh module-level names,
the loop's locals a scope of their own, so a user's name (a constant called `carry`, `c0` or
`step`) can neither shadow them nor be shadowed.
"""

from __future__ import annotations

import math

from ..ir.node import Node


class Lowered(str):
    """An expression string that also carries module-level definitions it needs."""

    defs: str = ""
    consts: dict = {}


def _body_source(body, lower, ns: str, fn_name: str, kind: str = "scan"):
    """(source of `def fn_name(params...)`, constants) for the body, exactly as given: the
    rewrite pipeline has simplified it (or, for bp.check's JAX oracle, left it as traced, so
    stop_gradient survives for JAX to differentiate)."""
    from .pysource import emit_function

    outs = list(body.outputs)
    src, consts = emit_function(outs, list(body.params), lower, fn_name, ns,
                                title=f"{kind} body {body.name}: "
                                f"({', '.join(p.attr('name') for p in body.params)}) -> "
                                f"{len(body.new_carries)} carries, {len(body.ys)} ys")
    return src, consts


def _shape(s) -> str:
    return repr(tuple(int(d) for d in s))


def _prefix(n: Node) -> str:
    """`p` with `p_body` and `p_loop` fresh module-level names (p: the step's name)."""
    from .pysource import current_namespace

    return current_namespace().global_prefix(n.attr("body").name, ("_body", "_loop"))


def result_item(n: Node, a: list[str]) -> str:
    """`result` of a tuple-valued expression: the emitter unpacks scans into their results'
    names instead, so this indexing is the lowering's general form, not what it prints."""
    return f"{a[0]}[{n.attr('index')}]"


def numpy_scan(n: Node, a: list[str]) -> Lowered:
    from .numpy.lower import NP_DTYPE, lower

    return _emit(n, a, lower, "np", NP_DTYPE, _numpy_loop)


def jax_scan(n: Node, a: list[str]) -> Lowered:
    from .jax.lower import JNP_DTYPE, lower

    return _emit(n, a, lower, "jnp", JNP_DTYPE, _jax_loop)


def _emit(n: Node, a: list[str], lower, ns, dtypes, loop) -> Lowered:
    body = n.attr("body")
    pre = _prefix(n)
    body_src, consts = _body_source(body, lower, ns, f"{pre}_body", n.op)
    loop_src = loop(n, pre, dtypes)
    out = Lowered(f"{pre}_loop({', '.join(a)})")
    out.defs = body_src + "\n\n" + loop_src
    out.consts = consts
    return out


def _loop_names(body, extra=()):
    """Locals of a loop function, from a scope of the module's namespace: carry `h` starts as
    `h_init`, is saved into `h_saved`; an x `x` is read from `x_seq[t]`; constants keep their
    names where free. `extra`: bases of further locals, returned in a dict."""
    from .pysource import current_namespace

    sc = current_namespace().scope()
    nm = [p.attr("name") for p in body.carries]
    init = [sc.user(f"{b}_init") for b in nm]
    xs = [sc.user(f"{p.attr('name')}_seq") for p in body.xs]
    ks = [sc.user(p.attr("name")) for p in body.consts]
    c = [sc.user(b) for b in nm]
    saved = [sc.user(f"{b}_saved") for b in nm]
    return c, init, saved, xs, ks, {e: sc.user(e) for e in extra}


def _numpy_loop(n: Node, pre: str, dtypes) -> str:
    from ..ops.scan import n_saved

    body, T, rev, save = (n.attr(k) for k in ("body", "length", "reverse", "save"))
    nc, ny = len(body.carries), len(body.ys)
    res = n.results or ()
    c, init, sv, xs, ks, v = _loop_names(
        body, ["t"] + [f"y{j}" for j in range(ny)] + [f"ys{j}" for j in range(ny)])
    t, y, ys = v["t"], [v[f"y{j}"] for j in range(ny)], [v[f"ys{j}"] for j in range(ny)]
    direction = "reversed, " if rev else ""
    saves = {0: "no carries", 1: f"all {T + 1} carries"}.get(
        save, f"{n_saved(T, save)} checkpoint carries (every {save} steps)")
    lines = [f"def {pre}_loop({', '.join(init + xs + ks)}):",
             f'    """scan {body.name} over {T} steps ({direction}saves {saves})."""']
    for name, (shape, dt) in zip(ys + (sv if save else []), res[nc:]):
        lines.append(f"    {name} = np.empty({_shape(shape)}, {dtypes[dt]})")
    lines.append(f"    {', '.join(c)}{',' if nc == 1 else ''} = {', '.join(init)}"
                 f"{',' if nc == 1 else ''}")
    rng = f"range({T} - 1, -1, -1)" if rev else f"range({T})"
    lines.append(f"    for {t} in {rng}:")
    if save == 1:
        at = f"{t} + 1" if rev else t
        lines += [f"        {sv[i]}[{at}] = {c[i]}" for i in range(nc)]
    elif save > 1:
        lines.append(f"        if {t} % {save} == 0:")
        lines += [f"            {sv[i]}[{t} // {save}] = {c[i]}" for i in range(nc)]
    call_args = c + [f"{x}[{t}]" for x in xs] + ks
    outs = c + y
    lines.append(f"        {outs[0]}, ({''.join(o + ', ' for o in outs[1:])}) = "
                 f"{pre}_body({', '.join(call_args)})")
    lines += [f"        {ys[j]}[{t}] = {y[j]}" for j in range(ny)]
    if save == 1:
        at = "0" if rev else str(T)
        lines += [f"    {sv[i]}[{at}] = {c[i]}" for i in range(nc)]
    # a final carry is a fresh array of its dtype even when the step returned its input
    finals = [f"np.array({ci}, {dtypes[dt]})" for ci, (_s, dt) in zip(c, res)]
    lines.append(f"    return {_tuple(finals + ys + (sv if save else []))}")
    return "\n".join(lines)


def _jax_loop(n: Node, pre: str, dtypes) -> str:
    from .pysource import current_namespace

    body, T, rev, save = (n.attr(k) for k in ("body", "length", "reverse", "save"))
    nc, ny, nx = len(body.carries), len(body.ys), len(body.xs)
    sc = current_namespace().scope()  # every local below, the nested step's included
    init = [sc.user(f"init{i}") for i in range(nc)]
    xs = [sc.user(f"xs{i}") for i in range(nx)]
    ks = [sc.user(p.attr("name")) for p in body.consts]
    v = {b: sc.user(b) for b in ("step_fn", "carry", "x", "segment", "xseg", "carry2", "ys",
                                 "saved", "xs_main", "tail_start", "ys_tail", "a", "b", "_")}
    step, carry, x_, ys_, saved, a, b_, _ = (v[k] for k in (
        "step_fn", "carry", "x", "ys", "saved", "a", "b", "_"))
    c = [sc.user(f"c{i}") for i in range(nc)]
    x = [sc.user(f"x{i}") for i in range(nx)]
    nxt = [sc.user(f"n{i}") for i in range(nc)]
    y = [sc.user(f"y{j}") for j in range(ny)]
    outs = nxt + y
    saved_now = c if save == 1 else []  # the carries entering the step
    lines = [f"def {pre}_loop({', '.join(init + xs + ks)}):",
             f'    """scan {body.name} over {T} steps with jax.lax.scan'
             f'{" (reverse)" if rev else ""}."""',
             f"    def {step}({carry}, {x_}):",
             f"        ({''.join(ci + ', ' for ci in c)}) = {carry}",
             f"        ({''.join(xi + ', ' for xi in x)}) = {x_}",
             f"        {outs[0]}, ({''.join(o + ', ' for o in outs[1:])}) = "
             f"{pre}_body({', '.join(c + x + ks)})",
             f"        return ({''.join(ni + ', ' for ni in nxt)}), "
             f"(({''.join(yj + ', ' for yj in y)}), "
             f"({''.join(s + ', ' for s in saved_now)}))"]
    tup = _tuple
    if save > 1:  # checkpoints: an outer scan over k-step segments keeps only their first carry
        k = save
        full, r = divmod(T, k)
        seg, xseg, carry2 = v["segment"], v["xseg"], v["carry2"]
        xs_main, tail_start, ys_tail = v["xs_main"], v["tail_start"], v["ys_tail"]
        lines += [
            f"    def {seg}({carry}, {xseg}):",
            f"        {carry2}, ({ys_}, {_}) = lax.scan({step}, {carry}, {xseg}, length={k})",
            f"        return {carry2}, ({ys_}, {carry})",
            f"    {xs_main} = tuple({a}[:{full * k}].reshape(({full}, {k}) + {a}.shape[1:]) "
            f"for {a} in {tup(xs)})",
            f"    {carry}, ({ys_}, {saved}) = lax.scan({seg}, {tup(init)}, {xs_main}, "
            f"length={full})",
            f"    {ys_} = tuple({a}.reshape(({full * k},) + {a}.shape[2:]) for {a} in {ys_})"]
        if r:
            lines += [
                f"    {tail_start} = {carry}",
                f"    {carry}, ({ys_tail}, {_}) = lax.scan({step}, {carry}, tuple({a}[{full * k}:]"
                f" for {a} in {tup(xs)}), length={r})",
                f"    {ys_} = tuple(jnp.concatenate([{a}, {b_}]) for {a}, {b_} in "
                f"zip({ys_}, {ys_tail}))",
                f"    {saved} = tuple(jnp.concatenate([{a}, {b_}[None]])"
                f" for {a}, {b_} in zip({saved}, {tail_start}))"]
        lines.append(f"    {tup(c)} = {carry}")
    else:
        lines.append(f"    {tup(c)}, ({ys_}, {saved}) = lax.scan({step}, {tup(init)}, "
                     f"{tup(xs)}, length={T}, reverse={rev})")
    parts = list(c) + [f"{ys_}[{j}]" for j in range(ny)]
    for i in range(nc if save else 0):
        if save == 1:  # saved[t] enters element t (reverse: saved[t + 1])
            both = ([f"{c[i]}[None]", f"{saved}[{i}]"] if rev
                    else [f"{saved}[{i}]", f"{c[i]}[None]"])
            parts.append(f"jnp.concatenate([{', '.join(both)}])")
        else:
            parts.append(f"{saved}[{i}]")
    # The results are computed once, behind a barrier, as one flat array per dtype: XLA turns
    # a short loop into straight-line code and may then recompute it inside several consumers,
    # differently (fuzz seed 514: a max's tie mask `x == max(x)` over a length-1 scan came out
    # all zero, a silent zero gradient, while eager JAX and the other backends agreed; a
    # barrier on the separate results does not prevent it, the flat copy does).
    res = n.results or ()
    groups: dict[str, list[int]] = {}
    for i, (_s, dt) in enumerate(res):
        groups.setdefault(dt, []).append(i)
    flat = sc.user("flat")
    lines.append(f"    {flat} = lax.optimization_barrier(" + _tuple(
        f"jnp.concatenate({_tuple(f'jnp.ravel({parts[i]})' for i in idx)})"
        f".astype({dtypes[dt]})" for dt, idx in groups.items()) + ")")
    out = [""] * len(res)
    for g, idx in enumerate(groups.values()):
        off = 0
        for i in idx:
            shape = res[i][0]
            size = math.prod(shape)
            out[i] = f"{flat}[{g}][{off}:{off + size}].reshape({_shape(shape)})"
            off += size
    lines.append(f"    return {_tuple(out)}")
    return "\n".join(lines)


def _tuple(names) -> str:
    return "(" + "".join(nm + ", " for nm in names) + ")"


# ---------------------------------------------------------------------------------------------
# while_loop (ops/loops.py): the body returns the new carries and the flag, cond of them


def numpy_while(n: Node, a: list[str]) -> Lowered:
    from .numpy.lower import NP_DTYPE, lower

    return _emit(n, a, lower, "np", NP_DTYPE, _numpy_while)


def jax_while(n: Node, a: list[str]) -> Lowered:
    from .jax.lower import JNP_DTYPE, lower

    return _emit(n, a, lower, "jnp", JNP_DTYPE, _jax_while)


def _numpy_while(n: Node, pre: str, dtypes) -> str:
    body = n.attr("body")
    c, init, _sv, _xs, ks, v = _loop_names(body, ["go"])
    go = v["go"]
    outs = c + [go]
    lines = [f"def {pre}_loop({', '.join(init + ks + [go])}):",
             f'    """while_loop {body.name}: runs the body while its flag holds."""',
             f"    {_tuple(c)} = {_tuple(init)}",
             f"    while {go}:",
             f"        {outs[0]}, ({''.join(o + ', ' for o in outs[1:])}) = "
             f"{pre}_body({', '.join(c + ks)})"]
    finals = [f"np.array({ci}, {dtypes[dt]})" for ci, (_s, dt) in zip(c, n.results or ())]
    lines.append(f"    return {_tuple(finals)}")
    return "\n".join(lines)


def _jax_while(n: Node, pre: str, dtypes) -> str:
    from .pysource import current_namespace

    body = n.attr("body")
    nc = len(body.carries)
    sc = current_namespace().scope()
    init = [sc.user(f"init{i}") for i in range(nc)]
    ks = [sc.user(p.attr("name")) for p in body.consts]
    c = [sc.user(f"c{i}") for i in range(nc)]
    v = {b: sc.user(b) for b in ("go", "state", "cond_fn", "body_fn", "_")}
    go, state, cond_fn, body_fn, _ = (v[k] for k in ("go", "state", "cond_fn", "body_fn", "_"))
    outs = c + [go]
    # init carries may be Python scalars (inlined constants): give them their dtype
    typed = [f"jnp.asarray({i}, {dtypes[p.dtype]})" for i, p in zip(init, body.carries)]
    lines = [f"def {pre}_loop({', '.join(init + ks + [go])}):",
             f'    """while_loop {body.name} with jax.lax.while_loop."""',
             f"    def {cond_fn}({state}):",
             f"        return {state}[-1]",
             f"    def {body_fn}({state}):",
             f"        {_tuple(c + [_])} = {state}",
             f"        {outs[0]}, ({''.join(o + ', ' for o in outs[1:])}) = "
             f"{pre}_body({', '.join(c + ks)})",
             f"        return {_tuple(outs)}",
             f"    {_tuple(c + [_])} = lax.while_loop({cond_fn}, {body_fn}, "
             f"{_tuple(typed + [go])})",
             f"    return {_tuple(c)}"]
    return "\n".join(lines)
