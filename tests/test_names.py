"""User names never meet generated identifiers (issue 13, item 3).

A property test draws the names of inputs, params (one a scan constant, used inside the step),
a named intermediate, the step function and its arguments from the identifiers the backends
generate themselves (collected from emitted sources), Python keywords and builtins, module
names and SymPy kernel symbols; builds a model with a bp.scan, fused kernels and array
constants; and checks every backend against a plain-NumPy reference and against each other.
"""

from __future__ import annotations

import builtins
import io
import keyword
import re
import tokenize

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from layers_harness import available

import bpcompile as bp
from bpcompile.errors import DeclarationError
from bpcompile.ir.naming import RESERVED
from bpcompile.ops.scan import scan

F64 = "float64"
T = 3
BACKENDS = [b for b in ("numpy", "jax", "llvm") if available(b)]
K_IN = np.array([0.5, -1.5])  # array constants: module-level names in generated code
K_STEP = np.array([1.25, 0.75])


def build(n):
    """The model, declared under the names in `n`; returns (loss, wrt)."""
    xs = bp.input(n["xs"], (T, 2), F64)
    y = bp.input(n["y"], (2,), F64)
    w = bp.param(n["w"], (2,), F64)  # used inside the step: a scan constant
    v = bp.param(n["v"], (2, 2), F64)

    def impl(h, x):
        h = bp.tanh(h * w + x * bp.const(K_STEP, F64))
        return h, bp.sigmoid(h) * w

    step = eval(f"lambda {n['h']}, {n['x']}: impl({n['h']}, {n['x']})", {"impl": impl})
    step.__name__ = n["step"]
    h0 = bp.broadcast_to(bp.const(0.1, F64), (2,))
    hT, hs = scan(step, h0, xs)
    z = (hT @ v).named(n["z"])
    e = bp.exp(w) * bp.const(K_IN, F64)
    loss = bp.sum((z - y) ** 2) + bp.mean(bp.softplus(hs)) + bp.sum(e * e + e)
    return loss, [w, v]


def reference(vals, n):
    """The loss in plain NumPy."""
    xs, y, w, v = (vals[n[k]] for k in ("xs", "y", "w", "v"))
    h, ys = np.full(2, 0.1), []
    for t in range(T):
        h = np.tanh(h * w + xs[t] * K_STEP)
        ys.append(w / (1 + np.exp(-h)))
    e = np.exp(w) * K_IN
    return (np.sum((h @ v - y) ** 2) + np.mean(np.logaddexp(0, np.array(ys)))
            + np.sum(e * e + e))


def values(n):
    r = np.random.default_rng(0)
    return {n["xs"]: r.standard_normal((T, 2)), n["y"]: r.standard_normal(2),
            n["w"]: r.standard_normal(2) * 0.5, n["v"]: r.standard_normal((2, 2))}


PLAIN = {"xs": "xs", "y": "y", "w": "w", "v": "v", "z": "z", "h": "h", "x": "x",
         "step": "rnn"}


def _identifiers(src: str) -> set[str]:
    toks = tokenize.generate_tokens(io.StringIO(src).readline)
    return {t.string for t in toks if t.type == tokenize.NAME}


def generated_identifiers() -> set[str]:
    """Every identifier in the sources the Python backends emit for the model."""
    loss, wrt = build(PLAIN)
    out = set()
    for b in ("numpy", "jax"):
        if b in BACKENDS:
            out |= _identifiers(bp.compile(loss, wrt, backend=b).source())
    return out - set(PLAIN.values())


GENERATED = sorted(generated_identifiers())
MODULES = ["np", "jnp", "lax", "jax", "math", "numpy"]
KERNEL = ["a0", "a1", "a2", "_cse0", "x0", "c0"]  # SymPy kernel symbols, cse temporaries
SPECIAL = ["carry", "step", "init0", "y0", "n0", "x0", "out", "t", "forward_backward", "input",
           "float", "range", "zip", "tuple", "sum", "max", "pow", "__builtins__", "ω", "loss",
           "dw", "dv", "w_T", "step_fn", "rnn_loop", "xs0", "h_init", "h_saved", "xs_seq"]
GROUPS = [GENERATED, sorted(set(keyword.kwlist) | set(keyword.softkwlist)),
          MODULES + KERNEL + SPECIAL, sorted(b for b in dir(builtins) if not b.startswith("_"))]
HOSTILE = sorted(set().union(*GROUPS))
NAME = st.one_of(*[st.sampled_from(g) for g in GROUPS])
# step argument names must be usable as lambda parameters
ARG = NAME.filter(lambda s: not keyword.iskeyword(s) and s != "__builtins__")
ROLES = ["xs", "y", "w", "v", "z", "step"]


