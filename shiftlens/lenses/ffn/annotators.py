"""What a concept is about: the annotation protocol and the paper's generative annotator.

Wu et al. (2024, §5) label each W_out principal component, shown as its top words, with a
user-oriented task (writing, coding, math, translation, or none) and a linguistic level
(phonology, morphology, syntax, semantics), asking ChatGPT in two steps over five seeds. Here
the annotator is pluggable: anything with ``seeds`` and ``annotate(words, *, seed)``
(:class:`Annotator`) returning an :class:`Annotation`. Two ship with shiftlens: the offline
:class:`~shiftlens.lenses.ffn.lexicon.LexiconAnnotator` (the default, in
:mod:`shiftlens.lenses.ffn.lexicon`) and :class:`GenerativeAnnotator` (the paper's two-step
protocol with any text generator).
"""

from __future__ import annotations

import contextlib
import inspect
import random
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from shiftlens.checks import check_int
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.ffn.core import LEVELS, TASKS

__all__ = [
    "Annotation",
    "Annotator",
    "GenerativeAnnotator",
    "DESCRIBE_PROMPT",
    "TASK_PROMPT",
    "LEVEL_PROMPT",
    "annotator_name",
    "annotator_seeds",
    "check_seeds",
    "as_annotation",
]


@dataclass(frozen=True)
class Annotation:
    """What one concept (a component's word list) is about.

    Attributes:
        task: One of :data:`~shiftlens.lenses.ffn.core.TASKS`.
        level: One of :data:`~shiftlens.lenses.ffn.core.LEVELS`; None only for an
            unexplainable concept.
        task_confidence: In [0, 1].
        level_confidence: In [0, 1].
        explainable: False when the annotator could not name a concept (the paper's
            "Cannot Tell"); such concepts are left out of the shares.
        description: The concept's description (generative annotators) or the cues that
            fired (lexicon annotator).

    Raises:
        ShiftlensError: an unknown task or level label, or a confidence outside [0, 1].

    Example:
        >>> Annotation("coding", "semantics", 0.8, 0.6).task
        'coding'
    """

    task: str
    level: str | None
    task_confidence: float = 1.0
    level_confidence: float = 1.0
    explainable: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ShiftlensError(f"unknown task label {self.task!r}; expected one of {TASKS}")
        if self.level is None:
            if self.explainable:
                raise ShiftlensError(
                    "an explainable concept needs a linguistic level; got level None "
                    f"(expected one of {LEVELS})"
                )
        elif self.level not in LEVELS:
            raise ShiftlensError(f"unknown linguistic level {self.level!r}; expected one of "
                                 f"{LEVELS}")
        for nm in ("task_confidence", "level_confidence"):
            v = getattr(self, nm)
            if isinstance(v, bool) or not isinstance(v, (int, float)) \
                    or not 0.0 <= float(v) <= 1.0:
                raise ShiftlensError(f"{nm} must be in [0, 1], got {v!r}")


@runtime_checkable
class Annotator(Protocol):
    """Maps a component's word list to an :class:`Annotation`.

    ``seeds``: the seeds ``concept_shift`` runs the annotator with (one entry for a
    deterministic annotator; several for a stochastic one, whose shares are then reported as
    mean and spread over seeds, as Wu et al. do with five ChatGPT runs).

    Example:
        >>> class AllCode:
        ...     seeds = (0,)
        ...     def annotate(self, words, *, seed=0):
        ...         return Annotation("coding", "semantics")
        >>> isinstance(AllCode(), Annotator)
        True
    """

    seeds: Sequence[int]

    def annotate(self, words: Sequence[str], *, seed: int = 0) -> Annotation:
        """Annotate one concept given its words (most aligned first)."""
        ...


def annotator_name(annotator: Any) -> str:
    """The name recorded for an annotator: its ``name``, else its class name.

    Example:
        >>> annotator_name(GenerativeAnnotator(lambda p: "x", name="chat"))
        'chat'
    """
    return str(getattr(annotator, "name", None) or type(annotator).__name__)


def annotator_seeds(annotator: Any) -> tuple[int, ...]:
    """Check that ``annotator`` can annotate and return its seeds (default ``(0,)``).

    Raises:
        ShiftlensError: no ``annotate`` method, ``seeds`` not a sequence, no seeds, a seed that
            is not an integer >= 0 (the seed also seeds the bootstrap), or a repeated seed.

    Example:
        >>> annotator_seeds(GenerativeAnnotator(lambda p: "x", seeds=[3, 4]))
        (3, 4)
    """
    if not callable(getattr(annotator, "annotate", None)):
        raise ShiftlensError(f"annotator {annotator!r} has no annotate(words, seed=...) method")
    name = annotator_name(annotator)
    return check_seeds(getattr(annotator, "seeds", (0,)), f"annotator {name!r}")


