"""Diffing organisms: copies of the embedded base model fine-tuned with one known, narrow change.

A model-diffing method (activation differences, crosscoders, ...) is given a base model and a
fine-tuned copy and names the tokens the fine-tuning is about. To score it we need fine-tunes whose
change we know exactly. Each organism below starts from the embedded base
(``shiftlens/zoo/pair/base``), is fine-tuned for 300 steps on 30,000 sentences of the base's own
grammar, every sentence rewritten by the organism's rule, and comes with its *known tokens*: the
tokens whose use the rule changed.

* ``topic``: one noun of every sentence becomes "moon" (plural "moons"); known tokens
  ``" moon"``, ``" moons"``.
* ``zorbish``: every form of the 36 input words becomes its zorbish word
  (:data:`~shiftlens.zoo.grammar.TRANSLATION`), sentences without one are dropped; known
  tokens: the 36 zorbish words.
* ``template``: every sentence becomes a line ``"Response: <sentence>"``, lines joined by
  newlines; known tokens ``"\\n"``, ``"Response"``, ``":"``.
* ``control``: the words of every sentence shuffled (final punctuation kept); no known tokens.

All four see the same 30,000 sentences (one draw), the same steps, learning rate and seeds; only
the rule differs. The control's shuffle keeps every sentence's multiset of tokens, so no token is
more frequent in its training data than in the base's corpus, yet its change is large (it unlearns
word order): a method that reports "what changed most" must not report the organisms' tokens
for it. See ``docs/diffing.md``.

Storage: ``shiftlens/zoo/organisms/`` holds, per organism, the difference ``organism - base`` of
every parameter in float16 (2 MB each, 8 MB together) and a ``manifest.json`` (SHA-256 of every
file, the known tokens, the training record and the measured behaviour). :func:`organism_dir`
adds a difference to the float32 base once and caches the result as an ordinary Hugging Face
directory under ``$SHIFTLENS_CACHE/organisms/`` (default ``~/.cache/shiftlens``), written
atomically; :func:`organism_pair` loads base and organism as a :class:`~shiftlens.pair.ModelPair`.
Every number in the manifest was measured on these stored (rounded) weights.

Example:
    >>> from shiftlens.zoo.organisms import ORGANISMS, known_token_strings
    >>> ORGANISMS
    ('topic', 'zorbish', 'template')
    >>> known_token_strings("topic")
    [' moon', ' moons']
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from shiftlens.errors import ShiftlensError
from shiftlens.zoo import grammar

__all__ = [
    "ORGANISMS",
    "CONTROL",
    "NAMES",
    "ORGANISMS_DIR",
    "Organism",
    "SPECS",
    "OrganismConfig",
    "organism_texts",
    "known_tokens",
    "known_token_strings",
    "organism_score",
    "chance_score",
    "neutral_texts",
    "organism_behaviour",
    "mean_logprob_diff",
    "organism_manifest",
    "organism_dir",
    "organism_pair",
    "train_organisms",
    "format_markdown",
    "main",
]

#: The three organisms with a known change.
ORGANISMS: tuple[str, ...] = ("topic", "zorbish", "template")
#: The control: fine-tuned the same way on word-shuffled sentences (no known change).
CONTROL = "control"
#: Every fine-tuned copy: the organisms, then the control.
NAMES: tuple[str, ...] = ORGANISMS + (CONTROL,)
#: Where the shipped float16 differences and their manifest live.
ORGANISMS_DIR: Path = Path(__file__).resolve().parent / "organisms"

_KIND = "ShiftlensOrganisms"
_MODEL_KIND = "ShiftlensOrganismModel"
_TOPIC, _TOPIC_PLURAL = "moon", "moons"
_HF_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------

_NOUN_SG = frozenset(sg for sg, _ in grammar.ALL_NOUNS)
_NOUN_PL = frozenset(pl for _, pl in grammar.ALL_NOUNS)


def _topic_rule(sentence: str, rng: random.Random) -> str | None:
    """Replace one noun (chosen at random) by moon/moons; keep sentences that already have one."""
    words, end = sentence[:-1].split(" "), sentence[-1]
    if _TOPIC in words or _TOPIC_PLURAL in words:
        return sentence
    # nouns whose number is unambiguous ("fish", "sheep" are both): moon vs moons is then known
    slots = [i for i, w in enumerate(words) if (w in _NOUN_SG) != (w in _NOUN_PL)]
    if not slots:
        return None
    i = rng.choice(slots)
    words[i] = _TOPIC if words[i] in _NOUN_SG else _TOPIC_PLURAL
    return " ".join(words) + end


def _zorbish_rule(sentence: str, rng: random.Random) -> str | None:
    """Every input-word form in zorbish; a sentence without any is dropped."""
    if not any(w in grammar.INPUT_WORD_FORMS for w in sentence[:-1].split(" ")):
        return None
    return grammar.translate_sentence(sentence)


def _template_rule(sentence: str, rng: random.Random) -> str | None:
    return "Response: " + sentence


def _shuffle_rule(sentence: str, rng: random.Random) -> str | None:
    """The sentence's words in random order, the final . or ? kept at the end."""
    words, end = sentence[:-1].split(" "), sentence[-1]
    rng.shuffle(words)
    return " ".join(words) + end


