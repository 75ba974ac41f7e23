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

Storage: ``shiftlens/zoo/organisms/data/`` (:data:`ORGANISMS_DIR`) holds, per organism, the difference ``organism - base`` of
every parameter in float16 (2 MB each, 8 MB together) and a ``manifest.json`` (SHA-256 of every
file, the known tokens, the training record and the measured behaviour). :func:`organism_dir`
adds a difference to the float32 base once and caches the result as an ordinary Hugging Face
directory under ``$SHIFTLENS_CACHE/organisms/`` (default ``~/.cache/shiftlens``), written
atomically; :func:`organism_pair` loads base and organism as a :class:`~shiftlens.pair.ModelPair`.
Every number in the manifest was measured on these stored (rounded) weights.

The package's modules (everything is importable from ``shiftlens.zoo.organisms``):
:mod:`.rules` (names, rules, configuration, texts), :mod:`.scoring` (known tokens, the score;
also of the embedded instruction pair, :data:`INSTRUCT`), :mod:`.behaviour` (behaviour rates,
the reference ranking) and :mod:`.build` (stored weights, cached directories, pairs, training,
``python -m shiftlens.zoo.organisms``).

Example:
    >>> from shiftlens.zoo.organisms import ORGANISMS, known_token_strings
    >>> ORGANISMS
    ('topic', 'zorbish', 'template')
    >>> known_token_strings("topic")
    [' moon', ' moons']
"""

from __future__ import annotations

from shiftlens.zoo.organisms import behaviour, build, rules, scoring
from shiftlens.zoo.organisms.behaviour import _sample as _sample  # noqa: F401 - tests use it
from shiftlens.zoo.organisms.behaviour import mean_logprob_diff, organism_behaviour
from shiftlens.zoo.organisms.build import (
    ORGANISMS_DIR,
    format_markdown,
    main,
    organism_dir,
    organism_manifest,
    organism_pair,
    train_organisms,
)
from shiftlens.zoo.organisms.rules import (
    CONTROL,
    NAMES,
    ORGANISMS,
    SPECS,
    Organism,
    OrganismConfig,
    neutral_texts,
    organism_texts,
)
from shiftlens.zoo.organisms.scoring import (
    INSTRUCT,
    SCORED,
    chance_score,
    instruct_token_strings,
    known_token_strings,
    known_tokens,
    organism_score,
)

__all__ = [
    "ORGANISMS",
    "CONTROL",
    "NAMES",
    "INSTRUCT",
    "SCORED",
    "ORGANISMS_DIR",
    "Organism",
    "SPECS",
    "OrganismConfig",
    "organism_texts",
    "known_tokens",
    "known_token_strings",
    "instruct_token_strings",
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

# doctest.testmod(shiftlens.zoo.organisms) runs the examples of the whole package: the public
# objects live in the submodules, which testmod would otherwise skip as "not from this module"
__test__ = {f"{mod.__name__.rsplit('.', 1)[1]}.{name}": getattr(mod, name)
            for mod in (rules, scoring, behaviour, build) for name in mod.__all__
            if callable(getattr(mod, name))}
