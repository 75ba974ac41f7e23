"""Static figures (matplotlib, PNG and SVG) and helpers to save or embed them.

Figures a lens already draws are reused (its Result's ``.show()``), labelled with the model
names (:func:`lens_figure`); the figures no lens draws are built here from the Results' frames:
:func:`instruction_score_figure` (instruction score base vs tuned per category) and
:func:`concept_share_figure` (concept shares per layer group).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from shiftlens.errors import ShiftlensError
from shiftlens.stats import bootstrap_ci, paired_test, welch_test
from shiftlens.viz.style import (  # noqa: F401 - the one implementation, re-exported
    BASE_COLOR,
    FORMATS,
    TUNED_COLOR,
    figure_html,
    label_models,
    pyplot,
    save_figure,
)

__all__ = [
    "pyplot",
    "save_figure",
    "figure_html",
    "label_models",
    "lens_figure",
    "instruction_score_figure",
    "head_delta_figure",
    "concept_share_figure",
    "rotation_figure",
    "similarity_figure",
    "FORMATS",
]


def _names_of(result: Any) -> dict[str, str] | None:
    for attr in ("model_names",):
        v = getattr(result, attr, None)
        if isinstance(v, Mapping):
            return dict(v)
    meta = getattr(result, "meta", None)
    if isinstance(meta, Mapping):
        for key in ("model_names", "models"):
            v = meta.get(key)
            if isinstance(v, Mapping):
                return dict(v)
    return None


def lens_figure(result: Any, *args: Any, names: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
    """A Result's own figure (``result.show(...)``), labelled with the model names.

    Args:
        result: Any lens Result with ``.show()``.
        *args, **kwargs: Passed to ``show``.
        names: Model names (default: read from the result).

    Raises:
        ShiftlensError: the object has no ``show``.

    Example:
        >>> fig = lens_figure(res)  # doctest: +SKIP
    """
    show = getattr(result, "show", None)
    if not callable(show):
        raise ShiftlensError(f"{type(result).__name__} has no show() method to draw")
    fig = show(*args, **kwargs)
    return label_models(fig, names or _names_of(result))


def _fill_labels(fig: Any, colorbar: str | None = None, ylabel: str | None = None) -> Any:
    """Label a reused figure's unlabeled colorbars / y axes (never overwrite a label)."""
    changed = False
    for ax in fig.axes:
        is_cbar = getattr(ax, "_colorbar", None) is not None
        if is_cbar and colorbar and not ax.get_ylabel():
            ax.set_ylabel(colorbar, fontsize=8)
            changed = True
        elif not is_cbar and ylabel and not ax.get_ylabel():
            ax.set_ylabel(ylabel, fontsize=9)
            changed = True
    if changed:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # tight_layout on odd layouts
            fig.tight_layout()
    return fig


def head_delta_figure(result: Any) -> Any:
    """The layers x heads heatmap of the change in attention to the instruction.

    Reuses :meth:`shiftlens.attention.InstructionAttentionResult.show` (tuned - base mass,
    BH-significant heads dotted), labels its colorbar (the unit: a difference of attention
    fractions) and adds the model names.

    Example:
        >>> fig = head_delta_figure(instruction_attention(pair, prompts))  # doctest: +SKIP
    """
    return _fill_labels(lens_figure(result),
                        colorbar="tuned - base (fraction of attention)")


def rotation_figure(result: Any) -> Any:
    """W_out subspace overlap and principal angles per layer (:class:`shiftlens.ffn.Rotation`).

    Reuses :meth:`shiftlens.ffn.Rotation.show`, labels what it leaves unlabeled (overlap axis:
    mean cos^2 of the principal angles, 0-1; colorbar: degrees) and adds the model names.

    Example:
        >>> fig = rotation_figure(rotation(pair))  # doctest: +SKIP
    """
    return _fill_labels(lens_figure(result), colorbar="principal angle (degrees)",
                        ylabel="overlap / variance share (0-1)")


def similarity_figure(result: Any, metric: str = "cosine") -> Any:
    """Residual-stream similarity of base and tuned per layer and segment.

    Reuses :meth:`shiftlens.residual.SimilarityResult.show` (``metric``: ``"cosine"``,
    ``"cka"`` or ``"both"``).

    Example:
        >>> fig = similarity_figure(similarity(pair, prompts))  # doctest: +SKIP
    """
    return lens_figure(result, metric=metric)


