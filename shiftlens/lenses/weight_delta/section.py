"""The weight-delta lens's part of the report, and its contract examples.

:func:`section` is what the report runs for ``--lenses weight_delta``: the change of every matrix
of the report's pair, read from the checkpoint files where the models were loaded from local
directories. It talks to the report only through
:class:`shiftlens.lenses.registry.ReportContext`. Report option: ``weight_delta_r`` - the
directions read per matrix (default 8).
"""

from __future__ import annotations

from typing import Any

from shiftlens.lenses.registry import Section

__all__ = ["section", "examples"]


def section(ctx: Any, sec: Section) -> None:
    """Fill the report's weight-delta section (summary, saved Result, CSV tables, figure).

    Args:
        ctx: The report's :class:`~shiftlens.lenses.registry.ReportContext`.
        sec: The section to fill.

    Example:
        >>> get_lens("weight_delta").run_section()(ctx, sec)  # doctest: +SKIP
    """
    from shiftlens.lenses.weight_delta.compare import weight_delta
    from shiftlens.lenses.weight_delta.results import SOURCES

    sec.note = "Weights only: no prompts are run."

    def run() -> None:
        res = weight_delta(ctx.pair, r=int(ctx.options.get("weight_delta_r", 8)),
                           progress=ctx.progress)
        s = sec.summaries["weight_delta"] = res.summary()
        ctx.save_result(res, "weight_delta")
        ctx.csv(sec, res.to_frame(), "matrices")
        ctx.csv(sec, res.directions, "directions")
        for source in SOURCES:
            try:
                ctx.csv(sec, res.token_frame(source, 50, ctx.pair.tokenizer), f"tokens_{source}")
            except Exception:  # noqa: BLE001 - a tied unembedding has no separate change
                pass
        text = "How much each matrix changed and toward which tokens: " + s["sentence"]
        ctx.figure(sec, res.show(), "weight_delta", text, key=text)

    ctx.attempt(sec, "weight delta", run)


def examples(pair: Any, prompts: list[Any]) -> list[Any]:
    """One small instance of the lens's Result, computed on ``pair`` (seconds).

    Example:
        >>> [type(r).__name__ for r in examples(pair, prompts)]  # doctest: +SKIP
        ['WeightDeltaResult']
    """
    from shiftlens.lenses.weight_delta.compare import weight_delta

    return [weight_delta(pair, r=2, n_tokens=5, progress=False)]
