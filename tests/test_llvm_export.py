"""AOT export: a C program built with the system compiler against the exported library gets
the same loss and gradients as the NumPy reference, with no Python involved."""

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


def _c_array(ctype, name, a):
    vals = ", ".join(repr(float(v)) if ctype != "int32_t" else str(int(v)) for v in a.ravel())
    return f"static const {ctype} {name}[{max(a.size, 1)}] = {{{vals}}};"


def test_exported_library_matches_numpy(tmp_path):
    x = bp.input("x", (5, 3), "float64")
    lab = bp.input("labels", (5,), "int32")
    W1, b1 = bp.param("W1", (3, 4), "float64"), bp.param("b1", (4,), "float64")
    W2 = bp.param("W2", (4, 3), "float64")
    loss = bp.cross_entropy(bp.tanh(x @ W1 + b1) @ W2, lab)
    wrt = [W1, b1, W2]
    r = np.random.default_rng(0)
    vals = {"x": r.standard_normal((5, 3)), "W1": r.standard_normal((3, 4)),
            "b1": r.standard_normal(4), "W2": r.standard_normal((4, 3)),
            "labels": r.integers(0, 3, 5).astype(np.int32)}
    info = bp.export(loss, wrt, str(tmp_path), name="clf")
    header = open(info["header"]).read()
    assert "int clf_grad(" in header and "CLF_WORKSPACE_BYTES" in header
    # argument order is the header's; take it from there
    args = [line.split("*")[1].split(",")[0].split(")")[0].strip()
            for line in header.splitlines() if line.startswith("    const ")]
    assert sorted(args) == sorted(vals)
    ref_v, ref_g = bp.compile(loss, wrt, backend="numpy")(**vals)
    ctypes_ = {"labels": "int32_t"}
    src = ['#include <stdio.h>', '#include <stdlib.h>', '#include "clf.h"']
    src += [_c_array(ctypes_.get(k, "double"), k, vals[k]) for k in args]
    outs = [("loss", 1)] + [("d" + w.name, w.size) for w in wrt]
    src += [f"static double {n}[{k}];" for n, k in outs]
    src += ["int main(void) {",
            "  void *ws = malloc(clf_workspace_size());",
            f"  int rc = clf_grad({', '.join(args)}, {', '.join(n for n, _ in outs)}, ws);",
            '  if (rc) { printf("rc %d\\n", rc); return 1; }']
    for n, k in outs:
        src.append(f'  for (int i = 0; i < {k}; i++) printf("%.17g\\n", {n}[i]);')
    src += ["  int32_t bad[5] = {0, 1, 2, 3, 0};",
            f"  rc = clf_grad({', '.join('bad' if a == 'labels' else a for a in args)}, "
            f"{', '.join(n for n, _ in outs)}, ws);",
            '  printf("bad %d\\n", rc);', "  free(ws);", "  return 0;", "}"]
    (tmp_path / "main.c").write_text("\n".join(src) + "\n")
    exe = tmp_path / "main"
    subprocess.run([CC, "-O1", "-o", str(exe), str(tmp_path / "main.c"), f"-I{tmp_path}",
                    f"-L{tmp_path}", "-lclf", f"-Wl,-rpath,{tmp_path}", "-lm"], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ.get("PATH", "")}).stdout.split()
    assert out[-2:] == ["bad", "1"]  # out-of-range label refused
    nums = np.array([float(v) for v in out[:-2]])
    expect = np.concatenate([np.ravel(ref_v)] + [ref_g[w.name].ravel() for w in wrt])
    np.testing.assert_allclose(nums, expect, rtol=1e-10, atol=1e-12)
