"""The graph-level compile-cache (bpcompile/warm_cache.py, issue #14): a compile of a graph
built again is served from disk without autodiff, passes or codegen, gives bit-identical
results, offers everything a fresh compile does, and misses whenever anything that changes
the program changes."""

from __future__ import annotations

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.errors import IndexRangeError
from bpcompile.ir.fingerprint import Unkeyable, fingerprint

pytest.importorskip("llvmlite")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BPCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def mlp(width=8, depth=2, dtype="float32", act=bp.tanh, scale=0.5, order="xy"):
    """A small residual MLP, built afresh each call (a new process would do the same)."""
    leaves = {}
    for name in order:
        leaves[name] = bp.input(name, (4, width), dtype)
    x, y = leaves["x"], leaves["y"]
    h, ps = x, []
    for i in range(depth):
        W, b = bp.param(f"W{i}", (width, width), dtype), bp.param(f"b{i}", (width,), dtype)
        ps += [W, b]
        h = h + act(h @ W + b) * scale
    return bp.mean((h - y) ** 2), ps


def values(fn, seed=0):
    r = np.random.default_rng(seed)
    return {a.attr("name"): (r.standard_normal(a.shape) * 0.3).astype(a.dtype)
            for a in fn.args}


def compiled(build=mlp, **options):
    loss, ps = build()
    return bp.compile(loss, ps, backend="llvm", **options)


def assert_same_results(a, b, vals):
    va, ga = a(**vals)
    va, ga = float(va), {k: np.array(v) for k, v in ga.items()}
    vb, gb = b(**vals)
    assert va == float(vb)
    assert ga.keys() == gb.keys()
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k])


def test_second_compile_is_a_warm_hit_with_identical_results():
    cold = compiled()
    assert cold.cache_status == "miss"
    warm = compiled()
    assert warm.cache_status == "hit" and warm.impl.warm_hit
    vals = values(cold)
    assert_same_results(cold, warm, vals)
    # positional calls, the slow path and copy semantics work as on a fresh compile
    v, g = warm(*[vals[n] for n in warm.signature.names])
    assert float(v) == float(cold(**vals)[0])


def test_warm_hit_offers_everything_a_fresh_compile_does():
    cold = compiled()
    warm = compiled()
    assert warm.cache_status == "hit"
    assert warm.memory() == cold.memory()
    assert "warm compile-cache hit" in warm.stats()
    assert cold.stats().splitlines()[0] == warm.stats().splitlines()[0]
    assert warm.source("llvm-unoptimized") == cold.source("llvm-unoptimized")  # rebuilt lazily
    assert warm.graph() == cold.graph()
    assert len(warm.outputs) == len(cold.outputs)
    assert warm.memory(timeline=True)["timeline"] == cold.memory(timeline=True)["timeline"]
    assert warm.impl.kernel_stats == cold.impl.kernel_stats
    assert_same_results(cold, warm, values(cold, 1))  # still calls the loaded program


def test_function_outputs_are_served_warm():
    def build():
        x, W = bp.input("x", (3, 5)), bp.param("W", (5, 2))
        return {"y": bp.tanh(x @ W), "n": bp.sum(W * W)}

    cold = bp.function(build(), backend="llvm")  # names its unnamed outputs y and n
    warm = bp.function(build(), backend="llvm")
    assert warm.cache_status == "hit"
    vals = values(cold, 2)
    a, b = cold(**vals), warm(**vals)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def _variants():
    """One change each to what the program computes or how it is built: each must miss."""
    return {
        "constant": lambda: compiled(lambda: mlp(scale=0.25)),
        "shape": lambda: compiled(lambda: mlp(width=6)),
        "dtype": lambda: compiled(lambda: mlp(dtype="float64")),
        "op": lambda: compiled(lambda: mlp(act=bp.sigmoid)),
        "depth": lambda: compiled(lambda: mlp(depth=3)),
        "argument order": lambda: compiled(lambda: mlp(order="yx")),
        "wrt": lambda: bp.compile(*(lambda lp: (lp[0], lp[1][:2]))(mlp()), backend="llvm"),
        "option": lambda: compiled(opt=2),
        "precision": lambda: compiled(precision="bfloat16"),
        "passes": lambda: compiled(passes=["canonicalize", "fuse"]),
    }


