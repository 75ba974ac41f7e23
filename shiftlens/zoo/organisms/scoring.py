"""Known tokens and the score: which tokens a diffing method should surface, and how well it did.

Part of :mod:`shiftlens.zoo.organisms` (import from there). :func:`known_tokens` gives an
organism's known tokens as ids of the pair's tokenizer, :func:`organism_score` scores a method's
ranking against them and :func:`chance_score` is a random ranking's expected score. Besides the
organisms and the control, the embedded instruction-tuned pair (:data:`INSTRUCT`,
``shiftlens.zoo.toy_pair()``) is scored too: its known tokens are the tokens its instruction data
introduced (every token of the instruction-tuning examples that never occurs in the base's
pre-training corpus, :func:`instruct_token_strings`), see ``docs/diffing.md``.

Example:
    >>> from shiftlens.zoo.organisms.scoring import organism_score
    >>> organism_score([" moon", " the"], "topic")
    0.5
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from jaxtyping import Int
from torch import Tensor

from shiftlens.errors import ShiftlensError
from shiftlens.zoo.organisms.rules import CONTROL, ORGANISMS, SPECS, _check_name

__all__ = [
    "INSTRUCT",
    "SCORED",
    "known_tokens",
    "known_token_strings",
    "instruct_token_strings",
    "organism_score",
    "chance_score",
]

#: The embedded instruction-tuned pair (``shiftlens.zoo.toy_pair()``), scored like an organism.
INSTRUCT = "instruct"
#: Every name :func:`organism_score` accepts: the organisms, the instruction pair, the control.
SCORED: tuple[str, ...] = ORGANISMS + (INSTRUCT, CONTROL)


# ---------------------------------------------------------------------------------------------
# Known tokens and the score
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    from shiftlens.zoo import pair_dirs

    return AutoTokenizer.from_pretrained(pair_dirs()[0])


def _ids_of(texts: Sequence[str], tokenizer: Any) -> list[int]:
    out = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ShiftlensError(f"known token {t!r} is {len(ids)} tokens in this tokenizer, not 1")
        out.append(ids[0])
    return out


def known_token_strings(name: str | None = None) -> list[str]:
    """The known tokens of an organism as text (what the tokenizer decodes each one to).

    Args:
        name: an organism of :data:`ORGANISMS`; ``"control"`` has none (``[]``);
            ``"instruct"`` (:data:`INSTRUCT`): the instruction pair's, see
            :func:`instruct_token_strings`; ``None``: the union over the three organisms (the set
            the control is scored against).

    Returns:
        Token texts such as ``" moon"`` (with its leading space) or ``"\\n"``.

    Example:
        >>> known_token_strings("template")
        ['\\n', 'Response', ':']
        >>> len(known_token_strings())
        41
    """
    if name is None:
        return [t for o in ORGANISMS for t in SPECS[o].known_texts]
    if name == INSTRUCT:
        return instruct_token_strings()
    return list(SPECS[_check_name(name, SCORED)].known_texts)


def instruct_token_strings() -> list[str]:
    """The known tokens of the embedded instruction-tuned pair: what its instruction data introduced.

    Every token of the instruction-tuning examples the tuned model was trained on (prompt,
    response and the closing ``<eos>``, the zoo's own draw: :class:`shiftlens.zoo.train.
    TrainConfig`'s seed and sizes) that never occurs in the base model's pre-training corpus (the
    same draw's sentences, tokenized as they were packed). That is the template (``"Instruction"``,
    ``"Input"``, ``"Response"``, ``":"``, ``"\\n"``), ``<eos>``, ``" input"`` (from "repeat the
    input.") and the 36 zorbish words of the translation task: 43 tokens, whose use instruction
    tuning changed from never to routinely. It is the organisms' notion of a known token (a token
    whose use the fine-tuning changed) computed from the training data rather than written by
    hand; the tuned pair's broader change (following seven instructions) has no token set.
    Computed once per process (seconds: the draw is re-made and its distinct pre-tokens
    tokenized).

    Returns:
        Token texts, most frequent in the instruction data first (ties by token id).

    Example:
        >>> toks = instruct_token_strings()  # doctest: +SKIP
        >>> len(toks), toks[:3]  # doctest: +SKIP
        (43, [':', '\\n', '<eos>'])
    """
    return list(_instruct_texts())


@lru_cache(maxsize=1)
def _instruct_texts() -> tuple[str, ...]:
    from shiftlens.zoo import grammar
    from shiftlens.zoo.train import TrainConfig

    cfg, tok = TrainConfig(), _tokenizer()
    rng = random.Random(cfg.seed)  # exactly train_pair's draw: corpus, then the examples
    sentences = grammar.corpus_sentences(cfg.n_sentences, rng)
    examples = [grammar.make_example(task, rng, held_out=False) for task in grammar.TASK_NAMES
                for _ in range(cfg.examples_per_task)]
    corpus = set(_token_counts(tok, [" " + s for s in sentences] + sentences))
    corpus.add(tok.bos_token_id)
    counts = _token_counts(tok, [e.prompt for e in examples] + [e.response for e in examples])
    counts[tok.bos_token_id] += len(examples)  # each prompt starts with <bos>, each ends <eos>
    counts[tok.eos_token_id] += len(examples)
    new = sorted((i for i in counts if i not in corpus), key=lambda i: (-counts[i], i))
    return tuple(tok.decode([i]) for i in new)


def _token_counts(tok: Any, texts: Sequence[str]) -> Counter[int]:
    """Token counts of ``texts`` (no special tokens), tokenized once per distinct pre-token.

    A byte-level BPE never merges across the pre-tokenizer's pieces, so a text's tokens are the
    concatenation of its pieces' tokens: counting pieces and tokenizing each distinct piece once
    gives the counts of tokenizing every text (hundreds of pieces instead of ~10^5 texts).
    """
    pre = tok.backend_tokenizer.pre_tokenizer
    pieces: Counter[str] = Counter()
    for t in texts:
        for _, (a, b) in pre.pre_tokenize_str(t):
            pieces[t[a:b]] += 1
    names = list(pieces)
    out: Counter[int] = Counter()
    for name, ids in zip(names, tok(names, add_special_tokens=False).input_ids):
        for i in ids:
            out[i] += pieces[name]
    return out


def known_tokens(name: str | None = None) -> list[int]:
    """The known tokens of an organism as token ids of the pair's tokenizer.

    A diffing method that works should rank these at the top for the organism. Each is exactly
    one token (checked). The ids are also recorded, with their texts, in the organisms' manifest
    (``organism_manifest()["known_tokens"]``).

    Args:
        name: as in :func:`known_token_strings` (``None``: the union over the organisms).

    Returns:
        Token ids, in the order of :func:`known_token_strings`.

    Example:
        >>> known_tokens("topic")
        [383, 684]
    """
    return list(_known_ids(name))


@lru_cache(maxsize=8)
def _known_ids(name: str | None) -> tuple[int, ...]:
    return tuple(_ids_of(known_token_strings(name), _tokenizer()))


def _as_ids(top_tokens: Sequence[int] | Sequence[str] | Int[Tensor, " n"]) -> list[int]:
    """Token ids of a ranking; a text that is not exactly one token matches nothing (-1)."""
    if isinstance(top_tokens, Tensor):
        return [int(t) for t in top_tokens.tolist()]
    items = list(top_tokens)
    if items and all(isinstance(t, str) for t in items):
        tok = _tokenizer()
        encoded = [tok(t, add_special_tokens=False).input_ids for t in items]
        return [ids[0] if len(ids) == 1 else -1 for ids in encoded]
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        raise ShiftlensError("top_tokens must be token ids (ints or a 1-d tensor) or token texts")
    return [int(t) for t in items]


def organism_score(
    top_tokens: Sequence[int] | Sequence[str] | Int[Tensor, " n"], name: str, k: int = 20
) -> float:
    """How many of a method's top-``k`` tokens are the organism's known tokens, from 0 to 1.

    ``score = |top_k ∩ K| / min(k, |K|)`` where ``top_k`` is the set of the first ``k`` entries
    of ``top_tokens`` (best first) and ``K`` the known tokens of ``name``. It is precision at
    ``k`` normalised by the best achievable value, so 1.0 means "the top-``k`` is filled with
    known tokens as far as there are known tokens", for every organism alike (the topic organism
    has 2 known tokens, zorbish 36, template 3). For the control ``K`` is the union of the three
    organisms' 41 known tokens: its score is the fraction of the top-``k`` that are some
    organism's known tokens, a false-positive rate that must be near 0. A list of ``k`` tokens
    drawn at random scores :func:`chance_score` on average (0.02-0.05).

    Why not "does any known token appear": with 36 known zorbish tokens a random top-20 contains
    one with probability 0.59, and the control, scored against 41 tokens, 0.64; that score does
    not separate a method from chance. Plain precision would cap the topic organism at 2/20.

    Args:
        top_tokens: the method's ranking, best first: token ids (list or 1-d tensor) or token
            texts as the tokenizer decodes them (``" moon"``). Only the first ``k`` count;
            repeats count once.
        name: an organism, ``"instruct"`` (the embedded instruction pair) or ``"control"``.
        k: how many of the top tokens count.

    Returns:
        The score in ``[0, 1]``.

    Example:
        >>> organism_score([" moon", " the", " cat"], "topic", k=20)
        0.5
        >>> organism_score(known_tokens("zorbish")[:20], "zorbish")
        1.0
        >>> organism_score([" moon"], "control")
        0.05
    """
    _check_name(name, SCORED)
    if not isinstance(k, int) or k < 1:
        raise ShiftlensError(f"k must be an integer >= 1, got {k!r}")
    known = set(known_tokens(None if name == CONTROL else name))
    top = set(_as_ids(top_tokens)[:k])
    return len(top & known) / min(k, len(known))


def chance_score(name: str, k: int = 20, vocab_size: int | None = None) -> float:
    """The expected :func:`organism_score` of ``k`` distinct tokens drawn uniformly at random.

    ``E[score] = k |K| / (V min(k, |K|))`` for ``V`` tokens in the vocabulary (default: the pair's
    818). A method that restricts its ranking to a smaller set (say, word tokens) has a higher
    chance level; pass that set's size as ``vocab_size``.

    Args:
        name: an organism, ``"instruct"`` or ``"control"``.
        k: as in :func:`organism_score`.
        vocab_size: size of the set the ranking is drawn from.

    Returns:
        The chance score.

    Example:
        >>> round(chance_score("zorbish"), 4)
        0.044
    """
    _check_name(name, SCORED)
    v = len(_tokenizer()) if vocab_size is None else int(vocab_size)
    n_known = len(known_token_strings(None if name == CONTROL else name))
    return k * n_known / (v * min(k, n_known))
