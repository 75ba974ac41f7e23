"""The figures of lens 3, drawn in the house style (:mod:`shiftlens.viz.style`).

* :func:`concept_shift_figure` - task and level shares over all layers, and the user-oriented
  share per layer group (``ConceptShiftResult.plot()``);
* :func:`concept_share_figure` - one panel per task (or level), base vs tuned per layer group,
  with the Welch p-values above the bars (``ConceptShiftResult.plot(by_group=True)``; the
  report's figure);
* :func:`rotation_figure` - subspace overlap and retained variance per layer, and the principal
  angles (``RotationResult.plot()``; the report's figure).

The model names are written under each figure by ``Result.show`` (and the report). No panel is
left empty without a note: a panel with nothing to draw says why inside it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from shiftlens.errors import ShiftlensError
from shiftlens.lenses.ffn.core import LEVELS, TASKS, USER_TASKS
from shiftlens.stats import fmt_number, test_label
from shiftlens.viz.style import BASE_COLOR, MIN_FONT_PT, TUNED_COLOR, new_figure

__all__ = ["concept_shift_figure", "concept_share_figure", "rotation_figure"]

_ROLES = (("base", BASE_COLOR), ("tuned", TUNED_COLOR))
_GROUP_ORDER = ("lower", "middle", "upper")


def _tight(fig: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tight_layout on crowded panels
        fig.tight_layout()


def _note(ax: Any, text: str) -> None:
    """Say inside an empty panel why it is empty."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            fontsize=MIN_FONT_PT + 1, color="0.3", wrap=True)


def _test_words(st: pd.DataFrame) -> str:
    """The test behind the p-values of a stats frame, in words (sidedness and unit)."""
    alt = str(st["alternative"].iloc[0]) if "alternative" in st and len(st) else "two-sided"
    unit = str(st["unit"].iloc[0]) if "unit" in st and len(st) else "components"
    return f"{test_label('Welch t-test', alt)} across {unit}, tuned vs base"


def concept_shift_figure(result: Any) -> Any:
    """Task and linguistic-level shares (all layers) and the user-oriented share per layer group.

    Three panels: bars of the share of explainable concepts per task and per level, base vs
    tuned (error bars: std over annotator seeds; none for one seed), and the user-oriented
    share (any of writing, coding, math, translation) per layer group. A panel with nothing to
    draw (no explainable concept, so no share) says so inside.

    Args:
        result: A :class:`~shiftlens.lenses.ffn.results.ConceptShiftResult`.

    Returns:
        The matplotlib Figure.

    Example:
        >>> fig = concept_shift_figure(concept_shift(pair, k=8))  # doctest: +SKIP
    """
    st = result.stats()
    groups = [g for g in result.groups() if g != "all"]
    fig, axes = new_figure(1, 3, width=14.0, height=3.8)
    for ax, kind, labels in ((axes[0, 0], "task", TASKS), (axes[0, 1], "level", LEVELS)):
        sub = st[(st["group"] == "all") & (st["kind"] == kind)].set_index("label")
        x = np.arange(len(labels))
        drawn = False
        for off, (role, color) in zip((-0.2, 0.2), _ROLES):
            m = np.array([sub.loc[lab, f"{role}_mean"] for lab in labels], dtype=float)
            e = [np.nan_to_num(sub.loc[lab, f"{role}_std"]) for lab in labels]
            ax.bar(x + off, np.nan_to_num(m), 0.4, yerr=e, label=role, color=color)
            drawn |= bool(np.isfinite(m).any())
        ax.set_xticks(x, labels, rotation=20)
        ax.set_ylabel("share of explainable concepts")
        ax.set_title(f"{kind} (all layers)")
        if drawn:
            ax.legend()
        else:
            ax.set_ylim(0, 1)
            _note(ax, "no share: neither model has\nan explainable concept")
    ax = axes[0, 2]
    sub = st[(st["kind"] == "task") & (st["label"] == "user-oriented") & (st["group"] != "all")]
    sub = sub.set_index("group").reindex(groups)
    ax.plot(groups, sub["base_mean"], "s--", color=BASE_COLOR, label="base")
    ax.plot(groups, sub["tuned_mean"], "o-", color=TUNED_COLOR, label="tuned")
    ax.set_ylim(bottom=0)
    ax.set_title("user-oriented concepts by layer group")
    ax.set_xlabel("layer group")
    ax.set_ylabel("share of explainable concepts")
    missing = [f"{role} {g}" for role in ("base", "tuned") for g in groups
               if not np.isfinite(float(sub.loc[g, f"{role}_mean"]))]
    if len(missing) == 2 * len(groups):
        ax.set_ylim(0, 1)
        _note(ax, "no share: neither model has\nan explainable concept")
    else:
        ax.legend()
        if missing:
            ax.set_xlabel("layer group (no point: no explainable concept in "
                          + ", ".join(missing) + ")")
    fig.suptitle("W_out concepts per task and linguistic level, base vs tuned")
    _tight(fig)
    return fig


