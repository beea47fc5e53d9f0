"""LLVM initialisation, the host target machine, the optimisation pipeline and MCJIT loading.

External symbols the generated code calls (libm functions, the CPython C API for the fast call
wrapper) are registered by address with `llvm.add_symbol`, so resolution never depends on how
the interpreter was linked.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import llvmlite
import llvmlite.binding as llvm

LIBM_FUNCS = ("tanh", "tanhf", "log1p", "log1pf", "expm1", "expm1f")
PYAPI_FUNCS = ("PyDict_GetItem", "PyDict_Size", "PyDict_New", "PyDict_SetItem", "PyTuple_New",
               "PyTuple_SetItem", "PyObject_Call", "_Py_Dealloc", "PyThreadState_Get",
               "PyThreadState_GetID")


@functools.cache
def init() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    libm = _libm()
    for name in LIBM_FUNCS:
        llvm.add_symbol(name, ctypes.cast(getattr(libm, name), ctypes.c_void_p).value)
    for name in PYAPI_FUNCS:
        llvm.add_symbol(name, ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value)


def _libm() -> ctypes.CDLL:
    """The C math library: by its usual soname first (find_library runs `ldconfig -p`, ~10 ms
    of every process's first compile), else wherever find_library says."""
    try:
        return ctypes.CDLL("libm.so.6")
    except OSError:
        return ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")


@functools.cache
def host() -> tuple[str, str, str]:
    """(triple, cpu name, cpu features) of this machine."""
    init()
    features = llvm.get_host_cpu_features().flatten()
    return llvm.get_process_triple(), llvm.get_host_cpu_name(), features


def target_machine(jit: bool = True, opt: int = 3):
    triple, cpu, features = host()
    target = llvm.Target.from_triple(triple)
    if jit:
        return target.create_target_machine(cpu=cpu, features=features, opt=opt,
                                            codemodel="jitdefault")
    return target.create_target_machine(cpu=cpu, features=features, opt=opt, reloc="pic",
                                        codemodel="default")


def optimize(ir_text: str, tm, speed: int = 3, unroll: bool = True):
    """Parse, verify (before any optimisation), and run LLVM's O<speed> pipeline.

    unroll=False skips loop unrolling (big schedules: full unrolling of every small static
    loop dominated compile time and code size)."""
    mod = llvm.parse_assembly(ir_text)
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=speed)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = unroll
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return mod


def versions() -> str:
    return f"llvmlite {llvmlite.__version__} llvm {'.'.join(map(str, llvm.llvm_version_info))}"
