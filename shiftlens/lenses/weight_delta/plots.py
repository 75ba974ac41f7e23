"""The weight-delta lens's figure, in the house style (:mod:`shiftlens.viz.style`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from shiftlens.checks import check_int
from shiftlens.tokens import display_token
from shiftlens.viz.style import TUNED_COLOR, new_figure

if TYPE_CHECKING:
    from shiftlens.lenses.weight_delta.results import WeightDeltaResult

__all__ = ["weight_delta_figure"]


def weight_delta_figure(result: WeightDeltaResult, n: int = 15) -> Any:
    """Left: ``|Delta W| / |W_base|`` per layer (rows) and block matrix (columns), with the
    effective rank in each cell. Right: the top ``n`` tokens of the ``"directions"`` ranking.

    Args:
        result: A :class:`~shiftlens.lenses.weight_delta.WeightDeltaResult`.
        n: Tokens shown.

    Returns:
        A matplotlib Figure.

    Example:
        >>> fig = weight_delta_figure(res)  # doctest: +SKIP
    """
    n = check_int("n", n, minimum=1)
    m = result.matrices
    blocks = m[m.layer >= 0]
    mats = list(dict.fromkeys(blocks.matrix))
    layers = sorted(set(blocks.layer))
    grid = np.full((len(layers), len(mats)), np.nan)
    ranks = np.full_like(grid, np.nan)
    for r in blocks.itertuples():
        grid[layers.index(r.layer), mats.index(r.matrix)] = r.relative_norm
        ranks[layers.index(r.layer), mats.index(r.matrix)] = r.effective_rank
    h = max(3.4, 0.32 * max(len(layers), n * 0.8) + 1.6)
    fig, axes = new_figure(1, 2, width=11.0, height=h, gridspec_kw=dict(width_ratios=[1.6, 1]))
    ax = axes[0, 0]
    if len(layers) and len(mats):
        im = ax.imshow(grid, aspect="auto", cmap="viridis")
        cb = fig.colorbar(im, ax=ax, fraction=0.05)
        cb.set_label("|ΔW| / |W_base|")
        if grid.size <= 120:
            for i in range(grid.shape[0]):
                for j in range(grid.shape[1]):
                    if np.isfinite(ranks[i, j]):
                        ax.text(j, i, f"{ranks[i, j]:.0f}", ha="center", va="center",
                                fontsize=9, color="white" if grid[i, j] < np.nanmean(grid)
                                else "black")
        ax.set_xticks(range(len(mats)))
        ax.set_xticklabels([s.split(".")[-1] for s in mats], rotation=45, ha="right")
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels([str(v) for v in layers])
    ax.set_ylabel("layer")
    ax.set_title("relative change (cell text: effective rank)")
    ax2 = axes[0, 1]
    try:
        tf = result.token_frame("directions", n)
        y = np.arange(len(tf))[::-1]
        ax2.barh(y, tf.score.to_numpy(), color=TUNED_COLOR, alpha=0.85)
        ax2.set_yticks(y)
        ax2.set_yticklabels([display_token(t) for t in tf.token])
    except Exception:  # noqa: BLE001 - a figure without the token panel is still a figure
        ax2.text(0.5, 0.5, "no block-matrix directions", ha="center", va="center")
    ax2.set_xlabel("energy-weighted z-score")
    ax2.set_title("tokens of the leading directions")
    fig.tight_layout()
    return fig
