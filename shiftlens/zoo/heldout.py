"""Held-out prompts and sentences for the toy pair (never seen in its training data)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from shiftlens.errors import ShiftlensError
from shiftlens.prompts import InstructionPrompt
from shiftlens.zoo import grammar

__all__ = ["PROMPTS_PER_TASK", "toy_prompts", "heldout_sentences"]

#: Size of the default held-out evaluation set, per task.
PROMPTS_PER_TASK = 40


def _task_prompts(task: str, count: int, seed: int) -> list[tuple[str, str, tuple[str, ...], str]]:
    """``count`` distinct held-out (instruction, prompt, words, response) tuples of one task."""
    rng = random.Random(f"shiftlens-zoo-heldout/{seed}/{task}")
    t = next(t for t in grammar.TASKS if t.name == task)
    seen: set[tuple[str, ...]] = set()
    out = []
    while len(out) < count:
        words = tuple(grammar.sample_input(rng, held_out=True))
        if words in seen:
            continue
        seen.add(words)
        instruction = t.phrasings[len(out) % len(t.phrasings)]  # balanced over paraphrases
        out.append(
            (
                instruction,
                grammar.format_prompt(instruction, words),
                words,
                " " + " ".join(t.solve(words)),
            )
        )
    return out


def toy_prompts(
    n: int | None = None,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
) -> list[InstructionPrompt]:
    """Held-out instruction prompts for the toy pair, with spans, category and reference.

    Every prompt uses the training template ``"Instruction: {instruction}\\nInput: {words}\\nResponse:"``;
    its word combination belongs to the held-out split (:func:`shiftlens.zoo.grammar.is_held_out`),
    so neither it nor any reordering of it occurred in instruction tuning. Spans:
    ``instruction`` = the instruction sentence after ``"Instruction: "`` (with its ``.``/``?``),
    ``context`` = the input words after ``"Input: "``; the rest is template. ``reference`` is the
    expected continuation (leading space, no EOS). Prompts are interleaved over tasks
    (``reverse-000, repeat-000, ..., translate-000, reverse-001, ...``) so any prefix is balanced,
    and paraphrases rotate within each task. Deterministic in ``seed``.

    Args:
        n: total number of prompts (default: :data:`PROMPTS_PER_TASK` per task).
        tasks: task names to include (default: all of :data:`shiftlens.zoo.grammar.TASK_NAMES`).
        seed: selects a different (still held-out) sample; ``0`` is the evaluation set of the
            manifest.

    Returns:
        A list of :class:`shiftlens.prompts.InstructionPrompt`.

    Raises:
        ShiftlensError: an unknown task name.

    Example:
        >>> ps = toy_prompts(7)
        >>> [p.category for p in ps][:3]
        ['reverse', 'repeat', 'sort']
        >>> ps[0].text.endswith("Response:")
        True
    """
    names = tuple(tasks) if tasks is not None else grammar.TASK_NAMES
    unknown = [t for t in names if t not in grammar.TASK_NAMES]
    if unknown:
        raise ShiftlensError(
            f"toy_prompts: unknown task(s) {unknown}; known: {list(grammar.TASK_NAMES)}"
        )
    if not names:
        return []
    total = PROMPTS_PER_TASK * len(names) if n is None else int(n)
    per_task = -(-total // len(names))
    lists = {t: _task_prompts(t, per_task, seed) for t in names}
    out: list[InstructionPrompt] = []
    for i in range(per_task):
        for t in names:
            if len(out) == total:
                return out
            instruction, text, words, response = lists[t][i]
            ins_start = len("Instruction: ")
            ctx_start = text.index("\nInput: ") + len("\nInput: ")
            ctx = " ".join(words)
            out.append(
                InstructionPrompt(
                    text=text,
                    instruction=((ins_start, ins_start + len(instruction)),)
                    if text.count(instruction) != 1
                    else (instruction,),
                    context=((ctx_start, ctx_start + len(ctx)),)
                    if text.count(ctx) != 1
                    else (ctx,),
                    reference=response,
                    id=f"{t}-{i:03d}",
                    category=t,
                    meta={"words": list(words), "source": "shiftlens.zoo", "seed": seed},
                )
            )
    return out


def heldout_sentences(n: int = 1000, seed: int = 0, exclude: Sequence[str] = ()) -> list[str]:
    """``n`` distinct grammar sentences, none of them in ``exclude`` (e.g. the training corpus).

    Example:
        >>> len(heldout_sentences(5))
        5
    """
    rng = random.Random(f"shiftlens-zoo-lm/{seed}")
    banned = set(exclude)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = grammar.corpus_sentence(rng)
        if s in banned or s in seen:
            continue
        seen.add(s)
        out.append(s)
    return out
