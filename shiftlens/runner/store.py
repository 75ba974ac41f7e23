"""The run directory: who made it (``run.json``), the plan, and one file per record.

Layout of a run directory::

    run.json                      identity: lens, parameters, prompts and model fingerprints,
                                  load options, versions (written once, never changed)
    plan.safetensors              the plan and the prompts (written once)
    records/<role>/<index>.safetensors   one record per (prompt, role)
    sessions/<utc>-<host>-<pid>.json     one per executor session: what it computed, how

Every file is written to a temporary name in its directory, ``fsync``-ed and renamed into place,
so a crash leaves a complete file or none. ``run.json`` and the plan are created with a hard
link that fails when the name exists, so concurrent shards agree on one of each.

A record (and the plan) is a safetensors file whose header metadata carries the JSON part of the
value (encoded like a Result's fields: tuples, NaN, prompts, nested dicts survive), the unit it
belongs to, the SHA-256 of the plan it was computed under, and a SHA-256 over its JSON and every
tensor's bytes, checked on every read. No pickle anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "RUN_FORMAT",
    "RECORD_FORMAT",
    "PLAN_FORMAT",
    "RunStore",
    "encode_payload",
    "decode_payload",
    "prompts_fingerprint",
]

#: Format tag of ``run.json``.
RUN_FORMAT = "shiftlens-run/1"
#: Format tag of a record file.
RECORD_FORMAT = "shiftlens-run-record/1"
#: Format tag of the plan file.
PLAN_FORMAT = "shiftlens-run-plan/1"
_META_KEY = "shiftlens"

#: Identity fields that must agree for a resume; the rest of run.json is informative.
IDENTITY_FIELDS = ("units_name", "roles", "params", "prompts", "models", "load")


# ============================================================================ encoding
def _canonical(obj: Any) -> str:
    """Key-order independent JSON (for fingerprints of content)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _dumps(obj: Any) -> str:
    """Compact JSON keeping dict key order (a record's dicts come back in the same order)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _digest(doc: Any, tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256(_dumps(doc).encode("utf-8"))
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"\0{key}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encode_payload(value: Any, header: Mapping[str, Any]) -> bytes:
    """Encode ``value`` (JSON-safe values and tensors) with ``header`` into safetensors bytes.

    The JSON part is encoded as a Result's fields are (tuples, NaN, non-string keys, prompts,
    dtypes kept exactly); tensors go into the safetensors body; the header metadata carries the
    JSON, ``header`` and a SHA-256 over both (checked by :func:`decode_payload`).

    Raises:
        ShiftlensError: a value that cannot be saved (DataFrames, arbitrary objects), naming it.

    Example:
        >>> data = encode_payload({"score": 0.5, "x": torch.ones(2)}, {"format": "demo"})
        >>> decode_payload(data)[1]["score"]
        0.5
    """
    from shiftlens.result import _Writer

    w = _Writer()
    enc = w.enc(value, "v")
    if w.frames:
        raise ShiftlensError(f"records and plans hold JSON-safe values and tensors, not tables "
                             f"(found one at {sorted(w.frames)[0]!r}); return columns as lists")
    tensors = {k: t.detach().cpu().contiguous().clone() for k, t in w.tensors.items()}
    doc = {**header, "value": enc}
    doc["sha256"] = _digest(doc, tensors)
    return _st_save(tensors, metadata={_META_KEY: _dumps(doc)})


def decode_payload(data: bytes, where: str = "payload") -> tuple[dict[str, Any], Any]:
    """Decode bytes from :func:`encode_payload`: ``(header, value)``, the digest checked.

    Raises:
        ShiftlensError: truncated or not a shiftlens payload, or its digest does not match.

    Example:
        >>> header, value = decode_payload(encode_payload([1, (2, 3)], {"format": "demo"}))
        >>> header["format"], value
        ('demo', [1, (2, 3)])
    """
    from shiftlens.result import _Reader

    if len(data) < 8:
        raise ShiftlensError(f"{where}: {len(data)} bytes, not a safetensors file (truncated?)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ShiftlensError(f"{where}: header of {n} bytes but only {len(data) - 8} follow "
                             "(truncated)")
    try:
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
        doc = json.loads(meta[_META_KEY])
        tensors = _st_load(data)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ShiftlensError(f"{where}: not a shiftlens record ({type(e).__name__}: {e})") from e
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ShiftlensError(f"{where}: unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(doc, dict) or "sha256" not in doc or "value" not in doc:
        raise ShiftlensError(f"{where}: not a shiftlens record (no value or digest)")
    want = doc.pop("sha256")
    if _digest(doc, tensors) != want:
        raise ShiftlensError(f"{where}: content does not match its SHA-256 (damaged)")
    value = _Reader(tensors, {}, where).dec(doc.pop("value"))
    return doc, value


def prompts_fingerprint(prompts: Sequence[Any]) -> str:
    """SHA-256 over the prompts' JSONL dicts, in order (text, spans, ids, references, meta).

    Example:
        >>> from shiftlens.prompts import InstructionPrompt
        >>> len(prompts_fingerprint([InstructionPrompt("Hi", id="a")]))
        64
    """
    from shiftlens.io import to_jsonable

    return hashlib.sha256(
        _canonical(to_jsonable([p.to_dict() for p in prompts])).encode("utf-8")).hexdigest()


# ============================================================================ files
def _create_once(path: Path, data: bytes) -> bool:
    """Publish ``data`` as ``path`` unless it exists (atomic: temporary file + hard link).

    Returns True when this call created it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # pragma: no cover - a filesystem without hard links
            if path.exists():
                return False
            os.replace(tmp, path)
            return True
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _describe_diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if len(out) >= 6:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: {'absent' if k not in a else _short(a[k])} (run) vs "
                           f"{'absent' if k not in b else _short(b[k])} (now)")
            else:
                _describe_diff(a[k], b[k], f"{path}.{k}", out)
        return
    if a != b:
        out.append(f"{path}: {_short(a)} (run) vs {_short(b)} (now)")


