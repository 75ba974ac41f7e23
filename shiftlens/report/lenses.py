"""The report's lens runners: each calls a lens's pair-level functions and turns its Results into
findings (sentences with numbers and statistics), figures, circuitsvis views and CSV files.

A runner imports its lens module when it runs (never at import time), so a missing or broken
lens only affects its own section. Options (``build_report(options=...)``):

- ``concept_k`` - components per layer annotated by :func:`shiftlens.ffn.concept_shift`
  (default: the lens default, ``min(300, rank)``),
- ``rotation_k`` - subspace dimension of :func:`shiftlens.ffn.rotation` (lens default),
- ``verb_words`` - vocabulary size of :func:`shiftlens.attention.verb_shift` (default 5000),
- ``attribution_tokens`` - generation limit of the attributed responses (default 24),
- ``patching_components`` - components patched (default resid_pre, attn_out, mlp_out),
- ``view_heads`` - at most this many heads in the attention-pattern view (default 8: the heads
  of the shown layer whose instruction attention changed most).
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable
from typing import Any

from shiftlens.lenses.registry import Section
from shiftlens.stats import change_sentence
from shiftlens.stats import digits_for as _digits

__all__: list[str] = []


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with the keyword arguments it accepts (lens signatures may differ)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(*args, **kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(*args, **kwargs)
    return fn(*args, **{k: v for k, v in kwargs.items() if k in params})


def _sentence(summary: Any) -> str:
    if isinstance(summary, dict):
        s = summary.get("sentence")
        if isinstance(s, str) and s:
            return s
    return ""


def _try(ctx: Any, sec: Section, what: str, fn: Callable[[], Any]) -> Any:
    """Run one analysis of a section; on failure record the error and go on (unless debug)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lens warnings are reported by the findings
            return fn()
    except Exception as e:  # noqa: BLE001 - the other analyses still run
        if ctx.debug:
            raise
        sec.errors.append(f"{what}: {type(e).__name__}: {e}")
        return None


def _p(p: Any) -> str:
    try:
        v = float(p)
    except (TypeError, ValueError):
        return "n/a"
    return f"{v:.3g}" if v == v and abs(v) != float("inf") else "n/a"


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


# ============================================================================= attribution
def _run_attribution(ctx: Any, sec: Section) -> None:
    A = importlib.import_module("shiftlens.attribution")
    from shiftlens.viz.circuits import importance_tokens
    from shiftlens.viz.figures import instruction_score_figure

    pair = ctx.pair
    ps = ctx.prompts_for("attribution")
    n_new = int(ctx.options.get("attribution_tokens", 32))
    sec.n_prompts["instruction_sensitivity"] = len(ps)
    sec.note = ("Instruction sensitivity on " + ctx.limit_note("attribution", len(ps))
                + f"; each model explains its own greedy response (at most {n_new} tokens).")
    res = _call(A.instruction_sensitivity, pair, ps, max_new_tokens=n_new,
                progress=ctx.progress, seed=ctx.seed)
    summary = res.summary()
    sec.summaries["instruction_sensitivity"] = summary
    ctx.save_result(res, "attribution")
    ctx.csv(sec, res.to_frame(), "instruction_sensitivity")
    o = summary.get("overall") or {}
    text = _sentence(summary)
    if o:
        head = change_sentence(
            "the instruction score (how much the response rests on the instruction: importance "
            "density of the instruction tokens, Wu et al. §3)", o.get("mean_b", float("nan")),
            o.get("mean_a", float("nan")), p=o.get("pvalue"),
            test=f"{'one-sided ' if o.get('alternative') == 'greater' else ''}Welch t-test "
                 "across prompts", ci=(o.get("ci_low", float("nan")),
                                       o.get("ci_high", float("nan"))),
            n=o.get("n_a"))
        cats = summary.get("by_category") or {}
        if len(cats) > 1:
            head_cat = "; ".join(f"{c} {v['mean_b']:.3f} -> {v['mean_a']:.3f} (p = {_p(v['pvalue'])})"
                                 for c, v in cats.items())
            text = f"{head} Per category (base -> tuned): {head_cat}."
        else:
            text = head
        ctx.figure(sec, instruction_score_figure(res), "instruction_score", text, key=head)
    elif text:
        sec.findings.append(_finding(text, key=text))
    p = _example_prompt(ps, pair)
    if p is not None:

        def view() -> None:
            import torch

            with torch.enable_grad():
                ab = _call(A.attribute, pair.base, p, max_new_tokens=n_new,
                           model_name=pair.names["base"])
                at = _call(A.attribute, pair.tuned, p, max_new_tokens=n_new,
                           model_name=pair.names["tuned"])
            sec.views.append(importance_tokens(ab, at, tokenizer=pair.tokenizer))

        _try(ctx, sec, f"importance view of prompt {p.label}", view)


def _finding(text: str, key: str = "") -> Any:
    from shiftlens.report.core import Finding

    return Finding(text, "", key)


