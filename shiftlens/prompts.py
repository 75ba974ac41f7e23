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

Prompt files: :func:`load_prompts` reads the native JSONL schema and every format in
:mod:`shiftlens.formats` (Alpaca, OpenAI messages, ShareGPT, Hugging Face datasets, CSV/TSV and
the Wu et al. 2024 release); :func:`save_prompts` writes the native schema atomically.
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


_SENTINEL = "\ue000shiftlens-user-turn\ue001"  # private-use characters: no template alters them


def _is_int(v: Any) -> bool:
    """An int that is not a bool (``True`` is not a character offset)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _check_str(value: Any, what: str, *, optional: bool = False) -> None:
    """Raise ShiftlensError unless ``value`` is a str that UTF-8 can encode (or None if optional)."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        kind = "a string or null" if optional else "a string"
        raise ShiftlensError(f"{what} must be {kind}, got {type(value).__name__} {_short(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ShiftlensError(
            f"{what} holds a lone surrogate {value[e.start]!r} at character {e.start}: not "
            "valid Unicode text (a JSON '\\ud800' escape without its pair?)"
        ) from None


def _short(value: Any, n: int = 40) -> str:
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


def _norm_spans(spans: Any, what: str) -> tuple[Span, ...]:
    if spans is None:
        return ()
    if isinstance(spans, str) or (
        isinstance(spans, (tuple, list)) and len(spans) == 2 and all(_is_int(v) for v in spans)
    ):
        spans = [spans]
    if not isinstance(spans, (list, tuple)):
        raise ShiftlensError(
            f"{what} must be a list of spans (substrings or [start, end] offsets), got "
            f"{type(spans).__name__} {_short(spans)}"
        )
    out: list[Span] = []
    for s in spans:
        if isinstance(s, str):
            _check_str(s, f"{what} span")
            out.append(s)
        elif isinstance(s, (list, tuple)) and len(s) == 2 and all(_is_int(v) for v in s):
            out.append((int(s[0]), int(s[1])))
        else:
            raise ShiftlensError(
                f"{what} span {_short(s)} is neither a substring nor a (start, end) pair of ints"
            )
    return tuple(out)