def _group_order(present: Sequence[str]) -> list[str]:
    order = [g for g in _GROUP_ORDER if g in present]
    order += [g for g in present if g not in order and g != "all"]
    return order + (["all"] if "all" in present else [])


def _empty_reason(means: np.ndarray, label: str) -> str | None:
    """Why a panel draws no bar (None when it draws one): no share, or a share of zero."""
    if not np.isfinite(means).any():
        return "no share: neither model has\nan explainable concept"
    if np.nansum(np.abs(means)) == 0:
        if np.isfinite(means).all():
            return f"no concept labelled\n'{label}'\nin either model"
        return (f"no concept labelled\n'{label}'\n(no share where a model\nhas no explainable "
                "concept)")
    return None


def concept_share_figure(
    result: Any,
    *,
    labels: Sequence[str] | None = None,
    kind: str = "task",
) -> Any:
    """Share of explainable W_out concepts per task, base vs tuned, per layer group.

    One panel per label (default: the four user-oriented tasks of Wu et al. 2024, §5, and
    "user-oriented" = any of them); x = layer group (lower/middle/upper, then all layers).
    Error bars: std over annotator seeds (none for one seed). Above each group's bars, written
    horizontally: the Welch t-test's p (sidedness and unit in the subtitle), "no test" where
    both shares are constant (e.g. 0% in both models), "no share" where a model has no
    explainable concept there. A panel without any bar says why inside it (no concept with
    that label in either model, or no explainable concept at all).

    Args:
        result: A :class:`~shiftlens.lenses.ffn.results.ConceptShiftResult`, or its
            ``stats()`` frame.
        labels: Task (or level) labels to plot.
        kind: ``"task"`` or ``"level"`` (linguistic levels: phonology ... semantics).

    Returns:
        The matplotlib Figure.

    Raises:
        ShiftlensError: no rows for ``kind`` / ``labels``.

    Example:
        >>> fig = concept_share_figure(concept_shift(pair, k=8))  # doctest: +SKIP
    """
    st = result if isinstance(result, pd.DataFrame) else result.stats()
    st = st[st["kind"] == kind]
    if labels is None:
        labels = [*USER_TASKS, "user-oriented"] if kind == "task" else list(LEVELS)
    labels = [lab for lab in labels if lab in set(st["label"])]
    if st.empty or not labels:
        raise ShiftlensError(f"concept_share_figure: no {kind} shares to plot")
    order = _group_order(list(dict.fromkeys(st["group"])))
    fig, axes = new_figure(1, len(labels), width=max(0.8 * len(order) * len(labels) + 1.0, 6.5),
                           height=3.9, sharey=True)
    tops = []
    for ax, lab in zip(axes[0], labels):
        sub = st[st["label"] == lab].set_index("group").reindex(order)
        x = np.arange(len(order))
        means = np.stack([sub[f"{r}_mean"].to_numpy(dtype=float) for r, _ in _ROLES])
        reason = _empty_reason(means, lab)
        top = np.zeros(len(order))
        for off, (role, color), m in zip((-0.2, 0.2), _ROLES, 100 * means):
            e = 100 * np.nan_to_num(sub[f"{role}_std"].to_numpy(dtype=float))
            if reason is None:
                ax.bar(x + off, np.nan_to_num(m), 0.4, yerr=e if e.any() else None, capsize=2,
                       color=color, label=role)
            top = np.fmax(top, np.nan_to_num(m) + e)
        tops.append((ax, sub, top, reason))
        ax.set_xlim(-0.6, len(order) - 0.4)
        ax.set_xticks(x, order)
        ax.set_title(lab)
        ax.set_xlabel("layer group")
    ymax = max([float(t.max()) for _, _, t, _ in tops] + [1.0])
    for ax, sub, top, reason in tops:
        if reason is not None:
            _note(ax, reason)
            continue
        for i, g in enumerate(order):  # each group's p above its bars, horizontal
            pv = float(sub.loc[g, "p"]) if "p" in sub else float("nan")
            defined = np.isfinite([sub.loc[g, "base_mean"], sub.loc[g, "tuned_mean"]]).all()
            text = (f"p={fmt_number(pv, '.2g')}" if np.isfinite(pv)
                    else "no test" if defined else "no share")
            ax.annotate(text, (i, top[i]), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=MIN_FONT_PT)
    axes[0, 0].set_ylabel("share of explainable concepts (%)")
    drawn = [ax for ax, _, _, reason in tops if reason is None]
    if drawn:
        drawn[0].legend(loc="upper left", ncol=2)
        axes[0, 0].set_ylim(0, ymax * 1.55)  # room for the p-values and the legend
        axes[0, 0].set_yticks([t for t in axes[0, 0].get_yticks() if 0 <= t <= 100])
    else:
        axes[0, 0].set_ylim(0, 100)
    fig.suptitle(f"W_out concepts per {kind}, base vs tuned\n"
                 f"(above the bars: p of the {_test_words(st)})")
    _tight(fig)
    return fig


