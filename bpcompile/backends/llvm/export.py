"""Ahead-of-time export: a shared library and a C header for a model's gradient function.

    bpcompile.export(loss, wrt, "out/", name="model")
    -> out/libmodel.so, out/model.h

The library needs no Python: matmuls are inline loops (no BLAS), math comes from libm. The C
ABI (see the generated header) is one function taking every input and param as a const pointer
(row-major, in the order of the header), the loss and gradients as pointers to caller-owned
arrays, and a caller-owned workspace of MODEL_WORKSPACE_BYTES bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from llvmlite import ir

from ...errors import BackendError
from . import jit
from .codegen import Program
from .loops import I32, I64, PTR

C_TYPES = {"float32": "float", "float64": "double", "int32": "int32_t", "bool": "uint8_t"}
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
    taken = set(C_RESERVED) | {f"{model}_grad", f"{model}_workspace_size", f"{up}_H"}
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


def export(loss, wrt, out_dir: str, name: str = "model", cc: str | None = None) -> dict:
    """Write lib<name>.so and <name>.h to `out_dir`; returns their paths.

    The exported function is `int <name>_grad(inputs..., params..., loss, grads..., workspace)`;
    it returns 0, or 1 (computing nothing) when an int32 index input is out of range.
    """
    from ...compiled import compile as bp_compile

    if not _C_IDENT.match(name) or name in C_RESERVED:
        raise ValueError(f"export: name must be a C identifier (ASCII letters, digits and _, "
                         f"not a C keyword), got {name!r}")
    fn = bp_compile(loss, wrt, backend="numpy")  # only for the simplified graph
    outputs, args = fn.outputs, fn.args
    program = Program(outputs, args, gemm_threshold=2**62)  # no BLAS: self-contained
    jit.init()
    module = ir.Module(name)
    module.triple = jit.host()[0]
    main = program.emit(module)
    for f in (main, module.globals["bp_entry"]):
        f.linkage = "internal"
    _emit_api(module, program, main, name)
    tm = jit.target_machine(jit=False)
    optimized = jit.optimize(str(module), tm)
    obj = tm.emit_object(optimized)
    os.makedirs(out_dir, exist_ok=True)
    obj_path = os.path.join(out_dir, f"{name}.o")
    lib_path = os.path.join(out_dir, f"lib{name}.so")
    header_path = os.path.join(out_dir, f"{name}.h")
    with open(obj_path, "wb") as f:
        f.write(obj)
    cc = cc or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise BackendError("export: no C compiler/linker found (set CC)")
    res = subprocess.run([cc, "-shared", "-o", lib_path, obj_path, "-lm"],
                         capture_output=True, text=True)
    if res.returncode:
        raise BackendError(f"export: linking {lib_path} failed:\n{res.stderr}")
    os.remove(obj_path)
    labels = ["loss"] + ["d" + w.attr("name") for w in fn.wrt]
    with open(header_path, "w") as f:
        f.write(header(program, name, labels))
    return {"library": lib_path, "header": header_path,
            "workspace_bytes": program.memory.workspace_bytes}


def _emit_api(module: ir.Module, program: Program, main, name: str):
    nin, nout = len(program.args), len(program.outputs)
    fn = ir.Function(module, ir.FunctionType(I32, [PTR] * (nin + nout + 1)), f"{name}_grad")
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
    size = ir.Function(module, ir.FunctionType(I64, []), f"{name}_workspace_size")
    sb = ir.IRBuilder(size.append_basic_block())
    sb.ret(ir.Constant(I64, program.memory.workspace_bytes))


def header(program: Program, name: str, labels) -> str:
    up = name.upper()
    lines = [
        f"/* {name}.h: C interface to lib{name}.so, generated by bpcompile (LLVM backend).",
        " *",
        f" * int {name}_grad(inputs and params..., loss, gradients..., workspace)",
        " *   Computes the loss and its gradients. All arrays are dense, row-major (C order),",
        " *   with exactly the shapes below; outputs are written, never read. `workspace` must",
        f" *   point to {up}_WORKSPACE_BYTES writable bytes (any malloc'd block; reuse it",
        " *   between calls, one per concurrent caller). Returns 0 on success, 1 when an",
        " *   int32 index argument is out of range (nothing is written then).",
        " *   No global state; thread-safe with distinct output and workspace buffers.",
        " */",
        f"#ifndef {up}_H",
        f"#define {up}_H",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"#define {up}_WORKSPACE_BYTES {max(program.memory.workspace_bytes, 1)}u",
        f"#define {up}_NUM_ARGS {len(program.args)}",
        f"#define {up}_NUM_OUTPUTS {len(program.outputs)}",
        "",
        f"/* workspace size in bytes (= {up}_WORKSPACE_BYTES) */",
        f"size_t {name}_workspace_size(void);",
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
        note = f", values in [0, {bound})" if bound is not None else ""
        params.append((f"    const {C_TYPES[a.dtype]} *{cn[k]}",
                       f"{kind} {a.dtype}{list(a.shape)}, {a.size} elements{note}{was(k)}"))
    for j, (k, o) in enumerate(enumerate(program.outputs, len(program.args))):
        what = "the loss" if j == 0 else f"gradient of {labels[j][1:]!r}"  # labels: d<name>
        params.append((f"    {C_TYPES[o.dtype]} *{cn[k]}",
                       f"out {o.dtype}{list(o.shape)}, {max(o.size, 1)} elements, {what}"))
    params.append((f"    void *{cn[-1]}", f"{up}_WORKSPACE_BYTES bytes"))
    for k, (decl, note) in enumerate(params):
        sep = "," if k < len(params) - 1 else ");"
        lines.append(f"{decl + sep:<44s} /* {note} */")
    lines += ["", "#ifdef __cplusplus", "}", "#endif", f"#endif /* {up}_H */", ""]
    return "\n".join(lines)

