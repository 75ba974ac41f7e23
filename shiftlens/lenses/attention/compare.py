"""Lens 2, a pair: which heads read the instruction more, and did heads gain verb pairs?

Both comparisons of Wu et al. (2024, §4) between a base model and its instruction-tuned twin,
each in three steps, **validate** (arguments and prompts, before any model runs), **accumulate**
(the one-model functions of :mod:`shiftlens.lenses.attention.core` on both models) and
**assemble** (statistics and the Result):

* :func:`instruction_attention`: attention mass on each prompt segment per layer and head in
  both models, with a paired t-test per head across prompts on the instruction mass and Holm /
  Benjamini-Hochberg adjusted p-values (the activation view; not in the paper, it shares its
  prompt segmentation).
* :func:`verb_shift`: the paper's Table 3 protocol: per head, how often each verb occurs in the
  head's QK word pairs in base and in tuned; per layer group the fraction of heads where the
  count rose (ties ignored), instruction verbs against general verbs with a Welch t-test.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.checks import (
    check_choice,
    check_device,
    check_int,
    check_layers,
    check_prompts,
    check_vocab,
    prompt_id,
)
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.lenses.attention.core import (
    DEFAULT_WORDS,
    QUERIES,
    check_flag,
    check_pair,
    check_words,
    general_verbs,
    instruction_verbs,
    nonfinite_cells,
    nonfinite_message,
    segment_attention,
)
from shiftlens.lenses.attention.filters import FilterSpec, bind_filter, filter_reason
from shiftlens.lenses.attention.qk import (
    _check_sizes,
    _layer_weights,
    check_finite_words,
    pair_word_counts,
    scope,
    word_embeddings,
    word_pairs,
)
from shiftlens.lenses.attention.results import ROLES, InstructionAttentionResult, VerbShiftResult
from shiftlens.lenses.attention.scores import (
    allowed_fn,
    check_k,
    n_removed,
    pair_similarity,
    scan_topk,
    top_filter_note,
)
from shiftlens.prompts import INSTRUCTION, SEGMENTS, InstructionPrompt, default_prompts
from shiftlens.result import make_meta
from shiftlens.stats import layer_groups, p_adjust, paired_test, welch_test
from shiftlens.weights import WordVocab

__all__ = ["instruction_attention", "head_tests", "verb_shift", "pair_diff", "drop_nonfinite"]

ALTERNATIVES = ("two-sided", "greater", "less")


# ============================================================================ instruction attention
def _split_by_instruction(pair: Any, prompts: list[InstructionPrompt]
                          ) -> tuple[list[InstructionPrompt], list[str], list[str]]:
    """The prompts with instruction tokens (and their ids), and the ids of the others."""
    kept: list[InstructionPrompt] = []
    ids: list[str] = []
    excluded: list[str] = []
    for i, p in enumerate(prompts):
        if bool(pair.tokenize(p).mask("instruction").any()):
            kept.append(p)
            ids.append(prompt_id(p, i))
        else:
            excluded.append(prompt_id(p, i))
    if not kept:
        raise ShiftlensError(
            f"instruction_attention: none of the {len(prompts)} prompts has instruction tokens "
            f"(give instruction spans; e.g. prompt {excluded[0]!r})")
    if excluded:
        n_ex = len(excluded)
        warnings.warn(
            f"{n_ex} of {len(prompts)} prompts have no instruction tokens and are excluded "
            f"from the averages: {excluded[:5]}{'...' if n_ex > 5 else ''}",
            ShiftlensWarning, stacklevel=3)
    return kept, ids, excluded


def head_tests(
    mass: Float[Tensor, "role prompt layer head segment"],
    layers: Sequence[int],
    *,
    alternative: str = "two-sided",
    ci: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """Per head, a paired t-test across prompts of the instruction mass, tuned vs base.

    Holm (family-wise) and Benjamini-Hochberg (false discovery rate) adjusted p-values are
    taken over all heads tested (:func:`shiftlens.stats.p_adjust`).

    Args:
        mass: ``[role, prompt, layer, head, segment]`` (role 0 base, 1 tuned).
        layers: The layer index of each ``layer`` row.
        alternative: Alternative of the tests (``"greater"``: tuned > base).
        ci: Bootstrap CIs of the mean differences.
        seed: Bootstrap seed.

    Returns:
        One row per head: ``rank, layer, head, base, tuned, delta, t, p, df, ci_low, ci_high,
        n, p_holm, p_bh``, sorted by ``delta`` descending (``rank`` 0 = largest increase).

    Example:
        >>> m = torch.rand(2, 6, 1, 2, len(SEGMENTS))
        >>> head_tests(m, [0])[["rank", "layer", "head"]].shape
        (2, 3)
    """
    if not isinstance(mass, Tensor) or mass.dim() != 5 or mass.shape[0] != 2 \
            or mass.shape[4] != len(SEGMENTS) or not mass.is_floating_point():
        shape = list(mass.shape) if isinstance(mass, Tensor) else type(mass).__name__
        raise ShiftlensError(f"head_tests: mass must be a float tensor [2, prompt, layer, head, "
                             f"{len(SEGMENTS)}] (role 0 base, 1 tuned), got {shape}")
    if isinstance(layers, (str, bytes)) or not isinstance(layers, (Sequence, np.ndarray, range)) \
            or len(layers) != mass.shape[2] or not all(
                isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in layers):
        raise ShiftlensError(f"head_tests: layers must list the {mass.shape[2]} layer indices of "
                             f"the mass, got {layers!r}")
    if mass.shape[1] < 1:
        raise ShiftlensError("head_tests: no prompts in mass")
    check_choice("alternative", alternative, ALTERNATIVES)
    ci = check_flag("ci", ci)
    seed = check_int("seed", seed)
    bad = ~torch.isfinite(mass)
    if bool(bad.any()):
        r, i, j, h, _ = (int(x) for x in bad.nonzero()[0])
        raise ShiftlensError(
            f"head_tests: mass holds {int(bad.sum())} non-finite values (first: {ROLES[r]}, "
            f"prompt {i}, layer {layers[j]}, head {h}); the tests never drop values silently: "
            "exclude those prompts first (instruction_attention does, and records them)")
    ins = mass[..., INSTRUCTION].double().cpu().numpy()  # [role, prompt, layer, head]
    rows = []
    for j, layer in enumerate(layers):
        for h in range(ins.shape[3]):
            r = paired_test(ins[1, :, j, h], ins[0, :, j, h], alternative=alternative, ci=ci,
                            seed=seed)
            rows.append({
                "layer": int(layer), "head": h, "base": r.mean_b, "tuned": r.mean_a,
                "delta": r.diff, "t": r.statistic, "p": r.pvalue, "df": r.df,
                "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n_a,
            })
    df = pd.DataFrame(rows)
    df["p_holm"] = p_adjust(df["p"].to_numpy(), "holm")
    df["p_bh"] = p_adjust(df["p"].to_numpy(), "bh")
    df = df.sort_values(["delta", "layer", "head"], ascending=[False, True, True],
                        kind="stable").reset_index(drop=True)
    df.insert(0, "rank", np.arange(len(df)))
    return df


def instruction_attention(
    pair: Any,
    prompts: Sequence[InstructionPrompt] | None = None,
    query: str = "response",
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    alternative: str = "two-sided",
    ci: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> InstructionAttentionResult:
    """Which heads look at the instruction more after tuning (the activation view).

    For every layer and head of both models, the attention mass that the query positions put
    on the instruction, context, template, BOS and response tokens
    (:func:`~shiftlens.lenses.attention.core.segment_attention`), per prompt; then per head a
    paired t-test across prompts of the instruction mass (tuned vs base) with Holm and
    Benjamini-Hochberg adjusted p-values over all heads (:func:`head_tests`).

    Prompts without instruction tokens are excluded from the averages (their ids are in
    ``result.excluded``; a :class:`ShiftlensWarning` says how many). Prompts whose attention
    mass is NaN or infinite in either model (weights edited after loading, an fp16 overflow)
    are excluded too, and recorded: ``result.nonfinite`` names the model, prompt and layers,
    the summary and its sentence count them, a :class:`ShiftlensWarning` says so; when no
    prompt is left, a :class:`ShiftlensError` names the model, the first prompt and layer.
    No statistic is ever computed over silently dropped values. With ``query="response"``,
    prompts without a reference use their last prompt token (``result.fallback_last``).

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts: Instruction prompts (default: :func:`shiftlens.prompts.default_prompts`).
        query: ``"response"`` (reference-response tokens) or ``"last"`` (last prompt token).
        layers: Layers to analyse (default all).
        batch_size: Prompts per forward pass.
        alternative: Alternative of the per-head paired tests (``"greater"``: tuned > base).
        ci: Compute bootstrap CIs of the per-head differences.
        seed: Bootstrap seed (recorded).
        progress: Show progress bars.

    Returns:
        An :class:`~shiftlens.lenses.attention.results.InstructionAttentionResult`.

    Raises:
        ShiftlensError: no prompts, every prompt lacks instruction tokens, a layer out of
            range, an unknown query or alternative, a bad ``batch_size``, ``ci``, ``seed`` or
            ``progress``, every prompt's attention non-finite in a model.

    Example:
        >>> res = instruction_attention(pair, default_prompts()[:8])  # doctest: +SKIP
        >>> res.ranking().head(3)  # doctest: +SKIP
    """
    # validate
    check_pair(pair, "instruction_attention")
    prompts = list(default_prompts()) if prompts is None else check_prompts(
        prompts, who="instruction_attention")
    check_choice("query", query, QUERIES)
    check_choice("alternative", alternative, ALTERNATIVES)
    seed = check_int("seed", seed)
    ci = check_flag("ci", ci)
    progress = check_flag("progress", progress)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    sel = sorted(check_layers(pair.base, layers))
    kept, ids, excluded = _split_by_instruction(pair, prompts)
    # accumulate
    sa = {role: segment_attention(model, kept, query, layers=sel, batch_size=batch_size,
                                  progress=progress, nonfinite="keep") for role, model in pair}
    mass = torch.stack([sa["base"].mass, sa["tuned"].mass])
    # assemble
    mass, ids, used_last, cells = drop_nonfinite(mass, ids, sa["base"].used_last, sel,
                                                 dict(pair.names))
    meta = make_meta(pair, seed=seed, params={
        "query": query, "layers": None if layers is None else sel, "alternative": alternative,
        "ci": bool(ci)}, n_layers=int(pair.cfg.n_layers), segments=list(SEGMENTS))
    return InstructionAttentionResult(
        mass=mass, layers=sel, prompt_ids=ids, used_last=used_last,
        excluded=excluded, tests=head_tests(mass, sel, alternative=alternative, ci=ci, seed=seed),
        nonfinite=cells, meta=meta)


def drop_nonfinite(
    mass: Float[Tensor, "role prompt layer head segment"],
    prompt_ids: Sequence[str],
    used_last: Sequence[bool],
    layers: Sequence[int],
    names: dict[str, str],
    *,
    who: str = "instruction_attention",
) -> tuple[Tensor, list[str], list[bool], pd.DataFrame]:
    """Exclude, and record, the prompts whose mass is NaN or infinite in either model.

    Args:
        mass: ``[role, prompt, layer, head, segment]`` of both models.
        prompt_ids, used_last: Per prompt of ``mass``.
        layers: The layer index of each ``layer`` row.
        names: ``{"base": name, "tuned": name}``.
        who: The function named in messages.

    Returns:
        ``(mass, prompt_ids, used_last)`` of the prompts kept and the record of the others:
        one row per (prompt, model, layer) with a non-finite mass (columns
        :data:`~shiftlens.lenses.attention.core.NONFINITE_COLUMNS`). A
        :class:`ShiftlensWarning` says what was excluded.

    Raises:
        ShiftlensError: no prompt is left (naming the model, the first prompt and layer).

    Example:
        >>> m = torch.rand(2, 3, 1, 2, len(SEGMENTS)); m[1, 2, 0, 1, 0] = float("nan")
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     _, ids, _, cells = drop_nonfinite(m, ["a", "b", "c"], [False] * 3, [0],
        ...                                       {"base": "b", "tuned": "t"})
        >>> ids, cells["id"].tolist()
        (['a', 'b'], ['c'])
    """
    cells = pd.concat([nonfinite_cells(mass[r], list(prompt_ids), list(layers), role,
                                       names.get(role, role))
                       for r, role in enumerate(ROLES)], ignore_index=True)
    cells = cells.astype({"layer": np.int64, "heads": np.int64})
    if not len(cells):
        return mass, list(prompt_ids), list(used_last), cells
    n = len(prompt_ids)
    bad = (~torch.isfinite(mass)).flatten(2).any(-1).any(0)  # per prompt (ids may repeat)
    n_bad = int(bad.sum())
    if n_bad == n:
        raise ShiftlensError(nonfinite_message(cells, n, who, n_bad=n_bad)
                             + " No prompt is left to compare.")
    keep = (~bad).nonzero().flatten().tolist()
    warnings.warn(f"{who}: {n_bad} of {n} prompts excluded from every average and test: "
                  + nonfinite_message(cells, n, n_bad=n_bad).split(": ", 1)[1], ShiftlensWarning,
                  stacklevel=3)
    return (mass[:, keep], [prompt_ids[i] for i in keep], [bool(used_last[i]) for i in keep],
            cells)


# ============================================================================ verb shift
@dataclass
class _VerbPlan:
    """What verb_shift counts, once validated: the vocabulary, the verbs, the layers."""

    vocab: WordVocab
    instruction: list[str]  # encodable instruction verbs
    general: list[str]  # encodable general verbs
    missing: list[str]  # verbs the tokenizer cannot encode
    layers: list[int]

    @property
    def verbs(self) -> list[str]:
        return self.instruction + self.general

    @property
    def verb_set(self) -> dict[str, str]:
        return {w: "instruction" for w in self.instruction} | {w: "general" for w in self.general}


def _extend_vocab(vocab: WordVocab, words: Sequence[str], tokenizer: Any) -> WordVocab:
    have = set(vocab.words)
    missing = [w for w in dict.fromkeys(words) if w not in have]
    if not missing:
        return vocab
    try:
        extra = WordVocab.build(tokenizer, missing, max_tokens=3)
    except ShiftlensError:  # none encodable
        return WordVocab(list(vocab.words), [list(t) for t in vocab.token_ids],
                         list(vocab.skipped) + missing)
    return WordVocab(list(vocab.words) + extra.words,
                     [list(t) for t in vocab.token_ids] + extra.token_ids,
                     list(vocab.skipped) + extra.skipped)


def _plan_verbs(pair: Any, vocab: WordVocab | None, instruction: Sequence[str] | None,
                general: Sequence[str] | None, n_words: int, layers: Sequence[int] | None
                ) -> _VerbPlan:
    """Validate: disjoint, non-empty verb sets; a vocabulary holding the encodable verbs."""
    ins = list(dict.fromkeys(instruction_verbs() if instruction is None else check_words(
        "instruction", instruction, who="verb_shift")))
    gen = list(dict.fromkeys(general_verbs() if general is None else check_words(
        "general", general, who="verb_shift")))
    overlap = sorted(set(ins) & set(gen))
    if overlap:
        raise ShiftlensError(f"verb_shift: verbs in both sets: {overlap[:10]}")
    if not ins or not gen:
        raise ShiftlensError("verb_shift: both verb sets must be non-empty")
    tok = pair.tokenizer
    if vocab is None:
        from shiftlens.vocab import default_vocab

        vocab = default_vocab(tok, check_int("n_words", n_words, minimum=1), extra=ins + gen)
    else:
        check_vocab(vocab, pair.base)
        vocab = _extend_vocab(vocab, ins + gen, tok)
    check_vocab(vocab, pair.base)
    have = set(vocab.words)
    plan = _VerbPlan(vocab, [w for w in ins if w in have], [w for w in gen if w in have],
                     [w for w in ins + gen if w not in have], sorted(check_layers(pair.base, layers)))
    for label, ok in (("instruction", plan.instruction), ("general", plan.general)):
        if not ok:
            raise ShiftlensError(
                f"verb_shift: none of the {label} verbs can be encoded by the tokenizer of "
                f"{pair.names['base']!r}")
    return plan


def _verb_counts(pairs: dict[str, pd.DataFrame], plan: _VerbPlan, group_of: list[str],
                 n_heads: int, min_dims: int) -> pd.DataFrame:
    """Accumulate: per (layer, head, verb) the verb's pair count in base and in tuned."""
    grid = pd.MultiIndex.from_product([plan.layers, range(n_heads), plan.verbs],
                                      names=["layer", "head", "word"]).to_frame(index=False)
    for role in ROLES:
        c = pair_word_counts(pairs[role], plan.verbs, min_dims=min_dims)
        grid = grid.merge(c.rename(columns={"count": role}), on=["layer", "head", "word"],
                          how="left")
        grid[role] = grid[role].fillna(0).astype(np.int64)
    grid = grid.rename(columns={"word": "verb"})
    grid.insert(2, "group", [group_of[layer] for layer in grid["layer"]])
    grid.insert(3, "verb_set", grid["verb"].map(plan.verb_set))
    return grid


