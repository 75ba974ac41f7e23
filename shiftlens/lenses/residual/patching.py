"""Cross-model activation patching: where in depth does the tuned behaviour live?

Layer (2) of the residual lens (with :mod:`.compare`): :func:`patching` runs one model of a
:class:`shiftlens.ModelPair` with one site's activation replaced by the other model's, in the
lens's three steps - validate (the pair, prompts and every argument, before any forward pass),
accumulate (batch by batch: both clean runs, checked finite, then one patched run per direction
and site), assemble (the :class:`~.results.PatchingResult`, with the tuned-vs-base gap tested
two-sided by default).

Devices: the two models may live on different devices (one GPU each) and a dispatched model's
layers on several: each patched activation is moved to the device of the activation it
replaces (:func:`.core.replace_hook`); dtypes must match (nothing is converted silently).

Not in Wu et al. (2024): activation patching (Meng et al., 2022) applied to the base/tuned frame.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.checks import check_choice, check_float, check_int, pad_token_id, prompt_id
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.generate import greedy_batch
from shiftlens.lenses.residual.common import (
    NonFinite,
    _batches,
    _common,
    _names,
    _padded,
    check_rows,
    nonfinite_error,
)
from shiftlens.lenses.residual.core import (
    BLOCK_ORDER,
    COMPONENTS,
    DIRECTIONS,
    hook_name,
    hooked_forward,
    replace_hook,
    response_logprob,
)
from shiftlens.lenses.residual.results import ALTERNATIVES, PatchingResult
from shiftlens.prompts import RESPONSE, SEGMENTS, InstructionPrompt, TokenizedPrompt
from shiftlens.result import make_meta

__all__ = ["patching"]

Positions = Union[str, int, Sequence[Union[str, int]]]

#: For each direction: (the model that is run, the model whose activations are patched in).
_ROLES = {"tuned->base": ("base", "tuned"), "base->tuned": ("tuned", "base")}


@dataclass
class _PatchPlan:
    layers: list[int]
    components: list[str]
    directions: list[str]
    sites: dict[tuple[int, str], str]  # (layer, component) -> TL hook name
    tps: list[TokenizedPrompt]  # prompt + response
    masks: list[Tensor]  # positions patched per prompt (bool [pos])
    ids: list[str]


def patching(
    pair: Any,
    prompts: Sequence[InstructionPrompt],
    *,
    components: Sequence[str] = ("resid_pre", "attn_out", "mlp_out", "resid_post"),
    layers: Sequence[int] | None = None,
    positions: Positions = "all",
    response: str | Sequence[str] = "greedy",
    max_new_tokens: int = 16,
    directions: Sequence[str] = DIRECTIONS,
    batch_size: int = 8,
    min_gap: float = 1e-4,
    alternative: str = "two-sided",
    n_boot: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> PatchingResult:
    """Cross-model activation patching: where in depth does the tuned behaviour live?

    For every prompt the tuned model's response (its greedy continuation, the prompt's
    reference, or given strings) is appended and scored, teacher-forced, by both models:
    ``lp_base`` and ``lp_tuned`` (summed log-probabilities). Then, for each layer and
    component, the base model is run on the same tokens while that component's activation at
    the chosen positions is replaced by the tuned model's (direction ``"tuned->base"``), and
    ``(lp_patched - lp_base) / (lp_tuned - lp_base)`` is recorded; ``"base->tuned"`` runs the
    tuned model with base activations and records ``(lp_patched - lp_tuned) / (lp_base -
    lp_tuned)``.

    Whether there is a gap to recover at all is tested over prompts (a paired t-test of
    ``lp_tuned`` against ``lp_base``, two-sided unless ``alternative`` says otherwise); when the
    gap's bootstrap 95% CI includes 0 a :class:`ShiftlensWarning` says so and the summary's
    sentence says the gap is not reliably non-zero (a recovered fraction of a gap that may be
    zero means little, however tight its own CI).

    What is guaranteed: with ``positions="all"``, patching ``resid_post`` of layer ``l``
    equals patching ``resid_pre`` of layer ``l + 1``; patching ``resid_pre`` of layer ``l``
    recovers exactly 100% when the models differ only below layer ``l`` (e.g. only in the
    embeddings for ``l = 0``), and patching the last layer's ``resid_post`` recovers exactly
    100% when their final norm and unembedding are equal - otherwise it measures how the
    *base* head reads the tuned residual stream, which can differ from 100%.

    Args:
        pair: A :class:`shiftlens.ModelPair` (architecture- and tokenizer-compatible).
        prompts: Instruction prompts (without the response; it is appended).
        components: Any of ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"``,
            ``"mlp_out"`` (TL hooks ``blocks.{l}.hook_*``).
        layers: Layers to patch (default all).
        positions: ``"all"``, a segment name or list of names (``"instruction"``,
            ``"context"``, ``"template"``, ``"response"``, ``"bos"``), or explicit position
            indices, one or a list (applied to every prompt; negative counts from the end).
        response: ``"greedy"`` (the tuned model's greedy continuation by
            :func:`shiftlens.generate.greedy_batch`, EOS kept), ``"reference"`` (each
            prompt's reference), or one response string per prompt.
        max_new_tokens: Length limit of greedy responses.
        directions: Any of ``"tuned->base"``, ``"base->tuned"``.
        batch_size: Prompts per forward pass.
        min_gap: Gaps (nats, > 0) smaller than this leave recovery undefined (NaN).
        alternative: The gap test's alternative: ``"two-sided"`` (default), ``"greater"``
            (tuned scores the response higher than base) or ``"less"``; a one-sided test is
            named as such in the sentence.
        n_boot: Bootstrap resamples for the CIs.
        seed: Bootstrap seed (recorded).
        progress: Show a progress bar.

    Returns:
        A :class:`PatchingResult`; a :class:`ShiftlensWarning` (its ``note``) when some
        recoveries are undefined, and one when the gap is not reliably non-zero.

    Raises:
        ShiftlensError: incompatible pair (shapes, tokenizer, dtype), no prompts, unknown
            component or direction, layer or position out of range, missing reference, wrong
            number of responses, any other bad argument (named with its value); a NaN or
            infinity in a clean run's activations at a patched site, logits or log-probability,
            or in a patched run's log-probability (naming the model, prompt, site and
            position).

    Example:
        >>> res = patching(pair, prompts[:8], components=["resid_pre"])  # doctest: +SKIP
        >>> res.summary()["sentence"]  # doctest: +SKIP
    """
    ps, ls = _common(pair, prompts, batch_size, n_boot, seed, layers, progress=progress)
    comps = _names(components, tuple(COMPONENTS), "component")
    dirs = _names(directions, DIRECTIONS, "direction")
    check_float("min_gap", min_gap, minimum=0.0, open_min=True)
    check_choice("alternative", alternative, ALTERNATIVES)
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    if not isinstance(response, str):
        if not isinstance(response, Sequence):
            raise ShiftlensError("response must be 'greedy', 'reference' or one string per "
                                 f"prompt, got {response!r}")
        response = list(response)
    kind = _response_kind(response, len(ps))
    if isinstance(positions, (int, np.integer)) and not isinstance(positions, bool):
        positions = [int(positions)]
    _check_positions(positions)
    sites = {(layer, c): hook_name(c, layer) for layer in ls for c in comps}
    for name in dict.fromkeys(sites.values()):
        for role, model in pair:
            if name not in model.hook_dict:
                raise ShiftlensError(f"{role} model {pair.names[role]!r} has no hook {name!r}")
    tps = _with_responses(pair, ps, response, kind, max_new_tokens, batch_size, progress)
    plan = _PatchPlan(ls, comps, dirs, sites, tps, [_position_mask(tp, positions) for tp in tps],
                      [prompt_id(p, i) for i, p in enumerate(ps)])
    try:
        lp_clean, recs = _accumulate_patching(pair, plan, batch_size, progress)
    except NonFinite as e:
        raise nonfinite_error(pair, e) from None
    label = _positions_label(positions)
    meta = make_meta(pair, seed=seed, params=dict(
        layers=ls, components=comps, directions=dirs, positions=label, response=kind,
        max_new_tokens=max_new_tokens, min_gap=float(min_gap), alternative=alternative,
        n_boot=n_boot), n_layers=int(pair.cfg.n_layers), prompt_ids=plan.ids)
    res = _assemble_patching(plan, lp_clean, recs, float(min_gap), label, meta)
    if res.note:
        warnings.warn(res.note, ShiftlensWarning, stacklevel=2)
    caveat = res.gap_caveat()
    if caveat:
        warnings.warn(caveat, ShiftlensWarning, stacklevel=2)
    return res


# ---------------------------------------------------------------------- patching: validate
def _response_kind(response: Any, n_prompts: int) -> str:
    """``"greedy"``, ``"reference"`` or ``"given"`` (one string per prompt)."""
    if isinstance(response, str):
        if response in ("greedy", "reference"):
            return response
        raise ShiftlensError(
            f"response must be 'greedy', 'reference' or one string per prompt, got {response!r}")
    n = len(response)
    if n != n_prompts:
        raise ShiftlensError(f"got {n} responses for {n_prompts} prompts")
    return "given"


def _check_positions(positions: Positions) -> None:
    if not isinstance(positions, (str, Sequence)) or isinstance(positions, bytes):
        raise ShiftlensError("positions must be 'all', a segment name, a position index or a "
                             f"list of them, got {positions!r}")
    items = [positions] if isinstance(positions, str) else list(positions)
    if not items:
        raise ShiftlensError("positions is empty; give 'all', segment names or indices")
    if all(isinstance(p, str) for p in items):
        for s in items:
            if s != "all" and s not in SEGMENTS:
                raise ShiftlensError(
                    f"unknown position spec {s!r}; use 'all', a segment {SEGMENTS} or indices")
        return
    for p in items:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
            raise ShiftlensError(
                f"positions must be all strings or all integers, got {p!r} ({type(p).__name__})")


def _position_mask(tp: TokenizedPrompt, positions: Positions) -> Bool[Tensor, " pos"]:
    """The positions of one prompt (+ response) to patch (``positions`` already checked)."""
    n = int(tp.tokens.shape[0])
    items = [positions] if isinstance(positions, str) else list(positions)
    mask = torch.zeros(n, dtype=torch.bool)
    if all(isinstance(p, str) for p in items):
        for s in items:
            mask |= torch.ones(n, dtype=torch.bool) if s == "all" else tp.mask(s)
        return mask
    for p in items:
        if not -n <= int(p) < n:
            raise ShiftlensError(
                f"prompt {tp.prompt.label}: position {p} out of range ({n} tokens incl. response)")
        mask[int(p)] = True
    return mask


def _positions_label(positions: Positions) -> str:
    return positions if isinstance(positions, str) else ",".join(str(p) for p in positions)


# ---------------------------------------------------------------------- patching: responses
def _with_responses(pair: Any, prompts: list[InstructionPrompt], response: Any, kind: str,
                    max_new_tokens: int, batch_size: int, progress: bool
                    ) -> list[TokenizedPrompt]:
    """Each prompt tokenized with the response appended (segment ``response``)."""
    base_tps = [pair.tokenize(p) for p in prompts]
    if kind == "greedy":
        ids: list[Tensor] = []
        for chunk in tqdm(_batches(len(prompts), batch_size), desc="greedy responses",
                          disable=not progress):
            ids += [g.with_stop() for g in greedy_batch(
                pair.tuned, [base_tps[i].tokens for i in chunk], max_new_tokens,
                batch_size=len(chunk))]
    elif kind == "reference":
        for p in prompts:
            if not p.reference:
                raise ShiftlensError(f"prompt {p.label}: response='reference' but it has none")
        ids = [_encode_response(pair, p, p.reference) for p in prompts]
    else:
        ids = [_encode_response(pair, p, r) for p, r in zip(prompts, response)]
    n_ctx = int(getattr(pair.cfg, "n_ctx", 10**9) or 10**9)
    out = []
    for tp, r in zip(base_tps, ids):
        toks = torch.cat([tp.tokens, r.to(tp.tokens.device)])
        if toks.shape[0] > n_ctx:
            raise ShiftlensError(f"prompt {tp.prompt.label}: prompt + response exceed n_ctx "
                                 f"{n_ctx}")
        out.append(TokenizedPrompt(
            prompt=tp.prompt, tokens=toks,
            segments=torch.cat([tp.segments, torch.full((len(r),), RESPONSE, dtype=torch.long)]),
            n_prompt=tp.n_prompt, offsets=tp.offsets,
            response=pair.tokenizer.decode(r.tolist()),
        ))
    return out


def _encode_response(pair: Any, prompt: InstructionPrompt, text: Any) -> Int[Tensor, " n"]:
    if not isinstance(text, str):
        raise ShiftlensError(f"prompt {prompt.label}: the response must be a non-empty string, "
                             f"got {text!r}")
    if not text.strip():
        raise ShiftlensError(f"prompt {prompt.label}: the response is empty")
    ids = pair.tokenizer(text, add_special_tokens=False)["input_ids"]  # one response
    if not ids:
        raise ShiftlensError(f"prompt {prompt.label}: the response tokenizes to nothing")
    return torch.tensor(list(ids), dtype=torch.long)


# ---------------------------------------------------------------------- patching: accumulate
def _accumulate_patching(pair: Any, plan: _PatchPlan, batch_size: int, progress: bool
                         ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Clean log-probs of both models per prompt, and one record per patched run and prompt."""
    lp_clean = {"base": np.zeros(len(plan.tps)), "tuned": np.zeros(len(plan.tps))}
    recs: list[dict[str, Any]] = []
    batches = _batches(len(plan.tps), batch_size)
    pad = pad_token_id(pair.tokenizer)
    with tqdm(total=len(batches) * len(plan.directions) * len(plan.sites), desc="patching",
              disable=not progress) as bar:
        for chunk in batches:
            sub = [plan.tps[i] for i in chunk]
            toks, valid = _padded(sub, pad)
            mask = torch.zeros(toks.shape, dtype=torch.bool)
            for j, i in enumerate(chunk):
                mask[j, : len(sub[j].tokens)] = plan.masks[i]
            cache = {}
            ids = [plan.ids[i] for i in chunk]
            for role, model in pair:
                logits, cache[role] = hooked_forward(model, toks,
                                                     list(dict.fromkeys(plan.sites.values())))
                for name in dict.fromkeys(plan.sites[k] for k in sorted(
                        plan.sites, key=lambda k: (k[0], BLOCK_ORDER.index(k[1])))):
                    check_rows(role, f"the activation {name}", cache[role][name], valid, sub, ids)
                check_rows(role, "the logits", logits, valid, sub, ids)
                for j, i in enumerate(chunk):
                    lp_clean[role][i] = _score(logits, j, sub[j])
            for d in plan.directions:
                recs += _patched_runs(pair, plan, d, toks, mask, cache, chunk, sub, bar)
            del cache
    return lp_clean, recs


