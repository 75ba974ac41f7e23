"""Lens 2's figures, in the house style (:mod:`shiftlens.viz.style`).

* :func:`head_delta_figure` - layers x heads heatmap of the change of attention to the
  instruction (tuned - base; dots: Holm-adjusted p < alpha, with a legend), with the mean mass
  per prompt segment beside it;
* :func:`verb_shift_figure` - per layer group, the fraction of heads whose word-pair count with
  a verb rose, instruction verbs against general verbs (Wu et al. 2024, Table 3).

``Result.show(path)`` calls these through ``plot()``, names the models under the figure and
saves it; the report embeds them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from shiftlens.checks import check_choice, check_float
from shiftlens.prompts import SEGMENTS
from shiftlens.stats import test_label
from shiftlens.viz.style import BASE_COLOR, TUNED_COLOR, integer_ticks, new_figure

__all__ = ["head_delta_figure", "verb_shift_figure", "CORRECTIONS"]

#: The p-value column and name of each multiple-comparison correction the heatmap can mark.
CORRECTIONS = {"holm": ("p_holm", "Holm-adjusted"), "bh": ("p_bh", "BH-adjusted")}


def _tight(fig: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tight_layout with a colorbar axis
        fig.tight_layout()


def head_delta_figure(result: Any, *, alpha: float = 0.05, correction: str = "holm") -> Any:
    """The layers x heads heatmap of the change in attention to the instruction.

    Left: tuned - base mean mass on the instruction per layer and head (a difference of
    attention fractions; red = more after tuning); a dot marks each head whose adjusted
    p-value (``correction``: Holm by default, the method the summary sentence counts with) is
    below ``alpha``, explained by a legend under the map. Right: mean mass per key segment
    (over layers and heads) in base and in tuned; its legend sits in headroom above the bars.

    Args:
        result: An :class:`~shiftlens.lenses.attention.results.InstructionAttentionResult`.
        alpha: Marking threshold on the adjusted p-value.
        correction: ``"holm"`` (``p_holm``) or ``"bh"`` (``p_bh``).

    Returns:
        The matplotlib Figure (its first axes hold the heatmap).

    Raises:
        ShiftlensError: an unknown correction or a bad ``alpha``.

    Example:
        >>> fig = head_delta_figure(instruction_attention(pair, prompts))  # doctest: +SKIP
    """
    from matplotlib.lines import Line2D

    alpha = check_float("alpha", alpha, minimum=0, maximum=1, open_min=True)
    check_choice("correction", correction, tuple(CORRECTIONS))
    col, label = CORRECTIONS[correction]
    d = result.delta().cpu().numpy()
    n_l, n_h = d.shape
    fig, axes = new_figure(1, 2, width=max(7.0, 0.35 * n_h + 7.0),
                           height=max(3.6, 0.3 * n_l + 2.2),
                           gridspec_kw={"width_ratios": [max(2, n_h), 6]})
    ax, ax2 = axes[0, 0], axes[0, 1]
    v = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 1.0
    im = ax.imshow(d, aspect="auto", cmap="RdBu_r", vmin=-(v or 1.0), vmax=(v or 1.0),
                   origin="lower")
    t = result.tests
    sig = t[t[col] < alpha]
    rows = {layer: j for j, layer in enumerate(result.layers)}
    if len(sig):
        ax.scatter(sig["head"].to_numpy(), [rows[int(x)] for x in sig["layer"]], s=14, c="k",
                   edgecolors="w", linewidths=0.6, zorder=3)
    dot = Line2D([], [], ls="", marker="o", markersize=5, color="k", markeredgecolor="w",
                 label=f"{label} p < {alpha:g} ({len(sig)} of {len(t)} heads)")
    # under the x label: 4 font sizes (36 pt) below the axes clear tick labels and label
    ax.legend(handles=[dot], loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False,
              handletextpad=0.3, borderaxespad=4.0)
    ax.set_yticks(range(n_l), [str(x) for x in result.layers])
    integer_ticks(ax, "x")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    q = "response tokens" if result.query == "response" else "last prompt token"
    ax.set_title(f"instruction mass, tuned - base\n(queries: {q})")
    cb = fig.colorbar(im, ax=ax, fraction=0.05)
    cb.set_label("tuned - base (fraction of attention)")
    mb = result.mean_mass("base").mean((0, 1)).cpu().numpy()
    mt = result.mean_mass("tuned").mean((0, 1)).cpu().numpy()
    x = np.arange(len(SEGMENTS))
    ax2.bar(x - 0.2, mb, 0.4, color=BASE_COLOR, label="base")  # names: under the figure
    ax2.bar(x + 0.2, mt, 0.4, color=TUNED_COLOR, label="tuned")
    ax2.set_xticks(x, list(SEGMENTS), rotation=30)
    top = float(np.nanmax(np.r_[mb, mt, 0.0])) if np.isfinite(np.r_[mb, mt]).any() else 1.0
    ax2.set_ylim(0, (top or 1.0) * 1.4)  # headroom for the legend: it never covers a bar
    ax2.set_ylabel("mean attention mass")
    ax2.set_title("mass per key segment (all heads)")
    ax2.legend(loc="upper center", ncol=2, frameon=False)
    _tight(fig)
    return fig


def verb_shift_figure(result: Any) -> Any:
    """Bars per layer group: mean fraction of heads whose word pairs with a verb rose.

    Instruction verbs against general verbs (error bars: standard error over verbs), the Welch
    p-value above each group, and the no-change line at 0.5 (ties ignored).

    Args:
        result: A :class:`~shiftlens.lenses.attention.results.VerbShiftResult`.

    Returns:
        The matplotlib Figure (one axes).

    Example:
        >>> fig = verb_shift_figure(verb_shift(pair, vocab))  # doctest: +SKIP
    """
    t = result.tests
    x = np.arange(len(t))
    fig, axes = new_figure(1, 1, width=max(6.5, 1.3 * len(t) + 2), height=3.8)
    ax = axes[0, 0]
    for off, col, lab, color in ((-0.2, "instruction", "instruction verbs", TUNED_COLOR),
                                 (0.2, "general", "general verbs", BASE_COLOR)):
        sd = t[f"sd_{col}"].to_numpy(dtype=float)
        n = t[f"n_{col}"].to_numpy(dtype=float)
        err = np.where(n > 1, sd / np.sqrt(np.maximum(n, 1)), np.nan)
        ax.bar(x + off, t[f"mean_{col}"].to_numpy(dtype=float), 0.4, yerr=err, capsize=3,
               label=lab, color=color)
    for xi, p in zip(x, t["p"].to_numpy(dtype=float)):
        ax.text(xi, 1.03, f"p={p:.2g}" if np.isfinite(p) else "p n/a", ha="center",
                va="bottom")
    ax.axhline(0.5, color="0.5", ls="--", lw=0.8)
    ax.set_xticks(x, t["group"].tolist())
    ax.set_ylim(0, 1.38)  # headroom: p-values at 1.03, the legend above them
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("fraction of heads with more pairs")
    ax.legend(loc="upper center", ncol=2, frameon=False)
    alt = str(result.params.get("alternative", "two-sided"))
    ax.set_title("word pairs with verbs, tuned vs base (ties ignored)\n"
                 f"p: {test_label('Welch t-test', alt)}, instruction vs general verbs")
    _tight(fig)
    return fig