def _render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    index: int,
    *,
    label: str,
    add_generation_prompt: bool = True,
) -> tuple[str, int]:
    """Apply the chat template; return the text and where ``messages[index]``'s content starts.

    The message is first rendered as a sentinel that no template alters, which locates it even
    when the same text occurs elsewhere (a repeated question, a system prompt quoting it); the
    real rendering must then equal the sentinel rendering with the content put back, otherwise
    the template changed the text (trimmed or escaped it) and no span could be placed.
    """
    name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    if getattr(tokenizer, "chat_template", None) is None:
        raise ShiftlensError(f"prompt {label}: tokenizer {name!r} has no chat template")
    content = messages[index]["content"]

    def render(msgs: list[dict[str, str]]) -> str:
        try:
            out = tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as e:  # jinja errors, e.g. "System role not supported"
            raise ShiftlensError(
                f"prompt {label}: the chat template of {name!r} failed: {type(e).__name__}: {e}"
            ) from e
        if not isinstance(out, str):
            raise ShiftlensError(f"prompt {label}: the chat template of {name!r} returned no text")
        return out

    if any(_SENTINEL in m["content"] for m in messages):
        raise ShiftlensError(f"prompt {label}: the text contains shiftlens' internal marker")
    marked = [dict(m) for m in messages]
    marked[index]["content"] = _SENTINEL
    with_marker = render(marked)
    if with_marker.count(_SENTINEL) != 1:
        raise ShiftlensError(
            f"prompt {label}: the chat template of {name!r} did not write the user message "
            "unchanged exactly once (it drops, repeats or rewrites message text); cannot place "
            "the spans"
        )
    where = with_marker.index(_SENTINEL)
    out = render([dict(m) for m in messages])
    if out != with_marker[:where] + content + with_marker[where + len(_SENTINEL):]:
        raise ShiftlensError(
            f"prompt {label}: the chat template of {name!r} changes the text of the user message "
            "(trims or escapes it); cannot place the spans"
        )
    return out, where


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
        if isinstance(self.text, (list, tuple)) and any(
            isinstance(m, dict) and ("role" in m or "from" in m) for m in self.text
        ):
            raise ShiftlensError(
                f"prompt {self.label}: text is a list of chat messages, not a string; build the "
                "prompt with InstructionPrompt.from_messages(messages) (the user turn becomes the "
                "instruction, earlier turns template, the assistant reply the reference)"
            )
        try:
            _check_str(self.text, "text")
            _check_str(self.id, "id")
            _check_str(self.category, "category", optional=True)
            _check_str(self.reference, "reference", optional=True)
            if not isinstance(self.meta, dict):
                raise ShiftlensError(
                    f"meta must be a dict, got {type(self.meta).__name__} {_short(self.meta)}"
                )
            for what in ("instruction", "context"):
                object.__setattr__(self, what, _norm_spans(getattr(self, what), what))
        except ShiftlensError as e:
            raise ShiftlensError(f"prompt {self.label}: {e}") from None
        if not self.text.strip():
            raise ShiftlensError(f"prompt {self.label}: the prompt text is empty")
        self.char_spans()  # validate now: a bad span fails at construction, not mid-batch

    @property
    def label(self) -> str:
        """The id, or the start of the text when no id was given (for messages).

        Example:
            >>> InstructionPrompt("Sort: b a", id="s-1").label
            "'s-1'"
        """
        if isinstance(self.id, str) and self.id:
            return repr(self.id)
        if self.id not in ("", None):
            return repr(self.id)
        if not isinstance(self.text, str):
            return "(no id)"
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
        template writes one, becomes ``bos`` at tokenization). The user message is located
        with a marker, so a system message that repeats the prompt text does not confuse it; a
        template that alters the text (trims or escapes it) raises.

        Args:
            tokenizer: A Hugging Face tokenizer with a ``chat_template``.
            system: Optional system message.
            add_generation_prompt: Append the assistant-turn header (default).

        Returns:
            A new prompt whose ``meta["chat_template"]`` is True and ``meta["user_offset"]`` the
            character offset of the user message.

        Raises:
            ShiftlensError: the tokenizer has no chat template, the template fails (e.g. it
                refuses a system message) or alters the text.

        Example:
            >>> templated = prompt.with_chat_template(tokenizer)  # doctest: +SKIP
        """
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": self.text}
        ]
        out, where = _render_chat(
            tokenizer, messages, len(messages) - 1, label=self.label,
            add_generation_prompt=add_generation_prompt,
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

        Every field is checked and a wrong one is named: ``text`` a string; ``instruction`` and
        ``context`` lists of spans; ``reference`` and ``category`` strings or null; ``id`` a
        string or an integer (kept as its decimal string, so ``0`` stays ``"0"``); ``meta`` an
        object. Unknown top-level keys are kept in ``meta``; one that is also a key of ``meta``
        is refused (neither value would survive a save).

        Raises:
            ShiftlensError: the record is not a dict, or a field has the wrong type or value;
                the message names the field and the prompt id.

        Example:
            >>> InstructionPrompt.from_dict({"text": "Sort: b a", "instruction": ["Sort:"]}).text
            'Sort: b a'
            >>> InstructionPrompt.from_dict({"id": 0, "text": "Sort: b a"}).id
            '0'
        """
        if not isinstance(d, dict):
            raise ShiftlensError(
                f"a prompt record must be a JSON object, got {type(d).__name__} {_short(d)}"
            )
        rid = d.get("id")
        if rid is None:
            rid = ""
        elif _is_int(rid):
            rid = str(rid)
        elif not isinstance(rid, str):
            raise ShiftlensError(
                f"field 'id' must be a string or an integer, got {type(rid).__name__} {_short(rid)}"
            )
        where = f"prompt record {rid!r}" if rid else "prompt record"
        if "text" not in d:
            raise ShiftlensError(f"{where} has no 'text'")
        meta = d.get("meta")
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise ShiftlensError(
                f"{where}: field 'meta' must be an object, got {type(meta).__name__} {_short(meta)}"
            )
        meta = dict(meta)
        for k in sorted(set(d) - set(_KEYS), key=str):  # keep unknown keys instead of dropping them
            if k in meta:
                raise ShiftlensError(
                    f"{where}: key {k!r} is both a top-level key and a key of 'meta'; keep one"
                )
            meta[k] = d[k]
        for key, optional in (("text", False), ("reference", True), ("category", True)):
            try:
                _check_str(d.get(key), f"field {key!r}", optional=optional)
            except ShiftlensError as e:
                raise ShiftlensError(f"{where}: {e}") from None
        spans = {}
        for key in ("instruction", "context"):
            try:
                spans[key] = _norm_spans(d.get(key), f"field {key!r}")
            except ShiftlensError as e:
                raise ShiftlensError(f"{where}: {e}") from None
        return cls(
            text=d["text"],
            instruction=spans["instruction"],
            context=spans["context"],
            reference=d.get("reference"),
            id=rid,
            category=d.get("category"),
            meta=meta,
        )

    @classmethod
    def from_messages(
        cls,
        messages: Sequence[dict[str, Any]],
        *,
        turn: int = -1,
        tokenizer: Any = None,
        system: str | None = None,
        id: str = "",
        category: str | None = None,
    ) -> InstructionPrompt:
        """Build a prompt from a chat conversation (OpenAI ``role``/``content`` or ShareGPT
        ``from``/``value`` messages).

        The analysed user turn is the instruction, everything before it (system message,
        earlier turns) is template, and the assistant message that follows it is the reference.
        Without a tokenizer the conversation is written as a plain transcript
        (``"User: ...\\nAssistant: ..."``, see docs/prompts.md); with one, in its chat template.

        Args:
            messages: The conversation.
            turn: Which user turn is analysed (0 = first, -1 = last).
            tokenizer: Render with this tokenizer's chat template.
            system: System message used when the conversation has none.
            id: Prompt id.
            category: Task category.

        Raises:
            ShiftlensError: a malformed message, no user turn, ``turn`` out of range.

        Example:
            >>> p = InstructionPrompt.from_messages(
            ...     [{"role": "user", "content": "Name a colour."},
            ...      {"role": "assistant", "content": "Blue."}], id="c-1")
            >>> p.text, p.reference
            ('User: Name a colour.\\nAssistant:\\n', 'Blue.')
            >>> p.text[slice(*p.char_spans()["instruction"][0])]
            'Name a colour.'
        """
        from shiftlens.formats import _conversation_prompts

        if isinstance(turn, bool) or not isinstance(turn, int):
            raise ShiftlensError(f"turn must be an integer, got {_short(turn)}")
        return _conversation_prompts(
            messages, turn=turn, tokenizer=tokenizer, system=system, id=id,
            category=category, meta={}, template=None,
        )[0]


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


