"""The residual lens on a base/tuned pair: similarity, output shift, cross-model patching.

Layer (2) of the lens: each function runs the one-model pieces of :mod:`.core` on both models of
a :class:`shiftlens.ModelPair` over the same tokens, in three steps:

* **validate** - the pair (its own compatibility check, plus one device and dtype: cross-model
  comparisons read both models' activations together), the prompts and every argument, before
  any forward pass (:mod:`shiftlens.checks` validators);
* **accumulate** - prompts run ``batch_size`` at a time; each batch's activations are reduced to
  statistics (rows of numbers, vocabulary-sized accumulators) and dropped, so memory stays that of
  one batch;
* **assemble** - the rows become the Result's frames, with ``meta`` from
  :func:`shiftlens.result.make_meta` and prompt ids from :func:`shiftlens.checks.prompt_id`.

Not in Wu et al. (2024): these views go beyond the paper's three lenses (see
:mod:`shiftlens.lenses.residual`).
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

from shiftlens.bridge import device_of
from shiftlens.capture import run_hooks_batched
from shiftlens.checks import (
    check_float,
    check_int,
    check_layers,
    check_prompts,
    pad_token_id,
    prompt_id,
)
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.generate import greedy_batch
from shiftlens.lenses.residual.core import (
    COMPONENTS,
    DIRECTIONS,
    RESID_HOOKS,
    cosine_per_position,
    finite_mean,
    hook_name,
    hooked_forward,
    kl_divergence,
    linear_cka,
    logit_lens,
    replace_hook,
    response_logprob,
)
from shiftlens.lenses.residual.results import OutputShiftResult, PatchingResult, SimilarityResult
from shiftlens.prompts import RESPONSE, SEGMENTS, InstructionPrompt, TokenizedPrompt
from shiftlens.result import make_meta

__all__ = ["check_pair", "similarity", "output_shift", "patching"]

Positions = Union[str, Sequence[Union[str, int]]]

#: For each direction: (the model that is run, the model whose activations are patched in).
_ROLES = {"tuned->base": ("base", "tuned"), "base->tuned": ("tuned", "base")}


# ====================================================================== validate (shared)
def check_pair(pair: Any) -> None:
    """Raise :class:`ShiftlensError` unless both models can be compared position by position.

    Runs the pair's own check (:meth:`shiftlens.ModelPair.check_compatible`: equal shapes,
    the same tokenizer, the same BOS handling) also on a pair built with ``check=False``, and
    adds what reading both models' activations together needs: one input device
    (:func:`shiftlens.bridge.device_of`) and one dtype (nothing is moved silently). The pair's
    identical-weights warning is not repeated here (it was given when the pair was built).

    Args:
        pair: A :class:`shiftlens.ModelPair`.

    Raises:
        ShiftlensError: naming the field and both models.

    Example:
        >>> check_pair(pair)  # doctest: +SKIP
    """
    for attr in ("base", "tuned", "tokenize", "tokenizer", "check_compatible", "names"):
        if not hasattr(pair, attr):
            raise ShiftlensError(f"expected a shiftlens.ModelPair, got {type(pair).__name__}")
    pair.check_compatible(weights=False)
    who = f"base {pair.names['base']!r} vs tuned {pair.names['tuned']!r}"
    db, dt = device_of(pair.base), device_of(pair.tuned)
    if db != dt:
        raise ShiftlensError(f"incompatible pair ({who}): devices {db} != {dt}; load both on "
                             "one device")
    tb, tt = getattr(pair.base.cfg, "dtype", None), getattr(pair.tuned.cfg, "dtype", None)
    if tb is not None and tt is not None and tb != tt:
        raise ShiftlensError(f"incompatible pair ({who}): dtypes {tb} != {tt}")


def _names(values: Any, allowed: Sequence[str], what: str, *, empty_ok: bool = False
           ) -> list[str]:
    """``values`` (one name or several) deduplicated, each one of ``allowed``."""
    out = list(dict.fromkeys([values] if isinstance(values, str) else values))
    if not out and not empty_ok:
        raise ShiftlensError(f"no {what}s given")
    for v in out:
        if v not in allowed:
            raise ShiftlensError(f"unknown {what} {v!r}; choose from {tuple(allowed)}")
    return out


def _common(pair: Any, prompts: Any, batch_size: Any, n_boot: Any, seed: Any,
            layers: Any) -> tuple[list[InstructionPrompt], list[int]]:
    """The checks every pair function starts with; returns the prompts and the layers."""
    check_pair(pair)
    ps = check_prompts(prompts)
    check_int("batch_size", batch_size, minimum=1)
    check_int("n_boot", n_boot, minimum=1)
    check_int("seed", seed)
    return ps, check_layers(pair.base, layers)


def _tokenize(pair: Any, prompts: Sequence[InstructionPrompt], with_reference: bool
              ) -> list[TokenizedPrompt]:
    return [pair.tokenize(p, response=(p.reference if with_reference and p.reference else None))
            for p in prompts]


def _batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


def _padded(tps: Sequence[TokenizedPrompt], pad_id: int
            ) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """Right-padded token ids and the mask of real positions (on the CPU)."""
    width = max(int(tp.tokens.shape[0]) for tp in tps)
    toks = torch.full((len(tps), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(tps), width), dtype=torch.bool)
    for j, tp in enumerate(tps):
        toks[j, : tp.tokens.shape[0]] = tp.tokens
        valid[j, : tp.tokens.shape[0]] = True
    return toks, valid


# ====================================================================== similarity
@dataclass
class _SimilarityPlan:
    layers: list[int]
    hooks: list[str]
    sites: list[tuple[int, str, str]]  # (layer, hook, TL hook name)
    tps: list[TokenizedPrompt]
    ids: list[str]


def similarity(
    pair: Any,
    prompts: Sequence[InstructionPrompt],
    *,
    hooks: Sequence[str] = RESID_HOOKS,
    layers: Sequence[int] | None = None,
    with_reference: bool = True,
    per_token: bool = False,
    batch_size: int = 8,
    n_boot: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> SimilarityResult:
    """Cosine similarity and linear CKA of the two residual streams, per layer and segment.

    For every prompt, layer and residual hook the two models' vectors at the same positions are
    compared: the per-position cosine (averaged over each segment's positions) and linear CKA
    (Kornblith et al., 2019) over the positions of each segment (``"all"`` = every position).
    Prompts are captured ``batch_size`` at a time and their activations discarded once the
    statistics are taken.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts: Instruction prompts.
        hooks: Any of ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``.
        layers: Layers to compare (default all).
        with_reference: Append each prompt's reference response (the ``response`` segment).
        per_token: Also keep every position's cosine (``result.tokens``).
        batch_size: Prompts per forward pass.
        n_boot: Bootstrap resamples for the CIs of ``to_frame(aggregate=True)``/``summary()``.
        seed: Bootstrap seed (recorded).
        progress: Show a progress bar.

    Returns:
        A :class:`SimilarityResult`.

    Raises:
        ShiftlensError: incompatible pair, no prompts, unknown hook, layer out of range.

    Example:
        >>> from shiftlens.testing import tiny_pair  # doctest: +SKIP
        >>> res = similarity(tiny_pair("llama"), default_prompts()[:4])  # doctest: +SKIP
        >>> res.to_frame(aggregate=True).query("segment == 'all'")  # doctest: +SKIP
    """
    ps, ls = _common(pair, prompts, batch_size, n_boot, seed, layers)
    hs = _names(hooks, RESID_HOOKS, "residual hook")
    tps = _tokenize(pair, ps, with_reference)
    plan = _SimilarityPlan(ls, hs, [(layer, h, hook_name(h, layer)) for layer in ls for h in hs],
                           tps, [prompt_id(p, i) for i, p in enumerate(ps)])
    rows, token_parts = _accumulate_similarity(pair, plan, per_token, batch_size, progress)
    res = SimilarityResult(
        pd.DataFrame(rows), _token_frame(token_parts),
        make_meta(pair, seed=seed, params=dict(
            layers=ls, hooks=hs, with_reference=bool(with_reference), per_token=bool(per_token),
            n_boot=n_boot), n_layers=int(pair.cfg.n_layers), prompt_ids=plan.ids))
    res.validate()
    return res


def _accumulate_similarity(pair: Any, plan: _SimilarityPlan, per_token: bool, batch_size: int,
                           progress: bool) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
    rows: list[dict[str, Any]] = []
    token_parts: list[pd.DataFrame] = []
    names = [n for _, _, n in plan.sites]
    pad = pad_token_id(pair.tokenizer)
    for chunk in tqdm(_batches(len(plan.tps), batch_size), desc="similarity",
                      disable=not progress):
        sub = [plan.tps[i] for i in chunk]
        acts = {role: run_hooks_batched(model, sub, names, batch_size=batch_size, reduce=None,
                                        progress=False, pad_id=pad)
                for role, model in pair}
        for j, i in enumerate(chunk):
            r, t = _prompt_similarity(plan, sub[j], plan.ids[i],
                                      {role: {n: a[n][j] for n in names}
                                       for role, a in acts.items()}, per_token)
            rows += r
            token_parts += t
        del acts
    return rows, token_parts


def _prompt_similarity(plan: _SimilarityPlan, tp: TokenizedPrompt, pid: str,
                       acts: dict[str, dict[str, Tensor]], per_token: bool
                       ) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
    """One prompt's rows: cosine and CKA per site and segment (and per-position cosines)."""
    masks = {s: tp.mask(s) for s in SEGMENTS}
    masks["all"] = torch.ones_like(tp.segments, dtype=torch.bool)
    rows, parts = [], []
    for layer, h, name in plan.sites:
        xb, xt = acts["base"][name], acts["tuned"][name]
        cos = cosine_per_position(xb, xt).cpu()
        for s, m in masks.items():
            k = int(m.sum())
            if k == 0:
                continue
            m_dev = m.to(xb.device)
            rows.append(dict(
                prompt_id=pid, category=tp.prompt.category or "", layer=layer, hook=h,
                hook_name=name, segment=s, n_positions=k, cosine=finite_mean(cos[m].numpy()),
                cka=linear_cka(xb[m_dev], xt[m_dev].to(xb.device)),
            ))
        if per_token:
            parts.append(pd.DataFrame(dict(
                prompt_id=pid, position=np.arange(len(cos)), token_id=tp.tokens.numpy(),
                segment=[SEGMENTS[int(c)] for c in tp.segments], layer=layer, hook=h,
                cosine=cos.numpy(),
            )))
    return rows, parts


def _token_frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
    if parts:
        return pd.concat(parts, ignore_index=True)
    return pd.DataFrame(dict(
        prompt_id=pd.Series([], dtype=str), position=pd.Series([], dtype=np.int64),
        token_id=pd.Series([], dtype=np.int64), segment=pd.Series([], dtype=str),
        layer=pd.Series([], dtype=np.int64), hook=pd.Series([], dtype=str),
        cosine=pd.Series([], dtype=np.float64)))


# ====================================================================== output shift
class _RisingTokens:
    """Per vocabulary token, over the counted positions: how often it is among a position's
    ``top_k`` contributions ``p_tuned (log p_tuned - log p_base)`` to KL, the log-prob rise and
    both probabilities there, and its summed contribution (accumulated in float64 on the CPU)."""

    def __init__(self, d_vocab: int, top_k: int) -> None:
        self.top_k = top_k
        zeros = [torch.zeros(d_vocab, dtype=torch.float64) for _ in range(5)]
        self.count, self.rise, self.p_tuned, self.p_base, self.share = zeros
        self.n_positions = 0

    def add(self, lt: Tensor, lb: Tensor) -> None:
        """Count positions given the tuned and base log-probabilities ``[rows, vocab]``."""
        lt, lb = lt.cpu(), lb.cpu()
        pt, pb = lt.exp(), lb.exp()
        rise = lt - lb
        contrib = pt * rise
        self.share += contrib.sum(0)
        idx = contrib.topk(self.top_k, dim=-1).indices
        flat = idx.reshape(-1)
        self.count.index_add_(0, flat, torch.ones(flat.shape, dtype=torch.float64))
        self.rise.index_add_(0, flat, rise.gather(-1, idx).reshape(-1))
        self.p_tuned.index_add_(0, flat, pt.gather(-1, idx).reshape(-1))
        self.p_base.index_add_(0, flat, pb.gather(-1, idx).reshape(-1))
        self.n_positions += int(lt.shape[0])

    def frame(self, tokenizer: Any) -> pd.DataFrame:
        nz = torch.nonzero(self.count > 0).flatten()
        cnt = self.count[nz]
        top = pd.DataFrame(dict(
            token_id=nz.numpy().astype(np.int64),
            token=[tokenizer.decode([int(i)]) for i in nz],
            count=cnt.numpy().astype(np.int64),
            mean_logprob_rise=(self.rise[nz] / cnt).numpy(),
            mean_p_tuned=(self.p_tuned[nz] / cnt).numpy(),
            mean_p_base=(self.p_base[nz] / cnt).numpy(),
            kl_share=(self.share[nz] / max(self.n_positions, 1)).numpy(),
        ))
        return top.sort_values(["count", "kl_share"], ascending=False).reset_index(drop=True)


@dataclass
class _ShiftPlan:
    n_layers: int
    layers: list[int]
    sites: list[tuple[str, int, str | None]]  # (site, layer, TL hook name or None = logits)
    seg_codes: Tensor
    chunk_rows: int
    tps: list[TokenizedPrompt]
    ids: list[str]


def output_shift(
    pair: Any,
    prompts: Sequence[InstructionPrompt],
    *,
    layers: Sequence[int] | None = None,
    with_reference: bool = True,
    segments: Sequence[str] | None = None,
    top_k: int = 10,
    batch_size: int = 8,
    chunk_rows: int = 256,
    n_boot: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> OutputShiftResult:
    """Per-token KL(tuned || base) at the output and at each layer (logit lens), rising tokens.

    At every position the two models' next-token distributions are compared: from the real
    logits (``site == "logits"``) and from each model's logit lens at each layer's
    ``resid_post`` (each model read with its own final norm and unembedding). At the positions
    of ``segments`` the vocabulary tokens are ranked by their contribution
    ``p_tuned(v) (log p_tuned(v) - log p_base(v))`` to the output KL; the ``top_k`` of each
    position are counted per token over the prompt set (``result.top_tokens``).

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts: Instruction prompts.
        layers: Layers for the logit lens (default all).
        with_reference: Append each prompt's reference response.
        segments: Segments whose positions count for ``top_tokens`` (default all positions).
        top_k: Tokens counted per position.
        batch_size: Prompts per forward pass.
        chunk_rows: Positions per logit-lens chunk (bounds the ``[rows, d_vocab]`` buffers).
        n_boot: Bootstrap resamples for ``to_frame(aggregate=True)``/``summary()``.
        seed: Bootstrap seed (recorded).
        progress: Show a progress bar.

    Returns:
        An :class:`OutputShiftResult`. A :class:`ShiftlensWarning` says when the lens of the
        final ``resid_post`` differs from the logits by more than 1e-3.

    Raises:
        ShiftlensError: incompatible pair, no prompts, bad layer, segment or ``top_k``.

    Example:
        >>> res = output_shift(pair, default_prompts()[:8])  # doctest: +SKIP
        >>> res.summary()["output_kl"]["all"]  # doctest: +SKIP
    """
    ps, ls = _common(pair, prompts, batch_size, n_boot, seed, layers)
    n_layers, d_vocab = int(pair.cfg.n_layers), int(pair.cfg.d_vocab)
    check_int("top_k", top_k, minimum=1, maximum=d_vocab)
    check_int("chunk_rows", chunk_rows, minimum=1)
    segs = list(SEGMENTS) if segments is None else _names(segments, SEGMENTS, "segment",
                                                          empty_ok=True)
    plan = _ShiftPlan(
        n_layers, ls,
        [("logits", n_layers, None)] + [(hook_name("resid_post", layer), layer,
                                         hook_name("resid_post", layer)) for layer in ls],
        torch.tensor([SEGMENTS.index(s) for s in segs], dtype=torch.long), chunk_rows,
        _tokenize(pair, ps, with_reference), [prompt_id(p, i) for i, p in enumerate(ps)])
    rising = _RisingTokens(d_vocab, top_k)
    parts, lens_diff = _accumulate_shift(pair, plan, rising, batch_size, progress)
    res = OutputShiftResult(
        _shift_frame(plan, parts), rising.frame(pair.tokenizer),
        n_counted_positions=rising.n_positions, lens_check_max_abs_diff=lens_diff,
        meta=make_meta(pair, seed=seed, params=dict(
            layers=ls, with_reference=bool(with_reference), segments=segs, top_k=top_k,
            n_boot=n_boot), n_layers=n_layers, prompt_ids=plan.ids))
    res.validate()
    if lens_diff > 1e-3:
        warnings.warn(
            f"the logit lens of the final resid_post differs from the models' logits by up to "
            f"{lens_diff:.3g}; the lens is approximate for this architecture",
            ShiftlensWarning, stacklevel=2,
        )
    return res


def _accumulate_shift(pair: Any, plan: _ShiftPlan, rising: _RisingTokens, batch_size: int,
                      progress: bool) -> tuple[list[dict[str, np.ndarray]], float]:
    """Every batch's KL rows per site; the lens check on the first batch."""
    parts: list[dict[str, np.ndarray]] = []
    lens_diff = float("nan")
    pad = pad_token_id(pair.tokenizer)
    names = [n for _, _, n in plan.sites if n is not None]
    last = hook_name("resid_post", plan.n_layers - 1)
    for bi, chunk in enumerate(tqdm(_batches(len(plan.tps), batch_size), desc="output shift",
                                    disable=not progress)):
        sub = [plan.tps[i] for i in chunk]
        toks, valid = _padded(sub, pad)
        rows = {}  # per model: the real positions' logits and residuals, [rows, ...]
        for role, model in pair:
            logits, acts = hooked_forward(model, toks, names)
            v = valid.to(logits.device)
            rows[role] = (logits[v], {n: a[v.to(a.device)] for n, a in acts.items()})
            del logits, acts
        if bi == 0 and last in names:  # the lens of the final resid_post = the logits
            lens_diff = max(float((logit_lens(model, rows[role][1][last][: plan.chunk_rows])
                                   - rows[role][0][: plan.chunk_rows]).abs().max())
                            for role, model in pair)
        seg = torch.cat([tp.segments for tp in sub])
        counted = torch.isin(seg, plan.seg_codes)
        for site, layer, name in plan.sites:
            kl, agree = _site_kl(pair, rows, name, counted, plan.chunk_rows, rising)
            parts.append(dict(
                prompt=np.repeat(np.asarray(chunk), [len(tp.tokens) for tp in sub]),
                position=np.concatenate([np.arange(len(tp.tokens)) for tp in sub]),
                token_id=toks[valid].numpy(), segment=seg.numpy(),
                layer=np.full(len(seg), layer), site=np.array([site] * len(seg)),
                kl=kl, top1_agree=agree))
        del rows
    return parts, lens_diff


def _site_kl(pair: Any, rows: dict[str, tuple[Tensor, dict[str, Tensor]]], name: str | None,
             counted: Tensor, chunk_rows: int, rising: _RisingTokens
             ) -> tuple[np.ndarray, np.ndarray]:
    """KL(tuned || base) and top-1 agreement at one site, ``chunk_rows`` positions at a time;
    the output site (``name`` None) also feeds the rising-token counts."""
    n_rows = int(rows["base"][0].shape[0])
    kls, agree = [], []
    for r0 in range(0, n_rows, chunk_rows):
        sl = slice(r0, r0 + chunk_rows)
        lp = {}
        for role, model in pair:
            logits, acts = rows[role]
            lg = logits[sl] if name is None else logit_lens(model, acts[name][sl])
            lp[role] = torch.log_softmax(lg.double(), -1)
        kls.append(kl_divergence(lp["tuned"], lp["base"]).cpu())
        agree.append((lp["tuned"].argmax(-1) == lp["base"].argmax(-1)).cpu())
        cm = counted[sl]
        if name is None and bool(cm.any()):
            rising.add(lp["tuned"][cm.to(lp["tuned"].device)],
                       lp["base"][cm.to(lp["base"].device)])
    return torch.cat(kls).numpy(), torch.cat(agree).numpy()


def _shift_frame(plan: _ShiftPlan, parts: list[dict[str, np.ndarray]]) -> pd.DataFrame:
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    labels = np.array(plan.ids)
    cats = np.array([tp.prompt.category or "" for tp in plan.tps])
    return pd.DataFrame(dict(
        prompt_id=labels[cat["prompt"]], category=cats[cat["prompt"]],
        position=cat["position"].astype(np.int64), token_id=cat["token_id"].astype(np.int64),
        segment=np.array(SEGMENTS)[cat["segment"]], layer=cat["layer"].astype(np.int64),
        site=cat["site"], kl=cat["kl"].astype(np.float64), top1_agree=cat["top1_agree"],
    ))


# ====================================================================== patching
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
            indices (applied to every prompt; negative counts from the end).
        response: ``"greedy"`` (the tuned model's greedy continuation by
            :func:`shiftlens.generate.greedy_batch`, EOS kept), ``"reference"`` (each
            prompt's reference), or one response string per prompt.
        max_new_tokens: Length limit of greedy responses.
        directions: Any of ``"tuned->base"``, ``"base->tuned"``.
        batch_size: Prompts per forward pass.
        min_gap: Gaps (nats) smaller than this leave recovery undefined (NaN).
        n_boot: Bootstrap resamples for the CIs.
        seed: Bootstrap seed (recorded).
        progress: Show a progress bar.

    Returns:
        A :class:`PatchingResult`; a :class:`ShiftlensWarning` (its ``note``) when some
        recoveries are undefined.

    Raises:
        ShiftlensError: incompatible pair (shapes, tokenizer, device, dtype), no prompts,
            unknown component or direction, layer or position out of range, missing
            reference, wrong number of responses.

    Example:
        >>> res = patching(pair, prompts[:8], components=["resid_pre"])  # doctest: +SKIP
        >>> res.summary()["sentence"]  # doctest: +SKIP
    """
    ps, ls = _common(pair, prompts, batch_size, n_boot, seed, layers)
    comps = _names(components, tuple(COMPONENTS), "component")
    dirs = _names(directions, DIRECTIONS, "direction")
    check_float("min_gap", min_gap, minimum=0.0)
    if not isinstance(response, str):
        response = list(response)
    kind = _response_kind(response, len(ps))
    if kind == "greedy":
        check_int("max_new_tokens", max_new_tokens, minimum=1)
    _check_positions(positions)
    sites = {(layer, c): hook_name(c, layer) for layer in ls for c in comps}
    for name in dict.fromkeys(sites.values()):
        for role, model in pair:
            if name not in model.hook_dict:
                raise ShiftlensError(f"{role} model {pair.names[role]!r} has no hook {name!r}")
    tps = _with_responses(pair, ps, response, kind, max_new_tokens, batch_size, progress)
    plan = _PatchPlan(ls, comps, dirs, sites, tps, [_position_mask(tp, positions) for tp in tps],
                      [prompt_id(p, i) for i, p in enumerate(ps)])
    lp_clean, recs = _accumulate_patching(pair, plan, batch_size, progress)
    label = _positions_label(positions)
    meta = make_meta(pair, seed=seed, params=dict(
        layers=ls, components=comps, directions=dirs, positions=label, response=kind,
        max_new_tokens=max_new_tokens, min_gap=float(min_gap), n_boot=n_boot),
        n_layers=int(pair.cfg.n_layers), prompt_ids=plan.ids)
    res = _assemble_patching(plan, lp_clean, recs, float(min_gap), label, meta)
    if res.note:
        warnings.warn(res.note, ShiftlensWarning, stacklevel=2)
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
    if not isinstance(text, str) or not text.strip():
        raise ShiftlensError(f"prompt {prompt.label}: the response is empty")
    ids = pair.tokenizer(text, add_special_tokens=False)["input_ids"]
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
            for role, model in pair:
                logits, cache[role] = hooked_forward(model, toks,
                                                     list(dict.fromkeys(plan.sites.values())))
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
        recs += [dict(prompt=i, direction=direction, layer=layer, component=c, hook_name=name,
                      n_patched=int(plan.masks[i].sum()), lp_patched=_score(logits, j, sub[j]))
                 for j, i in enumerate(chunk)]
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
