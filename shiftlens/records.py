"""Reading the records of a prompt source: JSON/JSONL, CSV/TSV, Hugging Face datasets, Arrow.

The containers of :mod:`shiftlens.formats`: each reader turns a file (or an in-memory object)
into a list of records, each with where it came from (``"file.jsonl:12"``, ``"dataset row 5"``)
so that an error can name it. JSON is read strictly: duplicate keys, NaN and infinities are
refused. Private to :mod:`shiftlens.formats` (no public names).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shiftlens.errors import ShiftlensError

__all__: list[str] = []

@dataclass
class _Rec:
    where: str  # "file.jsonl:12", "file.json:3 (item 2)", "dataset row 5", "record 0"
    data: Any = None
    error: str | None = None  # the container could not read this record
    n: int = 0  # the number in generated ids: the same one ``where`` shows


class _BadJSON(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise _BadJSON(f"duplicate key {k!r} in one object")
        d[k] = v
    return d


def _constant(name: str) -> Any:
    raise _BadJSON(f"{name} is not valid JSON")


def _finite(s: str) -> float:
    v = float(s)
    if v in (float("inf"), float("-inf")):
        raise _BadJSON(f"the number {s} is too large for a float")
    return v


_STRICT = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant,
                           parse_float=_finite)
_PLAIN = json.JSONDecoder()


def _decode_one(text: str, start: int = 0) -> tuple[Any, int]:
    try:
        return _STRICT.raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise _BadJSON(f"not valid JSON ({e.msg}, column {e.colno})") from None
    except RecursionError:
        raise _BadJSON("not valid JSON (nested too deeply)") from None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ShiftlensError(f"prompt source {str(path)!r} is a directory, not a file") from None
    except OSError as e:
        raise ShiftlensError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ShiftlensError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at byte offset "
            f"{e.start}); save the file as UTF-8"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _json_records(text: str, label: str) -> list[_Rec]:
    """JSON list (one record per item), one JSON object, or JSONL (one record per line)."""
    if not text.strip():
        return []
    try:
        whole = _PLAIN.decode(text)
        failure = None
    except json.JSONDecodeError as e:
        whole, failure = None, e
    except RecursionError:
        raise ShiftlensError(f"{label}: not valid JSON (nested too deeply)") from None
    if failure is None:
        if isinstance(whole, list) and whole and all(
            isinstance(m, dict) and ("role" in m or "from" in m) and not set(m) & {
                "messages", "conversations", "instruction", "text"} for m in whole):
            return [_Rec(f"{label}:1", data=whole, n=1)]  # one bare conversation
        if not isinstance(whole, list):
            try:
                return [_Rec(f"{label}:1", data=_decode_one(text.strip())[0], n=1)]
            except _BadJSON as e:
                return [_Rec(f"{label}:1", error=str(e))]
        return _json_items(text, label)
    first = next(ln for ln in text.split("\n") if ln.strip()).rstrip("\r \t")
    try:
        _PLAIN.decode(first)
        jsonl = True
    except json.JSONDecodeError as e:  # a first line cut short opens a multi-line document
        jsonl = failure.msg.startswith("Extra data") or e.pos < len(first)
    except RecursionError:
        jsonl = True
    if not jsonl and "\n" in text.strip():  # a multi-line document broken inside
        raise ShiftlensError(
            f"{label}:{failure.lineno}: not valid JSON ({failure.msg}, column {failure.colno})")
    recs = []
    for i, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj, end = _decode_one(line, len(line) - len(line.lstrip(" \t")))
            if line[end:].strip():
                raise _BadJSON(f"not valid JSON (extra data, column {end + 1})")
            recs.append(_Rec(f"{label}:{i}", data=obj, n=i))
        except _BadJSON as e:
            recs.append(_Rec(f"{label}:{i}", error=str(e)))
    return recs


def _json_items(text: str, label: str) -> list[_Rec]:
    """The items of a valid JSON list, each with its line (errors per item: duplicate keys)."""
    ws = " \t\n\r"
    i, k, recs = text.index("[") + 1, 0, []
    line, counted = 1, 0
    while True:
        while text[i] in ws:
            i += 1
        if text[i] == "]":
            return recs
        line, counted = line + text.count("\n", counted, i), i
        where = f"{label}:{line} (item {k})"
        try:
            obj, end = _decode_one(text, i)
            recs.append(_Rec(where, data=obj, n=k))
        except _BadJSON as e:
            recs.append(_Rec(where, error=str(e)))
            end = _PLAIN.raw_decode(text, i)[1]
        i, k = end, k + 1
        while text[i] in ws:
            i += 1
        if text[i] == ",":
            i += 1


def _csv_records(text: str, label: str, delimiter: str) -> list[_Rec]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as e:
        raise ShiftlensError(f"{label}:1: malformed {kind} header ({e})") from None
    seen = set()
    for name in header:
        if not name.strip() or name in seen:
            raise ShiftlensError(f"{label}:1: {'an empty' if not name.strip() else 'a duplicate'}"
                                 f" column name {name!r} in the header")
        seen.add(name)
    recs = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return recs
        except csv.Error as e:
            recs.append(_Rec(f"{label}:{start}", error=(
                f"malformed {kind} ({e}); a field that starts with a quote must be a quoted "
                "field (its inner quotes doubled)")))
            continue
        if not row or (len(row) == 1 and not row[0].strip() and len(header) > 1):
            continue  # a blank line
        if len(row) != len(header):
            recs.append(_Rec(f"{label}:{start}", error=(
                f"{len(row)} fields, the header has {len(header)} ({', '.join(header)})")))
            continue
        recs.append(_Rec(f"{label}:{start}", data=dict(zip(header, row)), n=start))


def _hf_records(obj: Any, split: str | None, label: str) -> tuple[list[_Rec], str]:
    if isinstance(obj, dict) or type(obj).__name__.endswith("DatasetDict"):
        splits = list(obj.keys())
        if split is None:
            if len(splits) != 1:
                raise ShiftlensError(f"{label} has the splits {splits}; choose one with split=")
            split = splits[0]
        if split not in splits:
            raise ShiftlensError(f"{label} has no split {split!r}; it has {splits}")
        obj, label = obj[split], f"{label}[{split}]"
    elif split is not None:
        raise ShiftlensError(f"split={split!r} applies to a DatasetDict; {label} has no splits")
    recs = [_Rec(f"{label} row {i}", data=row, n=i) for i, row in enumerate(obj)]
    return recs, label


def _arrow_records(path: Path) -> list[_Rec]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            table = pq.read_table(path)
        else:
            with pa.memory_map(str(path)) as f:
                try:
                    table = pa.ipc.open_stream(f).read_all()
                except pa.ArrowInvalid:
                    table = pa.ipc.open_file(f).read_all()
    except (OSError, pa.ArrowException) as e:
        raise ShiftlensError(f"cannot read {str(path)!r} as {path.suffix[1:]}: {e}") from None
    return [_Rec(f"{path} row {i}", data=row, n=i) for i, row in enumerate(table.to_pylist())]
