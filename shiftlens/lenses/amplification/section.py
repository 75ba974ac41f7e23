"""The amplification lens's part of the report, and its contract examples.

:func:`section` is what the report runs for ``--lenses amplification``: greedy responses of
``base + a (tuned - base)`` to the prompts capped for ``"amplification"`` (4 by default: each
token costs a full forward pass of both models). Report option: ``amplification_alphas``
(default ``(0, 1, 2, 4)``).
"""

from __future__ import annotations

from typing import Any

from shiftlens.lenses.registry import Section

__all__ = ["section", "examples"]


def section(ctx: Any, sec: Section) -> None:
    """Fill the report's amplification section (summary, saved Result, responses CSV, figure).

    Args:
        ctx: The report's :class:`~shiftlens.lenses.registry.ReportContext`.
        sec: The section to fill.

    Example:
        >>> get_lens("amplification").run_section()(ctx, sec)  # doctest: +SKIP
    """
    from shiftlens.lenses.amplification.compare import amplification

    ps = ctx.prompts_for("amplification")
    sec.note = ("Responses to " + ctx.limit_note("amplification", len(ps))
                + "; greedy decoding without a cache (a full forward pass of both models per "
                "token).")

    def run() -> None:
        res = amplification(ctx.pair, ps, alphas=tuple(ctx.options.get(
            "amplification_alphas", (0.0, 1.0, 2.0, 4.0))), progress=ctx.progress)
        sec.n_prompts["amplification"] = len(ps)
        s = sec.summaries["amplification"] = res.summary()
        ctx.save_result(res, "amplification")
        ctx.csv(sec, res.to_frame(), "responses")
        ctx.figure(sec, res.show(), "amplification",
                   "Amplifying the difference (model-diff amplification): " + s["sentence"])

    ctx.attempt(sec, "amplification", run)


def examples(pair: Any, prompts: list[Any]) -> list[Any]:
    """One small instance of the lens's Result, computed on ``pair`` (seconds).

    Example:
        >>> [type(r).__name__ for r in examples(pair, prompts)]  # doctest: +SKIP
        ['AmplificationResult']
    """
    from shiftlens.lenses.amplification.compare import amplification

    return [amplification(pair, list(prompts)[:2], alphas=(0.0, 1.0, 3.0), max_new_tokens=4,
                          progress=False)]
