"""Lens 2, one model: the full bilinear QK score of word pairs, and each head's top pairs by it.

:func:`~shiftlens.lenses.attention.qk.word_pairs` reads a head one d_head dimension at a time
(the paper's reading, Wu et al. 2024, §4). What the head adds to the attention logit of a query
word *a* on a key word *b* is the sum over all its dimensions, the full bilinear score

    score(a, b) = x_a^T W_Q[h] W_K[h]^T x_b = sum_d Q[a, d] K[b, d],

with ``x`` the word vectors of :func:`~shiftlens.lenses.attention.qk.word_embeddings` (mean of
the word's token input embeddings, centred for LayerNorm models) and ``W_Q``, ``W_K`` the
norm-folded weights of :func:`shiftlens.weights.qk_weights` (grouped-query key heads shared),
exactly the folding the word-pair functions use. Like them it is the bilinear term only: no
``1/sqrt(d_head)`` scaling, no biases, no rotary position embedding.

* :func:`qk_scores` / :func:`qk_score` - the score of given word pairs (a matrix / one number);
* :func:`top_pairs` - per head, the ``k`` pairs of the vocabulary with the largest score, by a
  chunked scan of all ``n_words**2`` pairs (never the whole matrix at once), with the
  relatedness filter applied and the number of higher-scoring pairs it removed reported;
* :func:`~shiftlens.lenses.attention.compare.pair_diff` (a pair) compares the scores of base
  and tuned with the same scan.

Devices: weights are read on the CPU (:mod:`shiftlens.weights`); the scan runs on ``device``
(default the model's input device); the frames are on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.bridge import model_name
from shiftlens.checks import check_int, check_vocab
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.attention.core import (
    check_flag,
    check_model,
    check_words,
)
from shiftlens.lenses.attention.filters import FilterSpec, filter_reason
from shiftlens.lenses.attention.qk import (
    _layer_weights,
    check_finite_words,
    scope,
    word_embeddings,
    word_inputs,
)
from shiftlens.weights import WordVocab

__all__ = ["qk_scores", "qk_score", "top_pairs"]

#: Scores computed per chunk of the scan (heads x query words x key words).
_CHUNK = 2**24


# ============================================================================ given pairs
def _lookup(model: Any, words: list[str], vocab: WordVocab | None, what: str
            ) -> tuple[WordVocab, list[int]]:
    """The vocabulary holding ``words`` and their rows (a named error for a missing word)."""
    if vocab is not None:
        check_vocab(vocab, model)
        pos = {w: i for i, w in enumerate(vocab.words)}
        missing = [w for w in words if w not in pos]
        if missing:
            raise ShiftlensError(f"{model_name(model)!r}: {what} {missing[:5]} not in the "
                                 f"vocabulary ({len(vocab)} words); add them or pass vocab=None")
        return vocab, [pos[w] for w in words]
    uniq = list(dict.fromkeys(w.strip() for w in words))
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ShiftlensError(f"{model_name(model)!r} has no tokenizer: pass a vocab")
    v = WordVocab.build(tok, uniq, max_tokens=None) if uniq else None
    if v is None or v.skipped:
        bad = uniq if v is None else v.skipped
        raise ShiftlensError(f"{model_name(model)!r}: the tokenizer cannot encode the {what} "
                             f"{bad[:5]}")
    pos = {w: i for i, w in enumerate(v.words)}
    return v, [pos[w.strip()] for w in words]


@torch.no_grad()
def qk_scores(
    model: Any,
    layer: int,
    head: int,
    q_words: str | Sequence[str],
    k_words: str | Sequence[str],
    vocab: WordVocab | None = None,
    *,
    fold_norm: bool = True,
) -> Float[Tensor, "n_q n_k"]:
    """The full bilinear score ``x_a^T W_Q W_K^T x_b`` of every (query word, key word) pair.

    Computed in float64 on the CPU from the norm-folded weights of one head.

    Args:
        model: A TransformerBridge (or a weight source with a tokenizer).
        layer: Layer index.
        head: Query head index (its grouped-query key head is used).
        q_words: Query words (one word or a list).
        k_words: Key words (one word or a list).
        vocab: Take the words' tokens from this vocabulary (as the other word-pair functions
            do); default: each word encoded as :meth:`shiftlens.weights.WordVocab.build` would
            (``" word"`` or ``"word"``, whichever has fewer tokens).
        fold_norm: Fold the attention-input norm's gamma (as the lens does).

    Returns:
        ``[len(q_words), len(k_words)]``: entry ``[i, j]`` is the score of query word
        ``q_words[i]`` on key word ``k_words[j]``.

    Raises:
        ShiftlensError: layer or head out of range, a word not encodable (or not in
            ``vocab``), non-finite word vectors or weights.

    Example:
        >>> S = qk_scores(pair.tuned, 1, 2, ["write", "list"], ["poem", "items"])  # doctest: +SKIP
        >>> S.shape  # doctest: +SKIP
        torch.Size([2, 2])
    """
    check_model(model, "qk_scores")
    layers, heads = scope(model, layer, head)
    if len(layers) != 1 or heads is None or len(heads) != 1 or isinstance(layer, Sequence) \
            or isinstance(head, Sequence):
        raise ShiftlensError(f"qk_scores: one layer and one head, got layer={layer!r}, "
                             f"head={head!r}")
    fold_norm = check_flag("fold_norm", fold_norm)
    qs = [q_words] if isinstance(q_words, str) else check_words("q_words", q_words)
    ks = [k_words] if isinstance(k_words, str) else check_words("k_words", k_words)
    if not qs or not ks:
        raise ShiftlensError("qk_scores: empty list of words")
    v, idx = _lookup(model, qs + ks, vocab, "words")
    E = word_embeddings(model, v)
    used = sorted(set(idx))
    check_finite_words(model, E[used], WordVocab([v.words[i] for i in used],
                                                 [list(v.token_ids[i]) for i in used], []))
    W_Q, W_K, km, _ = _layer_weights(model, layers[0], heads, fold_norm, torch.device("cpu"))
    E = E.double()
    Q = E[idx[: len(qs)]] @ W_Q[0].double()
    K = E[idx[len(qs):]] @ W_K[int(km[0])].double()
    return Q @ K.T


def qk_score(model: Any, layer: int, head: int, q_word: str, k_word: str,
             vocab: WordVocab | None = None, *, fold_norm: bool = True) -> float:
    """The full bilinear score of one (query word, key word) pair in one head.

    ``qk_score(model, l, h, a, b)`` is ``float(qk_scores(model, l, h, [a], [b])[0, 0])``: what
    head ``h`` of layer ``l`` adds to the attention logit of query word ``a`` on key word ``b``
    through its weights (no ``1/sqrt(d_head)``, biases or rotary).

    Example:
        >>> qk_score(pair.tuned, 1, 2, "write", "poem")  # doctest: +SKIP
        0.0123
    """
    for name, w in (("q_word", q_word), ("k_word", k_word)):
        if not isinstance(w, str):
            raise ShiftlensError(f"qk_score: {name} must be one word (a string), got {w!r}; "
                                 "use qk_scores for lists")
    return float(qk_scores(model, layer, head, [q_word], [k_word], vocab,
                           fold_norm=fold_norm)[0, 0])


# ============================================================================ the scan
def allowed_fn(bound: Any, n: int, dev: torch.device) -> Callable[[Tensor], Tensor] | None:
    """``rows -> [len(rows), n]`` bool mask of the pairs a bound filter keeps (None: no filter).

    Example:
        >>> allowed_fn(None, 3, torch.device("cpu")) is None
        True
    """
    if bound is None:
        return None
    every = torch.arange(n, device=dev)
    if callable(getattr(bound, "block", None)):
        def block(rows: Tensor) -> Tensor:
            return torch.as_tensor(bound.block(rows[None], every[None])[0]).to(
                device=dev, dtype=torch.bool)
        return block

    def pairwise(rows: Tensor) -> Tensor:
        q = rows.repeat_interleave(n)
        k = every.repeat(rows.numel())
        m = torch.as_tensor(bound(q, k))
        if m.numel() != q.numel():
            raise ShiftlensError(f"the pair filter answered {tuple(m.shape)} for {q.numel()} word "
                                 "pairs: it must return one True/False per pair")
        return m.to(device=dev, dtype=torch.bool).reshape(rows.numel(), n)
    return pairwise


def scan_topk(
    values: Callable[[int, int], Float[Tensor, "head c n"]],
    n: int,
    n_heads: int,
    k: int,
    *,
    allowed: Callable[[Tensor], Tensor] | None,
    exclude_self: bool,
    ends: Sequence[int] = (1,),
    device: torch.device,
) -> dict[int, dict[str, Tensor]]:
    """The ``k`` largest (``end=1``) / smallest (``end=-1``) entries per head of an
    ``[head, n, n]`` matrix given in row chunks, with and without the filter.

    Args:
        values: ``values(start, stop)`` -> ``[head, stop - start, n]`` rows of the matrix.
        n: Rows and columns (vocabulary words).
        n_heads: Heads.
        k: Entries kept per head and end.
        allowed: ``rows -> [len(rows), n]`` filter mask (None: no filter).
        exclude_self: Leave out the diagonal (a word with itself).
        ends: ``1`` for the largest entries, ``-1`` for the smallest.
        device: Where the scan runs.

    Returns:
        ``{end: {"value", "index", "raw_value", "raw_index"}}``, each ``[head, k]``: the flat
        indices ``a * n + b`` and values of the top entries that pass the filter, and of the
        top entries before it (``raw_``). Missing entries (fewer than ``k`` allowed) have value
        ``-inf`` (times ``end``) and index -1.

    Example:
        >>> M = torch.arange(16.).reshape(1, 4, 4)
        >>> r = scan_topk(lambda s, e: M[:, s:e], 4, 1, 2, allowed=None, exclude_self=True,
        ...               device=torch.device("cpu"))
        >>> r[1]["index"].tolist()
        [[14, 13]]
    """
    k = min(k, n * n)
    state = {e: {key: None for key in ("value", "index", "raw_value", "raw_index")}
             for e in ends}
    chunk = max(1, _CHUNK // max(1, n_heads * n))
    for s in range(0, n, chunk):
        e_ = min(n, s + chunk)
        rows = torch.arange(s, e_, device=device)
        V = values(s, e_).to(device)
        ok = torch.ones(e_ - s, n, dtype=torch.bool, device=device)
        if exclude_self:
            ok[torch.arange(e_ - s, device=device), rows] = False
        okf = ok & allowed(rows) if allowed is not None else ok
        flat = (rows[:, None] * n + torch.arange(n, device=device)[None]).flatten()
        for end in ends:
            X = V * end
            for tag, mask in (("", okf), ("raw_", ok)):
                if allowed is None and tag == "raw_":
                    continue
                Xm = X.masked_fill(~mask[None], float("-inf")).flatten(1)
                kk = min(k, Xm.shape[1])
                tv, ti = Xm.topk(kk, dim=1)
                ti = flat[ti]
                st = state[end]
                if st[tag + "value"] is not None:
                    tv = torch.cat([st[tag + "value"], tv], 1)
                    ti = torch.cat([st[tag + "index"], ti], 1)
                    tv, o = tv.topk(min(k, tv.shape[1]), dim=1)
                    ti = ti.gather(1, o)
                st[tag + "value"], st[tag + "index"] = tv, ti
    out = {}
    for end in ends:
        st = state[end]
        if allowed is None:
            st["raw_value"], st["raw_index"] = st["value"], st["index"]
        res = {}
        for key in ("value", "index", "raw_value", "raw_index"):
            res[key] = st[key]
        for tag in ("", "raw_"):
            bad = ~torch.isfinite(res[tag + "value"])
            res[tag + "index"] = res[tag + "index"].masked_fill(bad, -1)
            res[tag + "value"] = res[tag + "value"] * end
        out[end] = res
    return out


def n_removed(res: dict[str, Tensor], bound: Any, n: int) -> Int[Tensor, " head"]:
    """Per head: how many of the top entries before the filter (``raw_index``) it rejects.

    Example:
        >>> res = {"raw_index": torch.tensor([[3, 1, -1]])}
        >>> n_removed(res, lambda q, k: q == 0, 2)  # pairs (1, 1), (0, 1): the first rejected
        tensor([1])
    """
    raw = res["raw_index"]
    out = torch.zeros(raw.shape[0], dtype=torch.long)
    if bound is None:
        return out
    valid = raw >= 0
    h = valid.nonzero(as_tuple=True)[0]
    flat = raw[valid]
    if flat.numel():
        ok = torch.as_tensor(bound(flat // n, flat % n)).to(dtype=torch.bool).cpu()
        if ok.shape != flat.shape:
            raise ShiftlensError(f"the pair filter answered {tuple(ok.shape)} for "
                                 f"{flat.numel()} word pairs: it must return one True/False "
                                 "per pair")
        out.index_add_(0, h.cpu(), (~ok).long())
    return out


def pair_similarity(bound: Any, a: Tensor, b: Tensor) -> np.ndarray:
    """The filter's similarity of word pairs (NaN without one), as float32 numpy.

    Example:
        >>> pair_similarity(None, torch.tensor([0]), torch.tensor([1]))
        array([nan], dtype=float32)
    """
    if bound is not None and hasattr(bound, "similarity") and a.numel():
        return np.asarray(bound.similarity(a, b).float().cpu().numpy(), dtype=np.float32)
    return np.full(a.numel(), np.nan, dtype=np.float32)


def check_k(k: Any) -> int:
    """``k`` (pairs per head) as a positive int (bools refused).

    Example:
        >>> check_k(5)
        5
    """
    return check_int("k", k, minimum=1)


# ============================================================================ top pairs
@torch.no_grad()
def top_pairs(
    model: Any,
    layer: int | Sequence[int] | None = None,
    head: int | Sequence[int] | None = None,
    vocab: WordVocab | None = None,
    *,
    k: int = 20,
    filter: FilterSpec = "embedding",
    bound_filter: Any = None,
    exclude_self: bool = True,
    fold_norm: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Per head, the ``k`` word pairs with the largest full bilinear score.

    Every (query word, key word) pair of the vocabulary is scored,
    ``score = x_a^T W_Q[h] W_K[h]^T x_b`` (all d_head dimensions at once, unlike
    :func:`~shiftlens.lenses.attention.qk.word_pairs`), in chunks of query words; a
    pair of a word with itself is left out with ``exclude_self`` and a pair the relatedness
    filter rejects is never kept. How many of the head's ``k`` highest-scoring pairs the filter
    removed is reported per head (``attrs["funnel"]``) and in one sentence
    (``attrs["filter_note"]``).

    Args:
        model: A TransformerBridge.
        layer: A layer index, a list of them, or None for every layer.
        head: A query head index, a list of them, or None for every head.
        vocab: Word vocabulary (default :func:`shiftlens.vocab.default_vocab`, 5,000 words).
        k: Pairs per head.
        filter, bound_filter, exclude_self, fold_norm, device, progress: As in
            :func:`~shiftlens.lenses.attention.qk.word_pairs`.

    Returns:
        Columns ``layer, head, rank, q_word, k_word, score, similarity, q_index, k_index``,
        per head sorted by ``score`` (``rank`` 0 = highest). ``attrs``: ``model``, ``filter``,
        ``n_words``, ``n_skipped_words``, ``k``, ``funnel`` (per head ``removed``: of its ``k``
        highest-scoring pairs, how many the filter dropped), ``n_removed``,
        ``filter_reason``, ``filter_note``.

    Raises:
        ShiftlensError: as :func:`~shiftlens.lenses.attention.qk.word_pairs`, and a bad
            ``k``.

    Example:
        >>> df = top_pairs(pair.tuned, 1, 2, vocab, k=10)  # doctest: +SKIP
        >>> df.attrs["filter_note"]  # doctest: +SKIP
    """
    check_model(model, "top_pairs")
    layers, heads = scope(model, layer, head)
    k = check_k(k)
    exclude_self = check_flag("exclude_self", exclude_self)
    fold_norm = check_flag("fold_norm", fold_norm)
    progress = check_flag("progress", progress)
    dev, vocab, E, bound, fname = word_inputs(model, device, vocab, filter, bound_filter)
    n = E.shape[0]
    allowed = allowed_fn(bound, n, dev)
    words = np.asarray(vocab.words, dtype=object)
    frames, funnel = [], []
    for lay in tqdm(layers, desc=f"top pairs {model_name(model)}",
                    disable=not progress or len(layers) == 1, leave=False):
        W_Q, W_K, km, hs = _layer_weights(model, lay, heads, fold_norm, dev)
        Q = torch.einsum("nd,hde->hne", E, W_Q)  # [H, n, e]
        K = torch.einsum("nd,hde->hne", E, W_K)[km]  # [H, n, e], one per query head
        res = scan_topk(lambda s, e, Q=Q, K=K: Q[:, s:e] @ K.transpose(1, 2), n, len(hs), k,
                        allowed=allowed, exclude_self=exclude_self, device=dev)[1]
        removed = n_removed(res, bound, n).tolist()
        frames.append(_top_frame(res, lay, hs, n, words, bound))
        funnel.extend({"layer": int(lay), "head": int(h), "k": k, "removed": int(r),
                       "kept": int((res["index"][i] >= 0).sum())}
                      for i, (h, r) in enumerate(zip(hs, removed)))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    reason = filter_reason(bound, fname) if bound is not None else ""
    total = sum(f["removed"] for f in funnel)
    df.attrs.update({
        "model": model_name(model), "filter": fname, "n_words": len(vocab),
        "n_skipped_words": len(vocab.skipped), "k": k, "funnel": funnel, "n_removed": total,
        "filter_reason": reason,
        "filter_note": top_filter_note(fname, reason, total, len(funnel), k, "highest-scoring"),
    })
    return df


