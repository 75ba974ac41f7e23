"""The amplification lens's figure, in the house style (:mod:`shiftlens.viz.style`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shiftlens.checks import check_int
from shiftlens.tokens import display_token
from shiftlens.viz.style import new_figure

if TYPE_CHECKING:
    from shiftlens.lenses.amplification.results import AmplificationResult

__all__ = ["amplification_figure"]


def amplification_figure(result: AmplificationResult, n: int = 10) -> Any:
    """How often the ``n`` most rising tokens occur in the responses at each amplification.

    Args:
        result: An :class:`~shiftlens.lenses.amplification.AmplificationResult`.
        n: Tokens drawn (one line each).

    Returns:
        A matplotlib Figure.

    Example:
        >>> fig = amplification_figure(res)  # doctest: +SKIP
    """
    n = check_int("n", n, minimum=1)
    al = result.alphas
    order = sorted(range(len(al)), key=lambda j: al[j])
    fig, axes = new_figure(1, 1, width=6.4, height=3.8)
    ax = axes[0, 0]
    top = [int(t) for t in result.top_tokens(min(n, result.counts.shape[1]))]
    for t in top:
        ax.plot([al[j] for j in order], [float(result.counts[j, t]) for j in order], marker="o",
                ms=3, label=display_token(result.token_text.get(t, f"#{t}")))
    ax.set_xlabel("amplification a (0 = base, 1 = tuned)")
    ax.set_ylabel("occurrences in the responses")
    ax.set_title("tokens that rise with the amplified difference")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig
