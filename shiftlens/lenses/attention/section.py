"""Lens 2's part of the report: instruction attention, the attention-pattern view, the verb shift.

:func:`section` runs on the report's pair and prompts through the
:class:`~shiftlens.lenses.registry.ReportContext` it is handed (it imports nothing of
:mod:`shiftlens.report`). Options read from ``ctx.options``:

- ``verb_words`` - vocabulary size of :func:`~shiftlens.lenses.attention.compare.verb_shift`
  (default 5000),
- ``view_heads`` - at most this many heads in the attention-pattern view (default 8: the head
  the finding names first, where the view opens, then the heads of its layer whose
  instruction attention changed most).

:func:`examples` returns one small instance of each of the lens's Results (the contract test).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from shiftlens.lenses.registry import Finding, Section, example_prompt
from shiftlens.stats import digits_for, fmt_number, test_label

__all__ = ["section", "examples"]


def _lens() -> Any:
    # the public API through the package, so that tests can replace a function there
    return importlib.import_module("shiftlens.lenses.attention")



def _headline(s: dict[str, Any]) -> tuple[str, str]:
    """The key sentence (the change of instruction mass) and the full finding: the summary's
    own sentence (Holm-adjusted head counts, as the heatmap's dots; every exclusion counted)."""
    return s["headline"], s["sentence"]


def _group_finding(s: dict[str, Any]) -> str:
    """Per layer group, the change in words with its test (the summary's numbers)."""
    parts = []
    alt = s.get("alternative", "two-sided")
    for g, v in (s.get("by_layer_group") or {}).items():
        f = digits_for(v["mean_b"], v["mean_a"], None)
        layers = v.get("layers")
        where = f"{g} (layer{'s' if layers and len(layers) > 1 else ''} " \
                f"{', '.join(map(str, layers))})" if layers else g
        parts.append(f"{where} {_moved(v['mean_b'], v['mean_a'], v['pvalue'], alt)} from "
                     f"{v['mean_b']:{f}} to {v['mean_a']:{f}} (p = {fmt_number(v['pvalue'])})")
    return ("Attention on the instruction per layer group, base -> tuned (mean over the group's "
            f"heads; {test_label('paired t-test', alt)} across prompts): "
            + "; ".join(parts) + ".") if parts else ""


def _moved(b: float, a: float, p: float, alternative: str, alpha: float = 0.05) -> str:
    """``rose significantly`` / ``fell, not significantly`` / ``did not change``."""
    if not (np.isfinite(a) and np.isfinite(b)) or a == b:
        return "did not change"
    d = "rose" if a > b else "fell"
    against = (alternative == "greater" and a < b) or (alternative == "less" and a > b)
    if against or not np.isfinite(p):
        return d
    return f"{d} significantly" if p < alpha else f"{d}, not significantly,"


def _view_heads(tests: Any, layer: int, first: int, n_heads: int, max_heads: int) -> list[int]:
    """The heads of the view, the finding's head first (circuitsvis opens on the first head),
    then the layer's other heads by how much their instruction attention changed."""
    lt = tests[tests["layer"] == layer]
    order = lt.reindex(lt["delta"].abs().sort_values(ascending=False, kind="stable").index)
    rest = [int(h) for h in order["head"] if int(h) != first]
    rest += [h for h in range(n_heads) if h != first and h not in rest]
    return [first, *rest][:max(1, max_heads)]


def _visible_tokens(vis: Any) -> None:
    """Newlines, tabs and blank tokens made visible in the view's labels
    (:func:`shiftlens.tokens.display_token`; idempotent)."""
    from shiftlens.tokens import display_token

    for name, props in vis.components:
        if name == "AttentionHeads" and "tokens" in props:
            props["tokens"] = [display_token(t) for t in props["tokens"]]
    if isinstance(vis.data.get("tokens"), list):
        vis.data["shown_tokens"] = [display_token(t) for t in vis.data["tokens"]]


def _pattern_view(ctx: Any, sec: Section, res: Any, prompts: list[Any]) -> None:
    """circuitsvis patterns of one prompt in the layer of the head the finding names (the
    largest increase), opened on that head."""
    from shiftlens.viz.circuits import attention_patterns

    pair = ctx.pair
    p = example_prompt(prompts, pair)
    if p is None:
        return
    tests = res.tests
    max_heads = int(ctx.options.get("view_heads", 8))
    if len(tests):
        layer, first = int(tests.iloc[0]["layer"]), int(tests.iloc[0]["head"])
        heads = _view_heads(tests, layer, first, int(pair.cfg.n_heads), max_heads)
        what = "rose most" if float(tests.iloc[0]["delta"]) > 0 else "fell least"
        why = (f"layer {layer}, opened on head {first}: the head whose attention to the "
               f"instruction {what}, as the finding says")
        if len(heads) < int(pair.cfg.n_heads):
            why += (f"; then the {len(heads) - 1} other heads of that layer whose instruction "
                    "attention changed most")
    else:
        layer, heads, why = int(pair.cfg.n_layers) - 1, None, "the last layer"
    vis = ctx.attempt(sec, f"attention patterns of prompt {p.label}",
                      lambda: attention_patterns(pair, p, [layer], heads=heads))
    if vis is not None:
        _visible_tokens(vis)
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
        text = (f"Word pairs encoded by the heads' Q/K weights (Wu et al. §4), over all layers: "
                f"averaged over instruction verbs, a verb's pair count rose in "
                f"{fmt_number(r.mean_instruction, '.0%')} of the heads where it changed, versus "
                f"{fmt_number(r.mean_general, '.0%')} for general verbs. " + text)
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