@pytest.mark.parametrize("change", list(_variants()))
def test_any_change_is_a_miss(change):
    base = compiled()
    assert compiled().cache_status == "hit"
    fn = _variants()[change]()
    assert fn.cache_status == "miss", change
    again = _variants()[change]()  # and the changed program is cached in its own right
    assert again.cache_status == "hit"
    vals = values(again, 3)
    assert_same_results(fn, again, vals)
    if change == "argument order":  # same math, other positional layout: same numbers
        assert_same_results(base, again, vals)


def test_module_tunables_are_part_of_the_key(monkeypatch):
    from bpcompile.backends.llvm import emit

    compiled()
    assert compiled().cache_status == "hit"
    monkeypatch.setattr(emit, "SPLIT_STEPS", 0)  # a different schedule split
    assert compiled().cache_status == "miss"


def test_cache_false_and_other_backends_skip_it():
    compiled()
    assert compiled(cache=False).cache_status == "cache=False"
    loss, ps = mlp()
    assert "small graph" in bp.compile(loss, ps, backend="numpy").cache_status
    x = bp.param("x", (3,))
    assert "jax" in bp.compile(bp.sum(x * x), [x], backend="jax").cache_status


def _warm_entries(d):
    return sorted(d.glob("*.warm"))


def test_damaged_warm_entries_are_misses_and_rewritten(cache_dir):
    cold = compiled()
    (entry,) = _warm_entries(cache_dir)
    good = entry.read_bytes()
    vals = values(cold)
    for bad in (good[: len(good) // 2], good[:-1] + bytes([good[-1] ^ 1]), b"", b"\0" * 64):
        entry.write_bytes(bad)
        fn = compiled()
        assert fn.cache_status == "miss"
        assert_same_results(cold, fn, vals)
        assert entry.read_bytes() == good or compiled().cache_status == "hit"


def test_missing_or_damaged_object_entry_falls_back_to_a_compile(cache_dir):
    cold = compiled()
    (obj,) = sorted(cache_dir.glob("*.o"))
    vals = values(cold)
    obj.unlink()
    fn = compiled()
    assert fn.cache_status.startswith("miss: stale entry")
    assert_same_results(cold, fn, vals)
    assert compiled().cache_status == "hit"  # both entries written again
    data = obj.read_bytes()
    obj.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:])
    fn = compiled()
    assert fn.cache_status.startswith("miss")
    assert_same_results(cold, fn, vals)


def test_computed_index_errors_name_the_site_on_a_warm_hit():
    def build():
        x, lab = bp.param("x", (5,)), bp.input("lab", (3,), "int32")
        return bp.sum(bp.take(x, lab - 1) ** 2), [x]

    def call(fn, bad):
        return fn(x=np.ones(5, np.float32), lab=np.array([1, bad, 2], np.int32))

    cold = bp.compile(*build(), backend="llvm")
    warm = bp.compile(*build(), backend="llvm")
    assert warm.cache_status == "hit"
    msgs = []
    for fn in (cold, warm):
        with pytest.raises(IndexRangeError) as e:
            call(fn, 7)
        msgs.append(str(e.value))
        assert float(call(fn, 3)[0]) == 3.0  # the status word was reset
    assert msgs[0] == msgs[1] and "take (axis 0 of size 5)" in msgs[0]


def test_fingerprint_is_structural_and_sees_every_change():
    a, _ = mlp()
    b, _ = mlp()
    assert a is b or fingerprint([a]) == fingerprint([b])
    assert fingerprint([a]) != fingerprint([mlp(scale=0.25)[0]])
    assert fingerprint([a]) != fingerprint([mlp(width=6)[0]])
    x = bp.param("x", (3,))
    assert fingerprint([x * 2.0]) != fingerprint([x * 2.5])
    assert fingerprint([x * 2.0]) != fingerprint([x + 2.0])
    assert fingerprint([x * 2.0]) == fingerprint([x * 2])  # the same graph (weak scalar)
    assert fingerprint([bp.sum(x, 0)]) != fingerprint([bp.sum(x, 0, keepdims=True)])
    assert fingerprint([x * 2], [x]) != fingerprint([x * 2])  # what is differentiated counts


