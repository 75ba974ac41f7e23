"""Instruction prompts with instruction/context spans, and their token-level segment masks.

A prompt's characters fall in three segments: ``instruction`` (the spans that tell the model
what to do), ``context`` (the input the instruction operates on) and ``template`` (everything
else: chat markup, "Input:" labels, newlines). After tokenization two more segments exist:
``bos`` (a beginning-of-sequence token, prepended or written by a chat template) and
``response`` (tokens appended after the prompt). Spans are mapped to tokens through the
tokenizer's offset mapping, never by searching strings among tokens: a token belongs to the
segment of its first non-whitespace character (so a byte-level ``" reverse"`` token whose
leading space is template text counts as instruction); a token of whitespace only belongs to
the segment of its first character (whitespace between two spans is template).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Union

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from shiftlens.errors import ShiftlensError

__all__ = [
    "SEGMENTS",
    "Span",
    "InstructionPrompt",
    "TokenizedPrompt",
    "tokenize_prompt",
    "load_prompts",
    "save_prompts",
    "default_prompts",
]

#: Segment names in code order: ``TokenizedPrompt.segments`` holds indices into this tuple.
SEGMENTS: tuple[str, ...] = ("bos", "instruction", "context", "template", "response")
BOS, INSTRUCTION, CONTEXT, TEMPLATE, RESPONSE = range(5)

#: A span is an exact substring of the prompt text (it must occur exactly once) or a
#: ``(start, end)`` pair of character offsets, end exclusive.
Span = Union[str, tuple[int, int]]

_KEYS = ("id", "category", "text", "instruction", "context", "reference", "meta")


def _norm_spans(spans: Any, what: str) -> tuple[Span, ...]:
    if spans is None:
        return ()
    if isinstance(spans, str) or (
        isinstance(spans, (tuple, list))
        and len(spans) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in spans)
    ):
        spans = [spans]
    out: list[Span] = []
    for s in spans:
        if isinstance(s, str):
            out.append(s)
        elif isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(v, int) for v in s):
            out.append((int(s[0]), int(s[1])))
        else:
            raise ShiftlensError(
                f"{what} span {s!r} is neither a substring nor a (start, end) pair of ints"
            )
    return tuple(out)


@dataclass(frozen=True)
class InstructionPrompt:
    """A prompt with its instruction and context spans.

    Args:
        text: The prompt exactly as the model reads it (before any BOS token).
        instruction: Instruction spans: substrings of ``text`` (each occurring exactly once) or
            ``(start, end)`` character offsets.
        context: Context (input) spans, same forms; must not overlap the instruction.
        reference: Optional reference response, appended verbatim after the prompt tokens.
        id: Identifier used in every error message and result row.
        category: Task category (e.g. ``"writing"``).
        meta: Free-form JSON-serialisable extras (kept by load/save).

    Example:
        >>> p = InstructionPrompt(
        ...     "Translate into French.\\nThe cat sleeps.",
        ...     instruction=["Translate into French."],
        ...     context=["The cat sleeps."],
        ...     id="t-1",
        ...     category="translation",
        ... )
        >>> p.char_spans()["instruction"]
        [(0, 22)]
    """

    text: str
    instruction: Sequence[Any] = ()  # normalised to tuple[Span, ...] in __post_init__
    context: Sequence[Any] = ()
    reference: str | None = None
    id: str = ""
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for what in ("instruction", "context"):
            try:
                object.__setattr__(self, what, _norm_spans(getattr(self, what), what))
            except ShiftlensError as e:
                raise ShiftlensError(f"prompt {self.label}: {e}") from None
        if not isinstance(self.text, str):
            raise ShiftlensError(f"prompt {self.label}: text must be a string")
        if not self.text.strip():
            raise ShiftlensError(f"prompt {self.label}: the prompt text is empty")
        self.char_spans()  # validate now: a bad span fails at construction, not mid-batch

    @property
    def label(self) -> str:
        """The id, or the start of the text when no id was given (for messages)."""
        if self.id:
            return repr(self.id)
        return repr(self.text[:40] + ("..." if len(self.text) > 40 else ""))

    def _resolve(self, span: Span, what: str) -> tuple[int, int]:
        if isinstance(span, str):
            if not span:
                raise ShiftlensError(f"prompt {self.label}: empty {what} span")
            start = self.text.find(span)
            if start < 0:
                raise ShiftlensError(
                    f"prompt {self.label}: {what} span {span!r} not found in the prompt text"
                )
            if self.text.find(span, start + 1) >= 0:
                raise ShiftlensError(
                    f"prompt {self.label}: {what} span {span!r} occurs more than once in the "
                    "prompt text; give it as (start, end) character offsets"
                )
            return start, start + len(span)
        s, e = span
        if not (0 <= s < e <= len(self.text)):
            raise ShiftlensError(
                f"prompt {self.label}: {what} span {span!r} is not a non-empty range inside "
                f"the text of length {len(self.text)}"
            )
        return s, e

    def char_spans(self) -> dict[str, list[tuple[int, int]]]:
        """Resolve the spans to sorted character ranges, checking they do not overlap.

        Returns:
            ``{"instruction": [(start, end), ...], "context": [...]}``, end exclusive.

        Raises:
            ShiftlensError: a span is not found, ambiguous, out of range, or an instruction
                span overlaps a context span.

        Example:
            >>> InstructionPrompt("Sort: b a", instruction=["Sort:"], context=[(6, 9)]).char_spans()
            {'instruction': [(0, 5)], 'context': [(6, 9)]}
        """
        ins = sorted(self._resolve(s, "instruction") for s in self.instruction)
        ctx = sorted(self._resolve(s, "context") for s in self.context)
        for a0, a1 in ins:
            for b0, b1 in ctx:
                if a0 < b1 and b0 < a1:
                    raise ShiftlensError(
                        f"prompt {self.label}: instruction span {self.text[a0:a1]!r} overlaps "
                        f"context span {self.text[b0:b1]!r}"
                    )
        return {"instruction": ins, "context": ctx}

    def char_labels(self) -> list[int]:
        """Segment index (into :data:`SEGMENTS`) of every character of ``text``.

        Example:
            >>> InstructionPrompt("Do it: x", instruction=["Do it"], context=["x"]).char_labels()
            [1, 1, 1, 1, 1, 3, 3, 2]
        """
        labels = [TEMPLATE] * len(self.text)
        spans = self.char_spans()
        for code, key in ((INSTRUCTION, "instruction"), (CONTEXT, "context")):
            for s, e in spans[key]:
                labels[s:e] = [code] * (e - s)
        return labels

    def with_chat_template(
        self,
        tokenizer: Any,
        *,
        system: str | None = None,
        add_generation_prompt: bool = True,
    ) -> InstructionPrompt:
        """Wrap the prompt in the tokenizer's chat template, keeping the spans right.

        The prompt text becomes the user message; spans are moved to character offsets in the
        templated text, everything the template adds is ``template`` (its BOS token, if the
        template writes one, becomes ``bos`` at tokenization).

        Args:
            tokenizer: A Hugging Face tokenizer with a ``chat_template``.
            system: Optional system message.
            add_generation_prompt: Append the assistant-turn header (default).

        Returns:
            A new prompt whose ``meta["chat_template"]`` is True.

        Example:
            >>> templated = prompt.with_chat_template(tokenizer)  # doctest: +SKIP
        """
        if getattr(tokenizer, "chat_template", None) is None:
            raise ShiftlensError(
                f"prompt {self.label}: tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} "
                "has no chat template"
            )
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": self.text}
        ]
        out = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        where = out.find(self.text)
        if where < 0 or out.find(self.text, where + 1) >= 0:
            raise ShiftlensError(
                f"prompt {self.label}: the chat template did not keep the prompt text verbatim "
                "exactly once; cannot place the spans"
            )
        spans = self.char_spans()
        shift = lambda rs: tuple((s + where, e + where) for s, e in rs)  # noqa: E731
        return replace(
            self,
            text=out,
            instruction=shift(spans["instruction"]),
            context=shift(spans["context"]),
            meta={**self.meta, "chat_template": True, "user_offset": where},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the JSONL schema (spans as strings or ``[start, end]``).

        Example:
            >>> InstructionPrompt("Hi there", instruction=["Hi"], id="a").to_dict()["instruction"]
            ['Hi']
        """
        enc = lambda spans: [s if isinstance(s, str) else [s[0], s[1]] for s in spans]  # noqa: E731
        d: dict[str, Any] = {
            "id": self.id,
            "category": self.category,
            "text": self.text,
            "instruction": enc(self.instruction),
            "context": enc(self.context),
            "reference": self.reference,
        }
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InstructionPrompt:
        """Build a prompt from a JSONL record (see docs/prompts.md for the schema).

        Example:
            >>> InstructionPrompt.from_dict({"text": "Sort: b a", "instruction": ["Sort:"]}).text
            'Sort: b a'
        """
        if "text" not in d:
            raise ShiftlensError(f"prompt record {d.get('id', '?')!r} has no 'text'")
        unknown = set(d) - set(_KEYS)
        meta = dict(d.get("meta") or {})
        for k in sorted(unknown):  # keep unknown keys instead of dropping them
            meta[k] = d[k]
        return cls(
            text=d["text"],
            instruction=d.get("instruction") or (),
            context=d.get("context") or (),
            reference=d.get("reference"),
            id=str(d.get("id") or ""),
            category=d.get("category"),
            meta=meta,
        )


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt (and optional response) as model tokens with a segment code per position.

    Attributes:
        prompt: The source prompt.
        tokens: Token ids, BOS (if any) + prompt + response.
        segments: Index into :data:`SEGMENTS` for every position.
        n_prompt: Number of prompt positions including BOS; the response starts there.
        offsets: Character range in ``prompt.text`` of each prompt position ((0, 0) for a
            prepended BOS).
        response: The response text that was appended ("" when none).
    """

    prompt: InstructionPrompt
    tokens: Int[Tensor, " pos"]
    segments: Int[Tensor, " pos"]
    n_prompt: int
    offsets: tuple[tuple[int, int], ...]
    response: str = ""

    @property
    def n_response(self) -> int:
        """Number of response tokens."""
        return int(self.tokens.shape[0]) - self.n_prompt

    def mask(self, segment: str) -> Bool[Tensor, " pos"]:
        """Boolean mask of the positions in ``segment`` (one of :data:`SEGMENTS`).

        Example:
            >>> tp.mask("instruction").sum()  # doctest: +SKIP
            tensor(4)
        """
        if segment not in SEGMENTS:
            raise ShiftlensError(f"unknown segment {segment!r}; choose from {SEGMENTS}")
        return self.segments == SEGMENTS.index(segment)

    @property
    def masks(self) -> dict[str, Bool[Tensor, " pos"]]:
        """All segment masks by name."""
        return {s: self.mask(s) for s in SEGMENTS}


def _encode(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def tokenize_prompt(
    tokenizer: Any,
    prompt: InstructionPrompt,
    *,
    prepend_bos: bool = True,
    response: str | None = None,
    n_ctx: int | None = None,
    model_name: str = "model",
) -> TokenizedPrompt:
    """Tokenize a prompt (and an optional response) and label every token with its segment.

    The prompt is tokenized without special tokens; a BOS token is prepended when
    ``prepend_bos`` is true and the text does not already start with one (chat templates often
    write it). The response is tokenized on its own and appended. Nothing is ever truncated.

    Args:
        tokenizer: A Hugging Face *fast* tokenizer (offset mappings are required).
        prompt: The prompt.
        prepend_bos: Prepend ``tokenizer.bos_token_id`` (use the model's
            ``cfg.default_prepend_bos``).
        response: Text appended after the prompt (e.g. ``prompt.reference``); None for none.
        n_ctx: The model's context length; longer inputs raise.
        model_name: Used in error messages.

    Returns:
        The :class:`TokenizedPrompt`.

    Raises:
        ShiftlensError: the tokenizer gives no offsets, the response is empty, or the tokens
            exceed ``n_ctx``.

    Example:
        >>> tp = tokenize_prompt(tok, InstructionPrompt("Sort: b a", instruction=["Sort:"]))  # doctest: +SKIP
        >>> [SEGMENTS[i] for i in tp.segments]  # doctest: +SKIP
        ['bos', 'instruction', 'instruction', 'template', 'template']
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ShiftlensError(
            f"{model_name}: tokenizer {type(tokenizer).__name__} is not a fast tokenizer; "
            "offset mappings are needed to map spans to tokens"
        )
    ids, offsets = _encode(tokenizer, prompt.text)
    if not ids:
        raise ShiftlensError(f"prompt {prompt.label}: tokenizes to zero tokens ({model_name})")
    labels = prompt.char_labels()
    text = prompt.text
    segs: list[int] = []
    for s, e in offsets:
        if s >= e:
            segs.append(TEMPLATE)
            continue
        pos = next((i for i in range(s, e) if not text[i].isspace()), s)
        segs.append(labels[pos])
    bos_id = tokenizer.bos_token_id
    if bos_id is not None and ids[0] == bos_id:
        segs[0] = BOS
    elif prepend_bos:
        if bos_id is None:
            raise ShiftlensError(f"{model_name}: prepend_bos is set but the tokenizer has no BOS")
        ids = [bos_id] + ids
        offsets = [(0, 0)] + offsets
        segs = [BOS] + segs
    n_prompt = len(ids)
    if response is not None:
        if not response.strip():
            raise ShiftlensError(f"prompt {prompt.label}: the response is empty")
        r_ids, _ = _encode(tokenizer, response)
        if not r_ids:
            raise ShiftlensError(f"prompt {prompt.label}: the response tokenizes to nothing")
        ids = ids + r_ids
        segs = segs + [RESPONSE] * len(r_ids)
    if n_ctx is not None and len(ids) > n_ctx:
        raise ShiftlensError(
            f"prompt {prompt.label}: {len(ids)} tokens (prompt {n_prompt} + response "
            f"{len(ids) - n_prompt}) exceed the context length {n_ctx} of {model_name}; "
            "shorten the prompt (nothing is truncated silently)"
        )
    return TokenizedPrompt(
        prompt=prompt,
        tokens=torch.tensor(ids, dtype=torch.long),
        segments=torch.tensor(segs, dtype=torch.long),
        n_prompt=n_prompt,
        offsets=tuple(tuple(o) for o in offsets),
        response=response or "",
    )


