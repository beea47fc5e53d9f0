"""Issue #13 item 8: the exported C library checks what its header promises. A C program calls
<name>_grad with NULL, misaligned and overlapping buffers (each must return its error code and
write nothing), with inputs that share memory, with NaN, and from several threads.

docs/reliability.md, "Exported C library contract", states the contract these tests check.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

import bpcompile as bp

pytest.importorskip("llvmlite")
CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")

ARGS = ["x", "W1", "b1", "W2", "labels", "z"]  # checked against the header below
OUTS = [("loss", 1), ("dW1", 12), ("db1", 4), ("dW2", 12)]


def _model():
    # declared in the ABI order (ARGS): arguments follow the order of declaration
    x = bp.input("x", (5, 3), "float64")
    W1, b1 = bp.param("W1", (3, 4), "float64"), bp.param("b1", (4,), "float64")
    W2 = bp.param("W2", (4, 3), "float64")
    lab = bp.input("labels", (5,), "int32")
    z = bp.input("z", (5, 3), "float64")  # same shape as x: the caller may pass x twice
    loss = bp.cross_entropy(bp.tanh(x @ W1 + b1) @ W2, lab) + 0.1 * bp.sum(bp.tanh(z) * x)
    return loss, [W1, b1, W2]


def _values():
    r = np.random.default_rng(0)
    return {"x": r.standard_normal((5, 3)), "z": r.standard_normal((5, 3)),
            "W1": r.standard_normal((3, 4)), "b1": r.standard_normal(4),
            "W2": r.standard_normal((4, 3)), "labels": r.integers(0, 3, 5).astype(np.int32)}


def _c_init(ctype, name, a):
    vals = ", ".join(repr(float(v)) if ctype != "int32_t" else str(int(v)) for v in a.ravel())
    return f"static const {ctype} {name}_init[{a.size}] = {{{vals}}};"


# The harness: every buffer lives at an offset inside one 64-byte-aligned pool, so a test can
# misalign it (offset + 1) or make two buffers overlap. `call` resets the outputs to a sentinel
# first; `untouched` reports whether they still hold it (nothing written on error).
HARNESS = r"""
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "clf.h"
%(inits)s
#define POOL 65536
static _Alignas(64) unsigned char pool[POOL];
static size_t off_x = 0, off_z = 256, off_W1 = 512, off_b1 = 768, off_W2 = 1024,
    off_labels = 1280, off_loss = 1536, off_dW1 = 1600, off_db1 = 1728, off_dW2 = 1792,
    off_ws = 4096;
static int null_mask = 0;  /* bit k: pass NULL for pointer argument k (ABI order) */
#define P(k, T, name) ((null_mask >> (k)) & 1 ? NULL : (T *)(pool + off_##name))
static void reset(void) {
    memcpy(pool + off_x, x_init, sizeof x_init);
    memcpy(pool + off_z, z_init, sizeof z_init);
    memcpy(pool + off_W1, W1_init, sizeof W1_init);
    memcpy(pool + off_b1, b1_init, sizeof b1_init);
    memcpy(pool + off_W2, W2_init, sizeof W2_init);
    memcpy(pool + off_labels, labels_init, sizeof labels_init);
    for (int i = 0; i < 29; i++) {  /* loss, dW1, db1, dW2 hold -7.25 */
        double s = -7.25;
        size_t o = i < 1 ? off_loss : i < 13 ? off_dW1 + 8 * (i - 1)
                 : i < 17 ? off_db1 + 8 * (i - 13) : off_dW2 + 8 * (i - 17);
        memcpy(pool + o, &s, 8);
    }
}
static int call(void) {
    return clf_grad(P(0, const double, x), P(1, const double, W1), P(2, const double, b1),
                    P(3, const double, W2), P(4, const int32_t, labels),
                    P(5, const double, z), P(6, double, loss), P(7, double, dW1),
                    P(8, double, db1), P(9, double, dW2), P(10, void, ws));
}
static int untouched(void) {
    double s;
    size_t offs[4] = {off_loss, off_dW1, off_db1, off_dW2};
    int counts[4] = {1, 12, 4, 12};
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < counts[k]; i++) {
            memcpy(&s, pool + offs[k] + 8 * i, 8);
            if (s != -7.25) return 0;
        }
    return 1;
}
static void dump(const char *tag) {
    double v;
    size_t offs[4] = {off_loss, off_dW1, off_db1, off_dW2};
    int counts[4] = {1, 12, 4, 12};
    printf("%%s", tag);
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < counts[k]; i++) {
            memcpy(&v, pool + offs[k] + 8 * i, 8);
            printf(" %%.17g", v);
        }
    printf("\n");
}
#define CHECK(tag, expr) do { reset(); int rc_ = (expr); \
    printf("%%s %%d %%d\n", tag, rc_, untouched()); } while (0)

