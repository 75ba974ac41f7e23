"""Lens 2's part of the report: instruction attention, the attention-pattern view, the verb shift.

:func:`section` runs on the report's pair and prompts through the
:class:`~shiftlens.lenses.registry.ReportContext` it is handed (it imports nothing of
:mod:`shiftlens.report`). Options read from ``ctx.options``:

- ``verb_words`` - vocabulary size of :func:`~shiftlens.lenses.attention.compare.verb_shift`
  (default 5000),
- ``view_heads`` - at most this many heads in the attention-pattern view (default 8: the heads
  of the shown layer whose instruction attention changed most).

:func:`examples` returns one small instance of each of the lens's Results (the contract test).
"""

from __future__ import annotations

import importlib
from typing import Any

from shiftlens.lenses.registry import Finding, Section
from shiftlens.stats import change_sentence, digits_for, fmt_number

__all__ = ["section", "examples"]


def _lens() -> Any:
    # the public API through the package, so that tests can replace a function there
    return importlib.import_module("shiftlens.lenses.attention")


def _example_prompt(prompts: list[Any], pair: Any) -> Any:
    """The shortest prompt (with its reference) that has instruction tokens: a light page."""
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


def _headline(s: dict[str, Any]) -> tuple[str, str]:
    """The key sentence (the change of instruction mass) and the full finding."""
    im = s.get("instruction_mass", {})
    q = "response tokens" if s.get("query") == "response" else "the last prompt token"
    head = change_sentence(
        f"the share of attention that {q} put on the instruction (mean over all heads)",
        im.get("mean_b", float("nan")), im.get("mean_a", float("nan")), p=im.get("pvalue"),
        test="paired t-test across prompts", ci=(im.get("ci_low", float("nan")),
                                                  im.get("ci_high", float("nan"))),
        n=im.get("n_a"))
    text = (f"{head} {s['n_heads_up_holm']} of {s['n_heads']} heads attend to the instruction "
            f"significantly more after tuning and {s['n_heads_down_holm']} less (paired "
            f"t-test per head across prompts, Holm-adjusted p < 0.05; "
            f"{s.get('n_heads_up_bh', 0)} more / {s.get('n_heads_down_bh', 0)} less at BH "
            "FDR 0.05).")
    top = s.get("top_heads") or []
    if top:
        t0 = top[0]
        text += (f" Largest increase: layer {int(t0['layer'])} head {int(t0['head'])} "
                 f"({t0['base']:.3f} -> {t0['tuned']:.3f}, Holm p = {t0['p_holm']:.3g}).")
    if s.get("n_excluded"):
        text += f" {s['n_excluded']} prompts without instruction tokens were excluded."
    return head, text


def _group_finding(s: dict[str, Any]) -> str:
    parts = []
    for g, v in (s.get("by_layer_group") or {}).items():
        f = digits_for(v["mean_b"], v["mean_a"], None)
        parts.append(f"{g}: {v['mean_b']:{f}} -> {v['mean_a']:{f}} "
                     f"(p = {fmt_number(v['pvalue'])})")
    return ("Attention on the instruction per layer group (base -> tuned, paired t-test): "
            + "; ".join(parts) + ".") if parts else ""


def _pattern_view(ctx: Any, sec: Section, res: Any, prompts: list[Any]) -> None:
    """circuitsvis patterns of one prompt, in the layer of the head whose attention rose most."""
    from shiftlens.viz.circuits import attention_patterns

    pair = ctx.pair
    p = _example_prompt(prompts, pair)
    if p is None:
        return
    tests, heads = res.tests, None
    max_heads = int(ctx.options.get("view_heads", 8))
    if len(tests):
        layer = int(tests.iloc[0]["layer"])
        why = (f"layer {layer} holds the head whose attention to the instruction rose most "
               f"(head {int(tests.iloc[0]['head'])})")
        if int(pair.cfg.n_heads) > max_heads:  # keep the page light: the heads that changed most
            lt = tests[tests["layer"] == layer]
            top = lt.reindex(lt["delta"].abs().sort_values(ascending=False).index)
            heads = sorted(int(h) for h in top["head"].head(max_heads))
            why += f"; the {len(heads)} heads of that layer whose instruction attention changed most"
    else:
        layer, why = int(pair.cfg.n_layers) - 1, "the last layer"
    vis = ctx.attempt(sec, f"attention patterns of prompt {p.label}",
                      lambda: attention_patterns(pair, p, [layer], heads=heads))
    if vis is not None:
        vis.title += f" ({why})"
        sec.views.append(vis)


