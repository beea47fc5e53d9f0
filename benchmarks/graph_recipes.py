"""Random graph recipes for differential fuzzing, shared by benchmarks/fuzz.py and the tests.

A recipe is plain data (nested tuples and dicts, `repr`-able, rebuilt from its seed alone by
`generate(seed)`), so a disagreement is reproduced by one line: `generate(seed)` or the saved
recipe. `build(recipe)` turns it into a bpcompile loss, its params and argument values;
`run_recipe` compiles it on every backend and compares each backend with the others and with
JAX (`jax.grad` of the forward graph's translation, the path `bp.check` uses).

Every subexpression broadcasts to the base shape (m, n), so any two combine; m and n are
often 1, so reductions, softmaxes and scans meet size-1 axes. Covered: elementwise unary and
binary ops with broadcasting, sum/mean/max/min reductions (keepdims or not, over size-1 axes
too), matmul, reshape/transpose/slice/pad/concatenate, take with constant (negative too),
input and computed indices, one_hot and cross_entropy of int32 labels, where on comparisons,
int32 and bool inputs cast into the float graph, softmax/log_softmax/logsumexp, and bp.scan
(forward and reverse, carries and stacked outputs), in float32 and float64.
"""

from __future__ import annotations

import numpy as np

DTYPES = ("float32", "float64")
BACKENDS = ("numpy", "llvm", "jax")
# relative tolerance against the largest magnitude of either side (per output)
TOL = {"float64": 1e-9, "float32": 2e-3}

UNARY = ("tanh", "sin", "cos", "sigmoid", "softplus", "neg", "square", "exp_tanh", "log_1_sq",
         "sqrt_1_sq", "relu", "abs", "scale", "pow3", "expm1_tanh", "log1p_sq")
BINARY = ("add", "sub", "mul", "div", "maximum", "minimum", "pow_pos")
MOVES = ("reshape_t", "transpose3", "slice_step", "pad_slice", "concat_slice", "take_rev",
         "take_neg")
KINDS = ("leaf", "unary", "unary", "binary", "binary", "reduce", "reduce", "matmul", "move",
         "softmax", "where", "take_in", "take_computed", "one_hot", "int_in", "bool_in", "scan",
         "const")


# ---------------------------------------------------------------------------------------------
# generation (no bpcompile import: a recipe is data)

def generate(seed: int, max_depth: int = 4) -> dict:
    """The recipe for `seed`: base shape, dtype, params, a float expression tree, loss terms."""
    rng = np.random.default_rng([0xB9C0, int(seed)])
    m, n = (int(rng.choice([1, 1, 2, 3, 4])) for _ in range(2))
    dtype = DTYPES[int(rng.integers(2))]
    shapes = [(m, n), (n,), (m, 1), (1, n), (), (1, 1)]
    params = {f"p{i}": shapes[int(rng.integers(len(shapes)))]
              for i in range(int(rng.integers(1, 4)))}
    params["Q"] = (n, n)  # matmul and scan weights
    leaf_names = sorted(k for k in params if k != "Q")

    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    def expr(depth):
        kind = "leaf" if depth == 0 else pick(KINDS)
        if kind == "leaf":
            return ("leaf", pick(leaf_names))
        if kind == "const":
            return ("const", float(np.round(rng.uniform(-2, 2), 3)), expr(depth - 1))
        if kind == "unary":
            return ("unary", pick(UNARY), expr(depth - 1))
        if kind == "binary":
            return ("binary", pick(BINARY), expr(depth - 1), expr(depth - 1))
        if kind == "reduce":
            return ("reduce", pick(("sum", "mean", "max", "min")), pick((0, 1, None)),
                    bool(rng.integers(2)), expr(depth - 1))
        if kind == "move":
            return ("move", pick(MOVES), expr(depth - 1))
        if kind == "softmax":
            return ("softmax", pick(("softmax", "log_softmax", "lse", "normalize")), pick((0, 1)),
                    expr(depth - 1))
        if kind == "where":
            return ("where", pick((">", "<", ">=")), expr(depth - 1), expr(depth - 1),
                    expr(depth - 1))
        if kind in ("take_in", "take_computed"):
            axis = int(rng.integers(2))
            size = (m, n)[axis]
            idx = rng.integers(0, size, int(rng.integers(1, 4))).tolist()
            return (kind, axis, idx, expr(depth - 1))
        if kind == "one_hot":
            return ("one_hot", rng.integers(0, n, m).tolist(), expr(depth - 1))
        if kind == "int_in":
            return ("int_in", rng.integers(-3, 4, (m, n)).tolist(), expr(depth - 1))
        if kind == "bool_in":
            return ("bool_in", (rng.random((m, n)) < 0.5).tolist(), expr(depth - 1))
        if kind == "scan":
            return ("scan", pick(("rnn", "cumsum", "gated")), bool(rng.integers(2)),
                    expr(depth - 1))
        return ("matmul", expr(depth - 1))

    tree = expr(int(rng.integers(1, max_depth + 1)))
    labels = rng.integers(0, n, m).tolist() if n >= 2 and rng.random() < 0.3 else None
    return {"seed": int(seed), "dtype": dtype, "base": (m, n), "params": params, "tree": tree,
            "ce_labels": labels}


