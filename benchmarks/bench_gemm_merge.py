"""Would merging x@W1 and x@vW1 (and x.T@d1, x.T@d1_t) into one GEMM pay on mlp_mnist?

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_gemm_merge.py
"""
import time

import numpy as np

r = np.random.default_rng(0)
f = np.float32
x = r.standard_normal((128, 784)).astype(f)
W, V = (r.standard_normal((784, 256)).astype(f) for _ in range(2))
WV = np.concatenate([W, V], 1)
d, dt = (r.standard_normal((128, 256)).astype(f) for _ in range(2))
dd = np.concatenate([d, dt], 1)
o1, o2, o = np.empty((128, 256), f), np.empty((128, 256), f), np.empty((128, 512), f)
g1, g2, g = np.empty((784, 256), f), np.empty((784, 256), f), np.empty((784, 512), f)
xT = x.T
cases = {
    "fwd two GEMMs x@W, x@V": lambda: (np.matmul(x, W, out=o1), np.matmul(x, V, out=o2)),
    "fwd one GEMM x@[W|V], pre-concatenated": lambda: np.matmul(x, WV, out=o),
    "fwd concat + one GEMM": lambda: (np.concatenate([W, V], 1, out=WV),
                                      np.matmul(x, WV, out=o)),
    "bwd two GEMMs x.T@d, x.T@dt": lambda: (np.matmul(xT, d, out=g1),
                                           np.matmul(xT, dt, out=g2)),
    "bwd concat + one GEMM + split copy": lambda: (np.concatenate([d, dt], 1, out=dd),
                                                   np.matmul(xT, dd, out=g),
                                                   np.copyto(g1, g[:, :256]),
                                                   np.copyto(g2, g[:, 256:])),
}
runs = {k: [] for k in cases}
for _ in range(7):
    for k, c in cases.items():
        c()
        ts = []
        for _ in range(15):
            t0 = time.perf_counter()
            c()
            ts.append(time.perf_counter() - t0)
        runs[k].append(np.median(ts) * 1e6)
for k, t in runs.items():
    print(f"{k:42s} median {np.median(t):7.1f} us  min {min(t):7.1f} us")
