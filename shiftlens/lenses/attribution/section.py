"""The attribution lens's part of the report, and its example Results for the contract test.

:func:`section` runs :func:`~shiftlens.lenses.attribution.compare.instruction_sensitivity` on the
report's pair and prompts (each model explains its own greedy response, Wu et al. 2024, §3),
writes the finding with its statistics, the figure, the CSV and the saved Result, and adds the
importance-density token view of one short prompt. Report option (``build_report(options=...)``):
``attribution_tokens``, the generation limit of the attributed responses (default 32).
"""

from __future__ import annotations

from typing import Any

from shiftlens.lenses.registry import Finding, Section
from shiftlens.stats import change_sentence, fmt_number

__all__ = ["section", "examples"]

_WHAT = ("the instruction score (how much the response rests on the instruction: importance "
         "density of the instruction tokens, Wu et al. §3)")


def _example_prompt(prompts: list[Any], pair: Any) -> Any:
    """The shortest prompt (with its reference) that has instruction tokens: a light view."""
    best, best_n = None, None
    for p in prompts:
        try:
            tp = pair.tokenize(p, response=p.reference or None)
        except Exception:  # noqa: BLE001 - e.g. too long; try the next
            continue
        n = int(tp.tokens.shape[0])
        if bool(tp.mask("instruction").any()) and (best_n is None or n < best_n):
            best, best_n = p, n
    return best if best is not None else (prompts[0] if prompts else None)


def _finding_text(summary: dict[str, Any]) -> tuple[str, str]:
    """The finding (headline + per-category means) and its headline."""
    o = summary.get("overall") or {}
    nan = float("nan")
    test = (f"{'one-sided ' if o.get('alternative') == 'greater' else ''}Welch t-test across "
            "prompts")
    head = change_sentence(_WHAT, o.get("mean_b", nan), o.get("mean_a", nan), p=o.get("pvalue"),
                           test=test, ci=(o.get("ci_low", nan), o.get("ci_high", nan)),
                           n=o.get("n_a"))
    cats = summary.get("by_category") or {}
    if len(cats) <= 1:
        return head, head
    per = "; ".join(f"{c} {v['mean_b']:.3f} -> {v['mean_a']:.3f} (p = "
                    f"{fmt_number(v['pvalue'], '.3g')})" for c, v in cats.items())
    return f"{head} Per category (base -> tuned): {per}.", head


def section(ctx: Any, sec: Section) -> None:
    """Fill the report's attribution section (instruction sensitivity + one token view).

    Args:
        ctx: The report's :class:`~shiftlens.lenses.registry.ReportContext` (annotated ``Any``:
            the protocol is not runtime-checkable, and the tests check types at runtime).
        sec: The section to fill.

    Example:
        >>> section(ctx, Section("attribution", "Attribution"))  # doctest: +SKIP
    """
    import torch

    from shiftlens.lenses.attribution.compare import instruction_sensitivity
    from shiftlens.lenses.attribution.core import attribute
    from shiftlens.lenses.attribution.plots import instruction_score_figure
    from shiftlens.viz.circuits import importance_tokens

    pair = ctx.pair
    ps = ctx.prompts_for("attribution")
    n_new = int(ctx.options.get("attribution_tokens", 32))
    sec.n_prompts["instruction_sensitivity"] = len(ps)
    sec.note = ("Instruction sensitivity on " + ctx.limit_note("attribution", len(ps))
                + f"; each model explains its own greedy response (at most {n_new} tokens).")
    res = instruction_sensitivity(pair, ps, max_new_tokens=n_new, progress=ctx.progress,
                                  seed=ctx.seed)
    summary = res.summary()
    sec.summaries["instruction_sensitivity"] = summary
    ctx.save_result(res, "attribution")
    ctx.csv(sec, res.to_frame(), "instruction_sensitivity")
    if summary.get("overall"):
        text, head = _finding_text(summary)
        ctx.figure(sec, instruction_score_figure(res), "instruction_score", text, key=head)
    elif summary.get("sentence"):
        sec.findings.append(Finding(summary["sentence"], "", summary["sentence"]))
    p = _example_prompt(ps, pair)
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
        ``[AttributionResult, SensitivityResult, FollowedResult, PositionResult]``.

    Example:
        >>> [type(r).__name__ for r in examples(pair, prompts)]  # doctest: +SKIP
        ['AttributionResult', 'SensitivityResult', 'FollowedResult', 'PositionResult']
    """
    import warnings

    from shiftlens.errors import ShiftlensWarning
    from shiftlens.lenses.attribution.compare import (
        followed_comparison,
        instruction_sensitivity,
        position_sensitivity,
    )
    from shiftlens.lenses.attribution.core import attribute

    ps = [p for p in prompts if p.reference][:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShiftlensWarning)
        att = attribute(pair.tuned, ps[0], ps[0].reference, model_name=pair.names["tuned"])
        sens = instruction_sensitivity(pair, ps, response="reference", progress=False)
        ids = [str(i) for i in sens.frame["id"]]
        fol = followed_comparison(sens, {i: k % 2 == 0 for k, i in enumerate(ids)})
        pos = position_sensitivity(
            pair, [("List the animals.", ["A cat sat.", "A dog ran.", "Rain fell."])],
            responses=[" cat dog"], progress=False)
    return [att, sens, fol, pos]