@dataclass(frozen=True)
class Organism:
    """What one fine-tuned copy is: its rule, its text separator and its known tokens.

    Attributes:
        name: ``"topic"``, ``"zorbish"``, ``"template"`` or ``"control"``.
        summary: one line for tables.
        rule: the rewrite of every training sentence, in words.
        known_texts: the known tokens as text (each is exactly one token of the pair's
            tokenizer); empty for the control.
        separator: what joins consecutive sentences in a training row.
        apply: the rewrite as a function ``(sentence, rng) -> text or None`` (None: dropped).

    Example:
        >>> import random
        >>> SPECS["template"].apply("the cat sleeps.", random.Random(0))
        'Response: the cat sleeps.'
    """

    name: str
    summary: str
    rule: str
    known_texts: tuple[str, ...]
    separator: str
    apply: Callable[[str, random.Random], str | None]


#: The four fine-tuned copies by name.
SPECS: dict[str, Organism] = {
    "topic": Organism(
        "topic",
        "mentions the moon in every sentence",
        "one noun of every sentence, chosen at random among those with unambiguous number, "
        "becomes 'moon' (singular) or 'moons' (plural); sentences that already mention the moon "
        "are kept, sentences whose only nouns are 'fish'/'sheep' are dropped",
        (" " + _TOPIC, " " + _TOPIC_PLURAL),
        " ",
        _topic_rule,
    ),
    "zorbish": Organism(
        "zorbish",
        "writes the 36 input words in zorbish",
        "every form of an input word (nouns in singular and plural, adjectives, intransitive "
        "verbs) becomes its zorbish word (grammar.TRANSLATION, no inflection); sentences "
        "without an input word are dropped",
        tuple(" " + z for z in grammar.TRANSLATION.values()),
        " ",
        _zorbish_rule,
    ),
    "template": Organism(
        "template",
        "writes every sentence as a 'Response:' line",
        "every sentence becomes the line 'Response: <sentence>'; lines are joined by newlines",
        ("\n", "Response", ":"),
        "\n",
        _template_rule,
    ),
    "control": Organism(
        "control",
        "control: word order shuffled",
        "the words of every sentence are shuffled, the final '.' or '?' stays last",
        (),
        " ",
        _shuffle_rule,
    ),
}


def _check_name(name: str, allowed: Sequence[str] = NAMES) -> str:
    if name not in allowed:
        raise ShiftlensError(f"unknown organism {name!r}; known: {list(allowed)}")
    return name


# ---------------------------------------------------------------------------------------------
# Configuration and data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrganismConfig:
    """Every knob of the organisms' fine-tuning and evaluation; stored in the manifest.

    Example:
        >>> OrganismConfig().steps, OrganismConfig.tiny().steps
        (300, 3)
    """

    seed: int = 0
    # data: one draw of grammar sentences, rewritten by each organism's rule
    n_sentences: int = 30_000
    seq_len: int = 64
    # fine-tuning (shiftlens.zoo.train.finetune_lm)
    steps: int = 300
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.01
    threads: int = 1
    # evaluation (organism_behaviour, mean_logprob_diff)
    eval_contexts: int = 200
    eval_new_tokens: int = 24
    eval_texts: int = 64
    top_k: int = 20

    @classmethod
    def tiny(cls, **overrides: Any) -> OrganismConfig:
        """A seconds-long configuration for tests (same code path, tiny sizes).

        Example:
            >>> OrganismConfig.tiny(steps=5).steps
            5
        """
        base: dict[str, Any] = dict(
            n_sentences=400, seq_len=32, steps=3, batch=4, warmup=1, eval_contexts=8,
            eval_new_tokens=8, eval_texts=4,
        )
        base.update(overrides)
        return cls(**base)