def with_tree(recipe: dict, tree, **changes) -> dict:
    """A copy of `recipe` with another tree (the shrinker's candidates)."""
    return {**recipe, "tree": tree, **changes}


def _is_tree(t) -> bool:
    return isinstance(t, tuple) and bool(t) and isinstance(t[0], str)


def subtrees(tree) -> list:
    """The direct float sub-expressions of a tree node."""
    return [t for t in tree[1:] if _is_tree(t)]


def replace_child(tree, i: int, new):
    """`tree` with its i-th float sub-expression replaced by `new`."""
    out, k = [], 0
    for t in tree:
        if _is_tree(t) and t is not tree[0]:
            t = new if k == i else t
            k += 1
        out.append(t)
    return tuple(out)


def size(tree) -> int:
    return 1 + sum(size(t) for t in subtrees(tree))


def features(recipe: dict) -> set:
    """Which generator features a recipe uses (for the coverage table)."""
    out = {recipe["dtype"]}
    if 1 in recipe["base"]:
        out.add("size-1 axis")
    if recipe["ce_labels"] is not None:
        out.add("cross_entropy")

    def walk(t):
        if t[0] in ("unary", "binary", "move", "reduce", "softmax"):
            out.add(f"{t[0]}:{t[1]}")
        elif t[0] == "scan":
            out.add(f"scan:{t[1]}{':reverse' if t[2] else ''}")
        else:
            out.add(t[0])
        for s in subtrees(t):
            walk(s)

    walk(recipe["tree"])
    return out


# ---------------------------------------------------------------------------------------------
# building the bpcompile graph