# ----------------------------------------------------------------------------- instruction score
def _score_long(frame: pd.DataFrame, score: str) -> pd.DataFrame:
    df = frame.copy()
    if "category" not in df.columns:
        df["category"] = "all prompts"
    df["category"] = df["category"].fillna("(none)").astype(str)
    if {"base", "tuned"} <= set(df.columns):
        id_col = "prompt_id" if "prompt_id" in df.columns else None
        if id_col is None:
            df = df.reset_index().rename(columns={"index": "prompt_id"})
        long = df.melt(id_vars=["prompt_id", "category"], value_vars=["base", "tuned"],
                       var_name="role", value_name="score")
        return long
    role_col = next((c for c in ("role", "model") if c in df.columns), None)
    if role_col is None or score not in df.columns:
        raise ShiftlensError(
            "instruction_score_figure: expected columns base/tuned, or role (or model) and "
            f"{score!r}; got {list(df.columns)}"
        )
    if not set(df[role_col].unique()) <= {"base", "tuned"}:
        raise ShiftlensError(
            f"instruction_score_figure: column {role_col!r} must hold 'base'/'tuned', got "
            f"{sorted(map(str, df[role_col].unique()))[:4]}"
        )
    out = df.rename(columns={role_col: "role", score: "score"})
    if "prompt_id" not in out.columns:
        out["prompt_id"] = np.arange(len(out))
    return out[["prompt_id", "category", "role", "score"]]