def test_fingerprint_of_a_deep_chain_does_not_recurse():
    h = bp.param("h", (2,))
    for _ in range(5000):
        h = bp.tanh(h) + 1.0
    assert len(fingerprint([bp.sum(h)])) == 64


def test_python_callables_are_not_keyed():
    @bp.custom_vjp
    def f(x):
        return bp.tanh(x)

    def f_fwd(x):
        y = bp.tanh(x)
        return y, y

    def f_bwd(y, g):
        return (g * (1 - y * y),)

    f.defvjp(f_fwd, f_bwd)
    x = bp.param("x", (3,))
    with pytest.raises(Unkeyable):
        fingerprint([bp.sum(f(x))])
    fn = bp.compile(bp.sum(f(x)), [x], backend="llvm")
    assert fn.cache_status.startswith("not keyed")
    v, g = fn(x=np.ones(3, np.float32))
    np.testing.assert_allclose(g["x"], 1 - np.tanh(1.0) ** 2, rtol=1e-6)


def _line_a():
    x, W = bp.input("x", (3, 5)), bp.param("W", (5, 2))
    return bp.sum(bp.tanh(x @ W)), [W]


def _line_b():  # the same graph, built on other lines
    x, W = bp.input("x", (3, 5)), bp.param("W", (5, 2))
    return bp.sum(bp.tanh(x @ W)), [W]


def _take_a():
    x, i = bp.param("x", (5,)), bp.input("i", (2,), "int32")
    return bp.sum(bp.take(x, i) ** 2), [x]


def _take_b():  # its index errors name this line
    x, i = bp.param("x", (5,)), bp.input("i", (2,), "int32")
    return bp.sum(bp.take(x, i) ** 2), [x]


def test_names_and_index_sites_lines_are_keyed_other_lines_are_not():
    import gc

    vals = {"x": np.ones((3, 5), np.float32), "W": np.full((5, 2), 0.1, np.float32)}
    a = bp.compile(*_line_a(), backend="llvm")
    want = float(a(**vals)[0])
    del a
    gc.collect()  # nodes are interned while alive: let the first graph go
    b = bp.compile(*_line_b(), backend="llvm")
    assert b.cache_status == "hit" and float(b(**vals)[0]) == want
    line = _line_b.__code__.co_firstlineno + 2  # comments name the graph's own lines
    assert f"test_warm_cache.py:{line}" in b.source("llvm-unoptimized")
    for build in (_take_a, _take_b):
        fn = bp.compile(*build(), backend="llvm")
        assert fn.cache_status == "miss"  # a run-time index error names the take's line
        del fn
        gc.collect()
    loss, ps = mlp()
    compiled()
    assert bp.compile(loss.named("objective"), ps, backend="llvm").cache_status == "miss"


def test_numpy_programs_of_large_graphs_are_served_warm():
    def build():
        return mlp(width=4, depth=32)

    cold = bp.compile(*build(), backend="numpy")
    warm = bp.compile(*build(), backend="numpy")
    assert cold.cache_status == "miss" and warm.cache_status == "hit"
    assert warm.source() == cold.source() and warm.source("function") == cold.source("function")
    assert warm.impl.src == cold.impl.src  # rebuilt for inspection
    vals = values(cold, 4)
    assert_same_results(cold, warm, vals)
    assert warm.graph() == cold.graph()  # rebuilt on first use
    small = bp.compile(*mlp(depth=1), backend="numpy")
    assert small.cache_status.startswith("small graph")
    assert bp.compile(*build(), backend="numpy", cache=False).cache_status == "cache=False"


