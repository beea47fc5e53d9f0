"""bp.function on LLVM with a float scalar first output takes the native checked call path
(pycall.py, as bp.compile's): same numbers as the Python path, positional arguments and bad
arguments handled by its slow path with errors naming the argument; HVP uses it."""

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import train
from bpcompile.errors import ArgumentError

jax = pytest.importorskip("jax")
jnp = jax.numpy


def _graph():
    x = bp.input("x", (4, 3), "float64")
    W = bp.param("W", (3, 2), "float64")
    h = bp.tanh(x @ W)
    return x, W, h, bp.sum(h * h)


def _values(seed=0):
    r = np.random.default_rng(seed)
    return {"x": r.standard_normal((4, 3)), "W": r.standard_normal((3, 2))}


def _python_path(fn, kw):
    first, rest = fn.impl.run(fn.signature.bind(kw, ()))
    return dict(zip(fn.names, [first] + list(rest)))


def assert_same(a, b):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_scalar_first_output_takes_the_native_path_with_the_same_numbers():
    x, W, h, loss = _graph()
    fn = bp.function({"loss": loss, "h": h, "dW": bp.grad(loss, W)}, backend="llvm")
    assert fn._native is not None
    kw = _values()
    out = fn(**kw)
    assert_same(out, _python_path(fn, kw))
    ref = bp.function({"loss": loss, "h": h, "dW": bp.grad(loss, W)})(**kw)  # numpy
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-12, atol=1e-14, err_msg=k)
    # positional (declared order x, W) and lists go through the slow path, same numbers
    assert_same(fn(kw["x"], kw["W"]), out)
    assert_same(fn(x=kw["x"].tolist(), W=kw["W"]), out)


def test_native_path_errors_name_the_argument():
    _, _, h, loss = _graph()
    fn = bp.function({"loss": loss, "h": h}, backend="llvm")
    kw = _values()
    with pytest.raises(ArgumentError, match=r"'?x'?.*\(4, 3\)|\(4, 3\).*'?x'?"):
        fn(x=np.zeros((5, 3)), W=kw["W"])
    with pytest.raises(ArgumentError, match="W"):
        fn(x=kw["x"])
    with pytest.raises(ArgumentError, match="z"):
        fn(**kw, z=np.zeros(2))


def test_array_first_output_keeps_the_python_path():
    _, _, h, loss = _graph()
    fn = bp.function({"h": h, "loss": loss}, backend="llvm")
    assert fn._native is None
    kw = _values(1)
    assert_same(fn(**kw), _python_path(fn, kw))


def test_llvm_hvp_uses_the_native_path_and_matches_jax():
    x, W, _, loss = _graph()
    H = train.hvp(loss, [W], backend="llvm", blas_threads=1)
    assert H.fn._native is not None
    kw = _values(2)
    v = {"W": np.random.default_rng(3).standard_normal((3, 2))}
    grads, hv = H(v, **kw)

    def f(w):
        return jnp.sum(jnp.tanh(kw["x"] @ w) ** 2)

    g_ref, hv_ref = jax.jit(lambda w, t: jax.jvp(jax.grad(f), (w,), (t,)))(kw["W"], v["W"])
    np.testing.assert_allclose(grads["W"], g_ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(hv["W"], hv_ref, rtol=1e-9, atol=1e-12)


def test_warm_started_function_also_gets_the_native_path():
    _, _, h, loss = _graph()
    first = bp.function({"loss": loss, "h": h}, backend="llvm")
    again = bp.function({"loss": loss, "h": h}, backend="llvm")  # a warm-cache hit if enabled
    assert first._native is not None and again._native is not None
    kw = _values(4)
    assert_same(again(**kw), first(**kw))