def _compare(long: pd.DataFrame) -> Any:
    piv = long.pivot_table(index="prompt_id", columns="role", values="score", aggfunc="mean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if {"base", "tuned"} <= set(piv.columns) and piv.dropna().shape[0] >= 2:
            return paired_test(piv["tuned"].to_numpy(), piv["base"].to_numpy())
        t = long[long.role == "tuned"]["score"].to_numpy()
        b = long[long.role == "base"]["score"].to_numpy()
        return welch_test(t, b)


def instruction_score_figure(
    frame: Any,
    model_names: Mapping[str, str] | None = None,
    *,
    score: str = "score",
    title: str = "Instruction score, base vs tuned",
) -> Any:
    """Instruction score base vs tuned per category (Wu et al. 2024, §3).

    Given a :class:`shiftlens.attribution.SensitivityResult`, its own figure is reused
    (:meth:`~shiftlens.attribution.SensitivityResult.show`: mean per category with every
    prompt as a dot), labelled with the model names. Given a frame (your own scores), the
    figure is built here: mean per category with 95% bootstrap CIs, and per category the
    p-value of a paired t-test across prompts (Welch's test when prompts cannot be paired);
    the last group pools all prompts.

    The instruction score sums the importance density of the instruction tokens (divided by
    log2(2 + number of instruction tokens)); higher means the response rests more on the
    instruction.

    Args:
        frame: A SensitivityResult, or a frame with one row per prompt and ``base`` and
            ``tuned`` (or ``base_score``/``tuned_score``) columns (wide), or one row per prompt
            and model with ``role`` (or ``model``) in {"base", "tuned"} and ``score`` (long);
            optional ``category`` and ``prompt_id`` (or ``id``).
        model_names: ``{"base": ..., "tuned": ...}`` for the legend.
        score: The score column of a long frame.
        title: Axes title.

    Returns:
        The matplotlib figure.

    Raises:
        ShiftlensError: the frame has neither layout, or no finite score.

    Example:
        >>> df = pd.DataFrame({"category": ["a", "a", "b", "b"], "base": [0.2, 0.3, 0.1, 0.2],
        ...                    "tuned": [0.5, 0.6, 0.3, 0.5]})
        >>> fig = instruction_score_figure(df)
        >>> len(fig.axes[0].patches)  # 3 groups (a, b, all) x 2 models
        6
    """
    if not isinstance(frame, pd.DataFrame):
        return lens_figure(frame, names=model_names)
    frame = frame.rename(columns={"base_score": "base", "tuned_score": "tuned"})
    if "prompt_id" not in frame.columns and "id" in frame.columns:
        frame = frame.rename(columns={"id": "prompt_id"})
    long = _score_long(frame, score)
    long = long[np.isfinite(long["score"].astype(float))]
    if long.empty:
        raise ShiftlensError("instruction_score_figure: no finite instruction scores")
    cats = sorted(long["category"].unique())
    groups = cats + (["all"] if len(cats) > 1 else [])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) + 2.5), 3.8))
    x = np.arange(len(groups))
    names = model_names or {}
    top = 0.0
    for off, role, color in ((-0.2, "base", BASE_COLOR), (0.2, "tuned", TUNED_COLOR)):
        means, lo, hi = [], [], []
        for g in groups:
            v = long[(long.role == role) & ((long.category == g) if g != "all" else True)]["score"]
            v = v.to_numpy(dtype=float)
            m = float(v.mean()) if v.size else float("nan")
            a, b = bootstrap_ci(v) if v.size >= 2 else (m, m)
            means.append(m)
            lo.append(m - a if np.isfinite(a) else 0.0)
            hi.append(b - m if np.isfinite(b) else 0.0)
            top = max(top, np.nanmax([m + hi[-1], 0.0]))
        label = role + (f": {names[role]}" if names.get(role) else "")
        ax.bar(x + off, means, 0.4, yerr=[lo, hi], capsize=3, color=color, label=label[:60])
    for xi, g in zip(x, groups):
        sub = long if g == "all" else long[long.category == g]
        r = _compare(sub)
        n = sub["prompt_id"].nunique()
        txt = f"p={r.pvalue:.2g}" if np.isfinite(r.pvalue) else "p=n/a"
        ax.text(xi, top * 1.04 + 1e-9, f"{txt}\nn={n}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, groups, rotation=20 if len(groups) > 4 else 0)
    ax.set_ylim(0, top * 1.25 + 1e-9)
    ax.set_xlabel("prompt category")
    ax.set_ylabel("instruction score (importance density)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return label_models(fig, model_names)


# ----------------------------------------------------------------------------- concept shares
def concept_share_figure(
    result: Any,
    *,
    labels: Sequence[str] | None = None,
    kind: str = "task",
) -> Any:
    """Share of explainable W_out concepts per task, base vs tuned, per layer group.

    One panel per label (default: the four user-oriented tasks of Wu et al. 2024, §5, and
    "user-oriented" = any of them); x = layer group (lower/middle/upper, then all layers).
    Error bars: std over annotator seeds (none for one seed); p: Welch's t-test from
    :meth:`shiftlens.ffn.ConceptShift.stats`.

    Args:
        result: A :class:`shiftlens.ffn.ConceptShift`, or its ``stats()`` frame.
        labels: Task (or level) labels to plot.
        kind: ``"task"`` or ``"level"`` (linguistic levels: phonology ... semantics).

    Returns:
        The matplotlib figure.

    Raises:
        ShiftlensError: no rows for ``kind`` / ``labels``.

    Example:
        >>> fig = concept_share_figure(concept_shift(pair, k=8))  # doctest: +SKIP
    """
    st = result if isinstance(result, pd.DataFrame) else result.stats()
    names = None if isinstance(result, pd.DataFrame) else _names_of(result)
    st = st[st["kind"] == kind]
    if labels is None:
        labels = (["writing", "coding", "math", "translation", "user-oriented"] if kind == "task"
                  else ["phonology", "morphology", "syntax", "semantics"])
    labels = [lab for lab in labels if lab in set(st["label"])]
    if st.empty or not labels:
        raise ShiftlensError(f"concept_share_figure: no {kind} shares to plot")
    present = list(dict.fromkeys(st["group"]))
    order = [g for g in ("lower", "middle", "upper") if g in present]
    order += [g for g in present if g not in order and g != "all"] + (["all"] if "all" in present else [])
    plt = pyplot()
    fig, axes = plt.subplots(1, len(labels), figsize=(2.6 * len(labels) + 0.6, 3.4), sharey=True,
                             squeeze=False)
    ymax = 0.0
    for ax, lab in zip(axes[0], labels):
        sub = st[st["label"] == lab].set_index("group").reindex(order)
        x = np.arange(len(order))
        for off, role, color in ((-0.2, "base", BASE_COLOR), (0.2, "tuned", TUNED_COLOR)):
            m = 100 * sub[f"{role}_mean"].to_numpy(dtype=float)
            e = 100 * np.nan_to_num(sub[f"{role}_std"].to_numpy(dtype=float))
            ax.bar(x + off, m, 0.4, yerr=e, capsize=2, color=color, label=role)
            ymax = max(ymax, float(np.nanmax(np.append(m + e, 0.0))))
        for xi, p in zip(x, sub["p"].to_numpy(dtype=float)):
            if np.isfinite(p):
                ax.text(xi, 0, f"p={p:.2g}", ha="center", va="bottom", fontsize=6, rotation=90,
                        color="0.2")
        ax.set_xticks(x, order, rotation=30, fontsize=8)
        ax.set_title(lab, fontsize=9)
        ax.set_xlabel("layer group", fontsize=8)
    axes[0][0].set_ylabel("share of explainable concepts (%)")
    axes[0][0].set_ylim(0, max(ymax * 1.15, 1.0))
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"W_out concepts per {kind}, base vs tuned", fontsize=10)
    fig.tight_layout()
    return label_models(fig, names)
