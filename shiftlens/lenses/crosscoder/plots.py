"""The crosscoder lens's figure, in the house style (:mod:`shiftlens.viz.style`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from shiftlens.viz.style import BASE_COLOR, MIN_FONT_PT, TUNED_COLOR, new_figure

if TYPE_CHECKING:
    from shiftlens.lenses.crosscoder.results import CrosscoderResult

__all__ = ["crosscoder_figure", "CLASS_COLORS"]

#: Colour of each latent class (the model colours for the model-specific classes).
CLASS_COLORS = {"tuned_only": TUNED_COLOR, "base_only": BASE_COLOR, "shared": "#2da44e",
                "other": "#d4a72c"}
_LABELS = {"tuned_only": "tuned-only", "base_only": "base-only", "shared": "shared",
           "other": "in between / rejected"}


def crosscoder_figure(result: CrosscoderResult) -> Any:
    """Left: the relative decoder norm Δ of the live latents, stacked by class, with the class
    bins (Minder et al.'s 0.1 / 0.4-0.6 / 0.9). Right: each live latent's decoder cosine (its
    base vs its tuned decoder vector) against Δ, dot area by frequency: shared latents whose
    decoder turned (low cosine) are changed by the fine-tuning without being model-specific.

    Args:
        result: A :class:`~shiftlens.lenses.crosscoder.results.CrosscoderResult`.

    Returns:
        A matplotlib Figure.

    Example:
        >>> fig = crosscoder_figure(res)  # doctest: +SKIP
    """
    df = result.latents[result.latents.cls != "dead"]
    th = (result.meta.get("params") or {}).get("thresholds") or {}
    outer, band = float(th.get("outer", 0.1)), float(th.get("shared_band", 0.1))
    fig, axes = new_figure(1, 2, width=10.5, height=3.9)
    ax = axes[0][0]
    bins = np.linspace(0, 1, 41)
    stacks = [(c, df.delta_norm[df.cls == c].to_numpy()) for c in CLASS_COLORS]
    stacks = [(c, v) for c, v in stacks if len(v)]
    if stacks:
        ax.hist([v for _, v in stacks], bins=bins, stacked=True,
                color=[CLASS_COLORS[c] for c, _ in stacks],
                label=[f"{_LABELS[c]} ({len(v)})" for c, v in stacks])
        ax.legend(loc="upper left")
    else:
        ax.text(0.5, 0.5, "no live latents", ha="center", transform=ax.transAxes)
    for x in (outer, 0.5 - band, 0.5 + band, 1 - outer):
        ax.axvline(x, color="0.5", lw=0.6, ls=":")
    ax.set_xlim(0, 1)
    ax.set_xlabel("relative decoder norm Δ (0 base-only, 1 tuned-only)")
    ax.set_ylabel("live latents")
    ax.set_title("Decoder norms: which model a latent writes to")
    ax2 = axes[0][1]
    if len(df):
        freq = df.frequency.to_numpy()
        size = 6 + 60 * np.sqrt(freq / max(float(freq.max()), 1e-12))
        for c in CLASS_COLORS:
            m = (df.cls == c).to_numpy()
            if m.any():
                ax2.scatter(df.delta_norm.to_numpy()[m], df.cos_dec.to_numpy()[m], s=size[m],
                            color=CLASS_COLORS[c], alpha=0.6, lw=0)
    ax2.set_xlim(0, 1)
    ax2.set_ylim(-1.05, 1.05)
    ax2.axhline(0, color="0.5", lw=0.6, ls=":")
    ax2.set_xlabel("relative decoder norm Δ")
    ax2.set_ylabel("cosine(d_base, d_tuned)")
    ax2.set_title("Decoder direction change (dot area: frequency)")
    n_t = int((result.latents.cls == "tuned_only").sum())
    ax2.text(0.02, 0.03, f"{n_t} tuned-only latent{'s' if n_t != 1 else ''}",
             transform=ax2.transAxes, fontsize=MIN_FONT_PT)
    fig.tight_layout()
    return fig