# ============================================================================= attention
def _run_attention(ctx: Any, sec: Section) -> None:
    A = importlib.import_module("shiftlens.attention")
    from shiftlens.viz.circuits import attention_patterns
    from shiftlens.viz.figures import head_delta_figure, lens_figure

    pair = ctx.pair
    ps = ctx.prompts_for("attention")
    sec.n_prompts["instruction_attention"] = len(ps)
    sec.note = "Instruction attention on " + ctx.limit_note("attention", len(ps)) + "."
    res = _call(A.instruction_attention, pair, ps, progress=ctx.progress, seed=ctx.seed)
    s = res.summary()
    sec.summaries["instruction_attention"] = s
    ctx.save_result(res, "attention")
    ctx.csv(sec, res.to_frame(), "segment_mass")
    if hasattr(res, "tests"):
        ctx.csv(sec, res.tests, "head_tests")
    im = s.get("instruction_mass", {})
    q = "response tokens" if s.get("query") == "response" else "the last prompt token"
    head = change_sentence(
        f"the share of attention that {q} put on the instruction (mean over all heads)",
        im.get("mean_b", float("nan")), im.get("mean_a", float("nan")), p=im.get("pvalue"),
        test="paired t-test across prompts", ci=(im.get("ci_low", float("nan")),
                                                  im.get("ci_high", float("nan"))),
        n=im.get("n_a"))
    if "n_heads_up_holm" in s and "n_heads" in s:
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
    else:
        text = head + " " + _sentence(s)
    ctx.figure(sec, head_delta_figure(res), "head_delta", text, key=head)
    groups = s.get("by_layer_group") or {}
    if groups:
        parts = []
        for g, v in groups.items():
            f = _digits(v["mean_b"], v["mean_a"], None)
            parts.append(f"{g}: {v['mean_b']:{f}} -> {v['mean_a']:{f}} (p = {_p(v['pvalue'])})")
        sec.findings.append(_finding(
            "Attention on the instruction per layer group (base -> tuned, paired t-test): "
            + "; ".join(parts) + "."))
    p = _example_prompt(ps, pair)
    if p is not None:
        tests = getattr(res, "tests", None)
        max_heads = int(ctx.options.get("view_heads", 8))
        heads = None
        if tests is not None and len(tests):
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
        vis = _try(ctx, sec, f"attention patterns of prompt {p.label}",
                   lambda: attention_patterns(pair, p, [layer], heads=heads))
        if vis is not None:
            vis.title += f" ({why})"
            sec.views.append(vis)
    if hasattr(A, "verb_shift"):
        n_words = int(ctx.options.get("verb_words", 5000))

        def verbs() -> None:
            vr = _call(A.verb_shift, pair, n_words=n_words, progress=ctx.progress, seed=ctx.seed)
            vs = vr.summary()
            sec.summaries["verb_shift"] = vs
            ctx.save_result(vr, "attention_verbs")
            ctx.csv(sec, vr.tests, "verb_tests")
            ctx.csv(sec, vr.verbs, "verb_fractions")
            allrow = vr.tests[vr.tests["group"] == "all"]
            text = _sentence(vs)
            if len(allrow):
                r = allrow.iloc[0]
                text = (f"Word pairs encoded by the heads' Q/K weights (Wu et al. §4): for "
                        f"{r.mean_instruction:.0%} of (head, instruction verb) cases whose "
                        f"pair count changed it rose, versus {r.mean_general:.0%} for general "
                        f"verbs (Welch t-test p = {r.p:.3g}, {int(r.n_instruction)} vs "
                        f"{int(r.n_general)} verbs). " + text)
            ctx.figure(sec, lens_figure(vr), "verb_shift", text)

        _try(ctx, sec, "verb shift", verbs)


