"""Safetensors checkpoint files: integrity checks and reading one tensor at a time.

A Hugging Face checkpoint directory holds its weights in ``model.safetensors`` or in shards
listed by ``model.safetensors.index.json`` (``{"weight_map": {tensor name: shard file}}``). A
safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON (for every
tensor its dtype, shape and ``[begin, end)`` byte range in the data block) and the data block.

This module parses the headers itself (no tensor data is touched), so it can say exactly what
is wrong with a file before any loader sees it: a truncated file (the tensors that lie past its
end are named), a header that does not parse, a tensor whose byte range disagrees with its
shape and dtype, holes or overlaps in the data block, a shard named by the index but absent, a
tensor the index promises but its shard lacks. :meth:`SafetensorsCheckpoint.read` reads one
tensor with one ``readinto`` into a fresh buffer: memory use is that tensor's bytes, whatever
the size of the checkpoint (no memory map, so nothing else is resident).

It imports nothing from shiftlens but :mod:`shiftlens.errors`: the loaders
(:mod:`shiftlens.bridge`, :mod:`shiftlens.checkpoints`) and the weight sources
(:class:`shiftlens.weights.CheckpointWeights`) build on it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from shiftlens.errors import ShiftlensError

__all__ = [
    "INDEX_FILE",
    "SINGLE_FILE",
    "TensorEntry",
    "SafetensorsCheckpoint",
    "verify_checkpoint_files",
]

#: The single-file checkpoint name transformers writes.
SINGLE_FILE = "model.safetensors"
#: The index of a sharded checkpoint.
INDEX_FILE = "model.safetensors.index.json"

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _code, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
                     ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        _DTYPES[_code] = getattr(torch, _attr)


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in a safetensors file.

    Attributes:
        name: The tensor's name in the checkpoint (``"model.layers.0.mlp.down_proj.weight"``).
        file: The file holding it.
        dtype: Its stored dtype.
        shape: Its shape.
        offset: Absolute byte offset of its data in ``file``.
        nbytes: Size of its data in bytes.

    Example:
        >>> e = SafetensorsCheckpoint(model_dir).entry("lm_head.weight")  # doctest: +SKIP
        >>> e.shape, e.dtype  # doctest: +SKIP
        ((512, 32), torch.float32)
    """

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def _parse_file(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and validate one safetensors file's header against the file's size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ShiftlensError(
                    f"safetensors file {str(path)!r} is truncated: {size} bytes, not even the "
                    "8-byte header length"
                )
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise ShiftlensError(
                    f"safetensors file {str(path)!r} is truncated or not a safetensors file: "
                    f"its header claims {n} bytes but the file has {size} bytes"
                )
            raw = f.read(n)
    except OSError as e:
        raise ShiftlensError(f"cannot read safetensors file {str(path)!r}: {e}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise ShiftlensError(
            f"safetensors file {str(path)!r} has a corrupt header ({type(e).__name__}: {e})"
        ) from e
    meta = header.pop("__metadata__", None) or {}
    data_start, data_len = 8 + n, size - 8 - n
    entries: dict[str, TensorEntry] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        try:
            code, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), \
                info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise ShiftlensError(
                f"safetensors file {str(path)!r}: tensor {name!r} has a malformed header entry "
                f"{info!r}"
            ) from e
        if code not in _DTYPES:
            raise ShiftlensError(
                f"safetensors file {str(path)!r}: tensor {name!r} has dtype {code!r}, which this "
                f"torch cannot represent (known: {sorted(_DTYPES)})"
            )
        dtype = _DTYPES[code]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - begin != math.prod(shape) * itemsize or begin < 0:
            raise ShiftlensError(
                f"safetensors file {str(path)!r}: tensor {name!r} ({code}, shape {list(shape)}) "
                f"needs {math.prod(shape) * itemsize} bytes but its range [{begin}, {end}) holds "
                f"{end - begin}"
            )
        entries[name] = TensorEntry(name, path, dtype, shape, data_start + begin, end - begin)
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise ShiftlensError(
                f"safetensors file {str(path)!r}: tensor {name!r} starts at byte {begin} of the "
                f"data block, expected {pos} (a hole or an overlap)"
            )
        pos = end
    if pos > data_len:
        cut = [name for begin, end, name in spans if end > data_len]
        raise ShiftlensError(
            f"safetensors file {str(path)!r} is truncated: its header describes {pos} data "
            f"bytes but the file holds {data_len} ({pos - data_len} missing); tensors cut off: "
            f"{cut[:8]}{' ...' if len(cut) > 8 else ''} ({len(cut)} of {len(spans)})"
        )
    if pos < data_len:
        raise ShiftlensError(
            f"safetensors file {str(path)!r} has {data_len - pos} bytes after its last tensor "
            "(not written by a safetensors writer, or overwritten)"
        )
    return entries, {str(k): str(v) for k, v in meta.items()}


