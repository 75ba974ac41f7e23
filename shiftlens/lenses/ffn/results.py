"""The Result classes of lens 3: concept shares base vs tuned, and the rotation of W_out.

Both are :class:`shiftlens.result.Result` subclasses: saved and loaded by field type (JSON +
Parquet + safetensors, atomic and verified), checked on load by :meth:`validate`, drawn by
:meth:`plot` (:mod:`shiftlens.lenses.ffn.plots`). The lens parameters are in
``meta["params"]`` (also the read-only property ``params``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from shiftlens.checks import check_choice
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.ffn.core import LEVELS, TASKS, USER_TASKS
from shiftlens.result import Result
from shiftlens.stats import bootstrap_ci, change_sentence, fmt_number, test_label, welch_test

__all__ = ["ConceptShiftResult", "RotationResult", "ConceptShift", "Rotation"]

#: Columns of :attr:`ConceptShiftResult.annotations`, in order.
ANNOTATION_COLUMNS: tuple[str, ...] = (
    "model", "layer", "group", "component", "explained_variance_ratio", "seed", "task",
    "task_confidence", "level", "level_confidence", "explainable", "description", "words",
    "scores",
)
#: Columns of :attr:`RotationResult.layers`, in order.
LAYER_COLUMNS: tuple[str, ...] = (
    "layer", "group", "k", "overlap", "mean_angle_deg", "max_angle_deg", "grassmann",
    "tuned_var_by_base", "tuned_var_by_tuned", "var_retained", "base_var_by_base",
    "base_var_by_tuned",
)
#: Columns of :attr:`RotationResult.moved`, in order.
MOVED_COLUMNS: tuple[str, ...] = (
    "layer", "side", "component", "explained_variance_ratio", "inside_other", "best_match",
    "best_cos", "words_before", "scores_before", "words_after", "scores_after",
)
#: Columns of :meth:`ConceptShiftResult.exclusions`, in order.
EXCLUSION_COLUMNS: tuple[str, ...] = ("model", "seed", "group", "n_components", "reason")
#: The alternatives of the share tests (``concept_shift(alternative=...)``).
ALTERNATIVES: tuple[str, ...] = ("two-sided", "greater", "less")
_STAT_COLUMNS = ("base_mean", "base_std", "tuned_mean", "tuned_std", "diff", "t", "p", "df",
                 "ci_low", "ci_high", "n_base", "n_tuned", "unit", "undefined_base",
                 "undefined_tuned", "alternative")
_NO_EXPLAINABLE = "no explainable component"


def _require_columns(df: pd.DataFrame, cols: tuple[str, ...], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ShiftlensError(f"{what} lacks the columns {missing}")


def _params(meta: Any) -> dict[str, Any]:
    p = meta.get("params") if isinstance(meta, dict) else None
    return dict(p) if isinstance(p, dict) else {}


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample std of finite values (NaN where undefined: none, or one for the std)."""
    mean = float(np.mean(values)) if len(values) else float("nan")
    std = float(np.std(values, ddof=1)) if len(values) >= 2 else float("nan")
    return mean, std


def _pct(x: float) -> str:
    return fmt_number(x, ".1%")