# ============================================================================= ffn
def _run_ffn(ctx: Any, sec: Section) -> None:
    F = importlib.import_module("shiftlens.ffn")
    from shiftlens.viz.circuits import concept_table
    from shiftlens.viz.figures import concept_share_figure, rotation_figure

    pair = ctx.pair
    sec.note = "Weight-based: no prompts are used."
    cs = _try(ctx, sec, "concept shift", lambda: _call(
        F.concept_shift, pair, k=ctx.options.get("concept_k"), progress=ctx.progress))
    rot = _try(ctx, sec, "rotation", lambda: _call(
        F.rotation, pair, k=ctx.options.get("rotation_k"), progress=ctx.progress, seed=ctx.seed))
    if cs is not None:
        s = cs.summary()
        sec.summaries["concept_shift"] = s
        ctx.save_result(cs, "ffn_concepts")
        ctx.csv(sec, cs.to_frame(), "concepts")
        ctx.csv(sec, cs.stats(), "concept_stats")
        uo = (s.get("task") or {}).get("user-oriented") or {}
        head = change_sentence(
            "the share of user-oriented concepts (writing, coding, math, translation) among "
            "the explainable W_out principal components", uo.get("base_mean", float("nan")),
            uo.get("tuned_mean", float("nan")), p=uo.get("p"),
            test=f"Welch t-test across {uo.get('unit', 'components')}",
            ci=(uo.get("ci_low", float("nan")), uo.get("ci_high", float("nan"))), fmt=".3f")
        tasks = {k: v for k, v in (s.get("task") or {}).items()
                 if k not in ("user-oriented", "none") and v and v.get("diff") == v.get("diff")}
        detail = "; ".join(f"{k} {100 * v['base_mean']:.1f}% -> {100 * v['tuned_mean']:.1f}% "
                           f"(p = {_p(v.get('p'))})" for k, v in tasks.items())
        ctx.figure(sec, concept_share_figure(cs), "concept_shares",
                   f"{head} Per task: {detail}. Annotator: {s.get('annotator')}; k = "
                   f"{s.get('k')} components per layer; shares are over explainable "
                   "components, per layer group in the figure.", key=head)
    if rot is not None:
        s = rot.summary()
        sec.summaries["rotation"] = s
        ctx.save_result(rot, "ffn_rotation")
        ctx.csv(sec, rot.to_frame(), "rotation")
        ctx.csv(sec, rot.moved, "rotation_moved")
        key = (f"The W_out principal subspaces rotated most in layer {s['most_rotated_layer']} "
               f"(overlap {s['min_overlap']:.3f}, mean principal angle "
               f"{s['most_rotated_mean_angle_deg']:.1f} deg; 1 = unchanged, chance "
               f"{s['chance_overlap']:.3f}); mean overlap over layers {s['mean_overlap']:.3f}.")
        ctx.figure(sec, rotation_figure(rot), "rotation", _sentence(s), key=key)
    if cs is not None:
        layer = int(rot.summary()["most_rotated_layer"]) if rot is not None else int(
            cs.to_frame()["layer"].max())
        vis = _try(ctx, sec, "concept table", lambda: concept_table(
            cs, layer=layer, n_components=8, n_words=12,
            title=f"Top words of the first W_out principal components, layer {layer}"
                  + (" (the most rotated layer)" if rot is not None else "")))
        if vis is not None:
            sec.views.append(vis)


# ============================================================================= residual
def _run_residual(ctx: Any, sec: Section) -> None:
    R = importlib.import_module("shiftlens.residual")
    from shiftlens.viz.figures import lens_figure, similarity_figure

    pair = ctx.pair
    ps = ctx.prompts_for("residual")
    pp = ctx.prompts_for("patching")
    sec.note = ("Similarity and output shift on " + ctx.limit_note("residual", len(ps))
                + "; patching on " + ctx.limit_note("patching", len(pp)) + ".")

    def sim() -> None:
        res = _call(R.similarity, pair, ps, progress=ctx.progress, seed=ctx.seed)
        sec.n_prompts["similarity"] = len(ps)
        s = res.summary()
        sec.summaries["similarity"] = s
        ctx.save_result(res, "residual_similarity")
        ctx.csv(sec, res.table(), "similarity")
        lowest = s.get("lowest") or {}
        key = ""
        if lowest:
            key = (f"The residual streams of base and tuned (cosine similarity on identical "
                   f"tokens; 1 = unchanged) are least alike at "
                   f"blocks.{lowest['layer']}.hook_{lowest['hook']}: "
                   f"{lowest['cosine']:.3f} (95% CI [{lowest['cosine_ci'][0]:.3f}, "
                   f"{lowest['cosine_ci'][1]:.3f}], {len(ps)} prompts).")
        ctx.figure(sec, similarity_figure(res), "similarity", _sentence(s), key=key)

    def kl() -> None:
        res = _call(R.output_shift, pair, ps, progress=ctx.progress, seed=ctx.seed)
        sec.n_prompts["output_shift"] = len(ps)
        s = res.summary()
        sec.summaries["output_shift"] = s
        ctx.save_result(res, "residual_output_shift")
        ctx.csv(sec, res.table(), "output_kl")
        ctx.csv(sec, res.top_tokens, "rising_tokens")
        ctx.figure(sec, lens_figure(res), "output_kl", _sentence(s))

    def patch() -> None:
        comps = ctx.options.get("patching_components", ("resid_pre", "attn_out", "mlp_out"))
        res = _call(R.patching, pair, pp, components=tuple(comps), progress=ctx.progress,
                    seed=ctx.seed)
        sec.n_prompts["patching"] = len(pp)
        s = res.summary()
        sec.summaries["patching"] = s
        ctx.save_result(res, "residual_patching")
        ctx.csv(sec, res.table(), "patching")
        text = ("Cross-model activation patching (which layer carries the tuned behaviour): "
                + _sentence(s))
        ctx.figure(sec, lens_figure(res), "patching", text, key=text)

    _try(ctx, sec, "similarity", sim)
    _try(ctx, sec, "output shift", kl)
    _try(ctx, sec, "patching", patch)