def build(recipe: dict):
    """(loss, wrt params, values by name) for a recipe; every leaf gets a seeded value."""
    import bpcompile as bp

    dt, (m, n) = recipe["dtype"], tuple(recipe["base"])
    rng = np.random.default_rng([0x5EED, recipe["seed"]])
    P = {k: bp.param(k, tuple(s), dt) for k, s in recipe["params"].items()}
    values = {k: rng.standard_normal(tuple(s)).astype(dt) for k, s in recipe["params"].items()}
    counter = iter(range(10_000))

    def new_input(prefix, value, dtype):
        name = f"{prefix}{next(counter)}"
        arr = np.asarray(value, dtype)
        values[name] = arr
        return bp.input(name, arr.shape, dtype)

    def full(x):
        return bp.broadcast_to(x, (m, n))

    def unary(op, x):
        return {
            "tanh": bp.tanh, "sin": bp.sin, "cos": bp.cos, "sigmoid": bp.sigmoid,
            "softplus": bp.softplus, "neg": lambda v: -v, "square": lambda v: v * v,
            "exp_tanh": lambda v: bp.exp(bp.tanh(v)),
            "log_1_sq": lambda v: bp.log(1.0 + v * v),
            "sqrt_1_sq": lambda v: bp.sqrt(v * v + 1.0), "relu": bp.relu, "abs": bp.abs,
            "scale": lambda v: 0.5 * v - 1.0, "pow3": lambda v: v ** 3,
            "expm1_tanh": lambda v: bp.expm1(bp.tanh(v)),
            "log1p_sq": lambda v: bp.log1p(v * v),
        }[op](x)

    def binary(op, a, b):
        return {
            "add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b,
            "div": lambda: a / (1.0 + b * b), "maximum": lambda: bp.maximum(a, b),
            "minimum": lambda: bp.minimum(a, b),
            "pow_pos": lambda: (a * a + 0.5) ** bp.tanh(b),
        }[op]()

    def ev(t):
        kind = t[0]
        if kind == "leaf":
            return P[t[1]]
        if kind == "const":
            return ev(t[2]) * t[1]
        if kind == "unary":
            return unary(t[1], ev(t[2]))
        if kind == "binary":
            return binary(t[1], ev(t[2]), ev(t[3]))
        if kind == "reduce":
            how, axis, keep, x = t[1], t[2], t[3], full(ev(t[4]))
            if how == "min":
                y = -bp.max(-x, axis=axis, keepdims=keep)
            else:
                f = {"sum": bp.sum, "mean": bp.mean, "max": bp.max}[how]
                y = f(x, axis=axis, keepdims=keep)
            return bp.reshape(y, (m, 1)) if axis == 1 and not keep else y
        if kind == "matmul":
            return full(ev(t[1])) @ P["Q"]
        if kind == "move":
            return move(t[1], full(ev(t[2])))
        if kind == "softmax":
            x, axis = full(ev(t[3])), t[2]
            if t[1] == "softmax":
                return bp.softmax(x, axis=axis)
            if t[1] == "log_softmax":
                return bp.log_softmax(x, axis=axis)
            if t[1] == "normalize":  # softmax as a user writes it by hand
                e = bp.exp(bp.tanh(x) * 2.0)
                return e / bp.sum(e, axis=axis, keepdims=True)
            return bp.logsumexp(x, axis=axis, keepdims=True)
        if kind == "where":
            a, b, c = ev(t[2]), ev(t[3]), ev(t[4])
            cond = {">": bp.greater, "<": bp.less, ">=": bp.greater_equal}[t[1]](a, b)
            return bp.where(cond, c, a * b)
        if kind in ("take_in", "take_computed"):
            axis, idx, x = t[1], t[2], full(ev(t[3]))
            if kind == "take_in":
                i = new_input("idx", idx, "int32")
            else:  # computed in the graph: (idx + 1) - 1, in range
                i = new_input("idx", [v + 1 for v in idx], "int32") - 1
            y = bp.take(x, i, axis=axis)  # (k, n) or (m, k)
            return bp.sum(y, axis=axis, keepdims=True) * 0.5
        if kind == "one_hot":
            lab = new_input("lab", t[1], "int32")
            return bp.one_hot(lab, n, dt) * ev(t[2])
        if kind == "int_in":  # int32 arithmetic and an int comparison, cast into the graph
            k = new_input("k", t[1], "int32")
            ki = bp.maximum(k * 2 - 1, 1 - k)
            return bp.cast(ki, dt) * ev(t[2]) + bp.cast(bp.greater(k, 0), dt)
        if kind == "bool_in":
            mask = new_input("mask", t[1], "bool")
            return bp.where(mask, ev(t[2]), bp.cast(mask, dt) - 0.5)
        if kind == "scan":
            return scan(t[1], t[2], full(ev(t[3])))
        raise AssertionError(kind)

    def move(how, x):
        if how == "reshape_t":  # (m, n) -> (n, m) row-major, then transpose back
            return bp.transpose(bp.reshape(x, (n, m)))
        if how == "transpose3":  # a round trip through a 3-d permutation
            y = bp.transpose(bp.reshape(x, (m, n, 1)), (2, 1, 0))
            return bp.transpose(bp.reshape(y, (n, m))) * 1.0
        if how == "pad_slice":  # zero-pad with interior padding, slice the original back out
            y = bp.pad(x, (1, 2), (2, 0), (0, 1))
            return y[1:1 + m, 2::2] * 1.5
        if how == "concat_slice":
            y = bp.concatenate([x, bp.tanh(x)], axis=0)
            return y[m:] + y[:m]
        if how == "take_rev":  # rows reversed, the last one twice
            idx = np.array([m - 1] + list(range(m - 1, 0, -1)), np.int32)
            return bp.take(x, bp.const(idx), axis=0)
        if how == "take_neg":  # constant negative indices count from the end (NumPy, JAX)
            idx = np.array([-1 - (i % m) for i in range(m)], np.int32)
            return bp.take(x, bp.const(idx), axis=0)
        y = x[:, ::2]  # slice_step: (m, ceil(n/2)), summed back to (m, 1)
        return bp.sum(y * 2.0, axis=1, keepdims=True)

    def scan(how, reverse, x):  # over the rows of x: carry (n,), ys (m, n)
        Q = P["Q"]

        def rnn(c, xt):
            h = bp.tanh(c @ Q * 0.5 + xt)
            return h, h * 2.0

        def cumsum(c, xt):
            c = c + xt
            return c, c

        def gated(c, xt):
            g = bp.sigmoid(xt - c)
            h = g * c + (1.0 - g) * bp.tanh(xt @ Q)
            return h, h * xt

        step = {"rnn": rnn, "cumsum": cumsum, "gated": gated}[how]
        init = bp.tanh(x[0] * 0.3)
        carry, ys = bp.scan(step, init, x, reverse=reverse)
        return ys + carry

    from bpcompile.ir.traverse import leaves

    out = full(ev(recipe["tree"]))
    u = new_input("u", rng.standard_normal((m, n)), dt)
    loss = bp.sum(out * u)
    if recipe["ce_labels"] is not None:
        loss = loss + bp.cross_entropy(out, new_input("y", recipe["ce_labels"], "int32"))
    # Differentiate w.r.t. the params the graph uses. (Adding `sum(p * 0)` for the others
    # would hide gradients that come back with the wrong shape: the zeros broadcast them.)
    used = set(leaves([loss], ops=("param",)))
    wrt = [p for p in P.values() if p in used]
    values = {k: v for k, v in values.items() if k not in P or P[k] in used}
    return loss, wrt, values


