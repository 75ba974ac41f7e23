"""The activation difference lens on a base/tuned pair (Minder et al. 2025, arXiv 2510.13900).

Layer (2) of the lens: :func:`activation_difference` runs :mod:`.core` on both models of a
:class:`shiftlens.ModelPair` over the same tokens, in three steps:

* **validate** - the pair, the texts (each long enough for the positions read) and every
  argument, before any forward pass;
* **accumulate** - texts run ``batch_size`` at a time; each batch adds its residual differences
  at the first positions to running sums (per layer and position), and to ``n_boot`` Poisson
  bootstrap sums at the lens layer, and is dropped: memory is that of one batch plus
  ``n_boot x n_positions x d_model`` numbers;
* **assemble** - the mean difference per layer and position is read through each model's logit
  lens and Patchscope, the models are steered with it, and the Result is built.

Diff mining, the output-side companion, is :func:`.mining.diff_mining` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import einops
import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.bridge import check_finite_weights
from shiftlens.checks import check_int, check_layer, check_layers
from shiftlens.diagnose import where_nonfinite
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.activation_difference.common import (
    batches,
    check_floats,
    check_pair,
    pad_id,
    padded,
    text_tokens,
    token_ids,
    vocab_token,
)
from shiftlens.lenses.activation_difference.core import (
    DEFAULT_PATCH_PROMPT,
    first_position_residuals,
    lens_probabilities,
    patchscope,
    poisson_weights,
    relevance,
    steered_generations,
)
from shiftlens.lenses.activation_difference.mining import diff_mining
from shiftlens.lenses.activation_difference.results import ActivationDifferenceResult
from shiftlens.result import make_meta

__all__ = ["activation_difference", "diff_mining"]

ROLES = ("base", "tuned")
#: Tokens kept per position (the position-averaged rankings keep ``n_tokens``).
PER_POSITION_TOKENS = 10


@dataclass
class _Plan:
    layers: list[int]
    lens_layer: int
    start: int
    n_positions: int
    rows: list[Tensor]
    n_dropped: int
    patch_prompt: Tensor
    patch_scales: list[float]
    steer: list[Tensor]
    strengths: list[float]
    vocabulary: list[int]
    kw: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Sums:
    diff: Tensor  # [layer, pos, d] float64
    norm: Tensor  # [role, layer, pos] float64
    boot: Tensor  # [n_boot, pos, d] float64 (lens layer)
    boot_w: Tensor  # [n_boot]
    n: int = 0


def activation_difference(
    pair: Any,
    texts: Sequence[Any],
    *,
    layers: Sequence[int] | None = None,
    lens_layer: int | None = None,
    n_positions: int = 5,
    skip_bos: bool = True,
    patch_prompt: str = DEFAULT_PATCH_PROMPT,
    patch_scales: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    steer_prompts: Sequence[Any] | None = None,
    steer_strengths: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
    max_new_tokens: int = 16,
    vocabulary: Sequence[Any] | None = None,
    top_k: int = 20,
    n_tokens: int = 50,
    n_boot: int = 200,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> ActivationDifferenceResult:
    """The activation difference lens: what the mean residual difference on unrelated text reads as.

    For each layer ``l`` and each of the first ``n_positions`` positions ``p`` of every text (after
    the BOS token with ``skip_bos``), ``d[l, p] = mean over texts (h_tuned - h_base)`` of the
    residual after layer ``l`` (Minder et al. 2025: a narrow fine-tune leaves a readable trace on
    the first tokens of *any* text). Each ``d[l, p]`` is then read

    * through each model's **logit lens** (softmax of ``W_U norm(d)``), per position and averaged
      over the positions (the ranking :meth:`ActivationDifferenceResult.top_tokens` returns);
    * through each model's **Patchscope**: ``s |h| d / |d|`` (``|h|`` the model's mean residual
      norm at ``l, p``; ``s`` in ``patch_scales``) replaces the residual after ``l`` at the last
      position of ``patch_prompt``; probabilities averaged over scales (Minder et al. choose the
      scale with an LLM grader; offline we average);

    and at ``lens_layer`` (default ``n_layers // 2``, the toolkit's middle layer) each model is
    **steered** with the position-averaged difference (``strength x |h| x d / |d|``, greedy) and
    the logit-lens ranking's **stability** is measured: the share of ``n_boot`` Poisson bootstrap
    resamples of the texts in which a token stays among the ``top_k``.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        texts: Unrelated text (strings or :class:`~shiftlens.InstructionPrompt`s, whose ``text``
            is read); texts shorter than the positions needed are left out (counted in
            ``meta["n_dropped"]``).
        layers: Layers analysed (default all); ``lens_layer`` is added when missing.
        lens_layer: The layer of the headline ranking, the stability and steering.
        n_positions: First positions read (the toolkit reads 5).
        skip_bos: Start after the BOS token (its residual carries no text).
        patch_prompt: The Patchscope identity prompt (its last position is patched).
        patch_scales: Multiples of the residual norm the patched vector gets.
        steer_prompts: Prompts to steer (default: the first 3 texts cut to their first
            ``n_positions`` tokens); ``[]`` skips steering.
        steer_strengths: Multiples of the residual norm added (0 = unsteered).
        max_new_tokens: Longest steered response.
        vocabulary: Optional relevant tokens (ids or texts): ``result.relevance`` gives the share
            of each ranking's ``top_k`` in it.
        top_k: Tokens per ranking that relevance and stability count.
        n_tokens: Tokens kept per position-averaged ranking (per position: 10).
        n_boot: Poisson bootstrap resamples (0: no stability).
        batch_size: Texts per forward pass.
        seed: Seed of the bootstrap weights (recorded).
        progress: Show a progress bar.

    Returns:
        An :class:`ActivationDifferenceResult`.

    Raises:
        ShiftlensError: an incompatible pair, no text long enough, a bad layer or argument.

    Example:
        >>> from shiftlens.zoo.organisms import organism_pair, neutral_texts  # doctest: +SKIP
        >>> res = activation_difference(organism_pair("topic"), neutral_texts())  # doctest: +SKIP
        >>> pair.tokenizer.convert_ids_to_tokens(res.top_tokens(5))  # doctest: +SKIP
    """
    plan = _validate(pair, texts, layers, lens_layer, n_positions, skip_bos, patch_prompt,
                     patch_scales, steer_prompts, steer_strengths, vocabulary,
                     dict(max_new_tokens=max_new_tokens, top_k=top_k, n_tokens=n_tokens,
                          n_boot=n_boot, batch_size=batch_size, seed=seed))
    sums = _accumulate(pair, plan, n_boot, batch_size, seed, progress)
    return _assemble(pair, plan, sums, progress)


# ====================================================================== validate
def _validate(pair: Any, texts: Any, layers: Any, lens_layer: Any, n_positions: Any,
              skip_bos: Any, patch_prompt: Any, patch_scales: Any, steer_prompts: Any,
              steer_strengths: Any, vocabulary: Any, kw: dict[str, Any]) -> _Plan:
    check_pair(pair)
    n_layers, d_vocab = int(pair.cfg.n_layers), int(pair.cfg.d_vocab)
    check_int("n_positions", n_positions, minimum=1)
    if not isinstance(skip_bos, bool):
        raise ShiftlensError(f"skip_bos must be True or False, got {skip_bos!r}")
    for name in ("max_new_tokens", "top_k", "n_tokens", "batch_size"):
        check_int(name, kw[name], minimum=1)
    check_int("top_k", kw["top_k"], maximum=d_vocab)
    check_int("n_boot", kw["n_boot"], minimum=0)
    check_int("seed", kw["seed"], minimum=0)
    ls = check_layers(pair.base, layers)
    ll = check_layer(pair.base, n_layers // 2 if lens_layer is None else lens_layer)
    if ll not in ls:
        ls = sorted([*ls, ll])
    start = int(bool(skip_bos and pair.prepend_bos))
    rows = text_tokens(pair, texts)
    keep = [r for r in rows if r.shape[0] >= start + n_positions]
    if not keep:
        raise ShiftlensError(f"no text has the {start + n_positions} tokens needed to read "
                             f"{n_positions} positions (longest: {max(len(r) for r in rows)})")
    if not isinstance(patch_prompt, str) or not patch_prompt.strip():
        raise ShiftlensError(f"patch_prompt must be a non-empty string, got {patch_prompt!r}")
    steer = (keep[:3] if steer_prompts is None else text_tokens(pair, steer_prompts,
                                                                what="steer_prompts")
             if len(steer_prompts) else [])
    if steer_prompts is None:
        steer = [r[: start + n_positions] for r in steer]
    return _Plan(ls, ll, start, int(n_positions), keep, len(rows) - len(keep),
                 text_tokens(pair, [patch_prompt], what="patch_prompt")[0],
                 check_floats("patch_scales", patch_scales, minimum=0.0), steer,
                 check_floats("steer_strengths", steer_strengths),
                 token_ids(pair.tokenizer, vocabulary, d_vocab), kw)


# ====================================================================== accumulate
def _nonfinite_error(pair: Any, role: str, h: Tensor, chunk: Sequence[int],
                     plan: _Plan) -> ShiftlensError:
    """The error for non-finite residuals ``h [batch, layer, pos, d]``: which text, layer and
    position first, where the forward pass turns non-finite and whether weights are to blame."""
    b, li, pos = (int(i) for i in torch.nonzero(~torch.isfinite(h))[0][:3])
    text = chunk[b]
    model = pair.base if role == "base" else pair.tuned
    msg = (f"{role} model {pair.names[role]!r}: non-finite residual on text {text} (of the "
           f"texts long enough), layer {plan.layers[li]}, position {plan.start + pos}"
           + where_nonfinite(model, plan.rows[text]))
    try:
        check_finite_weights(model, name=pair.names[role])
        msg += "; its weights are all finite, so an activation overflowed: try float32 or bfloat16"
    except ShiftlensError as e:
        msg += f"; {e}"
    return ShiftlensError(msg + ". No activation difference is computed over non-finite values.")


def _accumulate(pair: Any, plan: _Plan, n_boot: int, batch_size: int, seed: int,
                progress: bool) -> _Sums:
    d_model, n_l, n_p = int(pair.cfg.d_model), len(plan.layers), plan.n_positions
    li = plan.layers.index(plan.lens_layer)
    f64 = torch.float64
    sums = _Sums(torch.zeros(n_l, n_p, d_model, dtype=f64), torch.zeros(2, n_l, n_p, dtype=f64),
                 torch.zeros(n_boot, n_p, d_model, dtype=f64), torch.zeros(n_boot, dtype=f64))
    weights = poisson_weights(len(plan.rows), n_boot, torch.Generator().manual_seed(seed))
    pad = pad_id(pair)
    for chunk in tqdm(batches(len(plan.rows), batch_size), desc="activation difference",
                      disable=not progress):
        toks, _ = padded([plan.rows[i] for i in chunk], pad)
        h = {role: first_position_residuals(model, toks, plan.layers, plan.start, n_p).double()
             for role, model in pair}
        for r, role in enumerate(ROLES):
            if not bool(torch.isfinite(h[role]).all()):
                raise _nonfinite_error(pair, role, h[role], chunk, plan)
            sums.norm[r] += h[role].norm(dim=-1).sum(0)
        diff = h["tuned"] - h["base"]  # [batch, layer, pos, d]
        sums.diff += diff.sum(0)
        w = weights[:, chunk]  # [n_boot, batch]
        sums.boot += einops.einsum(w, diff[:, li], "boot b, b p d -> boot p d")
        sums.boot_w += w.sum(1)
        sums.n += len(chunk)
    return sums


# ====================================================================== assemble
def _assemble(pair: Any, plan: _Plan, sums: _Sums, progress: bool) -> ActivationDifferenceResult:
    mean_diff = (sums.diff / sums.n).float()
    resid_norm = (sums.norm / sums.n).float()
    frames = []
    for j, layer in enumerate(tqdm(plan.layers, desc="reading the differences",
                                   disable=not progress)):
        for r, (role, model) in enumerate(pair):
            probs = lens_probabilities(model, mean_diff[j])  # [pos, vocab]
            frames.append(_rank_rows(pair, layer, "logit_lens", role, probs, plan))
            frames.append(_rank_rows(pair, layer, "patchscope", role,
                                     _patchscope_probs(model, mean_diff[j], resid_norm[r, j],
                                                       layer, plan), plan))
    tokens = pd.concat(frames, ignore_index=True)
    tokens = _add_stability(pair, plan, sums, tokens)
    steering = _steering(pair, plan, mean_diff, resid_norm)
    res = ActivationDifferenceResult(
        mean_diff=mean_diff, resid_norm=resid_norm, tokens=tokens, steering=steering,
        relevance=_relevance(plan, tokens), n_texts=sums.n,
        meta=make_meta(pair, seed=plan.kw["seed"], params=dict(
            layers=plan.layers, lens_layer=plan.lens_layer, n_positions=plan.n_positions,
            start_position=plan.start, patch_prompt=pair.tokenizer.decode(plan.patch_prompt),
            patch_scales=plan.patch_scales, steer_strengths=plan.strengths,
            max_new_tokens=plan.kw["max_new_tokens"], top_k=plan.kw["top_k"],
            n_tokens=plan.kw["n_tokens"], n_boot=plan.kw["n_boot"],
            vocabulary_size=len(plan.vocabulary)),
            n_layers=int(pair.cfg.n_layers), n_dropped=plan.n_dropped))
    res.validate()
    return res


def _patchscope_probs(model: Any, diffs: Tensor, norms: Tensor, layer: int, plan: _Plan
                      ) -> Tensor:
    """Per position: Patchscope probabilities averaged over the scales ``[pos, vocab]``."""
    unit = diffs.double() / diffs.double().norm(dim=-1, keepdim=True).clamp(min=1e-30)
    scales = torch.tensor(plan.patch_scales, dtype=torch.float64)
    vecs = einops.einsum(scales, norms.double(), unit, "s, p, p d -> p s d")
    probs = patchscope(model, einops.rearrange(vecs, "p s d -> (p s) d").float(), layer,
                       plan.patch_prompt)
    return einops.reduce(probs, "(p s) v -> p v", "mean", s=len(plan.patch_scales))


def _rank_rows(pair: Any, layer: int, source: str, role: str, probs: Tensor, plan: _Plan
               ) -> pd.DataFrame:
    """Ranking rows of one (layer, source, model): each position's top tokens and, as position
    -1, the top ``n_tokens`` of the probabilities averaged over the positions."""
    rows = []
    avg = probs.mean(0)
    for pos, p, n in [(-1, avg, plan.kw["n_tokens"])] + [
            (plan.start + i, probs[i], PER_POSITION_TOKENS) for i in range(probs.shape[0])]:
        top = p.topk(min(n, p.shape[0]))
        for rank, (tid, val) in enumerate(zip(top.indices.tolist(), top.values.tolist())):
            rows.append((layer, pos, source, role, rank, tid, float(val)))
    df = pd.DataFrame(rows, columns=["layer", "position", "source", "model", "rank", "token_id",
                                     "probability"])
    df.insert(6, "token", [vocab_token(pair.tokenizer, t) for t in df.token_id])
    return df


def _add_stability(pair: Any, plan: _Plan, sums: _Sums, tokens: pd.DataFrame) -> pd.DataFrame:
    """The logit-lens rankings' stability at the lens layer: the share of bootstrap resamples in
    which each listed token stays among the ``top_k`` of the position-averaged ranking."""
    tokens = tokens.assign(stability=np.nan)
    n_boot, k = int(sums.boot.shape[0]), plan.kw["top_k"]
    if n_boot == 0:
        return tokens
    boot_means = sums.boot / sums.boot_w.clamp(min=1e-12)[:, None, None]  # [boot, pos, d]
    for role, model in pair:
        probs = lens_probabilities(model, boot_means.float()).mean(1)  # [boot, vocab]
        hits = torch.zeros(probs.shape[1], dtype=torch.float64)
        hits.index_add_(0, probs.topk(k, dim=-1).indices.reshape(-1),
                        torch.ones(n_boot * k, dtype=torch.float64))
        sel = ((tokens.layer == plan.lens_layer) & (tokens.source == "logit_lens")
               & (tokens.model == role) & (tokens.position == -1))
        tokens.loc[sel, "stability"] = (hits / n_boot).numpy()[tokens.token_id[sel].to_numpy()]
    return tokens


def _steering(pair: Any, plan: _Plan, mean_diff: Tensor, resid_norm: Tensor) -> pd.DataFrame:
    """Greedy responses of each model steered with the position-averaged difference."""
    cols = ["model", "strength", "prompt_index", "prompt", "response", "n_tokens", "stopped"]
    if not plan.steer:
        return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in zip(
            cols, [str, float, np.int64, str, str, np.int64, bool])})
    j = plan.layers.index(plan.lens_layer)
    d = mean_diff[j].double().mean(0)
    unit = d / d.norm().clamp(min=1e-30)
    rows = []
    for r, (role, model) in enumerate(pair):
        vec = (unit * resid_norm[r, j].double().mean()).float()
        gens = steered_generations(model, plan.steer, vec, plan.lens_layer, plan.strengths,
                                   max_new_tokens=plan.kw["max_new_tokens"])
        for s, gs in gens.items():
            for i, g in enumerate(gs):
                rows.append((role, s, i, pair.tokenizer.decode(plan.steer[i]),
                             pair.tokenizer.decode(g.tokens), int(g.tokens.shape[0]), g.stopped))
    return pd.DataFrame(rows, columns=cols)


def _relevance(plan: _Plan, tokens: pd.DataFrame) -> pd.DataFrame:
    """Per ranking at the lens layer: the share of its ``top_k`` in ``vocabulary``."""
    cols = ["source", "model", "k", "n_relevant", "share", "vocabulary_size"]
    rows = []
    if plan.vocabulary:
        k = plan.kw["top_k"]
        sel = tokens[(tokens.layer == plan.lens_layer) & (tokens.position == -1)]
        for (source, role), g in sel.groupby(["source", "model"], sort=True):
            n, share = relevance(g.sort_values("rank").token_id.tolist(), plan.vocabulary, k)
            rows.append((source, role, k, n, share, len(plan.vocabulary)))
    return pd.DataFrame(rows, columns=cols).astype(
        {"source": str, "model": str, "k": np.int64, "n_relevant": np.int64,
         "share": np.float64, "vocabulary_size": np.int64})
