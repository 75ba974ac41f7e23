"""The activation difference lens's figures, in the house style (:mod:`shiftlens.viz.style`).

Each function takes a Result of this lens and returns a matplotlib Figure; the Results' ``plot``
methods call them and :meth:`shiftlens.result.Result.show` writes the model names under them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from shiftlens.checks import check_int
from shiftlens.tokens import display_token
from shiftlens.viz.style import BASE_COLOR, TUNED_COLOR, integer_ticks, new_figure

if TYPE_CHECKING:
    from shiftlens.lenses.activation_difference.results import (
        ActivationDifferenceResult,
        DiffMiningResult,
    )

__all__ = ["activation_difference_figure", "diff_mining_figure"]


def _bars(ax: Any, labels: list[str], values: np.ndarray, color: str, xlabel: str,
          notes: list[str] | None = None, err: tuple[np.ndarray, np.ndarray] | None = None
          ) -> None:
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color=color, alpha=0.85,
            xerr=None if err is None else np.vstack(err), ecolor="0.3", capsize=2)
    ax.set_yticks(y)
    ax.set_yticklabels(labels)
    ax.set_xlabel(xlabel)
    if notes:
        top = float(np.nanmax(values)) if len(values) else 1.0
        for yi, v, s in zip(y, values, notes):
            ax.text(v + 0.02 * top, yi, s, va="center", fontsize=9, color="0.25")
        ax.set_xlim(0, top * 1.35 if top > 0 else 1)


def activation_difference_figure(result: ActivationDifferenceResult, n: int = 15) -> Any:
    """Top tokens of the mean difference at the lens layer, and its size by layer.

    Left: the tuned model's logit lens of the position-averaged difference (bars: mean
    probability; the note: the share of bootstrap resamples keeping the token in the top
    ``top_k``). Middle: the tuned model's Patchscope. Right: ``|mean difference| / |h_base|`` by
    layer, one line per position read.

    Args:
        result: An :class:`~shiftlens.lenses.activation_difference.ActivationDifferenceResult`.
        n: Tokens per panel.

    Returns:
        A matplotlib Figure.

    Example:
        >>> fig = activation_difference_figure(res)  # doctest: +SKIP
    """
    n = check_int("n", n, minimum=1)
    fig, axes = new_figure(1, 3, width=11.5, height=max(3.4, 0.25 * n + 1.4))
    ll = result.ranking("logit_lens").head(n)
    notes = [("" if not np.isfinite(s) else f"{s:.0%}") for s in ll.stability]
    _bars(axes[0, 0], [display_token(t) for t in ll.token], ll.probability.to_numpy(),
          TUNED_COLOR, "mean probability", notes)
    axes[0, 0].set_title(f"logit lens, layer {result.lens_layer}\n(note: bootstrap stability)")
    ps = result.ranking("patchscope").head(n)
    _bars(axes[0, 1], [display_token(t) for t in ps.token], ps.probability.to_numpy(),
          TUNED_COLOR, "mean probability")
    axes[0, 1].set_title(f"Patchscope, layer {result.lens_layer}")
    ax = axes[0, 2]
    rel = result.relative_norm()
    for i, (pos, g) in enumerate(rel.groupby("position", sort=True)):
        ax.plot(g.layer, g.relative_norm, marker="o", ms=3, color=BASE_COLOR if i else
                TUNED_COLOR, alpha=0.5 + 0.5 * (i == 0), label=f"position {pos}" if i < 1 else
                None)
    ax.plot([], [], color=BASE_COLOR, label="later positions")
    ax.set_xlabel("layer")
    ax.set_ylabel("|mean difference| / |h_base|")
    ax.set_title("size of the difference")
    ax.legend(loc="best")
    integer_ticks(ax)
    fig.tight_layout()
    return fig


def diff_mining_figure(result: DiffMiningResult, n: int = 20) -> Any:
    """The tokens most often among the top-``k`` logit rises, with 95% bootstrap intervals.

    Args:
        result: A :class:`~shiftlens.lenses.activation_difference.DiffMiningResult`.
        n: Tokens shown.

    Returns:
        A matplotlib Figure.

    Example:
        >>> fig = diff_mining_figure(res)  # doctest: +SKIP
    """
    n = check_int("n", n, minimum=1)
    t = result.tokens.sort_values("rank").head(n)
    k = result.meta.get("params", {}).get("k", "k")
    fig, axes = new_figure(1, 1, width=6.0, height=max(3.0, 0.24 * len(t) + 1.2))
    rate = t.rate.to_numpy()
    err = None
    if np.isfinite(t.rate_low.to_numpy()).all():
        err = (np.clip(rate - t.rate_low.to_numpy(), 0, None),
               np.clip(t.rate_high.to_numpy() - rate, 0, None))
    _bars(axes[0, 0], [display_token(s) for s in t.token], rate, TUNED_COLOR,
          f"share of positions among the top {k} logit rises", err=err)
    axes[0, 0].set_title("diff mining: tokens whose logit rose most often")
    fig.tight_layout()
    return fig
