"""Model fingerprints: cheap, content-based identities for ``run.json``.

A resumed run, or a shard joining one, must use the very models the run started with. A model
path says nothing (a directory can be overwritten by another fine-tune); hashing a 140 GB
checkpoint takes minutes. A fingerprint reads a few megabytes and still tells two fine-tunes of
one architecture apart:

* a local directory (or ``.gguf`` file): SHA-256 over every file's relative name and size, the
  whole of every small file (``config.json``, tokenizer files: up to 4 MiB) and, for larger
  files (the weights), the first MiB (the safetensors header with every tensor's offsets) plus
  16 blocks of 64 KiB spread evenly over the file and its last 64 KiB. Any fine-tune changes
  most weight bytes, so it changes the sampled blocks;
* a hub id: the repository and the commit it resolves to (a git hash, content-addressed) and the
  bytes of its ``config.json``;
* a model in memory: every parameter's name, shape and dtype and 64 of its values sampled at
  evenly spaced positions, plus the config fields that shape the model.

The file-based and in-memory fingerprints of the same weights differ (``source`` says which);
a run resumed from another kind of source is refused with that explanation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from shiftlens.errors import ShiftlensError

__all__ = ["model_fingerprint", "SMALL_FILE", "BLOCK", "N_BLOCKS"]

#: Files up to this size are hashed whole.
SMALL_FILE = 4 << 20
#: Size of a sampled block of a large file (plus its first MiB and last block).
BLOCK = 64 << 10
#: Sampled blocks per large file.
N_BLOCKS = 16
_HEAD = 1 << 20
_SAMPLES = 64


def _hash_file(h: Any, f: Path, rel: str) -> None:
    size = f.stat().st_size
    h.update(f"\0{rel}\0{size}\0".encode())
    with open(f, "rb") as fh:
        if size <= SMALL_FILE:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
            return
        h.update(fh.read(_HEAD))
        for k in range(N_BLOCKS):
            fh.seek(_HEAD + (size - _HEAD - BLOCK) * k // max(N_BLOCKS - 1, 1))
            h.update(fh.read(BLOCK))
        fh.seek(size - BLOCK)
        h.update(fh.read(BLOCK))


def _files_fingerprint(path: Path) -> str:
    h = hashlib.sha256(b"shiftlens-files/1")
    if path.is_file():
        _hash_file(h, path, path.name)
        return h.hexdigest()
    files = sorted(f for f in path.rglob("*") if f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(path).parts))
    if not files:
        raise ShiftlensError(f"model directory {str(path)!r} holds no files")
    for f in files:
        _hash_file(h, f, f.relative_to(path).as_posix())
    return h.hexdigest()


def _hub_fingerprint(repo: str) -> tuple[str, str]:
    try:
        from huggingface_hub import hf_hub_download

        cfg = Path(hf_hub_download(repo, "config.json"))
    except Exception as e:  # noqa: BLE001 - hub errors come in many types
        raise ShiftlensError(f"cannot fingerprint model {repo!r}: it is neither a local path nor "
                             f"a reachable or cached hub repository ({type(e).__name__}: {e})"
                             ) from e
    commit = cfg.parent.name  # .../snapshots/<commit>/config.json
    h = hashlib.sha256(f"shiftlens-hub/1\0{repo}\0{commit}\0".encode())
    h.update(cfg.read_bytes())
    return h.hexdigest(), commit


_CFG_FIELDS = ("n_layers", "n_heads", "n_key_value_heads", "d_model", "d_head", "d_mlp",
               "d_vocab", "n_ctx", "normalization_type", "positional_embedding_type")


def _weights(model: Any) -> Any:
    try:  # offloaded parameters materialized one module at a time
        from shiftlens.bridge import named_weights
    except ImportError:  # pragma: no cover - older layout: resident parameters only
        return iter(getattr(model, "original_model", model).named_parameters())
    return named_weights(model)


def _memory_fingerprint(model: Any) -> str:
    h = hashlib.sha256(b"shiftlens-memory/1")
    cfg = getattr(model, "cfg", None)
    h.update(repr([(k, getattr(cfg, k, None)) for k in _CFG_FIELDS]).encode())
    with torch.no_grad():
        gen = _weights(model)
        try:
            for name, w in gen:
                flat = w.detach().reshape(-1)
                idx = torch.linspace(0, max(flat.numel() - 1, 0), min(_SAMPLES, flat.numel()),
                                     device=flat.device).round().long()
                sample = flat[idx].to("cpu", torch.float64)
                h.update(f"\0{name}\0{list(w.shape)}\0{w.dtype}\0".encode())
                h.update(sample.numpy().tobytes())
        finally:
            if hasattr(gen, "close"):
                gen.close()
    return h.hexdigest()


def model_fingerprint(model: Any) -> dict[str, str]:
    """A content-based identity of a model: ``{"source", "fingerprint"}`` (+ ``"commit"``).

    Args:
        model: A local Hugging Face directory or ``.gguf`` file, a hub id, or a loaded
            ``TransformerBridge``.

    Returns:
        ``{"source": "files" | "hub" | "memory", "fingerprint": sha256 hex}``; hub ids add the
        resolved ``"commit"``.

    Raises:
        ShiftlensError: a hub id that is neither cached nor reachable.

    Example:
        >>> from shiftlens.zoo import pair_dirs
        >>> base, tuned = pair_dirs()
        >>> model_fingerprint(base) != model_fingerprint(tuned)
        True
    """
    if isinstance(model, (str, Path)):
        p = Path(model).expanduser()
        if p.exists():
            return {"source": "files", "fingerprint": _files_fingerprint(p)}
        digest, commit = _hub_fingerprint(str(model))
        return {"source": "hub", "fingerprint": digest, "commit": commit}
    if not hasattr(model, "cfg"):
        raise ShiftlensError(f"cannot fingerprint a {type(model).__name__}: give a path, a hub "
                             "id or a TransformerBridge")
    return {"source": "memory", "fingerprint": _memory_fingerprint(model)}