def test_pool_has_the_generated_names():
    """The pool really holds the generator's own names, the scan locals included."""
    assert {"np", "forward_backward"} <= set(GENERATED)
    assert {"init0", "c0", "carry", "lax", "jnp", "step_fn", "rnn_body"} <= set(GENERATED)
    assert "class" in HOSTILE and "lambda" in HOSTILE


def _check_all_backends(n):
    loss, wrt = build(n)
    vals = values(n)
    ref = reference(vals, n)
    results = {}
    for b in BACKENDS:
        v, g = bp.compile(loss, wrt, backend=b)(**vals)
        assert set(g) == {n["w"], n["v"]}, (b, sorted(g))  # user-facing names never change
        np.testing.assert_allclose(float(v), ref, rtol=1e-10, err_msg=f"{b}: {n}")
        results[b] = {k: np.asarray(x) for k, x in g.items()}
    for b in BACKENDS[1:]:
        for k in results["numpy"]:
            np.testing.assert_allclose(results[b][k], results["numpy"][k], rtol=1e-9,
                                       atol=1e-12, err_msg=f"{b} d{k}: {n}")


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_hostile_names_every_backend(data):
    names = data.draw(st.lists(NAME, min_size=len(ROLES), max_size=len(ROLES), unique=True))
    n = dict(zip(ROLES, names))
    h, x = data.draw(st.lists(ARG, min_size=2, max_size=2, unique=True))
    n.update(h=h, x=x)
    _check_all_backends(n)


@pytest.mark.parametrize("name", ["c0", "carry", "step", "np", "jnp", "lax", "class", "lambda",
                                  "init0", "y0"])
def test_issue_repro_names(name):
    """The issue's cases: a param of that name used inside a scan step (and the input too)."""
    n = dict(PLAIN, w=name)
    _check_all_backends(n)
    if name not in ("c0", "step"):
        _check_all_backends(dict(PLAIN, xs=name, w="w"))


def test_source_keeps_free_names_and_mangles_only_collisions():
    """Readable: a free user name is kept verbatim; a colliding one gets a trailing `_`."""
    loss, wrt = build(dict(PLAIN, w="W1", v="np", y="class"))
    src = bp.compile(loss, wrt, backend="numpy").source()
    head = re.search(r"def forward_backward\((.*)\):", src).group(1)
    assert sorted(head.split(", ")) == ["W1", "class_", "np_", "xs"]
    compile(src, "<test>", "exec")


def test_every_runtime_name_is_reserved():
    """A helper added to a backend's namespace must be reserved, or a user name could shadow
    it."""
    from bpcompile.backends.numpy.runtime import NAMESPACE as NP_NS

    names = set(NP_NS)
    if "jax" in BACKENDS:
        from bpcompile.backends.jax.lower import NAMESPACE as JAX_NS

        names |= set(JAX_NS)
    assert names <= RESERVED, sorted(names - RESERVED)


@pytest.mark.parametrize("bad", ["my-input", "1x", "", "a b", "x.y", "ﬁ", 3, None])
def test_non_identifier_names_refused_at_declaration(bad):
    for decl in (bp.input, bp.param):
        with pytest.raises(DeclarationError, match=r"name") as e:
            decl(bad, (2,), F64)
        assert repr(bad) in str(e.value)


def test_unicode_identifiers_work():
    _check_all_backends(dict(PLAIN, w="ω", v="Wₒ".replace("ₒ", "o"), y="β"))


