"""The release files of Wu et al. (2024), "From Language Modeling to Instruction Following".

The paper's repository publishes its prompt set as tab-separated files (GPL-3.0: shiftlens ships
none of them; these readers only parse files you have):

* ``FinalDataset.tsv`` -- columns ``ID, Prompt, Response, Instruct&Context``; read it with
  ``shiftlens.load_prompts(path)`` (``format="wu2024"``, detected from the header);
* ``AnnotatedDataset.tsv`` -- columns ``File, Model, Prompt, Reference, Instruct, Response,
  Rating``: each model's response with a human rating; read one model's with
  :func:`load_wu2024_ratings`.

Format: one record per line, no quoting; a newline inside a field is written ``/n`` and a tab
``/t`` (both are decoded everywhere, as the paper's code does). The annotation column lists
instruction spans separated by ``|||``, then optionally ``&&&`` and the context spans (also
``|||``-separated). Spans are located in the decoded prompt: a span that is not there is an
error; one that occurs more than once is taken at its first occurrence (the paper's rule) and
noted; a context span that overlaps an instruction span is cut around it (the overlap counts as
instruction) and noted. Notes land in the load report and in the prompt's
``meta["load_notes"]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from shiftlens.errors import ShiftlensError
from shiftlens.formats import LoadReport, PromptList, _Opts, _read_text, _Rec, _warn_skipped
from shiftlens.prompts import InstructionPrompt, _is_int, _short

__all__ = ["WU2024_COLUMNS", "WU2024_RATING_COLUMNS", "Wu2024Ratings", "load_wu2024_ratings"]

#: Header of ``FinalDataset.tsv``.
WU2024_COLUMNS: tuple[str, ...] = ("ID", "Prompt", "Response", "Instruct&Context")
#: Header of ``AnnotatedDataset.tsv``.
WU2024_RATING_COLUMNS: tuple[str, ...] = (
    "File", "Model", "Prompt", "Reference", "Instruct", "Response", "Rating")


def _wu_unescape(s: str) -> str:
    return s.replace("/n", "\n").replace("/t", "\t")


def _wu_rows(text: str, label: str, header: tuple[str, ...]) -> list[_Rec]:
    lines = text.split("\n")
    if lines[0].rstrip("\r") != "\t".join(header):
        raise ShiftlensError(f"{label}:1: expected the header {', '.join(header)} (tab-separated)"
                             f", found {_short(lines[0], 80)}")
    recs = []
    for i, line in enumerate(lines[1:], 2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            recs.append(_Rec(f"{label}:{i}", error=(
                f"{len(cells)} tab-separated fields, expected {len(header)} ({', '.join(header)})"
                "; a tab inside a field is written /t")))
        else:
            recs.append(_Rec(f"{label}:{i}", data=dict(zip(header, cells)), n=i))
    return recs


def _wu_spans(prompt: str, annotation: str, fieldname: str, notes: list[str]
              ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    ins_raw, sep, ctx_raw = annotation.partition("&&&")
    if "&&&" in ctx_raw:
        raise ShiftlensError(f"field {fieldname!r} holds '&&&' more than once")

    def locate(raw: str, what: str) -> list[tuple[int, int]]:
        out = []
        for piece in raw.split("|||"):
            piece = _wu_unescape(piece)
            if not piece.strip():
                continue
            at = prompt.find(piece)
            if at < 0:
                raise ShiftlensError(f"field {fieldname!r}: {what} span {_short(piece, 60)} is "
                                     "not in the prompt")
            if prompt.find(piece, at + 1) >= 0:
                notes.append(f"{what} span {_short(piece)} occurs more than once in the prompt; "
                             "its first occurrence is used")
            out.append((at, at + len(piece)))
        return out

    ins = locate(ins_raw, "instruction")
    ctx_in = locate(ctx_raw, "context") if sep else []
    if not ins:
        notes.append("no instruction span is annotated")
    ctx = []
    for s, e in ctx_in:
        pieces = [(s, e)]
        for a, b in ins:
            pieces = [q for x, y in pieces for q in ((x, min(y, a)), (max(x, b), y)) if q[0] < q[1]]
        pieces = [q for q in pieces if prompt[q[0]:q[1]].strip()]
        if pieces != [(s, e)]:
            notes.append(f"context span {_short(prompt[s:e])} overlaps the instruction; the "
                         "overlap counts as instruction")
        ctx.extend(pieces)
    return ins, ctx


def _wu_prompt(rec: _Rec, pid: str, prompt_col: str, annot_col: str, ref_col: str,
               notes: list[str], meta: dict[str, Any]) -> InstructionPrompt:
    d = rec.data
    if not pid.strip():
        raise ShiftlensError("the id field is empty")
    text = _wu_unescape(d[prompt_col])
    if not text.strip():
        raise ShiftlensError(f"field {prompt_col!r} is empty")
    local: list[str] = []
    ins, ctx = _wu_spans(text, d[annot_col], annot_col, local)
    reference = _wu_unescape(d[ref_col])
    if not reference.strip():
        local.append(f"field {ref_col!r} is empty; no reference")
        reference = None
    notes.extend(local)
    if local:
        meta = {**meta, "load_notes": local}
    return InstructionPrompt(text, instruction=ins, context=ctx, reference=reference, id=pid,
                             category=re.sub(r"_\d+$", "", pid), meta=meta)


def _wu_record(rec: _Rec, opts: _Opts, notes: list[str]) -> list[InstructionPrompt]:
    return [_wu_prompt(rec, rec.data["ID"].strip(), "Prompt", "Instruct&Context", "Response",
                       notes, {})]


@dataclass(frozen=True)
class Wu2024Ratings:
    """One model's rated responses from the Wu et al. (2024) release (AnnotatedDataset.tsv).

    Attributes:
        model: The model name as the file writes it (e.g. ``"vicuna_7B"``).
        prompts: The prompts (file order), spans from the file's ``Instruct`` column, the gold
            ``Reference`` as reference; ``.report`` says what was adjusted.
        responses: The model's rated response per prompt (aligned with ``prompts``).
        ratings: Prompt id -> rating (1 to 4) of every rated response.
        unrated: Ids whose response has no rating (the file writes -1).
        followed_min: Ratings from this value up count as followed.

    Example:
        >>> r = load_wu2024_ratings("AnnotatedDataset.tsv", "vicuna_7B")  # doctest: +SKIP
        >>> res = instruction_sensitivity(pair, r.prompts, response=list(r.responses))  # doctest: +SKIP
        >>> followed_comparison(res, r.followed).summary()  # doctest: +SKIP
    """

    model: str
    prompts: PromptList
    responses: tuple[str, ...]
    ratings: dict[str, int]
    unrated: tuple[str, ...]
    followed_min: int = 2

    @property
    def followed(self) -> dict[str, bool]:
        """Prompt id -> followed (rating >= ``followed_min``), for every rated response.

        Example:
            >>> Wu2024Ratings("m", PromptList(), (), {"a": 4, "b": 1}, ()).followed
            {'a': True, 'b': False}
        """
        return {k: v >= self.followed_min for k, v in self.ratings.items()}

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt: ``id, category, rating (NaN when unrated), followed, response``.

        Example:
            >>> Wu2024Ratings("m", PromptList(), (), {}, ()).to_frame().columns.tolist()
            ['id', 'category', 'rating', 'followed', 'response']
        """
        rows = [{"id": p.id, "category": p.category, "rating": self.ratings.get(p.id),
                 "followed": (self.ratings[p.id] >= self.followed_min
                              if p.id in self.ratings else None), "response": r}
                for p, r in zip(self.prompts, self.responses)]
        return pd.DataFrame(rows, columns=["id", "category", "rating", "followed", "response"])