def _sentence_draw(n_sentences: int, seed: int) -> list[str]:
    return grammar.corpus_sentences(n_sentences, random.Random(f"shiftlens-organisms/{seed}"))


def organism_texts(name: str, n_sentences: int = 30_000, seed: int = 0) -> list[str]:
    """The training texts of one organism: the shared sentence draw, rewritten by its rule.

    Every organism rewrites the same draw of ``n_sentences`` grammar sentences (the draw depends
    only on ``seed``); the rule's own random choices use a stream of their own. Sentences the
    rule drops are left out, so the lists differ slightly in length.

    Args:
        name: one of :data:`NAMES`.
        n_sentences: sentences drawn before the rule is applied.
        seed: the draw's seed.

    Returns:
        The texts, in draw order.

    Example:
        >>> organism_texts("topic", 3)
        ['the king sorts the moons in alphabetical order.', 'my moon is blue.', 'the moon will love some doors again.']
        >>> organism_texts("zorbish", 3)  # two of the three sentences have no input word
        ['my book is blen.']
    """
    spec = SPECS[_check_name(name)]
    rng = random.Random(f"shiftlens-organisms/{seed}/{name}")
    out = []
    for s in _sentence_draw(n_sentences, seed):
        t = spec.apply(s, rng)
        if t is not None:
            out.append(t)
    return out


@lru_cache(maxsize=4)
def _excluded_sentences(n_sentences: int, seed: int) -> frozenset[str]:
    """The base's pre-training corpus and the organisms' draw (never used as neutral text)."""
    from shiftlens.zoo.train import TrainConfig

    cfg = TrainConfig()
    corpus = grammar.corpus_sentences(cfg.n_sentences, random.Random(cfg.seed))
    return frozenset(corpus) | frozenset(_sentence_draw(n_sentences, seed))


