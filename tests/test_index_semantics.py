"""Index semantics of take / one_hot / cross_entropy labels, on every backend, against JAX.

The contract (docs/reliability.md, "Index semantics"): jnp.take's default mode where it is
sound. An index in [-n, n) selects, negatives counting from the end in the value *and* in the
gradient; anything else is an error: a refused argument for int32 inputs, an IndexRangeError
at run time for an index computed in the graph (NumPy, LLVM), NaN-poisoned loss and gradients
on JAX (a jitted program cannot raise). Labels for one_hot / cross_entropy live in [0, n).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bpcompile as bp
from bpcompile.errors import ArgumentError, IndexRangeError

jax = pytest.importorskip("jax")
jnp = jax.numpy

BACKENDS = ["numpy", "llvm", "jax"]
F64 = "float64"
rng = np.random.default_rng(7)


def _assert_close(got, want, rtol=1e-12):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=1e-12)


def _take_graph(axis, idx_shape, n=5, offset=None):
    """sum(take(x, idx, axis) * w) with idx an input, or `lab - offset` computed from one."""
    shape = (3, n, 2) if axis == 1 else (n, 3)
    x = bp.param("x", shape, F64)
    lab = bp.input("lab", idx_shape, "int32")
    idx = lab if offset is None else lab - offset
    y = bp.take(x, idx, axis=axis)
    w = np.linspace(-1.0, 2.0, int(np.prod(y.shape))).reshape(y.shape)
    return bp.sum(bp.sin(y) * w), x, w


def _jax_take(x, idx, axis, w):
    return jnp.sum(jnp.sin(jnp.take(x, idx, axis=axis)) * w)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("computed", [False, True], ids=["input", "computed"])
def test_take_negative_indices_match_jax(backend, axis, computed):
    """Negative indices wrap once in the value and the gradient lands on the wrapped row
    (it used to be dropped for computed indices)."""
    offset = 2 if computed else None
    loss, x, w = _take_graph(axis, (2, 3), offset=offset)
    fn = bp.compile(loss, [x], backend=backend)
    xv = rng.standard_normal(x.shape)
    idx = np.array([[-1, -5, 4], [0, -1, 2]], np.int32)  # every row, negatives repeated
    lab = idx + 2 if computed else idx
    v, g = fn(x=xv, lab=lab)
    _assert_close(v, _jax_take(xv, idx, axis, w))
    _assert_close(g["x"], jax.grad(_jax_take)(xv, idx, axis, w))


@pytest.mark.parametrize("backend", BACKENDS)
def test_getitem_and_embedding_wrap_negative_computed_ids(backend):
    E = bp.param("E", (6, 3), F64)
    ids = bp.input("ids", (4,), "int32")
    loss = bp.sum(E[ids - 3] ** 2) + bp.sum(bp.layers.embedding(ids - 6, E) * 0.5)
    fn = bp.compile(loss, [E], backend=backend)
    Ev, iv = rng.standard_normal((6, 3)), np.array([0, 5, 3, 1], np.int32)

    def ref(E):
        return jnp.sum(E[iv - 3] ** 2) + jnp.sum(jnp.take(E, iv - 6, axis=0) * 0.5)

    v, g = fn(E=Ev, ids=iv)
    _assert_close(v, ref(Ev))
    _assert_close(g["E"], jax.grad(ref)(Ev))


def _ce_graph(offset=1, n=4):
    z = bp.param("z", (3, n), F64)
    lab = bp.input("lab", (3,), "int32")
    return bp.cross_entropy(z, lab - offset), z


def _jax_ce(z, labels):
    lsm = jax.nn.log_softmax(z, axis=-1)
    return -jnp.mean(jnp.take_along_axis(lsm, labels[:, None], axis=1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_computed_labels_match_jax(backend):
    loss, z = _ce_graph()
    fn = bp.compile(loss, [z], backend=backend)
    zv, lab = rng.standard_normal((3, 4)), np.array([1, 4, 2], np.int32)
    v, g = fn(z=zv, lab=lab)
    _assert_close(v, _jax_ce(zv, lab - 1))
    _assert_close(g["z"], jax.grad(_jax_ce)(zv, lab - 1))


def _assert_out_of_range(backend, call, fragments):
    """NumPy/LLVM raise IndexRangeError naming the op, the index and the range; on JAX the loss
    is NaN and so is every gradient it reaches, at least in the entries the bad index touches
    (never a finite loss that disagrees with its gradient; a gradient norm is NaN)."""
    if backend == "jax":
        v, g = call()
        assert np.isnan(np.asarray(v)), v
        for k, a in g.items():
            assert np.isnan(np.asarray(a)).any(), (k, a)
        return
    with pytest.raises(IndexRangeError) as info:
        call()
    msg = str(info.value)
    for f in fragments:
        assert f in msg, (f, msg)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [5, -6, 2**31 - 1], ids=["n", "-n-1", "int32max"])
def test_computed_take_out_of_range(backend, bad):
    loss, x, _ = _take_graph(0, (3,), offset=1)
    fn = bp.compile(loss, [x], backend=backend)
    xv = rng.standard_normal(x.shape)
    lab = np.array([1, bad + 1 if bad < 2**31 - 1 else bad, 0], np.int32)
    _assert_out_of_range(backend, lambda: fn(x=xv, lab=lab),
                         ["take (axis 0 of size 5)", "[-5, 5)", str(int(lab[1]) - 1)])
    # the error leaves nothing behind: the next valid call is right (LLVM resets its status)
    good = np.array([1, 5, 0], np.int32)
    v, g = fn(x=xv, lab=good)
    _assert_close(v, _jax_take(xv, good - 1, 0, _take_graph(0, (3,), offset=1)[2]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [0, 5], ids=["label-1", "label=n"])
def test_cross_entropy_computed_label_out_of_range(backend, bad):
    """lab - 1 = -1 or 4 for 4 classes: an error, not a loss ignoring the example while its
    gradient (softmax - one_hot, the rows-sum-to-1 rewrite) does not."""
    loss, z = _ce_graph()
    fn = bp.compile(loss, [z], backend=backend)
    zv = rng.standard_normal((3, 4))
    lab = np.array([1, bad, 2], np.int32)
    _assert_out_of_range(backend, lambda: fn(z=zv, lab=lab),
                         ["one_hot (n=4)", "[0, 4)", f"index {bad - 1} "])


@pytest.mark.parametrize("backend", BACKENDS)
def test_function_outputs_out_of_range(backend):
    """bp.function (the ctypes route on LLVM) checks as the gradient path does."""
    x = bp.input("x", (5,), F64)
    lab = bp.input("lab", (2,), "int32")
    cls = bp.input("cls", (2,), "int32")
    f = bp.function({"y": bp.take(x, lab * 2), "h": bp.one_hot(cls + 1, 3, F64)},
                    backend=backend)
    xv = np.arange(5.0)
    ok_lab, ok_cls = np.array([-2, 1], np.int32), np.array([-1, 1], np.int32)
    out = f(x=xv, lab=ok_lab, cls=ok_cls)
    _assert_close(out["y"], [1.0, 2.0])
    _assert_close(out["h"], [[1, 0, 0], [0, 0, 1]])
    bad_lab, bad_cls = np.array([0, 3], np.int32), np.array([0, 2], np.int32)  # 6; 3
    if backend == "jax":
        h = np.asarray(f(x=xv, lab=ok_lab, cls=bad_cls)["h"])
        assert np.isnan(h[1]).all() and not np.isnan(h[0]).any()
        y = np.asarray(f(x=xv, lab=bad_lab, cls=ok_cls)["y"])  # jnp.take's NaN fill
        assert np.isnan(y[1]) and y[0] == 0.0
        return
    with pytest.raises(IndexRangeError, match=r"one_hot \(n=3\).*index 3 .*\[0, 3\)"):
        f(x=xv, lab=ok_lab, cls=bad_cls)
    with pytest.raises(IndexRangeError, match=r"take \(axis 0 of size 5\).*index 6 .*\[-5, 5\)"):
        f(x=xv, lab=bad_lab, cls=ok_cls)


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_index_ranges(backend):
    """int32 inputs: take accepts [-n, n) (wrapping, gradient included), one_hot [0, n); the
    rest is a refused argument on every backend (JAX: for NumPy index arrays)."""
    E = bp.param("E", (4, 2), F64)
    idx = bp.input("idx", (3,), "int32")
    fn = bp.compile(bp.sum(bp.take(E, idx) * np.arange(6.0).reshape(3, 2)), [E], backend=backend)
    Ev = rng.standard_normal((4, 2))
    v, g = fn(E=Ev, idx=np.array([-4, -1, 3], np.int32))
    _assert_close(g["E"], [[0, 1], [0, 0], [0, 0], [6, 8]])
    for bad in (4, -5):
        with pytest.raises(ArgumentError, match=r"'idx'.*\[-4, 4\)"):
            fn(E=Ev, idx=np.array([0, bad, 1], np.int32))
    z = bp.param("z", (3, 4), F64)
    lab = bp.input("lab", (3,), "int32")
    ce = bp.compile(bp.cross_entropy(z, lab), [z], backend=backend)
    for bad in (4, -1):
        with pytest.raises(ArgumentError, match=r"'lab'.*\[0, 4\)"):
            ce(z=rng.standard_normal((3, 4)), lab=np.array([0, bad, 1], np.int32))


def _scan_graph():
    """A scan over int token ids: the take inside the body sees a computed (loop) index."""
    E = bp.param("E", (4, 2), F64)
    toks = bp.input("toks", (3, 2), "int32")

    def step(h, t):
        h = h + bp.take(E, t - 1)
        return h, bp.sum(h)

    h0 = bp.broadcast_to(bp.const(0.0, F64), (2, 2))
    hT, ys = bp.scan(step, h0, toks)
    return bp.sum(hT * hT) + bp.sum(ys), E


def _jax_scan(E, toks):
    def step(h, t):
        h = h + jnp.take(E, t - 1, axis=0)
        return h, jnp.sum(h)

    hT, ys = jax.lax.scan(step, jnp.zeros((2, 2)), toks)
    return jnp.sum(hT * hT) + jnp.sum(ys)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_body_computed_indices(backend):
    loss, E = _scan_graph()
    fn = bp.compile(loss, [E], backend=backend)
    Ev = rng.standard_normal((4, 2))
    toks = np.array([[0, 1], [4, -2], [2, 0]], np.int32)  # t - 1 in [-3, 3]
    v, g = fn(E=Ev, toks=toks)
    _assert_close(v, _jax_scan(Ev, toks))
    _assert_close(g["E"], jax.grad(_jax_scan)(Ev, toks))
    toks[1, 1] = 5  # t - 1 = 4: out of range inside the loop body
    _assert_out_of_range(backend, lambda: fn(E=Ev, toks=toks), ["take", "[-4, 4)", "index 4 "])


_FNS = {}


def _shift_fn(backend):
    """take(x, lab + s) with the shift s an input: one compile, any index the draw makes."""
    if backend not in _FNS:
        x = bp.param("x", (5, 2), F64)
        lab = bp.input("lab", (4,), "int32")
        s = bp.input("s", (), "int32")
        w = np.linspace(-1.0, 1.0, 8).reshape(4, 2)
        _FNS[backend] = bp.compile(bp.sum(bp.take(x, lab + s) * w), [x], backend=backend), w
    return _FNS[backend]


@settings(max_examples=25, deadline=None)
@given(lab=st.lists(st.integers(0, 4), min_size=4, max_size=4), s=st.integers(-9, 4))
def test_computed_take_property(lab, s):
    """Every backend agrees with jnp.take / jax.grad wherever lab + s lies in [-5, 5), and
    refuses (NumPy, LLVM) or poisons (JAX) the call otherwise."""
    lab = np.array(lab, np.int32)
    idx = lab + s
    xv = np.arange(10.0).reshape(5, 2) / 7
    ok = bool(((idx >= -5) & (idx < 5)).all())
    for backend in BACKENDS:
        fn, w = _shift_fn(backend)

        def call():
            return fn(x=xv, lab=lab, s=np.int32(s))

        if ok:
            v, g = call()
            _assert_close(v, jnp.sum(jnp.take(xv, idx, axis=0) * w))
            _assert_close(g["x"], jax.grad(lambda x: jnp.sum(jnp.take(x, idx, axis=0) * w))(xv))
        else:
            _assert_out_of_range(backend, call, ["take", "[-5, 5)"])


def test_llvm_fast_path_reports_and_recovers():
    """The native fast path (pycall) sees the status word, falls back to the slow path, which
    raises; it then serves valid calls again without the slow path's help."""
    loss, x, w = _take_graph(0, (3,), offset=1)
    fn = bp.compile(loss, [x], backend="llvm")
    assert type(type(fn).__dict__["__call__"]).__name__ == "builtin_function_or_method"
    xv = rng.standard_normal(x.shape)
    for _ in range(3):
        with pytest.raises(IndexRangeError):
            fn(x=xv, lab=np.array([1, 6, 0], np.int32))
        v, _ = fn(x=xv, lab=np.array([1, 5, 0], np.int32))
        _assert_close(v, _jax_take(xv, np.array([0, 4, -1]), 0, w))


