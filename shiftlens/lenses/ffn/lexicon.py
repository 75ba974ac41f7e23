"""The offline annotator: task and linguistic level of a concept from word lists and spelling.

:class:`LexiconAnnotator` is the default annotator of ``concept_shift``: deterministic, no model
or network, built on the word lists shipped in ``shiftlens/data/lexicons/`` (written for
shiftlens; :func:`load_lexicons` reads them or your own files of the same shape). It stands in
for the paper's ChatGPT annotation (Wu et al. 2024, §5); it is cruder - it knows only its word
lists - and its thresholds were set so that random word lists rarely get a label (docs/ffn.md,
"Null calibration").
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from shiftlens.checks import check_float, check_int
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.ffn.annotators import Annotation
from shiftlens.lenses.ffn.core import LEVELS, USER_TASKS
from shiftlens.vocab import english_words

__all__ = ["Lexicons", "load_lexicons", "LexiconAnnotator"]


@dataclass(frozen=True)
class Lexicons:
    """The word lists behind :class:`LexiconAnnotator` (``shiftlens/data/lexicons/*.json``).

    Attributes:
        tasks: task -> set of words.
        phonology: sound words and onomatopoeia.
        rhyme_min_group: words needed for a rhyme group.
        prefixes, suffixes: affixes (longest first).
        affix_min_shared: an affix must be shared by at least this many words to count...
        affix_alpha: ...and by more words than chance: binomial tail probability below this,
            given the affix's rate among the shipped 30,000 English words.
        abbreviations: abbreviations.
        function_words: determiners, pronouns, prepositions, conjunctions, auxiliaries, particles.
        fields: semantic field -> set of words (the task lists are added as fields).

    Example:
        >>> lex = load_lexicons()
        >>> sorted(lex.tasks)
        ['coding', 'math', 'translation', 'writing']
    """

    tasks: dict[str, frozenset[str]]
    phonology: frozenset[str]
    rhyme_min_group: int
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    affix_min_shared: int
    affix_alpha: float
    abbreviations: frozenset[str]
    function_words: frozenset[str]
    fields: dict[str, frozenset[str]]


def _read_json(src: str | Path | Mapping | None, default: str) -> dict:
    if isinstance(src, Mapping):
        return dict(src)
    if src is None:
        text = (resources.files("shiftlens") / "data" / "lexicons" / default).read_text("utf-8")
        return json.loads(text)
    p = Path(src)
    if not p.exists():
        raise ShiftlensError(f"lexicon file {str(p)!r} not found")
    try:
        return json.loads(p.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise ShiftlensError(f"lexicon file {str(p)!r} is not valid JSON: {e}") from e


def _lower_set(words: Sequence[str]) -> frozenset[str]:
    return frozenset(w.strip().lower() for w in words if w.strip())


def load_lexicons(
    tasks: str | Path | Mapping | None = None, linguistic: str | Path | Mapping | None = None
) -> Lexicons:
    """Load the task and linguistic lexicons (default: the shipped ones).

    Args:
        tasks: Path to (or dict of) a ``tasks.json``-shaped lexicon.
        linguistic: Path to (or dict of) a ``linguistic.json``-shaped lexicon.

    Raises:
        ShiftlensError: a missing or unreadable file, a task outside the four user-oriented
            tasks, or a missing section.

    Example:
        >>> lex = load_lexicons()
        >>> "python" in lex.tasks["coding"] and "the" in lex.function_words
        True
    """
    t = _read_json(tasks, "tasks.json")
    g = _read_json(linguistic, "linguistic.json")
    try:
        task_sets = {name: _lower_set(v["words"]) for name, v in t["tasks"].items()}
        bad = set(task_sets) - set(USER_TASKS)
        if bad:
            raise ShiftlensError(f"task lexicon has unknown tasks {sorted(bad)}; expected "
                                 f"{USER_TASKS}")
        ph, mo, sy, se = g["phonology"], g["morphology"], g["syntax"], g["semantics"]
        fields = {name: _lower_set(v) for name, v in se["fields"].items()}
        for name, ws in task_sets.items():
            fields[f"task:{name}"] = ws
        fw: set[str] = set()
        for ws in sy["function_words"].values():
            fw |= _lower_set(ws)
        return Lexicons(
            tasks=task_sets,
            phonology=_lower_set(ph["words"]),
            rhyme_min_group=int(ph.get("rhyme", {}).get("min_group", 3)),
            prefixes=tuple(sorted(_lower_set(mo["prefixes"]), key=len, reverse=True)),
            suffixes=tuple(sorted(_lower_set(mo["suffixes"]), key=len, reverse=True)),
            affix_min_shared=int(mo.get("min_shared", 3)),
            affix_alpha=float(mo.get("alpha", 0.01)),
            abbreviations=_lower_set(mo.get("abbreviations", [])),
            function_words=frozenset(fw),
            fields=fields,
        )
    except KeyError as e:
        raise ShiftlensError(f"lexicon is missing the section {e}") from e


@functools.lru_cache(maxsize=1)
def _default_lexicons() -> Lexicons:
    return load_lexicons()


@functools.lru_cache(maxsize=1)
def _english() -> frozenset[str]:
    return frozenset(english_words())


def _clean_word(w: str) -> str:
    return w.strip().lower().lstrip("\u2581\u0120 ")


def _forms(w: str) -> set[str]:
    """A word and its naive inflectional stems (plural, past, -ing, -ly)."""
    out = {w}
    for suf, reps in (("ies", ("y",)), ("es", ("",)), ("s", ("",)), ("ed", ("", "e")),
                      ("ing", ("", "e")), ("ly", ("",))):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            out.update(w[: -len(suf)] + r for r in reps)
    return out


_VOWELS = frozenset("aeiouy")


@functools.lru_cache(maxsize=8)
def _affix_rates(suffixes: tuple[str, ...],
                 prefixes: tuple[str, ...]) -> dict[tuple[str, str], float]:
    """Share of the shipped English words carrying each affix (stem >= 3 letters)."""
    words = english_words()
    out = {}
    for kind, affixes, test in (("suffix", suffixes, str.endswith),
                                ("prefix", prefixes, str.startswith)):
        for a in affixes:
            c = sum(1 for w in words if len(w) - len(a) >= 3 and test(w, a))
            out[kind, a] = (c + 1) / (len(words) + 2)
    return out


def _binom_sf(c: int, n: int, p: float) -> float:
    """P(X >= c) for X ~ Binomial(n, p)."""
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(c, n + 1)))


def _rime(w: str) -> str | None:
    """The rhyming part of a spelling: the last vowel group and what follows (cat -> at,
    night -> ight, make -> ake). None for words without letters or a vowel."""
    if not w.isalpha() or len(w) < 2:
        return None
    stem, tail = w, ""
    if len(w) > 3 and w.endswith("e") and w[-2] not in _VOWELS:
        stem, tail = w[:-1], "e"
    i = len(stem) - 1
    while i >= 0 and stem[i] not in _VOWELS:
        i -= 1
    if i < 0:
        return None
    while i > 0 and stem[i - 1] in _VOWELS:
        i -= 1
    r = stem[i:] + tail
    return r if len(r) >= 2 else None


class LexiconAnnotator:
    """Offline annotator: task and linguistic level from shipped word lists and spelling cues.

    Deterministic (``seeds == (0,)``). It reads the first ``top_n`` words of a concept (the
    paper shows its annotator 15) and scores:

    * task t: share of words whose form (or naive stem) is in the task-t lexicon. The best
      task wins when it has at least ``min_hits`` words and a share >= ``min_share``;
      otherwise "none".
    * phonology: words in the sound/onomatopoeia list, or in a rhyme group (>= 3 words with
      the same spelled rime - last vowel group and what follows: c-at, fl-at - where the rime
      is not explained by a listed suffix the word carries, as in kind-ness);
    * morphology: words carrying a listed prefix/suffix that at least 3 words of the list
      share, more often than chance (binomial tail p < 0.01 given the affix's rate among the
      shipped 30,000 English words: three plurals in 15 words are not a concept, 6 are),
      abbreviations, and non-words (neither in the shipped English list nor in any lexicon);
    * syntax: function words;
    * semantics: the largest number of words from one semantic field (the task lexicons
      count as fields).

    The level with the largest share wins (ties: semantics, syntax, morphology, phonology).
    Confidence = purity (winner's share / sum of shares) x strength (winner's share /
    ``saturation``, capped at 1); for "none", ``1 - best task share / min_share``. A concept
    whose best level share is below ``min_share`` and that has no task is unexplainable
    (level None).

    Args:
        top_n: Words read per concept.
        min_share: Minimum share of words for a label, in [0, 1].
        min_hits: Minimum number of words for a task label.
        saturation: Share at which strength is full, in (0, 1].
        lexicons: A :class:`Lexicons` (default: the shipped ones).

    Example:
        >>> a = LexiconAnnotator()
        >>> ann = a.annotate(["python", "code", "function", "variable", "the", "loop"])
        >>> ann.task, ann.level
        ('coding', 'semantics')
    """

    name = "lexicon"
    seeds: tuple[int, ...] = (0,)

    def __init__(
        self,
        *,
        top_n: int = 15,
        min_share: float = 0.2,
        min_hits: int = 2,
        saturation: float = 0.5,
        lexicons: Lexicons | None = None,
    ) -> None:
        who = "LexiconAnnotator"
        self.top_n = check_int("top_n", top_n, minimum=1, who=who)
        self.min_share = check_float("min_share", min_share, minimum=0.0, maximum=1.0, who=who)
        self.min_hits = check_int("min_hits", min_hits, minimum=0, who=who)
        self.saturation = check_float("saturation", saturation, minimum=0.0, maximum=1.0,
                                      open_min=True, who=who)
        if lexicons is not None and not isinstance(lexicons, Lexicons):
            raise ShiftlensError(f"{who}: lexicons must be a Lexicons (load_lexicons()), got "
                                 f"{type(lexicons).__name__}")
        self.lexicons = lexicons or _default_lexicons()
        lx = self.lexicons
        self._known = frozenset().union(lx.phonology, lx.function_words, lx.abbreviations,
                                        *lx.fields.values())

    def __repr__(self) -> str:
        return f"LexiconAnnotator(top_n={self.top_n}, min_share={self.min_share})"

    # -- cues
    def _affix_hits(self, ws: list[str]) -> set[int]:
        lx = self.lexicons
        rates = _affix_rates(lx.suffixes, lx.prefixes)
        n = len(ws)
        hits: set[int] = set()
        for kind, affixes, test in (("suffix", lx.suffixes, str.endswith),
                                    ("prefix", lx.prefixes, str.startswith)):
            for a in affixes:
                carriers = {i for i, w in enumerate(ws) if len(w) - len(a) >= 3 and test(w, a)}
                c = len({ws[i] for i in carriers})
                if c >= lx.affix_min_shared and _binom_sf(c, n, rates[kind, a]) < lx.affix_alpha:
                    hits |= carriers
        return hits

    def _rhyme_hits(self, ws: list[str]) -> set[int]:
        groups: dict[str, set[int]] = {}
        for i, w in enumerate(ws):
            r = _rime(w)
            if r is None or self._suffix_explains(w, r):
                continue
            groups.setdefault(r, set()).add(i)
        hits: set[int] = set()
        for idx in groups.values():
            if len({ws[i] for i in idx}) >= self.lexicons.rhyme_min_group:
                hits |= idx
        return hits

    def _suffix_explains(self, w: str, rime: str) -> bool:
        """True when the word's rime is (the tail of) a listed suffix it carries: kind-ness."""
        return any(
            w.endswith(s) and len(w) - len(s) >= 3 and s.endswith(rime)
            for s in self.lexicons.suffixes
        )

    def _level_shares(self, ws: list[str], forms: list[set[str]]) -> dict[str, float]:
        lx, n = self.lexicons, len(ws)
        phon = {i for i, f in enumerate(forms) if f & lx.phonology} | self._rhyme_hits(ws)
        morph = self._affix_hits(ws) | {i for i, w in enumerate(ws) if w in lx.abbreviations}
        english = _english()
        morph |= {
            i for i, w in enumerate(ws)
            if not w.isdigit() and w not in english and not (forms[i] & self._known)
        }
        syn = {i for i, w in enumerate(ws) if w in lx.function_words}
        field_counts = [
            sum(1 for i, f in enumerate(forms)
                if f & fw or (name == "task:math" and ws[i].isdigit()))
            for name, fw in lx.fields.items()
        ]
        sem = max(field_counts, default=0)
        return {"phonology": len(phon) / n, "morphology": len(morph) / n,
                "syntax": len(syn) / n, "semantics": sem / n}

    def scores(self, words: Sequence[str]) -> dict[str, dict[str, float]]:
        """Shares of the first ``top_n`` words hitting each task's and each level's cues.

        Returns:
            ``{"task": {task: share}, "level": {level: share}, "n_words": {"n": n}}``.

        Raises:
            ShiftlensError: ``words`` not a list of strings, or no word left after cleaning.

        Example:
            >>> LexiconAnnotator().scores(["cat", "hat", "bat", "mat"])["level"]["phonology"]
            1.0
        """
        if isinstance(words, (str, bytes)) or not isinstance(words, Sequence) \
                or not all(isinstance(w, str) for w in words):
            raise ShiftlensError(f"LexiconAnnotator: words must be a list of strings, got "
                                 f"{words!r:.80}")
        ws = [_clean_word(w) for w in list(words)[: self.top_n]]
        ws = [w for w in ws if w]
        n = len(ws)
        if n == 0:
            raise ShiftlensError("LexiconAnnotator: empty word list")
        forms = [_forms(w) for w in ws]
        task = {}
        for t in USER_TASKS:
            lex = self.lexicons.tasks.get(t, frozenset())
            task[t] = sum(1 for i, f in enumerate(forms)
                          if f & lex or (t == "math" and ws[i].isdigit())) / n
        return {"task": task, "level": self._level_shares(ws, forms), "n_words": {"n": float(n)}}

    def _confidence(self, best: float, total: float) -> float:
        if best <= 0:
            return 0.0
        return float(min(1.0, (best / total) * min(1.0, best / self.saturation)))

    def annotate(self, words: Sequence[str], *, seed: int = 0) -> Annotation:
        """Annotate one concept (``seed`` is ignored: the annotator is deterministic).

        Example:
            >>> LexiconAnnotator().annotate(["the", "of", "and", "to", "in"]).level
            'syntax'
        """
        sc = self.scores(words)
        n = sc["n_words"]["n"]
        task_s, level_s = sc["task"], sc["level"]
        best_t = max(USER_TASKS, key=lambda t: task_s[t])  # first wins ties
        t_share = task_s[best_t]
        if t_share >= self.min_share and t_share * n >= self.min_hits:
            task = best_t
            t_conf = self._confidence(t_share, sum(task_s.values()))
        else:
            task = "none"
            t_conf = float(1.0 - min(1.0, t_share / self.min_share)) if self.min_share > 0 \
                else 1.0
        best_l = max(("semantics", "syntax", "morphology", "phonology"), key=lambda lv: level_s[lv])
        l_share = level_s[best_l]
        explainable = l_share >= self.min_share or task != "none"
        cues = ", ".join(f"{lv} {level_s[lv]:.2f}" for lv in LEVELS if level_s[lv] > 0)
        tcues = ", ".join(f"{t} {task_s[t]:.2f}" for t in USER_TASKS if task_s[t] > 0)
        desc = f"level cues: {cues or 'none'}; task cues: {tcues or 'none'}"
        if not explainable:
            return Annotation("none", None, t_conf, 0.0, False, desc)
        return Annotation(task, best_l, t_conf,
                          self._confidence(l_share, sum(level_s.values())), True, desc)
