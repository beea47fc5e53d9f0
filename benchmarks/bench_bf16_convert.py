"""float32 -> bfloat16 rounding on the LLVM backend: the integer round-to-nearest-even that
`backends/llvm/loops.py` (`narrow`) emits vs LLVM's `fptrunc float to bfloat`, which LLVM
(>= 17) lowers to AVX512-BF16's `vcvtneps2bf16` on a CPU that has it. Same process,
alternating, medians; also counts results that differ from ml_dtypes' rounding (the
instruction flushes float32 subnormals to zero).

    python benchmarks/bench_bf16_convert.py [--n 262144] [--rounds 40]
"""

from __future__ import annotations

import argparse
import ctypes
import time

import llvmlite.binding as llvm
import ml_dtypes
import numpy as np

HW = """
  %b = fptrunc float %v to bfloat
  %bi = bitcast bfloat %b to i16"""
SW = """
  %bits = bitcast float %v to i32
  %sh = lshr i32 %bits, 16
  %lsb = and i32 %sh, 1
  %a1 = add i32 %bits, 32767
  %a2 = add i32 %a1, %lsb
  %r = lshr i32 %a2, 16
  %nan = or i32 %sh, 64
  %isn = fcmp uno float %v, %v
  %s = select i1 %isn, i32 %nan, i32 %r
  %bi = trunc i32 %s to i16"""


def _loop(name: str, body: str) -> str:
    return f"""
define void @{name}(ptr noalias %x, ptr noalias %y, i64 %n) {{
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %px = getelementptr float, ptr %x, i64 %i
  %v = load float, ptr %px
{body}
  %py = getelementptr i16, ptr %y, i64 %i
  store i16 %bi, ptr %py
  %i1 = add i64 %i, 1
  %c = icmp ult i64 %i1, %n
  br i1 %c, label %loop, label %exit
exit:
  ret void
}}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1 << 18)
    ap.add_argument("--rounds", type=int, default=40)
    a = ap.parse_args()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    mod = llvm.parse_assembly(_loop("hw", HW) + _loop("sw", SW))
    mod.verify()
    tm = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3)
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    asm = tm.emit_assembly(mod)
    ee = llvm.create_mcjit_compiler(mod, tm)
    ee.finalize_object()
    sig = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    fns = {k: sig(ee.get_function_address(k)) for k in ("hw", "sw")}
    x = np.random.default_rng(0).standard_normal(a.n).astype(np.float32)
    x[:4] = [1e-39, -3e-40, 9.2e-41, np.nan]  # subnormals and a NaN
    ref = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    times: dict = {k: [] for k in fns}
    for _ in range(a.rounds):
        for k, f in fns.items():
            y = np.zeros(a.n, np.uint16)
            s = time.perf_counter()
            f(x.ctypes.data, y.ctypes.data, a.n)
            times[k].append(time.perf_counter() - s)
    for k, f in fns.items():
        y = np.zeros(a.n, np.uint16)
        f(x.ctypes.data, y.ctypes.data, a.n)
        print(f"{k}: median {np.median(times[k]) * 1e6:.0f} us, min {min(times[k]) * 1e6:.0f} us "
              f"per {a.n} floats; {int(np.sum(y != ref))} differ from ml_dtypes")
    print(f"vcvtneps2bf16 in the hw loop: {asm.count('vcvtneps2bf16') > 0} "
          f"(llvm {'.'.join(map(str, llvm.llvm_version_info))})")


if __name__ == "__main__":
    main()
