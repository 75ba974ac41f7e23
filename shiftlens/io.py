"""Saving and loading without pickle, atomically and checked.

Formats: JSON for metadata, Parquet for tables, safetensors for tensors. Nothing is written in
place:

* :func:`atomic_write_bytes` / :func:`atomic_write_text` write a single file to a temporary file
  in the same directory, ``fsync`` it and publish it with one ``os.replace``;
* :func:`atomic_directory` builds a whole directory under a temporary name and publishes it with
  one atomic exchange (``renameat2(RENAME_EXCHANGE)`` on Linux, two renames elsewhere) after
  writing ``manifest.json``: every file's size and SHA-256, plus whatever shapes the caller
  records. :func:`verify_directory` checks a directory against its manifest before anything is
  read from it.

So an interrupted save leaves either the old directory, intact, or nothing under the final name
(never a mix of old and new files), and a load of a truncated, tampered or partly deleted
directory raises :class:`~shiftlens.ShiftlensError` naming the directory and the first
inconsistency.

Replacing a directory is only allowed when it is empty or was itself published by
:func:`atomic_directory` (it has a ``manifest.json`` of this format): shiftlens never deletes a
directory it did not write.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from shiftlens.errors import ShiftlensError

__all__ = [
    "MANIFEST",
    "MANIFEST_FORMAT",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_digest",
    "read_json",
    "read_manifest",
    "read_parquet",
    "read_tensors",
    "to_jsonable",
    "from_jsonable",
    "verify_directory",
    "write_json",
    "write_parquet",
    "write_tensors",
    "tensor_keys",
    "save_bundle",
    "load_bundle",
]

#: The manifest file of a directory published by :func:`atomic_directory`.
MANIFEST = "manifest.json"
#: Format tag written into every manifest (checked on load).
MANIFEST_FORMAT = "shiftlens-bundle/1"


# ============================================================================ JSON values
def to_jsonable(x: Any) -> Any:
    """Convert numpy/torch scalars, tuples and NaN/inf into JSON-safe values.

    Example:
        >>> to_jsonable({"a": np.float32(1.5), "b": float("nan")})
        {'a': 1.5, 'b': 'NaN'}
    """
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, torch.Tensor):
        return to_jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    return x


def from_jsonable(x: Any) -> Any:
    """Inverse of :func:`to_jsonable` for the non-finite floats.

    Example:
        >>> from_jsonable({"b": "NaN"})["b"] != from_jsonable({"b": "NaN"})["b"]
        True
    """
    if isinstance(x, dict):
        return {k: from_jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [from_jsonable(v) for v in x]
    if x == "NaN":
        return float("nan")
    if x == "Infinity":
        return float("inf")
    if x == "-Infinity":
        return float("-inf")
    return x


# ============================================================================ single files
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file, ``fsync``, one ``os.replace``.

    An interrupted write leaves the old file (or none); never a partial one.

    Example:
        >>> p = atomic_write_bytes("out/x.bin", b"abc")  # doctest: +SKIP
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ShiftlensError(f"cannot create directory {str(path.parent)!r}: {e.strerror or e}"
                             ) from e
    if path.is_dir():
        raise ShiftlensError(f"{str(path)!r} is a directory, not a file")
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ShiftlensError(f"cannot write {str(path)!r}: {e.strerror or e}") from e
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    Example:
        >>> p = atomic_write_text("out/x.json", "{}")  # doctest: +SKIP
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, hex.

    Example:
        >>> len(file_digest(__file__))
        64
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ============================================================================ directories
_RENAME_EXCHANGE = 2
_libc: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where unsupported."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.renameat2  # noqa: B018 - probe
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    AT_FDCWD = -100
    rc = _libc.renameat2(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)),
                         _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP if hasattr(errno, "ENOTSUP") else -1):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replaceable(target: Path) -> bool:
    if not target.exists():
        return True
    if not target.is_dir():
        return False
    if not any(target.iterdir()):
        return True
    m = target / MANIFEST
    if not m.is_file():
        return False
    try:
        return json.loads(m.read_text(encoding="utf-8")).get("format") == MANIFEST_FORMAT
    except (OSError, ValueError, AttributeError):
        # a damaged manifest of ours (truncated) is still ours when the name says so
        return m.stat().st_size < 1 << 20 and MANIFEST_FORMAT.encode() in m.read_bytes()


def _describe_file(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": file_digest(path)}


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, kind: str, record: dict[str, Any] | None = None
                     ) -> Iterator[Path]:
    """Build a directory under a temporary name; on success publish it as ``target`` at once.

    The body writes its files into the yielded temporary directory. On normal exit
    ``manifest.json`` is written (``format``, ``kind``, every file's size and SHA-256, and
    ``record``, e.g. tensor shapes), the files are ``fsync``-ed and the directory replaces
    ``target`` in one atomic exchange. On an exception the temporary directory is removed and
    ``target`` is untouched.

    Args:
        target: The final directory. It must not exist, be empty, or be a directory published by
            this function (anything else is refused, so nothing of the user's is deleted).
        kind: What the directory holds (checked by :func:`verify_directory`).
        record: Extra JSON-safe facts for the manifest (shapes, row counts).

    Yields:
        The temporary directory to write into.

    Example:
        >>> with atomic_directory("out/r", kind="Demo") as tmp:  # doctest: +SKIP
        ...     (tmp / "a.json").write_text("{}")
    """
    target = Path(target)
    if target.exists() and not _replaceable(target):
        raise ShiftlensError(
            f"{str(target)!r} exists and is not a shiftlens result directory (no {MANIFEST} of "
            "format " + MANIFEST_FORMAT + "); choose a new or empty directory: shiftlens does not "
            "replace directories it did not write"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ShiftlensError(f"cannot create directory {str(target.parent)!r}: "
                             f"{e.strerror or e}") from e
    tag = uuid.uuid4().hex[:8]
    tmp = target.with_name(f".{target.name}.tmp-{tag}")
    try:
        tmp.mkdir()
    except OSError as e:
        raise ShiftlensError(f"cannot write into {str(target.parent)!r}: {e.strerror or e}"
                             ) from e
    try:
        yield tmp
        files = {}
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                rel = f.relative_to(tmp).as_posix()
                files[rel] = _describe_file(f)
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        manifest = {"format": MANIFEST_FORMAT, "kind": kind, "files": files,
                    "record": to_jsonable(record or {})}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(manifest, indent=1, ensure_ascii=False, allow_nan=False))
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        _publish(tmp, target, tag)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise ShiftlensError(f"cannot save into {str(target)!r}: {e.strerror or e}") from e
        raise


def _publish(tmp: Path, target: Path, tag: str) -> None:
    if not target.exists():
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old directory
    else:  # pragma: no cover - non-Linux: a short window with no directory under the name
        old = target.with_name(f".{target.name}.old-{tag}")
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a published directory (not verified; see
    :func:`verify_directory`).

    Example:
        >>> read_manifest("out/r")["kind"]  # doctest: +SKIP
        'SensitivityResult'
    """
    d = Path(directory)
    if not d.exists():
        raise ShiftlensError(f"{str(d)!r} does not exist")
    if not d.is_dir():
        raise ShiftlensError(f"{str(d)!r} is a file, not a saved shiftlens directory")
    m = d / MANIFEST
    if not m.is_file():
        raise ShiftlensError(
            f"{str(d)!r} holds no saved shiftlens result ({MANIFEST} missing: not saved by "
            "shiftlens >= 0.2, or the save was interrupted)")
    try:
        rec = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ShiftlensError(f"{str(d)!r}: {MANIFEST} is unreadable ({e})") from e
    if not isinstance(rec, dict) or rec.get("format") != MANIFEST_FORMAT:
        raise ShiftlensError(f"{str(d)!r}: {MANIFEST} is not of format {MANIFEST_FORMAT}")
    if not isinstance(rec.get("files"), dict):
        raise ShiftlensError(f"{str(d)!r}: {MANIFEST} lists no files")
    return rec


def verify_directory(directory: str | Path, kind: str | None = None, *,
                     digests: bool = True) -> dict[str, Any]:
    """Check a published directory against its manifest; return the manifest.

    Checks: the manifest parses and has this format (and ``kind`` when given); every listed file
    exists with the recorded size and (``digests=True``) SHA-256; no unlisted file sits beside
    them (a file left by someone else).

    Raises:
        ShiftlensError: naming the directory and the first inconsistency.

    Example:
        >>> verify_directory("out/r", "SensitivityResult")  # doctest: +SKIP
    """
    d = Path(directory)
    rec = read_manifest(d)
    if kind is not None and rec.get("kind") != kind:
        raise ShiftlensError(f"{str(d)!r} holds a {rec.get('kind')!r}, not a {kind!r}")
    for rel, info in sorted(rec["files"].items()):
        f = d / rel
        if not f.is_file():
            raise ShiftlensError(f"{str(d)!r}: {rel} is missing (listed in {MANIFEST})")
        size = f.stat().st_size
        if size != info.get("bytes"):
            raise ShiftlensError(f"{str(d)!r}: {rel} has {size} bytes, {MANIFEST} records "
                                 f"{info.get('bytes')} (truncated or replaced)")
        if digests and file_digest(f) != info.get("sha256"):
            raise ShiftlensError(f"{str(d)!r}: {rel} does not match its SHA-256 in {MANIFEST} "
                                 "(modified after saving)")
    listed = set(rec["files"]) | {MANIFEST}
    extra = sorted(f.relative_to(d).as_posix() for f in d.rglob("*")
                   if f.is_file() and f.relative_to(d).as_posix() not in listed)
    if extra:
        raise ShiftlensError(f"{str(d)!r}: {extra[0]} is not listed in {MANIFEST} (added after "
                             "saving)")
    return rec


# ============================================================================ typed pieces
def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write tensors to a safetensors file; return ``{key: {"shape", "dtype"}}`` for a manifest.

    Example:
        >>> write_tensors("t.safetensors", {"a": torch.zeros(2)})  # doctest: +SKIP
        {'a': {'shape': [2], 'dtype': 'torch.float32'}}
    """
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(clean, str(path))
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in clean.items()}


def read_tensors(path: str | Path, expect: dict[str, Any] | None = None, *,
                 where: str = "") -> dict[str, torch.Tensor]:
    """Read a safetensors file; with ``expect`` (from :func:`write_tensors`) check keys/shapes.

    Example:
        >>> t = read_tensors("t.safetensors")  # doctest: +SKIP
    """
    where = where or str(path)
    try:
        out = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise ShiftlensError(f"{where}: cannot read tensors ({type(e).__name__}: {e})") from e
    if expect is not None:
        missing = sorted(set(expect) - set(out))
        extra = sorted(set(out) - set(expect))
        if missing or extra:
            raise ShiftlensError(f"{where}: tensors {missing or extra} "
                                 f"{'missing' if missing else 'unexpected'}")
        for k, info in expect.items():
            if list(out[k].shape) != list(info["shape"]) or str(out[k].dtype) != info["dtype"]:
                raise ShiftlensError(
                    f"{where}: tensor {k!r} has shape {list(out[k].shape)} {out[k].dtype}, "
                    f"expected {info['shape']} {info['dtype']}")
    return out


def tensor_keys(path: str | Path) -> list[str]:
    """Keys of a safetensors file without reading the tensors.

    Example:
        >>> tensor_keys("t.safetensors")  # doctest: +SKIP
        ['a']
    """
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def write_parquet(path: str | Path, frame: pd.DataFrame) -> dict[str, Any]:
    """Write a DataFrame to Parquet; return ``{"rows", "columns"}`` for a manifest.

    Example:
        >>> write_parquet("f.parquet", pd.DataFrame({"x": [1]}))  # doctest: +SKIP
        {'rows': 1, 'columns': ['x']}
    """
    try:
        frame.to_parquet(path, index=None)
    except (ValueError, TypeError, ImportError, OverflowError) as e:
        raise ShiftlensError(f"cannot save table {Path(path).name!r}: {type(e).__name__}: {e}"
                             ) from e
    except Exception as e:  # noqa: BLE001 - pyarrow's own error types
        if type(e).__module__.startswith("pyarrow"):
            raise ShiftlensError(f"cannot save table {Path(path).name!r}: {type(e).__name__}: "
                                 f"{e}") from e
        raise
    return {"rows": len(frame), "columns": [str(c) for c in frame.columns]}


def read_parquet(path: str | Path, expect: dict[str, Any] | None = None, *,
                 where: str = "") -> pd.DataFrame:
    """Read a Parquet file; with ``expect`` (from :func:`write_parquet`) check rows and columns.

    Example:
        >>> df = read_parquet("f.parquet")  # doctest: +SKIP
    """
    where = where or str(path)
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise ShiftlensError(f"{where}: cannot read table ({type(e).__name__}: {e})") from e
    if expect is not None:
        cols = [str(c) for c in df.columns]
        if len(df) != expect.get("rows") or cols != list(expect.get("columns", cols)):
            raise ShiftlensError(f"{where}: table has {len(df)} rows and columns {cols}, expected "
                                 f"{expect.get('rows')} rows and {expect.get('columns')}")
    return df


def read_json(path: str | Path, *, where: str = "") -> Any:
    """Read a JSON file written by shiftlens (NaN/inf restored), with a clear error.

    Example:
        >>> read_json("out/r/result.json")  # doctest: +SKIP
    """
    where = where or str(path)
    try:
        return from_jsonable(json.loads(Path(path).read_text(encoding="utf-8")))
    except FileNotFoundError as e:
        raise ShiftlensError(f"{where}: missing") from e
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ShiftlensError(f"{where}: unreadable JSON ({e})") from e


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON (NaN/inf encoded by :func:`to_jsonable`) into a new file.

    Example:
        >>> write_json("out/x.json", {"a": float("nan")})  # doctest: +SKIP
    """
    Path(path).write_text(json.dumps(to_jsonable(obj), indent=1, ensure_ascii=False,
                                     allow_nan=False), encoding="utf-8")


# ============================================================================ flat bundles
def save_bundle(
    directory: str | Path,
    kind: str,
    meta: dict[str, Any],
    frames: dict[str, pd.DataFrame] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Atomically write ``result.json`` (kind + meta), Parquet frames and ``tensors.safetensors``.

    The manifest records every file's digest, each frame's rows and columns and each tensor's
    shape; :func:`load_bundle` verifies all of it.

    Example:
        >>> save_bundle("out/r", "Demo", {"seed": 0}, {"rows": pd.DataFrame({"x": [1]})})  # doctest: +SKIP
    """
    frames = frames or {}
    record: dict[str, Any] = {"frames": {}, "tensors": {}}
    with atomic_directory(directory, kind=kind, record=record) as tmp:
        write_json(tmp / "result.json", {"kind": kind, "meta": meta, "frames": sorted(frames)})
        for name, df in frames.items():
            record["frames"][name] = write_parquet(tmp / f"{name}.parquet", df)
        if tensors:
            record["tensors"] = write_tensors(tmp / "tensors.safetensors", tensors)
    return Path(directory)


def load_bundle(
    directory: str | Path, kind: str
) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict[str, torch.Tensor]]:
    """Verify and read a bundle written by :func:`save_bundle`, checking its kind.

    Example:
        >>> meta, frames, tensors = load_bundle("out/r", "Demo")  # doctest: +SKIP
    """
    d = Path(directory)
    man = verify_directory(d, kind)
    rec = man.get("record") or {}
    res = read_json(d / "result.json", where=f"{str(d)!r}: result.json")
    if not isinstance(res, dict) or res.get("kind") != kind or "meta" not in res:
        raise ShiftlensError(f"{str(d)!r}: result.json does not describe a {kind!r}")
    frames = {n: read_parquet(d / f"{n}.parquet", (rec.get("frames") or {}).get(n),
                              where=f"{str(d)!r}: {n}.parquet")
              for n in res.get("frames", [])}
    t = d / "tensors.safetensors"
    tensors = (read_tensors(t, rec.get("tensors"), where=f"{str(d)!r}: tensors.safetensors")
               if t.exists() else {})
    return res["meta"], frames, tensors
