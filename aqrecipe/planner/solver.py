"""Multiple-choice knapsack: one option per group, minimum total error under a byte budget.

Two solvers share one problem type:

* :func:`solve_dp` - dynamic programming on a byte grid. Exact when the grid
  unit is one byte; otherwise option sizes are rounded *up* to whole grid
  cells, so every grid-feasible answer is truly feasible, and a final greedy
  pass spends the slack the rounding left.
* :func:`solve_lagrangian` - the Lagrangian relaxation walked exactly along
  each group's lower convex hull (all breakpoints, no bisection), then a
  greedy exchange repair that spends the remaining bytes on the best
  error-per-byte upgrades, hull or not.

Both are deterministic: options and groups are ordered by name, and ties in
error or slope are broken by those names.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Option:
    """One choice for a group: a label (type name), its bytes and its predicted error."""

    label: str
    n_bytes: int
    error: float


@dataclass(frozen=True)
class Group:
    """A tensor: its name and its options (at least one)."""

    name: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Solution:
    """The chosen option index per group (in the problem's group order) and its totals."""

    choice: tuple[int, ...]
    total_bytes: int
    total_error: float
    method: str


def _totals(groups: Sequence[Group], choice: Sequence[int]) -> tuple[int, float]:
    b = sum(g.options[i].n_bytes for g, i in zip(groups, choice))
    e = sum(g.options[i].error for g, i in zip(groups, choice))
    return int(b), float(e)


def min_bytes(groups: Sequence[Group]) -> int:
    """The smallest total size any assignment can have."""
    return sum(min(o.n_bytes for o in g.options) for g in groups)


def min_error_choice(groups: Sequence[Group]) -> list[int]:
    """Per group the lowest-error option (fewest bytes, then label, on ties)."""
    return [min(range(len(g.options)), key=lambda i: (g.options[i].error, g.options[i].n_bytes, g.options[i].label))
            for g in groups]


def _upgrade_key(g: Group, cur: int, j: int) -> tuple[float, str, str] | None:
    """Priority of moving group ``g`` from option ``cur`` to ``j``: best error saved per byte."""
    a, b = g.options[cur], g.options[j]
    gain = a.error - b.error
    if gain <= 0:
        return None
    extra = b.n_bytes - a.n_bytes
    ratio = float("inf") if extra <= 0 else gain / extra
    return (-ratio, g.name, b.label)


def greedy_repair(groups: Sequence[Group], choice: list[int], budget: int) -> list[int]:
    """Spend the bytes left under ``budget`` on the best error-per-byte moves (any option).

    Moves that save bytes and error at once are always taken first (ratio inf).
    Repeats until no move both fits and lowers the error. Deterministic.
    """
    choice = list(choice)
    used = sum(g.options[i].n_bytes for g, i in zip(groups, choice))
    while True:
        best: tuple[tuple[float, str, str], int, int] | None = None
        left = budget - used
        for gi, g in enumerate(groups):
            cur = choice[gi]
            for j in range(len(g.options)):
                if j == cur or g.options[j].n_bytes - g.options[cur].n_bytes > left:
                    continue
                key = _upgrade_key(g, cur, j)
                if key is not None and (best is None or key < best[0]):
                    best = (key, gi, j)
        if best is None:
            return choice
        _, gi, j = best
        used += groups[gi].options[j].n_bytes - groups[gi].options[choice[gi]].n_bytes
        choice[gi] = j


def solve_dp(groups: Sequence[Group], budget: int, *, max_cells: int = 1 << 16) -> Solution | None:
    """Minimum total error with total bytes <= ``budget``; None when nothing fits.

    The grid unit is ``ceil(budget / max_cells)`` bytes (1 byte, hence exact, for
    budgets up to ``max_cells``).
    """
    if min_bytes(groups) > budget:
        return None
    unit = max(1, -(-budget // max_cells))
    cells = budget // unit
    inf = np.inf
    best = np.zeros(cells + 1)  # best[c]: min error of the groups so far using <= c cells
    picks = np.zeros((len(groups), cells + 1), dtype=np.int16)
    for gi, g in enumerate(groups):
        new = np.full(cells + 1, inf)
        pick = np.full(cells + 1, -1, dtype=np.int16)
        for j, opt in enumerate(g.options):
            w = -(-opt.n_bytes // unit)
            if w > cells:
                continue
            cand = np.full(cells + 1, inf)
            cand[w:] = best[: cells + 1 - w] + opt.error
            better = cand < new  # strict: the first option (sorted order) wins ties
            new[better] = cand[better]
            pick[better] = j
        best, picks[gi] = new, pick
    if not np.isfinite(best[cells]):
        return None  # rounding up made the budget too tight on the grid
    choice = [0] * len(groups)
    c = cells
    for gi in range(len(groups) - 1, -1, -1):
        j = int(picks[gi, c])
        choice[gi] = j
        c -= -(-groups[gi].options[j].n_bytes // unit)
    if unit > 1:
        choice = greedy_repair(groups, choice, budget)
    b, e = _totals(groups, choice)
    return Solution(tuple(choice), b, e, "dp" if unit == 1 else f"dp(grid {unit} B)+repair")


def _lower_hull(g: Group) -> list[int]:
    """Indices of the options on the lower convex hull of (bytes, error), by increasing bytes."""
    order = sorted(range(len(g.options)), key=lambda i: (g.options[i].n_bytes, g.options[i].error, g.options[i].label))
    pts: list[int] = []
    for i in order:
        o = g.options[i]
        if pts and o.error >= g.options[pts[-1]].error:
            continue  # dominated: more (or equal) bytes, no less error
        while len(pts) >= 2:
            a, b = g.options[pts[-2]], g.options[pts[-1]]
            # b is above the segment a -> o: drop it
            if (b.error - a.error) * (o.n_bytes - a.n_bytes) >= (o.error - a.error) * (b.n_bytes - a.n_bytes):
                pts.pop()
            else:
                break
        pts.append(i)
    return pts


def solve_lagrangian(groups: Sequence[Group], budget: int) -> Solution | None:
    """Lagrangian relaxation (exact breakpoint walk) + greedy exchange repair."""
    if min_bytes(groups) > budget:
        return None
    hulls = [_lower_hull(g) for g in groups]
    pos = [0] * len(groups)
    choice = [h[0] for h in hulls]
    used = sum(g.options[i].n_bytes for g, i in zip(groups, choice))
    heap: list[tuple[float, str, int]] = []

    def push(gi: int) -> None:
        h = hulls[gi]
        if pos[gi] + 1 < len(h):
            a, b = groups[gi].options[h[pos[gi]]], groups[gi].options[h[pos[gi] + 1]]
            heapq.heappush(heap, (-(a.error - b.error) / (b.n_bytes - a.n_bytes), groups[gi].name, gi))

    for gi in range(len(groups)):
        push(gi)
    # Hull slopes decrease along each group, so the heap yields segments in global slope order.
    while heap:
        _, _, gi = heapq.heappop(heap)
        h = hulls[gi]
        extra = groups[gi].options[h[pos[gi] + 1]].n_bytes - groups[gi].options[h[pos[gi]]].n_bytes
        if used + extra > budget:
            break  # the Lagrangian solution for the multiplier at this breakpoint
        used += extra
        pos[gi] += 1
        choice[gi] = h[pos[gi]]
        push(gi)
    choice = greedy_repair(groups, choice, budget)
    b, e = _totals(groups, choice)
    return Solution(tuple(choice), b, e, "lagrangian+repair")


def smallest_size_for_error(groups: Sequence[Group], max_error: float) -> int | None:
    """Smallest total bytes whose best assignment has error <= ``max_error`` (hull walk).

    Walks the Lagrangian breakpoints from the smallest assignment upwards and
    returns the size at the first one meeting the cap; None when even the
    lowest-error assignment misses it. An upper bound on the true minimum,
    tight at hull points.
    """
    best_err = _totals(groups, min_error_choice(groups))[1]
    if best_err > max_error:
        return None
    lo, hi = min_bytes(groups), _totals(groups, min_error_choice(groups))[0]
    while lo < hi:  # the repaired Lagrangian error is non-increasing in the budget on hull points
        mid = (lo + hi) // 2
        sol = solve_lagrangian(groups, mid)
        if sol is not None and sol.total_error <= max_error:
            hi = mid
        else:
            lo = mid + 1
    return lo
