"""Statistics used by every lens: Welch and paired t-tests, bootstrap CIs, layer groups.

One place for the tests so that every Result states its numbers the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats as _st

from shiftlens.errors import ShiftlensError

__all__ = [
    "TestResult", "welch_test", "paired_test", "bootstrap_ci", "layer_groups", "p_adjust",
    "change_sentence", "test_label", "fmt_number", "digits_for",
]

Alternative = Literal["two-sided", "greater", "less"]


@dataclass(frozen=True)
class TestResult:
    """A two-sample comparison of ``a`` (e.g. tuned) against ``b`` (e.g. base).

    Attributes:
        test: ``"welch"`` or ``"paired"``.
        alternative: ``"greater"`` tests mean(a) > mean(b).
        mean_a, mean_b: Sample means (NaN-free samples).
        diff: ``mean_a - mean_b``.
        statistic, pvalue, df: The t statistic, its p-value and degrees of freedom.
        n_a, n_b: Sample sizes used.
        ci_low, ci_high: Bootstrap 95% CI of the difference of means (NaN when not computed).

    Example:
        >>> r = welch_test([2.0, 3, 4], [1.0, 1, 2], alternative="greater")
        >>> round(r.diff, 3), r.n_a
        (1.667, 3)
    """

    __test__ = False  # not a pytest test class

    test: str
    alternative: str
    mean_a: float
    mean_b: float
    diff: float
    statistic: float
    pvalue: float
    df: float
    n_a: int
    n_b: int
    ci_low: float = float("nan")
    ci_high: float = float("nan")

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready)."""
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.mean_b:.4g} -> {self.mean_a:.4g} (diff {self.diff:+.4g}, "
            f"95% CI [{self.ci_low:.4g}, {self.ci_high:.4g}], t={self.statistic:.3g}, "
            f"p={self.pvalue:.3g}, {self.test}, {self.alternative})"
        )


