"""The residual lens on a base/tuned pair: similarity, output shift (cross-model patching is in
:mod:`.patching`, re-exported here).

Layer (2) of the lens: each function runs the one-model pieces of :mod:`.core` on both models of
a :class:`shiftlens.ModelPair` over the same tokens, in three steps:

* **validate** - the pair (its own compatibility check, plus one dtype), the prompts and every
  argument, before any forward pass (:mod:`shiftlens.checks` validators, :mod:`.common`);
* **accumulate** - prompts run ``batch_size`` at a time; each batch's activations are checked
  finite (a NaN or infinity raises, naming the model, prompt, hook and position: no statistic is
  computed over dropped values), reduced to statistics (rows of numbers, vocabulary-sized
  accumulators) and dropped, so memory stays that of one batch;
* **assemble** - the rows become the Result's frames, with ``meta`` from
  :func:`shiftlens.result.make_meta` and prompt ids from :func:`shiftlens.checks.prompt_id`.

Devices: the two models may live on different devices; captured activations are compared on the
CPU (similarity) or on the device of the base model's output (KL), each moved there explicitly.

Not in Wu et al. (2024): these views go beyond the paper's three lenses (see
:mod:`shiftlens.lenses.residual`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.capture import run_hooks_batched
from shiftlens.checks import check_int, pad_token_id, prompt_id
from shiftlens.errors import ShiftlensWarning
from shiftlens.lenses.residual.common import (
    NonFinite,
    _batches,
    _common,
    _names,
    _padded,
    _tokenize,
    check_pair,
    check_prompt_acts,
    check_rows,
    nonfinite_error,
)
from shiftlens.lenses.residual.core import (
    RESID_HOOKS,
    cosine_per_position,
    finite_mean,
    hook_name,
    hooked_forward,
    kl_divergence,
    linear_cka,
    logit_lens,
)
from shiftlens.lenses.residual.patching import patching
from shiftlens.lenses.residual.results import OutputShiftResult, SimilarityResult
from shiftlens.prompts import SEGMENTS, InstructionPrompt, TokenizedPrompt
from shiftlens.result import make_meta
from shiftlens.tokens import token_strings

__all__ = ["check_pair", "similarity", "output_shift", "patching"]

# the shared helpers stay importable from here, as before the patching module was split off
_ = (_common, _names, _tokenize)


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
        ShiftlensError: incompatible pair, no prompts, unknown hook, layer out of range, a bad
            argument (named with its value); a NaN or infinity in either model's activations
            (naming the model, prompt, hook and position, where the forward pass first turned
            non-finite and any non-finite weights).

    Example:
        >>> from shiftlens.testing import tiny_pair  # doctest: +SKIP
        >>> res = similarity(tiny_pair("llama"), default_prompts()[:4])  # doctest: +SKIP
        >>> res.to_frame(aggregate=True).query("segment == 'all'")  # doctest: +SKIP
    """
    ps, ls = _common(pair, prompts, batch_size, n_boot, seed, layers,
                     with_reference=with_reference, per_token=per_token, progress=progress)
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
            try:
                r, t = _prompt_similarity(plan, sub[j], plan.ids[i],
                                          {role: {n: a[n][j] for n in names}
                                           for role, a in acts.items()}, per_token)
            except NonFinite as e:
                raise nonfinite_error(pair, e) from None
            rows += r
            token_parts += t
        del acts
    return rows, token_parts


def _prompt_similarity(plan: _SimilarityPlan, tp: TokenizedPrompt, pid: str,
                       acts: dict[str, dict[str, Tensor]], per_token: bool
                       ) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
    """One prompt's rows: cosine and CKA per site and segment (and per-position cosines).

    Raises :class:`.common.NonFinite` (naming the model, hook and position) for a NaN or
    infinity in either model's activations, before any statistic is taken.
    """
    for _, _, name in plan.sites:
        for role in ("base", "tuned"):
            check_prompt_acts(role, f"the activation {name}", acts[role][name], tp, pid)
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
            token=[vocab_token(tokenizer, int(i)) for i in nz],
            count=cnt.numpy().astype(np.int64),
            mean_logprob_rise=(self.rise[nz] / cnt).numpy(),
            mean_p_tuned=(self.p_tuned[nz] / cnt).numpy(),
            mean_p_base=(self.p_base[nz] / cnt).numpy(),
            kl_share=(self.share[nz] / max(self.n_positions, 1)).numpy(),
        ))
        return top.sort_values(["count", "kl_share"], ascending=False).reset_index(drop=True)