def load_prompts(
    source: Any,
    format: str = "auto",
    *,
    on_error: str = "raise",
    template: Any = None,
    tokenizer: Any = None,
    system: str | None = None,
    turn: int | str = -1,
    split: str | None = None,
    roles: dict[str, str] | None = None,
    **mapping: str,
) -> list[InstructionPrompt]:
    """Load prompts from a file, directory, dataset or list of records, in any known format.

    ``format`` is one of :data:`shiftlens.formats.FORMATS` or ``"auto"`` (the default, which
    reads the file extension, the header or the first record's keys and records what it found
    in ``.report.detected``):

    * ``"jsonl"`` -- the native schema (one object per line: ``text`` and its spans; below);
    * ``"alpaca"`` -- ``instruction`` / ``input`` / ``output`` records (JSON list or JSONL);
    * ``"messages"`` / ``"sharegpt"`` -- chat conversations (``role``/``content`` or
      ``from``/``value``); the analysed user turn is the instruction;
    * ``"hf"`` -- a ``datasets.Dataset`` (or ``DatasetDict`` with ``split``), a
      ``save_to_disk`` directory, or a ``.parquet`` / ``.arrow`` file;
    * ``"csv"`` / ``"tsv"`` -- a header row and one record per row;
    * ``"wu2024"`` -- ``FinalDataset.tsv`` of Wu et al. (2024).

    Spans come from each format's structure (docs/prompts.md has the rules and the rendering
    templates). A bad record raises :class:`ShiftlensError` naming the file, line or row and the
    field; with ``on_error="skip"`` it is left out instead, listed in ``.report.skipped`` with
    its reason, and one :class:`ShiftlensWarning` sums the skips up.

    Args:
        source: A path (file or directory), a ``datasets`` dataset, or a list of dict records.
        format: A format name or ``"auto"``.
        on_error: ``"raise"`` (default) or ``"skip"``.
        template: Rendering of instruction/context records (alpaca, csv, tsv, hf columns) and
            conversations: ``"plain"`` (default; :data:`shiftlens.formats.PLAIN_TEMPLATE`),
            ``"chat"`` (the tokenizer's chat template; the default when ``tokenizer`` is
            given), or your own ``str.format`` string with ``{instruction}`` and ``{context}``
            (or a pair: with context, without context).
        tokenizer: A Hugging Face tokenizer, for ``template="chat"``.
        system: System message for chat rendering (conversations: where the record has none).
        turn: Conversations: the analysed user turn (0 first, -1 last) or ``"all"`` (one
            prompt per user turn, ids ``<id>.turn<k>``).
        split: The split of a ``DatasetDict``.
        roles: Conversations: extra role names, e.g. ``{"observation": "user"}``.
        **mapping: Field or column names: ``instruction``, ``context``, ``reference``, ``id``,
            ``category`` (records with separate fields), ``messages`` / ``conversations``
            (the key holding a conversation), e.g. ``instruction="question"``.

    Returns:
        A :class:`shiftlens.formats.PromptList`: a list of :class:`InstructionPrompt` with a
        ``.report`` (:class:`shiftlens.formats.LoadReport`: format, how it was detected,
        counts, skipped records, notes).

    Raises:
        ShiftlensError: a missing or unreadable source, an unknown format, a bad record (with
            ``on_error="raise"``), duplicate ids.

    Example:
        >>> import json, tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "alpaca.json"
        >>> _ = f.write_text(json.dumps([{"instruction": "Sort the words.", "input": "b a",
        ...                               "output": "a b"}]))
        >>> ps = load_prompts(f)
        >>> ps.report.format, ps[0].text
        ('alpaca', 'Instruction: Sort the words.\\nInput: b a\\nResponse:\\n')
        >>> ps[0].char_spans()
        {'instruction': [(13, 28)], 'context': [(36, 39)]}
    """
    from shiftlens.formats import _load

    return _load(
        source, format, on_error=on_error, template=template, tokenizer=tokenizer,
        system=system, turn=turn, split=split, roles=roles, mapping=mapping,
    )


