"""Ahead-of-time export: a shared library and a C header for a model's gradient function.

    bpcompile.export(loss, wrt, "out/", name="model")
    -> out/libmodel.so, out/model.h

The library needs no Python: matmuls are inline loops (no BLAS), math comes from libm. The C
ABI (see the generated header) is one function taking every input and param as a const pointer
(row-major, in the order of the header), the loss and gradients as pointers to caller-owned
arrays, and a caller-owned workspace of MODEL_WORKSPACE_BYTES bytes. The header states every
contract (layout, NULL, alignment, aliasing, NaN, threads, CPU) and the error codes; the C entry
point (`api_source`) checks them before the LLVM code runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap

from llvmlite import ir

from ...errors import BackendError
from . import jit
from .codegen import Program
from .loops import I32, PTR

C_TYPES = {"float32": "float", "float64": "double", "int32": "int32_t", "bool": "uint8_t",
           "float16": "uint16_t", "bfloat16": "uint16_t"}  # 16-bit floats as their bits (C
# has no portable half type); each parameter's comment names its dtype
# Names a header parameter must not take: C and C++ keywords (the header is extern "C" for
# C++ too), the types, macros and functions it uses or declares (the model's own are added).
C_RESERVED = set("""
alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t
char32_t class compl concept const consteval constexpr constinit const_cast continue
co_await co_return co_yield decltype default delete do double dynamic_cast else enum explicit
export extern false float for friend goto if inline int long mutable namespace new noexcept
not not_eq nullptr operator or or_eq private protected public register reinterpret_cast
requires restrict return short signed sizeof static static_assert static_cast struct switch
template this thread_local throw true try typedef typeid typename union unsigned using virtual
void volatile wchar_t while xor xor_eq _Alignas _Alignof _Atomic _Bool _Complex _Generic
_Imaginary _Noreturn _Static_assert _Thread_local NULL size_t int32_t uint8_t int64_t
uint64_t ptrdiff_t offsetof errno assert
""".split())
_C_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def c_names(labels: list[str], model: str) -> list[str]:
    """C parameter names for `labels` (user names, d<name>, loss, workspace): the label itself
    where it is a plain ASCII C identifier that is free, else a mangled unique one (`class` ->
    `class_`, `α` -> `u03b1`). Only the header's parameter names change, never the ABI."""
    up = model.upper()
    # the header's and the checking entry point's own identifiers (api_source's locals)
    taken = set(C_RESERVED) | {f"{model}_grad", f"{model}_workspace_size", f"{up}_H",
                               f"{model}__compute", f"{model}_cpu_supported",
                               f"{model}_cpu_features", f"{model}_strerror", "bp_buf", "bp_n",
                               "bp_i", "bp_j", "bp_overlap"}
    out = []
    for label in labels:
        base = "".join(c if c.isascii() and (c.isalnum() or c == "_") else f"u{ord(c):04x}"
                       for c in label) or "arg"
        if base[0].isdigit():
            base = "_" + base
        # reserved to the C library (__x, _X) or to the header's macros (MODEL_...)
        if base.startswith(("__", up + "_")) or re.match(r"_[A-Z]", base):
            base = "arg_" + base
        cand, k = base, 0
        while cand in taken:
            k += 1
            cand = f"{base}_" if k == 1 else f"{base}_{k - 1}"
        taken.add(cand)
        out.append(cand)
    return out


# Error codes of <name>_grad (the header's <NAME>_OK, <NAME>_ERR_*). 1 keeps its old meaning.
ERRORS = [
    ("OK", 0, "success; every output was written"),
    ("ERR_INDEX", 1, "an int32 index argument is out of range (nothing written)"),
    ("ERR_NULL", 2, "a required pointer is NULL (nothing read or written)"),
    ("ERR_ALIGN", 3, "a pointer is not aligned to its element type (nothing read or written)"),
    ("ERR_OVERLAP", 4, "an output or the workspace overlaps another buffer (nothing written)"),
    ("ERR_CPU", 5, "this CPU lacks an instruction set the library was compiled for"),
]

