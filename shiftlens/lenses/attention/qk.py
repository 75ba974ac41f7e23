"""Lens 2, one model, weight view: the word pairs a head's QK circuit encodes.

The paper's bilinear reading of a head (Wu et al., "From Language Modeling to Instruction
Following: Understanding the Behavior Shift in LLMs after Instruction Tuning", NAACL 2024, §4),
on tensors (:func:`qk_word_pairs`) and on a model (:func:`word_pairs`): word vectors E (a word =
the mean of its tokens' input embeddings) are projected by the head's W_Q and W_K
(normalization weight folded in, grouped-query K heads expanded): Q = E W_Q, K = E W_K. The
head's d_head dimensions are ranked by their energy sum_w Q[w, d]^2 + sum_w K[w, d]^2; in each
top dimension the top-K words by |Q| and by |K| form candidate (query word, key word) pairs,
kept when the two activations have the same sign (their product raises the attention logit)
and the words pass a relatedness filter (:mod:`shiftlens.lenses.attention.filters`). All
vocabulary projections of a layer are one matmul. :func:`pair_word_counts` counts the pairs
each word takes part in, per head. The activation view and the checks are in
:mod:`shiftlens.lenses.attention.core`.

Weights are read on the CPU (:mod:`shiftlens.weights`) and the computation runs on ``device``
when given, else on the model's input device (:func:`shiftlens.bridge.device_of`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.bridge import model_name
from shiftlens.checks import (
    check_device,
    check_finite,
    check_head,
    check_int,
    check_layer,
    check_layers,
    check_vocab,
)
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.attention.core import (
    DEFAULT_WORDS,
    check_flag,
    check_model,
    check_words,
)
from shiftlens.lenses.attention.filters import FilterSpec, bind_filter, filter_reason
from shiftlens.weights import WordVocab, embedding, qk_weights, word_matrix

__all__ = [
    "word_embeddings",
    "LayerPairs",
    "project_vocab",
    "qk_word_pairs",
    "layer_word_pairs",
    "word_pairs",
    "word_pairs_layer",
    "model_word_pairs",
    "pair_word_counts",
]


# ============================================================================ weight view
def _layer_norm_model(model: Any) -> bool:
    return str(getattr(model.cfg, "normalization_type", "") or "").upper().startswith("LN")


@torch.no_grad()
def word_embeddings(model: Any, vocab: WordVocab) -> Float[Tensor, "n_words d_model"]:
    """Input word vectors for the QK projections: the mean of each word's token embeddings.

    Centred across d_model for LayerNorm models (LayerNorm centres its input before scaling;
    RMSNorm does not). Float32 on the CPU, where :func:`shiftlens.weights.embedding` reads them.

    Example:
        >>> E = word_embeddings(pair.base, vocab)  # doctest: +SKIP
        >>> E.shape  # [n_words, d_model]  # doctest: +SKIP
        torch.Size([2286, 64])
    """
    check_vocab(vocab, model)
    E = word_matrix(embedding(model), vocab)
    if _layer_norm_model(model):
        E = E - E.mean(-1, keepdim=True)
    return E


@dataclass
class LayerPairs:
    """Word pairs of the heads of one layer, as tensors (one entry per kept pair).

    Entries are sorted by head, then by ``score`` descending.

    Attributes:
        head: Row of ``W_Q`` the pair belongs to.
        dim: The d_head dimension the pair was found in.
        dim_rank: That dimension's energy rank in its head (0 = highest).
        q_word, k_word: Vocabulary indices of the query word and the key word.
        q_act, k_act: Their activations ``Q[q_word, dim]``, ``K[k_word, dim]`` (same sign).
        energy: ``[head, d_head]`` energy sum_w Q^2 + sum_w K^2 of every dimension.
        top_dims: ``[head, n_top]`` the selected dimensions, highest energy first.
        n_candidates: Per head, the candidate pairs looked at (``n_top * top_k**2``).
        n_self: Per head, candidates of a word with itself (dropped with ``exclude_self``).
        n_opposite_sign: Per head, the other candidates whose ``Q * K <= 0`` (dropped: they do
            not raise the attention logit).
        n_unrelated: Per head, the remaining same-sign candidates the relatedness filter
            dropped (0 without a filter). The kept pairs are ``n_candidates - n_self -
            n_opposite_sign - n_unrelated`` (:attr:`n_kept`).

    Example:
        >>> lp = qk_word_pairs(torch.randn(40, 8), torch.randn(2, 8, 4), torch.randn(2, 8, 4),
        ...                    top_dims=2, top_k=5)
        >>> bool((lp.score > 0).all()), lp.energy.shape
        (True, torch.Size([2, 4]))
    """

    head: Int[Tensor, " n"]
    dim: Int[Tensor, " n"]
    dim_rank: Int[Tensor, " n"]
    q_word: Int[Tensor, " n"]
    k_word: Int[Tensor, " n"]
    q_act: Float[Tensor, " n"]
    k_act: Float[Tensor, " n"]
    energy: Float[Tensor, "head d_head"]
    top_dims: Int[Tensor, "head n_top"]
    n_candidates: Int[Tensor, " head"] | None = None
    n_self: Int[Tensor, " head"] | None = None
    n_opposite_sign: Int[Tensor, " head"] | None = None
    n_unrelated: Int[Tensor, " head"] | None = None

    @property
    def score(self) -> Float[Tensor, " n"]:
        """``q_act * k_act``: the pair's contribution to the attention logit in that dim."""
        return self.q_act * self.k_act

    @property
    def n_kept(self) -> Int[Tensor, " head"]:
        """Per head, the pairs kept."""
        return torch.bincount(self.head, minlength=int(self.energy.shape[0]))

    def to(self, device: str | torch.device) -> LayerPairs:
        """Every tensor on ``device``.

        Example:
            >>> lp.to("cpu")  # doctest: +SKIP
        """
        return LayerPairs(*(None if getattr(self, f) is None else getattr(self, f).to(device)
                            for f in _LP_FIELDS))

    def __len__(self) -> int:
        return int(self.head.shape[0])