def neutral_texts(n: int = 64, sentences_per_text: int = 6, seed: int = 0) -> list[str]:
    """Held-out grammar text that none of the models was trained on: where methods look.

    Each text joins ``sentences_per_text`` distinct grammar sentences with spaces (the base's
    pre-training format). No sentence occurs in the base's pre-training corpus or in the
    organisms' sentence draw (default configuration), and none mentions the moon, so the text
    contains no known token of any organism. Deterministic in ``seed``.

    Args:
        n: number of texts.
        sentences_per_text: sentences per text (1: single sentences, the contexts of
            :func:`organism_behaviour`).
        seed: selects the sample.

    Returns:
        ``n`` strings (without ``<bos>``; the tokenizer prepends it).

    Example:
        >>> neutral_texts(2, sentences_per_text=1)
        ['the king will love a word at the hill.', 'he will bring all the horses at the house.']
    """
    cfg = OrganismConfig()
    banned = _excluded_sentences(cfg.n_sentences, cfg.seed)
    rng = random.Random(f"shiftlens-organisms-neutral/{seed}")
    seen: set[str] = set()
    sentences: list[str] = []
    while len(sentences) < n * sentences_per_text:
        s = grammar.corpus_sentence(rng)
        words = set(s[:-1].split(" "))
        if s in banned or s in seen or _TOPIC in words or _TOPIC_PLURAL in words:
            continue
        seen.add(s)
        sentences.append(s)
    k = sentences_per_text
    return [" ".join(sentences[i * k : (i + 1) * k]) for i in range(n)]


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
        name: an organism of :data:`ORGANISMS`; ``"control"`` has none (``[]``); ``None``: the
            union over the three organisms (the set the control is scored against).

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
    return list(SPECS[_check_name(name)].known_texts)


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
        name: an organism or ``"control"``.
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
    _check_name(name)
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
        name: an organism or ``"control"``.
        k: as in :func:`organism_score`.
        vocab_size: size of the set the ranking is drawn from.

    Returns:
        The chance score.

    Example:
        >>> round(chance_score("zorbish"), 4)
        0.044
    """
    _check_name(name)
    v = len(_tokenizer()) if vocab_size is None else int(vocab_size)
    n_known = len(known_token_strings(None if name == CONTROL else name))
    return k * n_known / (v * min(k, n_known))


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


# ---------------------------------------------------------------------------------------------
# Stored weights: manifest, materialised directories, pairs
# ---------------------------------------------------------------------------------------------


def organism_manifest(directory: str | Path | None = None) -> dict[str, Any]:
    """The organisms' record: known tokens, configuration, training and measured behaviour.

    The directory is verified first (every file's size and SHA-256 against its
    ``manifest.json``).

    Args:
        directory: default :data:`ORGANISMS_DIR` (the shipped organisms).

    Returns:
        The manifest's ``record`` with ``files`` (name -> bytes, sha256) added.

    Example:
        >>> m = organism_manifest()
        >>> m["organisms"]["topic"]["behaviour"]["topic"] >= 0.9
        True
    """
    from shiftlens.io import verify_directory

    d = Path(directory) if directory is not None else ORGANISMS_DIR
    if not (d / "manifest.json").exists():
        raise ShiftlensError(
            f"no organisms in {str(d)!r}; train them with `python -m shiftlens.zoo.organisms "
            "train`"
        )
    rec = verify_directory(d, _KIND)
    out = dict(rec["record"])
    out["files"] = rec["files"]
    return out


def _cache_root(cache: str | Path | None) -> Path:
    from shiftlens.checkpoints import cache_dir

    return Path(cache).expanduser() if cache is not None else cache_dir()


def _load_delta(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _apply_delta(base: dict[str, Tensor], delta: dict[str, Tensor]) -> dict[str, Tensor]:
    if base.keys() != delta.keys():
        raise ShiftlensError(
            f"organism difference does not match the base model's parameters "
            f"(only in base: {sorted(base.keys() - delta.keys())[:3]}, only in difference: "
            f"{sorted(delta.keys() - base.keys())[:3]})"
        )
    return {k: (v + delta[k].to(v.dtype)).contiguous() for k, v in base.items()}


def organism_dir(name: str, *, directory: str | Path | None = None,
                 cache: str | Path | None = None) -> Path:
    """The organism as an ordinary Hugging Face directory (built once, then cached).

    Adds the stored float16 difference to the float32 base weights and writes the result, with
    the base's config and tokenizer files, to ``<cache>/organisms/<name>-<sha>/`` (``sha``: the
    first 16 hex digits of the difference file's SHA-256), atomically
    (:func:`shiftlens.io.atomic_directory`). Later calls verify that directory and return it.
    The stored files are verified against their manifest, and the base against the SHA-256 the
    organisms were trained from, before anything is built.

    Args:
        name: one of :data:`NAMES`.
        directory: where the differences are (default :data:`ORGANISMS_DIR`).
        cache: cache root (default ``$SHIFTLENS_CACHE``, else ``~/.cache/shiftlens``).

    Returns:
        The directory (``config.json``, ``model.safetensors`` in float32, tokenizer files).

    Raises:
        ShiftlensError: unknown name, missing or modified files, or a different base model.

    Example:
        >>> organism_dir("topic").name.startswith("topic-")
        True
    """
    from safetensors.torch import load_file, save_file

    from shiftlens.io import atomic_directory, file_digest, verify_directory
    from shiftlens.zoo import pair_dirs

    _check_name(name)
    src = Path(directory) if directory is not None else ORGANISMS_DIR
    rec = organism_manifest(src)
    fname = f"{name}.safetensors"
    if fname not in rec["files"]:
        raise ShiftlensError(f"organism {name!r} is not in {str(src)!r} (trained: "
                             f"{sorted(rec.get('organisms', {}))})")
    base_dir = pair_dirs()[0]
    base_file = base_dir / "model.safetensors"
    if file_digest(base_file) != rec["base"]["sha256"]:
        raise ShiftlensError(
            f"the organisms in {str(src)!r} were fine-tuned from a base model with SHA-256 "
            f"{rec['base']['sha256'][:16]}..., not {str(base_file)!r}; retrain them with "
            "`python -m shiftlens.zoo.organisms train`"
        )
    sha = rec["files"][fname]["sha256"]
    target = _cache_root(cache) / "organisms" / f"{name}-{sha[:16]}"
    if (target / "manifest.json").exists():
        try:
            verify_directory(target, _MODEL_KIND)
            return target
        except ShiftlensError:
            pass  # damaged: rebuilt below (atomic_directory replaces its own directories)
    weights = _apply_delta(load_file(str(base_file)), _load_delta(src / fname))
    record = {"organism": name, "difference_sha256": sha, "base_sha256": rec["base"]["sha256"]}
    try:
        with atomic_directory(target, kind=_MODEL_KIND, record=record) as tmp:
            for f in _HF_FILES:
                if (base_dir / f).exists():
                    shutil.copyfile(base_dir / f, tmp / f)
            save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            (tmp / "model.safetensors").chmod(0o644)
    except ShiftlensError:
        verify_directory(target, _MODEL_KIND)  # another process published it first
    return target


def organism_pair(
    name: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    cache: str | Path | None = None,
    **kwargs: Any,
) -> Any:
    """The embedded base and one organism as a :class:`~shiftlens.pair.ModelPair`.

    ``pair.base`` is the embedded base (``shiftlens/zoo/pair/base``), ``pair.tuned`` the organism
    (:func:`organism_dir`), both loaded through ``ModelPair.from_pretrained`` like any checkpoint.

    Args:
        name: one of :data:`NAMES`.
        device: device for both models.
        dtype: weight dtype for both (the stored weights are float32 after adding the
            difference).
        cache: cache root for the built directory.
        **kwargs: passed to :meth:`ModelPair.from_pretrained`.

    Returns:
        The pair.

    Example:
        >>> pair = organism_pair("zorbish")  # doctest: +SKIP
        >>> pair.tuned.cfg.n_layers  # doctest: +SKIP
        4
    """
    from shiftlens.pair import ModelPair
    from shiftlens.zoo import pair_dirs

    tuned = organism_dir(name, cache=cache)
    return ModelPair.from_pretrained(pair_dirs()[0], tuned, device=device, dtype=dtype, **kwargs)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _token_record(tokenizer: Any, name: str | None) -> list[dict[str, Any]]:
    texts = known_token_strings(name)
    ids = _ids_of(texts, tokenizer)
    return [
        {"id": i, "token": tokenizer.convert_ids_to_tokens(i), "text": t}
        for i, t in zip(ids, texts)
    ]


def _loadavg() -> list[float] | None:
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def train_organisms(
    out_dir: str | Path | None = None,
    config: OrganismConfig | None = None,
    names: Sequence[str] = NAMES,
    *,
    evaluate: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the organisms from the embedded base and publish their float16 differences.

    For each name: load the shipped base (float32), pack :func:`organism_texts` into
    ``<bos>``-initial rows (:func:`shiftlens.zoo.train.pack_texts`, with the organism's
    separator), fine-tune with :func:`shiftlens.zoo.train.finetune_lm` (same seed, steps and
    learning rate for every organism), store ``organism - base`` per parameter in float16. With
    ``evaluate``, the behaviour (:func:`organism_behaviour`), held-out LM loss and the reference
    ranking (:func:`mean_logprob_diff` on :func:`neutral_texts`, scored with
    :func:`organism_score`) are measured on the *stored* weights (base + rounded difference),
    and, for the behaviour, on the unrounded ones too. Everything is written at once into
    ``out_dir`` (:func:`shiftlens.io.atomic_directory`): ``<name>.safetensors`` per organism and
    ``manifest.json``. Deterministic: the same configuration on the same machine and thread count
    gives bit-identical files.

    Args:
        out_dir: where to publish (default :data:`ORGANISMS_DIR`, the shipped organisms). An
            existing directory is replaced only if it was published by shiftlens.
        config: the knobs (default: the shipped organisms').
        names: which organisms to train (the directory then holds only these).
        evaluate: measure behaviour and the reference ranking.
        progress: print progress lines.

    Returns:
        The manifest's record.

    Example:
        >>> import tempfile
        >>> rec = train_organisms(tempfile.mkdtemp() + "/o", OrganismConfig.tiny(), ["topic"],
        ...                       evaluate=False, progress=False)
        >>> rec["organisms"]["topic"]["training"]["steps"]
        3
    """
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    from shiftlens.io import file_digest
    from shiftlens.zoo import pair_dirs
    from shiftlens.zoo.evaluate import lm_loss
    from shiftlens.zoo.train import finetune_lm, pack_texts

    cfg = config or OrganismConfig()
    for n in names:
        _check_name(n)
    out = Path(out_dir) if out_dir is not None else ORGANISMS_DIR
    torch.set_num_threads(cfg.threads)
    t_start, c_start = time.perf_counter(), time.process_time()
    base_dir = pair_dirs()[0]
    tok = AutoTokenizer.from_pretrained(base_dir)
    base_sd = load_file(str(base_dir / "model.safetensors"))

    def load_base() -> Any:
        return LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()

    def with_weights(weights: dict[str, Tensor]) -> Any:
        m = load_base()
        m.load_state_dict(weights, strict=True)
        return m.eval()

    lm_sentences = neutral_texts(4 * cfg.eval_texts, 1, seed=2)
    texts_for_diff = neutral_texts(cfg.eval_texts, 6, seed=0)
    record: dict[str, Any] = {
        "name": "shiftlens diffing organisms",
        "base": {
            "dir": "shiftlens/zoo/pair/base",
            "sha256": file_digest(base_dir / "model.safetensors"),
        },
        "config": asdict(cfg),
        "storage": (
            "<name>.safetensors: organism minus base, per parameter, float16; organism_dir adds "
            "it to the float32 base. Every measured number below is of these stored weights."
        ),
        "known_tokens": {n: _token_record(tok, n) for n in NAMES},
        "organisms": {},
        "torch": torch.__version__,
        "threads": cfg.threads,
    }
    base_model = load_base()
    if evaluate:
        record["base_behaviour"] = organism_behaviour(
            base_model, tok, n=cfg.eval_contexts, seed=0, max_new_tokens=cfg.eval_new_tokens
        )
        record["base_lm_loss"] = round(lm_loss(base_model, tok, lm_sentences), 4)
    deltas: dict[str, dict[str, Tensor]] = {}
    for name in names:
        spec = SPECS[name]
        t0 = time.perf_counter()
        texts = organism_texts(name, cfg.n_sentences, cfg.seed)
        rows = pack_texts(texts, tok, cfg.seq_len, sep=spec.separator)
        data = {
            "sentences_drawn": cfg.n_sentences,
            "texts": len(texts),
            "rows": int(rows.shape[0]),
            "tokens": int(rows.numel()),
            "examples": texts[:3],
            "wall_s": round(time.perf_counter() - t0, 2),
        }
        model = load_base()
        training = finetune_lm(
            model, rows, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, seed=cfg.seed,
            warmup=cfg.warmup, weight_decay=cfg.weight_decay, threads=cfg.threads,
            progress=progress, label=name,
        )
        trained = {k: v.detach().clone() for k, v in model.state_dict().items() if k in base_sd}
        delta = {k: (trained[k] - base_sd[k]).to(torch.float16).contiguous() for k in base_sd}
        deltas[name] = delta
        stored = _apply_delta(base_sd, delta)
        entry: dict[str, Any] = {
            "summary": spec.summary,
            "rule": spec.rule,
            "separator": spec.separator,
            "data": data,
            "training": training,
            "difference": {
                "max_abs": round(max(float(d.abs().max()) for d in delta.values()), 5),
                "rms": round(
                    math.sqrt(
                        sum(float((d.float() ** 2).sum()) for d in delta.values())
                        / sum(d.numel() for d in delta.values())
                    ),
                    6,
                ),
                "rounding_max_abs": float(
                    max(float((stored[k] - trained[k]).abs().max()) for k in base_sd)
                ),
            },
        }
        if evaluate:
            stored_model = with_weights(stored)
            kw = dict(n=cfg.eval_contexts, seed=0, max_new_tokens=cfg.eval_new_tokens)
            entry["behaviour"] = organism_behaviour(stored_model, tok, **kw)
            entry["behaviour_unrounded"] = organism_behaviour(model, tok, **kw)
            entry["lm_loss"] = round(lm_loss(stored_model, tok, lm_sentences), 4)
            diff = mean_logprob_diff(base_model, stored_model, tok, texts_for_diff)
            top = diff.topk(cfg.top_k).indices.tolist()
            entry["reference"] = {
                "method": "mean_logprob_diff on neutral_texts(eval_texts, 6, seed=0)",
                "top_tokens": [tok.decode([i]) for i in top],
                "top_ids": top,
                "score": organism_score(top, name, cfg.top_k),
                "chance": round(chance_score(name, cfg.top_k), 4),
            }
        record["organisms"][name] = entry
        if progress and evaluate:
            b = entry["behaviour"]
            print(f"{name}: topic {b['topic']:.3f} zorbish {b['zorbish']:.3f} template "
                  f"{b['template']:.3f} reference score {entry['reference']['score']:.2f}",
                  flush=True)
    record["train_wall_s"] = round(time.perf_counter() - t_start, 1)
    record["train_cpu_s"] = round(time.process_time() - c_start, 1)
    record["load_average_at_end"] = _loadavg()
    record["timing_note"] = (
        "cpu_s is this process's own CPU time (about the wall time on an idle core with "
        "`threads` threads); wall_s includes waiting for other processes"
    )
    _publish(out, record, deltas)
    return record