def rotation_figure(result: Any) -> Any:
    """W_out subspace overlap and principal angles per layer, base vs tuned.

    Left: overlap (mean cos^2 of the principal angles; 1 = unchanged) and the share of the
    tuned variance the base top-k components keep, per layer, with the chance overlap
    ``k / d_model``. Right: every principal angle per layer (degrees).

    Args:
        result: A :class:`~shiftlens.lenses.ffn.results.RotationResult`.

    Returns:
        The matplotlib Figure.

    Example:
        >>> fig = rotation_figure(rotation(pair, k=8))  # doctest: +SKIP
    """
    df = result.layers
    layers = df["layer"].tolist()
    fig, axes = new_figure(1, 2, width=11.0, height=3.6)
    ax = axes[0, 0]
    ax.plot(df["layer"], df["overlap"], "o-", color=TUNED_COLOR, label="overlap (mean cos$^2$)")
    ax.plot(df["layer"], df["var_retained"], "s--", color="tab:orange",
            label="tuned variance kept by base PCs")
    ax.axhline(result.chance_overlap, color=BASE_COLOR, ls=":", label="chance overlap k/d")
    ax.set_xlabel("layer")
    ax.set_xticks(layers)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("overlap / variance share (0-1)")
    ax.legend()
    ax.set_title(f"W_out top-{result.k} subspace: base vs tuned")
    ax = axes[0, 1]
    ang = np.degrees(result.angles.float().cpu().numpy())
    im = ax.imshow(ang.T, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=90,
                   extent=(-0.5, len(layers) - 0.5, 0.5, ang.shape[1] + 0.5))
    ax.set_xlabel("layer")
    ax.set_xticks(range(len(layers)), [str(v) for v in layers])  # one column per compared layer
    ax.set_ylabel("principal angle #")
    ax.set_title("principal angles (deg)")
    fig.colorbar(im, ax=ax).set_label("principal angle (degrees)")
    _tight(fig)
    return fig