_LP_FIELDS = ("head", "dim", "dim_rank", "q_word", "k_word", "q_act", "k_act", "energy",
              "top_dims", "n_candidates", "n_self", "n_opposite_sign", "n_unrelated")


def _kv_map(n_q: int, n_k: int, device: torch.device) -> Int[Tensor, " head"]:
    if n_k == n_q:
        return torch.arange(n_q, device=device)
    if n_k < 1 or n_q % n_k:
        raise ShiftlensError(f"{n_q} query heads cannot share {n_k} key heads")
    return torch.arange(n_q, device=device) // (n_q // n_k)


def project_vocab(
    E: Float[Tensor, "n_words d_model"],
    W_Q: Float[Tensor, "head d_model d_head"],
    W_K: Float[Tensor, "kv_head d_model d_head"],
) -> tuple[Float[Tensor, "n_words head d_head"], Float[Tensor, "n_words kv_head d_head"]]:
    """Q = E W_Q and K = E W_K for every head at once: one matmul (on the device of ``E``).

    Example:
        >>> Q, K = project_vocab(torch.randn(10, 8), torch.randn(4, 8, 2), torch.randn(2, 8, 2))
        >>> Q.shape, K.shape
        (torch.Size([10, 4, 2]), torch.Size([10, 2, 2]))
    """
    n_q, n_k = W_Q.shape[0], W_K.shape[0]
    W = torch.cat(
        [einops.rearrange(W_Q, "h d e -> d (h e)"), einops.rearrange(W_K, "h d e -> d (h e)")],
        dim=1,
    )
    P = E @ W.to(E.dtype)
    e = W_Q.shape[2]
    Q = einops.rearrange(P[:, : n_q * e], "n (h e) -> n h e", h=n_q)
    K = einops.rearrange(P[:, n_q * e :], "n (h e) -> n h e", h=n_k)
    return Q, K


def _check_sizes(top_dims: Any, top_k: Any) -> None:
    if top_dims is not None:
        check_int("top_dims", top_dims, minimum=1)
    check_int("top_k", top_k, minimum=1)


def _check_qk_tensors(E: Any, W_Q: Any, W_K: Any, kv_map: Any) -> None:
    """Shapes and finiteness of the tensors of :func:`qk_word_pairs` (named errors)."""
    for name, x, nd in (("E", E, 2), ("W_Q", W_Q, 3), ("W_K", W_K, 3)):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != nd:
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShiftlensError(f"{name} must be a float tensor with {nd} dimensions, got {shape}")
    if W_Q.shape[1] != E.shape[1] or W_K.shape[1] != E.shape[1]:
        raise ShiftlensError(f"d_model differs: E {list(E.shape)}, W_Q {list(W_Q.shape)}, W_K "
                             f"{list(W_K.shape)}")
    if W_K.shape[2] != W_Q.shape[2]:
        raise ShiftlensError(f"d_head differs: W_Q {list(W_Q.shape)}, W_K {list(W_K.shape)}")
    if kv_map is not None:
        if (not isinstance(kv_map, Tensor) or kv_map.is_floating_point()
                or kv_map.dtype == torch.bool or list(kv_map.shape) != [W_Q.shape[0]]):
            raise ShiftlensError(f"kv_map must be an integer tensor with one key head per query "
                                 f"head ({W_Q.shape[0]}), got {kv_map!r}")
        if kv_map.numel() and (int(kv_map.min()) < 0 or int(kv_map.max()) >= W_K.shape[0]):
            raise ShiftlensError(f"kv_map points outside the {W_K.shape[0]} key heads: "
                                 f"{kv_map.tolist()}")
    for name, x in (("E", E), ("W_Q", W_Q), ("W_K", W_K)):
        check_finite(x, what=f"qk_word_pairs: {name}")