# LLVM x86 feature -> the name __builtin_cpu_supports knows (GCC >= 6 and clang): the features
# vectorised float code uses. Others the target enables are listed by <name>_cpu_features().
X86_CHECKED = {
    "sse3": "sse3", "ssse3": "ssse3", "sse4.1": "sse4.1", "sse4.2": "sse4.2", "popcnt": "popcnt",
    "avx": "avx", "avx2": "avx2", "fma": "fma", "bmi": "bmi", "bmi2": "bmi2",
    "avx512f": "avx512f", "avx512vl": "avx512vl", "avx512bw": "avx512bw",
    "avx512dq": "avx512dq", "avx512cd": "avx512cd",
}


def check_name(name: str) -> None:
    if not _C_IDENT.match(name) or name in C_RESERVED:
        raise ValueError(f"export: name must be a C identifier (ASCII letters, digits and _, "
                         f"not a C keyword), got {name!r}")


def export(fn, out_dir: str, name: str = "model", cc: str | None = None) -> dict:
    """Write lib<name>.so and <name>.h to `out_dir` for `fn`, a compiled loss (`bp.export`
    compiles it; only its simplified graph is used); returns their paths.

    The exported function is `int <name>_grad(inputs..., params..., loss, grads..., workspace)`;
    it returns 0, or one of the header's error codes (computing nothing): see `ERRORS`.
    The computation is LLVM code for this host's CPU (`<name>__compute`, hidden); the checking
    entry point is C compiled for the baseline ISA, so a CPU without the features gets an error
    code instead of an illegal instruction.
    """
    check_name(name)
    outputs, args = fn.outputs, fn.args
    # no BLAS: self-contained; no status global (no global state): a computed index out of
    # range poisons the outputs with NaN instead (ops/index.py)
    program = Program(outputs, args, gemm_threshold=2**62, index_status=False)
    jit.init()
    module = ir.Module(name)
    module.triple = jit.host()[0]
    main = program.emit(module)
    for f in (main, module.globals["bp_entry"]):
        f.linkage = "internal"
    _emit_compute(module, program, main, name)
    # Every global must be constant for the header's "reentrant" to hold (no hidden state).
    mutable = [g.name for g in module.global_values
               if isinstance(g, ir.GlobalVariable) and not g.global_constant]
    if mutable:
        raise BackendError(f"export {name}: the code keeps mutable global state {mutable}")
    text = str(module).replace(f'define i32 @"{name}__compute"',
                               f'define hidden i32 @"{name}__compute"', 1)
    assert "define hidden" in text, "export: could not hide the compute function"
    tm = jit.target_machine(jit=False)
    obj = tm.emit_object(jit.optimize(text, tm))
    os.makedirs(out_dir, exist_ok=True)
    obj_path = os.path.join(out_dir, f"{name}.o")
    api_c = os.path.join(out_dir, f"{name}_api.c")
    api_o = os.path.join(out_dir, f"{name}_api.o")
    lib_path = os.path.join(out_dir, f"lib{name}.so")
    header_path = os.path.join(out_dir, f"{name}.h")
    with open(obj_path, "wb") as f:
        f.write(obj)
    labels = ["loss"] + ["d" + w.attr("name") for w in fn.wrt]
    features = [f[1:] for f in jit.host()[2].split(",") if f.startswith("+")]
    with open(header_path, "w") as f:
        f.write(header(program, name, labels, jit.host()[1], features))
    with open(api_c, "w") as f:
        f.write(api_source(program, name, labels, features))
    cc = cc or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise BackendError("export: no C compiler/linker found (set CC)")
    try:
        # The checks are compiled for the baseline ISA (no -march): they must run anywhere.
        _run([cc, "-std=c11", "-O2", "-fPIC", "-c", "-o", api_o, api_c, f"-I{out_dir}"],
             f"compiling {api_c}")
        _run([cc, "-shared", "-o", lib_path, api_o, obj_path, "-lm"], f"linking {lib_path}")
    finally:
        for p in (obj_path, api_c, api_o):
            if os.path.exists(p):
                os.remove(p)
    return {"library": lib_path, "header": header_path,
            "workspace_bytes": program.memory.workspace_bytes}


