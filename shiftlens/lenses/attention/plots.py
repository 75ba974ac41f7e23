"""Lens 2's figures, in the house style (:mod:`shiftlens.viz.style`).

* :func:`head_delta_figure` - layers x heads heatmap of the change of attention to the
  instruction (tuned - base), with the mean mass per prompt segment beside it;
* :func:`verb_shift_figure` - per layer group, the fraction of heads whose word-pair count with
  a verb rose, instruction verbs against general verbs (Wu et al. 2024, Table 3).

``Result.show(path)`` calls these through ``plot()``, names the models under the figure and
saves it; the report embeds them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from shiftlens.prompts import SEGMENTS
from shiftlens.viz.style import BASE_COLOR, TUNED_COLOR, integer_ticks, new_figure

__all__ = ["head_delta_figure", "verb_shift_figure"]


def _tight(fig: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tight_layout with a colorbar axis
        fig.tight_layout()


def head_delta_figure(result: Any, *, alpha: float = 0.05) -> Any:
    """The layers x heads heatmap of the change in attention to the instruction.

    Left: tuned - base mean mass on the instruction per layer and head (a difference of
    attention fractions; red = more after tuning), heads whose BH-adjusted p-value is below
    ``alpha`` marked with a dot. Right: mean mass per key segment (over layers and heads) in
    base and in tuned.

    Args:
        result: An :class:`~shiftlens.lenses.attention.results.InstructionAttentionResult`.
        alpha: Marking threshold on ``p_bh``.

    Returns:
        The matplotlib Figure (its first axes hold the heatmap).

    Example:
        >>> fig = head_delta_figure(instruction_attention(pair, prompts))  # doctest: +SKIP
    """
    d = result.delta().cpu().numpy()
    n_l, n_h = d.shape
    fig, axes = new_figure(1, 2, width=max(6.0, 0.35 * n_h + 6.5),
                           height=max(3.0, 0.3 * n_l + 1.5),
                           gridspec_kw={"width_ratios": [max(2, n_h), 6]})
    ax, ax2 = axes[0, 0], axes[0, 1]
    v = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 1.0
    im = ax.imshow(d, aspect="auto", cmap="RdBu_r", vmin=-(v or 1.0), vmax=(v or 1.0),
                   origin="lower")
    sig = result.tests[result.tests.p_bh < alpha]
    rows = {layer: j for j, layer in enumerate(result.layers)}
    if len(sig):
        ax.scatter(sig["head"].to_numpy(), [rows[int(x)] for x in sig["layer"]], s=8, c="k")
    ax.set_yticks(range(n_l), [str(x) for x in result.layers])
    integer_ticks(ax, "x")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    q = "response tokens" if result.query == "response" else "last prompt token"
    ax.set_title(f"instruction mass, tuned - base\n(queries: {q}; dots: BH p < {alpha:g})")
    cb = fig.colorbar(im, ax=ax, fraction=0.05)
    cb.set_label("tuned - base (fraction of attention)")
    mb = result.mean_mass("base").mean((0, 1)).cpu().numpy()
    mt = result.mean_mass("tuned").mean((0, 1)).cpu().numpy()
    x = np.arange(len(SEGMENTS))
    ax2.bar(x - 0.2, mb, 0.4, color=BASE_COLOR, label="base")  # names: under the figure
    ax2.bar(x + 0.2, mt, 0.4, color=TUNED_COLOR, label="tuned")
    ax2.set_xticks(x, list(SEGMENTS), rotation=30)
    ax2.set_ylabel("mean attention mass")
    ax2.set_title("mass per key segment (all heads)")
    ax2.legend(loc="upper left")
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
    fig, axes = new_figure(1, 1, width=max(4.0, 1.3 * len(t) + 2), height=3.5)
    ax = axes[0, 0]
    for off, col, lab, color in ((-0.2, "instruction", "instruction verbs", TUNED_COLOR),
                                 (0.2, "general", "general verbs", BASE_COLOR)):
        sd = t[f"sd_{col}"].to_numpy(dtype=float)
        n = t[f"n_{col}"].to_numpy(dtype=float)
        err = np.where(n > 1, sd / np.sqrt(np.maximum(n, 1)), np.nan)
        ax.bar(x + off, t[f"mean_{col}"].to_numpy(dtype=float), 0.4, yerr=err, capsize=3,
               label=lab, color=color)
    for xi, p in zip(x, t["p"].to_numpy(dtype=float)):
        if np.isfinite(p):
            ax.text(xi, 1.02, f"p={p:.2g}", ha="center")
    ax.axhline(0.5, color="0.5", ls="--", lw=0.8)
    ax.set_xticks(x, t["group"].tolist())
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("fraction of heads with more pairs")
    ax.legend(loc="lower right")
    ax.set_title("word pairs with verbs, tuned vs base (ties ignored)")
    _tight(fig)
    return fig