def vocab_token(tokenizer: Any, token_id: int) -> str:
    """The text one vocabulary token adds after another token (:func:`shiftlens.tokens.
    token_strings` of ``[id, id]``): a word-initial space is kept also for sentencepiece
    tokenizers, which drop it when a token is decoded alone."""
    return token_strings(tokenizer, [token_id, token_id])[1]


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
        ShiftlensError: incompatible pair, no prompts, bad layer, segment, ``top_k`` or other
            argument (named with its value); a NaN or infinity in either model's residual
            stream, logits or logit-lens log-probabilities (naming the model, prompt, site and
            position, where the forward pass first turned non-finite and any non-finite
            weights).

    Example:
        >>> res = output_shift(pair, default_prompts()[:8])  # doctest: +SKIP
        >>> res.summary()["output_kl"]["all"]  # doctest: +SKIP
    """
    ps, ls = _common(pair, prompts, batch_size, n_boot, seed, layers,
                     with_reference=with_reference, progress=progress)
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
        where = (np.repeat(np.asarray(chunk), [len(tp.tokens) for tp in sub]),
                 np.concatenate([np.arange(len(tp.tokens)) for tp in sub]))
        try:
            for role, model in pair:
                logits, acts = hooked_forward(model, toks, names)
                for n in sorted(acts, key=lambda n: int(n.split(".")[1])):  # in depth order
                    check_rows(role, f"the activation {n}", acts[n], valid, sub,
                               [plan.ids[i] for i in chunk])
                check_rows(role, "the logits", logits, valid, sub, [plan.ids[i] for i in chunk])
                v = valid.to(logits.device)
                rows[role] = (logits[v], {n: a[v.to(a.device)] for n, a in acts.items()})
                del logits, acts
            if bi == 0 and last in names:  # the lens of the final resid_post = the logits
                lens_diff = max(float((logit_lens(model, rows[role][1][last][: plan.chunk_rows])
                                       .to(rows[role][0].device)
                                       - rows[role][0][: plan.chunk_rows]).abs().max())
                                for role, model in pair)
            seg = torch.cat([tp.segments for tp in sub])
            counted = torch.isin(seg, plan.seg_codes)
            kls = [_site_kl(pair, rows, site, name, counted, plan, rising, where)
                   for site, _, name in plan.sites]
        except NonFinite as e:
            raise nonfinite_error(pair, e) from None
        for (site, layer, _), (kl, agree) in zip(plan.sites, kls):
            parts.append(dict(
                prompt=where[0], position=where[1],
                token_id=toks[valid].numpy(), segment=seg.numpy(),
                layer=np.full(len(seg), layer), site=np.array([site] * len(seg)),
                kl=kl, top1_agree=agree))
        del rows
    return parts, lens_diff


def _site_kl(pair: Any, rows: dict[str, tuple[Tensor, dict[str, Tensor]]], site: str,
             name: str | None, counted: Tensor, plan: _ShiftPlan, rising: _RisingTokens,
             where: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """KL(tuned || base) and top-1 agreement at one site, ``chunk_rows`` positions at a time;
    the output site (``name`` None) also feeds the rising-token counts. Both models'
    log-probabilities are compared on the device of the base model's (the tuned model's are
    moved there); a non-finite one (e.g. a logit-lens overflow) raises :class:`NonFinite`,
    ``where`` giving each row's prompt index and position."""
    n_rows, chunk_rows = int(rows["base"][0].shape[0]), plan.chunk_rows
    kls, agree = [], []
    for r0 in range(0, n_rows, chunk_rows):
        sl = slice(r0, r0 + chunk_rows)
        lp = {}
        for role, model in pair:
            logits, acts = rows[role]
            lg = logits[sl] if name is None else logit_lens(model, acts[name][sl])
            lp[role] = torch.log_softmax(lg.double(), -1)
            bad = ~torch.isfinite(lp[role]).all(-1)
            if bool(bad.any()):
                k = r0 + int(torch.nonzero(bad)[0])
                raise NonFinite(role, f"the log-probabilities at {site}", plan.ids[where[0][k]],
                                int(bad.sum()), int(where[1][k]), plan.tps[where[0][k]].tokens)
        lp["tuned"] = lp["tuned"].to(lp["base"].device)
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