def test_exported_header_mangles_c_names(tmp_path):
    """Exported C: parameter names that are C/C++ keywords, header macros, non-ASCII or equal
    to another parameter (`loss`, `workspace`, `dW` beside the gradient of `W`) are renamed in
    the header, which compiles as C and C++; the library computes what NumPy does."""
    import ctypes
    import shutil
    import subprocess

    cc, cxx = shutil.which("cc") or shutil.which("gcc"), shutil.which("c++")
    if cc is None or "llvm" not in BACKENDS:
        pytest.skip("needs llvmlite and a C compiler")
    names = {"int": (3,), "class": (3,), "W": (3,), "dW": (3,), "loss": (3,), "workspace": (3,),
             "α": (3,), "NAMES_WORKSPACE_BYTES": (3,), "size_t": (3,),
             # the checking entry point's own C identifiers (export.api_source)
             "b": (3,), "n": (3,), "bp_buf": (3,), "bp_i": (3,), "names__compute": (3,)}
    params = ["W", "int", "α", "size_t"]
    nodes = {k: (bp.param if k in params else bp.input)(k, s, F64) for k, s in names.items()}
    total = sum(nodes.values(), bp.const(0.0, F64))
    loss = bp.sum(bp.tanh(total) * nodes["W"] + nodes["int"] ** 2 * nodes["α"])
    wrt = [nodes[k] for k in params]
    info = bp.export(loss, wrt, str(tmp_path), name="names")
    header = open(info["header"]).read()
    for compiler, lang in ((cc, "c"), (cxx, "c++")):
        if compiler:
            (tmp_path / f"t.{lang}").write_text('#include "names.h"\nint main(void){return 0;}\n')
            res = subprocess.run([compiler, "-fsyntax-only", "-x", lang, "-I", str(tmp_path),
                                  str(tmp_path / f"t.{lang}")], capture_output=True, text=True)
            assert res.returncode == 0, (lang, res.stderr, header)
    decls = [ln for ln in header.splitlines() if re.match(r"    (const )?\w+ \*", ln)]
    cnames = [re.match(r"    (?:const )?\w+ \*(\w+)", ln).group(1) for ln in decls]
    assert len(set(cnames)) == len(cnames) and "int" not in cnames and "class" not in cnames
    # the user's name is kept in a comment where the C name differs; map C order -> user names
    order = []
    for ln, c in zip(decls, cnames):
        m = re.search(r"\('(.+)' in bpcompile\)", ln)
        order.append(m.group(1) if m else c)
    r = np.random.default_rng(1)
    vals = {k: r.standard_normal(s) for k, s in names.items()}
    ref_v, ref_g = bp.compile(loss, wrt, backend="numpy")(**vals)
    lib = ctypes.CDLL(info["library"])
    lib.names_workspace_size.restype = ctypes.c_size_t
    ws = np.zeros(max(lib.names_workspace_size(), 1), np.uint8)
    outs = [np.zeros(1)] + [np.zeros(3) for _ in wrt]
    ins = [np.ascontiguousarray(vals[k]) for k in order[:len(names)]]
    ptr = [a.ctypes.data_as(ctypes.c_void_p) for a in ins + outs + [ws]]
    assert lib.names_grad(*ptr) == 0
    np.testing.assert_allclose(outs[0][0], ref_v, rtol=1e-12)
    for k, o in zip(params, outs[1:]):
        np.testing.assert_allclose(o, ref_g[k], rtol=1e-12)


def test_kernel_symbols_and_kernel_names_stay_out_of_the_source():
    """A user kernel whose SymPy symbols are named like the printer's own (a0, a1, _cse0),
    applied to params of those names in swapped order, and whose name holds a line break
    (it reaches a comment in the source), computes the same on every backend."""
    import sympy as sp

    u, v, w = sp.symbols("a1 a0 _cse0")
    f = bp.elementwise(u * sp.exp(v) + u * u + sp.sin(w) * w, (u, v, w),
                       name="np\nraise SystemExit('injected')")
    P = {k: bp.param(k, (2,), F64) for k in ("a0", "a1", "_cse0")}
    loss = bp.sum(f(P["a0"], P["a1"], P["_cse0"]))
    r = np.random.default_rng(2)
    vals = {k: r.standard_normal(2) for k in P}
    U, V, W = vals["a0"], vals["a1"], vals["_cse0"]
    ref = np.sum(U * np.exp(V) + U * U + np.sin(W) * W)
    ref_g = {"a0": np.exp(V) + 2 * U, "a1": U * np.exp(V), "_cse0": np.cos(W) * W + np.sin(W)}
    for b in BACKENDS:
        val, g = bp.compile(loss, list(P.values()), backend=b)(**vals)
        np.testing.assert_allclose(float(val), ref, rtol=1e-12, err_msg=b)
        for k in P:
            np.testing.assert_allclose(np.asarray(g[k]), ref_g[k], rtol=1e-12, err_msg=b)


def test_check_oracle_with_hostile_names():
    """bp.check's JAX oracle (jax/translate.py, named `jax_forward`) emits its own module."""
    if "jax" not in BACKENDS:
        pytest.skip("needs jax")
    n = dict(PLAIN, w="jax_forward", v="lax", xs="class", y="c0", step="jnp", z="init0",
             h="carry", x="step")
    loss, wrt = build(n)
    vals = values(n)
    rep = bp.check(loss, wrt, inputs={n["xs"]: vals[n["xs"]], n["y"]: vals[n["y"]]},
                   params={n["w"]: vals[n["w"]], n["v"]: vals[n["v"]]}, fd=False)
    assert rep.ok, rep
