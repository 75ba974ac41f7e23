"""Relatedness filters of the word-pair analysis: which (query word, key word) pairs are related.

Wu et al. (2024, §4) keep a candidate word pair of a head only when the two words are related:
their GloVe cosine similarity must exceed the mean plus 1.96 standard deviations of *each*
word's similarities to a baseline vocabulary (the 3,000 most frequent words). This module holds
that rule (:class:`CosineThreshold`, bound to word vectors by :func:`cosine_threshold`) and the
vectors it can run on:

* :class:`EmbeddingFilter` - the model's own input word embeddings (the default: GloVe is not
  available offline, a documented deviation);
* :class:`VectorFilter` - any external vectors, e.g. GloVe, to reproduce the paper exactly;
* anything implementing :class:`PairFilter` (``bind(model, vocab) -> BoundFilter``).

:func:`resolve_filter` turns the ``filter=`` argument of the word-pair functions into a
:class:`PairFilter` and :func:`bind_filter` binds it once per vocabulary.

Devices: a bound :class:`CosineThreshold` lives where its vectors are (:meth:`CosineThreshold.to`
moves it); index tensors are moved to the vectors' device before indexing and the answers are
returned on the device of the indices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from shiftlens.checks import check_float, check_int, check_vocab
from shiftlens.errors import ShiftlensError
from shiftlens.weights import WordVocab, embedding, word_matrix

__all__ = [
    "PairFilter",
    "BoundFilter",
    "CosineThreshold",
    "cosine_threshold",
    "EmbeddingFilter",
    "VectorFilter",
    "FilterSpec",
    "resolve_filter",
    "bind_filter",
    "filter_reason",
]

#: What the ``filter=`` argument accepts: ``"embedding"``, ``None`` / ``"none"`` or a PairFilter.
FilterSpec = Any


@runtime_checkable
class BoundFilter(Protocol):
    """A relatedness test bound to one vocabulary: which (query word, key word) pairs pass.

    Called with word indices into the vocabulary; returns a boolean mask. May also define
    ``block(q_words[..., a], k_words[..., b]) -> bool[..., a, b]`` (every combination of two
    word lists at once; :func:`~shiftlens.lenses.attention.qk.qk_word_pairs` uses it when
    present, which avoids gathering one vector pair per candidate), ``similarity(q_word,
    k_word)`` (reported in the pair tables) and ``to(device)``.

    Example:
        >>> bound = resolve_filter("embedding").bind(model, vocab)  # doctest: +SKIP
        >>> bound(torch.tensor([0]), torch.tensor([1]))  # doctest: +SKIP
        tensor([False])
    """

    def __call__(self, q_word: Tensor, k_word: Tensor) -> Tensor: ...


@runtime_checkable
class PairFilter(Protocol):
    """A relatedness filter: ``bind(model, vocab)`` returns a :class:`BoundFilter`.

    Implement this to plug in any measure (e.g. GloVe similarities: see :class:`VectorFilter`).
    ``bind`` is called once per vocabulary (and model), before any layer is analysed.

    Example:
        >>> class KeyIsThe:  # keep pairs whose key word is "the"
        ...     def bind(self, model, vocab):
        ...         the = vocab.words.index("the")
        ...         return lambda q, k: k == the
        >>> isinstance(KeyIsThe(), PairFilter)
        True
    """

    def bind(self, model: Any, vocab: WordVocab) -> BoundFilter: ...


@dataclass
class CosineThreshold:
    """Cosine relatedness with a per-word threshold: the paper's mean + z·σ rule (§4).

    A pair (a, b) passes when ``cos(a, b) > threshold[a]`` and ``cos(a, b) > threshold[b]``;
    ``threshold[w]`` is the mean plus ``z`` standard deviations of w's cosine similarities to
    the baseline words (w itself left out). Words without a vector never pass.

    Attributes:
        unit: Unit-norm word vectors (zero rows for words without a vector).
        threshold: Per-word threshold (``inf`` for words without a vector).
        name: Description (recorded in results).
        z: The ``z`` of the rule (NaN when unknown).
        n_baseline: Baseline words the thresholds were computed against.

    Example:
        >>> ct = cosine_threshold(torch.eye(3)[[0, 0, 1, 2]] + 0.01, z=0.5)  # words 0, 1 alike
        >>> ct(torch.tensor([0, 0]), torch.tensor([1, 2])).tolist()
        [True, False]
    """

    unit: Float[Tensor, "n_words d"]
    threshold: Float[Tensor, " n_words"]
    name: str = "cosine"
    z: float = float("nan")
    n_baseline: int = 0

    def to(self, device: str | torch.device) -> CosineThreshold:
        """The same filter with its vectors on ``device``.

        Example:
            >>> cosine_threshold(torch.randn(5, 3)).to("cpu").unit.device
            device(type='cpu')
        """
        return CosineThreshold(self.unit.to(device), self.threshold.to(device), self.name,
                               self.z, self.n_baseline)

    @property
    def reason(self) -> str:
        """Why the rule drops a pair, in words (the sentences of the word-pair results quote it).

        Example:
            >>> cosine_threshold(torch.randn(5, 3), z=2.0).reason
            "the two words' cosine similarity was not above mean + 2 sd of each word's cosines to the 5 baseline words"
        """
        z = f"{self.z:g}" if math.isfinite(self.z) else "z"
        missing = int(torch.isinf(self.threshold).sum())
        return ("the two words' cosine similarity was not above mean + "
                f"{z} sd of each word's cosines to the {self.n_baseline:,} baseline words"
                + (f" ({missing:,} words have no vector and never pass)" if missing else ""))

    def similarity(self, q_word: Int[Tensor, " n"], k_word: Int[Tensor, " n"]) -> Float[Tensor, " n"]:
        """Cosine similarity of the pairs' vectors (on the device of ``q_word``).

        Example:
            >>> ct = cosine_threshold(torch.eye(2))
            >>> ct.similarity(torch.tensor([0]), torch.tensor([1])).tolist()
            [0.0]
        """
        d = self.unit.device
        s = (self.unit[q_word.to(d)] * self.unit[k_word.to(d)]).sum(-1)
        return s.to(q_word.device)

    def __call__(self, q_word: Int[Tensor, " n"], k_word: Int[Tensor, " n"]) -> Bool[Tensor, " n"]:
        d = self.unit.device
        q, k = q_word.to(d), k_word.to(d)
        s = (self.unit[q] * self.unit[k]).sum(-1)
        return ((s > self.threshold[q]) & (s > self.threshold[k])).to(q_word.device)

    def block(
        self, q_word: Int[Tensor, "*batch a"], k_word: Int[Tensor, "*batch b"]
    ) -> Bool[Tensor, "*batch a b"]:
        """The rule for every (q_word[..., i], k_word[..., j]) combination (batched matmul).

        Example:
            >>> ct = cosine_threshold(torch.randn(10, 4))
            >>> ct.block(torch.tensor([[0, 1]]), torch.tensor([[2, 3, 4]])).shape
            torch.Size([1, 2, 3])
        """
        d = self.unit.device
        q, k = q_word.to(d), k_word.to(d)
        S = self.unit[q] @ self.unit[k].transpose(-1, -2)
        ok = (S > self.threshold[q][..., :, None]) & (S > self.threshold[k][..., None, :])
        return ok.to(q_word.device)


@torch.no_grad()
def cosine_threshold(
    vectors: Float[Tensor, "n_words d"],
    *,
    has_vector: Bool[Tensor, " n_words"] | None = None,
    z: float = 1.96,
    n_baseline: int = 3000,
    chunk: int = 4096,
    name: str = "cosine",
) -> CosineThreshold:
    """Bind the mean + z·σ cosine rule to word vectors (one row per vocabulary word).

    The baseline is the first ``n_baseline`` words that have a vector (the most frequent ones
    for a frequency-ordered vocabulary, as in the paper, which used 3,000). The mean and the
    variance of a word's similarities to the baseline are computed in closed form from the
    baseline's vector sum and Gram matrix (float64, ``O(n_words d^2)``, no
    ``n_words x n_baseline`` matrix), in chunks of ``chunk`` rows, on the device of
    ``vectors``.

    Args:
        vectors: Word vectors, row i for vocabulary word i.
        has_vector: Which rows are real vectors (default: all).
        z: Standard deviations above the mean (1.96 in the paper).
        n_baseline: Baseline size.
        chunk: Rows per similarity block.
        name: Recorded description.

    Returns:
        The bound :class:`CosineThreshold` (on the device of ``vectors``).

    Example:
        >>> ct = cosine_threshold(torch.randn(100, 16), n_baseline=50)
        >>> ct.threshold.shape
        torch.Size([100])
    """
    z = check_float("z", z)
    chunk = check_int("chunk", chunk, minimum=1)
    n_baseline = check_int("n_baseline", n_baseline, minimum=2)
    if not isinstance(vectors, Tensor) or vectors.dim() != 2 or not (
            vectors.is_floating_point() or vectors.dtype in (torch.int32, torch.int64)):
        shape = list(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
        raise ShiftlensError(f"cosine_threshold: vectors must be a [n_words, d] tensor, got {shape}")
    V = vectors.detach().float()
    n, dev = V.shape[0], V.device
    has = (torch.ones(n, dtype=torch.bool, device=dev) if has_vector is None
           else torch.as_tensor(has_vector).to(device=dev, dtype=torch.bool))
    if tuple(has.shape) != (n,):
        raise ShiftlensError(f"cosine_threshold: has_vector must hold one flag per word ({n}), "
                             f"got shape {tuple(has.shape)}")
    bad = (~torch.isfinite(V).all(-1) & has).nonzero().flatten().tolist()
    if bad:
        raise ShiftlensError(f"cosine_threshold: {len(bad)} word vectors hold NaN or infinite "
                             f"values (first rows {bad[:5]}); the relatedness rule cannot use them")
    unit = torch.nn.functional.normalize(V, dim=-1) * has[:, None]
    base = torch.nonzero(has).squeeze(-1)[:n_baseline]
    if base.numel() < 2:
        raise ShiftlensError(
            f"cosine_threshold: {base.numel()} baseline word(s) with a vector; the mean + z sd "
            "rule needs at least 2 (every pair would be dropped)")
    thr = torch.full((n,), float("inf"), device=dev)
    if base.numel() >= 2:
        # mean and variance of cos(w, b) over the baseline without the n x b matrix:
        # sum_b cos = u_w . (sum_b u_b) and sum_b cos^2 = u_w^T (B^T B) u_w (float64)
        B = unit[base].double()
        s1, G = B.sum(0), B.T @ B
        in_base = torch.zeros(n, dtype=torch.bool, device=dev)
        in_base[base] = True
        for s in range(0, n, chunk):
            U = unit[s : s + chunk].double()
            own = in_base[s : s + chunk].double()  # leave the word itself out
            sq = (U * U).sum(1)
            cnt = base.numel() - own
            m = (U @ s1 - own * sq) / cnt
            m2 = (((U @ G) * U).sum(1) - own * sq**2) / cnt
            thr[s : s + chunk] = (m + z * (m2 - m**2).clamp(min=0).sqrt()).float()
    thr = torch.where(has, thr, torch.full_like(thr, float("inf")))
    return CosineThreshold(unit=unit, threshold=thr, name=str(name), z=z,
                           n_baseline=int(base.numel()))


class EmbeddingFilter:
    """The default relatedness filter: cosine of the model's own input word embeddings.

    An offline stand-in for the paper's GloVe filter (a deviation, see docs/attention.md):
    a word's vector is the mean of its tokens' input embeddings, and a pair passes the
    mean + ``z``·σ rule of :class:`CosineThreshold` against the first ``n_baseline``
    vocabulary words.

    Args:
        z: Standard deviations above the mean similarity (1.96 in the paper).
        n_baseline: Baseline size.

    Example:
        >>> EmbeddingFilter(z=2.5)
        EmbeddingFilter(z=2.5, n_baseline=3000)
        >>> df = word_pairs(model, 0, 0, vocab, filter=EmbeddingFilter(z=2.5))  # doctest: +SKIP
    """

    def __init__(self, *, z: float = 1.96, n_baseline: int = 3000) -> None:
        self.z = check_float("z", z)
        self.n_baseline = check_int("n_baseline", n_baseline, minimum=2)

    def __repr__(self) -> str:
        return f"EmbeddingFilter(z={self.z}, n_baseline={self.n_baseline})"

    def bind(self, model: Any, vocab: WordVocab) -> CosineThreshold:
        """Word vectors from ``model``'s input embedding, thresholds for ``vocab`` (CPU).

        Example:
            >>> bound = EmbeddingFilter().bind(pair.base, vocab)  # doctest: +SKIP
        """
        check_vocab(vocab, model)
        V = word_matrix(embedding(model), vocab)
        return cosine_threshold(V, z=self.z, n_baseline=self.n_baseline, name=repr(self))


class VectorFilter:
    """A relatedness filter from external word vectors (e.g. GloVe, as in the paper).

    Args:
        vectors: ``{word: vector}`` or ``(words, matrix)``. Vocabulary words without a vector
            never pass.
        z: Standard deviations above the mean similarity (1.96 in the paper).
        n_baseline: Baseline size (the first words of the vocabulary that have vectors).
        name: Recorded description.

    Raises:
        ShiftlensError: the vectors are not one row of equal length per word.

    Example:
        >>> glove = {"write": [0.1, 0.3], "poem": [0.2, 0.2]}  # your own vectors
        >>> f = VectorFilter(glove)
        >>> f.dim
        2
    """

    def __init__(
        self,
        vectors: Mapping[str, Any] | tuple[Sequence[str], Any],
        *,
        z: float = 1.96,
        n_baseline: int = 3000,
        name: str = "vectors",
    ) -> None:
        if isinstance(vectors, Mapping):
            words, mat = list(vectors.keys()), [vectors[w] for w in vectors]
        elif isinstance(vectors, tuple) and len(vectors) == 2:
            words, mat = list(vectors[0]), vectors[1]
        else:
            raise ShiftlensError(f"VectorFilter: vectors must be {{word: vector}} or (words, "
                                 f"matrix), got {type(vectors).__name__}")
        bad_words = [w for w in words if not isinstance(w, str)]
        if bad_words:
            raise ShiftlensError(f"VectorFilter: words must be strings, got {bad_words[:3]!r}")
        try:
            M = torch.as_tensor(np.asarray(mat, dtype=np.float32))
        except (TypeError, ValueError) as e:
            raise ShiftlensError(f"VectorFilter: expected {len(words)} numeric vectors of equal "
                                 f"length ({e})") from None
        if M.dim() != 2 or M.shape[0] != len(words):
            raise ShiftlensError(
                f"VectorFilter: expected {len(words)} vectors of equal length, got shape "
                f"{tuple(M.shape)}"
            )
        bad = (~torch.isfinite(M).all(-1)).nonzero().flatten().tolist()
        if bad:
            raise ShiftlensError(f"VectorFilter: the vectors of {len(bad)} words hold NaN or "
                                 f"infinite values: {[words[i] for i in bad[:5]]}")
        self.index = {w: i for i, w in enumerate(words)}
        self.matrix = M
        self.dim = int(M.shape[1])
        self.z = check_float("z", z)
        self.n_baseline = check_int("n_baseline", n_baseline, minimum=2)
        self.name = name

    def __repr__(self) -> str:
        return (f"VectorFilter({self.name!r}, {len(self.index)} words, z={self.z}, "
                f"n_baseline={self.n_baseline})")

    def bind(self, model: Any, vocab: WordVocab) -> CosineThreshold:
        """Vectors of the vocabulary's words (the model is not used).

        Example:
            >>> from shiftlens.weights import WordVocab
            >>> f = VectorFilter({"a": [1.0, 0.0], "b": [0.0, 1.0]})
            >>> f.bind(None, WordVocab(["a", "b", "c"], [[1], [2], [3]])).threshold[2]
            tensor(inf)
        """
        rows = [self.index.get(w, -1) for w in vocab.words]
        dev = self.matrix.device
        has = torch.tensor([r >= 0 for r in rows], dtype=torch.bool, device=dev)
        idx = torch.tensor([max(r, 0) for r in rows], dtype=torch.long, device=dev)
        V = self.matrix[idx] if len(rows) else torch.zeros(0, self.dim, device=dev)
        return cosine_threshold(V, has_vector=has, z=self.z, n_baseline=self.n_baseline,
                                name=repr(self))


def resolve_filter(filter: FilterSpec) -> PairFilter | None:
    """Turn a filter argument into a :class:`PairFilter` (or None for no filter).

    ``"embedding"`` -> :class:`EmbeddingFilter` (the default); ``None`` or ``"none"`` -> no
    relatedness filter (every same-sign pair is kept); any object with a ``bind`` method is
    used as is.

    Raises:
        ShiftlensError: an unknown name, or an object without ``bind``.

    Example:
        >>> resolve_filter("embedding")
        EmbeddingFilter(z=1.96, n_baseline=3000)
        >>> resolve_filter(None) is None
        True
    """
    if filter is None or (isinstance(filter, str) and filter == "none"):
        return None
    if isinstance(filter, str):
        if filter == "embedding":
            return EmbeddingFilter()
        raise ShiftlensError(f"unknown filter {filter!r}; use 'embedding', None or a PairFilter")
    if isinstance(filter, PairFilter):
        return filter
    raise ShiftlensError(
        f"filter {type(filter).__name__} has no bind(model, vocab) method (see PairFilter)"
    )


def bind_filter(filter: FilterSpec, model: Any, vocab: WordVocab,
                bound: Any = None) -> tuple[Any, str]:
    """The bound filter and its recorded name: ``bound`` when given, else ``filter`` bound.

    Args:
        filter: What :func:`resolve_filter` accepts.
        model: The model whose vocabulary the filter is bound to.
        vocab: The word vocabulary.
        bound: An already bound filter (wins over ``filter``).

    Returns:
        ``(bound filter or None, name)``; the name is ``"none"`` without a filter.

    Example:
        >>> bind_filter(None, None, vocab)  # doctest: +SKIP
        (None, 'none')
    """
    if bound is not None:
        if not callable(bound):
            raise ShiftlensError(f"bound_filter must be a bound filter (callable on word "
                                 f"indices), got {type(bound).__name__}")
        return bound, str(getattr(bound, "name", type(bound).__name__))
    f = resolve_filter(filter)
    if f is None:
        return None, "none"
    b = f.bind(model, vocab)
    if not callable(b):
        raise ShiftlensError(f"filter {f!r}: bind() returned a {type(b).__name__}, not a "
                             "callable bound filter (see BoundFilter)")
    return b, repr(f)


def filter_reason(bound: Any, name: str) -> str:
    """Why a bound filter drops a pair, in words: its ``reason`` when it has one.

    Example:
        >>> filter_reason(lambda q, k: q == k, "mine")
        'the filter mine rejected them'
    """
    r = getattr(bound, "reason", None)
    if isinstance(r, str) and r:
        return r
    return f"the filter {name} rejected them"