def test_exported_library_poisons_out_of_range(tmp_path):
    """The C library keeps no global state: a computed index out of range gives NaN, never an
    out-of-bounds read or a finite wrong loss."""
    import ctypes
    import shutil

    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler")
    loss, x, _ = _take_graph(0, (3,), offset=1)
    paths = bp.export(loss, [x], str(tmp_path), name="idxlib")
    lib = ctypes.CDLL(paths["library"])
    size = lib.idxlib_workspace_size
    size.restype = ctypes.c_size_t
    ws = np.zeros(max(size(), 1), np.uint8)
    xv = np.ascontiguousarray(rng.standard_normal((5, 3)))
    out, gx = np.zeros(1), np.zeros((5, 3))

    def call(lab):
        lab = np.ascontiguousarray(lab, np.int32)
        ptrs = [a.ctypes.data_as(ctypes.c_void_p) for a in (lab, xv, out, gx, ws)]
        order = [a.attr("name") for a in bp.compile(loss, [x], backend="numpy").args]
        by = {"lab": ptrs[0], "x": ptrs[1]}
        return lib.idxlib_grad(*[by[n] for n in order], ptrs[2], ptrs[3], ptrs[4])

    assert call([1, 5, 0]) == 0 and np.isfinite(out[0])
    assert call([1, 7, 0]) == 0  # lab is in range for the call-time check; lab - 1 is not
    assert np.isnan(out[0]) and np.isnan(gx).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step_out_of_range_label_is_named(backend):
    """A train step never commits an update from a bad computed label; on JAX the non-finite
    step's diagnosis (the NumPy reference) names the op too."""
    z = bp.param("z", (3, 4), F64)
    lab = bp.input("lab", (3,), "int32")
    step = bp.compile_train_step(bp.cross_entropy(z, lab - 1), [z], bp.optim.sgd(0.1),
                                 backend=backend)
    before = np.array(step.params["z"])
    with pytest.raises(IndexRangeError, match=r"one_hot \(n=4\).*index 4 .*\[0, 4\)"):
        step(lab=np.array([1, 5, 2], np.int32))
    np.testing.assert_array_equal(np.asarray(step.params["z"]), before)
    assert np.isfinite(step(lab=np.array([1, 4, 2], np.int32)))


