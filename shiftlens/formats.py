"""Prompt sources researchers already have, read into :class:`InstructionPrompt` lists.

:func:`shiftlens.load_prompts` is the entry point. A source is a *container* (JSON list or JSONL,
CSV/TSV, a ``datasets`` dataset or file, a list of dicts) of records of one *shape*: native
(``text`` + spans), instruction/context fields (rendered from a template: spans known by
construction), conversations (the analysed user turn is the instruction) or the Wu et al. (2024)
release (:mod:`shiftlens.wu2024`). A bad record raises :class:`~shiftlens.ShiftlensError` naming
the file, line (or row) and field, or with ``on_error="skip"`` is listed in the returned
:class:`PromptList`'s ``.report``; unused fields are kept in ``meta``. Rules: docs/prompts.md.
"""

from __future__ import annotations

import logging
import string
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.prompts import InstructionPrompt, _check_str, _is_int, _render_chat, _short
from shiftlens.records import (
    _arrow_records,
    _csv_records,
    _hf_records,
    _json_records,
    _read_text,
    _Rec,
)

__all__ = [
    "FORMATS",
    "FORMAT_CHOICES",
    "PLAIN_TEMPLATE",
    "TRANSCRIPT_LABELS",
    "LoadReport",
    "PromptList",
    "detect_format",
]

log = logging.getLogger("shiftlens.formats")

#: Every source format :func:`shiftlens.load_prompts` reads (``format=`` values besides "auto").
FORMATS: tuple[str, ...] = ("jsonl", "alpaca", "messages", "sharegpt", "hf", "csv", "tsv", "wu2024")
#: The values ``format=`` accepts, for a command-line ``choices=``.
FORMAT_CHOICES: tuple[str, ...] = ("auto", *FORMATS)

#: Default rendering of instruction/context records: (with a context, without one).
PLAIN_TEMPLATE: tuple[str, str] = (
    "Instruction: {instruction}\nInput: {context}\nResponse:\n",
    "Instruction: {instruction}\nResponse:\n",
)
#: Role labels of the plain conversation transcript: one ``"<label><content>\n"`` line per
#: message before the analysed turn, then ``"User: <turn>\n"`` and ``"Assistant:\n"``.
TRANSCRIPT_LABELS: dict[str, str] = {"system": "System: ", "user": "User: ",
                                     "assistant": "Assistant: "}

_ROLE_NAMES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
               "gpt": "assistant", "model": "assistant", "bot": "assistant",
               "chatgpt": "assistant"}
_FIELDS = {"instruction": ("instruction",), "context": ("input", "context"),
           "reference": ("output", "reference", "response"), "id": ("id",),
           "category": ("category",)}
_CONV_KEYS = ("messages", "conversations")
_MAP_KEYS = set(_FIELDS) | set(_CONV_KEYS)
_SHAPE_MAP = {"jsonl": set(), "wu2024": set(), "alpaca": set(_FIELDS),
              "messages": {"messages", "conversations", "id", "category"},
              "sharegpt": {"messages", "conversations", "id", "category"}}
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


# ============================================================================ results
@dataclass
class LoadReport:
    """How a prompt source was read: what was found, what was left out and why.

    Attributes:
        source: The file, directory or object that was read.
        format: The format used (one of :data:`FORMATS`).
        detected: How it was chosen: ``"given"``, or the evidence ``format="auto"`` found.
        rendering: How prompt texts were written (``"as given"``, ``"plain template"``,
            ``"custom template"``, ``"chat template of <tokenizer>"``).
        n_records: Records read (lines, rows, items).
        skipped: ``(location, reason)`` of every record left out (``on_error="skip"``).
        notes: ``"location: note"`` for every adjustment a record needed (an ambiguous span
            resolved to its first occurrence, an empty reference read as none, ...).

    Example:
        >>> r = LoadReport("p.jsonl", "jsonl", "given", "as given", n_records=2)
        >>> print(r)
        p.jsonl: format jsonl (given), 0 prompts from 2 records, rendering: as given
    """

    source: str
    format: str
    detected: str
    rendering: str
    n_records: int = 0
    n_prompts: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.source}: format {self.format} ({self.detected}), {self.n_prompts} "
                 f"prompts from {self.n_records} records, rendering: {self.rendering}"]
        lines += [f"  skipped {where}: {why}" for where, why in self.skipped]
        lines += [f"  note {n}" for n in self.notes]
        return "\n".join(lines)


