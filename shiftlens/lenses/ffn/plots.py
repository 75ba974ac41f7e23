"""The figures of lens 3, drawn in the house style (:mod:`shiftlens.viz.style`).

* :func:`concept_shift_figure` - task and level shares over all layers, and the user-oriented
  share per layer group (``ConceptShiftResult.plot()``);
* :func:`concept_share_figure` - one panel per task (or level), base vs tuned per layer group,
  with Welch p-values (``ConceptShiftResult.plot(by_group=True)``; the report's figure);
* :func:`rotation_figure` - subspace overlap and retained variance per layer, and the principal
  angles (``RotationResult.plot()``; the report's figure).

The model names are written under each figure by ``Result.show`` (and the report).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from shiftlens.errors import ShiftlensError
from shiftlens.lenses.ffn.core import LEVELS, TASKS, USER_TASKS
from shiftlens.stats import fmt_number
from shiftlens.viz.style import BASE_COLOR, TUNED_COLOR, new_figure

__all__ = ["concept_shift_figure", "concept_share_figure", "rotation_figure"]

_ROLES = (("base", BASE_COLOR), ("tuned", TUNED_COLOR))
_GROUP_ORDER = ("lower", "middle", "upper")


def _tight(fig: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tight_layout on crowded panels
        fig.tight_layout()


def concept_shift_figure(result: Any) -> Any:
    """Task and linguistic-level shares (all layers) and the user-oriented share per layer group.

    Three panels: bars of the share of explainable concepts per task and per level, base vs
    tuned (error bars: std over annotator seeds; none for one seed), and the user-oriented
    share (any of writing, coding, math, translation) per layer group.

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
        for off, (role, color) in zip((-0.2, 0.2), _ROLES):
            m = [sub.loc[lab, f"{role}_mean"] for lab in labels]
            e = [np.nan_to_num(sub.loc[lab, f"{role}_std"]) for lab in labels]
            ax.bar(x + off, m, 0.4, yerr=e, label=role, color=color)
        ax.set_xticks(x, labels, rotation=20)
        ax.set_ylabel("share of explainable concepts")
        ax.set_title(f"{kind} (all layers)")
        ax.legend()
    ax = axes[0, 2]
    sub = st[(st["kind"] == "task") & (st["label"] == "user-oriented") & (st["group"] != "all")]
    sub = sub.set_index("group").reindex(groups)
    ax.plot(groups, sub["base_mean"], "s--", color=BASE_COLOR, label="base")
    ax.plot(groups, sub["tuned_mean"], "o-", color=TUNED_COLOR, label="tuned")
    ax.set_ylim(bottom=0)
    ax.set_title("user-oriented concepts by layer group")
    ax.set_xlabel("layer group")
    ax.set_ylabel("share of explainable concepts")
    ax.legend()
    fig.suptitle("W_out concepts per task and linguistic level, base vs tuned")
    _tight(fig)
    return fig


def _group_order(present: Sequence[str]) -> list[str]:
    order = [g for g in _GROUP_ORDER if g in present]
    order += [g for g in present if g not in order and g != "all"]
    return order + (["all"] if "all" in present else [])


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
    :meth:`~shiftlens.lenses.ffn.results.ConceptShiftResult.stats`.

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
    fig, axes = new_figure(1, len(labels), width=0.75 * len(order) * len(labels) + 0.8,
                           height=3.4, sharey=True)
    ymax = 0.0
    for ax, lab in zip(axes[0], labels):
        sub = st[st["label"] == lab].set_index("group").reindex(order)
        x = np.arange(len(order))
        for off, (role, color) in zip((-0.2, 0.2), _ROLES):
            m = 100 * sub[f"{role}_mean"].to_numpy(dtype=float)
            e = 100 * np.nan_to_num(sub[f"{role}_std"].to_numpy(dtype=float))
            ax.bar(x + off, m, 0.4, yerr=e if e.any() else None, capsize=2, color=color,
                   label=role)
            ymax = max(ymax, float(np.nanmax(np.append(m + e, 0.0))))
        # each group's Welch p under its name, where it never collides with a bar
        ps = [f"p={fmt_number(p, '.2g')}" for p in sub["p"].to_numpy(dtype=float)]
        ax.set_xticks(x, [f"{g}\n{p}" for g, p in zip(order, ps)])
        ax.set_title(lab)
        ax.set_xlabel("layer group (Welch p, tuned vs base)")
    axes[0, 0].set_ylabel("share of explainable concepts (%)")
    axes[0, 0].set_ylim(0, max(ymax * 1.15, 1.0))
    axes[0, -1].legend()
    fig.suptitle(f"W_out concepts per {kind}, base vs tuned")
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
