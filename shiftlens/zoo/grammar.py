"""The toy language of the embedded pair: a sentence grammar, seven instruction tasks, the template.

Everything here is pure Python and deterministic given a ``random.Random``; nothing touches torch.

The corpus grammar produces lower-case English-like narrative sentences ("the red cat sleeps.",
"she will reverse the cart.", "the boy sorts the apples."). Every instruction verb of the tasks
(reverse, repeat, sort, count, translate, write, give, put, say) also occurs in ordinary narrative
use, so the base model knows the words but never sees a task.

Instruction examples use one fixed template::

    Instruction: {instruction}\\nInput: {w1 w2 ... wk}\\nResponse: {answer}<eos>

The *instruction span* is the instruction sentence after ``"Instruction: "`` (including its final
punctuation); the *context span* is the input words after ``"Input: "``; everything else
(``"Instruction:"``, ``"\\nInput:"``, ``"\\nResponse:"`` and the spaces) is *template*. Inputs are
2-5 distinct words from :data:`INPUT_WORDS`. Word combinations are split once and for all into a
training part and a held-out part by a hash of the (unordered) word set, see :func:`is_held_out`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "ADJECTIVES",
    "INPUT_WORDS",
    "INSTRUCTION_VERBS",
    "NUMBER_WORDS",
    "TASKS",
    "TASK_NAMES",
    "TRANSLATION",
    "Example",
    "Task",
    "corpus_sentence",
    "corpus_sentences",
    "format_prompt",
    "is_held_out",
    "make_example",
    "sample_input",
    "ALL_NOUNS",
    "INPUT_WORD_FORMS",
    "translate_sentence",
]

# ---------------------------------------------------------------------------------------------
# Lexicon
# ---------------------------------------------------------------------------------------------

#: Nouns that can be task inputs (singular, plural).
INPUT_NOUNS: tuple[tuple[str, str], ...] = (
    ("cat", "cats"),
    ("dog", "dogs"),
    ("bird", "birds"),
    ("fish", "fish"),
    ("horse", "horses"),
    ("tree", "trees"),
    ("house", "houses"),
    ("boat", "boats"),
    ("moon", "moons"),
    ("apple", "apples"),
    ("river", "rivers"),
    ("stone", "stones"),
    ("lamp", "lamps"),
    ("bread", "breads"),
    ("flower", "flowers"),
    ("hill", "hills"),
)
#: Adjectives (all can be task inputs).
ADJECTIVES: tuple[str, ...] = (
    "red",
    "blue",
    "green",
    "big",
    "small",
    "old",
    "young",
    "happy",
    "quiet",
    "dark",
    "warm",
    "cold",
)
#: Intransitive verbs, third person singular (task inputs too).
INPUT_VERBS: tuple[str, ...] = (
    "sleeps",
    "runs",
    "sings",
    "jumps",
    "swims",
    "waits",
    "falls",
    "shines",
)

#: The closed list of words task inputs are drawn from (36 words).
INPUT_WORDS: tuple[str, ...] = tuple(n for n, _ in INPUT_NOUNS) + ADJECTIVES + INPUT_VERBS

#: Nouns that occur only in the corpus (never as task inputs).
OTHER_NOUNS: tuple[tuple[str, str], ...] = (
    ("boy", "boys"),
    ("girl", "girls"),
    ("man", "men"),
    ("woman", "women"),
    ("child", "children"),
    ("farmer", "farmers"),
    ("teacher", "teachers"),
    ("king", "kings"),
    ("cart", "carts"),
    ("star", "stars"),
    ("song", "songs"),
    ("letter", "letters"),
    ("book", "books"),
    ("coin", "coins"),
    ("word", "words"),
    ("story", "stories"),
    ("card", "cards"),
    ("list", "lists"),
    ("name", "names"),
    ("wall", "walls"),
    ("road", "roads"),
    ("box", "boxes"),
    ("sheep", "sheep"),
    ("door", "doors"),
)
PEOPLE: tuple[str, ...] = ("boy", "girl", "man", "woman", "child", "farmer", "teacher", "king")
PRONOUNS: tuple[str, ...] = ("he", "she", "they", "we", "i", "you")

#: Transitive verbs (base form, third person singular, past).
TRANSITIVE_VERBS: tuple[tuple[str, str, str], ...] = (
    ("see", "sees", "saw"),
    ("find", "finds", "found"),
    ("carry", "carries", "carried"),
    ("wash", "washes", "washed"),
    ("paint", "paints", "painted"),
    ("hold", "holds", "held"),
    ("love", "loves", "loved"),
    ("open", "opens", "opened"),
    ("build", "builds", "built"),
    ("read", "reads", "read"),
    ("push", "pushes", "pushed"),
    ("bring", "brings", "brought"),
)
#: The verbs the instructions use; each also occurs in narrative sentences.
INSTRUCTION_VERBS: tuple[tuple[str, str, str], ...] = (
    ("reverse", "reverses", "reversed"),
    ("repeat", "repeats", "repeated"),
    ("sort", "sorts", "sorted"),
    ("count", "counts", "counted"),
    ("translate", "translates", "translated"),
    ("write", "writes", "wrote"),
    ("give", "gives", "gave"),
    ("put", "puts", "put"),
    ("say", "says", "said"),
)
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven")
PLACES: tuple[str, ...] = (
    "the market",
    "the river",
    "the hill",
    "the town",
    "the field",
    "the house",
)
TIMES: tuple[str, ...] = ("in the morning", "at night", "every day", "again", "today", "in order")

#: The fixed word-to-word "translation" table: each input word has one made-up word of "zorbish".
TRANSLATION: dict[str, str] = dict(
    zip(
        INPUT_WORDS,
        (
            "mavo",
            "kelu",
            "pira",
            "sotu",
            "dalen",
            "fipo",
            "garu",
            "tesk",
            "lumo",
            "bavi",
            "rolen",
            "kest",
            "nimo",
            "pradu",
            "welo",
            "hosk",
            "zira",
            "blen",
            "vodi",
            "marn",
            "seki",
            "tolo",
            "ruva",
            "kadim",
            "jelo",
            "dusk",
            "fenti",
            "colo",
            "yami",
            "nesu",
            "polk",
            "zumi",
            "wenda",
            "gesh",
            "tiro",
            "lask",
        ),
        strict=True,
    )
)


# ---------------------------------------------------------------------------------------------
# Corpus grammar
# ---------------------------------------------------------------------------------------------

_ALL_NOUNS = INPUT_NOUNS + OTHER_NOUNS
_ALL_VERBS = TRANSITIVE_VERBS + INSTRUCTION_VERBS


def _np(rng: random.Random, plural: bool | None = None) -> str:
    """A noun phrase: determiner, optional adjective / ordinal, noun."""
    sg, pl = rng.choice(_ALL_NOUNS)
    if plural is None:
        plural = rng.random() < 0.4
    noun = pl if plural else sg
    r = rng.random()
    if r < 0.35:
        mod = rng.choice(ADJECTIVES) + " "
    elif r < 0.45:
        mod = rng.choice(("first", "last", "next", "other")) + " "
    else:
        mod = ""
    if plural:
        det = rng.choice(("the", "the", "some", "many", "all the", rng.choice(NUMBER_WORDS[2:])))
    else:
        det = rng.choice(("the", "the", "a", "this", "that", "my", "her", "his"))
    return f"{det} {mod}{noun}"


def _subject(rng: random.Random) -> tuple[str, bool]:
    """A subject and whether it takes a plural / non-third-person verb."""
    r = rng.random()
    if r < 0.35:
        p = rng.choice(PRONOUNS)
        return p, p not in ("he", "she")
    if r < 0.65:
        return "the " + rng.choice(PEOPLE), False
    plural = rng.random() < 0.3
    return _np(rng, plural=plural), plural


def _instruction_verb_sentence(rng: random.Random) -> str:
    """A narrative sentence built around one instruction verb (never a task)."""
    base, third, past = rng.choice(INSTRUCTION_VERBS)
    subj, plural = _subject(rng)
    obj = _np(rng)
    form = rng.random()
    if form < 0.3:
        verb = f"will {base}"
    elif form < 0.6:
        verb = base if plural else third
    else:
        verb = past
    extra = ""
    if base == "count":
        extra = rng.choice(
            ("", "", " " + rng.choice(TIMES), f" and finds {rng.choice(NUMBER_WORDS)}")
        )
    elif base == "translate":
        extra = rng.choice(
            ("", " into zorbish", " into a new language", " for the " + rng.choice(PEOPLE))
        )
    elif base in ("give", "say", "write"):
        extra = rng.choice(("", " to the " + rng.choice(PEOPLE), " " + rng.choice(TIMES)))
    elif base == "put":
        extra = " " + rng.choice(
            ("on the wall", "in the box", "in order", "in alphabetical order", "by the door")
        )
    elif base in ("sort", "reverse"):
        extra = rng.choice(
            ("", "", " by size", " in order", " in alphabetical order", " " + rng.choice(TIMES))
        )
    else:
        extra = rng.choice(("", " " + rng.choice(TIMES)))
    return f"{subj} {verb} {obj}{extra}."


def corpus_sentence(rng: random.Random) -> str:
    """One narrative sentence of the toy grammar (lower case, ends with ``.`` or ``?``).

    Args:
        rng: the random source; the sentence is a pure function of its state.

    Returns:
        A sentence such as ``"the old farmer carried the red apples."``.

    Example:
        >>> import random
        >>> s = corpus_sentence(random.Random(0))
        >>> s.endswith((".", "?"))
        True
    """
    r = rng.random()
    if r < 0.22:
        return _instruction_verb_sentence(rng)
    if r < 0.40:  # intransitive
        subj_plural = rng.random() < 0.3
        subj = _np(rng, plural=subj_plural)
        verb = rng.choice(INPUT_VERBS)
        if subj_plural:
            verb = verb[:-1]
        tail = rng.choice(("", "", " " + rng.choice(TIMES), " near " + rng.choice(PLACES)))
        return f"{subj} {verb}{tail}."
    if r < 0.68:  # transitive
        base, third, past = rng.choice(TRANSITIVE_VERBS)
        subj, plural = _subject(rng)
        form = rng.random()
        verb = (
            f"will {base}" if form < 0.25 else (past if form < 0.6 else (base if plural else third))
        )
        tail = rng.choice(("", "", " at " + rng.choice(PLACES), " " + rng.choice(TIMES)))
        return f"{subj} {verb} {_np(rng)}{tail}."
    if r < 0.78:  # copula + adjective
        subj_plural = rng.random() < 0.4
        subj = _np(rng, plural=subj_plural)
        return f"{subj} {'are' if subj_plural else 'is'} {rng.choice(ADJECTIVES)}."
    if r < 0.86:  # questions
        q = rng.random()
        if q < 0.4:
            return f"how many {rng.choice(_ALL_NOUNS)[1]} are there?"
        if q < 0.7:
            return (
                f"what is the {rng.choice(('first', 'last', 'next'))} {rng.choice(_ALL_NOUNS)[0]}?"
            )
        return f"where is the {rng.choice(_ALL_NOUNS)[0]}?"
    if r < 0.93:  # numbers
        n = rng.choice(NUMBER_WORDS[2:])
        sg, pl = rng.choice(_ALL_NOUNS)
        if rng.random() < 0.3:
            return f"the number of {pl} is {n}."
        return f"there are {n} {pl} {rng.choice(('here', 'in the box', 'near ' + rng.choice(PLACES)))}."
    # compound
    subj, plural = _subject(rng)
    base, third, past = rng.choice(_ALL_VERBS)
    end = rng.choice(("went home", "sat down", "smiled", "walked to " + rng.choice(PLACES)))
    return f"{subj} {past} {_np(rng)} and then {end}."


def corpus_sentences(n: int, rng: random.Random) -> list[str]:
    """``n`` corpus sentences drawn from :func:`corpus_sentence`.

    Example:
        >>> import random
        >>> len(corpus_sentences(3, random.Random(1)))
        3
    """
    return [corpus_sentence(rng) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One instruction task: its paraphrases and the function from input words to answer words.

    Example:
        >>> TASKS[0].name, TASKS[0].solve(["red", "cat"])
        ('reverse', ['cat', 'red'])
    """

    name: str
    phrasings: tuple[str, ...]
    solve: Callable[[Sequence[str]], list[str]]