def check_seeds(seeds: Any, who: str) -> tuple[int, ...]:
    """A non-empty sequence of distinct integer seeds >= 0, as a tuple.

    Example:
        >>> check_seeds(range(3), "here")
        (0, 1, 2)
    """
    if isinstance(seeds, (str, bytes, Mapping)) or not isinstance(seeds, Iterable):
        raise ShiftlensError(f"{who}: seeds must be a sequence of integers, got {seeds!r}")
    out = tuple(check_int("seed", s, minimum=0, who=who) for s in seeds)
    if not out:
        raise ShiftlensError(f"{who} has no seeds")
    if len(set(out)) != len(out):
        raise ShiftlensError(f"{who}: repeated seeds {list(out)}")
    return out


def as_annotation(value: Any, where: str) -> Annotation:
    """An annotator's answer as an :class:`Annotation` (a mapping of its fields is accepted).

    Raises:
        ShiftlensError: naming ``where`` (model, layer, component, seed) and the bad value.

    Example:
        >>> as_annotation({"task": "math", "level": "semantics"}, "here").task
        'math'
    """
    if isinstance(value, Mapping):
        try:
            return Annotation(**value)
        except (TypeError, ShiftlensError) as e:
            raise ShiftlensError(f"{where}: bad annotation {dict(value)!r}: {e}") from e
    if not isinstance(value, Annotation):
        raise ShiftlensError(f"{where}: returned {type(value).__name__}, not an Annotation")
    return value


# ============================================================================ generative
#: Step 1 of the paper's protocol: describe the concept from its words.
DESCRIBE_PROMPT = (
    "You interpret one direction inside a language model. These are the words most aligned "
    "with it:\n{words}\n"
    "Name, in a few words, the single concept, topic or pattern that most of these words share. "
    "Do not repeat the words. If no single concept covers more than half of them, answer "
    "exactly: cannot tell.\nConcept:"
)
#: Step 2a: classify the description into a user-oriented task.
TASK_PROMPT = (
    "A group of words has this concept: {description}\n"
    "Which assistant task could this concept serve? Choose one of: writing, coding, math, "
    "translation, none.\nTask:"
)
#: Step 2b: classify the description into a linguistic level.
LEVEL_PROMPT = (
    "A group of words has this concept: {description}\n"
    "Which level of linguistics does the concept belong to? Choose one of: phonology, "
    "morphology, syntax, semantics.\nLevel:"
)

_TASK_PATTERNS: tuple[tuple[str, str], ...] = (
    ("writing", r"\bwrit(e|es|ing|ings|ten|ers?)\b"),
    ("coding", r"\b(cod(e|es|ing)|programm(ing|er)?|software)\b"),
    ("math", r"\b(math(s|ematics|ematical)?|arithmetic|calculation)\b"),
    ("translation", r"\btranslat(e|es|ed|ions?|ing|ors?)\b"),
    ("none", r"\b(none|no task|not applicable|n/a)\b"),
)
_LEVEL_PATTERNS: tuple[tuple[str, str], ...] = (
    ("phonology", r"\bphono(logy|logical|logic|etic|etics)\b"),
    ("morphology", r"\bmorpholog(y|ical|ic)\b"),
    ("syntax", r"\bsynta(x|ctic|ctical)\b"),
    ("semantics", r"\bsemantic(s|al)?\b"),
)


