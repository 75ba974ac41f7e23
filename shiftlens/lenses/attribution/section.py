"""The attribution lens's part of the report, and its example Results for the contract test.

:func:`section` scores the report's prompts in both response settings
(:func:`~shiftlens.lenses.attribution.compare.response_settings`): the same reference response
for both models, and each model's own greedy response (the paper's setting, Wu et al. 2024,
§3). The two can disagree (the models' own responses differ in length and content), so the
section shows both side by side with the response lengths, and says which one the headline
uses and why. Prompts without references fall back to the own-response setting alone, with the
confound stated. Then the per-category figure of the headline setting, the CSV, the saved
Result and the importance-density token view of one short prompt. Report option
(``build_report(options=...)``): ``attribution_tokens``, the generation limit of the attributed
responses (default :data:`shiftlens.generate.DEFAULT_MAX_NEW_TOKENS`, 32).
"""

from __future__ import annotations

from typing import Any

from shiftlens.generate import DEFAULT_MAX_NEW_TOKENS
from shiftlens.lenses.attribution.results import left_out_sentence
from shiftlens.lenses.registry import Finding, Section, example_prompt
from shiftlens.stats import change_sentence, fmt_number

__all__ = ["section", "examples"]

_WHAT = ("the instruction score (how much the response rests on the instruction: importance "
         "density of the instruction tokens, Wu et al. §3)")



_SETTING = {"reference": "With the same reference response for both models",
            "generate": "With each model's own greedy response (the paper's setting)",
            "given": "With the given responses"}


def _finding_text(summary: dict[str, Any]) -> tuple[str, str]:
    """The finding (setting, headline, lengths, per-category means, exclusions) and its
    headline (the setting and the change, for the key findings)."""
    o = summary.get("overall") or {}
    nan = float("nan")
    head = change_sentence(_WHAT, o.get("mean_b", nan), o.get("mean_a", nan), p=o.get("pvalue"),
                           test="Welch t-test across prompts",
                           alternative=summary.get("alternative", "two-sided"),
                           ci=(o.get("ci_low", nan), o.get("ci_high", nan)), n=o.get("n_a"))
    setting = _SETTING.get(str(summary.get("setting")), "")
    key = f"{setting}, {head[:1].lower()}{head[1:]}" if setting else head
    ln = summary.get("response_lengths") or {}
    text = key
    if ln:
        text += (f" Mean response length: base {fmt_number(ln.get('base'), '.1f')}, tuned "
                 f"{fmt_number(ln.get('tuned'), '.1f')} tokens.")
    cats = summary.get("by_category") or {}
    if len(cats) > 1:
        per = "; ".join(f"{c} {fmt_number(v['mean_b'], '.3f')} -> "
                        f"{fmt_number(v['mean_a'], '.3f')} (p = {fmt_number(v['pvalue'], '.3g')})"
                        for c, v in cats.items())
        text += f" Per category (base -> tuned): {per}."
    if summary.get("excluded"):
        text += " " + left_out_sentence(summary["excluded"], int(summary.get("n_prompts", 0)))
    return text, key


def _settings(ctx: Any, sec: Section, rs: Any) -> Any:
    """Both settings side by side (the key finding), the headline setting's categories."""
    from shiftlens.lenses.attribution.plots import instruction_score_figure

    summary = rs.summary()
    sec.summaries["response_settings"] = summary
    sec.summaries["instruction_sensitivity"] = summary["own"]
    sec.summaries["instruction_sensitivity_reference"] = summary["reference"]
    head = rs.reference if rs.headline == "reference" else rs.own
    text, key = _finding_text(summary[rs.headline])
    ctx.figure(sec, rs.show(), "instruction_score_settings", summary["sentence"], key=key)
    ctx.figure(sec, instruction_score_figure(head), "instruction_score", text)
    return head