def test_train_steps_run_the_same_from_a_warm_hit():
    def build():
        x, y = bp.input("x", (8, 4)), bp.input("y", (8, 1))
        W1, W2 = bp.param("W1", (4, 16)), bp.param("W2", (16, 1))
        return bp.mean((bp.tanh(x @ W1) @ W2 - y) ** 2)

    r = np.random.default_rng(0)
    X, Y = (r.standard_normal(s).astype(np.float32) for s in ((8, 4), (8, 1)))
    init = {"W1": r.standard_normal((4, 16)).astype(np.float32) * 0.3,
            "W2": r.standard_normal((16, 1)).astype(np.float32) * 0.3}
    runs = []
    for status in ("miss", "hit"):
        step = bp.compile_train_step(build(), backend="llvm", init=init,
                                     optimizer=bp.optim.adam(1e-2))
        assert step.fn.cache_status == status
        runs.append([float(step(x=X, y=Y)) for _ in range(4)])
    assert runs[0] == runs[1] and runs[0][-1] < runs[0][0]


def test_scan_and_checkpoint_graphs_hit_across_rebuilds():
    import gc

    def build():  # a scan body's placeholders carry a per-trace scope counter
        xs, h0 = bp.input("xs", (5, 3, 4)), bp.input("h0", (3, 8))
        Wx, Wh, b = bp.param("Wx", (4, 8)), bp.param("Wh", (8, 8)), bp.param("b", (8,))
        _, hs = bp.rnn(xs, h0, Wx, Wh, b)

        @bp.checkpoint(policy="dots_saveable")
        def block(h):
            return bp.tanh(h @ Wh)

        return bp.sum(block(hs[-1]) ** 2) + bp.sum(hs * hs), [Wx, Wh, b]

    first = bp.compile(*build(), backend="llvm")
    vals = values(first, 5)
    want = first(**vals)
    want = (float(want[0]), {k: np.array(v) for k, v in want[1].items()})
    del first
    gc.collect()
    again = bp.compile(*build(), backend="llvm")
    assert again.cache_status == "hit"
    v, g = again(**vals)
    assert float(v) == want[0]
    for k in g:
        np.testing.assert_array_equal(g[k], want[1][k])


def test_a_warm_hit_compiles_nothing_until_asked(monkeypatch):
    """Protocol probes (isinstance(impl, FastCall / JaxProgram)) and calls must not rebuild."""
    from bpcompile import compiled as compiled_mod

    def build():
        return mlp(width=4, depth=12)

    for backend in ("llvm", "numpy"):
        bp.compile(*build(), backend=backend)
        rebuilt = []
        real = compiled_mod.Program._full_program
        monkeypatch.setattr(compiled_mod.Program, "_full_program",
                            lambda self: rebuilt.append(1) or real(self))
        fn = bp.compile(*build(), backend=backend)
        assert fn.cache_status == "hit"
        fn(**values(fn))
        fn.stats(), fn.memory() if backend == "llvm" else None
        assert rebuilt == [], backend
        fn.graph()
        assert rebuilt, backend
        monkeypatch.undo()


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_a_users_own_op_is_not_served_stale(backend):
    """An op a user registers (define_unary) is their Python code, which the graph's hash
    cannot pin: redefining it under the same name must give the new definition's values."""
    from bpcompile.ops import elementwise as ew
    from bpcompile.ops.sympy_funcs import Primitive

    got = []
    for power in (2, 3):
        cls = type("user_pow_op", (Primitive,), {
            "definition": classmethod(lambda c, x, p=power: x**p)})
        ew.define_unary("user_pow_op", ew.DERIVE, cls, "x**p (a test's throwaway op)")
        try:
            x = bp.input("x", (4, 8), "float64")
            W = bp.param("W", (8, 8), "float64")
            fn = bp.compile(bp.sum(bp.unary("user_pow_op", x @ W)), [W], backend=backend)
            assert fn.cache_status == "not keyed: op 'user_pow_op' is defined outside bpcompile"
            xv, wv = np.full((4, 8), 0.5), np.full((8, 8), 0.25)
            got.append(float(fn(x=xv, W=wv)[0]))
        finally:
            ew.remove("user_pow_op")
    z = 0.5 * 0.25 * 8
    np.testing.assert_allclose(got, [32 * z**2, 32 * z**3], rtol=1e-12)