class PromptList(list):
    """A list of :class:`InstructionPrompt` that also carries the :class:`LoadReport`.

    It is a plain ``list`` in every other way (slices are plain lists).

    Example:
        >>> ps = PromptList([InstructionPrompt("Sort: b a", id="s")],
        ...                 LoadReport("memory", "jsonl", "given", "as given", 1, 1))
        >>> len(ps), ps.report.format
        (1, 'jsonl')
    """

    def __init__(self, prompts: Iterable[InstructionPrompt] = (),
                 report: LoadReport | None = None) -> None:
        super().__init__(prompts)
        self.report = report


# ============================================================================ detection
@dataclass
class _Source:
    format: str
    shape: str
    detected: str
    label: str
    stem: str
    records: list[_Rec]


def _shape_of(rec: Any, mapping: Mapping[str, str]) -> str | None:
    if isinstance(rec, list):
        return "messages"
    if not isinstance(rec, dict):
        return None
    for key, shape in (("messages", "messages"), ("conversations", "sharegpt")):
        if key in mapping:
            return shape
    if "text" in rec and not set(mapping) & set(_FIELDS):
        return "jsonl"
    if "messages" in rec:
        return "messages"
    if "conversations" in rec:
        return "sharegpt"
    if mapping.get("instruction", "instruction") in rec:
        return "alpaca"
    return None


def _detect_shape(recs: list[_Rec], mapping: Mapping[str, str], label: str) -> tuple[str, str]:
    """The shape of the first record that is an object or a list, and the evidence."""
    for r in recs:
        if r.error is None and isinstance(r.data, (dict, list)):
            shape = _shape_of(r.data, mapping)
            if shape is None:
                keys = sorted(r.data) if isinstance(r.data, dict) else type(r.data).__name__
                earlier = next((q for q in recs if q.error), None)
                if earlier is not None and recs.index(earlier) < recs.index(r):
                    raise ShiftlensError(f"{earlier.where}: {earlier.error}")
                raise ShiftlensError(
                    f"{r.where}: cannot tell the format: the record has {keys}; expected 'text' "
                    "(jsonl), 'instruction' (alpaca; or map yours: instruction='question'), "
                    "'messages' or 'conversations'; or pass format=")
            what = ("a list of messages" if isinstance(r.data, list)
                    else "keys " + ", ".join(sorted(map(str, r.data))[:8]))
            return shape, f"{r.where} has {what}"
    if recs:
        why = recs[0].error or "cannot tell the format: no record is an object or a list"
        raise ShiftlensError(f"{recs[0].where}: {why}")
    return "jsonl", f"{label} holds no records"