def save_prompts(prompts: Iterable[InstructionPrompt], path: str | Path) -> Path:
    """Write prompts as native JSONL (UTF-8, one record per line), atomically; returns the path.

    Every prompt is serialised and checked before anything is written (an
    :class:`InstructionPrompt`, JSON-serialisable ``meta`` without NaN, unique non-empty ids),
    then the file is replaced in one step (:func:`shiftlens.io.atomic_write_text`): a failure
    leaves an existing file untouched.

    Raises:
        ShiftlensError: an item is not a prompt, its ``meta`` cannot be written as JSON, two
            prompts share an id, or ``path`` is a directory.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "p.jsonl"
        >>> save_prompts([InstructionPrompt("Sort: b a", instruction=["Sort:"], id="s")], out).name
        'p.jsonl'
        >>> load_prompts(out)[0].id
        's'
    """
    from shiftlens.io import atomic_write_text

    path = Path(path)
    if path.is_dir():
        raise ShiftlensError(f"cannot save prompts to {str(path)!r}: it is a directory")
    if isinstance(prompts, (str, bytes, InstructionPrompt)) or not isinstance(prompts, Iterable):
        raise ShiftlensError(
            f"save_prompts needs an iterable of InstructionPrompt, got {type(prompts).__name__}"
        )
    lines, seen = [], {}
    for k, p in enumerate(prompts):
        if not isinstance(p, InstructionPrompt):
            raise ShiftlensError(
                f"item {k} is a {type(p).__name__}, not an InstructionPrompt; nothing was written"
            )
        if p.id:
            if p.id in seen:
                raise ShiftlensError(
                    f"items {seen[p.id]} and {k} share the id {p.id!r} (load_prompts would "
                    "refuse the file); nothing was written"
                )
            seen[p.id] = k
        try:
            line = json.dumps(p.to_dict(), ensure_ascii=False, allow_nan=False)
            line.encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as e:
            raise ShiftlensError(
                f"prompt {p.label} (item {k}): cannot be written as JSON ({type(e).__name__}: "
                f"{e}); check its meta; nothing was written"
            ) from None
        lines.append(line + "\n")
    return atomic_write_text(path, "".join(lines))


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
