"""Thread safety (docs/reliability.md, "Thread safety").

Every backend: 8 threads x 1000 calls, each call with its own inputs, give exactly the results
of serial calls. LLVM: each thread has its own output arena, so a returned array changes only
at the same thread's next call; `copy_outputs=True` returns fresh arrays for every output on
every call path. A TrainStep driven from several threads applies every step exactly once.
The GIL switch interval is cut to 1 us so that threads interleave inside calls.
"""

from __future__ import annotations

import gc
import sys
import threading
import weakref

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import optim

THREADS, CALLS, SETS = 8, 1000, 16


@pytest.fixture(autouse=True)
def _fast_switching(tmp_path, monkeypatch):
    monkeypatch.setenv("BPCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _skip_unavailable(backend):
    if backend.startswith("llvm"):
        pytest.importorskip("llvmlite")
    if backend == "jax":
        pytest.importorskip("jax")


def _tiny():
    """A 2-layer net small enough that a call is a few microseconds on LLVM."""
    x, y = bp.input("x", (3, 2), "float64"), bp.input("y", (3, 1), "float64")
    W1, b1 = bp.param("W1", (2, 3), "float64"), bp.param("b1", (3,), "float64")
    W2 = bp.param("W2", (3, 1), "float64")
    loss = bp.sum((bp.tanh(x @ W1 + b1) @ W2 - y) ** 2)
    return loss, [W1, b1, W2]


def _input_sets(n=SETS):
    r = np.random.default_rng(7)
    shapes = {"x": (3, 2), "y": (3, 1), "W1": (2, 3), "b1": (3,), "W2": (3, 1)}
    return [{k: r.standard_normal(s) for k, s in shapes.items()} for _ in range(n)]


def _run_threads(work, n=THREADS):
    """Run work(k) on n threads started together; re-raise the first failure."""
    errors, start = [], threading.Barrier(n)

    def target(k):
        try:
            start.wait()
            work(k)
        except BaseException as e:  # noqa: BLE001  (reported in the main thread)
            errors.append(e)

    threads = [threading.Thread(target=target, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


OPTIONS = {"llvm-copy": {"copy_outputs": True}, "llvm-ctypes": {"fast_call": False}}


@pytest.mark.parametrize("backend", ["numpy", "llvm", "llvm-copy", "llvm-ctypes", "jax"])
def test_concurrent_calls_equal_serial_results(backend):
    _skip_unavailable(backend)
    loss, wrt = _tiny()
    options = OPTIONS.get(backend, {})
    fn = bp.compile(loss, wrt, backend=backend.split("-")[0], **options)
    sets = _input_sets()
    expect = []
    for kw in sets:  # serial results, copied (the LLVM arrays are reused by the next call)
        v, g = fn(**kw)
        expect.append((float(v), {k: np.array(a) for k, a in g.items()}))
    bad = []

    def work(k):
        for i in range(CALLS):
            j = (k + 3 * i) % SETS
            v, g = fn(**sets[j])
            # checked before this thread's next call: that is how long a result is valid
            if float(v) != expect[j][0] or any(
                not np.array_equal(np.asarray(g[n]), expect[j][1][n]) for n in g
            ):
                bad.append((k, i))

    _run_threads(work)
    assert not bad, f"{len(bad)} of {THREADS * CALLS} calls returned another call's results"


def test_llvm_results_change_only_at_the_same_threads_next_call():
    """Thread 0 keeps its gradient arrays while 7 other threads call 1000 times each."""
    pytest.importorskip("llvmlite")
    loss, wrt = _tiny()
    fn = bp.compile(loss, wrt, backend="llvm")
    sets = _input_sets()
    held = {}
    others_done = threading.Barrier(THREADS)

    def work(k):
        if k == 0:
            held["v"], held["g"] = fn(**sets[0])
            held["snapshot"] = {n: a.copy() for n, a in held["g"].items()}
            others_done.wait()
            return
        for i in range(CALLS):
            fn(**sets[1 + (k + i) % (SETS - 1)])
        others_done.wait()

    _run_threads(work)
    for n, a in held["g"].items():
        np.testing.assert_array_equal(a, held["snapshot"][n], err_msg=f"gradient {n}")


def test_llvm_each_thread_has_its_own_arena_reused_by_its_calls():
    pytest.importorskip("llvmlite")
    loss, wrt = _tiny()
    fn = bp.compile(loss, wrt, backend="llvm")
    kw = _input_sets(1)[0]
    mine = [fn(**kw)[1]["W1"] for _ in range(2)]
    assert mine[0] is mine[1]  # the default: one thread's buffers, reused by its next call
    theirs = []
    t = threading.Thread(target=lambda: theirs.extend(fn(**kw)[1]["W1"] for _ in range(2)))
    t.start()
    t.join()
    assert theirs[0] is theirs[1]  # the other thread's calls take the native path too
    assert not np.shares_memory(mine[0], theirs[0])
    np.testing.assert_array_equal(mine[0], theirs[0])
    # the slow path (a list argument) writes the calling thread's arena as well
    g = fn(**dict(kw, b1=list(kw["b1"])))[1]["W1"]
    assert g is mine[0]


def test_llvm_thread_arenas_do_not_keep_functions_alive():
    """Per-thread state lives in thread-locals that must not reference the compiled function:
    a function compiled in one thread and called from a living other thread is freed; a
    thread's arena is freed when the thread ends."""
    pytest.importorskip("llvmlite")
    loss, wrt = _tiny()
    kw = _input_sets(1)[0]
    box = {}
    t = threading.Thread(target=lambda: box.update(fn=bp.compile(loss, wrt, backend="llvm")))
    t.start()
    t.join()
    fn = box.pop("fn")
    fn(**kw)  # this (main, living) thread gets its own arena and caller
    # a worker's arena goes with the worker; the arrays it returned keep their memory
    arenas, held = [], []

    def work(f):
        held.append(f(**kw)[1]["W1"])
        arenas.append(weakref.ref(f.impl._local.arena))

    t = threading.Thread(target=work, args=(fn,))
    t.start()
    t.join()
    gc.collect()
    assert arenas[0]() is None
    np.testing.assert_array_equal(held[0], fn(**kw)[1]["W1"])
    ref = weakref.ref(fn.impl)
    del fn
    gc.collect()
    assert ref() is None


def _assert_fresh_every_call(call, names):
    first, second = call(0), call(1)
    for n in names:
        a, b = np.asarray(first[n]), np.asarray(second[n])
        assert not np.shares_memory(a, b), f"output {n!r} reuses the previous call's buffer"
        assert not np.array_equal(a, b), f"output {n!r} was overwritten by the next call"


@pytest.mark.parametrize("path", ["native", "slow", "ctypes"])
def test_llvm_copy_outputs_gives_fresh_arrays_for_every_output(path):
    pytest.importorskip("llvmlite")
    loss, wrt = _tiny()
    sets = _input_sets(2)
    options = {"copy_outputs": True, "fast_call": path != "ctypes"}

    def args(i):  # a list argument sends the call down the Python slow path
        return dict(sets[i], b1=list(sets[i]["b1"])) if path == "slow" else sets[i]

    fn = bp.compile(loss, wrt, backend="llvm", **options)
    _assert_fresh_every_call(lambda i: fn(**args(i))[1], ["W1", "b1", "W2"])
    x, W1 = bp.input("x", (3, 2), "float64"), bp.param("W1", (2, 3), "float64")
    h = bp.tanh(x @ W1)  # bp.function: the first output is an array, not a scalar
    f = bp.function({"h": h, "s": bp.sum(h), "g": h * 2.0}, backend="llvm", **options)
    _assert_fresh_every_call(lambda i: f(x=args(i)["x"], W1=sets[i]["W1"]), ["h", "g"])


@pytest.mark.parametrize("backend", ["numpy", "llvm", "jax"])
def test_train_step_from_threads_applies_every_step_once(backend):
    """SGD on a linear loss: the update does not depend on the params, so any order of the
    N x k steps ends at the serial run's params (exactly: the values are binary fractions)."""
    _skip_unavailable(backend)
    x = bp.input("x", (2, 3), "float64")
    W = bp.param("W", (3, 2), "float64")
    loss = bp.sum((x @ W) * bp.input("c", (2, 2), "float64"))
    r = np.random.default_rng(1)
    batches = [
        {"x": r.integers(-4, 5, (2, 3)).astype(float), "c": r.integers(-4, 5, (2, 2)) / 4.0}
        for _ in range(THREADS)
    ]
    steps = 100

    def make():
        return bp.compile_train_step(
            loss, [W], optim.sgd(0.25), backend=backend, init={"W": np.zeros((3, 2))}
        )

    serial = make()
    for k in range(THREADS):
        for _ in range(steps):
            serial(**batches[k])
    step = make()
    _run_threads(lambda k: [step(**batches[k]) for _ in range(steps)])
    assert step.count == THREADS * steps
    np.testing.assert_array_equal(np.asarray(step.params["W"]), np.asarray(serial.params["W"]))
