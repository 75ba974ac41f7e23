"""Word vocabularies: frequent English words that a model's tokenizer covers.

The shipped list ``shiftlens/data/english_words.tsv`` holds the 30,000 most frequent lowercase
alphabetic English words with their Zipf frequency (log10 of occurrences per billion words).
It was extracted once from the ``large_en`` table of the ``wordfreq`` package (version 3.1.1,
data licensed CC BY-SA 4.0 by its authors; see docs/vocab.md), keeping words matching
``[a-z]+`` (single letters only "a" and "i"), in frequency order. Nothing is downloaded at
run time and wordfreq is not a dependency.

A word's vector is the mean of its tokens' vectors (:func:`shiftlens.weights.word_matrix`);
:class:`shiftlens.weights.WordVocab` picks, per word, the variant (``"word"`` or ``" word"``)
with fewest tokens, which handles byte-level BPE (``"Ġword"``) and sentencepiece
(``"▁word"``) tokenizers alike.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from typing import Any

from shiftlens.errors import ShiftlensError
from shiftlens.weights import WordVocab

__all__ = ["WordVocab", "english_words", "word_zipf", "default_vocab"]


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
