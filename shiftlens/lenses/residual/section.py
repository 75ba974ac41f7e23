"""The residual lens's part of the report, and its contract examples.

:func:`section` is what the report runs for ``--lenses residual`` (through the lens registry):
similarity and output shift on the prompts capped for ``"residual"``, patching on those capped
for ``"patching"``; each analysis is attempted on its own (``ctx.attempt``), so one failing
does not lose the others. It talks to the report only through
:class:`shiftlens.lenses.registry.ReportContext`.

Report options (``build_report(options=...)``): ``patching_components`` - the components
patched (default ``("resid_pre", "attn_out", "mlp_out")``).
"""

from __future__ import annotations

from typing import Any

from shiftlens.lenses.registry import Section

__all__ = ["section", "examples"]

_REPORT_COMPONENTS = ("resid_pre", "attn_out", "mlp_out")


def _sentence(summary: Any) -> str:
    s = summary.get("sentence") if isinstance(summary, dict) else None
    return s if isinstance(s, str) else ""


def section(ctx: Any, sec: Section) -> None:
    """Fill the report's residual section: similarity, output shift (KL), patching.

    Writes, per analysis, the summary (into ``metrics.json``), the saved Result, the aggregated
    table as CSV and a figure with its finding.

    Args:
        ctx: The report's :class:`~shiftlens.lenses.registry.ReportContext` (pair, prompts,
            caps, seed, figure/CSV writers; typed ``Any``: the protocol is not runtime-checkable).
        sec: The section to fill.

    Example:
        >>> get_lens("residual").run_section()(ctx, sec)  # doctest: +SKIP
    """
    from shiftlens.lenses.residual.compare import output_shift, similarity
    from shiftlens.lenses.residual.patching import patching

    pair = ctx.pair
    ps = ctx.prompts_for("residual")
    pp = ctx.prompts_for("patching")
    sec.note = ("Similarity and output shift on " + ctx.limit_note("residual", len(ps))
                + "; patching on " + ctx.limit_note("patching", len(pp)) + ".")

    def run_similarity() -> None:
        res = similarity(pair, ps, progress=ctx.progress, seed=ctx.seed)
        sec.n_prompts["similarity"] = len(ps)
        s = sec.summaries["similarity"] = res.summary()
        ctx.save_result(res, "residual_similarity")
        ctx.csv(sec, res.to_frame(aggregate=True), "similarity")
        lowest = s.get("lowest") or {}
        key = ""
        if lowest:
            key = (f"The residual streams of base and tuned (cosine similarity on identical "
                   f"tokens; 1 = unchanged) are least alike at "
                   f"blocks.{lowest['layer']}.hook_{lowest['hook']}: "
                   f"{lowest['cosine']:.3f} (95% CI [{lowest['cosine_ci'][0]:.3f}, "
                   f"{lowest['cosine_ci'][1]:.3f}], {len(ps)} prompts).")
        ctx.figure(sec, res.show(metric="cosine"), "similarity", _sentence(s), key=key)

    def run_output_shift() -> None:
        res = output_shift(pair, ps, progress=ctx.progress, seed=ctx.seed)
        sec.n_prompts["output_shift"] = len(ps)
        s = sec.summaries["output_shift"] = res.summary()
        ctx.save_result(res, "residual_output_shift")
        ctx.csv(sec, res.to_frame(aggregate=True), "output_kl")
        ctx.csv(sec, res.top_tokens, "rising_tokens")
        ctx.figure(sec, res.show(), "output_kl", _sentence(s))

    def run_patching() -> None:
        comps = ctx.options.get("patching_components", _REPORT_COMPONENTS)
        res = patching(pair, pp, components=tuple(comps), progress=ctx.progress, seed=ctx.seed)
        sec.n_prompts["patching"] = len(pp)
        s = sec.summaries["patching"] = res.summary()
        ctx.save_result(res, "residual_patching")
        ctx.csv(sec, res.to_frame(aggregate=True), "patching")
        text = ("Cross-model activation patching (which layer carries the tuned behaviour): "
                + _sentence(s))
        ctx.figure(sec, res.show(), "patching", text, key=text)

    ctx.attempt(sec, "similarity", run_similarity)
    ctx.attempt(sec, "output shift", run_output_shift)
    ctx.attempt(sec, "patching", run_patching)


def examples(pair: Any, prompts: list[Any]) -> list[Any]:
    """One small instance of each Result class of the lens, computed on ``pair`` (seconds).

    Args:
        pair: A :class:`shiftlens.ModelPair` (the contract test uses a tiny Llama pair).
        prompts: Prompts with reference responses (the first two are used).

    Returns:
        ``[SimilarityResult, OutputShiftResult, PatchingResult]``.

    Example:
        >>> results = examples(pair, prompts)  # doctest: +SKIP
        >>> [type(r).__name__ for r in results]  # doctest: +SKIP
        ['SimilarityResult', 'OutputShiftResult', 'PatchingResult']
    """
    from shiftlens.lenses.residual.compare import output_shift, similarity
    from shiftlens.lenses.residual.patching import patching

    ps = list(prompts)[:2]
    kw: dict[str, Any] = dict(batch_size=2, n_boot=200, seed=0, progress=False)
    return [
        similarity(pair, ps, per_token=True, **kw),
        output_shift(pair, ps, top_k=3, segments=["response"], **kw),
        patching(pair, ps, components=["resid_pre", "mlp_out"], response="reference", **kw),
    ]
