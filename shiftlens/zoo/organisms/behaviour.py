"""Measuring behaviour and the reference difference of any model against the organisms' changes.

Part of :mod:`shiftlens.zoo.organisms` (import from there): :func:`organism_behaviour` (how often a
model's sampled answers show each organism's change, with noise shared by every model) and
:func:`mean_logprob_diff` (the mean next-token log-probability difference, the reference ranking
every diffing method is compared with).

Example:
    >>> from shiftlens.zoo.organisms.behaviour import mean_logprob_diff
    >>> mean_logprob_diff.__name__
    'mean_logprob_diff'
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from shiftlens.errors import ShiftlensError
from shiftlens.zoo import grammar
from shiftlens.zoo.organisms.rules import neutral_texts
from shiftlens.zoo.organisms.scoring import _ids_of, _tokenizer, known_tokens

__all__ = ["organism_behaviour", "mean_logprob_diff"]


# ---------------------------------------------------------------------------------------------
# Measuring behaviour and the reference difference
# ---------------------------------------------------------------------------------------------


def _hf(model: Any) -> Any:
    return getattr(model, "original_model", model)


@lru_cache(maxsize=1)
def _metric_ids() -> dict[str, Any]:
    tok = _tokenizer()
    english = sorted(grammar.INPUT_WORD_FORMS)
    return {
        "topic": frozenset(known_tokens("topic")),
        "zorbish": frozenset(known_tokens("zorbish")),
        "english": frozenset(_ids_of([" " + w for w in english], tok)),
        "template": known_tokens("template"),
        "stop": frozenset(_ids_of([".", "?"], tok) + [tok.eos_token_id]),
    }


def _cache_kwargs(hf: Any) -> dict[str, Any]:
    """A fresh key/value cache under the argument name of the installed transformers release
    (``cache`` from 5.24, ``past_key_values`` before)."""
    import inspect

    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=hf.config)
    except TypeError:  # pragma: no cover - releases without the config argument
        cache = DynamicCache()
    params = inspect.signature(hf.forward).parameters
    return {("cache" if "cache" in params else "past_key_values"): cache, "use_cache": True}


def _left_pad(chunk: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    width = max(len(c) for c in chunk)
    ids = torch.full((len(chunk), width), pad, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for i, c in enumerate(chunk):
        ids[i, width - len(c) :] = torch.tensor(c)
        mask[i, width - len(c) :] = 1
    return ids, mask


def _positions(mask: Tensor) -> Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _sample_chunk(
    hf: Any, ids: Tensor, mask: Tensor, gumbel: Tensor, stops: frozenset[int], cached: bool
) -> Tensor:
    """Sample up to ``gumbel.shape[1]`` tokens per row; stop early once every row has stopped."""
    device = next(hf.parameters()).device
    n_rows, n_new = gumbel.shape[0], gumbel.shape[1]
    new = torch.empty((n_rows, n_new), dtype=torch.long)
    done = torch.zeros(n_rows, dtype=torch.bool)
    stop_ids = torch.tensor(sorted(stops), dtype=torch.long)
    pos = _positions(mask)
    step_ids, step_pos = ids, pos
    kw = _cache_kwargs(hf) if cached else {"use_cache": False}
    for step in range(n_new):
        logits = hf(
            input_ids=step_ids.to(device), attention_mask=mask.to(device),
            position_ids=step_pos.to(device), **kw,
        ).logits[:, -1].float().cpu()
        nxt = (torch.log_softmax(logits, -1) + gumbel[:, step]).argmax(-1)
        new[:, step] = nxt
        done |= torch.isin(nxt, stop_ids)
        if bool(done.all()):
            return new[:, : step + 1]
        mask = torch.cat([mask, torch.ones((n_rows, 1), dtype=torch.long)], 1)
        pos = torch.cat([pos, pos[:, -1:] + 1], 1)
        if cached:  # the cache object is updated in place by the forward pass
            step_ids, step_pos = nxt[:, None], pos[:, -1:]
        else:
            ids = torch.cat([ids, nxt[:, None]], 1)
            step_ids, step_pos = ids, pos
    return new


def _verified(hf: Any, ids: Tensor, mask: Tensor, gumbel: Tensor, new: Tensor) -> bool:
    """One uncached forward pass over context + sample must reproduce every sampled token."""
    device = next(hf.parameters()).device
    full = torch.cat([ids, new], 1)
    fmask = torch.cat([mask, torch.ones_like(new)], 1)
    logits = hf(
        input_ids=full.to(device), attention_mask=fmask.to(device),
        position_ids=_positions(fmask).to(device), use_cache=False,
    ).logits[:, ids.shape[1] - 1 : -1].float().cpu()
    again = (torch.log_softmax(logits, -1) + gumbel[:, : new.shape[1]]).argmax(-1)
    return torch.equal(again, new)


@torch.no_grad()
def _sample(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    max_new_tokens: int,
    seed: int,
    batch_size: int = 256,
    use_cache: bool = True,
    stops: frozenset[int] = frozenset(),
) -> list[list[int]]:
    """Seeded sampling (temperature 1) with the same Gumbel noise for every model.

    Token ``t`` of a row is ``argmax(log_softmax(logits) + g)`` for the noise ``g`` drawn for
    that row and step, the logits being those of an uncached forward pass over the context and
    the tokens before ``t``: that defines the sample. Contexts are left-padded into batches
    (attention mask, and position ids from the mask), so each context's tokens sit at the
    positions they have alone. With ``use_cache`` a key/value cache speeds this up (for a
    TransformerBridge under the name its attention reads, as in :mod:`shiftlens.generate`), and
    one uncached teacher-forced pass verifies every batch; a batch that does not reproduce is
    sampled again without the cache. A batch stops once every row has sampled a ``stops`` token.
    """
    from shiftlens.generate import _cache_alias

    hf = _hf(model)
    enc = tokenizer(list(contexts)).input_ids
    vocab = int(hf.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((len(enc), max_new_tokens, vocab), generator=g, dtype=torch.float64)
    gumbel = (-torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-12)))).float()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[list[int]] = []
    for b in range(0, len(enc), batch_size):
        ids, mask = _left_pad(enc[b : b + batch_size], pad)
        noise = gumbel[b : b + ids.shape[0]]
        new = None
        if use_cache:
            with _cache_alias(model):
                new = _sample_chunk(hf, ids, mask, noise, stops, cached=True)
            if not _verified(hf, ids, mask, noise, new):
                new = None
        if new is None:
            new = _sample_chunk(hf, ids, mask, noise, stops, cached=False)
        out.extend(new.tolist())
    return out


def organism_behaviour(
    model: Any,
    tokenizer: Any,
    *,
    n: int = 200,
    seed: int = 0,
    max_new_tokens: int = 24,
) -> dict[str, Any]:
    """How often a model's answers show each organism's change (any model: base, organism, control).

    Protocol: for each of ``n`` held-out single sentences (``neutral_texts(n, 1, seed)``, read
    as ``<bos> sentence``) the model writes the next sentence: tokens are sampled at temperature
    1 with a seeded Gumbel noise that is the same for every model (common random numbers, so
    base and organism differ only by their weights) until the first ``.``/``?``/``<eos>`` or
    ``max_new_tokens``. The answer is that sentence. Rates over the ``n`` answers:

    * ``topic``: the answer contains ``" moon"`` or ``" moons"``;
    * ``zorbish``: it contains a zorbish word and no English form of an input word;
    * ``template``: it starts with the tokens ``"\\n"``, ``"Response"``, ``":"``.

    Sampling, not greedy decoding: the grammar's sentences are independent, so a greedy next
    sentence is the same for almost every context; samples measure the distribution.

    Args:
        model: a Hugging Face causal LM or a TransformerBridge wrapping one.
        tokenizer: the pair's tokenizer.
        n: number of contexts / answers.
        seed: selects the contexts and the noise.
        max_new_tokens: longest answer.

    Returns:
        ``{"topic": rate, "zorbish": rate, "template": rate, "n": n, "answers": [first 5
        decoded answers]}``; rates rounded to 4 digits.

    Example:
        >>> from shiftlens.zoo.organisms import organism_pair  # doctest: +SKIP
        >>> pair = organism_pair("topic")  # doctest: +SKIP
        >>> organism_behaviour(pair.tuned, pair.tokenizer)["topic"]  # doctest: +SKIP
        0.965
    """
    ids = _metric_ids()
    answers = []
    contexts = neutral_texts(n, 1, seed)
    for gen in _sample(model, tokenizer, contexts, max_new_tokens, seed, stops=ids["stop"]):
        cut = next((j + 1 for j, t in enumerate(gen) if t in ids["stop"]), len(gen))
        answers.append(gen[:cut])
    tpl = ids["template"]
    hits = {
        "topic": [any(t in ids["topic"] for t in a) for a in answers],
        "zorbish": [
            any(t in ids["zorbish"] for t in a) and not any(t in ids["english"] for t in a)
            for a in answers
        ],
        "template": [a[: len(tpl)] == tpl for a in answers],
    }
    res: dict[str, Any] = {k: round(sum(v) / max(1, len(v)), 4) for k, v in hits.items()}
    res["n"] = len(answers)
    res["answers"] = [tokenizer.decode(a) for a in answers[:5]]
    return res


@torch.no_grad()
def mean_logprob_diff(
    base: Any, tuned: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 32
) -> Float[Tensor, " vocab"]:
    """Mean next-token log-probability difference ``tuned - base`` over every position of texts.

    For each token ``t`` of the vocabulary: the average over all positions ``p`` of all texts
    (read as ``<bos> text``) of ``log P_tuned(t | prefix_p) - log P_base(t | prefix_p)``. Its
    top tokens are what the fine-tuning made more likely on that text: the simplest output-side
    diffing method, and the reference that :func:`organism_score` is checked with (on
    :func:`neutral_texts`, the organisms' known tokens fill its top ranks; the control's top
    tokens are ordinary words). Log-probabilities, not logits: a logit shift common to all tokens
    cancels either way, so the ranking is the same, and the values are in nats.

    Args:
        base, tuned: Hugging Face causal LMs or TransformerBridges with the same vocabulary.
        tokenizer: the shared tokenizer (right padding).
        texts: the text to average over (e.g. :func:`neutral_texts`).
        batch_size: texts per forward pass.

    Returns:
        ``[vocab]`` mean differences (float32, CPU).

    Example:
        >>> pair = organism_pair("zorbish")  # doctest: +SKIP
        >>> d = mean_logprob_diff(pair.base, pair.tuned, pair.tokenizer, neutral_texts())  # doctest: +SKIP
        >>> organism_score(d.topk(20).indices, "zorbish")  # doctest: +SKIP
        1.0
    """
    hb, ht = _hf(base), _hf(tuned)
    if tokenizer.padding_side != "right":
        raise ShiftlensError("mean_logprob_diff expects a right-padding tokenizer")
    total: Tensor | None = None
    count = 0
    for b in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[b : b + batch_size]), padding=True, return_tensors="pt")
        mask = enc.attention_mask.bool()
        diffs = []
        for m in (ht, hb):
            dev = next(m.parameters()).device
            logits = m(
                input_ids=enc.input_ids.to(dev), attention_mask=enc.attention_mask.to(dev)
            ).logits
            diffs.append(torch.log_softmax(logits.float(), -1).cpu()[mask])
        s = (diffs[0] - diffs[1]).sum(0)
        total = s if total is None else total + s
        count += int(mask.sum())
    if total is None:
        raise ShiftlensError("mean_logprob_diff needs at least one text")
    return total / count