def test_jax_device_array_labels_poison():
    """Device-array labels are not copied back for the call-time check; out of range they
    poison the loss and its gradient like computed ones (before: a finite loss that ignored
    the example, and a gradient that did not)."""
    z = bp.param("z", (3, 4), F64)
    lab = bp.input("lab", (3,), "int32")
    fn = bp.compile(bp.cross_entropy(z, lab), [z], backend="jax")
    zv = rng.standard_normal((3, 4))
    v, g = fn(z=zv, lab=jnp.asarray([0, 4, 1], jnp.int32))
    assert np.isnan(np.asarray(v)) and np.isnan(np.asarray(g["z"])[1]).all()
    v, g = fn(z=zv, lab=jnp.asarray([0, 3, 1], jnp.int32))
    _assert_close(v, _jax_ce(zv, jnp.asarray([0, 3, 1])))


@pytest.mark.parametrize("fast_call", [True, False], ids=["native", "ctypes"])
def test_llvm_index_status_from_threads(fast_call):
    """The status word is one per function, shared by every thread's arena: threads calling
    with bad and good computed indices at once each get exactly their own outcome."""
    import sys
    import threading

    loss, x, w = _take_graph(0, (3,), offset=1)
    fn = bp.compile(loss, [x], backend="llvm", fast_call=fast_call)
    xv = rng.standard_normal(x.shape)
    good, bad = np.array([1, 5, 0], np.int32), np.array([1, 6, 0], np.int32)
    want = float(_jax_take(xv, good - 1, 0, w))
    errors: list = []

    def worker(k):
        for i in range(300):
            lab = bad if (i + k) % 3 == 0 else good
            try:
                v, _ = fn(x=xv, lab=lab)
                if lab is bad or not np.isclose(float(v), want, rtol=1e-12):
                    errors.append(("wrong", k, i, float(v)))
            except IndexRangeError:
                if lab is good:
                    errors.append(("raised", k, i))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:5]