def _run(cmd, what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise BackendError(f"export: {what} failed:\n{res.stderr}")


def _emit_compute(module: ir.Module, program: Program, main, name: str):
    """`int <name>__compute(in..., out..., ws)`: index range check (1), then the program (0)."""
    nin, nout = len(program.args), len(program.outputs)
    fn = ir.Function(module, ir.FunctionType(I32, [PTR] * (nin + nout + 1)), f"{name}__compute")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    bad = fn.append_basic_block("bad_index")
    from .loops import Emitter
    from .pycall import _range_check

    em = Emitter(module, b)
    for a, arg in zip(fn.args[:nin], program.args):
        bound = program.bounds.get(arg.attr("name"))
        if bound is not None and arg.size:
            _range_check(em, fn, a, arg.size, bound, bad)
    b.call(main, list(fn.args))
    b.ret(ir.Constant(I32, 0))
    b.position_at_end(bad)
    b.ret(ir.Constant(I32, 1))


def _buffers(program: Program, labels, name: str):
    """(C name, C type, element count, writable) for every pointer argument, in ABI order,
    and the workspace's C name: the header's names (c_names), so no user name meets C."""
    user = [a.attr("name") for a in program.args] + list(labels)
    cn = c_names(user + ["workspace"], name)
    nin = len(program.args)
    out = [(cn[k], C_TYPES[a.dtype], a.size, False) for k, a in enumerate(program.args)]
    out += [(cn[nin + j], C_TYPES[o.dtype], o.size, True)
            for j, o in enumerate(program.outputs)]
    return out, cn[-1]


def api_source(program: Program, name: str, labels, features) -> str:
    """The C entry point: NULL, alignment, overlap and CPU checks, then <name>__compute."""
    up = name.upper()
    bufs, wsn = _buffers(program, labels, name)
    ws = program.memory.workspace_bytes
    params = [f"const {t} *{n}" if not w else f"{t} *{n}" for n, t, _, w in bufs]
    params.append(f"void *{wsn}")
    checked = [X86_CHECKED[f] for f in features if f in X86_CHECKED]
    lines = [
        f"/* {name}_api.c: the checking entry point of lib{name}.so (generated by bpcompile). */",
        "#include <stddef.h>",
        "#include <stdint.h>",
        f'#include "{name}.h"',
        "",
        f"int {name}__compute({', '.join(params)});",
        "",
        "/* Byte ranges [a, a+na) and [b, b+nb) intersect (empty ranges never do). */",
        "static int bp_overlap(const void *a, size_t na, const void *b, size_t nb) {",
        "    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;",
        "    return na && nb && x < y + nb && y < x + na;",
        "}",
        "",
        f"size_t {name}_workspace_size(void) {{ return {ws}u; }}",
        "",
        f'const char *{name}_cpu_features(void) {{ return "{",".join(features)}"; }}',
        "",
        f"int {name}_cpu_supported(void) {{",
        "#if defined(__x86_64__) || defined(__i386__)",
        "    __builtin_cpu_init();",
        "    return 1" + "".join(f' && __builtin_cpu_supports("{c}")' for c in checked) + ";",
        "#else",
        "    return 1; /* not checked on this architecture */",
        "#endif",
        "}",
        "",
        f"const char *{name}_strerror(int code) {{",
        "    switch (code) {",
    ]
    lines += [f'    case {up}_{e}: return "{doc}";' for e, _, doc in ERRORS]
    lines += [
        '    default: return "unknown error code";',
        "    }",
        "}",
        "",
        f"int {name}_grad({', '.join(params)}) {{",
        "    struct { const void *p; size_t bytes, align; int writable; } bp_buf[] = {",
    ]
    for n, t, size, w in bufs:
        lines.append(f"        {{{n}, {size}u * sizeof({t}), _Alignof({t}), {int(w)}}},")
    lines += [
        f"        {{{wsn}, {ws}u, {WS_ALIGN}u, 1}},",
        "    };",
        "    const size_t bp_n = sizeof bp_buf / sizeof bp_buf[0];",
        "    for (size_t bp_i = 0; bp_i < bp_n; bp_i++) {",
        "        if (bp_buf[bp_i].p == NULL) {",
        "            if (bp_buf[bp_i].bytes)",
        "                return " + up + "_ERR_NULL;  /* NULL only for 0 bytes */",
        "        } else if ((uintptr_t)bp_buf[bp_i].p % bp_buf[bp_i].align) {",
        f"            return {up}_ERR_ALIGN;",
        "        }",
        "    }",
        "    /* Inputs are only read, so they may share memory; a written buffer may not. */",
        "    for (size_t bp_i = 0; bp_i < bp_n; bp_i++)",
        "        for (size_t bp_j = bp_i + 1; bp_j < bp_n; bp_j++)",
        "            if ((bp_buf[bp_i].writable || bp_buf[bp_j].writable)",
        "                && bp_overlap(bp_buf[bp_i].p, bp_buf[bp_i].bytes,",
        "                              bp_buf[bp_j].p, bp_buf[bp_j].bytes))",
        f"                return {up}_ERR_OVERLAP;",
        f"    if (!{name}_cpu_supported()) return {up}_ERR_CPU;",
        f"    return {name}__compute({', '.join([n for n, *_ in bufs] + [wsn])});",
        "}",
        "",
    ]
    return "\n".join(lines)


WS_ALIGN = 8  # bytes: workspace buffers hold at most 8-byte elements at 64-byte offsets


def header(program: Program, name: str, labels, cpu: str = "", features=()) -> str:
    up = name.upper()
    checked = [f for f in features if f in X86_CHECKED]
    ws = program.memory.workspace_bytes
    lines = [
        f"/* {name}.h: C interface to lib{name}.so, generated by bpcompile (LLVM backend).",
        " *",
        f" * int {name}_grad(inputs and params..., loss, gradients..., workspace)",
        " *   Computes the loss and its gradients; returns " + up + "_OK (0) or an error code",
        " *   below, in which case nothing was written.",
        " *",
        " * Buffers. Every array is dense and row-major (C order, contiguous, no strides) with",
        " *   exactly the element count listed at its parameter; a 0-d array is one element.",
        " *   `workspace` is scratch memory of " + up + "_WORKSPACE_BYTES bytes (its contents",
        " *   need not be kept between calls). Outputs are written, never read first: their",
        " *   previous contents do not matter.",
        " * NULL. Every pointer must be non-NULL, except one whose buffer has 0 bytes (a",
        " *   zero-size array, or the workspace when " + up + "_WORKSPACE_BYTES is 0):",
        " *   otherwise " + up + "_ERR_NULL.",
        " * Alignment. Each array must be aligned to its element type (float, int32_t: 4",
        f" *   bytes; double: 8), the workspace to {WS_ALIGN} bytes: otherwise {up}_ERR_ALIGN."
        " Any",
        " *   malloc'd block qualifies; 64-byte alignment (aligned_alloc) is fastest.",
        " * Aliasing. Inputs and params are only read and may share memory with each other",
        " *   (pass one array twice). An output or the workspace may not overlap any other",
        " *   buffer (including another output): checked, " + up + "_ERR_OVERLAP. Overlap is",
        " *   judged on byte ranges [p, p + bytes); in-place updates (params as outputs) are",
        " *   therefore refused: write into a second buffer and swap.",
        " * Index inputs (int32) must lie in the range given at their parameter: checked",
        " *   before anything is written, " + up + "_ERR_INDEX.",
        " * NaN and infinity. IEEE 754 arithmetic without fast-math: a NaN input propagates to",
        " *   every output it reaches (max/maximum/minimum return NaN when an operand is NaN,",
        " *   as NumPy does; comparisons with NaN are false, != true). Sums may be reassociated",
        " *   and multiply-adds contracted (FMA) for vectorisation: results can differ from a",
        " *   sequential evaluation in the last bits, and where partial sums overflow, in which",
        " *   of +inf, -inf or NaN a sum gives. float32 exp/tanh are polynomials (relative error",
        " *   <= 3.3e-7). Floating-point exceptions are not raised (no traps, flags unspecified).",
        " * Threads. The library keeps no mutable global state: calls are reentrant and",
        " *   thread-safe as long as concurrent calls use distinct outputs and workspaces",
        " *   (inputs may be shared). No call allocates memory, blocks or spawns threads.",
        f" * CPU. The code was compiled for this CPU: {cpu or 'host'}, with the features listed",
        f" *   by {name}_cpu_features() (LLVM names). Loading the library on any CPU is safe;",
        f" *   {name}_grad first checks the instruction sets vectorised code uses and returns",
        f" *   {up}_ERR_CPU when one is missing:",
        *[" *     " + ln for ln in textwrap.wrap(", ".join(checked) or "none here", 80)],
        " *   Other listed features are not",
        " *   checked: running on a CPU that lacks them is undefined behaviour. Re-export on (or",
        " *   for) the target machine to be sure.",
        " */",
        f"#ifndef {up}_H",
        f"#define {up}_H",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"#define {up}_WORKSPACE_BYTES {ws}u",
        f"#define {up}_WORKSPACE_ALIGN {WS_ALIGN}u",
        f"#define {up}_NUM_ARGS {len(program.args)}",
        f"#define {up}_NUM_OUTPUTS {len(program.outputs)}",
        "",
        f"/* Return codes of {name}_grad. */",
        f"enum {name}_status {{",
    ]
    lines += [f"    {up}_{e} = {v}, /* {doc} */" for e, v, doc in ERRORS]
    lines += [
        "};",
        "",
        f"/* workspace size in bytes (= {up}_WORKSPACE_BYTES) */",
        f"size_t {name}_workspace_size(void);",
        "/* 1 when this CPU has the checked instruction sets (see above), else 0 */",
        f"int {name}_cpu_supported(void);",
        "/* the LLVM target features the code was compiled with, comma-separated */",
        f"const char *{name}_cpu_features(void);",
        f"/* a static English description of a return code of {name}_grad */",
        f"const char *{name}_strerror(int code);",
        "",
        f"int {name}_grad(",
    ]
    params = []
    user = [a.attr("name") for a in program.args] + list(labels)
    cn = c_names(user + ["workspace"], name)

    def was(k):  # the bpcompile name, when the C name had to differ
        return f" ({user[k]!r} in bpcompile)" if cn[k] != user[k] else ""

    for k, a in enumerate(program.args):
        kind = "param" if a.op == "param" else "input"
        bound = program.bounds.get(a.attr("name"))
        note = f", values in [{bound[0]}, {bound[1]})" if bound is not None else ""
        params.append((f"    const {C_TYPES[a.dtype]} *{cn[k]}",
                       f"{kind} {a.dtype}{list(a.shape)}, {a.size} elements{note}{was(k)}"))
    for j, (k, o) in enumerate(enumerate(program.outputs, len(program.args))):
        what = "the loss" if j == 0 else f"gradient of {labels[j][1:]!r}"  # labels: d<name>
        params.append((f"    {C_TYPES[o.dtype]} *{cn[k]}",
                       f"out {o.dtype}{list(o.shape)}, {max(o.size, 1)} elements, {what}"))
    params.append((f"    void *{cn[-1]}", f"{up}_WORKSPACE_BYTES bytes, or NULL if 0"))
    for k, (decl, note) in enumerate(params):
        sep = "," if k < len(params) - 1 else ");"
        lines.append(f"{decl + sep:<44s} /* {note} */")
    lines += ["", "#ifdef __cplusplus", "}", "#endif", f"#endif /* {up}_H */", ""]
    return "\n".join(lines)