def _open(source: Any, fmt: str, mapping: Mapping[str, str], split: str | None) -> _Source:
    mod = type(source).__module__ or ""
    if mod.split(".")[0] == "datasets":
        if fmt not in ("auto", "hf"):
            raise ShiftlensError(f"a datasets object is read with format='hf', not {fmt!r}")
        recs, label = _hf_records(source, split, "dataset")
        shape, why = _detect_shape(recs, mapping, label)
        return _Source("hf", shape, f"{type(source).__name__} object; {why} -> {shape} records",
                       label, "row", recs)
    if isinstance(source, (list, tuple)):
        if split is not None:
            raise ShiftlensError("split= applies to a datasets DatasetDict")
        recs = [_Rec(f"record {i}", data=r, n=i) for i, r in enumerate(source)]
        if fmt == "auto":
            shape, why = _detect_shape(recs, mapping, "the list")
            return _Source(shape, shape, why, "records", "record", recs)
        if fmt not in ("jsonl", "alpaca", "messages", "sharegpt"):
            raise ShiftlensError(f"a list of records is read as jsonl, alpaca, messages or "
                                 f"sharegpt, not {fmt!r}")
        return _Source(fmt, fmt, "given", "records", "record", recs)
    if not isinstance(source, (str, Path)):
        raise ShiftlensError(f"cannot read prompts from a {type(source).__name__}; give a path, "
                             "a datasets object or a list of records")
    path = Path(source)
    if not path.exists():
        raise ShiftlensError(f"prompt file {str(path)!r} does not exist")
    if path.is_dir():
        if fmt not in ("auto", "hf") or not any((path / m).exists() for m in _HF_MARKERS):
            raise ShiftlensError(f"prompt source {str(path)!r} is a directory, not a file (nor a "
                                 "datasets save_to_disk directory)")
        import datasets

        try:
            obj = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises many kinds here
            raise ShiftlensError(f"cannot load the datasets directory {str(path)!r}: "
                                 f"{type(e).__name__}: {e}") from None
        recs, label = _hf_records(obj, split, str(path))
        shape, why = _detect_shape(recs, mapping, label)
        return _Source("hf", shape, f"a save_to_disk directory; {why} -> {shape} records",
                       label, path.name, recs)
    if split is not None:
        raise ShiftlensError("split= applies to a datasets DatasetDict")
    ext = path.suffix.lower()
    label, stem = str(path), path.stem
    if fmt == "auto":
        fmt = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "hf",
               ".arrow": "hf"}.get(ext, "json")
        why = f"extension {ext}" if fmt != "json" else ""
    else:
        why = "given"
    if fmt == "hf" and ext in (".parquet", ".arrow"):
        recs = _arrow_records(path)
        shape, found = _detect_shape(recs, mapping, label)
        return _Source("hf", shape, f"{why}; {found} -> {shape} records", label, stem, recs)
    from shiftlens import wu2024

    text = _read_text(path)
    if fmt == "hf" and ext in (".csv", ".tsv", ".tab"):
        recs = _csv_records(text, label, "," if ext == ".csv" else "\t")
        return _Source("hf", "alpaca", f"{why}; {ext} rows", label, stem, recs)
    head = text.split("\n", 1)[0].rstrip("\r")
    if fmt in ("tsv", "wu2024", "json") and head == "\t".join(wu2024.WU2024_RATING_COLUMNS):
        raise ShiftlensError(f"{label} is the Wu et al. ratings file (AnnotatedDataset.tsv); read "
                             "it with shiftlens.wu2024.load_wu2024_ratings(path, model)")
    if fmt in ("tsv", "json") and why != "given" and head == "\t".join(wu2024.WU2024_COLUMNS):
        fmt, why = "wu2024", "header ID, Prompt, Response, Instruct&Context"
    if fmt == "wu2024":
        recs = wu2024._wu_rows(text, label, wu2024.WU2024_COLUMNS)
        return _Source("wu2024", "wu2024", why, label, stem, recs)
    if fmt in ("csv", "tsv"):
        recs = _csv_records(text, label, "\t" if fmt == "tsv" else ",")
        return _Source(fmt, "alpaca", why, label, stem, recs)
    try:
        recs = _json_records(text, label)
        if fmt in ("json", "hf"):
            shape, found = _detect_shape(recs, mapping, label)
    except ShiftlensError as e:
        if fmt == "json" and ext not in (".json", ".jsonl", ".ndjson"):
            raise ShiftlensError(f"{e} (format='auto' read {path.name} as JSON; pass format= "
                                 "for another format)") from None
        raise
    if fmt in ("json", "hf"):
        return _Source(shape if fmt == "json" else "hf", shape, found, label, stem, recs)
    return _Source(fmt, fmt, why, label, stem, recs)


def detect_format(source: Any, **mapping: str) -> tuple[str, str]:
    """The format ``format="auto"`` would use for ``source``, and the evidence.

    Args:
        source: As for :func:`shiftlens.load_prompts`.
        **mapping: Field names, as for :func:`shiftlens.load_prompts` (they change what an
            ``instruction`` field is called).

    Returns:
        ``(format, evidence)``, e.g. ``("sharegpt", "data.json:1 (item 0) has keys
        conversations, id")``.

    Example:
        >>> detect_format([{"instruction": "Sort.", "input": "b a", "output": "a b"}])
        ('alpaca', 'record 0 has keys input, instruction, output')
    """
    src = _open(source, "auto", mapping, None)
    return src.format, src.detected