def _mask(out: Any, shape: Any, device: torch.device) -> Tensor:
    """A filter's answer as a bool mask of ``shape`` (a named error otherwise)."""
    try:
        m = torch.as_tensor(out)
    except (TypeError, ValueError, RuntimeError):
        m = None
    if m is None or tuple(m.shape) != tuple(shape):
        got = tuple(m.shape) if m is not None else type(out).__name__
        raise ShiftlensError(f"the pair filter answered {got} for {tuple(shape)} word pairs: it "
                             "must return one True/False per pair")
    return m.to(device=device, dtype=torch.bool)


def _candidates(E: Tensor, W_Q: Tensor, W_K: Tensor, km: Tensor, T: int, k: int,
                exclude_self: bool) -> tuple[Tensor, ...]:
    """Energy ranking, top-K words per (head, dim) and the same-sign rule, batched."""
    H = W_Q.shape[0]
    Q, K = project_vocab(E, W_Q, W_K)  # [n, H, e], [n, H_kv, e]
    energy = (Q**2).sum(0) + (K**2).sum(0)[km]  # [H, e]
    dims = energy.topk(T, dim=-1).indices  # [H, T], highest energy first
    hh = torch.arange(H, device=Q.device)[:, None]
    Qs = Q.permute(1, 2, 0)[hh, dims]  # [H, T, n]
    Ks = K.permute(1, 2, 0)[km[:, None], dims]  # [H, T, n]
    qi = Qs.abs().topk(k, dim=-1).indices  # [H, T, k]
    ki = Ks.abs().topk(k, dim=-1).indices
    qa = Qs.gather(-1, qi)
    ka = Ks.gather(-1, ki)
    keep = (qa[..., :, None] * ka[..., None, :]) > 0  # [H, T, k, k]
    if exclude_self:
        keep &= qi[..., :, None] != ki[..., None, :]
    return energy, dims, qi, ki, qa, ka, keep