def _short(x: Any) -> str:
    s = json.dumps(x, sort_keys=True) if not isinstance(x, str) else repr(x)
    return s if len(s) <= 70 else s[:67] + "..."


class RunStore:
    """A run directory (see the module docstring for its layout).

    Example:
        >>> store = RunStore.open("runs/sens")  # doctest: +SKIP
        >>> store.info["units_name"], len(store.scan(store.keys(), store.plan_digest())[0])  # doctest: +SKIP
        ('attribution.instruction_sensitivity', 24)
    """

    RUN = "run.json"
    PLAN = "plan.safetensors"
    RECORDS = "records"
    SESSIONS = "sessions"

    def __init__(self, path: str | Path, info: dict[str, Any], *, exists: bool = True) -> None:
        self.path = Path(path)
        self.info = info
        self.exists = exists  # False until the first plan is published (RunStore.prepare)
        self._plan: tuple[str, Any, list[Any], dict[str, Any]] | None = None

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r}, units={self.info.get('units_name')!r})"

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path) -> RunStore:
        """Open an existing run directory (``run.json`` read and checked).

        Raises:
            ShiftlensError: no run directory there, or an unreadable ``run.json``.

        Example:
            >>> RunStore.open("runs/sens").info["prompts"]["n"]  # doctest: +SKIP
            12
        """
        d = Path(path)
        f = d / cls.RUN
        if not f.is_file():
            what = "does not exist" if not d.exists() else f"holds no {cls.RUN}"
            raise ShiftlensError(f"{str(d)!r} is not a shiftlens run directory (it {what}); "
                                 "start one with 'shiftlens run' / shiftlens.runner.run_lens")
        try:
            info = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ShiftlensError(f"{str(f)!r} is unreadable ({e})") from e
        if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
            raise ShiftlensError(f"{str(f)!r} is not of format {RUN_FORMAT}")
        return cls(d, info)

    @classmethod
    def prepare(cls, path: str | Path, info: Mapping[str, Any], *, join: bool) -> RunStore:
        """Join the run in ``path`` if it has this identity, or prepare a new one.

        A new run's ``run.json`` is written only when its first plan is published
        (:meth:`publish_plan`), so parameters that the lens refuses while planning leave no run
        directory behind to refuse the corrected command.

        Args:
            path: The run directory.
            info: The new ``run.json`` (``format`` and the :data:`IDENTITY_FIELDS`, plus
                informative fields: versions, creation time, host).
            join: Allow an existing run (``--resume``, or a shard). Its identity must equal
                ``info``'s; differing versions or device type only warn.

        Raises:
            ShiftlensError: ``path`` is a file or a directory that is not a run; a run exists
                and ``join`` is False; or it was made with other parameters, prompts, models or
                load options (the message names each difference).

        Example:
            >>> store = RunStore.prepare("runs/sens", info, join=True)  # doctest: +SKIP
        """
        d = Path(path)
        if d.exists() and not d.is_dir():
            raise ShiftlensError(f"{str(d)!r} is a file, not a run directory")
        if d.is_dir() and not (d / cls.RUN).exists() and any(
                p for p in d.iterdir() if not p.name.startswith(".")):
            raise ShiftlensError(f"{str(d)!r} exists, is not empty and is not a shiftlens run "
                                 "directory; choose a new or empty directory")
        if not (d / cls.RUN).exists():
            return cls(d, dict(info), exists=False)
        store = cls.open(d)
        store.check_identity(info, join=join)
        return store

    def _ensure_exists(self) -> None:
        """Write ``run.json`` (once: a concurrent shard may have written it first)."""
        if self.exists:
            return
        data = json.dumps(self.info, indent=1, ensure_ascii=False, allow_nan=False).encode()
        try:
            created = _create_once(self.path / self.RUN, data)
        except OSError as e:
            raise ShiftlensError(f"cannot create the run directory {str(self.path)!r}: "
                                 f"{e.strerror or e}") from e
        if not created:  # a concurrent session created it: it must be this run
            other = RunStore.open(self.path)
            other.check_identity(self.info, join=True)
            self.info = other.info
        self.exists = True

    def check_identity(self, info: Mapping[str, Any], *, join: bool = True) -> None:
        """Refuse ``info`` unless it is this run's identity; warn on environment changes.

        Example:
            >>> store.check_identity(info)  # doctest: +SKIP
        """
        where = repr(str(self.path))
        n_done = sum(1 for _ in (self.path / self.RECORDS).glob("*/*.safetensors"))
        if not join:
            raise ShiftlensError(
                f"{where} already holds a run ({self.info.get('units_name')}, {n_done} record files); "
                "pass --resume (resume=True) to continue it, or choose a new directory")
        diffs: list[str] = []
        for k in IDENTITY_FIELDS:
            _describe_diff(self.info.get(k), info.get(k), k, diffs)
        if diffs:
            raise ShiftlensError(f"{where} was made with other inputs; refusing to resume it "
                                 f"(use a new directory): {'; '.join(diffs)}")
        env: list[str] = []
        for k in ("versions", "device_type"):
            _describe_diff(self.info.get(k), info.get(k), k, env)
        if env:
            warnings.warn(f"resuming {where} in another environment: {'; '.join(env)}; records "
                          "computed before and after may differ in the last bits",
                          ShiftlensWarning, stacklevel=3)

    # ------------------------------------------------------------------ units
    def keys(self) -> list[tuple[int, str]]:
        """Every ``(prompt index, role)`` of the run, role-major.

        Example:
            >>> store.keys()[:2]  # doctest: +SKIP
            [(0, 'base'), (1, 'base')]
        """
        from shiftlens.runner.units import unit_keys

        return unit_keys(tuple(self.info["roles"]), int(self.info["prompts"]["n"]))

    def record_path(self, index: int, role: str) -> Path:
        """Where the record of ``(index, role)`` lives.

        Example:
            >>> store.record_path(3, "tuned").name  # doctest: +SKIP
            '000003.safetensors'
        """
        return self.path / self.RECORDS / role / f"{index:06d}.safetensors"

    # ------------------------------------------------------------------ the plan
    def plan_digest(self) -> str | None:
        """The SHA-256 of the stored plan (None before one is stored; a damaged one warns).

        Example:
            >>> store.plan_digest()  # doctest: +SKIP
        """
        try:
            return self.read_plan()[0]
        except ShiftlensError as e:
            if (self.path / self.PLAN).exists():
                warnings.warn(f"{e}; it will be rebuilt", ShiftlensWarning, stacklevel=2)
            return None

    def read_plan(self) -> tuple[str, Any, list[Any], dict[str, Any]]:
        """``(digest, plan, prompts, header)`` of the stored plan (read once, then cached).

        Raises:
            ShiftlensError: no plan stored yet, or a damaged plan file.

        Example:
            >>> digest, plan, prompts, header = store.read_plan()  # doctest: +SKIP
        """
        if self._plan is None:
            f = self.path / self.PLAN
            if not f.is_file():
                raise ShiftlensError(f"{str(self.path)!r} holds no plan yet (no unit of the "
                                     "run has started)")
            self._plan = self._decode_plan(f.read_bytes(), f"{str(f)!r}")
        return self._plan

    def _decode_plan(self, data: bytes, where: str) -> tuple[str, Any, list[Any], dict[str, Any]]:
        from shiftlens.prompts import InstructionPrompt

        header, value = decode_payload(data, where)
        if header.get("format") != PLAN_FORMAT or not isinstance(value, dict):
            raise ShiftlensError(f"{where} is not a run plan")
        if header.get("units") != self.info.get("units_name"):
            raise ShiftlensError(f"{where} is the plan of {header.get('units')!r}, the run is "
                                 f"of {self.info.get('units_name')!r}")
        prompts = [InstructionPrompt.from_dict(d) for d in value["prompts"]]
        if prompts_fingerprint(prompts) != self.info["prompts"]["sha256"]:
            raise ShiftlensError(f"{where} holds other prompts than run.json records")
        return _plan_digest_of(data), value["plan"], prompts, header

    def encode_plan(self, plan: Any, prompts: Sequence[Any], signature: Mapping[str, Any]
                    ) -> bytes:
        """The plan file's bytes for ``plan`` (with the prompts and the pair's signature).

        Example:
            >>> data = store.encode_plan(plan, prompts, signature)  # doctest: +SKIP
        """
        return encode_payload({"plan": plan, "prompts": [p.to_dict() for p in prompts]},
                              {"format": PLAN_FORMAT, "units": self.info["units_name"],
                               "signature": dict(signature)})

    def publish_plan(self, data: bytes) -> tuple[str, Any, list[Any], dict[str, Any]]:
        """Store the plan unless one is there; check a stored one is the same plan.

        Returns:
            The stored plan, decoded (so every executor computes from the same decoded value).

        Raises:
            ShiftlensError: a different plan is stored (the tokenization or the normalised
                parameters changed since the run started).

        Example:
            >>> digest, plan, prompts, header = store.publish_plan(data)  # doctest: +SKIP
        """
        fresh = self._decode_plan(data, "the new plan")
        self._ensure_exists()
        f = self.path / self.PLAN
        if not _create_once(f, data):
            try:
                stored = self.read_plan()
            except ShiftlensError as e:
                warnings.warn(f"{e}; replacing it with the plan computed now", ShiftlensWarning,
                              stacklevel=2)
                atomic_write_bytes(f, data)
                self._plan = None
                return self.read_plan()
            if stored[0] != fresh[0]:
                diffs: list[str] = []
                _describe_diff(stored[3].get("signature"), fresh[3].get("signature"),
                               "signature", diffs)
                raise ShiftlensError(
                    f"{str(self.path)!r}: the plan computed now differs from the run's plan "
                    "(same parameters, prompts and models, so the tokenizer, the models' "
                    "configuration or shiftlens' validation changed"
                    + (f": {'; '.join(diffs)}" if diffs else "") + "); use a new directory")
            return stored
        self._plan = None
        return self.read_plan()

    # ------------------------------------------------------------------ records
    def encode_record(self, index: int, role: str, record: Any, plan_digest: str,
                      prompt_id: str) -> bytes:
        """A record file's bytes (:func:`encode_payload` with the unit and the plan digest).

        Example:
            >>> data = store.encode_record(0, "base", {"score": 0.5}, digest, "a")  # doctest: +SKIP
        """
        if not isinstance(record, Mapping):
            raise ShiftlensError(f"{self.info.get('units_name')}: compute must return a dict, "
                                 f"got {type(record).__name__} for prompt {prompt_id!r} ({role})")
        return encode_payload(dict(record), {
            "format": RECORD_FORMAT, "units": self.info["units_name"], "index": int(index),
            "role": role, "id": prompt_id, "plan": plan_digest})

    def write_record(self, index: int, role: str, data: bytes) -> Path:
        """Write a record file atomically (temporary file, ``fsync``, rename).

        Example:
            >>> store.write_record(0, "base", data)  # doctest: +SKIP
        """
        return atomic_write_bytes(self.record_path(index, role), data)

    def decode_record(self, index: int, role: str, data: bytes, plan_digest: str,
                      where: str | None = None) -> Any:
        """Decode a record's bytes, checking it is the record of ``(index, role)`` under the
        plan ``plan_digest``.

        Raises:
            ShiftlensError: damaged, or the record of another unit or plan.

        Example:
            >>> rec = store.decode_record(0, "base", data, digest)  # doctest: +SKIP
        """
        where = where or f"record ({index}, {role!r})"
        header, value = decode_payload(data, where)
        if header.get("format") != RECORD_FORMAT:
            raise ShiftlensError(f"{where}: not a run record")
        got = (header.get("units"), header.get("index"), header.get("role"), header.get("plan"))
        want = (self.info["units_name"], index, role, plan_digest)
        if got != want:
            what = ("another plan" if got[:3] == want[:3] else f"unit {got[:3]}")
            raise ShiftlensError(f"{where} belongs to {what}, not to {want[:3]}")
        return value

    def read_record(self, index: int, role: str, plan_digest: str) -> Any:
        """Read and check the record of ``(index, role)``.

        Raises:
            ShiftlensError: missing, damaged, or of another unit or plan.

        Example:
            >>> store.read_record(0, "base", store.plan_digest())  # doctest: +SKIP
        """
        f = self.record_path(index, role)
        try:
            data = f.read_bytes()
        except FileNotFoundError as e:
            raise ShiftlensError(f"{str(f)!r} is missing") from e
        except OSError as e:
            raise ShiftlensError(f"{str(f)!r} is unreadable ({e.strerror or e})") from e
        return self.decode_record(index, role, data, plan_digest, where=repr(str(f)))

    def scan(self, keys: Iterable[tuple[int, str]], plan_digest: str | None
             ) -> tuple[set[tuple[int, str]], dict[tuple[int, str], str]]:
        """Which of ``keys`` have a valid record: ``(done, damaged)``, ``damaged`` mapping a
        present but unusable record to the reason.

        Example:
            >>> done, damaged = store.scan(store.keys(), store.plan_digest())  # doctest: +SKIP
        """
        done: set[tuple[int, str]] = set()
        bad: dict[tuple[int, str], str] = {}
        for key in keys:
            f = self.record_path(*key)
            if not f.exists():
                continue
            if plan_digest is None:
                bad[key] = f"{str(f)!r}: the run's plan is missing or damaged"
                continue
            try:
                self.read_record(key[0], key[1], plan_digest)
            except ShiftlensError as e:
                bad[key] = str(e)
                continue
            done.add(key)
        return done, bad

    # ------------------------------------------------------------------ sessions
    def session(self, **fields: Any) -> _Session:
        """A session record under ``sessions/`` (written at start, updated at the end).

        Example:
            >>> with store.session(executor="inprocess") as s:  # doctest: +SKIP
            ...     s.update(computed=3)
        """
        return _Session(self, fields)