# ============================================================================ record shapes
@dataclass
class _Opts:
    shape: str
    stem: str
    chat: bool = False
    templates: tuple[list[tuple[str, str | None]], list[tuple[str, str | None]]] | None = None
    tokenizer: Any = None
    system: str | None = None
    turn: int | str = -1
    roles: dict[str, str] = field(default_factory=dict)
    mapping: Mapping[str, str] = field(default_factory=dict)
    rendering: str = "as given"


def _parse_template(tpl: Any) -> list[tuple[str, str | None]]:
    """``[(literal, field or None), ...]`` of a ``str.format`` template, checked."""
    if not isinstance(tpl, str):
        raise ShiftlensError(f"a template must be a string, got {_short(tpl)}")
    try:
        parsed = list(string.Formatter().parse(tpl))
    except ValueError as e:
        raise ShiftlensError(f"template {_short(tpl)} is not a str.format string ({e})") from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conv in parsed:
        if name is not None and (spec or conv):
            raise ShiftlensError(f"template {_short(tpl)}: fields take no format spec or "
                                 "conversion")
        parts.append((literal, name))
    names = [n for _, n in parts if n is not None]
    if any(n not in ("instruction", "context") for n in names) or names.count("instruction") != 1 \
            or names.count("context") > 1:
        raise ShiftlensError(f"template {_short(tpl)} must hold {{instruction}} once and "
                             "{context} at most once, and no other field")
    return parts


def _setup(shape: str, fmt: str, stem: str, template: Any, tokenizer: Any, system: Any,
           turn: Any, roles: Any, mapping: Mapping[str, str]) -> _Opts:
    bad = sorted(set(mapping) - _SHAPE_MAP[shape])
    if bad:
        takes = sorted(_SHAPE_MAP[shape]) or "none"
        raise ShiftlensError(f"field mapping {bad} does not apply to {shape} records "
                             f"(format {fmt}); they take {takes}")
    conv = shape in ("messages", "sharegpt")
    if not conv and (turn != -1 or roles):
        raise ShiftlensError("turn= and roles= apply to conversations (messages, sharegpt)")
    if shape in ("jsonl", "wu2024"):
        if template is not None or tokenizer is not None or system is not None:
            raise ShiftlensError(f"{shape} records carry their text as written: template=, "
                                 "tokenizer= and system= do not apply (use "
                                 "InstructionPrompt.with_chat_template afterwards)")
        return _Opts(shape, stem)
    opts = _Opts(shape, stem, tokenizer=tokenizer, mapping=mapping)
    opts.chat = template == "chat" or (template is None and tokenizer is not None)
    if opts.chat and tokenizer is None:
        raise ShiftlensError("template='chat' needs tokenizer=")
    if not opts.chat and tokenizer is not None:
        raise ShiftlensError(f"tokenizer= is only used with template='chat', not {template!r}")
    if system is not None:
        _check_str(system, "system")
        if not opts.chat and not conv:
            raise ShiftlensError("system= needs template='chat' for instruction/context records")
    opts.system = system
    name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    if opts.chat:
        opts.rendering = f"chat template of {name}"
    elif conv:
        if template not in (None, "plain"):
            raise ShiftlensError(f"conversations are rendered with template='plain' or 'chat', "
                                 f"not {_short(template)}")
        opts.rendering = "plain transcript"
    else:
        if template in (None, "plain"):
            pair, opts.rendering = PLAIN_TEMPLATE, "plain template"
        elif isinstance(template, str):
            pair, opts.rendering = (template, template), "custom template"
        elif isinstance(template, (tuple, list)) and len(template) == 2:
            pair, opts.rendering = tuple(template), "custom template"
        else:
            raise ShiftlensError(f"template must be 'plain', 'chat', a str.format string or a "
                                 f"pair of them, got {_short(template)}")
        opts.templates = (_parse_template(pair[0]), _parse_template(pair[1]))
    if conv:
        if not (turn == "all" or _is_int(turn)):
            raise ShiftlensError(f"turn must be an integer or 'all', got {_short(turn)}")
        opts.turn = turn
        if roles is not None:
            if not isinstance(roles, dict) or any(
                    not isinstance(k, str) or v not in ("system", "user", "assistant")
                    for k, v in roles.items()):
                raise ShiftlensError("roles must map role names to 'system', 'user' or "
                                     f"'assistant', got {_short(roles)}")
            opts.roles = {k.lower(): v for k, v in roles.items()}
    return opts