# ============================================================================ concept shift
@dataclass(eq=False, repr=False)
class ConceptShiftResult(Result):
    """Shares of concepts per task and per linguistic level, base vs tuned (Wu et al. §5).

    Attributes:
        annotations: One row per (model, layer, component, seed): ``model`` (base/tuned),
            ``layer``, ``group`` (lower/middle/upper), ``component``,
            ``explained_variance_ratio``, ``seed``, ``task``, ``task_confidence``, ``level``
            (None when unexplainable), ``level_confidence``, ``explainable``,
            ``description``, ``words`` and ``scores`` (``|``-separated, most aligned first).
        meta: Models, seed (the annotator's first seed: the bootstrap's), ``params`` (layers,
            k, top_words, annotator, annotator_repr, seeds, vocab_size, method, device),
            versions, and n_layers, processing, tasks, levels.

    Shares are taken over *explainable* concepts (the paper drops "Cannot Tell" concepts),
    per seed; with several seeds they are reported as mean and spread (std) over seeds and
    the tuned-vs-base Welch t-test runs across seeds (as the paper's t-test over its five
    ChatGPT runs). With one seed (a deterministic annotator) the test runs across concepts
    (0/1 indicators), which treats components as independent samples. Tests are two-sided
    unless ``concept_shift(alternative=...)`` asked otherwise (``params["alternative"]``).

    Nothing is dropped silently: a (model, seed, layer group) without any explainable concept
    has no share; it is listed by :meth:`exclusions`, counted in ``stats()``
    (``undefined_base`` / ``undefined_tuned``: seeds left out of that row) and named in the
    summary's sentence and the report.

    Example:
        >>> res = concept_shift(pair, layers=[0, 1], k=8)  # doctest: +SKIP
        >>> res.summary()["sentence"]  # doctest: +SKIP
    """

    annotations: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        """The lens parameters (``meta["params"]``), read-only copy.

        Example:
            >>> res.params["annotator"]  # doctest: +SKIP
            'lexicon'
        """
        return _params(self.meta)

    # -- invariants
    def validate(self) -> None:
        """Refuse inconsistent fields: columns, labels, one row per (model, layer, component,
        seed), ``len(models) x len(layers) x k x len(seeds)`` rows when ``params`` says so, and
        an unknown test alternative.

        Example:
            >>> res.validate()  # doctest: +SKIP
        """
        df = self.annotations
        if not isinstance(df, pd.DataFrame):
            raise ShiftlensError(f"ConceptShiftResult.annotations must be a DataFrame, got "
                                 f"{type(df).__name__}")
        _require_columns(df, ANNOTATION_COLUMNS, "ConceptShiftResult.annotations")
        if not len(df):
            raise ShiftlensError("ConceptShiftResult.annotations is empty")
        bad = sorted(set(df["model"]) - {"base", "tuned"})
        if bad:
            raise ShiftlensError(f"ConceptShiftResult: unknown model roles {bad}")
        bad = sorted(set(df["task"]) - set(TASKS))
        if bad:
            raise ShiftlensError(f"ConceptShiftResult: unknown task labels {bad}")
        ex = df["explainable"].astype(bool)
        bad = sorted(set(df.loc[ex, "level"]) - set(LEVELS), key=str)
        if bad:
            raise ShiftlensError(f"ConceptShiftResult: explainable concepts with levels {bad}")
        if df.duplicated(["model", "layer", "component", "seed"]).any():
            raise ShiftlensError("ConceptShiftResult: a (model, layer, component, seed) occurs "
                                 "twice")
        p = self.params
        if p.get("alternative", "two-sided") not in ALTERNATIVES:
            raise ShiftlensError(f"ConceptShiftResult: params alternative "
                                 f"{p.get('alternative')!r} is not one of {ALTERNATIVES}")
        if {"layers", "k", "seeds"} <= set(p):
            want = 2 * len(p["layers"]) * int(p["k"]) * len(p["seeds"])
            if len(df) != want:
                raise ShiftlensError(
                    f"ConceptShiftResult: {len(df)} annotations, but 2 models x "
                    f"{len(p['layers'])} layers x k={p['k']} x {len(p['seeds'])} seeds = {want}")
            extra = sorted(set(df["layer"].astype(int)) - set(p["layers"]))
            if extra:
                raise ShiftlensError(f"ConceptShiftResult: layers {extra} are not in params")

    # -- frames
    def to_frame(self) -> pd.DataFrame:
        """One row per (model, layer, component, seed).

        Example:
            >>> res.to_frame().columns[:4].tolist()  # doctest: +SKIP
            ['model', 'layer', 'group', 'component']
        """
        return self.annotations.copy()

    def groups(self) -> list[str]:
        """``"all"``, then the layer groups present (in order of appearance).

        Example:
            >>> res.groups()  # doctest: +SKIP
            ['all', 'lower', 'middle', 'upper']
        """
        return ["all", *dict.fromkeys(self.annotations["group"].tolist())]

    @staticmethod
    def _indicators(df: pd.DataFrame, kind: str, label: str) -> pd.Series:
        col = "task" if kind == "task" else "level"
        if label == "user-oriented":
            return df[col].isin(USER_TASKS).astype(float)
        return (df[col] == label).astype(float)

    @staticmethod
    def _labels(kind: str) -> tuple[str, ...]:
        return (*TASKS, "user-oriented") if kind == "task" else LEVELS

    def shares(self) -> pd.DataFrame:
        """Share of explainable concepts per (model, seed, group, kind, label).

        ``group`` is "all" or a layer group (lower/middle/upper); ``kind`` is "task" (labels:
        the tasks and "user-oriented" = any of the four) or "level"; plus kind "explainable"
        (share of all concepts that were explainable).

        Example:
            >>> res.shares().query("kind == 'task' and group == 'all'")  # doctest: +SKIP
        """
        df = self.annotations
        rows = []
        for group in self.groups():
            g = df if group == "all" else df[df["group"] == group]
            for (model, seed), sub in g.groupby(["model", "seed"], sort=True):
                ex = sub[sub["explainable"]]
                rows.append(dict(model=model, seed=int(seed), group=group, kind="explainable",
                                 label="explainable", share=float(sub["explainable"].mean()),
                                 n=len(sub)))
                for kind in ("task", "level"):
                    for label in self._labels(kind):
                        share = (float(self._indicators(ex, kind, label).mean()) if len(ex)
                                 else float("nan"))
                        rows.append(dict(model=model, seed=int(seed), group=group, kind=kind,
                                         label=label, share=share, n=len(ex)))
        return pd.DataFrame(rows)

    def _samples(self, group: str, kind: str, label: str) -> tuple[np.ndarray, np.ndarray]:
        """The per-concept 0/1 samples (tuned, base) of one label (one-seed test unit)."""
        df = self.annotations
        g = df if group == "all" else df[df["group"] == group]
        if kind == "explainable":
            return (g[g["model"] == "tuned"]["explainable"].astype(float).to_numpy(),
                    g[g["model"] == "base"]["explainable"].astype(float).to_numpy())
        ex = g[g["explainable"]]
        return (self._indicators(ex[ex["model"] == "tuned"], kind, label).to_numpy(),
                self._indicators(ex[ex["model"] == "base"], kind, label).to_numpy())

    @property
    def alternative(self) -> str:
        """The share tests' alternative (``params["alternative"]``; two-sided when absent).

        Example:
            >>> res.alternative  # doctest: +SKIP
            'two-sided'
        """
        return str(self.params.get("alternative") or "two-sided")

    def exclusions(self) -> pd.DataFrame:
        """The (model, seed, layer group) cells without any explainable concept: their shares
        are undefined, so they are left out of :meth:`stats` (and said so in the summary).

        Columns: ``model``, ``seed``, ``group`` ("all" or a layer group), ``n_components``
        (concepts annotated there, all unexplainable) and ``reason``.

        Example:
            >>> res.exclusions()  # doctest: +SKIP
            Empty DataFrame ...
        """
        df = self.annotations
        rows = []
        for group in self.groups():
            g = df if group == "all" else df[df["group"] == group]
            for (model, seed), sub in g.groupby(["model", "seed"], sort=True):
                if not sub["explainable"].astype(bool).any():
                    rows.append(dict(model=model, seed=int(seed), group=group,
                                     n_components=len(sub), reason=_NO_EXPLAINABLE))
        return pd.DataFrame(rows, columns=list(EXCLUSION_COLUMNS))

    def stats(self, alternative: str | None = None) -> pd.DataFrame:
        """Per (group, kind, label): base and tuned mean/std over seeds, diff, Welch test.

        With two or more seeds the test's unit is the seed (per-seed shares); with one it is
        the component (0/1 indicators). A seed whose share is undefined (no explainable concept
        in that model and group, see :meth:`exclusions`) is left out of its row and counted in
        ``undefined_base`` / ``undefined_tuned``; ``n_base`` / ``n_tuned`` are the units used.

        Args:
            alternative: ``"two-sided"``, ``"greater"`` (tuned > base) or ``"less"`` (default:
                :attr:`alternative`, the one ``concept_shift`` was asked for).

        Example:
            >>> res.stats().query("group == 'all' and label == 'coding'")  # doctest: +SKIP
        """
        alt = check_choice("alternative", alternative or self.alternative, ALTERNATIVES,
                           who="ConceptShiftResult.stats")
        sh = self.shares()
        several = self.annotations["seed"].nunique() >= 2
        rows = []
        for (group, kind, label), sub in sh.groupby(["group", "kind", "label"], sort=False):
            b = sub[sub["model"] == "base"].sort_values("seed")["share"].to_numpy(dtype=float)
            t = sub[sub["model"] == "tuned"].sort_values("seed")["share"].to_numpy(dtype=float)
            b_ok, t_ok = b[np.isfinite(b)], t[np.isfinite(t)]
            a_s, b_s = (t_ok, b_ok) if several else self._samples(group, kind, label)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # constant samples: t is NaN
                test = welch_test(a_s, b_s, alternative=alt,
                                  seed=int(self.meta.get("seed") or 0))
            (bm, bsd), (tm, tsd) = _mean_std(b_ok), _mean_std(t_ok)
            rows.append(dict(
                group=group, kind=kind, label=label, base_mean=bm, base_std=bsd,
                tuned_mean=tm, tuned_std=tsd, diff=tm - bm, t=test.statistic, p=test.pvalue,
                df=test.df, ci_low=test.ci_low, ci_high=test.ci_high, n_base=test.n_b,
                n_tuned=test.n_a, unit="seeds" if several else "components",
                undefined_base=int(len(b) - len(b_ok)), undefined_tuned=int(len(t) - len(t_ok)),
                alternative=alt,
            ))
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: task and level shares base -> tuned (overall and per layer group),
        the exclusions, and a sentence stating the direction, the test and what was left out.

        Example:
            >>> res.summary()["task"]["user-oriented"]["diff"]  # doctest: +SKIP
        """
        st = self.stats()
        p = self.params
        ex = self.exclusions()
        out: dict[str, Any] = {"models": self.meta.get("models"), "annotator": p.get("annotator"),
                               "seeds": p.get("seeds"), "k": p.get("k"),
                               "layers": p.get("layers"), "alternative": self.alternative}
        for kind in ("task", "level", "explainable"):
            sub = st[(st["group"] == "all") & (st["kind"] == kind)]
            out[kind] = {r["label"]: {c: r[c] for c in _STAT_COLUMNS} for _, r in sub.iterrows()}
        out["by_group"] = {
            g: {r["label"]: {"base": r["base_mean"], "tuned": r["tuned_mean"], "diff": r["diff"],
                             "p": r["p"]} for _, r in sub.iterrows()}
            for g, sub in st[st["group"] != "all"].groupby("group", sort=False)
        }
        out["excluded"] = ex.to_dict("records")
        out["n_excluded"] = len(ex)
        out["headline"] = self._headline(out)
        out["excluded_sentence"] = self._exclusion_sentence(ex)
        out["sentence"] = " ".join(x for x in (out["headline"], self._details(out),
                                               out["excluded_sentence"]) if x)
        return out

    def _headline(self, s: dict[str, Any]) -> str:
        """The user-oriented share base -> tuned in words, with its test (or why none)."""
        uo = s["task"].get("user-oriented") or {}
        what = ("the share of user-oriented concepts (writing, coding, math, translation) among "
                "the explainable W_out principal components")
        bm, tm = float(uo.get("base_mean", np.nan)), float(uo.get("tuned_mean", np.nan))
        if not (np.isfinite(bm) and np.isfinite(tm)):
            missing = [r for r, v in (("base", bm), ("tuned", tm)) if not np.isfinite(v)]
            return (f"{what[:1].upper()}{what[1:]} could not be compared: the "
                    f"{' and the '.join(missing)} model{'s have' if len(missing) > 1 else ' has'}"
                    " no explainable component (every concept 'cannot tell').")
        unit = uo.get("unit", "components")
        pv = float(uo.get("p", np.nan))
        if not np.isfinite(pv):  # constant samples (e.g. 0% in both): a t-test is undefined
            return (change_sentence(what, bm, tm, fmt=".1%")
                    + f" No test: the share does not vary across {unit} in either model.")
        return change_sentence(what, bm, tm, p=pv, test=f"Welch t-test across {unit}",
                               alternative=self.alternative,
                               ci=(uo.get("ci_low", np.nan), uo.get("ci_high", np.nan)),
                               fmt=".1%")

    @staticmethod
    def _details(s: dict[str, Any]) -> str:
        """The largest task and level changes, and how many concepts were explainable."""
        parts = []
        for kind, labels in (("task", USER_TASKS), ("level", LEVELS)):
            rows = {k: v for k, v in s[kind].items() if k in labels
                    and np.isfinite(float(v["diff"]))}
            name = "task" if kind == "task" else "linguistic-level"
            if not rows:
                parts.append(f"no {name} share could be compared")
                continue
            top = max(rows, key=lambda k: abs(float(rows[k]["diff"])))
            v = rows[top]
            if float(v["diff"]) == 0:
                parts.append(f"no {name} share changed")
            else:
                parts.append(f"largest {name} change: {top} {_pct(v['base_mean'])} -> "
                             f"{_pct(v['tuned_mean'])} ({test_label('Welch t-test', v['alternative'])}"
                             f" p = {fmt_number(v['p'])})")
        e = s["explainable"].get("explainable") or {}
        seeds = s.get("seeds") or [0]
        over = f", mean over {len(seeds)} seeds" if len(seeds) > 1 else ""
        parts.append(f"explainable: {_pct(e.get('base_mean'))} of base and "
                     f"{_pct(e.get('tuned_mean'))} of tuned components{over}")
        return "; ".join(parts)[:1].upper() + "; ".join(parts)[1:] + "."

    @staticmethod
    def _exclusion_sentence(ex: pd.DataFrame) -> str:
        if not len(ex):
            return ""
        cells = [f"{r.model} seed {r.seed} in {'all layers' if r.group == 'all' else f'the {r.group} layers'}"
                 f" ({r.n_components} concepts)" for r in ex.itertuples()]
        shown = "; ".join(cells[:6]) + (f"; and {len(cells) - 6} more" if len(cells) > 6 else "")
        return (f"Left out, {len(ex)} (model, seed, layer group) cell"
                f"{'s' if len(ex) > 1 else ''} without any explainable concept (no share there): "
                f"{shown}.")

    def plot(self, *, by_group: bool = False, kind: str = "task",
             labels: Any = None) -> Any:
        """Bar charts of the shares, base vs tuned (error bars: std over seeds).

        Args:
            by_group: False: task and level shares over all layers and the user-oriented
                share per layer group (three panels); True: one panel per label, x = layer
                group, with Welch p-values (:func:`~shiftlens.lenses.ffn.plots.concept_share_figure`).
            kind: With ``by_group``: ``"task"`` or ``"level"``.
            labels: With ``by_group``: the labels to draw.

        Example:
            >>> fig = res.plot(by_group=True)  # doctest: +SKIP
        """
        from shiftlens.lenses.ffn import plots

        if by_group:
            return plots.concept_share_figure(self, labels=labels, kind=kind)
        return plots.concept_shift_figure(self)

    def _repr_info(self) -> str:
        p = self.params
        return (f"annotator={p.get('annotator')!r}, k={p.get('k')}, layers={p.get('layers')}, "
                f"seeds={len(p.get('seeds') or ())}, annotations=<{len(self.annotations)} rows>")


# ============================================================================ rotation
@dataclass(eq=False, repr=False)
class RotationResult(Result):
    """How far tuning rotated each layer's W_out principal subspace.

    Attributes:
        layers: One row per layer: ``overlap`` (mean cos^2 of the principal angles between
            the base and tuned top-k subspaces: 1 = same subspace, ``k/d_model`` = chance for
            random subspaces), ``mean_angle_deg``, ``max_angle_deg``, ``grassmann``
            (sqrt of the sum of squared angles, radians), ``tuned_var_by_base`` (share of the
            tuned W_out variance inside the base top-k subspace), ``tuned_var_by_tuned`` (its
            upper bound, the tuned top-k's own share), ``var_retained`` (their ratio),
            ``base_var_by_base``, ``base_var_by_tuned``.
        moved: The components that moved most, per layer and side: ``side="tuned"`` rows are
            tuned components least inside the base subspace (new directions), with their words
            (``words_after``) and the best-matching base component's words
            (``words_before``, sign aligned); ``side="base"`` rows are base components least
            inside the tuned subspace (lost directions).
        angles: ``[n_layers, k]`` principal angles (radians, ascending), one row per row of
            ``layers``.
        meta: Models, seed (solver and bootstrap), ``params`` (layers, k, top_words, n_moved,
            method, vocab_size, device), versions, and n_layers, d_model, chance_overlap,
            processing.

    Example:
        >>> rot = rotation(pair, k=8)  # doctest: +SKIP
        >>> rot.summary()["most_rotated_layer"]  # doctest: +SKIP
    """

    layers: pd.DataFrame
    moved: pd.DataFrame
    angles: Float[Tensor, "n_layers k"]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        """The lens parameters (``meta["params"]``), read-only copy.

        Example:
            >>> rot.params["k"]  # doctest: +SKIP
            32
        """
        return _params(self.meta)

    @property
    def k(self) -> int:
        """The subspace dimension.

        Example:
            >>> rot.k  # doctest: +SKIP
            32
        """
        return int(self.angles.shape[1])

    @property
    def chance_overlap(self) -> float:
        """``k / d_model``: the expected overlap of two random k-dimensional subspaces.

        Example:
            >>> rot.chance_overlap  # doctest: +SKIP
            0.25
        """
        return float(self.meta.get("chance_overlap", float("nan")))

    def validate(self) -> None:
        """Refuse inconsistent fields: one angle row per layer row, ``k`` angles in
        [0, pi/2], the layers of ``params``, moved rows only of those layers, finite numbers.

        Example:
            >>> rot.validate()  # doctest: +SKIP
        """
        if not isinstance(self.layers, pd.DataFrame) or not isinstance(self.moved, pd.DataFrame):
            raise ShiftlensError("RotationResult.layers and .moved must be DataFrames")
        if not isinstance(self.angles, Tensor) or self.angles.dim() != 2:
            raise ShiftlensError("RotationResult.angles must be a [n_layers, k] tensor")
        _require_columns(self.layers, LAYER_COLUMNS, "RotationResult.layers")
        _require_columns(self.moved, MOVED_COLUMNS, "RotationResult.moved")
        n = len(self.layers)
        if n == 0 or self.angles.shape[0] != n:
            raise ShiftlensError(f"RotationResult: {self.angles.shape[0]} rows of angles for "
                                 f"{n} layers")
        if (self.layers["k"].astype(int) != self.k).any():
            raise ShiftlensError(f"RotationResult: layers say k={sorted(set(self.layers['k']))}, "
                                 f"angles have {self.k} columns")
        a = self.angles.double()
        if not bool(torch.isfinite(a).all()) or bool((a < -1e-6).any()) \
                or bool((a > math.pi / 2 + 1e-6).any()):
            raise ShiftlensError("RotationResult: principal angles outside [0, pi/2]")
        layers = self.layers["layer"].astype(int).tolist()
        want = self.params.get("layers")
        if want is not None and list(want) != layers:
            raise ShiftlensError(f"RotationResult: layer rows {layers} but params say {want}")
        stray = sorted(set(self.moved["layer"].astype(int)) - set(layers)) if len(self.moved) \
            else []
        if stray:
            raise ShiftlensError(f"RotationResult: moved components of layers {stray} that "
                                 "were not compared")
        bad = sorted(set(self.moved["side"]) - {"base", "tuned"}) if len(self.moved) else []
        if bad:
            raise ShiftlensError(f"RotationResult: unknown sides {bad} in moved")
        num = [c for c in LAYER_COLUMNS if c not in ("layer", "group", "k")]
        vals = self.layers[num].to_numpy(dtype=float)
        if not np.isfinite(vals).all():
            r, c = np.argwhere(~np.isfinite(vals))[0]
            raise ShiftlensError(f"RotationResult: non-finite {num[c]} in layer "
                                 f"{self.layers['layer'].iloc[r]}")

    def to_frame(self) -> pd.DataFrame:
        """One row per layer.

        Example:
            >>> rotation(pair, k=8).to_frame()[["layer", "overlap"]]  # doctest: +SKIP
        """
        return self.layers.copy()

    def summary(self) -> dict[str, Any]:
        """Most rotated layer, overlap overall and per layer group (bootstrap CI over layers).

        Example:
            >>> rot.summary()["sentence"]  # doctest: +SKIP
        """
        df = self.layers
        seed = int(self.meta.get("seed") or 0)
        worst = df.loc[df["overlap"].idxmin()]
        chance = self.chance_overlap
        by_group = {}
        for g, sub in df.groupby("group", sort=False):
            lo, hi = bootstrap_ci(sub["overlap"].to_numpy(), seed=seed)
            by_group[g] = {"overlap": float(sub["overlap"].mean()), "ci_low": lo, "ci_high": hi,
                           "var_retained": float(sub["var_retained"].mean()),
                           "n_layers": len(sub)}
        lo, hi = bootstrap_ci(df["overlap"].to_numpy(), seed=seed)
        out = {
            "models": self.meta.get("models"), "k": self.params.get("k"),
            "chance_overlap": chance,
            "mean_overlap": float(df["overlap"].mean()), "overlap_ci": (lo, hi),
            "min_overlap": float(worst["overlap"]),
            "most_rotated_layer": int(worst["layer"]),
            "most_rotated_mean_angle_deg": float(worst["mean_angle_deg"]),
            "mean_var_retained": float(df["var_retained"].mean()),
            "by_group": by_group,
        }
        unchanged = bool((self.angles.double().abs() < 1e-6).all())
        ci = (f"95% CI over {len(df)} layers [{lo:.3f}, {hi:.3f}]" if np.isfinite([lo, hi]).all()
              else f"no CI over {len(df)} layer{'s' if len(df) != 1 else ''}")
        out["sentence"] = (
            f"{'Tuning did not rotate' if unchanged else 'Tuning rotated'} the top-{out['k']} "
            f"W_out principal subspaces: mean overlap {out['mean_overlap']:.3f} ({ci}; 1 = "
            f"unchanged, chance {chance:.3f}); most rotated layer {out['most_rotated_layer']} "
            f"(overlap {out['min_overlap']:.3f}, mean angle "
            f"{out['most_rotated_mean_angle_deg']:.1f} deg); base components explain "
            f"{out['mean_var_retained']:.1%} of the variance tuned components explain."
        )
        return out

    def plot(self) -> Any:
        """Overlap and retained variance per layer (with the chance overlap), and the principal
        angles per layer (:func:`~shiftlens.lenses.ffn.plots.rotation_figure`).

        Example:
            >>> fig = rot.plot()  # doctest: +SKIP
        """
        from shiftlens.lenses.ffn import plots

        return plots.rotation_figure(self)

    def _repr_info(self) -> str:
        return f"k={self.k}, layers={self.layers['layer'].tolist()}, moved=<{len(self.moved)} rows>"


#: The names before issue 13 (``shiftlens.ffn.ConceptShift`` / ``Rotation``).
ConceptShift = ConceptShiftResult
Rotation = RotationResult
ConceptShiftResult.register_alias("ConceptShift")
RotationResult.register_alias("Rotation")
