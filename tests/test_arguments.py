"""Argument conversion, byte order, odd arrays, positional arguments and shape declarations.

One rule (signature.refusal / Signature.convert, docs/reliability.md "Argument conversion, byte
order and odd arrays") on every backend and call path: each case is compared with the NumPy
reference backend called with native, contiguous arrays of the declared dtypes.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.errors import ArgumentError, ShapeError

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

BACKENDS = ("numpy", "llvm", "jax")
_CACHE: dict = {}


def _model(kind: str, n: int):
    """(loss, wrt, native arguments). "packed": x, w of one float dtype with a bool mask and
    int32 indices (the JAX backend packs the small floats); "split": x float32, w float64 (one
    argument per dtype, so the JAX backend passes the arrays to jit unpacked)."""
    r = np.random.default_rng(n)
    if kind == "split":
        x, w = bp.input("x", (n, 4), "float32"), bp.param("w", (4,), "float64")
        loss = bp.sum(bp.square(bp.cast(x, "float64") * w)) + bp.sum(w)
        vals = dict(x=r.standard_normal((n, 4)).astype(np.float32), w=r.standard_normal(4))
        return loss, [w], vals
    dt = kind
    x, m = bp.input("x", (n, 4), dt), bp.input("m", (n, 4), "bool")
    k, w = bp.input("k", (n,), "int32"), bp.param("w", (4,), dt)
    # (take's VJP cannot reshape a zero-size cotangent yet: index ops with n = 0 use a cast)
    picked = bp.take(w, k) if n else bp.cast(k, dt)
    loss = bp.sum(bp.where(m, x * w, bp.square(x * w))) + bp.sum(picked * 3.0)
    vals = dict(
        x=r.standard_normal((n, 4)).astype(dt),
        m=r.random((n, 4)) < 0.5,
        k=r.integers(0, 4, n).astype(np.int32),
        w=r.standard_normal(4).astype(dt),
    )
    return loss, [w], vals


def _compiled(kind, n, backend, **options):
    key = (kind, n, backend, tuple(sorted(options.items())))
    if key not in _CACHE:
        loss, wrt, vals = _model(kind, n)
        _CACHE[key] = (bp.compile(loss, wrt, backend=backend, **options), vals)
    return _CACHE[key]


def _odd(a: np.ndarray, order: str, layout: str, readonly: bool) -> np.ndarray:
    """`a` with the same values as a byte-swapped / strided / Fortran / unaligned /
    read-only array."""
    dt = a.dtype.newbyteorder() if order == "swapped" else a.dtype
    if layout == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],) if a.ndim else (), dt)
        out = big[..., ::2] if a.ndim else big
    elif layout == "fortran":
        out = np.zeros(a.shape, dt, order="F")
    elif layout == "unaligned":
        raw = np.zeros(a.nbytes + 1, np.uint8)
        out = raw[1:].view(dt).reshape(a.shape)
    else:
        out = np.zeros(a.shape, dt)
    out[...] = a
    if readonly:
        out.flags.writeable = False
    return out


def _check(result, ref, rtol):
    (v, g), (rv, rg) = result, ref
    np.testing.assert_allclose(np.asarray(v), rv, rtol=rtol, atol=rtol)
    assert g.keys() == rg.keys()
    for name in g:
        assert np.asarray(g[name]).shape == rg[name].shape
        np.testing.assert_allclose(np.asarray(g[name]), rg[name], rtol=rtol, atol=rtol)


ODD = list(
    itertools.product(("native", "swapped"), ("contiguous", "strided", "fortran", "unaligned"),
                      (False, True))
)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,n", [("float32", 3), ("float64", 3), ("split", 3),
                                    ("float64", 0), ("split", 0)])
def test_odd_arrays_table(backend, kind, n):
    """dtypes x byte orders x contiguity x read-only x zero-size, on every backend, against
    the NumPy reference; native calls come first, so JAX's dispatch cache is warm when the
    byte-swapped arrays arrive (a warm jax.jit reads their bytes as native)."""
    fn, vals = _compiled(kind, n, backend)
    ref_fn, _ = _compiled(kind, n, "numpy")
    ref = ref_fn(**vals)
    ref = (np.asarray(ref[0]), {k: np.array(v) for k, v in ref[1].items()})
    rtol = 1e-5 if kind == "float32" else 1e-12
    for order, layout, readonly in ODD:
        args = {k: _odd(v, order, layout, readonly) for k, v in vals.items()}
        snapshot = {k: v.copy() for k, v in args.items()}
        for _ in range(2):  # the second call meets warm caches / fast paths
            try:
                _check(fn(**args), ref, rtol)
            except AssertionError as e:
                raise AssertionError(f"{backend} {kind} n={n}: {order} {layout} "
                                     f"readonly={readonly}: {e}") from None
        for k in args:  # inputs are never written
            np.testing.assert_array_equal(args[k], snapshot[k])


@pytest.mark.parametrize("backend", BACKENDS)
def test_byte_swapped_scalars_and_views(backend):
    """A byte-swapped 0-d array and a byte-swapped negative-stride view are converted too."""
    x, w = bp.input("x", (), "float64"), bp.param("w", (3,), "float64")
    fn = bp.compile(bp.sum(w * w) * x, [w], backend=backend)
    wv = np.array([1.0, 2.0, 3.0])
    want = fn(x=np.float64(2.0), w=wv)
    got = fn(x=np.array(2.0, ">f8"), w=wv[::-1].astype(">f8")[::-1])
    assert float(got[0]) == float(want[0]) == 28.0
    np.testing.assert_array_equal(np.asarray(got[1]["w"]), np.asarray(want[1]["w"]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "what",
    [
        np.array([["a"] * 4] * 3),  # strings
        np.array([[b"a"] * 4] * 3),  # bytes
        np.full((3, 4), None, object),  # objects (even of floats: np.full((3, 4), 1.0, object))
        np.full((3, 4), 1.0, object),
        np.zeros((3, 4), complex),
        np.zeros((3, 4), "datetime64[s]"),
        np.zeros((3, 4), "V8"),
    ],
    ids=["str", "bytes", "object-none", "object-float", "complex", "datetime", "void"],
)
def test_non_numeric_arrays_are_named_errors(backend, what):
    fn, vals = _compiled("float64", 3, backend)
    fn(**vals)  # warm
    with pytest.raises(ArgumentError, match=r"argument 'x': expected dtype float64.*got dtype"):
        fn(**{**vals, "x": what})


# ---- the casting rule -------------------------------------------------------------------------
# (declared input, given value, accepted?) -- accepted values must equal an explicit astype
RULE = [
    ("float32", np.ones((3, 4), np.float64), True),  # float -> float: any width
    ("float32", np.ones((3, 4), np.float16), True),
    ("float64", np.ones((3, 4), np.float32), True),
    ("float32", np.ones((3, 4), np.int64), True),  # int -> float: same_kind converts
    ("float64", np.ones((3, 4), np.int32), True),
    ("float64", np.ones((3, 4), np.uint8), True),
    ("float32", np.ones((3, 4), bool), True),  # bool -> float
    ("float64", np.ones((3, 4), np.complex128), False),
    ("float32", [[1, 2, 3, 4]] * 3, True),  # Python data is weakly typed: ints fill floats
    ("float64", [[True, False, True, False]] * 3, True),
    ("float64", [[1.5, 2, 3, 4]] * 3, True),
    ("int32", np.ones((3,), np.int64), True),  # int -> int32: range-checked
    ("int32", np.ones((3,), np.uint8), True),
    ("int32", np.array([2**31, 0, 0], np.int64), False),
    ("int32", np.array([-(2**31) - 1, 0, 0], np.int64), False),
    ("int32", np.ones((3,), np.float32), False),  # float -> int
    ("int32", np.ones((3,), bool), True),  # bool -> int
    ("int32", [1.0, 0.0, 1.0], False),  # Python floats for ints
    ("int32", [1, 0, 1], True),
    ("bool", np.ones((3, 4), np.int32), False),  # number -> bool
    ("bool", [[1, 0, 1, 0]] * 3, False),
    ("bool", [[True, False, True, False]] * 3, True),
]


def _rule_model(declared):
    """A float64 loss reading one argument `a` of the declared dtype (shape (3, 4) or (3,))."""
    w = bp.param("w", (4,), "float64")
    if declared == "int32":
        a = bp.input("a", (3,), "int32")
        return bp.sum(bp.cast(a, "float64")) * bp.sum(w), w
    a = bp.input("a", (3, 4), declared)
    return bp.sum(bp.cast(a, "float64") * w), w


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("declared,given,ok", RULE, ids=[f"{d}<-{i}" for i, (d, _, _) in
                                                          enumerate(RULE)])
def test_casting_rule(backend, declared, given, ok):
    key = ("rule", declared, backend)
    if key not in _CACHE:
        loss, w = _rule_model(declared)
        _CACHE[key] = bp.compile(loss, [w], backend=backend)
    fn = _CACHE[key]
    w = np.arange(4.0)
    if not ok:
        with pytest.raises(ArgumentError, match=r"argument 'a'"):
            fn(a=given, w=w)
        return
    want = fn(a=np.asarray(given).astype(declared), w=w)
    got = fn(a=given, w=w)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_python_scalar_for_0d_input(backend):
    x, w = bp.input("x", (), "float32"), bp.param("w", (2,), "float32")
    fn = bp.compile(bp.sum(w) * x, [w], backend=backend)
    w0 = np.ones(2, np.float32)
    assert float(fn(x=3, w=w0)[0]) == float(fn(x=3.0, w=w0)[0]) == 6.0
    assert float(fn(x=np.int64(3), w=w0)[0]) == 6.0  # int -> float: same_kind
    with pytest.raises(ArgumentError, match="argument 'x'.*complex128"):
        fn(x=np.complex128(3), w=w0)  # a NumPy scalar has a dtype: the rule applies


def test_jax_arrays_follow_the_same_rule():
    """JAX arrays are checked when JAX traces, by the same rule."""
    fn, vals = _compiled("float64", 3, "jax")
    ref = fn(**vals)
    got = fn(**{**vals, "x": jnp.asarray(vals["x"].astype(np.float32))})  # float -> float
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(ref[0]), rtol=1e-6)
    got = fn(**{**vals, "x": jnp.asarray(vals["x"].astype(np.int64))})  # int -> float
    want = fn(**{**vals, "x": vals["x"].astype(np.int64).astype(np.float64)})
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-12)
    with pytest.raises(ArgumentError, match=r"argument 'x'.*complex"):
        fn(**{**vals, "x": jnp.asarray(vals["x"].astype(np.complex128))})
    # JAX arrays mixed with a byte-swapped NumPy array: the NumPy one is converted on the host
    mixed = {k: jnp.asarray(v) for k, v in vals.items()}
    mixed["x"] = vals["x"].astype(">f8")
    _check(fn(**mixed), (np.asarray(ref[0]), {"w": np.asarray(ref[1]["w"])}), 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bp_function_follows_the_rule(backend):
    x = bp.input("x", (2,), "float32")
    f = bp.function({"y": x * 2.0}, backend=backend)
    np.testing.assert_array_equal(np.asarray(f(x=np.array([1, 2], ">f8"))["y"]), [2.0, 4.0])
    np.testing.assert_array_equal(np.asarray(f(x=np.array([1, 2], np.int64))["y"]), [2.0, 4.0])
    with pytest.raises(ArgumentError, match="argument 'x'.*complex128"):
        f(x=np.array([1 + 0j, 2]))


# ---- positional arguments -------------------------------------------------------------------
@pytest.mark.parametrize("backend,options", [("numpy", {}), ("llvm", {}),
                                             ("llvm", {"copy_outputs": True}), ("jax", {})])
def test_positional_arguments(backend, options):
    fn, vals = _compiled("float64", 3, backend, **options)
    names = fn.signature.names
    assert sorted(names) == sorted(vals) and "x" in repr(fn)
    ref = fn(**vals)
    ordered = [vals[n] for n in names]
    for got in (fn(*ordered), fn(*ordered[:2], **{n: vals[n] for n in names[2:]})):
        _check(got, (np.asarray(ref[0]), {"w": np.array(ref[1]["w"])}), 1e-12)
    with pytest.raises(ArgumentError, match=r"5 positional arguments given.*takes 4"):
        fn(*ordered, ordered[0])
    with pytest.raises(ArgumentError, match=rf"argument '{names[0]}' given both"):
        fn(*ordered[:1], **vals)
    with pytest.raises(ArgumentError, match=rf"missing {names[-1]}"):
        fn(*ordered[:-1])
    # a misordered call: the dtype/shape error names the order positions follow
    with pytest.raises(ArgumentError, match=rf"expected .*follow the order {names[0]}, "):
        fn(*ordered[::-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_positional_arguments_bp_function(backend):
    x, y = bp.input("x", (2,), "float64"), bp.input("y", (2,), "float64")
    f = bp.function({"z": x - y}, backend=backend)
    a, b = np.array([5.0, 7.0]), np.array([1.0, 2.0])
    first = f.signature.names[0]
    want = a - b if first == "x" else b - a
    np.testing.assert_array_equal(np.asarray(f(a, b)["z"]), want)
    with pytest.raises(ArgumentError, match="given both"):
        f(a, **{first: b, "y" if first == "x" else "x": b})


# ---- shape declarations ---------------------------------------------------------------------
BAD_SHAPES = [
    ((None, 2), "shapes are static"),
    ((2.5, 4), "size 2.5 .float. is not an integer"),
    ((2.0, 4), "not an integer"),
    ((np.float64(3), 2), "not an integer"),
    ((True, 2), "bool. is not an integer"),
    ((-1, 2), "size -1 is negative"),
    ((2**40, 2**40), "too large"),
    ((0, 2**70), "too large"),
    ((2**63,), "too large"),
    ("ab", "not an integer"),
    (None, "must be a tuple of ints"),
]


@pytest.mark.parametrize("make", [bp.input, bp.param], ids=["input", "param"])
@pytest.mark.parametrize("shape,msg", BAD_SHAPES, ids=[repr(s) for s, _ in BAD_SHAPES])
def test_bad_shapes_are_refused_at_declaration(make, shape, msg):
    with pytest.raises(ShapeError, match=rf"{make.__name__} 'z': .*{msg}"):
        make("z", shape, "float32")


def test_integer_shapes_are_exact():
    z = bp.input("z", (np.int64(3), np.int32(2)))
    assert z.shape == (3, 2) and all(type(s) is int for s in z.shape)
    assert bp.param("p", 5).shape == (5,)
    assert bp.input("e", ()).shape == ()
    assert bp.input("big", (2**31, 2**31)).shape == (2**31, 2**31)  # fits int64: fine
    x = bp.input("x", (2, 3))
    assert bp.reshape(x, (3, -1)).shape == (3, 2)
    with pytest.raises(ShapeError, match="reshape: .*2.5"):
        bp.reshape(x, (2.5, 4))
    with pytest.raises(ShapeError, match="broadcast_to: .*negative"):
        bp.broadcast_to(x, (-2, 3))


def test_data_parallel_path_follows_the_rule():
    """The data-parallel JAX caller converts host arrays and takes positional arguments."""
    n = 2 * len(jax.devices())
    x, w = bp.input("x", (n, 3), "float64"), bp.param("w", (3,), "float64")
    loss = bp.sum(bp.square(x @ w))
    fn = bp.compile(loss, [w], backend="jax", data_parallel=True)
    ref = bp.compile(loss, [w], backend="numpy")
    xv, wv = np.arange(3.0 * n).reshape(n, 3), np.array([1.0, -2.0, 0.5])
    want = ref(x=xv, w=wv)
    order = fn.signature.names
    args = {"x": xv.astype(">f8")[:, ::-1][:, ::-1], "w": wv.astype(">f8")}
    for got in (fn(**args), fn(*[args[k] for k in order])):
        np.testing.assert_allclose(np.asarray(got[0]), want[0], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(got[1]["w"]), want[1]["w"], rtol=1e-12)
    with pytest.raises(ArgumentError, match="argument 'x'.*complex128"):
        fn(x=xv.astype(np.complex128), w=wv)