def _text_field(d: dict[str, Any], key: str, opts: _Opts, extras: dict[str, Any]) -> Any:
    """The value of a mapped field (removed from ``extras``), or None when absent."""
    col = opts.mapping.get(key)
    if col is not None and col not in d:
        raise ShiftlensError(f"no field {col!r} (given as {key}={col!r}); the record has "
                             f"{sorted(map(str, d))}")
    col = col if col is not None else next((c for c in _FIELDS.get(key, (key,)) if c in d), None)
    if col is None:
        return None
    extras.pop(col, None)
    value = d[col]
    if key == "id" and _is_int(value):
        return str(value)
    _check_str(value, f"field {col!r}", optional=key != "instruction")
    return value


def _generated_id(value: Any, opts: _Opts, rec: _Rec) -> str:
    return value if value else f"{opts.stem}-{rec.n}"


def _fill(parts: list[tuple[str, str | None]], values: dict[str, str]
          ) -> tuple[str, dict[str, tuple[int, int]]]:
    out, spans, pos = [], {}, 0
    for literal, name in parts:
        out.append(literal)
        pos += len(literal)
        if name is not None:
            spans[name] = (pos, pos + len(values[name]))
            out.append(values[name])
            pos += len(values[name])
    return "".join(out), spans


def _fields_prompt(rec: _Rec, opts: _Opts, notes: list[str]) -> list[InstructionPrompt]:
    d = rec.data
    if not isinstance(d, dict):
        raise ShiftlensError(f"a record must be an object with named fields, got "
                             f"{type(d).__name__} {_short(d)}")
    extras = dict(d)
    instruction = _text_field(d, "instruction", opts, extras)
    if instruction is None:
        raise ShiftlensError(f"no field {opts.mapping.get('instruction', 'instruction')!r}; the "
                             f"record has {sorted(map(str, d))} (map it: instruction='...')")
    context, reference = (_text_field(d, k, opts, extras) for k in ("context", "reference"))
    pid, category = (_text_field(d, k, opts, extras) for k in ("id", "category"))
    instruction, context = instruction.strip(), (context or "").strip()
    if not instruction:
        raise ShiftlensError("the instruction field is empty")
    if reference is not None and not reference.strip():
        notes.append("the reference field is empty; read as no reference")
        reference = None
    pid = _generated_id(pid, opts, rec)
    if opts.chat:
        user = instruction + ("\n\n" + context if context else "")
        msgs = ([{"role": "system", "content": opts.system}] if opts.system else []) + [
            {"role": "user", "content": user}]
        text, at = _render_chat(opts.tokenizer, msgs, len(msgs) - 1, label=repr(pid))
        if "chat_template" in extras:
            raise ShiftlensError("the record's field 'chat_template' clashes with the meta key "
                                 "shiftlens adds for chat rendering; rename it")
        extras["chat_template"] = True
        spans = {"instruction": (at, at + len(instruction))}
        if context:
            spans["context"] = (at + len(instruction) + 2, at + len(user))
    else:
        parts = opts.templates[0 if context else 1]
        if context and not any(n == "context" for _, n in parts):
            raise ShiftlensError("the record has a context but the template has no {context}; "
                                 "it would be lost")
        text, spans = _fill(parts, {"instruction": instruction, "context": context})
        if not context:
            spans.pop("context", None)
    return [InstructionPrompt(text, instruction=[spans["instruction"]],
                              context=[spans["context"]] if "context" in spans else [],
                              reference=reference, id=pid, category=category or None,
                              meta=extras)]