def top_filter_note(name: str, reason: str, removed: int, n_heads: int, k: int,
                    what: str) -> str:
    """One sentence: how many of the heads' top pairs the relatedness filter removed, and why.

    Example:
        >>> top_filter_note("none", "", 0, 4, 10, "highest-scoring")
        'No relatedness filter: the 10 highest-scoring pairs of each of the 4 heads are shown.'
    """
    if name == "none":
        each = f"each of the {n_heads} heads" if n_heads > 1 else "the head"
        return f"No relatedness filter: the {k} {what} pairs of {each} are shown."
    heads = f"{k} per head, {n_heads} heads" if n_heads > 1 else "one head"
    return (f"The relatedness filter {name} removed {removed:,} of the {n_heads * k:,} {what} "
            f"pairs ({heads}) because {reason}; the rows are the top {k} pairs per head that "
            "pass it.")


def _top_frame(res: dict[str, Tensor], layer: int, heads: list[int], n: int,
               words: np.ndarray, bound: Any) -> pd.DataFrame:
    idx, val = res["index"].cpu(), res["value"].cpu()
    h, r = (idx >= 0).nonzero(as_tuple=True)
    flat = idx[h, r]
    a, b = flat // n, flat % n
    dev_a = a.to(res["index"].device)
    return pd.DataFrame({
        "layer": np.full(len(h), layer, dtype=np.int64),
        "head": np.asarray(heads, dtype=np.int64)[h.numpy()],
        "rank": r.numpy().astype(np.int64),
        "q_word": words[a.numpy()],
        "k_word": words[b.numpy()],
        "score": val[h, r].numpy().astype(np.float32),
        "similarity": pair_similarity(bound, dev_a, b.to(dev_a.device)),
        "q_index": a.numpy().astype(np.int64),
        "k_index": b.numpy().astype(np.int64),
    })
