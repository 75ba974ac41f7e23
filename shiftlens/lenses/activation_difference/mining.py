"""Diff mining on a base/tuned pair: the tokens most often among the top-k logit differences.

The output-side companion of the activation difference lens, as in the diffing-toolkit of Minder
et al. (its ``diff_mining`` method, "top-k occurring" ordering): at every position of the texts
the ``k`` tokens whose logit rose most from base to tuned are counted; tokens are ranked by the
share of positions where they are among them. Same three steps as :mod:`.compare`: validate,
accumulate (per batch: counts, log-probability sums and ``n_boot`` Poisson bootstrap counts,
then the batch is dropped), assemble.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from shiftlens.bridge import device_of
from shiftlens.checks import check_int
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.activation_difference.common import (
    batches,
    check_pair,
    pad_id,
    padded,
    text_tokens,
    vocab_token,
)
from shiftlens.lenses.activation_difference.core import poisson_weights, topk_counts
from shiftlens.lenses.activation_difference.results import DiffMiningResult
from shiftlens.result import make_meta

__all__ = ["diff_mining"]


def diff_mining(
    pair: Any,
    texts: Sequence[Any],
    *,
    k: int = 20,
    top_k: int = 20,
    n_tokens: int = 100,
    n_boot: int = 200,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> DiffMiningResult:
    """Rank tokens by how often their logit rose among the ``k`` most, position by position.

    At every position ``p`` of every text (``<bos> text``, all real positions) the next-token
    logits of both models give ``diff_p = logits_tuned - logits_base`` (log-probabilities give the
    same top-``k``: a shift common to a position's tokens cancels). A token's **rate** is the share
    of positions where it is among ``diff_p``'s ``k`` largest; tokens are ranked by rate, ties by
    their mean log-probability difference. Uncertainty comes from ``n_boot`` Poisson bootstrap
    resamples of the texts (positions of one text are not independent): a 95% interval of each
    rate and each token's **stability**, the share of resamples in which it is among the ``top_k``
    ranked tokens.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        texts: Strings or :class:`~shiftlens.InstructionPrompt`s (their ``text``).
        k: Tokens counted per position (the toolkit counts 100 of vocabularies of ~150k tokens).
        top_k: Ranked tokens whose stability is measured.
        n_tokens: Tokens kept in ``result.tokens`` (best first).
        n_boot: Bootstrap resamples (0: none).
        batch_size: Texts per forward pass.
        seed: Seed of the bootstrap weights (recorded).
        progress: Show a progress bar.

    Returns:
        A :class:`DiffMiningResult`.

    Raises:
        ShiftlensError: an incompatible pair, no texts, a bad argument, non-finite logits.

    Example:
        >>> res = diff_mining(organism_pair("zorbish"), neutral_texts())  # doctest: +SKIP
        >>> res.to_frame().head()  # doctest: +SKIP
    """
    check_pair(pair)
    d_vocab = int(pair.cfg.d_vocab)
    check_int("k", k, minimum=1, maximum=d_vocab)
    check_int("top_k", top_k, minimum=1, maximum=d_vocab)
    check_int("n_tokens", n_tokens, minimum=1)
    check_int("n_boot", n_boot, minimum=0)
    check_int("seed", seed, minimum=0)
    rows = text_tokens(pair, texts)
    acc = _accumulate(pair, rows, k, n_boot, batch_size, seed, progress)
    frame = _frame(pair, acc, top_k, n_tokens)
    res = DiffMiningResult(
        tokens=frame, n_positions=int(acc["n"]), n_texts=len(rows),
        meta=make_meta(pair, seed=seed, params=dict(k=k, top_k=top_k, n_tokens=n_tokens,
                                                    n_boot=n_boot)))
    res.validate()
    return res


def _accumulate(pair: Any, rows: list[torch.Tensor], k: int, n_boot: int, batch_size: int,
                seed: int, progress: bool) -> dict[str, Any]:
    v = int(pair.cfg.d_vocab)
    f64 = torch.float64
    acc: dict[str, Any] = dict(top=torch.zeros(v, dtype=f64), bottom=torch.zeros(v, dtype=f64),
                               lp=torch.zeros(v, dtype=f64), pos=torch.zeros(v, dtype=f64),
                               boot=torch.zeros(n_boot, v, dtype=f64),
                               boot_n=torch.zeros(n_boot, dtype=f64), n=0)
    weights = poisson_weights(len(rows), n_boot, torch.Generator().manual_seed(seed))
    pad = pad_id(pair)
    for chunk in tqdm(batches(len(rows), batch_size), desc="diff mining", disable=not progress):
        toks, valid = padded([rows[i] for i in chunk], pad)
        logits = {}
        with torch.no_grad():
            for role, model in pair:
                out = model(toks.to(device_of(model)), return_type="logits").double().cpu()
                if not bool(torch.isfinite(out[valid]).all()):
                    raise ShiftlensError(f"{role} model {pair.names[role]!r}: non-finite logits "
                                         f"on texts {chunk[0]}..{chunk[-1]}")
                logits[role] = out
        for j, i in enumerate(chunk):
            m = valid[j]
            diff = logits["tuned"][j][m] - logits["base"][j][m]  # [pos, vocab]
            counts = topk_counts(diff, k)
            acc["top"] += counts
            acc["bottom"] += topk_counts(-diff, k)
            lp = (torch.log_softmax(logits["tuned"][j][m], -1)
                  - torch.log_softmax(logits["base"][j][m], -1))
            acc["lp"] += lp.sum(0)
            acc["pos"] += (lp > 0).double().sum(0)
            acc["boot"] += weights[:, i, None] * counts[None]
            acc["boot_n"] += weights[:, i] * int(m.sum())
            acc["n"] += int(m.sum())
    return acc


def _frame(pair: Any, acc: dict[str, Any], top_k: int, n_tokens: int) -> pd.DataFrame:
    n = max(int(acc["n"]), 1)
    rate = acc["top"] / n
    mean_lp = acc["lp"] / n
    # rank: rate, then mean log-probability difference (a stable lexicographic order)
    order = np.lexsort((-mean_lp.numpy(), -rate.numpy()))[:n_tokens]
    n_boot = int(acc["boot"].shape[0])
    lo = hi = stab = np.full(len(order), np.nan)
    if n_boot:
        brate = acc["boot"] / acc["boot_n"].clamp(min=1.0)[:, None]  # [boot, vocab]
        q = torch.quantile(brate[:, order], torch.tensor([0.025, 0.975], dtype=torch.float64),
                           dim=0)
        lo, hi = q[0].numpy(), q[1].numpy()
        # each resample's ranking: its rates, ties broken by the full-data mean difference
        key = brate + 1e-9 * torch.tanh(mean_lp)[None]
        hits = torch.zeros(rate.shape[0], dtype=torch.float64)
        hits.index_add_(0, key.topk(top_k, dim=-1).indices.reshape(-1),
                        torch.ones(n_boot * top_k, dtype=torch.float64))
        stab = (hits / n_boot).numpy()[order]
    idx = torch.as_tensor(order)
    return pd.DataFrame(dict(
        rank=np.arange(len(order), dtype=np.int64),
        token_id=order.astype(np.int64),
        token=[vocab_token(pair.tokenizer, int(t)) for t in order],
        count=acc["top"][idx].numpy().astype(np.int64),
        rate=rate[idx].numpy(), rate_low=np.asarray(lo, dtype=np.float64),
        rate_high=np.asarray(hi, dtype=np.float64), stability=np.asarray(stab, np.float64),
        count_bottom=acc["bottom"][idx].numpy().astype(np.int64),
        mean_logprob_diff=mean_lp[idx].numpy(),
        fraction_positive=(acc["pos"][idx] / n).numpy(),
    ))