TASKS: tuple[Task, ...] = (
    Task(
        "reverse",
        (
            "reverse the words.",
            "write the words in reverse order.",
            "reverse the order of the words.",
        ),
        lambda ws: list(reversed(ws)),
    ),
    Task(
        "repeat",
        ("repeat the words.", "say the words again.", "repeat the input."),
        lambda ws: list(ws),
    ),
    Task(
        "sort",
        (
            "sort the words.",
            "sort the words in alphabetical order.",
            "put the words in alphabetical order.",
        ),
        lambda ws: sorted(ws),
    ),
    Task(
        "count",
        ("count the words.", "how many words are there?", "count the number of words."),
        lambda ws: [NUMBER_WORDS[len(ws)]],
    ),
    Task(
        "first",
        ("give the first word.", "write the first word.", "what is the first word?"),
        lambda ws: [ws[0]],
    ),
    Task(
        "last",
        ("give the last word.", "write the last word.", "what is the last word?"),
        lambda ws: [ws[-1]],
    ),
    Task(
        "translate",
        ("translate the words.", "translate the words into zorbish.", "say the words in zorbish."),
        lambda ws: [TRANSLATION[w] for w in ws],
    ),
)
TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS)
_TASK_BY_NAME = {t.name: t for t in TASKS}

MIN_WORDS, MAX_WORDS = 2, 5
HELD_OUT_PERCENT = 12