def _verb_fractions(counts: pd.DataFrame, plan: _VerbPlan, groups: list[str]) -> pd.DataFrame:
    """Assemble: per group and verb, heads where the count rose / fell / tied."""
    vset = plan.verb_set
    rows = []
    for g in groups:
        sub = counts if g == "all" else counts[counts.group == g]
        for v in plan.verbs:
            s = sub[sub.verb == v]
            rose = int((s.tuned > s.base).sum())
            fell = int((s.tuned < s.base).sum())
            ties = int((s.tuned == s.base).sum())
            rows.append({"group": g, "verb_set": vset[v], "verb": v, "n_heads": len(s),
                         "rose": rose, "fell": fell, "ties": ties,
                         "fraction_rose": rose / (rose + fell) if rose + fell else float("nan")})
    return pd.DataFrame(rows)


def _verb_tests(verbs: pd.DataFrame, groups: list[str], alternative: str, seed: int
                ) -> pd.DataFrame:
    """Assemble: per group, Welch's t-test of the instruction against the general fractions."""
    rows = []
    for g in groups:
        s = verbs[verbs.group == g]
        a = s[s.verb_set == "instruction"].fraction_rose.to_numpy(dtype=float)
        b = s[s.verb_set == "general"].fraction_rose.to_numpy(dtype=float)
        with warnings.catch_warnings():  # scipy warns when a set's fractions are all equal
            warnings.filterwarnings("ignore", message="Precision loss", category=RuntimeWarning)
            r = welch_test(a, b, alternative=alternative, seed=seed)
        a_ok, b_ok = a[np.isfinite(a)], b[np.isfinite(b)]
        rows.append({
            "group": g, "mean_instruction": r.mean_a, "mean_general": r.mean_b, "diff": r.diff,
            "sd_instruction": float(a_ok.std()) if a_ok.size else float("nan"),
            "sd_general": float(b_ok.std()) if b_ok.size else float("nan"),
            "n_instruction": r.n_a, "n_general": r.n_b, "t": r.statistic, "p": r.pvalue,
            "df": r.df, "ci_low": r.ci_low, "ci_high": r.ci_high,
        })
    return pd.DataFrame(rows)