@torch.no_grad()
def qk_word_pairs(
    E: Float[Tensor, "n_words d_model"],
    W_Q: Float[Tensor, "head d_model d_head"],
    W_K: Float[Tensor, "kv_head d_model d_head"],
    *,
    top_dims: int | None = 10,
    top_k: int = 50,
    pair_filter: Callable[[Tensor, Tensor], Tensor] | None = None,
    exclude_self: bool = True,
    kv_map: Int[Tensor, " head"] | None = None,
) -> LayerPairs:
    """Word pairs of every head of a layer from the QK weights as tensors (Wu et al. 2024, §4).

    The batched core of :func:`word_pairs` (also available as ``layer_word_pairs``, its older
    name). One matmul projects the vocabulary through all heads (:func:`project_vocab`);
    energy ranking, top-K selection and the same-sign rule are batched over heads and
    dimensions; the relatedness filter is called once for all candidates of the layer (per
    chunk of heads when it has a ``block`` method). Runs on the device of ``E``.

    Args:
        E: Word vectors (rows = vocabulary words).
        W_Q: Query weights of the heads (norm folded).
        W_K: Key weights, either one per query head or one per key/value group.
        top_dims: Dimensions kept per head (highest energy; None = all; capped at d_head).
        top_k: Words kept per dimension for Q and for K (capped at the vocabulary size).
        pair_filter: ``f(q_word, k_word) -> bool mask`` (e.g. a bound
            :class:`~shiftlens.lenses.attention.filters.PairFilter`).
        exclude_self: Drop pairs of a word with itself (as in the paper).
        kv_map: Key head of each query head (default: consecutive groups, as in GQA).

    Returns:
        The :class:`LayerPairs` (on the device of ``E``).

    Raises:
        ShiftlensError: empty vocabulary, bad sizes, heads that cannot share the key heads.

    Example:
        >>> lp = qk_word_pairs(torch.randn(50, 8), torch.randn(2, 8, 4), torch.randn(2, 8, 4),
        ...                    top_dims=2, top_k=5)
        >>> lp.top_dims.shape
        torch.Size([2, 2])
    """
    _check_sizes(top_dims, top_k)
    exclude_self = check_flag("exclude_self", exclude_self)
    _check_qk_tensors(E, W_Q, W_K, kv_map)
    if pair_filter is not None and not callable(pair_filter):
        raise ShiftlensError(f"pair_filter must be callable (a bound filter), got "
                             f"{type(pair_filter).__name__}")
    n = E.shape[0]
    if n == 0:
        raise ShiftlensError("empty vocabulary: no word vectors")
    dev = E.device
    H, _, e = W_Q.shape
    km = _kv_map(H, W_K.shape[0], dev) if kv_map is None else kv_map.to(dev)
    T = e if top_dims is None else min(top_dims, e)
    k = min(top_k, n)
    energy, dims, qi, ki, qa, ka, keep = _candidates(E, W_Q, W_K, km, T, k, exclude_self)
    same = (qa[..., :, None] * ka[..., None, :]) > 0
    selfp = (qi[..., :, None] == ki[..., None, :]) if exclude_self else torch.zeros_like(same)
    n_self = selfp.flatten(1).sum(1)
    n_opp = (~same & ~selfp).flatten(1).sum(1)
    n_same = keep.flatten(1).sum(1)
    blockwise = pair_filter is not None and callable(getattr(pair_filter, "block", None))
    if blockwise:  # all k x k combinations of each (head, dim) at once, heads in chunks
        step = max(1, int(2**24 // max(1, T * k * max(1, E.shape[1]))))
        for s in range(0, H, step):
            keep[s : s + step] &= _mask(pair_filter.block(qi[s : s + step], ki[s : s + step]),
                                        keep[s : s + step].shape, dev)
    h, t, i, j = keep.nonzero(as_tuple=True)
    qw, kw = qi[h, t, i], ki[h, t, j]
    if pair_filter is not None and not blockwise and h.numel():
        ok = _mask(pair_filter(qw, kw), qw.shape, dev)
        h, t, i, j, qw, kw = h[ok], t[ok], i[ok], j[ok], qw[ok], kw[ok]
    q_act, k_act = qa[h, t, i], ka[h, t, j]
    order = torch.argsort(q_act * k_act, descending=True, stable=True)
    order = order[torch.argsort(h[order], stable=True)]
    h, t, qw, kw, q_act, k_act = h[order], t[order], qw[order], kw[order], q_act[order], k_act[order]
    kept = torch.bincount(h, minlength=H)
    return LayerPairs(
        head=h, dim=dims[h, t], dim_rank=t, q_word=qw, k_word=kw, q_act=q_act, k_act=k_act,
        energy=energy, top_dims=dims,
        n_candidates=torch.full((H,), T * k * k, dtype=torch.long, device=dev),
        n_self=n_self, n_opposite_sign=n_opp, n_unrelated=n_same - kept,
    )


#: The older name of :func:`qk_word_pairs` (kept for existing code).
layer_word_pairs = qk_word_pairs


def _is_index(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_list(x: Any) -> bool:
    return isinstance(x, (Sequence, np.ndarray, range)) and not isinstance(x, (str, bytes))


def scope(model: Any, layer: Any, head: Any) -> tuple[list[int], list[int] | None]:
    """Layers (sorted) and heads (in the given order, duplicates dropped; None = all).

    ``layer`` and ``head`` are an index, a list of indices or None; bools, floats and strings
    are refused (``True`` is not layer 1).

    Example:
        >>> scope(pair.base, [1, 0], 2)  # doctest: +SKIP
        ([0, 1], [2])
    """
    who = repr(model_name(model))
    if _is_index(layer):
        layers = [check_layer(model, layer)]
    elif layer is None or _is_list(layer):
        layers = sorted(check_layers(model, layer))
    else:
        raise ShiftlensError(f"{who}: layer must be a layer index, a list of them or None, got "
                             f"{layer!r}")
    if head is None:
        return layers, None
    if _is_index(head):
        head = [head]
    elif not _is_list(head):
        raise ShiftlensError(f"{who}: head must be a head index, a list of them or None, got "
                             f"{head!r}")
    heads = list(dict.fromkeys(check_head(model, layers[0], h) for h in head))
    if not heads:
        raise ShiftlensError(f"{who}: empty list of heads for layer {layers[0]}")
    return layers, heads


_scope = scope


def _layer_weights(model: Any, layer: int, heads: list[int] | None, fold_norm: bool,
                   device: torch.device) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Selected heads' W_Q, the key heads they use (deduplicated) and the head -> key map."""
    W_Q, W_K = qk_weights(model, layer, fold_norm=fold_norm)  # CPU, K expanded per query head
    n_heads = W_Q.shape[0]
    hs = list(range(n_heads)) if heads is None else heads
    check_finite_heads(model, layer, hs, W_Q, W_K)
    n_kv = int(getattr(model.cfg, "n_key_value_heads", None) or n_heads)
    g = n_heads // n_kv if n_kv and n_heads % n_kv == 0 else 1
    group = [hd // g for hd in hs]
    uniq = sorted(set(group))
    W_K_u = torch.stack([W_K[u * g] for u in uniq])
    km = torch.tensor([uniq.index(x) for x in group], dtype=torch.long, device=device)
    return W_Q[hs].to(device), W_K_u.to(device), km, hs


def check_finite_heads(model: Any, layer: int, heads: Sequence[int],
                       W_Q: Float[Tensor, "head d_model d_head"],
                       W_K: Float[Tensor, "head d_model d_head"]) -> None:
    """Refuse NaN/infinite folded W_Q / W_K (one per query head) of the heads analysed.

    Example:
        >>> check_finite_heads(pair.base, 0, [0], *qk_weights(pair.base, 0))  # doctest: +SKIP
    """
    for name, W in (("W_Q", W_Q), ("W_K", W_K)):
        bad = ~torch.isfinite(W[list(heads)]).flatten(1).all(-1)
        if bool(bad.any()):
            hs = [heads[i] for i in bad.nonzero().flatten().tolist()]
            raise ShiftlensError(
                f"{model_name(model)!r}: layer {layer}: the folded {name} of head"
                f"{'s' if len(hs) > 1 else ''} {', '.join(map(str, hs))} holds non-finite "
                "values (NaN/inf in q_proj/k_proj or the attention-input norm; weights edited "
                "after loading?): no word pair can be ranked over them")


def check_finite_words(model: Any, E: Float[Tensor, "n_words d_model"], vocab: WordVocab) -> None:
    """Refuse word vectors with a NaN or an infinity, naming the words and their tokens.

    Example:
        >>> check_finite_words(pair.base, word_embeddings(pair.base, vocab), vocab)  # doctest: +SKIP
    """
    bad = (~torch.isfinite(E).all(-1)).nonzero().flatten().tolist()
    if bad:
        first = [f"{vocab.words[i]!r} (token ids {list(vocab.token_ids[i])})" for i in bad[:3]]
        raise ShiftlensError(
            f"{model_name(model)!r}: the input embedding is non-finite for {len(bad)} of "
            f"{len(vocab)} vocabulary words: {', '.join(first)}"
            f"{' ...' if len(bad) > 3 else ''} (weights edited after loading?); no word pair "
            "can be ranked over them")


def funnel_totals(funnel: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Sums of the per-head candidate counts of :func:`word_pairs` (``df.attrs["funnel"]``).

    Example:
        >>> funnel_totals([{"candidates": 10, "self": 1, "opposite_sign": 4, "unrelated": 3,
        ...                 "kept": 2}])
        {'candidates': 10, 'self': 1, 'opposite_sign': 4, 'unrelated': 3, 'kept': 2}
    """
    keys = ("candidates", "self", "opposite_sign", "unrelated", "kept")
    return {k: int(sum(int(f[k]) for f in funnel)) for k in keys}


def filter_note(name: str, reason: str, totals: dict[str, int], *, what: str = "") -> str:
    """One sentence: how many same-sign candidate pairs the relatedness filter dropped, and why.

    Example:
        >>> filter_note("none", "", {"candidates": 10, "self": 0, "opposite_sign": 4,
        ...             "unrelated": 0, "kept": 6})
        'No relatedness filter: all 6 same-sign candidate pairs are kept (4 of 10 candidates dropped for opposite signs).'
    """
    same = totals["unrelated"] + totals["kept"]
    tail = f"{totals['opposite_sign']:,} of {totals['candidates']:,} candidates dropped for " \
           "opposite signs" + (f", {totals['self']:,} as a word with itself" if totals["self"]
                               else "")
    w = f" {what}" if what else ""
    if name == "none":
        return (f"No relatedness filter{w}: all {same:,} same-sign candidate pairs are kept "
                f"({tail}).")
    pct = f" ({totals['unrelated'] / same:.0%})" if same else ""
    return (f"The relatedness filter {name}{w} dropped {totals['unrelated']:,} of {same:,} "
            f"same-sign candidate pairs{pct} because {reason}; {totals['kept']:,} kept ({tail}).")


def _pairs_frame(
    lp: LayerPairs, layer: int, heads: list[int], vocab: WordVocab, bound: Any
) -> pd.DataFrame:
    words = np.asarray(vocab.words, dtype=object)
    sim = (bound.similarity(lp.q_word, lp.k_word).cpu().numpy()
           if hasattr(bound, "similarity") else np.full(len(lp), np.nan))
    lp = lp.to("cpu")
    h = lp.head.numpy().astype(np.int64)
    rank = np.zeros(len(h), dtype=np.int64)
    if len(h):
        starts = np.r_[0, np.flatnonzero(np.diff(h)) + 1]
        counts = np.diff(np.r_[starts, len(h)])
        rank = np.arange(len(h)) - np.repeat(starts, counts)
    qw, kw = lp.q_word.numpy(), lp.k_word.numpy()
    return pd.DataFrame({
        "layer": np.full(len(h), layer, dtype=np.int64),
        "head": np.asarray(heads, dtype=np.int64)[h],
        "rank": rank,
        "dim": lp.dim.numpy().astype(np.int64),
        "dim_rank": lp.dim_rank.numpy().astype(np.int64),
        "energy": lp.energy[lp.head, lp.dim].numpy(),
        "q_word": words[qw],
        "k_word": words[kw],
        "q_act": lp.q_act.numpy(),
        "k_act": lp.k_act.numpy(),
        "score": lp.score.numpy(),
        "similarity": np.asarray(sim, dtype=np.float32),
        "q_index": qw.astype(np.int64),
        "k_index": kw.astype(np.int64),
    })


@torch.no_grad()
def word_inputs(model: Any, device: Any, vocab: WordVocab | None, filter: Any,
                bound_filter: Any) -> tuple[torch.device, WordVocab, Tensor, Any, str]:
    """The checked inputs of a word-pair scan: device, vocabulary (default: the
    :data:`DEFAULT_WORDS` most frequent words), finite word vectors on the device and the bound
    relatedness filter (moved there too) with its name.

    Example:
        >>> dev, vocab, E, bound, name = word_inputs(model, None, None, "cosine", None)  # doctest: +SKIP
    """
    dev = check_device(device, model)
    if vocab is None:
        from shiftlens.vocab import default_vocab

        vocab = default_vocab(model.tokenizer, DEFAULT_WORDS)
    check_vocab(vocab, model)
    E = word_embeddings(model, vocab)
    check_finite_words(model, E, vocab)
    bound, fname = bind_filter(filter, model, vocab, bound_filter)
    if callable(getattr(bound, "to", None)):
        bound = bound.to(dev)
    return dev, vocab, E.to(dev), bound, fname


def word_pairs(
    model: Any,
    layer: int | Sequence[int] | None = None,
    head: int | Sequence[int] | None = None,
    vocab: WordVocab | None = None,
    *,
    top_dims: int | None = 10,
    top_k: int = 50,
    filter: FilterSpec = "embedding",
    bound_filter: Any = None,
    exclude_self: bool = True,
    fold_norm: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The word pairs heads encode in their QK circuits (Wu et al. 2024, §4).

    Word vectors E (mean of each word's token input embeddings, :func:`word_embeddings`) are
    projected by each head's W_Q and W_K (norm gamma folded, GQA key heads shared):
    Q = E W_Q, K = E W_K. A head's d_head dimensions are ranked by energy
    sum_w Q[w,d]^2 + sum_w K[w,d]^2; for each of the ``top_dims`` top dimensions, the ``top_k``
    words with largest |Q| and with largest |K| form candidate (query word, key word) pairs,
    kept when ``Q * K > 0`` (the pair raises the attention logit) and the relatedness filter
    passes (default: the model's own embedding cosine with the paper's mean + 1.96σ rule,
    :class:`~shiftlens.lenses.attention.filters.EmbeddingFilter`). Each layer is one batched
    projection of the vocabulary through all selected heads (:func:`qk_word_pairs`).

    One head (``word_pairs(model, 3, 7, vocab)``), some or all heads of a layer
    (``head=[1, 3]`` / ``head=None``), or every head of several or all layers
    (``layer=[0, 2]`` / ``layer=None``): the rows of a head are the same whatever the scope.

    Args:
        model: A TransformerBridge.
        layer: A layer index, a list of them, or None for every layer.
        head: A query head index, a list of them (in that order), or None for every head.
        vocab: Word vocabulary; words the tokenizer could not encode are in
            ``vocab.skipped`` (counted in ``df.attrs["n_skipped_words"]``). Default:
            :func:`shiftlens.vocab.default_vocab` with 5,000 words.
        top_dims: Dimensions analysed per head, by energy (None = all d_head).
        top_k: Words per dimension by |Q| and by |K|.
        filter: ``"embedding"``, None (no filter) or a
            :class:`~shiftlens.lenses.attention.filters.PairFilter`; bound once.
        bound_filter: An already bound filter (overrides ``filter``; e.g. the base model's
            embedding filter for both models of a pair).
        exclude_self: Drop pairs of a word with itself.
        fold_norm: Fold the attention-input norm's gamma into W_Q/W_K.
        device: Where the projections run (default: the model's input device,
            :func:`shiftlens.bridge.device_of`).
        progress: Show a progress bar over layers (when there are several).

    Returns:
        A DataFrame, per head sorted by ``score`` (``rank`` 0 = the head's top pair), columns
        ``layer, head, rank, dim, dim_rank, energy, q_word, k_word, q_act, k_act, score,
        similarity, q_index, k_index`` (``score = q_act * k_act``, ``similarity`` from the
        filter when it has one); ``df.attrs`` records the model, the filter, the vocabulary
        size, the number of skipped words, the sizes used (``top_dims_used``: capped at
        d_head; ``top_k_used``: capped at the vocabulary), and what was dropped:
        ``attrs["funnel"]`` (per
        head: ``candidates``, ``self``, ``opposite_sign``, ``unrelated`` (dropped by the
        relatedness filter), ``kept``), their sums ``attrs["counts"]``, the filter's reason
        ``attrs["filter_reason"]`` and one sentence ``attrs["filter_note"]`` ("The
        relatedness filter ... dropped 1,234 of 1,500 same-sign candidate pairs because ...").

    Raises:
        ShiftlensError: layer or head out of range (an index, a list of them or None; bools
            are not indices), empty vocabulary, bad sizes, flags, device or filter, NaN or
            infinite word vectors or W_Q / W_K of an analysed head (naming model, layer, head
            or word).

    Example:
        >>> from shiftlens.vocab import default_vocab
        >>> vocab = default_vocab(model.tokenizer, 5000)  # doctest: +SKIP
        >>> word_pairs(model, 3, 7, vocab).head()[["q_word", "k_word", "score"]]  # doctest: +SKIP
        >>> every_head = word_pairs(model, vocab=vocab)  # doctest: +SKIP
    """
    check_model(model, "word_pairs")
    layers, heads = scope(model, layer, head)
    _check_sizes(top_dims, top_k)
    exclude_self = check_flag("exclude_self", exclude_self)
    fold_norm = check_flag("fold_norm", fold_norm)
    progress = check_flag("progress", progress)
    dev, vocab, E, bound, fname = word_inputs(model, device, vocab, filter, bound_filter)
    frames, funnel = [], []
    for lay in tqdm(layers, desc=f"word pairs {model_name(model)}",
                    disable=not progress or len(layers) == 1, leave=False):
        W_Q, W_K, km, hs = _layer_weights(model, lay, heads, fold_norm, dev)
        lp = qk_word_pairs(E, W_Q, W_K, top_dims=top_dims, top_k=top_k, pair_filter=bound,
                           exclude_self=exclude_self, kv_map=km)
        frames.append(_pairs_frame(lp, lay, hs, vocab, bound))
        funnel.extend(_funnel_rows(lp, lay, hs))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    reason = filter_reason(bound, fname) if bound is not None else ""
    totals = funnel_totals(funnel)
    d_head = int(lp.energy.shape[1])
    df.attrs.update({"model": model_name(model), "filter": fname, "n_words": len(vocab),
                     "n_skipped_words": len(vocab.skipped),
                     "top_dims_used": d_head if top_dims is None else min(top_dims, d_head),
                     "top_k_used": min(top_k, len(vocab)), "funnel": funnel,
                     "counts": totals, "filter_reason": reason,
                     "filter_note": filter_note(fname, reason, totals)})
    return df


def _funnel_rows(lp: LayerPairs, layer: int, heads: list[int]) -> list[dict[str, Any]]:
    kept = lp.n_kept.cpu().tolist()
    cols = {c: getattr(lp, f"n_{c}").cpu().tolist()
            for c in ("candidates", "self", "opposite_sign", "unrelated")}
    return [{"layer": int(layer), "head": int(h), **{c: int(v[i]) for c, v in cols.items()},
             "kept": int(kept[i])} for i, h in enumerate(heads)]


def word_pairs_layer(model: Any, layer: int, vocab: WordVocab, *,
                     heads: Sequence[int] | None = None, **kwargs: Any) -> pd.DataFrame:
    """Word pairs of all (or some) heads of one layer: :func:`word_pairs` (older name).

    ``word_pairs_layer(model, layer, vocab, heads=hs)`` is ``word_pairs(model, layer, hs,
    vocab)``; the other keyword arguments are those of :func:`word_pairs`.

    Example:
        >>> df = word_pairs_layer(pair.base, 0, vocab)  # doctest: +SKIP
        >>> df.groupby("head").size()  # doctest: +SKIP
    """
    return word_pairs(model, check_layer(model, layer), heads, vocab, **kwargs)


def model_word_pairs(model: Any, vocab: WordVocab, *, layers: Sequence[int] | None = None,
                     heads: Sequence[int] | None = None, **kwargs: Any) -> pd.DataFrame:
    """Word pairs of every head of every (selected) layer: :func:`word_pairs` (older name).

    ``model_word_pairs(model, vocab, layers=ls, heads=hs)`` is ``word_pairs(model, ls, hs,
    vocab)`` with every layer for ``layers=None``; the other keyword arguments (``filter``,
    ``bound_filter``, ``progress``, ...) are those of :func:`word_pairs`.

    Example:
        >>> df = model_word_pairs(pair.tuned, vocab, layers=[0, 1])  # doctest: +SKIP
    """
    return word_pairs(model, check_layers(model, layers), heads, vocab, **kwargs)


def pair_word_counts(
    pairs: pd.DataFrame, words: Sequence[str] | None = None, *, min_dims: int = 1
) -> pd.DataFrame:
    """How many distinct word pairs of each head contain each word.

    Pairs are unordered (``a–b`` and ``b–a`` are one pair) and a pair counts once per head,
    however many dimensions it was found in; with ``min_dims`` > 1 only pairs found in at
    least that many dimensions of the head count (the authors' released analysis keeps pairs
    seen in more than one dimension).

    Args:
        pairs: A frame from :func:`word_pairs`.
        words: Count only these words (default all).
        min_dims: Minimum number of dimensions a pair must appear in.

    Returns:
        Columns ``layer, head, word, count`` (words with count 0 are absent).

    Example:
        >>> pairs = pd.DataFrame({"layer": [0, 0], "head": [1, 1], "dim": [0, 2],
        ...                       "q_word": ["write", "poem"], "k_word": ["poem", "write"]})
        >>> pair_word_counts(pairs).to_dict("records")[0]
        {'layer': 0, 'head': 1, 'word': 'poem', 'count': 1}
    """
    min_dims = check_int("min_dims", min_dims, minimum=1)
    if not isinstance(pairs, pd.DataFrame):
        raise ShiftlensError(f"pair_word_counts: pairs must be a DataFrame from word_pairs, got "
                             f"{type(pairs).__name__}")
    need = [c for c in ("layer", "head", "dim", "q_word", "k_word") if c not in pairs.columns]
    if need:
        raise ShiftlensError(f"pair_word_counts: pairs lacks the columns {need}")
    if words is not None:
        words = check_words("words", words)
    cols = ["layer", "head", "word", "count"]
    if len(pairs) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "word" else np.int64)
                             for c in cols})
    q = pairs["q_word"].astype(str).to_numpy()
    k = pairs["k_word"].astype(str).to_numpy()
    d = pd.DataFrame({
        "layer": pairs["layer"].to_numpy(), "head": pairs["head"].to_numpy(),
        "a": np.where(q <= k, q, k), "b": np.where(q <= k, k, q), "dim": pairs["dim"].to_numpy(),
    })
    u = d.drop_duplicates().groupby(["layer", "head", "a", "b"], sort=False).size()
    u = u[u >= min_dims].reset_index()[["layer", "head", "a", "b"]]
    both = pd.concat([
        u[["layer", "head", "a"]].rename(columns={"a": "word"}),
        u.loc[u.a != u.b, ["layer", "head", "b"]].rename(columns={"b": "word"}),
    ])
    if words is not None:
        both = both[both.word.isin(set(words))]
    out = both.groupby(["layer", "head", "word"]).size().rename("count").reset_index()
    out["count"] = out["count"].astype(np.int64)
    return out