def load_wu2024_ratings(path: str | Path, model: str, *, followed_min: int = 2,
                        on_error: str = "raise") -> Wu2024Ratings:
    """Load one model's rated responses of Wu et al. (2024), with followed/unfollowed labels.

    Reads ``AnnotatedDataset.tsv`` of the paper's release (columns File, Model, Prompt,
    Reference, Instruct, Response, Rating; ``/n`` and ``/t`` escapes; spans as in
    ``FinalDataset.tsv``). A rating of 1 to 4 is a rated response; -1 (or any value <= 0)
    means unrated. The paper's analysis counts ratings >= 2 as "followed" and 1 as not.

    Args:
        path: The ratings file.
        model: The ``Model`` column value (case-insensitive), e.g. ``"vicuna_7B"``.
        followed_min: Ratings from this value up count as followed.
        on_error: ``"raise"`` or ``"skip"`` (as :func:`shiftlens.load_prompts`).

    Returns:
        The :class:`Wu2024Ratings`.

    Raises:
        ShiftlensError: a bad header or row (naming the line and field), an unknown model,
            duplicate ids for the model.

    Example:
        >>> r = load_wu2024_ratings("AnnotatedDataset.tsv", "vicuna_7B")  # doctest: +SKIP
        >>> sum(r.followed.values()), len(r.unrated)  # doctest: +SKIP
    """
    if on_error not in ("raise", "skip"):
        raise ShiftlensError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not _is_int(followed_min):
        raise ShiftlensError(f"followed_min must be an integer, got {_short(followed_min)}")
    path = Path(path)
    if not path.exists():
        raise ShiftlensError(f"ratings file {str(path)!r} does not exist")
    recs = _wu_rows(_read_text(path), str(path), WU2024_RATING_COLUMNS)
    models = sorted({r.data["Model"] for r in recs if r.error is None})
    chosen = [m for m in models if m == model] or [m for m in models if m.lower() == str(
        model).lower()]
    if len(chosen) != 1:
        raise ShiftlensError(f"{path}: no ratings for model {model!r}; the file has {models}")
    name = chosen[0]
    report = LoadReport(str(path), "wu2024", f"ratings of {name}", "as given")
    prompts, responses, ratings, unrated, seen = [], [], {}, [], {}
    for rec in recs:
        if rec.error is None and rec.data["Model"] != name:
            continue
        report.n_records += 1
        notes: list[str] = []
        try:
            if rec.error is not None:
                raise ShiftlensError(rec.error)
            d = rec.data
            pid = d["File"].strip()
            pid = pid[:-4] if pid.endswith(".pkl") else pid
            try:
                value = float(d["Rating"])
                if value != int(value):
                    raise ValueError
            except (ValueError, OverflowError):
                raise ShiftlensError(f"field 'Rating' must be an integer, got "
                                     f"{_short(d['Rating'])}") from None
            p = _wu_prompt(rec, pid, "Prompt", "Instruct", "Reference", notes, {"model": name})
            if pid in seen:
                raise ShiftlensError(f"duplicate prompt id {pid!r} for {name} (first at "
                                     f"{seen[pid]})")
        except ShiftlensError as e:
            if on_error == "raise":
                raise ShiftlensError(f"{rec.where}: {e}") from None
            report.skipped.append((rec.where, str(e)))
            continue
        seen[pid] = rec.where
        prompts.append(p)
        responses.append(_wu_unescape(d["Response"]))
        if int(value) > 0:
            ratings[pid] = int(value)
        else:
            unrated.append(pid)
        report.notes.extend(f"{rec.where}: {n}" for n in notes)
    report.n_prompts = len(prompts)
    _warn_skipped(report)
    return Wu2024Ratings(name, PromptList(prompts, report), tuple(responses), ratings,
                         tuple(unrated), followed_min)