# ---------------------------------------------------------------------------------------------
# running and comparing

class Outcome:
    """One side's result: (value, {param: grad}) or the error it raised (as a string)."""

    def __init__(self, name, value=None, grads=None, error=None):
        self.name, self.value, self.grads, self.error = name, value, grads, error

    @property
    def ok(self) -> bool:
        return self.error is None


def _describe(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"


def run_backend(backend: str, loss, wrt, values) -> Outcome:
    import bpcompile as bp

    try:
        fn = bp.compile(loss, wrt, backend=backend)
        v, g = fn(**values)
        return Outcome(backend, np.asarray(v), {k: np.array(x) for k, x in g.items()})
    except Exception as e:  # noqa: BLE001 (a crash is a finding, recorded by class)
        return Outcome(backend, error=_describe(e))


# XLA optimisation off for the oracle: its programs run once, so compile time is all that counts
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def run_oracle(loss, wrt, values) -> Outcome:
    """jax.grad of the forward graph translated op for op (`bp.check`'s oracle: independent
    of our adjoint and rewrites), jitted once: eager op-by-op dispatch costs ~5x more here."""
    import jax

    from bpcompile.backends.jax.translate import to_jax_function
    from bpcompile.ir.traverse import leaves

    try:
        args = leaves([loss] + list(wrt))
        fn, _ = to_jax_function([loss], args)
        names = [a.attr("name") for a in args]
        wrt_names = [w.attr("name") for w in wrt]

        def f(params, rest):
            env = {**rest, **params}
            return fn(*[env[k] for k in names])[0]

        params = {k: values[k] for k in wrt_names}
        rest = {k: values[k] for k in names if k not in params}
        vg = jax.jit(jax.value_and_grad(f), compiler_options=FAST_COMPILE)
        v, g = vg(params, rest)
        return Outcome("jax.grad", np.asarray(v), {k: np.asarray(g[k]) for k in wrt_names})
    except Exception as e:  # noqa: BLE001
        return Outcome("jax.grad", error=_describe(e))


def _close(x, y, tol):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    fx, fy = np.isfinite(x), np.isfinite(y)
    if not np.array_equal(fx, fy):
        return False, "non-finite on one side only"
    if not fx.all() and not np.array_equal(x[~fx], y[~fy], equal_nan=True):
        return False, "different non-finite values"
    scale = max(1.0, float(np.abs(x[fx]).max(initial=0)), float(np.abs(y[fy]).max(initial=0)))
    err = float(np.abs(x[fx] - y[fy]).max(initial=0)) / scale
    return err <= tol, f"rel err {err:.2e} > {tol:g}"


def compare(a: Outcome, b: Outcome, params: dict, dtype: str) -> list[tuple[str, str]]:
    """Disagreements between two successful outcomes as (class, detail). Every gradient must
    have its param's shape and dtype; values agree to TOL[dtype] of the larger magnitude."""
    tol, out = TOL[dtype], []
    pair = f"{a.name} vs {b.name}"
    ok, why = _close(a.value, b.value, tol)
    if not ok:
        out.append((f"loss value ({pair})", why))
    for k, shape in params.items():
        shape = tuple(shape)
        ga, gb = a.grads.get(k), b.grads.get(k)
        if ga is None or gb is None:
            out.append((f"missing gradient ({pair})", k))
            continue
        for side, g in ((a, ga), (b, gb)):
            if np.shape(g) != shape or np.asarray(g).dtype != np.dtype(dtype):
                out.append((f"gradient shape/dtype ({side.name})",
                            f"d{k}: {np.asarray(g).dtype}{list(np.shape(g))}, "
                            f"param {dtype}{list(shape)}"))
        try:  # values compared even when a shape is wrong (a 0-d constant broadcasts)
            ga, gb = np.broadcast_to(ga, shape), np.broadcast_to(gb, shape)
        except ValueError:
            continue
        ok, why = _close(ga, gb, tol)
        if not ok:
            out.append((f"gradient value ({pair})", f"d{k}: {why}"))
    return out


def run_recipe(recipe: dict, backends=BACKENDS, oracle: bool = True) -> dict:
    """Build, compile on every backend, compare all pairs (each backend with the others and
    with jax.grad). Returns {"findings": [(class, detail)], "outcomes": {...}}; no exception
    escapes, so one bad graph never stops a run."""
    try:
        loss, wrt, values = build(recipe)
    except Exception as e:  # noqa: BLE001 (a valid recipe that fails to build is a finding)
        return {"findings": [("graph construction", _describe(e))], "outcomes": {}}
    outs = {b: run_backend(b, loss, wrt, values) for b in backends}
    if oracle:
        outs["jax.grad"] = run_oracle(loss, wrt, values)
    good = [o for o in outs.values() if o.ok]
    findings = []
    for o in outs.values():
        if not o.ok and o.name != "jax.grad":
            where = "all" if not good else o.name
            findings.append((f"crash ({where}): {o.error.split(':')[0]}", o.error))
    shapes = {w.attr("name"): tuple(w.shape) for w in wrt}

    def pairs():
        good = [o for o in outs.values() if o.ok]
        return [f for i in range(len(good)) for j in range(i + 1, len(good))
                for f in compare(good[i], good[j], shapes, recipe["dtype"])]

    found = pairs()
    if oracle and any("jax.grad" in c for c, _ in found):
        # The jitted oracle runs at XLA -O0 for compile speed; XLA has produced NaN there
        # (seed 514). Before blaming a backend, ask the eager oracle, bp.check's own.
        from bpcompile.check import jax_gradient

        try:
            v, g = jax_gradient(loss, wrt, values)
            outs["jax.grad"] = Outcome("jax.grad", np.asarray(v), g)
        except Exception as e:  # noqa: BLE001
            outs["jax.grad"] = Outcome("jax.grad", error=_describe(e))
        found = pairs()
    findings += found
    return {"findings": list(dict.fromkeys(findings)), "outcomes": outs}


def shrink(recipe: dict, still_fails, budget: int = 80) -> dict:
    """Greedy reduction: replace tree nodes by their children or by a leaf, drop the
    cross-entropy term, while `still_fails(candidate)` holds; at most `budget` tries."""
    best, tries = recipe, 0

    def candidates(t):
        kids = subtrees(t)
        yield from kids  # the node replaced by one of its children
        if t[0] != "leaf":
            for name in sorted(best["params"]):
                if name != "Q":
                    yield ("leaf", name)
        for i, k in enumerate(kids):  # a child replaced by a smaller version of itself
            for c in candidates(k):
                yield replace_child(t, i, c)

    improved = True
    while improved and tries < budget:
        improved = False
        cands = []
        if best["ce_labels"] is not None:
            cands.append(with_tree(best, best["tree"], ce_labels=None))
        cands += [with_tree(best, c) for c in candidates(best["tree"])
                  if size(c) < size(best["tree"])]
        for cand in cands:
            if tries >= budget:
                break
            tries += 1
            if still_fails(cand):
                best, improved = cand, True
                break
    return best


def reproducer(recipe: dict) -> str:
    """A standalone script (run from the repository root) that re-runs one recipe."""
    return (
        "import sys; sys.path.insert(0, 'benchmarks')\n"
        "import jax; jax.config.update('jax_enable_x64', True)\n"
        "from graph_recipes import run_recipe\n"
        f"recipe = {recipe!r}\n"
        "for cls, detail in run_recipe(recipe)['findings']:\n"
        "    print(cls, '|', detail)\n"
    )
