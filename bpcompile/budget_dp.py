"""The dynamic programme behind `memory_budget=`: which groups of a chain of segments to
recompute, with the least recompute FLOPs, so that a modelled peak fits a budget.

The chain is the forward graph cut into segments (budget.segments). A plan splits it into
contiguous groups, each one of
  "store":  every activation kept (no recompute);
  "remat":  only the group's last cut kept; the backward pass recomputes the whole group at
            once (Chen et al.'s segments: one extra forward);
  "nested": as "remat", and inside the recomputation every segment is checkpointed again, so
            the recomputation keeps only the cuts plus one segment's activations (two extra
            forwards: the √n-of-√n scheme, for budgets one level cannot meet).
Modelled peak = c + Σ kept bytes + max over recomputed groups of the bytes their recomputation
holds live. For each cap W on that max, a DP over prefixes keeps the Pareto front of (kept
bytes, FLOPs); a budget then picks the cheapest point over all W. The model is a model: the
caller checks every plan against the real plan (budget.py) and searches the model budget.
"""

from __future__ import annotations

from dataclasses import dataclass

Group = tuple[int, int, str]  # (first segment, last segment, kind)


@dataclass(frozen=True)
class Chain:
    """Per segment: activation bytes held while its backward runs (`act`), bytes of the cut
    that ends it (`cut`), forward FLOPs (`flops`), FLOPs a recomputation ending at its cut
    skips (`tail`: the cut itself is kept, so work only it needs is not redone); `base`:
    bytes every plan holds."""
    act: tuple[float, ...]
    cut: tuple[float, ...]
    flops: tuple[float, ...]
    base: float = 0.0
    tail: tuple[float, ...] = ()


def _group(ch: Chain, s: int, e: int, kind: str) -> tuple[float, float, float]:
    """(kept bytes, recompute working bytes, recompute FLOPs) of group s..e."""
    a, c, f = ch.act[s:e + 1], ch.cut[s:e + 1], ch.flops[s:e + 1]
    t = ch.tail[s:e + 1] if ch.tail else (0.0,) * len(f)
    if kind == "store":
        return sum(a) + sum(c), 0.0, 0.0
    if kind == "remat":
        return c[-1], sum(a) + sum(c) - c[-1], float(sum(f) - t[-1])
    # nested: the outer recomputation, then each segment again (each skipping its own tail)
    return c[-1], sum(c) - c[-1] + max(a), float(2 * sum(f) - sum(t) - t[-1])


def _front(points: list[tuple[float, float, tuple]], cap: int) -> list:
    """Pareto front (least kept bytes, least FLOPs), at most `cap` points kept evenly."""
    points.sort(key=lambda p: (p[0], p[1]))
    out: list = []
    for p in points:
        if not out or p[1] < out[-1][1]:
            out.append(p)
    if len(out) > cap:  # thin, keeping both ends
        step = (len(out) - 1) / (cap - 1)
        out = [out[round(k * step)] for k in range(cap)]
    return out


class Planner:
    """All Pareto-optimal plans of a chain, computed once; `plan(budget)` is then a lookup."""

    def __init__(self, chain: Chain, caps: int = 16, front_cap: int = 96):
        self.chain = chain
        n = len(chain.act)
        groups = {(s, e, k): _group(chain, s, e, k) for e in range(n) for s in range(e + 1)
                  for k in ("store", "remat", "nested") if k != "nested" or e > s}
        self.groups = groups
        works = sorted({w for _, w, _ in groups.values()})
        if len(works) > caps:  # a spread of caps, always the smallest and the largest
            works = sorted({works[round(k * (len(works) - 1) / (caps - 1))]
                            for k in range(caps)})
        self.fronts: list[tuple[float, list]] = []
        for cap_w in works:
            fronts: list[list] = [[(0.0, 0.0, ())]]
            for e in range(n):
                pts = []
                for (s, ee, k), (kept, work, fl) in groups.items():
                    if ee != e or work > cap_w:
                        continue
                    for kb, fb, plan in fronts[s]:
                        pts.append((kb + kept, fb + fl, plan + ((s, e, k),)))
                fronts.append(_front(pts, front_cap))
            self.fronts.append((cap_w, fronts[n]))

    def peak(self, plan: tuple[Group, ...]) -> float:
        """The modelled peak of a plan."""
        g = [self.groups[p] for p in plan]
        return self.chain.base + sum(k for k, _, _ in g) + max((w for _, w, _ in g), default=0)

    def least_peak(self) -> float:
        """The smallest modelled peak of any plan."""
        return min(self.chain.base + cap + pts[0][0] for cap, pts in self.fronts if pts)

    def plan(self, budget: float) -> tuple[Group, ...] | None:
        """The plan with the least recompute FLOPs whose modelled peak is <= budget (ties: the
        smaller peak), or None."""
        best = None
        for cap, pts in self.fronts:
            for kept, fl, plan in pts:
                pk = self.peak(plan)
                if self.chain.base + cap + kept <= budget and pk <= budget:
                    key = (fl, pk)
                    if best is None or key < best[0]:
                        best = (key, plan)
        return None if best is None else best[1]

    def flops(self, plan: tuple[Group, ...]) -> float:
        return sum(self.groups[p][2] for p in plan)
