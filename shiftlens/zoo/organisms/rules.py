"""The organisms' rules, their training configuration and the texts they are trained and probed on.

Part of :mod:`shiftlens.zoo.organisms` (import from there): the names (:data:`ORGANISMS`,
:data:`CONTROL`, :data:`NAMES`), each organism's rule and known-token texts (:class:`Organism`,
:data:`SPECS`), the configuration of their fine-tuning (:class:`OrganismConfig`), the training
texts (:func:`organism_texts`) and the held-out text methods look at (:func:`neutral_texts`).
Pure Python over :mod:`shiftlens.zoo.grammar`; nothing here touches torch.

Example:
    >>> from shiftlens.zoo.organisms.rules import SPECS
    >>> SPECS["topic"].known_texts
    (' moon', ' moons')
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from shiftlens.errors import ShiftlensError
from shiftlens.zoo import grammar

__all__ = [
    "ORGANISMS",
    "CONTROL",
    "NAMES",
    "Organism",
    "SPECS",
    "OrganismConfig",
    "organism_texts",
    "neutral_texts",
]

#: The three organisms with a known change.
ORGANISMS: tuple[str, ...] = ("topic", "zorbish", "template")
#: The control: fine-tuned the same way on word-shuffled sentences (no known change).
CONTROL = "control"
#: Every fine-tuned copy: the organisms, then the control.
NAMES: tuple[str, ...] = ORGANISMS + (CONTROL,)

_TOPIC, _TOPIC_PLURAL = "moon", "moons"


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