def _score(logits: Tensor, j: int, tp: TokenizedPrompt) -> float:
    """Row ``j``'s teacher-forced log-probability of its response (padding cut off)."""
    return response_logprob(logits[j, : len(tp.tokens)], tp.tokens, tp.n_prompt)


def _patched_runs(pair: Any, plan: _PatchPlan, direction: str, toks: Tensor, mask: Tensor,
                  cache: dict[str, dict[str, Tensor]], chunk: list[int],
                  sub: list[TokenizedPrompt], bar: Any) -> list[dict[str, Any]]:
    """One direction on one batch: every site patched in turn; one record per prompt and site."""
    target, source = _ROLES[direction]
    model = pair.models[target]
    who = f"{target} model {pair.names[target]!r}"
    recs = []
    for (layer, c), name in plan.sites.items():
        fn = replace_hook(who, name, cache[source][name], mask)
        logits, _ = hooked_forward(model, toks, patch={name: fn})
        assert logits is not None
        for j, i in enumerate(chunk):
            lp = _score(logits, j, sub[j])
            if not np.isfinite(lp):
                raise ShiftlensError(
                    f"{who}: patching {name} with the {source} model's activation "
                    f"({direction}) gave a non-finite log-probability ({lp}) of the response "
                    f"for prompt {plan.ids[i]!r}; both clean runs and the patched activation "
                    "were finite, so the patched run overflowed (try float32 or bfloat16). No "
                    "statistic was computed over non-finite values.")
            recs.append(dict(prompt=i, direction=direction, layer=layer, component=c,
                             hook_name=name, n_patched=int(plan.masks[i].sum()), lp_patched=lp))
        bar.update(1)
    return recs