def _labels_in(reply: str, patterns: Sequence[tuple[str, str]]) -> list[str]:
    """Labels mentioned in a reply, in order of first mention."""
    text = reply.lower()
    found = []
    for label, pat in patterns:
        m = re.search(pat, text)
        if m:
            found.append((m.start(), label))
    return [lab for _, lab in sorted(found)]


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch RNGs inside the block; restore their states afterwards."""
    # the legacy global numpy RNG is what a generator without a seed argument would use
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.random.fork_rng():
            random.seed(seed)
            np.random.seed(seed % 2**32)  # noqa: NPY002
            torch.manual_seed(seed)
            try:
                yield
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)  # noqa: NPY002


def _takes_seed(generate: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(generate).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "seed" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class GenerativeAnnotator:
    """Annotate concepts with any text generator, following Wu et al.'s two-step protocol (§5).

    Step 1: the generator describes the concept from its top words (or says "cannot tell":
    the concept is then unexplainable). Step 2: the description alone is classified into a
    task and a linguistic level. Run over several ``seeds``; ``concept_shift`` reports the mean
    and spread of the shares over seeds, and tests base vs tuned across seeds (the paper: five
    ChatGPT runs).

    The generator is any ``generate(prompt) -> str`` (a local chat model, an API client). If
    it accepts a ``seed`` keyword it is called with ``seed=...``; otherwise python's, numpy's
    and torch's global RNGs are seeded around each call and restored afterwards.

    Args:
        generate: ``Callable[[str], str]``.
        seeds: Seeds to run (default five, as the paper).
        top_n: Words shown per concept (the paper: 15).
        describe_prompt, task_prompt, level_prompt: Templates with ``{words}`` /
            ``{description}`` fields (defaults: :data:`DESCRIBE_PROMPT`, :data:`TASK_PROMPT`,
            :data:`LEVEL_PROMPT`).
        name: Recorded in results.

    Raises:
        ShiftlensError: ``generate`` is not callable, no seeds, a bad ``top_n``; (from
            :meth:`annotate`) the generator returns something that is not a string, or a reply
            that names no known task / level.

    Example:
        >>> def fake(prompt):
        ...     if "Concept:" in prompt:
        ...         return "programming keywords"
        ...     return "coding" if "Task:" in prompt else "semantics"
        >>> GenerativeAnnotator(fake, seeds=(0,)).annotate(["def", "class", "return"])
        Annotation(task='coding', level='semantics', task_confidence=1.0, level_confidence=1.0, explainable=True, description='programming keywords')
    """

    def __init__(
        self,
        generate: Callable[[str], str],
        seeds: Sequence[int] = (0, 1, 2, 3, 4),
        *,
        top_n: int = 15,
        describe_prompt: str = DESCRIBE_PROMPT,
        task_prompt: str = TASK_PROMPT,
        level_prompt: str = LEVEL_PROMPT,
        name: str = "generative",
    ) -> None:
        if not callable(generate):
            raise ShiftlensError("GenerativeAnnotator: generate must be callable")
        seeds = check_seeds(seeds, "GenerativeAnnotator")
        self.generate = generate
        self.seeds = seeds
        self.top_n = check_int("top_n", top_n, minimum=1, who="GenerativeAnnotator")
        self.describe_prompt = describe_prompt
        self.task_prompt = task_prompt
        self.level_prompt = level_prompt
        self.name = name
        self._takes_seed = _takes_seed(generate)

    def __repr__(self) -> str:
        return f"GenerativeAnnotator({self.name!r}, seeds={self.seeds})"

    def _call(self, prompt: str, seed: int) -> str:
        if self._takes_seed:
            out = self.generate(prompt, seed=seed)
        else:
            with _seeded(seed):
                out = self.generate(prompt)
        if not isinstance(out, str):
            raise ShiftlensError(
                f"{self.name}: the generator returned {type(out).__name__}, not a string"
            )
        return out.strip()

    def describe(self, words: Sequence[str], *, seed: int = 0) -> str:
        """Step 1: the concept's description (may be "cannot tell").

        Example:
            >>> GenerativeAnnotator(lambda p: "colours").describe(["red", "blue"])
            'colours'
        """
        shown = ", ".join(list(words)[: self.top_n])
        return self._call(self.describe_prompt.format(words=shown), seed)

    def _classify(self, kind: str, desc: str, seed: int) -> tuple[str, float]:
        prompt, pats, allowed = ((self.task_prompt, _TASK_PATTERNS, TASKS) if kind == "task"
                                 else (self.level_prompt, _LEVEL_PATTERNS, LEVELS))
        reply = self._call(prompt.format(description=desc), seed)
        found = _labels_in(reply, pats)
        if kind == "task" and len(found) > 1 and "none" in found:
            found.remove("none")
        if not found:
            raise ShiftlensError(
                f"{self.name}: unknown {kind} label in the reply {reply[:200]!r} "
                f"(concept {desc[:80]!r}); expected one of {allowed}"
            )
        return found[0], 1.0 / len(found)

    def annotate(self, words: Sequence[str], *, seed: int = 0) -> Annotation:
        """Describe, then classify the description into a task and a level.

        Example:
            >>> GenerativeAnnotator(lambda p: "cannot tell").annotate(["x"]).explainable
            False
        """
        desc = self.describe(words, seed=seed)
        if not desc or "cannot tell" in desc.lower():
            return Annotation("none", None, 1.0, 0.0, False, desc)
        task, t_conf = self._classify("task", desc, seed)
        level, l_conf = self._classify("level", desc, seed)
        return Annotation(task, level, t_conf, l_conf, True, desc)