class SafetensorsCheckpoint:
    """The safetensors files of a checkpoint, indexed by tensor name and validated on opening.

    Opening reads only the headers: every file's structure is checked against its size (see the
    module docstring), and for a sharded checkpoint the index against the shards. Tensors are
    then read one at a time.

    Args:
        path: A checkpoint directory (``model.safetensors``, or shards with
            ``model.safetensors.index.json``) or one ``.safetensors`` file.

    Attributes:
        path: The directory or file given.
        files: The safetensors files, in index order.
        metadata: Each file's ``__metadata__`` header (by file name).

    Raises:
        ShiftlensError: no safetensors files, a file is truncated or corrupt, the index names a
            missing shard or a tensor its shard lacks, or one tensor name is in two files.

    Example:
        >>> from shiftlens.zoo import pair_dirs
        >>> ck = SafetensorsCheckpoint(pair_dirs()[0])
        >>> ck.entry("model.layers.0.mlp.down_proj.weight").shape
        (128, 384)
        >>> ck.read("model.norm.weight").shape
        torch.Size([128])
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries: dict[str, TensorEntry] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        p = self.path
        if p.is_file():
            files, weight_map = [p], None
        elif (p / INDEX_FILE).is_file():
            try:
                index = json.loads((p / INDEX_FILE).read_text(encoding="utf-8"))
                weight_map = dict(index["weight_map"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ShiftlensError(
                    f"checkpoint {str(p)!r}: cannot read {INDEX_FILE} ({type(e).__name__}: {e})"
                ) from e
            names = list(dict.fromkeys(weight_map.values()))
            missing = [n for n in names if not (p / n).is_file()]
            if missing:
                raise ShiftlensError(
                    f"checkpoint {str(p)!r}: {INDEX_FILE} names shard files that do not exist: "
                    f"{missing}"
                )
            files = [p / n for n in names]
        elif (p / SINGLE_FILE).is_file():
            files, weight_map = [p / SINGLE_FILE], None
        elif p.is_dir():
            files = sorted(p.glob("*.safetensors"))
            weight_map = None
            if not files:
                raise ShiftlensError(
                    f"checkpoint {str(p)!r} has no safetensors files (only safetensors "
                    "checkpoints can be read tensor by tensor; re-save with "
                    "save_pretrained(..., safe_serialization=True))"
                )
        else:
            raise ShiftlensError(f"checkpoint {str(p)!r} does not exist")
        self.files: tuple[Path, ...] = tuple(files)
        for f in self.files:
            entries, meta = _parse_file(f)
            self.metadata[f.name] = meta
            for name, e in entries.items():
                if name in self._entries:
                    raise ShiftlensError(
                        f"checkpoint {str(p)!r}: tensor {name!r} is in both "
                        f"{self._entries[name].file.name} and {f.name}"
                    )
                self._entries[name] = e
        if weight_map is not None:
            bad = [(k, v) for k, v in weight_map.items()
                   if k not in self._entries or self._entries[k].file.name != Path(v).name]
            if bad:
                raise ShiftlensError(
                    f"checkpoint {str(p)!r}: {len(bad)} tensors listed in {INDEX_FILE} are not "
                    f"in the shard it names, e.g. {bad[:5]}"
                )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return (f"SafetensorsCheckpoint({str(self.path)!r}, files={len(self.files)}, "
                f"tensors={len(self)}, bytes={self.nbytes})")

    def keys(self) -> list[str]:
        """The tensor names, file by file in header order.

        Example:
            >>> from shiftlens.zoo import pair_dirs
            >>> "lm_head.weight" in SafetensorsCheckpoint(pair_dirs()[0]).keys()
            True
        """
        return list(self._entries)

    @property
    def nbytes(self) -> int:
        """Total bytes of tensor data in all files."""
        return sum(e.nbytes for e in self._entries.values())

    def entry(self, name: str) -> TensorEntry:
        """The :class:`TensorEntry` of tensor ``name``.

        Raises:
            ShiftlensError: the checkpoint has no such tensor (the message lists close names).

        Example:
            >>> from shiftlens.zoo import pair_dirs
            >>> SafetensorsCheckpoint(pair_dirs()[0]).entry("model.norm.weight").nbytes
            512
        """
        try:
            return self._entries[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.6)
            raise ShiftlensError(
                f"checkpoint {str(self.path)!r} has no tensor {name!r}"
                + (f" (close: {close})" if close else "")
            ) from None

    def read(self, name: str) -> torch.Tensor:
        """Read one tensor from its file, in its stored dtype (a fresh CPU tensor).

        One ``readinto`` into a buffer of exactly the tensor's size: no memory map, so the only
        memory used is the tensor itself.

        Raises:
            ShiftlensError: unknown tensor, or the file became shorter since it was opened.

        Example:
            >>> from shiftlens.zoo import pair_dirs
            >>> SafetensorsCheckpoint(pair_dirs()[0]).read("model.norm.weight").dtype
            torch.float32
        """
        e = self.entry(name)
        buf = torch.empty(e.nbytes, dtype=torch.uint8)
        if e.nbytes:
            try:
                with e.file.open("rb") as f:
                    f.seek(e.offset)
                    got = f.readinto(memoryview(buf.numpy()))
            except OSError as err:
                raise ShiftlensError(
                    f"cannot read tensor {name!r} from {str(e.file)!r}: {err}"
                ) from err
            if got != e.nbytes:
                raise ShiftlensError(
                    f"safetensors file {str(e.file)!r} is truncated: tensor {name!r} needs "
                    f"{e.nbytes} bytes at offset {e.offset}, only {got} could be read"
                )
        return buf.view(e.dtype).reshape(e.shape)


def verify_checkpoint_files(path: str | Path) -> SafetensorsCheckpoint:
    """Check a checkpoint's safetensors files without loading any tensor.

    Every file's header must parse and describe exactly the bytes the file holds (a truncated
    file is named, with the tensors cut off), and a sharded checkpoint's index must agree with
    its shards. Costs one header read per file (milliseconds, whatever the model size).

    Args:
        path: A checkpoint directory or one ``.safetensors`` file.

    Returns:
        The opened :class:`SafetensorsCheckpoint`.

    Raises:
        ShiftlensError: what is wrong, naming the file and tensors.

    Example:
        >>> from shiftlens.zoo import pair_dirs
        >>> len(verify_checkpoint_files(pair_dirs()[0]))
        39
    """
    return SafetensorsCheckpoint(path)