def _norm_messages(messages: Any, roles: Mapping[str, str]
                   ) -> tuple[list[dict[str, str]], dict[str, Any]]:
    if not isinstance(messages, (list, tuple)):
        raise ShiftlensError(f"the conversation must be a list of messages, got "
                             f"{type(messages).__name__} {_short(messages)}")
    if not messages:
        raise ShiftlensError("the conversation is empty")
    out, extras = [], {}
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ShiftlensError(f"message {i} must be an object, got {_short(m)}")
        rk = [k for k in ("role", "from") if k in m]
        ck = [k for k in ("content", "value") if k in m]
        if len(rk) != 1 or len(ck) != 1:
            raise ShiftlensError(f"message {i} needs one of 'role'/'from' and one of "
                                 f"'content'/'value'; it has {sorted(map(str, m))}")
        raw = m[rk[0]]
        _check_str(raw, f"message {i} field {rk[0]!r}")
        role = roles.get(raw.lower()) or _ROLE_NAMES.get(raw.lower())
        if role is None:
            raise ShiftlensError(f"message {i} has the unknown role {raw!r}; known: "
                                 f"{sorted(_ROLE_NAMES)} (map others: roles={{{raw!r}: 'user'}})")
        content = m[ck[0]]
        if isinstance(content, list):
            raise ShiftlensError(f"message {i}: multi-part content is not supported; give the "
                                 "text as one string")
        _check_str(content, f"message {i} field {ck[0]!r}")
        out.append({"role": role, "content": content})
        rest = {k: v for k, v in m.items() if k not in (rk[0], ck[0])}
        if rest:
            extras[str(i)] = rest
    return out, extras


def _conversation_prompts(messages: Any, *, turn: int | str, tokenizer: Any, system: Any,
                          id: str, category: Any, meta: dict[str, Any], template: Any,
                          roles: Mapping[str, str] | None = None,
                          notes: list[str] | None = None) -> list[InstructionPrompt]:
    """Prompts of one conversation (one per analysed user turn)."""
    msgs, extras = _norm_messages(messages, roles or {})
    if system is not None:
        _check_str(system, "system")
    clash = sorted({"turn", "n_user_turns", "message_extras", "chat_template"} & set(meta))
    if clash:
        raise ShiftlensError(f"the record's field(s) {clash} clash with the meta keys shiftlens "
                             "adds for conversations; rename them")
    chat = tokenizer is not None and template != "plain"
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    if not users:
        raise ShiftlensError("the conversation has no user turn")
    chosen = range(len(users)) if turn == "all" else [turn]
    out = []
    for t in chosen:
        if not -len(users) <= t < len(users):
            raise ShiftlensError(f"turn {t} was asked for; the conversation has {len(users)} "
                                 "user turn(s)")
        k = t % len(users)
        i = users[k]
        content = msgs[i]["content"].strip()
        if not content:
            raise ShiftlensError(f"user turn {k} (message {i}) is empty")
        prior = msgs[:i]
        if system and not any(m["role"] == "system" for m in prior):
            prior = [{"role": "system", "content": system}] + prior
        reference = None
        if i + 1 < len(msgs) and msgs[i + 1]["role"] == "assistant":
            reference = msgs[i + 1]["content"]
            if not reference.strip():
                reference = None
                if notes is not None:
                    notes.append(f"the assistant reply to user turn {k} is empty; no reference")
        elif notes is not None:
            notes.append(f"no assistant reply follows user turn {k}; no reference")
        pid = f"{id}.turn{k}" if turn == "all" else id
        if chat:
            text, at = _render_chat(tokenizer, prior + [{"role": "user", "content": content}],
                                    len(prior), label=repr(pid))
        else:
            head = "".join(f"{TRANSCRIPT_LABELS[m['role']]}{m['content']}\n" for m in prior)
            at = len(head) + len(TRANSCRIPT_LABELS["user"])
            text = f"{head}{TRANSCRIPT_LABELS['user']}{content}\nAssistant:\n"
        m = {**meta, "turn": k, "n_user_turns": len(users)}
        if chat:
            m["chat_template"] = True
        if extras:
            m["message_extras"] = extras
        out.append(InstructionPrompt(text, instruction=[(at, at + len(content))],
                                     reference=reference, id=pid, category=category, meta=m))
    return out


def _conversation_record(rec: _Rec, opts: _Opts, notes: list[str]) -> list[InstructionPrompt]:
    d = rec.data
    extras: dict[str, Any] = {}
    if isinstance(d, list):
        messages, pid, category = d, None, None
    elif isinstance(d, dict):
        extras = dict(d)
        key = opts.mapping.get("messages") or opts.mapping.get("conversations")
        if key is None:
            key = next((k for k in _CONV_KEYS if k in d), None)
        if key is None or key not in d:
            raise ShiftlensError(f"no field {key or 'messages'!r} holding the conversation; the "
                                 f"record has {sorted(map(str, d))}")
        messages = extras.pop(key)
        pid, category = (_text_field(d, k, opts, extras) for k in ("id", "category"))
    else:
        raise ShiftlensError(f"a record must be a conversation (an object with 'messages' or "
                             f"'conversations', or a list of messages), got {_short(d)}")
    return _conversation_prompts(
        messages, turn=opts.turn, tokenizer=opts.tokenizer if opts.chat else None,
        system=opts.system, id=_generated_id(pid, opts, rec), category=category or None,
        meta=extras, template="chat" if opts.chat else "plain", roles=opts.roles, notes=notes)