def _verb_section(ctx: Any, sec: Section) -> None:
    vr = _lens().verb_shift(ctx.pair, n_words=int(ctx.options.get("verb_words", 5000)),
                            progress=ctx.progress, seed=ctx.seed)
    vs = vr.summary()
    sec.summaries["verb_shift"] = vs
    ctx.save_result(vr, "attention_verbs")
    ctx.csv(sec, vr.tests, "verb_tests")
    ctx.csv(sec, vr.verbs, "verb_fractions")
    allrow = vr.tests[vr.tests["group"] == "all"]
    text = vs["sentence"]
    if len(allrow):
        r = allrow.iloc[0]
        text = (f"Word pairs encoded by the heads' Q/K weights (Wu et al. §4): for "
                f"{r.mean_instruction:.0%} of (head, instruction verb) cases whose "
                f"pair count changed it rose, versus {r.mean_general:.0%} for general "
                f"verbs (Welch t-test p = {r.p:.3g}, {int(r.n_instruction)} vs "
                f"{int(r.n_general)} verbs). " + text)
    ctx.figure(sec, vr.plot(), "verb_shift", text)


def section(ctx: Any, sec: Section) -> None:
    """The attention section of the report (registered as the lens's ``section``).

    ``ctx`` is the report's :class:`~shiftlens.lenses.registry.ReportContext` (annotated
    ``Any``: the protocol is not runtime-checkable, and the tests check types at run time).

    Instruction attention on ``ctx.prompts_for("attention")`` (the headline finding with its
    heatmap, the per-layer-group finding, CSVs of the segment masses and head tests), the
    attention patterns of one prompt, and the verb shift (its own finding and figure; a failure
    there is recorded and the rest stands).

    Example:
        >>> get_lens("attention").run_section()(ctx, sec)  # doctest: +SKIP
    """
    ps = ctx.prompts_for("attention")
    sec.n_prompts["instruction_attention"] = len(ps)
    sec.note = "Instruction attention on " + ctx.limit_note("attention", len(ps)) + "."
    res = _lens().instruction_attention(ctx.pair, ps, progress=ctx.progress, seed=ctx.seed)
    s = res.summary()
    sec.summaries["instruction_attention"] = s
    ctx.save_result(res, "attention")
    ctx.csv(sec, res.to_frame(), "segment_mass")
    ctx.csv(sec, res.tests, "head_tests")
    head, text = _headline(s)
    ctx.figure(sec, res.plot(), "head_delta", text, key=head)
    groups = _group_finding(s)
    if groups:
        sec.findings.append(Finding(groups))
    _pattern_view(ctx, sec, res, ps)
    ctx.attempt(sec, "verb shift", lambda: _verb_section(ctx, sec))


def examples(pair: Any, prompts: list[Any]) -> list[Any]:
    """One small instance of each Result of the lens, on ``pair`` (seconds on a tiny pair).

    Example:
        >>> [type(r).__name__ for r in examples(pair, prompts)]  # doctest: +SKIP
        ['InstructionAttentionResult', 'VerbShiftResult']
    """
    A = _lens()
    ia = A.instruction_attention(pair, prompts, progress=False, seed=0)
    vs = A.verb_shift(pair, n_words=300, top_dims=4, top_k=20, progress=False, seed=0)
    return [ia, vs]