def _plan_digest_of(data: bytes) -> str:
    """The digest a plan file's header records (what records point to)."""
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n])["__metadata__"]
    return str(json.loads(meta[_META_KEY])["sha256"])


class _Session:
    def __init__(self, store: RunStore, fields: dict[str, Any]) -> None:
        from shiftlens.generate import installed_versions

        self.store = store
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        host = socket.gethostname()
        self.path = store.path / RunStore.SESSIONS / f"{stamp}-{host}-{os.getpid()}.json"
        self.t0 = time.time()
        self.doc: dict[str, Any] = {"host": host, "pid": os.getpid(),
                                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "versions": installed_versions(), "status": "running",
                                    **fields}

    def _write(self) -> None:
        if not (self.store.path / RunStore.RUN).exists():  # nothing planned: no run to log
            return
        with contextlib.suppress(ShiftlensError):  # the log must never fail a run
            atomic_write_text(self.path, json.dumps(self.doc, indent=1, default=str))

    def update(self, **fields: Any) -> None:
        self.doc.update(fields)

    def __enter__(self) -> _Session:
        self._write()
        return self

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> None:
        self.doc["seconds"] = round(time.time() - self.t0, 3)
        self.doc["status"] = ("ok" if exc is None else
                              f"failed: {typ.__name__}: {' '.join(str(exc).split())[:300]}")
        self._write()
