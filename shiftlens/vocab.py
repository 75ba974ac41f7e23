"""Word vocabularies: frequent English words that a model's tokenizer covers.

The shipped list ``shiftlens/data/english_words.tsv`` holds the 30,000 most frequent lowercase
alphabetic English words with their Zipf frequency (log10 of occurrences per billion words).
It was extracted once from the ``large_en`` table of the ``wordfreq`` package (version 3.1.1,
data licensed CC BY-SA 4.0 by its authors; see docs/vocab.md), keeping words matching
``[a-z]+`` (single letters only "a" and "i"), in frequency order. Nothing is downloaded at
run time and wordfreq is not a dependency.

A word's vector is the mean of its tokens' vectors (:func:`word_matrix`);
:class:`WordVocab` (defined here, also importable from :mod:`shiftlens.weights`) picks, per word, the variant (``"word"`` or ``" word"``)
with fewest tokens, which handles byte-level BPE (``"Ġword"``) and sentencepiece
(``"▁word"``) tokenizers alike.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from shiftlens.errors import ShiftlensError

__all__ = ["WordVocab", "word_matrix", "english_words", "word_zipf", "default_vocab"]


@functools.lru_cache(maxsize=1)
def _table() -> tuple[tuple[str, float], ...]:
    ref = resources.files("shiftlens") / "data" / "english_words.tsv"
    rows = []
    for line in ref.read_text(encoding="utf-8").splitlines()[1:]:
        w, z = line.split("\t")
        rows.append((w, float(z)))
    return tuple(rows)


def english_words(n: int | None = None, *, min_zipf: float | None = None) -> list[str]:
    """The shipped frequent English words, most frequent first.

    Args:
        n: Keep the first ``n`` (None: all 30,000).
        min_zipf: Keep words at least this frequent (Zipf scale; 3.0 = once per million words).

    Example:
        >>> english_words(5)
        ['the', 'to', 'and', 'of', 'a']
    """
    words = [w for w, z in _table() if min_zipf is None or z >= min_zipf]
    if n is not None:
        if n < 1:
            raise ShiftlensError(f"n must be >= 1, got {n}")
        words = words[:n]
    return words


def word_zipf(word: str) -> float | None:
    """Zipf frequency of a word in the shipped list (None when absent).

    Example:
        >>> word_zipf("the") > word_zipf("cat")
        True
    """
    return dict(_table()).get(word)


def default_vocab(
    tokenizer: Any,
    n: int = 5000,
    *,
    words: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    max_tokens: int | None = 3,
) -> WordVocab:
    """The ``n`` most frequent English words (plus ``extra``) that ``tokenizer`` can encode.

    Args:
        tokenizer: A Hugging Face tokenizer.
        n: How many frequent words to try.
        words: Use these words instead of the shipped list.
        extra: Words always tried in addition (e.g. an instruction-verb lexicon).
        max_tokens: Skip words that need more tokens (they are listed in ``.skipped``).

    Returns:
        The :class:`~shiftlens.weights.WordVocab`.

    Example:
        >>> vocab = default_vocab(pair.tokenizer, 2000)  # doctest: +SKIP
        >>> len(vocab) + len(vocab.skipped)  # doctest: +SKIP
        2000
    """
    base = list(words) if words is not None else english_words(n)
    return WordVocab.build(tokenizer, list(base) + [w for w in extra if w not in set(base)],
                           max_tokens=max_tokens)


@dataclass
class WordVocab:
    """A word vocabulary mapped to token ids (a word = the mean of its tokens' vectors).

    Attributes:
        words: The kept words.
        token_ids: For each kept word, its token ids (the variant with fewest tokens among
            ``word`` and ``" word"``; ties go to the leading-space variant, the form words take
            inside running text).
        skipped: Words the tokenizer cannot encode (unknown token, empty, or more than
            ``max_tokens`` tokens).

    Example:
        >>> v = WordVocab.build(tokenizer, ["cat", "dog"])  # doctest: +SKIP
        >>> v.words  # doctest: +SKIP
        ['cat', 'dog']
    """

    words: list[str]
    token_ids: list[list[int]]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(
        cls, tokenizer: Any, words: Iterable[str], *, max_tokens: int | None = 4
    ) -> WordVocab:
        """Encode words with the tokenizer; unencodable words are skipped and listed.

        Args:
            tokenizer: A Hugging Face tokenizer.
            words: Candidate words (duplicates removed, order kept).
            max_tokens: Skip words needing more tokens than this (None: no limit).

        Raises:
            ShiftlensError: no word could be encoded (or the list is empty).

        Example:
            >>> WordVocab.build(tokenizer, ["cat"]).token_ids  # doctest: +SKIP
            [[412]]
        """
        unk = getattr(tokenizer, "unk_token_id", None)
        kept, ids, skipped = [], [], []
        seen = set()
        for w in words:
            w = w.strip()
            if not w or w in seen:
                continue
            seen.add(w)
            best = None
            for variant in (" " + w, w):
                t = tokenizer(variant, add_special_tokens=False)["input_ids"]
                t = [int(x) for x in t]
                if not t or (unk is not None and unk in t):
                    continue
                if best is None or len(t) < len(best):
                    best = t
            if best is None or (max_tokens is not None and len(best) > max_tokens):
                skipped.append(w)
                continue
            kept.append(w)
            ids.append(best)
        if not kept:
            raise ShiftlensError(
                "empty vocabulary: no word could be encoded"
                + (f" (skipped {len(skipped)})" if skipped else "")
            )
        return cls(kept, ids, skipped)

    def averaging_matrix(self, d_vocab: int) -> Tensor:
        """Sparse ``[n_words, d_vocab]`` matrix whose row w averages word w's tokens."""
        rows, cols, vals = [], [], []
        for i, t in enumerate(self.token_ids):
            for tok in t:
                if tok >= d_vocab:
                    raise ShiftlensError(
                        f"word {self.words[i]!r}: token id {tok} >= d_vocab {d_vocab}"
                    )
                rows.append(i)
                cols.append(tok)
                vals.append(1.0 / len(t))
        idx = torch.tensor([rows, cols], dtype=torch.long)
        return torch.sparse_coo_tensor(
            idx, torch.tensor(vals), (len(self), d_vocab), check_invariants=True
        ).coalesce()

    def subset(self, words: Sequence[str]) -> WordVocab:
        """The entries for ``words`` that are in this vocabulary (in the given order)."""
        pos = {w: i for i, w in enumerate(self.words)}
        keep = [w for w in words if w in pos]
        return WordVocab(keep, [self.token_ids[pos[w]] for w in keep], [])


def word_matrix(
    W: Float[Tensor, "d_vocab d"], vocab: WordVocab
) -> Float[Tensor, "n_words d"]:
    """Word vectors as the mean of their tokens' rows of ``W`` (one sparse matmul).

    Use ``W = embedding(model)`` for input embeddings or ``unembedding(model).T`` for
    unembedding columns.

    Example:
        >>> E = word_matrix(embedding(pair.base), vocab)  # doctest: +SKIP
    """
    A = vocab.averaging_matrix(W.shape[0]).to(W.dtype)
    return torch.sparse.mm(A, W)