def is_held_out(words: Sequence[str]) -> bool:
    """Whether a word combination belongs to the held-out split.

    The split depends only on the *set* of words (not their order, not the task), so a held-out
    combination never occurs in any order under any task in the instruction-tuning data.

    Example:
        >>> is_held_out(["red", "cat"]) == is_held_out(["cat", "red"])
        True
    """
    key = " ".join(sorted(words)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") % 100 < HELD_OUT_PERCENT


def sample_input(rng: random.Random, *, held_out: bool) -> list[str]:
    """Draw 2-5 distinct input words from the requested split.

    Example:
        >>> import random
        >>> ws = sample_input(random.Random(0), held_out=True)
        >>> is_held_out(ws)
        True
    """
    while True:
        k = rng.randint(MIN_WORDS, MAX_WORDS)
        words = rng.sample(INPUT_WORDS, k)
        if is_held_out(words) == held_out:
            return words


@dataclass(frozen=True)
class Example:
    """One instruction example in the fixed template.

    Example:
        >>> ex = make_example("first", random.Random(0), held_out=False)
        >>> ex.prompt.endswith("Response:") and ex.response.startswith(" ")
        True
    """

    task: str
    instruction: str
    words: tuple[str, ...]
    prompt: str  # ends with "Response:"
    response: str  # continuation text, starts with a space; EOS is appended as a token, not text


def format_prompt(instruction: str, words: Sequence[str]) -> str:
    """The prompt text of the template, ending with ``"Response:"``.

    Example:
        >>> format_prompt("reverse the words.", ["red", "cat"])
        'Instruction: reverse the words.\\nInput: red cat\\nResponse:'
    """
    return f"Instruction: {instruction}\nInput: {' '.join(words)}\nResponse:"


def make_example(
    task: str, rng: random.Random, *, held_out: bool, phrasing: int | None = None
) -> Example:
    """Draw one example of ``task`` from the training or the held-out split.

    Example:
        >>> import random
        >>> ex = make_example("count", random.Random(0), held_out=False)
        >>> ex.prompt.startswith("Instruction: ") and ex.prompt.endswith("Response:")
        True
    """
    t = _TASK_BY_NAME[task]
    instruction = (
        t.phrasings[rng.randrange(len(t.phrasings))] if phrasing is None else t.phrasings[phrasing]
    )
    words = tuple(sample_input(rng, held_out=held_out))
    answer = t.solve(words)
    return Example(
        task, instruction, words, format_prompt(instruction, words), " " + " ".join(answer)
    )


# ---------------------------------------------------------------------------------------------
# Word forms (used by the diffing organisms, shiftlens.zoo.organisms)
# ---------------------------------------------------------------------------------------------

#: Every noun of the grammar as (singular, plural): the input nouns, then the corpus-only nouns.
ALL_NOUNS: tuple[tuple[str, str], ...] = _ALL_NOUNS

#: Every surface form of an input word -> that input word: the 16 nouns in singular and plural,
#: the 12 adjectives, and the 8 intransitive verbs in third person singular ("sleeps") and in the
#: plural form the grammar uses after plural subjects ("sleep"): 59 forms ("fish" is both).
INPUT_WORD_FORMS: dict[str, str] = {
    **{sg: sg for sg, _ in INPUT_NOUNS},
    **{pl: sg for sg, pl in INPUT_NOUNS},
    **{a: a for a in ADJECTIVES},
    **{v: v for v in INPUT_VERBS},
    **{v[:-1]: v for v in INPUT_VERBS},
}


def translate_sentence(sentence: str) -> str:
    """Translate every form of an input word in a corpus sentence into zorbish, word by word.

    Zorbish does not inflect: a plural noun or a plural verb form becomes the zorbish word of
    its input word (:data:`TRANSLATION`, via :data:`INPUT_WORD_FORMS`). Every other word and
    the final punctuation stay as they are.

    Args:
        sentence: a sentence of :func:`corpus_sentence` (words separated by single spaces,
            ending in ``.`` or ``?``).

    Returns:
        The sentence with the input-word forms replaced.

    Example:
        >>> translate_sentence("the red cats sleep near the river.")
        'the zira mavo yami near the rolen.'
    """
    words, end = sentence[:-1].split(" "), sentence[-1]
    return (
        " ".join(
            TRANSLATION[INPUT_WORD_FORMS[w]] if w in INPUT_WORD_FORMS else w for w in words
        )
        + end
    )