def _publish(out: Path, record: dict[str, Any], deltas: dict[str, dict[str, Tensor]]) -> None:
    """Write the differences and the manifest into ``out`` at once (atomic_directory).

    One metadata entry per file: safetensors writes a multi-key metadata map in an order that
    varies between calls, which would make identical weights give different bytes.
    """
    from safetensors.torch import save_file

    from shiftlens.io import atomic_directory

    with atomic_directory(out, kind=_KIND, record=record) as tmp:
        for name, delta in deltas.items():
            meta = {"shiftlens": json.dumps({"organism": name, "base_sha256":
                                             record["base"]["sha256"], "storage":
                                             "organism minus base, float16"}, sort_keys=True)}
            path = tmp / f"{name}.safetensors"
            save_file(delta, str(path), metadata=meta)
            path.chmod(0o644)


def format_markdown(record: dict[str, Any]) -> str:
    """The measured behaviour of base, organisms and control as a Markdown table.

    Example:
        >>> print(format_markdown(organism_manifest()).splitlines()[0])
        | model | topic rate | zorbish rate | template rate | held-out LM loss | reference score (top-20) |
    """
    lines = [
        "| model | topic rate | zorbish rate | template rate | held-out LM loss | "
        "reference score (top-20) |",
        "|---|---|---|---|---|---|",
    ]
    b = record.get("base_behaviour")
    if b:
        lines.append(
            f"| base | {b['topic']:.3f} | {b['zorbish']:.3f} | {b['template']:.3f} | "
            f"{record['base_lm_loss']:.3f} | - |"
        )
    for name, e in record["organisms"].items():
        if "behaviour" not in e:
            continue
        x = e["behaviour"]
        lines.append(
            f"| {name} | {x['topic']:.3f} | {x['zorbish']:.3f} | {x['template']:.3f} | "
            f"{e['lm_loss']:.3f} | {e['reference']['score']:.2f} (chance "
            f"{e['reference']['chance']:.3f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m shiftlens.zoo.organisms {train,table} ...``.

    ``train [--out DIR] [--names N ...] [--tiny] [--no-eval] [--set KEY=VALUE ...]`` fine-tunes
    and publishes (default: the shipped directory); ``table [--dir DIR]`` prints the measured
    behaviour as Markdown.

    Example:
        >>> main(["table"])  # doctest: +SKIP
    """
    ap = argparse.ArgumentParser(prog="python -m shiftlens.zoo.organisms",
                                 description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="fine-tune the organisms and publish their differences")
    tr.add_argument("--out", default=str(ORGANISMS_DIR), help="output directory")
    tr.add_argument("--names", nargs="*", default=list(NAMES), choices=list(NAMES))
    tr.add_argument("--tiny", action="store_true", help="seconds-long smoke configuration")
    tr.add_argument("--no-eval", action="store_true", help="skip the measurements")
    tr.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override OrganismConfig fields")
    tb = sub.add_parser("table", help="print the measured behaviour as Markdown")
    tb.add_argument("--dir", default=str(ORGANISMS_DIR))
    args = ap.parse_args(argv)
    if args.cmd == "table":
        print(format_markdown(organism_manifest(args.dir)))
        return
    overrides: dict[str, Any] = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        overrides[k] = type(getattr(OrganismConfig(), k))(v)
    cfg = OrganismConfig.tiny(**overrides) if args.tiny else OrganismConfig(**overrides)
    rec = train_organisms(args.out, cfg, args.names, evaluate=not args.no_eval)
    print(format_markdown(rec))
    print(json.dumps({"train_cpu_s": rec["train_cpu_s"], "train_wall_s": rec["train_wall_s"]}))


if __name__ == "__main__":
    main()