def _clean(x: npt.ArrayLike) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def bootstrap_ci(
    a: npt.ArrayLike,
    b: npt.ArrayLike | None = None,
    *,
    paired: bool = False,
    n_boot: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(a) (b None), mean(a) - mean(b), or mean(a - b) (paired).

    Example:
        >>> lo, hi = bootstrap_ci([1.0, 2, 3, 4], [0.0, 1, 1, 2])
        >>> lo < 1.5 < hi
        True
    """
    rng = np.random.default_rng(seed)
    if paired:
        if b is None:
            raise ShiftlensError("paired bootstrap needs both samples")
        x, y = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
        if x.shape != y.shape:
            raise ShiftlensError(f"paired samples differ in length: {x.size} vs {y.size}")
        keep = np.isfinite(x) & np.isfinite(y)
        d = x[keep] - y[keep]
        if d.size < 2:
            return float("nan"), float("nan")
        means = d[rng.integers(0, d.size, (n_boot, d.size))].mean(1)
    else:
        x = _clean(a)
        if x.size < 2:
            return float("nan"), float("nan")
        means = x[rng.integers(0, x.size, (n_boot, x.size))].mean(1)
        if b is not None:
            y = _clean(b)
            if y.size < 2:
                return float("nan"), float("nan")
            means = means - y[rng.integers(0, y.size, (n_boot, y.size))].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def welch_test(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    *,
    alternative: Alternative = "two-sided",
    ci: bool = True,
    seed: int = 0,
) -> TestResult:
    """Welch's unequal-variance t-test of mean(a) vs mean(b), with a bootstrap CI of the diff.

    NaNs are dropped. With fewer than two finite values in a sample, statistic and p are NaN.

    Example:
        >>> r = welch_test([3.0, 4, 5, 6], [1.0, 2, 2, 3], alternative="greater")
        >>> r.pvalue < 0.05
        True
    """
    x, y = _clean(a), _clean(b)
    if x.size >= 2 and y.size >= 2:
        res = _st.ttest_ind(x, y, equal_var=False, alternative=alternative)
        stat, p = float(res.statistic), float(res.pvalue)
        df = float(getattr(res, "df", np.nan))
    else:
        stat = p = df = float("nan")
    lo, hi = bootstrap_ci(x, y, seed=seed) if ci else (float("nan"), float("nan"))
    ma = float(x.mean()) if x.size else float("nan")
    mb = float(y.mean()) if y.size else float("nan")
    return TestResult("welch", alternative, ma, mb, ma - mb, stat, p, df, int(x.size), int(y.size), lo, hi)


def paired_test(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    *,
    alternative: Alternative = "two-sided",
    ci: bool = True,
    seed: int = 0,
) -> TestResult:
    """Paired t-test of a vs b (same items measured twice); pairs with a NaN are dropped.

    Example:
        >>> paired_test([1.0, 2, 3], [0.5, 1.4, 2.6], alternative="greater").diff > 0
        True
    """
    x, y = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if x.shape != y.shape:
        raise ShiftlensError(f"paired samples differ in length: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    d = x - y
    if d.size >= 2 and np.ptp(d) > 0:
        res = _st.ttest_rel(x, y, alternative=alternative)
        stat, p, df = float(res.statistic), float(res.pvalue), float(d.size - 1)
    elif d.size >= 2:  # constant differences: t is +-inf (or undefined when all zero)
        m = float(d.mean())
        stat = float("nan") if m == 0 else float(np.sign(m) * np.inf)
        if m == 0:
            p = 1.0
        elif alternative == "two-sided":
            p = 0.0
        else:
            p = 0.0 if (m > 0) == (alternative == "greater") else 1.0
        df = float(d.size - 1)
    else:
        stat = p = df = float("nan")
    lo, hi = bootstrap_ci(x, y, paired=True, seed=seed) if ci else (float("nan"), float("nan"))
    ma = float(x.mean()) if x.size else float("nan")
    mb = float(y.mean()) if y.size else float("nan")
    return TestResult("paired", alternative, ma, mb, ma - mb, stat, p, df, int(x.size), int(y.size), lo, hi)


def layer_groups(
    n_layers: int, names: Sequence[str] = ("lower", "middle", "upper")
) -> list[str]:
    """Split layers into contiguous groups of near-equal size (the paper's lower/middle/upper).

    Example:
        >>> layer_groups(6)
        ['lower', 'lower', 'middle', 'middle', 'upper', 'upper']
    """
    if n_layers < 1:
        raise ShiftlensError(f"n_layers must be >= 1, got {n_layers}")
    k = len(names)
    return [names[min(k - 1, (layer * k) // n_layers)] for layer in range(n_layers)]


def p_adjust(
    p: npt.ArrayLike, method: str = "holm"
) -> np.ndarray:
    """Multiple-comparison adjusted p-values (NaNs kept and not counted).

    ``"holm"``: Holm's step-down family-wise error control; ``"bh"``: Benjamini-Hochberg
    false discovery rate.

    Example:
        >>> p_adjust([0.01, 0.04, 0.03], "holm").round(3).tolist()
        [0.03, 0.06, 0.06]
        >>> p_adjust([0.01, 0.04, 0.03], "bh").round(3).tolist()
        [0.03, 0.04, 0.04]
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    q = p[ok]
    order = np.argsort(q, kind="stable")
    s = q[order]
    if method == "holm":
        adj = np.maximum.accumulate((m - np.arange(m)) * s)
    elif method == "bh":
        adj = np.minimum.accumulate(m / np.arange(m, 0, -1) * s[::-1])[::-1]
    else:
        raise ShiftlensError(f"unknown p-value adjustment {method!r}; use 'holm' or 'bh'")
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


# ============================================================================ sentences
def fmt_number(x: Any, spec: str = ".3g") -> str:
    """``x`` formatted with ``spec``; ``"n/a"`` for NaN/inf or non-numbers.

    Example:
        >>> fmt_number(0.123456), fmt_number(float("nan"))
        ('0.123', 'n/a')
    """
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    return format(xf, spec) if math.isfinite(xf) else "n/a"


def digits_for(a: float, b: float, fmt: str | None) -> str:
    """The format spec: ``fmt`` if given, else 3 decimals, more until ``a`` and ``b`` differ.

    Example:
        >>> digits_for(0.12341, 0.12349, None)
        '.4f'
    """
    if fmt:
        return fmt
    for d in range(3, 8):
        if format(a, f".{d}f") != format(b, f".{d}f") or a == b:
            return f".{d}f"
    return ".3e"


def test_label(test: str, alternative: str = "two-sided") -> str:
    """The name of a test as a sentence states it, sidedness included.

    Two-sided tests are the default everywhere; a one-sided test says which way it looks.

    Example:
        >>> test_label("Welch t-test"), test_label("paired t-test", "greater")
        ('two-sided Welch t-test', 'one-sided (tuned > base) paired t-test')
    """
    if alternative in ("two-sided", "two_sided", None):
        return f"two-sided {test}".strip()
    side = {"greater": "tuned > base", "less": "tuned < base"}.get(alternative, alternative)
    return f"one-sided ({side}) {test}".strip()


def change_sentence(
    what: str,
    base: float,
    tuned: float,
    *,
    p: float | None = None,
    test: str = "",
    alternative: str = "two-sided",
    ci: Sequence[float] | None = None,
    n: int | None = None,
    fmt: str | None = None,
    unit: str = "",
    alpha: float = 0.05,
) -> str:
    """"<What> rose significantly from X (base) to Y (tuned) (difference, 95% CI, test p, n)".

    The direction and the verdict are in the words: "rose significantly", "fell significantly",
    "rose, not significantly", "fell, not significantly", "did not change". ``test`` is named
    with its sidedness (:func:`test_label`); a one-sided test whose direction disagrees with the
    observed change says so instead of calling a clear change "not significant". Numbers get 3
    decimals, more when the two values would otherwise print the same.

    Example:
        >>> change_sentence("instruction score", 0.2, 0.5, p=0.001, test="paired t-test", n=12)
        'Instruction score rose significantly from 0.200 (base) to 0.500 (tuned) (difference +0.300, two-sided paired t-test p = 0.001, n = 12; significant at 0.05).'
        >>> change_sentence("score", 0.5, 0.4, p=0.3, test="Welch t-test")
        'Score fell, not significantly, from 0.500 (base) to 0.400 (tuned) (difference -0.100, two-sided Welch t-test p = 0.3; not significant at 0.05).'
    """
    b, t = float(base), float(tuned)
    finite = math.isfinite(b) and math.isfinite(t)
    fmt = digits_for(b, t, fmt) if finite else (fmt or ".3f")
    pv = float(p) if p is not None else float("nan")
    tested = p is not None and math.isfinite(pv)
    against = (alternative == "greater" and t < b) or (alternative == "less" and t > b)
    sig = tested and pv < alpha and not against
    if not finite:
        verb = "could not be compared:"
    elif t == b:
        verb = "did not change:"
    else:
        d = "rose" if t > b else "fell"
        verb = d if not tested or against else (
            f"{d} significantly" if sig else f"{d}, not significantly,")
    extra = [f"difference {t - b:+{fmt}}{unit}"] if finite else []
    if ci is not None and len(ci) == 2 and all(math.isfinite(float(c)) for c in ci):
        extra.append(f"95% CI [{float(ci[0]):{fmt}}, {float(ci[1]):{fmt}}]")
    if p is not None:
        name = test_label(test, alternative) if test else (
            "" if alternative == "two-sided" else test_label("test", alternative))
        extra.append(f"{name + ' ' if name else ''}p = {fmt_number(p, '.3g')}")
    if n is not None:
        extra.append(f"n = {n}")
    tail = ""
    if tested:
        if against:
            tail = (f"; the test looked for the opposite direction ({alternative}), so it cannot "
                    "call this change significant: use a two-sided test")
        else:
            tail = f"; {'significant' if sig else 'not significant'} at {alpha:g}"
    s = (f"{what[:1].upper()}{what[1:]} {verb} from {fmt_number(b, fmt)}{unit} (base) to "
         f"{fmt_number(t, fmt)}{unit} (tuned)")
    return s + (f" ({', '.join(extra)}{tail})." if extra else ".")
