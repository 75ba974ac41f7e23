"""The activation difference lens's part of the report, and its contract examples.

:func:`section` is what the report runs for ``--lenses activation_difference`` (through the
lens registry): the activation difference lens and diff mining on the report's texts, each
attempted on its own (``ctx.attempt``). It talks to the report only through
:class:`shiftlens.lenses.registry.ReportContext`.

Report options (``build_report(options=...)``): ``diffing_texts`` - the unrelated text the
methods read (default: the texts of the prompts capped for ``"activation_difference"``; for a
narrow fine-tune pass text unrelated to it, e.g. ``shiftlens.zoo.organisms.neutral_texts()`` for
the embedded models).
"""

from __future__ import annotations

from typing import Any

from shiftlens.lenses.registry import Section

__all__ = ["section", "examples"]


def _texts(ctx: Any) -> tuple[list[Any], str]:
    given = ctx.options.get("diffing_texts")
    if given:
        return list(given), f"{len(given)} texts given as the report option 'diffing_texts'"
    ps = ctx.prompts_for("activation_difference")
    return [p.text for p in ps], ("the texts of " + ctx.limit_note("activation_difference", len(ps))
                                  + "; these are instruction prompts, not unrelated text, so the "
                                  "first tokens read are the template's")


def section(ctx: Any, sec: Section) -> None:
    """Fill the report's section: the activation difference lens, then diff mining.

    Writes, per analysis, the summary (into ``metrics.json``), the saved Result, its tables as
    CSV and a figure with its finding.

    Args:
        ctx: The report's :class:`~shiftlens.lenses.registry.ReportContext`.
        sec: The section to fill.

    Example:
        >>> get_lens("activation_difference").run_section()(ctx, sec)  # doctest: +SKIP
    """
    from shiftlens.lenses.activation_difference.compare import activation_difference
    from shiftlens.lenses.activation_difference.mining import diff_mining

    texts, note = _texts(ctx)
    sec.note = f"Read on {note}."

    def run_adl() -> None:
        res = activation_difference(ctx.pair, texts, progress=ctx.progress, seed=ctx.seed)
        sec.n_prompts["activation_difference"] = res.n_texts
        s = sec.summaries["activation_difference"] = res.summary()
        ctx.save_result(res, "activation_difference")
        ctx.csv(sec, res.to_frame(), "adl_tokens")
        if len(res.steering):
            ctx.csv(sec, res.steering, "adl_steering")
        text = ("What the fine-tuning wrote into the residual stream, read as tokens (Minder et "
                "al. 2025): " + s["sentence"])
        ctx.figure(sec, res.show(), "activation_difference", text, key=text)
        if len(res.steering):
            strong = res.steering[res.steering.strength == res.steering.strength.max()]
            ex = strong[strong.model == "base"].head(2)
            if len(ex):
                sec.findings[-1].text += (
                    " Steering the base model with the difference (strength "
                    f"{float(ex.strength.iloc[0]):g} x the residual norm, greedy): "
                    + "; ".join(f"{r.prompt!r} -> {r.response!r}" for r in ex.itertuples())
                    + " (all responses: adl_steering.csv).")

    def run_mining() -> None:
        res = diff_mining(ctx.pair, texts, progress=ctx.progress, seed=ctx.seed)
        s = sec.summaries["diff_mining"] = res.summary()
        ctx.save_result(res, "diff_mining")
        ctx.csv(sec, res.to_frame(), "diff_mining")
        ctx.figure(sec, res.show(), "diff_mining", "Diff mining: " + s["sentence"])

    ctx.attempt(sec, "activation difference", run_adl)
    ctx.attempt(sec, "diff mining", run_mining)


def examples(pair: Any, prompts: list[Any]) -> list[Any]:
    """One small instance of each Result class of the lens, computed on ``pair`` (seconds).

    Example:
        >>> [type(r).__name__ for r in examples(pair, prompts)]  # doctest: +SKIP
        ['ActivationDifferenceResult', 'DiffMiningResult']
    """
    from shiftlens.lenses.activation_difference.compare import activation_difference
    from shiftlens.lenses.activation_difference.mining import diff_mining

    texts = [p.text for p in prompts][:3]
    return [
        activation_difference(pair, texts, n_positions=3, patch_scales=(1.0,), n_boot=20,
                              steer_strengths=(0.0, 1.0), max_new_tokens=4, n_tokens=20,
                              vocabulary=[5, 6, 7], progress=False),
        diff_mining(pair, texts, n_boot=20, n_tokens=30, progress=False),
    ]
