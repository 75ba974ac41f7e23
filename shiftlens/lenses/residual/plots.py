"""The residual lens's figures, drawn in the house style (:mod:`shiftlens.viz.style`).

Each function takes a Result of this lens and returns a matplotlib Figure; the Results' ``plot``
methods call them, and :meth:`shiftlens.result.Result.show` writes the model names under them
and saves them. The report uses ``res.show(metric="cosine")`` for similarity (what
``shiftlens.viz.similarity_figure`` drew) and ``res.show()`` for the other two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shiftlens.checks import check_int
from shiftlens.errors import ShiftlensError
from shiftlens.tokens import display_token
from shiftlens.viz.style import MIN_FONT_PT, integer_ticks, new_figure

if TYPE_CHECKING:
    from shiftlens.lenses.residual.results import (
        OutputShiftResult,
        PatchingResult,
        SimilarityResult,
    )

__all__ = ["similarity_figure", "output_shift_figure", "patching_figure"]

_METRICS = ("cosine", "cka", "both")
_MAX_COLS = 3


def _segments_in(present: Any) -> list[str]:
    from shiftlens.lenses.residual.core import RESULT_SEGMENTS

    have = set(present)
    return [s for s in RESULT_SEGMENTS if s in have]


def similarity_figure(result: SimilarityResult, metric: str = "both") -> Any:
    """Residual similarity against depth, one panel per segment in a grid at most 3 across.

    Depth ``l`` is ``resid_pre`` of layer ``l``, ``l + 0.5`` its ``resid_mid`` and ``l + 1``
    its ``resid_post``; the band is the bootstrap 95% CI over prompts. With ``metric="both"``
    each panel holds two lines, cosine (solid) and linear CKA (dashed), on one shared y axis;
    panels share both axes, so segments compare at a glance. Six segments make a 2 x 3 grid (four
    a 2 x 2 one) of readable panels, about 3.6 x 2.9 inches each, instead of one strip.

    Args:
        result: A :class:`~shiftlens.lenses.residual.results.SimilarityResult`.
        metric: ``"cosine"``, ``"cka"`` or ``"both"``.

    Returns:
        A matplotlib Figure.

    Example:
        >>> fig = similarity_figure(similarity(pair, prompts), metric="cosine")  # doctest: +SKIP
    """
    if metric not in _METRICS:
        raise ShiftlensError(f"metric must be 'cosine', 'cka' or 'both', got {metric!r}")
    t = result.to_frame(aggregate=True)
    segs = _segments_in(t.segment[t.n_cosine > 0]) or ["all"]
    metrics = ["cosine", "cka"] if metric == "both" else [metric]
    ncols = 2 if len(segs) == 4 else min(_MAX_COLS, len(segs))
    nrows = -(-len(segs) // ncols)
    fig, axes = new_figure(nrows, ncols, width=3.6 * ncols + 0.4, height=2.9 * nrows + 0.5,
                           sharex=True, sharey=True)
    styles = {"cosine": dict(color="C0", ls="-"), "cka": dict(color="C1", ls="--")}
    legend_ax = None
    for k, s in enumerate(segs):
        ax = axes[k // ncols][k % ncols]
        g = t[t.segment == s].sort_values("depth")
        drawn = []
        for m in metrics:
            if not g[m].notna().any():
                continue
            ax.plot(g.depth, g[m], marker="o", ms=3, label="cosine" if m == "cosine" else
                    "linear CKA", **styles[m])
            ax.fill_between(g.depth, g[f"{m}_low"], g[f"{m}_high"], alpha=0.2,
                            color=styles[m]["color"])
            drawn.append(m)
        missing = [m for m in metrics if m not in drawn]
        title = s
        if missing:  # said in the title, where it cannot cover a line
            title += " (CKA undefined)" if missing == ["cka"] else " (undefined)"
        ax.set_title(title)
        if len(drawn) > 1 and legend_ax is None:
            legend_ax = ax
        ax.grid(alpha=0.3)
        if k + ncols >= len(segs):  # the lowest panel of its column
            ax.set_xlabel("depth (layer; .5 = resid_mid)")
            ax.tick_params(labelbottom=True)
        if k % ncols == 0:
            ax.set_ylabel("base vs tuned" if metric == "both" else f"{metric}, base vs tuned")
    for k in range(len(segs), nrows * ncols):  # empty cells of the grid
        fig.delaxes(axes[k // ncols][k % ncols])
    if legend_ax is not None:  # once, in the first panel that shows both metrics
        legend_ax.legend(loc="best")
    fig.suptitle("Residual-stream similarity of base and tuned on identical tokens")
    fig.tight_layout()
    return fig


def output_shift_figure(result: OutputShiftResult, n_tokens: int = 15) -> Any:
    """KL(tuned || base) against layer per segment, and the tokens the tuned model favours.

    Left: the logit-lens KL after each layer's ``resid_post``, the real output as the last
    point (``layer == n_layers``), bootstrap 95% CI bands (log scale when every value is
    positive). Right: the ``n_tokens`` tokens most often among a position's top KL
    contributors.

    Args:
        result: An :class:`~shiftlens.lenses.residual.results.OutputShiftResult`.
        n_tokens: Tokens in the right panel.

    Returns:
        A matplotlib Figure.

    Example:
        >>> fig = output_shift_figure(output_shift(pair, prompts), n_tokens=10)  # doctest: +SKIP
    """
    n_tokens = check_int("n_tokens", n_tokens, minimum=1)
    t = result.to_frame(aggregate=True)
    fig, axes = new_figure(1, 2, width=11.0, height=3.8)
    ax = axes[0][0]
    for seg in _segments_in(t.segment):
        g = t[t.segment == seg].sort_values("layer")
        ax.plot(g.layer, g.kl, marker="o", ms=3, label=seg)
        ax.fill_between(g.layer, g.kl_low, g.kl_high, alpha=0.15)
    ax.set_xlabel(f"layer (logit lens of resid_post; {result.meta.get('n_layers')} = output)")
    ax.set_ylabel("KL(tuned || base), nats/token")
    if len(t) and bool((t.kl > 0).all()):
        ax.set_yscale("log")
    integer_ticks(ax)
    ax.legend()
    ax.grid(alpha=0.3)
    ax2 = axes[0][1]
    top = result.top_tokens.head(n_tokens).iloc[::-1]
    ys = list(range(len(top)))  # positions, not labels: two tokens may display alike
    ax2.barh(ys, top["count"])
    ax2.set_yticks(ys, [repr(display_token(s)) for s in top.token])
    ax2.set_xlabel("positions where the token is a top KL contributor")
    ax2.set_title("tokens favoured by the tuned model")
    fig.tight_layout()
    return fig


def patching_figure(result: PatchingResult) -> Any:
    """Recovered fraction of the gap against layer, a line per component, a panel per direction.

    Lines at 0 (the run model's own score) and 1 (the source model's); bands are the bootstrap
    95% CIs over prompts.

    Args:
        result: A :class:`~shiftlens.lenses.residual.results.PatchingResult`.

    Returns:
        A matplotlib Figure.

    Example:
        >>> fig = patching_figure(patching(pair, prompts))  # doctest: +SKIP
    """
    t = result.to_frame(aggregate=True)
    params = result.meta["params"]
    dirs = list(params["directions"])
    fig, axes = new_figure(1, len(dirs), width=5.0 * len(dirs), height=3.6)
    for i, d in enumerate(dirs):
        ax = axes[0][i]
        for comp in params["components"]:
            g = t[(t.direction == d) & (t.component == comp)].sort_values("layer")
            ax.plot(g.layer, g.recovery, marker="o", ms=3, label=comp)
            ax.fill_between(g.layer, g.recovery_low, g.recovery_high, alpha=0.15)
        ax.axhline(0, color="k", lw=0.5)
        ax.axhline(1, color="k", lw=0.5, ls="--")
        integer_ticks(ax)
        run, src = ("base", "tuned") if d == "tuned->base" else ("tuned", "base")
        ax.set_title(f"{run} run, {src} activations patched in")
        ax.set_xlabel("layer")
        ax.set_ylabel("fraction of gap recovered")
        ax.grid(alpha=0.3)
        ax.legend()
        if result.note:
            ax.text(0.02, 0.02, "some recoveries undefined", transform=ax.transAxes,
                    fontsize=MIN_FONT_PT)
    fig.tight_layout()
    return fig