def section(ctx: Any, sec: Section) -> None:
    """Fill the report's attribution section (both response settings + one token view).

    Args:
        ctx: The report's :class:`~shiftlens.lenses.registry.ReportContext` (annotated ``Any``:
            the protocol is not runtime-checkable, and the tests check types at runtime).
        sec: The section to fill.

    Example:
        >>> section(ctx, Section("attribution", "Attribution"))  # doctest: +SKIP
    """
    import warnings

    import torch

    from shiftlens.errors import ShiftlensWarning
    from shiftlens.lenses.attribution.compare import instruction_sensitivity, response_settings
    from shiftlens.lenses.attribution.core import attribute
    from shiftlens.lenses.attribution.plots import instruction_score_figure
    from shiftlens.viz.circuits import importance_tokens

    pair = ctx.pair
    ps = ctx.prompts_for("attribution")
    n_new = int(ctx.options.get("attribution_tokens", DEFAULT_MAX_NEW_TOKENS))
    n_ref = sum(1 for p in ps if p.reference)
    both = n_ref >= 2
    sec.n_prompts["instruction_sensitivity"] = n_ref if both else len(ps)
    sec.note = ("Instruction sensitivity on " + ctx.limit_note("attribution", len(ps))
                + (f"; {n_ref} with a reference response are scored twice: both models on that "
                   f"same response, and each model on its own greedy response (at most {n_new} "
                   "tokens, the paper's setting)" if both else
                   f"; each model explains its own greedy response (at most {n_new} tokens): the "
                   "prompts have no reference responses to hold the response fixed") + ".")
    if both:
        with warnings.catch_warnings():  # prompts without a reference: named in the summary
            warnings.filterwarnings("ignore", "response_settings: ", ShiftlensWarning)
            rs = response_settings(pair, ps, max_new_tokens=n_new, progress=ctx.progress,
                                   seed=ctx.seed)
        ctx.save_result(rs, "attribution")
        ctx.csv(sec, rs.to_frame(), "instruction_sensitivity")
        _settings(ctx, sec, rs)
    else:
        res = instruction_sensitivity(pair, ps, max_new_tokens=n_new, progress=ctx.progress,
                                      seed=ctx.seed)
        summary = res.summary()
        sec.summaries["instruction_sensitivity"] = summary
        ctx.save_result(res, "attribution")
        ctx.csv(sec, res.to_frame(), "instruction_sensitivity")
        if summary.get("n_scored"):
            text, head = _finding_text(summary)
            text += " " + res.setting_sentence()
            ctx.figure(sec, instruction_score_figure(res), "instruction_score", text, key=head)
        else:
            sec.findings.append(Finding(summary["sentence"], "", summary["sentence"]))
    p = example_prompt(ps, pair)
    if p is None:
        return

    def view() -> None:
        with torch.enable_grad():
            ab = attribute(pair.base, p, max_new_tokens=n_new, model_name=pair.names["base"])
            at = attribute(pair.tuned, p, max_new_tokens=n_new, model_name=pair.names["tuned"])
        sec.views.append(importance_tokens(ab, at, tokenizer=pair.tokenizer))

    ctx.attempt(sec, f"importance view of prompt {p.label}", view)


def examples(pair: Any, prompts: list[Any]) -> list[Any]:
    """One small instance of each Result class of the lens, computed on ``pair`` (seconds).

    Used by the Result contract test (save/load, summary, show, HTML, repr, frame, meta).

    Args:
        pair: A :class:`shiftlens.ModelPair` (a tiny one).
        prompts: A few prompts with reference responses.

    Returns:
        ``[AttributionResult, SensitivityResult, ResponseSettingsResult, FollowedResult,
        PositionResult]``.

    Example:
        >>> [type(r).__name__ for r in examples(pair, prompts)]  # doctest: +SKIP
        ['AttributionResult', 'SensitivityResult', 'ResponseSettingsResult', 'FollowedResult', 'PositionResult']
    """
    import warnings

    from shiftlens.errors import ShiftlensWarning
    from shiftlens.lenses.attribution.compare import followed_comparison, instruction_sensitivity
    from shiftlens.lenses.attribution.core import attribute
    from shiftlens.lenses.attribution.derived import ResponseSettingsResult
    from shiftlens.lenses.attribution.placement import position_sensitivity

    ps = [p for p in prompts if p.reference][:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShiftlensWarning)
        att = attribute(pair.tuned, ps[0], ps[0].reference, model_name=pair.names["tuned"])
        sens = instruction_sensitivity(pair, ps, response="reference", progress=False)
        own = instruction_sensitivity(pair, ps, max_new_tokens=4, progress=False)
        both = ResponseSettingsResult.from_results(sens, own)
        ids = [str(i) for i in sens.frame["id"]]
        fol = followed_comparison(sens, {i: k % 2 == 0 for k, i in enumerate(ids)})
        pos = position_sensitivity(
            pair, [("List the animals.", ["A cat sat.", "A dog ran.", "Rain fell."])],
            responses=[" cat dog"], progress=False)
    return [att, sens, both, fol, pos]