# ---------------------------------------------------------------------- patching: assemble
def _assemble_patching(plan: _PatchPlan, lp_clean: dict[str, np.ndarray],
                       recs: list[dict[str, Any]], min_gap: float, positions: str,
                       meta: dict[str, Any]) -> PatchingResult:
    gap = lp_clean["tuned"] - lp_clean["base"]
    defined = np.abs(gap) >= min_gap
    frame = pd.DataFrame(recs)
    pi = frame.prompt.to_numpy()
    target = frame.direction.map(lambda d: _ROLES[d][0]).to_numpy()
    frame["lp_target"] = np.where(target == "base", lp_clean["base"][pi], lp_clean["tuned"][pi])
    frame["lp_source"] = np.where(target == "base", lp_clean["tuned"][pi], lp_clean["base"][pi])
    den = (frame.lp_source - frame.lp_target).to_numpy()
    num = (frame.lp_patched - frame.lp_target).to_numpy()
    ok = defined[pi]
    frame["recovery"] = np.where(ok, num / np.where(ok, den, 1.0), np.nan)
    frame.insert(0, "prompt_id", [plan.ids[i] for i in pi])
    frame.insert(1, "category", [plan.tps[i].prompt.category or "" for i in pi])
    frame["positions"] = positions
    frame = frame.drop(columns=["prompt"])
    prompts = pd.DataFrame(dict(
        prompt_id=plan.ids, category=[tp.prompt.category or "" for tp in plan.tps],
        response=[tp.response for tp in plan.tps],
        n_response=[tp.n_response for tp in plan.tps],
        n_patched=[int(m.sum()) for m in plan.masks],
        lp_base=lp_clean["base"], lp_tuned=lp_clean["tuned"], gap=gap, defined=defined,
    ))
    note = ""
    n_undef = int((~defined).sum())
    if n_undef:
        note = (
            f"{n_undef} of {len(plan.tps)} prompts have a tuned-vs-base gap |lp_tuned - lp_base| "
            f"below min_gap={min_gap:g} nats (e.g. identical models), so the fraction of the "
            "gap recovered is undefined there and reported as NaN"
        )
        if abs(gap.mean()) < min_gap:
            note += "; the mean gap is below min_gap too, so pooled recoveries are NaN"
    res = PatchingResult(frame, prompts, note, meta)
    res.validate()
    return res
