"""Lens 3's part of the report, and its small examples for the Result contract test.

:func:`section` runs :func:`~shiftlens.lenses.ffn.compare.concept_shift` and
:func:`~shiftlens.lenses.ffn.compare.rotation` on the report's pair (weights only: no prompt is
used) and turns the Results into findings, figures, CSV tables and a circuitsvis table of the
concept words. Both analyses share one :class:`~shiftlens.lenses.ffn.subspaces.ComponentCache`, so
each layer's PCA and each model's word directions are computed once. Report options (``build_report(options=...)``): ``concept_k`` (components per
layer annotated; default the lens default, ``min(300, rank)``) and ``rotation_k`` (subspace
dimension; lens default).
"""

from __future__ import annotations

from typing import Any

from shiftlens.lenses.registry import ReportContext, Section
from shiftlens.stats import fmt_number, test_label

__all__ = ["section", "examples"]

_NOTE = "Weight-based: no prompts are used."


def _concept_findings(ctx: ReportContext, sec: Section, cs: Any) -> None:
    from shiftlens.lenses.ffn.plots import concept_share_figure

    s = cs.summary()
    sec.summaries["concept_shift"] = s
    ctx.save_result(cs, "ffn_concepts")
    ctx.csv(sec, cs.to_frame(), "concepts")
    ctx.csv(sec, cs.stats(), "concept_stats")
    if s["n_excluded"]:
        ctx.csv(sec, cs.exclusions(), "concept_exclusions")
    head = s["headline"]
    tasks = {k: v for k, v in (s.get("task") or {}).items() if k not in ("user-oriented", "none")}
    detail = "; ".join(
        f"{k} {fmt_number(v['base_mean'], '.1%')} -> {fmt_number(v['tuned_mean'], '.1%')} "
        + (f"(p = {fmt_number(v.get('p'))})" if v.get("p") == v.get("p") else
           "(no test)" if v["diff"] == v["diff"] else "(no share)")
        for k, v in tasks.items())
    test = test_label("Welch t-test", s.get("alternative", "two-sided"))
    unit = ((s.get("task") or {}).get("user-oriented") or {}).get("unit", "components")
    text = (f"{head} Per task ({test} across {unit}, tuned vs base): {detail}. Annotator: "
            f"{s.get('annotator')}; k = {s.get('k')} components per layer; shares are over "
            "explainable components, per layer group in the figure.")
    if s["excluded_sentence"]:
        text += f" {s['excluded_sentence']}"
    ctx.figure(sec, concept_share_figure(cs), "concept_shares", text, key=head)


def _rotation_findings(ctx: ReportContext, sec: Section, rot: Any) -> None:
    from shiftlens.lenses.ffn.plots import rotation_figure

    s = rot.summary()
    sec.summaries["rotation"] = s
    ctx.save_result(rot, "ffn_rotation")
    ctx.csv(sec, rot.to_frame(), "rotation")
    ctx.csv(sec, rot.moved, "rotation_moved")
    key = (f"The W_out principal subspaces rotated most in layer {s['most_rotated_layer']} "
           f"(overlap {s['min_overlap']:.3f}, mean principal angle "
           f"{s['most_rotated_mean_angle_deg']:.1f} deg; 1 = unchanged, chance "
           f"{s['chance_overlap']:.3f}); mean overlap over layers {s['mean_overlap']:.3f}.")
    ctx.figure(sec, rotation_figure(rot), "rotation", s["sentence"], key=key)


def section(ctx: ReportContext, sec: Section) -> None:
    """Fill the report's feed-forward section (see the module docstring).

    Each analysis runs through ``ctx.attempt``: a failure is recorded in ``sec`` and the
    other analyses still run.

    Args:
        ctx: The report's :class:`~shiftlens.lenses.registry.ReportContext`.
        sec: The section to fill.

    Example:
        >>> get_lens("ffn").run_section()(ctx, sec)  # doctest: +SKIP
    """
    from shiftlens.lenses.ffn import compare
    from shiftlens.lenses.ffn.subspaces import ComponentCache
    from shiftlens.viz.circuits import concept_table

    pair = ctx.pair
    sec.note = _NOTE
    cache = ComponentCache()  # each layer's PCA and word directions once for both analyses
    cs = ctx.attempt(sec, "concept shift", lambda: compare.concept_shift(
        pair, k=ctx.options.get("concept_k"), progress=ctx.progress, cache=cache))
    rot = ctx.attempt(sec, "rotation", lambda: compare.rotation(
        pair, k=ctx.options.get("rotation_k"), progress=ctx.progress, seed=ctx.seed,
        cache=cache))
    if cs is not None:
        _concept_findings(ctx, sec, cs)
    if rot is not None:
        _rotation_findings(ctx, sec, rot)
    if cs is None:
        return
    layer = (int(rot.summary()["most_rotated_layer"]) if rot is not None
             else int(cs.to_frame()["layer"].max()))
    vis = ctx.attempt(sec, "concept table", lambda: concept_table(
        cs, layer=layer, n_components=8, n_words=12,
        title=f"Top words of the first W_out principal components, layer {layer}"
              + (" (the most rotated layer)" if rot is not None else "")))
    if vis is not None:
        sec.views.append(vis)


def examples(pair: Any, prompts: Any = None) -> list[Any]:
    """One small instance of each Result class of the lens, computed on ``pair`` (seconds).

    Used by the Result contract test (``tests/unit/test_contract.py``). ``prompts`` is unused: the
    lens reads weights only.

    Args:
        pair: A (tiny) :class:`shiftlens.ModelPair`.
        prompts: Ignored.

    Returns:
        ``[ConceptShiftResult, RotationResult]``.

    Example:
        >>> [type(r).__name__ for r in examples(pair)]  # doctest: +SKIP
        ['ConceptShiftResult', 'RotationResult']
    """
    from shiftlens.lenses.ffn.compare import concept_shift, rotation
    from shiftlens.vocab import default_vocab

    vocab = default_vocab(pair.tokenizer, 500)
    k = max(1, min(4, pair.cfg.d_model // 4, pair.cfg.d_mlp - 1))
    return [
        concept_shift(pair, k=k, top_words=10, vocab=vocab, progress=False),
        rotation(pair, k, vocab=vocab, top_words=5, n_moved=2, progress=False),
    ]