def load_prompts(path: str | Path) -> list[InstructionPrompt]:
    """Load prompts from a JSONL file (one record per line; schema in docs/prompts.md).

    Example:
        >>> prompts = load_prompts("my_prompts.jsonl")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise ShiftlensError(f"prompt file {str(path)!r} does not exist")
    out = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ShiftlensError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            try:
                out.append(InstructionPrompt.from_dict(rec))
            except ShiftlensError as e:
                raise ShiftlensError(f"{path}:{i}: {e}") from None
    ids = [p.id for p in out if p.id]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ShiftlensError(f"{path}: duplicate prompt ids {sorted(dup)}")
    return out


def save_prompts(prompts: Iterable[InstructionPrompt], path: str | Path) -> Path:
    """Write prompts as JSONL (UTF-8, one record per line); returns the path.

    Example:
        >>> save_prompts(default_prompts()[:3], "/tmp/p.jsonl")  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
    return path


def default_prompts(categories: Sequence[str] | None = None) -> list[InstructionPrompt]:
    """The prompt set shipped with shiftlens (written for the project; docs/prompts-data.md).

    Args:
        categories: Keep only these categories (e.g. ``["writing", "math"]``).

    Example:
        >>> len(default_prompts()) >= 60
        True
    """
    ref = resources.files("shiftlens") / "data" / "prompts.jsonl"
    with resources.as_file(ref) as p:
        prompts = load_prompts(p)
    if categories is not None:
        known = {p.category for p in prompts}
        bad = set(categories) - known
        if bad:
            raise ShiftlensError(f"unknown categories {sorted(bad)}; shipped: {sorted(known)}")
        prompts = [p for p in prompts if p.category in set(categories)]
    return prompts