def _native_record(rec: _Rec, opts: _Opts, notes: list[str]) -> list[InstructionPrompt]:
    if not isinstance(rec.data, dict):
        raise ShiftlensError(f"a prompt record must be a JSON object, got "
                             f"{type(rec.data).__name__} {_short(rec.data)}")
    return [InstructionPrompt.from_dict(rec.data)]


# ============================================================================ driver
def _wu_record(rec: _Rec, opts: _Opts, notes: list[str]) -> list[InstructionPrompt]:
    from shiftlens.wu2024 import _wu_record as convert

    return convert(rec, opts, notes)


_CONVERT = {"jsonl": _native_record, "alpaca": _fields_prompt, "messages": _conversation_record,
            "sharegpt": _conversation_record, "wu2024": _wu_record}


def _warn_skipped(report: LoadReport) -> None:
    if report.skipped:
        shown = "; ".join(f"{w}: {why}" for w, why in report.skipped[:10])
        more = f"; and {len(report.skipped) - 10} more" if len(report.skipped) > 10 else ""
        warnings.warn(ShiftlensWarning(
            f"{report.source}: skipped {len(report.skipped)} of {report.n_records} records "
            f"({shown}{more}); all are listed in .report.skipped"), stacklevel=3)


def _load(source: Any, fmt: str, *, on_error: str, template: Any, tokenizer: Any, system: Any,
          turn: Any, split: Any, roles: Any, mapping: dict[str, Any]) -> PromptList:
    if on_error not in ("raise", "skip"):
        raise ShiftlensError(f"on_error must be 'raise' or 'skip', got {_short(on_error)}")
    if fmt not in FORMAT_CHOICES:
        raise ShiftlensError(f"unknown format {_short(fmt)}; choose from {list(FORMAT_CHOICES)}")
    unknown = sorted(set(mapping) - _MAP_KEYS)
    if unknown:
        raise ShiftlensError(f"unknown argument(s) {unknown}: field mappings are "
                             f"{sorted(_MAP_KEYS)}")
    for k, v in mapping.items():
        if not isinstance(v, str) or not v:
            raise ShiftlensError(f"{k}= must name a field (a non-empty string), got {_short(v)}")
    if len(set(mapping.values())) < len(mapping):
        raise ShiftlensError(f"the field mapping {mapping} uses one field twice")
    if split is not None and not isinstance(split, str):
        raise ShiftlensError(f"split must be a string, got {_short(split)}")
    src = _open(source, fmt, mapping, split)
    opts = _setup(src.shape, src.format, src.stem, template, tokenizer, system, turn, roles,
                  mapping)
    report = LoadReport(src.label, src.format, src.detected, opts.rendering)
    log.info("%s: reading as %s (%s)", src.label, src.format, src.detected)
    convert = _CONVERT[src.shape]
    out: list[InstructionPrompt] = []
    seen: dict[str, str] = {}
    for rec in src.records:
        report.n_records += 1
        notes: list[str] = []
        try:
            if rec.error is not None:
                raise ShiftlensError(rec.error)
            prompts = convert(rec, opts, notes)
            for p in prompts:
                if p.id and p.id in seen:
                    raise ShiftlensError(f"duplicate prompt id {p.id!r} (first at {seen[p.id]})")
        except ShiftlensError as e:
            if on_error == "raise":
                raise ShiftlensError(f"{rec.where}: {e}") from None
            report.skipped.append((rec.where, str(e)))
            continue
        for p in prompts:
            if p.id:
                seen[p.id] = rec.where
        out.extend(prompts)
        report.notes.extend(f"{rec.where}: {n}" for n in notes)
    report.n_prompts = len(out)
    _warn_skipped(report)
    return PromptList(out, report)

