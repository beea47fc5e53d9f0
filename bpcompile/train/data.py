"""Datasets for the trainer: check arrays against a model's inputs, split, and batch.

Graphs have static shapes, so a batch is exactly `batch_size` examples: each epoch draws a
seeded permutation and cuts it into full batches; the last partial batch is dropped in training
(every example is still seen across epochs, since the permutation changes) and evaluated by a
graph rebuilt at that size where the model can be rebuilt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArgumentError

_KINDS = {"float32": "fiu", "float64": "fiu", "int32": "iu", "bool": "b"}


class DataError(ArgumentError):
    """Training data that do not fit the model: names, shapes, dtypes or label ranges."""


def load_npz(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read as .npz: {e}") from None


def check_data(data: dict, inputs: list, bounds: dict[str, tuple[int, int]],
               what: str = "data") -> int:
    """Validate `data` (arrays by input name, leading axis = examples) against the model's
    input nodes (whose leading axis is the batch) and the index bounds {name: (lo, hi)} of
    `ops.index.input_ranges`; return the number of examples."""
    if not isinstance(data, dict):
        raise DataError(f"{what}: expected a dict of arrays by input name (or an .npz path), "
                        f"got {type(data).__name__}")
    want = {x.attr("name"): x for x in inputs}
    sig = ", ".join(f"{n}: {x.dtype}[N, {', '.join(map(str, x.shape[1:]))}]".replace(", ]", "]")
                    for n, x in want.items())
    missing = [n for n in want if n not in data]
    extra = [k for k in data if k not in want]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + (
            [f"unexpected {extra}"] if extra else [])
        raise DataError(f"{what}: {'; '.join(parts)}; the model's inputs are {sig}")
    n = None
    for name, x in want.items():
        arr = np.asarray(data[name])
        if arr.ndim != x.ndim or arr.shape[1:] != x.shape[1:]:
            raise DataError(f"{what}: {name!r} has shape {arr.shape}, expected (N, "
                            f"{', '.join(map(str, x.shape[1:]))}) to match input {name!r} of "
                            f"shape {x.shape} (batch axis first)".replace(", )", ")"))
        if arr.dtype.kind not in _KINDS[x.dtype]:
            raise DataError(f"{what}: {name!r} has dtype {arr.dtype}, but input {name!r} is "
                            f"{x.dtype}" + (" (integer class labels)" if x.dtype == "int32"
                                            else ""))
        if n is None:
            n, first = arr.shape[0], name
        elif arr.shape[0] != n:
            raise DataError(f"{what}: {name!r} has {arr.shape[0]} examples but {first!r} has {n}")
        bound = bounds.get(name)
        if bound is not None and arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < bound[0] or hi >= bound[1]:
                raise DataError(f"{what}: labels {name!r} must lie in [{bound[0]}, {bound[1]}) "
                                f"(the model has {bound[1]} classes), got values {lo}..{hi}")
        if x.dtype.startswith("float") and arr.size and not np.isfinite(arr).all():
            raise DataError(f"{what}: {name!r} contains NaN or inf")
    return int(n)


def cast_data(data: dict, inputs: list) -> dict[str, np.ndarray]:
    return {x.attr("name"): np.ascontiguousarray(np.asarray(data[x.attr("name")], x.dtype))
            for x in inputs}


def split(data: dict, fraction: float, seed: int) -> tuple[dict, dict]:
    """(train, validation): a seeded random `fraction` held out."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    n = len(next(iter(data.values())))
    perm = np.random.default_rng([int(seed), 7]).permutation(n)
    k = int(round(n * fraction))
    if k == 0 or k == n:
        raise DataError(f"validation fraction {fraction} of {n} examples leaves an empty split")
    val, tr = perm[:k], perm[k:]
    return {a: v[tr] for a, v in data.items()}, {a: v[val] for a, v in data.items()}


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True):
    """Index arrays of the full batches of epoch `epoch` (seeded by (seed, epoch))."""
    order = (np.random.default_rng([int(seed), int(epoch)]).permutation(n) if shuffle
             else np.arange(n))
    return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