@torch.no_grad()
def verb_shift(
    pair: Any,
    vocab: WordVocab | None = None,
    *,
    instruction: Sequence[str] | None = None,
    general: Sequence[str] | None = None,
    n_words: int = 5000,
    layers: Sequence[int] | None = None,
    top_dims: int | None = 10,
    top_k: int = 50,
    filter: FilterSpec = "embedding",
    min_dims: int = 1,
    exclude_self: bool = True,
    group_names: Sequence[str] = ("lower", "middle", "upper"),
    alternative: str = "two-sided",
    seed: int = 0,
    keep_pairs: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> VerbShiftResult:
    """Table 3 of Wu et al. (2024, §4): do heads gain word pairs with instruction verbs?

    For each head, each verb's number of word pairs
    (:func:`~shiftlens.lenses.attention.qk.word_pairs`,
    :func:`~shiftlens.lenses.attention.qk.pair_word_counts`) in base and in tuned; per layer
    group (the paper's lower/middle/upper thirds, :func:`shiftlens.stats.layer_groups`) and
    verb, the fraction of heads where the count rose among heads where it changed (ties
    ignored); then per group a Welch t-test between the fractions of the instruction verbs and
    of the general verbs.

    The relatedness filter is bound once, to the base model (so a pair's relatedness is the
    same in both models); each model projects its own embeddings through its own W_Q/W_K.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        vocab: Word vocabulary (default :func:`shiftlens.vocab.default_vocab` with ``n_words``
            words). The verbs are added when missing; verbs the tokenizer cannot encode are
            listed in ``meta["missing_verbs"]``.
        instruction: Instruction verbs (default
            :func:`~shiftlens.lenses.attention.core.instruction_verbs`).
        general: General verbs (default
            :func:`~shiftlens.lenses.attention.core.general_verbs`); must not overlap.
        n_words: Size of the default vocabulary.
        layers: Layers to analyse (default all).
        top_dims, top_k, filter, exclude_self, device: As in
            :func:`~shiftlens.lenses.attention.qk.word_pairs`.
        min_dims: See :func:`~shiftlens.lenses.attention.qk.pair_word_counts`.
        group_names: Layer-group names (their number sets the number of groups).
        alternative: Alternative of the Welch tests (instruction vs general).
        seed: Bootstrap seed of the tests (recorded).
        keep_pairs: Keep every pair of both models in ``result.pairs``.
        progress: Progress bars.

    Returns:
        A :class:`~shiftlens.lenses.attention.results.VerbShiftResult`.

    Raises:
        ShiftlensError: the verb sets overlap, a set has no encodable verb, empty vocabulary,
            a layer out of range.

    Example:
        >>> res = verb_shift(pair)  # doctest: +SKIP
        >>> res.tests  # doctest: +SKIP
    """
    # validate
    check_pair(pair, "verb_shift")
    check_choice("alternative", alternative, ALTERNATIVES)
    seed, min_dims = check_int("seed", seed), check_int("min_dims", min_dims, minimum=1)
    n_words = check_int("n_words", n_words, minimum=1)
    _check_sizes(top_dims, top_k)
    exclude_self = check_flag("exclude_self", exclude_self)
    keep_pairs = check_flag("keep_pairs", keep_pairs)
    progress = check_flag("progress", progress)
    group_names = _check_groups(group_names)
    check_device(device, pair.base)
    plan = _plan_verbs(pair, vocab, instruction, general, n_words, layers)
    for _, model in pair:  # named errors before the filter is bound
        check_finite_words(model, word_embeddings(model, plan.vocab), plan.vocab)
    bound, fname = bind_filter(filter, pair.base, plan.vocab)
    # accumulate
    pairs, funnel = {}, []
    for role, model in pair:
        df = word_pairs(model, plan.layers, None, plan.vocab, top_dims=top_dims, top_k=top_k,
                        filter=None, bound_filter=bound, exclude_self=exclude_self, device=device,
                        progress=progress)
        funnel.extend({"role": role, **f} for f in df.attrs["funnel"])
        used = {"top_dims_used": df.attrs["top_dims_used"], "top_k_used": df.attrs["top_k_used"]}
        df.insert(0, "role", role)
        pairs[role] = df
    group_of = layer_groups(pair.cfg.n_layers, tuple(group_names))
    counts = _verb_counts(pairs, plan, group_of, int(pair.cfg.n_heads), min_dims)
    # assemble
    groups = list(dict.fromkeys(group_of[layer] for layer in plan.layers)) + ["all"]
    verbs = _verb_fractions(counts, plan, groups)
    meta = make_meta(pair, seed=seed, params={
        "n_words": n_words if vocab is None else None, "layers": plan.layers,
        "top_dims": top_dims, "top_k": top_k, "filter": fname, "filter_model": "base",
        "min_dims": min_dims, "exclude_self": exclude_self, "group_names": list(group_names),
        "alternative": alternative, "keep_pairs": keep_pairs},
        n_words=len(plan.vocab), n_skipped_words=len(plan.vocab.skipped),
        missing_verbs=plan.missing, instruction_verbs=plan.instruction,
        general_verbs=plan.general, n_layers=int(pair.cfg.n_layers), **used,
        filter_reason=filter_reason(bound, fname) if bound is not None else "")
    all_pairs = pd.concat([pairs["base"], pairs["tuned"]], ignore_index=True) if keep_pairs \
        else None
    if all_pairs is not None:
        all_pairs.attrs = {}
    return VerbShiftResult(counts=counts, verbs=verbs,
                           tests=_verb_tests(verbs, groups, alternative, seed), pairs=all_pairs,
                           funnel=pd.DataFrame(funnel, columns=list(FUNNEL_COLUMNS)), meta=meta)


FUNNEL_COLUMNS = ("role", "layer", "head", "candidates", "self", "opposite_sign", "unrelated",
                  "kept")


def _check_groups(names: Any) -> list[str]:
    out = check_words("group_names", names, who="verb_shift")
    if not out or any(not g for g in out) or len(set(out)) != len(out) or "all" in out:
        raise ShiftlensError(f"verb_shift: group_names must be distinct non-empty names (not "
                             f"'all', the name of every layer together), got {names!r}")
    return out


# ============================================================================ pair diff
@torch.no_grad()
def pair_diff(
    pair: Any,
    layer: int | Sequence[int] | None = None,
    head: int | Sequence[int] | None = None,
    vocab: WordVocab | None = None,
    *,
    k: int = 20,
    filter: FilterSpec = "embedding",
    exclude_self: bool = True,
    fold_norm: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Per head, the word pairs whose full QK score tuning raised most, and lowered most.

    For every (query word, key word) pair of the vocabulary and every selected head, the full
    bilinear score ``x_a^T W_Q W_K^T x_b``
    (:func:`~shiftlens.lenses.attention.scores.qk_scores`) in base and in tuned, each model
    with its own embeddings and norm-folded weights; ``delta = tuned - base``. The ``k`` pairs
    with the largest positive delta are the head's **gained** pairs, the ``k`` with the most
    negative delta its **lost** pairs (a chunked scan of all ``n_words**2`` pairs). The
    relatedness filter is bound once, to the base model (as in
    :func:`verb_shift`); how many of the head's ``k`` largest gains and losses it removed is
    reported per head (``attrs["funnel"]``) and in one sentence (``attrs["filter_note"]``).

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        layer: A layer index, a list of them, or None for every layer.
        head: A query head index, a list of them, or None for every head.
        vocab: Word vocabulary (default :func:`shiftlens.vocab.default_vocab`, 5,000 words).
        k: Gained and lost pairs per head.
        filter: ``"embedding"`` (bound to base), None or a
            :class:`~shiftlens.lenses.attention.filters.PairFilter`.
        exclude_self: Leave out pairs of a word with itself.
        fold_norm: Fold the attention-input norms' gamma (as the lens does).
        device: Where the scan runs (default: the base model's input device).
        progress: Progress bar over layers.

    Returns:
        One row per (head, change, rank): ``layer, head, change`` (``"gained"`` /
        ``"lost"``), ``rank`` (0 = largest change), ``q_word, k_word, base, tuned, delta,
        similarity, q_index, k_index``; only pairs whose score changed in that direction.
        ``attrs``: ``models``, ``filter``, ``filter_model`` (``"base"``), ``n_words``,
        ``n_skipped_words``, ``k``, ``funnel`` (per head ``gained_removed``,
        ``lost_removed``), ``n_removed``, ``filter_reason``, ``filter_note``.

    Raises:
        ShiftlensError: not a pair, layer or head out of range, bad ``k``, flags, device,
            vocabulary or filter, NaN or infinite word vectors or weights of an analysed head.

    Example:
        >>> d = pair_diff(pair, 1, 2, vocab, k=10)  # doctest: +SKIP
        >>> d[d.change == "gained"].head(3)[["q_word", "k_word", "base", "tuned"]]  # doctest: +SKIP
    """
    # validate
    check_pair(pair, "pair_diff")
    layers, heads = scope(pair.base, layer, head)
    k = check_k(k)
    exclude_self = check_flag("exclude_self", exclude_self)
    fold_norm = check_flag("fold_norm", fold_norm)
    progress = check_flag("progress", progress)
    dev = check_device(device, pair.base)
    if vocab is None:
        from shiftlens.vocab import default_vocab

        vocab = default_vocab(pair.tokenizer, DEFAULT_WORDS)
    check_vocab(vocab, pair.base)
    E = {}
    for role, model in pair:
        E[role] = word_embeddings(model, vocab)
        check_finite_words(model, E[role], vocab)
    bound, fname = bind_filter(filter, pair.base, vocab)
    if callable(getattr(bound, "to", None)):
        bound = bound.to(dev)
    n = len(vocab)
    allowed = allowed_fn(bound, n, dev)
    words = np.asarray(vocab.words, dtype=object)
    frames, funnel = [], []
    # accumulate
    for lay in tqdm(layers, desc="pair diff", disable=not progress or len(layers) == 1,
                    leave=False):
        QK = {}
        for role, model in pair:
            W_Q, W_K, km, hs = _layer_weights(model, lay, heads, fold_norm, dev)
            Er = E[role].to(dev)
            QK[role] = (torch.einsum("nd,hde->hne", Er, W_Q),
                        torch.einsum("nd,hde->hne", Er, W_K)[km])
        (Qb, Kb), (Qt, Kt) = QK["base"], QK["tuned"]

        def delta(s: int, e: int, Qb: Tensor = Qb, Kb: Tensor = Kb, Qt: Tensor = Qt,
                  Kt: Tensor = Kt) -> Tensor:
            return Qt[:, s:e] @ Kt.transpose(1, 2) - Qb[:, s:e] @ Kb.transpose(1, 2)

        res = scan_topk(delta, n, len(hs), k, allowed=allowed, exclude_self=exclude_self,
                        ends=(1, -1), device=dev)
        removed = {end: n_removed(res[end], bound, n).tolist() for end in (1, -1)}
        # assemble
        for end, change in ((1, "gained"), (-1, "lost")):
            frames.append(_diff_frame(res[end], change, lay, hs, n, words, bound, QK))
        funnel.extend({"layer": int(lay), "head": int(h), "k": k,
                       "gained_removed": int(removed[1][i]), "lost_removed": int(removed[-1][i])}
                      for i, h in enumerate(hs))
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values(["layer", "head", "change", "rank"], key=lambda c: c.map(
        {"gained": 0, "lost": 1}) if c.name == "change" else c, kind="stable").reset_index(
        drop=True)
    reason = filter_reason(bound, fname) if bound is not None else ""
    total = sum(f["gained_removed"] + f["lost_removed"] for f in funnel)
    df.attrs.update({
        "models": dict(pair.names), "filter": fname, "filter_model": "base",
        "n_words": len(vocab), "n_skipped_words": len(vocab.skipped), "k": k, "funnel": funnel,
        "n_removed": total, "filter_reason": reason,
        "filter_note": top_filter_note(fname, reason, total, len(funnel), 2 * k,
                                       "largest gained and lost")
        + " Pairs whose score did not change in a direction are not listed.",
    })
    return df


def _diff_frame(res: dict[str, Tensor], change: str, layer: int, heads: list[int], n: int,
                words: np.ndarray, bound: Any, QK: dict[str, tuple[Tensor, Tensor]]
                ) -> pd.DataFrame:
    idx, val = res["index"], res["value"]
    ok = (idx >= 0) & ((val > 0) if change == "gained" else (val < 0))
    h, r = ok.nonzero(as_tuple=True)
    flat = idx[h, r]
    a, b = flat // n, flat % n
    score = {role: (Q[h, a] * K[h, b]).sum(-1).float().cpu().numpy()
             for role, (Q, K) in QK.items()}
    ac, bc = a.cpu().numpy(), b.cpu().numpy()
    return pd.DataFrame({
        "layer": np.full(len(ac), layer, dtype=np.int64),
        "head": np.asarray(heads, dtype=np.int64)[h.cpu().numpy()],
        "change": pd.Series([change] * len(ac), dtype="str"),
        "rank": r.cpu().numpy().astype(np.int64),
        "q_word": words[ac],
        "k_word": words[bc],
        "base": score["base"],
        "tuned": score["tuned"],
        "delta": val[h, r].float().cpu().numpy(),
        "similarity": pair_similarity(bound, a, b),
        "q_index": ac.astype(np.int64),
        "k_index": bc.astype(np.int64),
    })
