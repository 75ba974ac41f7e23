"""The position of the instruction: the same instruction at the start, middle or end of a long
context, scored by both models (Wu et al. 2024, §3, the "lost in the middle" question).

:func:`place_instruction` builds one prompt per placement; :func:`position_sensitivity` scores
them with :func:`~shiftlens.lenses.attribution.compare.instruction_sensitivity` and returns a
:class:`~shiftlens.lenses.attribution.derived.PositionResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shiftlens.checks import check_choice
from shiftlens.errors import ShiftlensError
from shiftlens.generate import DEFAULT_MAX_NEW_TOKENS
from shiftlens.lenses.attribution.compare import instruction_sensitivity
from shiftlens.lenses.attribution.derived import PositionResult
from shiftlens.lenses.attribution.results import ALTERNATIVES, POSITIONS
from shiftlens.prompts import InstructionPrompt

__all__ = ["place_instruction", "position_sensitivity"]


def place_instruction(
    instruction: str,
    context: Sequence[str],
    position: str,
    *,
    joiner: str = " ",
    sep: str = "\n",
    suffix: str = "\nResponse:",
    id: str = "",
    category: str | None = None,
) -> InstructionPrompt:
    """Build a prompt with ``instruction`` at the start, middle or end of a long context.

    The context pieces (sentences, paragraphs) are joined with ``joiner``; the instruction
    becomes its own line (``sep``) before them, after them, or between the first and second half
    of the pieces. ``suffix`` (e.g. a response cue) ends the prompt. Spans are set by offsets.

    Args:
        instruction: The instruction text.
        context: The context pieces, a list of texts (at least 2 for ``"middle"``).
        position: ``"start"``, ``"middle"`` or ``"end"``.
        joiner: Between context pieces.
        sep: Between the instruction and the context.
        suffix: Appended after everything (template).
        id: Prompt id (default ``""``); ``category``: its category.

    Returns:
        The :class:`InstructionPrompt` (``meta["position"]`` records the placement).

    Raises:
        ShiftlensError: an unknown position, an empty instruction, a context that is a single
            text instead of a list, empty pieces, or fewer than 2 pieces for ``"middle"``.

    Example:
        >>> p = place_instruction("Summarize the text.", ["A b.", "C d.", "E f."], "middle")
        >>> p.text
        'A b.\\nSummarize the text.\\nC d. E f.\\nResponse:'
    """
    if not isinstance(position, str) or position not in POSITIONS:
        raise ShiftlensError(f"position must be one of {POSITIONS}, got {position!r}")
    for name, v in (("instruction", instruction), ("joiner", joiner), ("sep", sep),
                    ("suffix", suffix), ("id", id)):
        if not isinstance(v, str):
            raise ShiftlensError(f"prompt {id!r}: {name} must be a text, got {v!r:.60}")
    if isinstance(context, str) or not isinstance(context, Sequence):
        raise ShiftlensError(f"prompt {id!r}: context must be a list of pieces (texts), got "
                             f"{type(context).__name__}"
                             + (" (wrap a single text in a list)" if isinstance(context, str)
                                else ""))
    if not all(isinstance(c, str) for c in context):
        raise ShiftlensError(f"prompt {id!r}: every context piece must be a text")
    pieces = list(context)
    if not instruction.strip():
        raise ShiftlensError(f"prompt {id!r}: empty instruction")
    if not pieces or not all(c.strip() for c in pieces):
        raise ShiftlensError(f"prompt {id!r}: the context must be non-empty pieces")
    if position == "middle" and len(pieces) < 2:
        raise ShiftlensError(f"prompt {id!r}: 'middle' needs at least 2 context pieces")
    if position == "start":
        parts = [("i", instruction), ("t", sep), ("c", joiner.join(pieces))]
    elif position == "end":
        parts = [("c", joiner.join(pieces)), ("t", sep), ("i", instruction)]
    else:
        k = len(pieces) // 2
        parts = [("c", joiner.join(pieces[:k])), ("t", sep), ("i", instruction), ("t", sep),
                 ("c", joiner.join(pieces[k:]))]
    parts.append(("t", suffix))
    text, ins, ctx = "", [], []
    for kind, s in parts:
        if kind == "i":
            ins.append((len(text), len(text) + len(s)))
        elif kind == "c":
            ctx.append((len(text), len(text) + len(s)))
        text += s
    return InstructionPrompt(text, instruction=tuple(ins), context=tuple(ctx), id=id,
                             category=category, meta={"position": position})


def _check_items(items: Any) -> list[tuple[str, list[str]]]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ShiftlensError(f"position_sensitivity: items must be a list of (instruction, "
                             f"context pieces) pairs, got {type(items).__name__}")
    items = list(items)
    if not items:
        raise ShiftlensError("position_sensitivity: no items given")
    out = []
    for k, it in enumerate(items):
        if not isinstance(it, Sequence) or isinstance(it, str) or len(it) != 2:
            raise ShiftlensError(f"position_sensitivity: item {k} must be an (instruction, "
                                 f"context pieces) pair, got {it!r:.80}")
        out.append((it[0], it[1]))
    return out


def _check_positions(positions: Any) -> list[str]:
    if isinstance(positions, str) or not isinstance(positions, Sequence) or not positions:
        raise ShiftlensError(f"positions must be a non-empty list out of {POSITIONS}, got "
                             f"{positions!r}")
    bad = [p_ for p_ in positions if p_ not in POSITIONS]
    if bad:
        raise ShiftlensError(f"positions must be a non-empty subset of {POSITIONS}, got "
                             f"{positions}")
    if len(set(positions)) != len(positions):
        raise ShiftlensError(f"positions repeat a placement: {list(positions)}")
    return list(positions)


def position_sensitivity(
    pair: Any,
    items: Sequence[tuple[str, Sequence[str]]],
    *,
    positions: Sequence[str] = POSITIONS,
    ids: Sequence[str] | None = None,
    responses: Sequence[str] | None = None,
    suffix: str = "\nResponse:",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    mode: str = "auto",
    chunk_size: int = 16,
    levels: int = 10,
    threshold: int = 7,
    p: float | int = 4,
    alternative: str = "two-sided",
    seed: int = 0,
    progress: bool = True,
) -> PositionResult:
    """Instruction score of both models with each instruction at the start, middle or end (§3).

    Every item is an ``(instruction, context_pieces)`` pair; :func:`place_instruction` builds
    one prompt per placement (id ``"<item id>@<position>"``). Each model is attributed on its
    own greedy response per prompt, or on a fixed response per item (``responses``), which
    keeps the response identical across placements.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        items: ``(instruction, context_pieces)`` pairs.
        positions: Placements to compare (a list out of :data:`POSITIONS`).
        ids: Item ids (default ``"item-000"``...; unique, without ``@``).
        responses: Optional fixed response text per item.
        suffix: Appended to every prompt (e.g. a response cue).
        max_new_tokens, mode, chunk_size: See :func:`~shiftlens.lenses.attribution.core.attribute`.
        levels, threshold, p: Density parameters.
        alternative: Of the paired t-tests (``"two-sided"`` by default).
        seed: Bootstrap seed.
        progress: Progress bar.

    Returns:
        The :class:`~shiftlens.lenses.attribution.derived.PositionResult`.

    Example:
        >>> items = [("Count the animals.", ["A cat sat.", "A dog ran.", "Rain fell."])]
        >>> pr = position_sensitivity(pair, items)  # doctest: +SKIP
    """
    items = _check_items(items)
    positions = _check_positions(positions)
    check_choice("alternative", alternative, ALTERNATIVES)
    if ids is None:
        ids = [f"item-{i:03d}" for i in range(len(items))]
    elif isinstance(ids, str) or not isinstance(ids, Sequence):
        raise ShiftlensError(f"ids must be one text per item, got {type(ids).__name__}")
    ids = [str(i) for i in ids]
    if len(ids) != len(items):
        raise ShiftlensError(f"{len(ids)} ids for {len(items)} items")
    if len(set(ids)) != len(ids) or any("@" in i for i in ids):
        raise ShiftlensError(f"item ids must be unique and without '@', got {ids[:8]}")
    if responses is not None:
        if isinstance(responses, str) or not isinstance(responses, Sequence):
            raise ShiftlensError(f"responses must be one text per item, got "
                                 f"{type(responses).__name__}")
        if len(responses) != len(items):
            raise ShiftlensError(f"{len(responses)} responses for {len(items)} items")
    prompts, resp = [], []
    for i, (ins, ctx) in enumerate(items):
        for pos in positions:
            prompts.append(place_instruction(ins, ctx, pos, suffix=suffix, id=f"{ids[i]}@{pos}",
                                             category=pos))
            resp.append(None if responses is None else responses[i])
    res = instruction_sensitivity(
        pair, prompts, response="generate" if responses is None else resp,  # type: ignore[arg-type]
        max_new_tokens=max_new_tokens, mode=mode, chunk_size=chunk_size, levels=levels,
        threshold=threshold, p=p, alternative=alternative, seed=seed, progress=progress,
    )
    pr = PositionResult.from_sensitivity(res, positions=positions)
    pr.meta["params"].update({"response": "generate" if responses is None else "given",
                              "suffix": suffix})
    return pr
