"""Least squares for calibration: a cost as a non-negative combination of named terms.

:func:`fit` solves the weighted normal equations (pure Python, a handful of terms),
drops a term that cannot be identified (it does not vary, or it is a combination of
the others) and refits without a term whose coefficient comes out negative (a cost
never falls with load), and reports R-squared and the relative residuals.  A dropped
term gets coefficient 0 and is named in :attr:`Fit.dropped`, so a report says which
parts of a cost the data could not tell apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: A pivot this small relative to its column's scale means the term adds nothing new.
SINGULAR = 1e-9


@dataclass
class Fit:
    """``y = sum(coefficients[k] * x[k])`` (``"1"`` is the intercept's term) and its quality."""

    name: str
    coefficients: dict[str, float]
    r2: float
    residuals: list[float] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def __getitem__(self, term: str) -> float:
        return self.coefficients.get(term, 0.0)

    def percentiles(self) -> dict[str, float]:
        """Absolute relative residuals at p50, p90, p99."""
        values = sorted(self.residuals)
        if not values:
            return {"p50": 0.0, "p90": 0.0, "p99": 0.0}
        pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
        return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; ``None`` when singular."""
    n = len(vector)
    a = [row[:] + [v] for row, v in zip(matrix, vector)]
    scale = max((abs(a[i][i]) for i in range(n)), default=1.0) or 1.0
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) <= SINGULAR * scale:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(n):
            if r != col:
                factor = a[r][col] / a[col][col]
                a[r] = [x - factor * y for x, y in zip(a[r], a[col])]
    return [a[i][n] / a[i][i] for i in range(n)]


def _normal(columns: list[list[float]], ys: list[float], w: list[float]) -> list[float] | None:
    """The least-squares coefficients of ``columns`` (each already scaled to unit size)."""
    k = len(columns)
    gram = [[sum(wi * a * b for wi, a, b in zip(w, columns[i], columns[j])) for j in range(k)] for i in range(k)]
    moment = [sum(wi * a * y for wi, a, y in zip(w, columns[i], ys)) for i in range(k)]
    return _solve(gram, moment)


def fit(name: str, terms: dict[str, list[float]], ys: list[float], weights: list[float] | None = None) -> Fit:
    """Weighted non-negative least squares of ``ys`` on ``terms`` (name to values per
    observation; name ``"1"`` for an intercept, whose values are all 1)."""
    w = weights or [1.0] * len(ys)
    names = [t for t in terms if any(v != 0 for v in terms[t])]
    dropped = [t for t in terms if t not in names]
    # a term constant across observations is the intercept's twin: keep the intercept
    if "1" in names:
        for t in [t for t in names if t != "1" and len(set(terms[t])) == 1]:
            names.remove(t)
            dropped.append(t)
    coefficients: dict[str, float] = {}
    while names:
        scales = [max(abs(v) for v in terms[t]) or 1.0 for t in names]
        columns = [[v / s for v in terms[t]] for t, s in zip(names, scales)]
        solved = _normal(columns, ys, w)
        if solved is None:  # collinear: drop the last term and try again
            dropped.append(names.pop())
            continue
        values = {t: c / s for t, c, s in zip(names, solved, scales)}
        negative = [t for t in names if values[t] < 0]
        if negative:
            worst = min(negative, key=lambda t: values[t] * max(abs(v) for v in terms[t]))
            names.remove(worst)
            dropped.append(worst)
            continue
        coefficients = values
        break
    for t in dropped:
        coefficients.setdefault(t, 0.0)
    return scored(name, terms, coefficients, ys, w, dropped)


def scored(name: str, terms: dict[str, list[float]], coefficients: dict[str, float], ys: list[float], w: list[float],
            dropped: list[str]) -> Fit:
    """The :class:`Fit` of ``coefficients`` on ``terms``: its weighted R-squared and
    relative residuals against ``ys``, terms in ``terms``' order."""
    predicted = [sum(coefficients.get(t, 0.0) * terms[t][i] for t in terms) for i in range(len(ys))]
    total = sum(w)
    mean = sum(wi * y for wi, y in zip(w, ys)) / total if total else 0.0
    ss_res = sum(wi * (y - p) ** 2 for wi, y, p in zip(w, ys, predicted))
    ss_tot = sum(wi * (y - mean) ** 2 for wi, y in zip(w, ys))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    residuals = [abs(y - p) / abs(y) for y, p in zip(ys, predicted) if y != 0]
    order = {t: i for i, t in enumerate(terms)}
    return Fit(name, dict(sorted(coefficients.items(), key=lambda kv: order[kv[0]])), r2, residuals, sorted(set(dropped), key=lambda t: order[t]))


def line(name: str, xs: list[float], ys: list[float], weights: list[float] | None = None) -> Fit:
    """``y = a + b x``: :func:`fit` with an intercept and one slope (named ``"x"``)."""
    return fit(name, {"1": [1.0] * len(xs), "x": xs}, ys, weights)


def slope_error(fitted: Fit, xs: list[float], ys: list[float], weights: list[float] | None = None) -> float | None:
    """The standard error of the slope of ``fitted``, a weighted line of ``ys`` on ``xs``
    (terms ``"1"`` and the slope's), from its own residuals; ``None`` where they cannot
    tell it (two points or fewer: a line through them leaves none; no spread in ``xs``)."""
    n = len(xs)
    if n <= 2:
        return None
    w = weights or [1.0] * n
    mean_w = sum(w) / n
    w = [wi / mean_w for wi in w]  # weights relative to their mean: n observations' worth
    slope = next((v for k, v in fitted.coefficients.items() if k != "1"), 0.0)
    intercept = fitted["1"]
    x_bar = sum(wi * x for wi, x in zip(w, xs)) / n
    spread = sum(wi * (x - x_bar) ** 2 for wi, x in zip(w, xs))
    if spread <= 0:
        return None
    residual = sum(wi * (y - intercept - slope * x) ** 2 for wi, x, y in zip(w, xs, ys)) / (n - 2)
    return math.sqrt(residual / spread)


@dataclass(frozen=True)
class FloorLine:
    """``y = max(floor, base + slope x)``: flat up to a knee, then a line (``floor`` 0:
    a line throughout), with its R-squared and relative residuals."""

    floor: float
    base: float
    slope: float
    r2: float
    residuals: list[float] = field(default_factory=list)

    def at(self, x: float) -> float:
        return max(self.floor, self.base + self.slope * x)

    @property
    def knee(self) -> float:
        """Where the line leaves the floor (0 without a floor or a slope)."""
        return max(0.0, (self.floor - self.base) / self.slope) if self.floor and self.slope > 0 else 0.0


def floor_line(xs: list[float], ys: list[float]) -> FloorLine:
    """The least-squares :class:`FloorLine` through ``(xs, ys)``: each split of the points
    by ``x`` into a flat part (their mean; none for the first split) and a line (a
    non-negative :func:`line` through the rest, two points at least), the best kept.
    A training step whose kernels the host launches faster than the device runs them
    is flat for small batches and grows with the batch past that."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"a floor and a line need at least two points, got {len(xs)}")
    points = sorted(zip(xs, ys))
    px, py = [x for x, _ in points], [y for _, y in points]
    best: tuple[float, FloorLine] | None = None
    for split in range(0, len(points) - 1):
        floor = sum(py[:split]) / split if split else 0.0
        fitted = line("step", px[split:], py[split:])
        candidate = FloorLine(floor, fitted["1"], fitted["x"], 0.0)
        error = sum((y - candidate.at(x)) ** 2 for x, y in points)
        if best is None or error < best[0] - 1e-15:
            best = (error, candidate)
    assert best is not None
    error, chosen = best
    mean = sum(py) / len(py)
    total = sum((y - mean) ** 2 for y in py)
    residuals = sorted(abs(y - chosen.at(x)) / abs(y) for x, y in points if y)
    return FloorLine(chosen.floor, chosen.base, chosen.slope, 1.0 - error / total if total > 0 else 1.0, residuals)