/* threads: each has its own outputs and workspace, shares the inputs */
struct job { double out[29]; void *ws; int rc; double xs[15]; };
static void *worker(void *arg) {
    struct job *j = arg;
    for (int it = 0; it < 300 && !j->rc; it++)
        j->rc = clf_grad(j->xs, W1_init, b1_init, W2_init, labels_init, z_init, j->out,
                         j->out + 1, j->out + 13, j->out + 17, j->ws);
    return NULL;
}

int main(void) {
    printf("cpu %%d %%s\n", clf_cpu_supported(), clf_cpu_features()[0] ? "listed" : "empty");
    printf("strerror4 %%s\n", clf_strerror(CLF_ERR_OVERLAP));
    CHECK("ok", call());
    dump("values");
    for (int k = 0; k < 11; k++) {  /* every pointer NULL in turn */
        char tag[16];
        snprintf(tag, sizeof tag, "null%%d", k);
        null_mask = 1 << k;
        CHECK(tag, call());
    }
    null_mask = 0;
    /* misaligned: an input, an index input, an output, the workspace */
    off_W1 += 1;  CHECK("misaligned_W1", call());  off_W1 -= 1;
    off_labels += 2;  CHECK("misaligned_labels", call());  off_labels -= 2;
    off_dW2 += 4;  CHECK("misaligned_dW2", call());  off_dW2 -= 4;
    off_ws += 4;  CHECK("misaligned_ws", call());  off_ws -= 4;
    off_ws += 8;  CHECK("ws_aligned_8", call());  dump("values_ws8");  off_ws -= 8;
    /* overlapping buffers */
    { size_t s = off_dW1; off_dW1 = off_W1; CHECK("out_is_input", call()); off_dW1 = s; }
    { size_t s = off_db1; off_db1 = off_dW1 + 88; CHECK("outputs_overlap", call()); off_db1 = s; }
    { size_t s = off_ws; off_ws = off_dW2 + 8; CHECK("ws_overlaps_output", call()); off_ws = s; }
    { size_t s = off_ws; off_ws = off_x; CHECK("ws_overlaps_input", call()); off_ws = s; }
    /* inputs may share memory: z is x */
    { size_t s = off_z; off_z = off_x; CHECK("z_is_x", call()); dump("values_z_is_x");
      off_z = s; }
    /* a bad label */
    { reset(); int32_t bad = 7; memcpy(pool + off_labels + 8, &bad, 4);
      int rc = call(); printf("bad_label %%d %%d\n", rc, untouched()); }
    /* NaN propagates */
    { reset(); double nan = NAN; memcpy(pool + off_x, &nan, 8);
      int rc = call(); double l, g; memcpy(&l, pool + off_loss, 8);
      memcpy(&g, pool + off_dW1, 8);
      printf("nan %%d %%d %%d\n", rc, isnan(l) != 0, isnan(g) != 0); }
    /* threads: 4 x 300 calls with different inputs match the serial result bit for bit */
    struct job jobs[4];
    pthread_t th[4];
    memset(jobs, 0, sizeof jobs);
    for (int t = 0; t < 4; t++) {
        jobs[t].ws = aligned_alloc(64, (CLF_WORKSPACE_BYTES + 63) / 64 * 64 + 64);
        for (int i = 0; i < 15; i++) jobs[t].xs[i] = x_init[i] * (1.0 + 0.25 * t);
        pthread_create(&th[t], NULL, worker, &jobs[t]);
    }
    int threads_ok = 1;
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        double serial[29];
        void *ws = malloc(CLF_WORKSPACE_BYTES + 1);
        int rc = clf_grad(jobs[t].xs, W1_init, b1_init, W2_init, labels_init, z_init, serial,
                          serial + 1, serial + 13, serial + 17, ws);
        threads_ok &= rc == 0 && jobs[t].rc == 0
                      && memcmp(serial, jobs[t].out, sizeof serial) == 0;
        if (t == 1) {
            printf("thread1");
            for (int i = 0; i < 29; i++) printf(" %%.17g", serial[i]);
            printf("\n");
        }
        free(ws);
        free(jobs[t].ws);
    }
    printf("threads %%d\n", threads_ok);
    return 0;
}
"""


@pytest.fixture(scope="module")
def run_harness(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_contract")
    loss, wrt = _model()
    info = bp.export(loss, wrt, str(tmp), name="clf")
    header = open(info["header"]).read()
    args = [line.split("*")[1].split(",")[0].strip()
            for line in header.splitlines() if line.startswith("    const ")]
    assert args == ARGS, args  # the harness hard-codes the ABI order
    vals = _values()
    inits = "\n".join(_c_init("int32_t" if k == "labels" else "double", k, vals[k]) for k in ARGS)
    (tmp / "main.c").write_text(HARNESS % {"inits": inits})
    exe = tmp / "main"
    subprocess.run([CC, "-std=c11", "-O1", "-pthread", "-o", str(exe), str(tmp / "main.c"),
                    f"-I{tmp}", f"-L{tmp}", "-lclf", f"-Wl,-rpath,{tmp}", "-lm"], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=120,
                         env={"PATH": os.environ.get("PATH", "")}).stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    return header, rows, loss, wrt, vals


def _reference(loss, wrt, vals):
    v, g = bp.compile(loss, wrt, backend="numpy")(**vals)
    return np.concatenate([np.ravel(v)] + [g[w.name].ravel() for w in wrt])


def test_valid_call_matches_numpy(run_harness):
    header, rows, loss, wrt, vals = run_harness
    assert rows["ok"] == ["0", "0"]  # rc 0, outputs written
    np.testing.assert_allclose([float(v) for v in rows["values"]], _reference(loss, wrt, vals),
                               rtol=1e-10, atol=1e-12)


def test_null_pointers_return_err_null_and_write_nothing(run_harness):
    _, rows, *_ = run_harness
    for k in range(11):  # 6 inputs, 4 outputs, the workspace
        assert rows[f"null{k}"] == ["2", "1"], (k, rows[f"null{k}"])


def test_misaligned_buffers_return_err_align(run_harness):
    _, rows, loss, wrt, vals = run_harness
    for tag in ("misaligned_W1", "misaligned_labels", "misaligned_dW2", "misaligned_ws"):
        assert rows[tag] == ["3", "1"], (tag, rows[tag])
    # 8-byte alignment is all the workspace needs (64 is only faster)
    assert rows["ws_aligned_8"] == ["0", "0"]
    np.testing.assert_allclose([float(v) for v in rows["values_ws8"]],
                               _reference(loss, wrt, vals), rtol=1e-10, atol=1e-12)


def test_overlapping_outputs_return_err_overlap(run_harness):
    _, rows, *_ = run_harness
    for tag in ("out_is_input", "outputs_overlap", "ws_overlaps_output", "ws_overlaps_input"):
        assert rows[tag] == ["4", "1"], (tag, rows[tag])
    assert "overlaps" in " ".join(rows["strerror4"])


def test_inputs_may_share_memory(run_harness):
    _, rows, loss, wrt, vals = run_harness
    assert rows["z_is_x"] == ["0", "0"]
    same = dict(vals, x=vals["z"])  # reset() copied z's values into the shared buffer last
    np.testing.assert_allclose([float(v) for v in rows["values_z_is_x"]],
                               _reference(loss, wrt, same), rtol=1e-10, atol=1e-12)


def test_bad_index_nan_and_threads(run_harness):
    _, rows, loss, wrt, vals = run_harness
    assert rows["bad_label"] == ["1", "1"]  # CLF_ERR_INDEX, nothing written
    assert rows["nan"] == ["0", "1", "1"]  # NaN in x reaches the loss and dW1
    assert rows["threads"] == ["1"]  # 4 threads x 300 calls == serial, bit for bit
    scaled = dict(vals, x=vals["x"] * 1.25)
    np.testing.assert_allclose([float(v) for v in rows["thread1"]],
                               _reference(loss, wrt, scaled), rtol=1e-10, atol=1e-12)
    assert rows["cpu"] == ["1", "listed"]


def test_header_states_every_contract(run_harness):
    header = run_harness[0]
    for word in ("row-major", "NULL", "Alignment", "Aliasing", "NaN", "Threads", "reentrant",
                 "CPU", "CLF_ERR_NULL = 2", "CLF_ERR_ALIGN = 3", "CLF_ERR_OVERLAP = 4",
                 "CLF_ERR_CPU = 5", "CLF_ERR_INDEX = 1", "clf_cpu_supported",
                 "clf_cpu_features", "undefined behaviour"):
        assert word in header, word
    assert max(len(line) for line in header.splitlines()) <= 100


def test_cpu_check_lists_the_target_features():
    """The entry point tests (with __builtin_cpu_supports) each vectorisation feature the target
    machine enabled; features the builtin does not know are listed, not tested."""
    from bpcompile.backends.llvm.codegen import Program
    from bpcompile.backends.llvm.export import api_source

    p = bp.param("p", (3,), "float32")
    fn = bp.compile(bp.sum(p * p), [p])
    src = api_source(Program(fn.outputs, fn.args, gemm_threshold=2**62), "m", ["loss", "dp"],
                     ["avx2", "avx512f", "fma", "widekl", "sse4.2"])
    for f in ("avx2", "avx512f", "fma", "sse4.2"):
        assert f'__builtin_cpu_supports("{f}")' in src
    assert '__builtin_cpu_supports("widekl")' not in src
    assert "return M_ERR_CPU;" in src and "return M_ERR_NULL;" in src
