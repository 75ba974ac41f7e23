"""Paired activations on disk: written in shards while they are captured, read back in shuffled
batches with one shard in memory.

A crosscoder trains on many token positions of both models at one layer. Holding them in
memory limits the corpus to what fits; here they are streamed instead:

* :func:`collect_activations` runs both models of a pair over a text corpus with shiftlens'
  capture (:func:`shiftlens.capture.run_hooks_batched`: right-padded batches, padding trimmed,
  identical tokens for both models) and writes every position's pair of residual vectors to an
  :class:`ActivationWriter`; memory holds one chunk of texts and one shard.
* :class:`ActivationWriter` writes ``shard-NNNNN.safetensors`` files (``acts [rows, 2,
  d_model]``, and per row its ``text`` index, ``pos`` and ``token``), the texts' token ids
  (``texts.safetensors``) and ``store.json``, inside :func:`shiftlens.io.atomic_directory`: the
  store appears under its name in one step, with a manifest of every file's size and SHA-256, or
  not at all. No pickle.
* :class:`ActivationStore` opens a published store (sizes checked on open, each shard's SHA-256
  when it is read), iterates shuffled training batches deterministically from any step
  (:meth:`ActivationStore.batches`; what makes resumed training bit-identical), rows in file
  order (:meth:`ActivationStore.rows`) and the token context of any row.
* :class:`InMemoryActivations` is the same interface over tensors already in memory (small
  experiments, tests, and the benchmark's in-memory baseline).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.errors import ShiftlensError
from shiftlens.io import atomic_directory, read_json, verify_directory, write_json
from shiftlens.lenses.crosscoder.core import seeded_rng

__all__ = [
    "STORE_KIND",
    "ActivationWriter",
    "ActivationStore",
    "InMemoryActivations",
    "collect_activations",
    "hook_for",
]

#: The kind written into a store's manifest (checked on open).
STORE_KIND = "CrosscoderActivations"
_FORMAT = "shiftlens.crosscoder.activations/1"
_HOOKS = ("resid_pre", "resid_mid", "resid_post")


def hook_for(layer: int, hook: str = "resid_post") -> str:
    """The TransformerLens hook name of a residual stream: ``blocks.{layer}.hook_{hook}``.

    Example:
        >>> hook_for(2)
        'blocks.2.hook_resid_post'
    """
    if hook not in _HOOKS:
        raise ShiftlensError(f"hook must be one of {_HOOKS}, got {hook!r}")
    return f"blocks.{int(layer)}.hook_{hook}"


# ====================================================================== writing
class ActivationWriter:
    """Write paired activations into a new store, shard by shard (a context manager).

    Rows are buffered until ``shard_rows`` of them are there, then written as one shard; the
    directory is published atomically when the ``with`` block ends without an exception
    (:func:`shiftlens.io.atomic_directory`), and removed otherwise.

    Args:
        directory: The store to create (must not exist, be empty, or be a shiftlens directory).
        d_model: Width of the activations.
        shard_rows: Rows per shard (the reader's memory bound is one shard).
        dtype: Stored dtype (float32, or float16/bfloat16 to halve the disk).
        meta: JSON-safe facts recorded in ``store.json`` (models, layer, hook, texts, ...).

    Example:
        >>> with ActivationWriter("out/acts", 8, shard_rows=100) as w:  # doctest: +SKIP
        ...     w.add(torch.randn(250, 2, 8))
        >>> ActivationStore("out/acts").n_shards  # doctest: +SKIP
        3
    """

    def __init__(self, directory: str | Path, d_model: int, *, shard_rows: int = 65536,
                 dtype: torch.dtype = torch.float32, meta: dict[str, Any] | None = None) -> None:
        from shiftlens.checks import check_int

        self.directory = Path(directory)
        self.d_model = check_int("d_model", d_model, minimum=1)
        self.shard_rows = check_int("shard_rows", shard_rows, minimum=1)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise ShiftlensError(f"store dtype must be a float dtype, got {dtype}")
        self.dtype = dtype
        self.meta = dict(meta or {})
        self._buf: list[dict[str, Tensor]] = []
        self._buffered = 0
        self._shards: list[dict[str, Any]] = []
        self._texts: list[Tensor] = []
        self._n_rows = 0
        self._ctx: Any = None
        self._tmp: Path | None = None

    def __enter__(self) -> ActivationWriter:
        self._record: dict[str, Any] = {}
        self._ctx = atomic_directory(self.directory, kind=STORE_KIND, record=self._record)
        self._tmp = self._ctx.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            if exc_type is None:
                self._finish()
        except BaseException:
            self._ctx.__exit__(*__import__("sys").exc_info())
            raise
        return bool(self._ctx.__exit__(exc_type, exc, tb))

    @property
    def n_rows(self) -> int:
        """Rows added so far."""
        return self._n_rows + 0

    def add_text(self, tokens: Int[Tensor, " n_tokens"]) -> int:
        """Record one text's token ids (for showing contexts); returns its index.

        Example:
            >>> w.add_text(torch.tensor([0, 5, 7]))  # doctest: +SKIP
            0
        """
        self._texts.append(tokens.detach().to(torch.int64).cpu().reshape(-1))
        return len(self._texts) - 1

    def add(
        self,
        acts: Float[Tensor, "rows 2 d_model"],
        *,
        text: Int[Tensor, " rows"] | None = None,
        pos: Int[Tensor, " rows"] | None = None,
        token: Int[Tensor, " rows"] | None = None,
    ) -> None:
        """Append rows: each one position's base and tuned activations (``acts[:, 0]``,
        ``acts[:, 1]``) and, optionally, the text index, position and token id it came from
        (``-1`` when not given).

        Example:
            >>> w.add(torch.randn(4, 2, 8), text=torch.zeros(4, dtype=torch.long))  # doctest: +SKIP
        """
        if self._tmp is None:
            raise ShiftlensError("ActivationWriter.add outside its 'with' block")
        if acts.dim() != 3 or acts.shape[1] != 2 or acts.shape[2] != self.d_model:
            raise ShiftlensError(f"activations must be [rows, 2, {self.d_model}], got "
                                 f"{list(acts.shape)}")
        n = int(acts.shape[0])
        if n == 0:
            return
        if not bool(torch.isfinite(acts).all()):
            raise ShiftlensError("activations contain NaN or infinite values (row "
                                 f"{self._n_rows + int(torch.nonzero(~torch.isfinite(acts))[0, 0])})")
        cols = {"acts": acts.detach().to("cpu", self.dtype)}
        for name, v in (("text", text), ("pos", pos), ("token", token)):
            col = (torch.full((n,), -1, dtype=torch.int64) if v is None
                   else v.detach().to("cpu", torch.int64).reshape(-1))
            if col.shape[0] != n:
                raise ShiftlensError(f"{name} has {col.shape[0]} entries for {n} rows")
            cols[name] = col
        self._buf.append(cols)
        self._buffered += n
        self._n_rows += n
        while self._buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, n: int) -> None:
        cat = {k: torch.cat([b[k] for b in self._buf]) for k in self._buf[0]}
        out = {k: v[:n].contiguous() for k, v in cat.items()}
        rest = {k: v[n:] for k, v in cat.items()}
        self._buf = [rest] if int(rest["acts"].shape[0]) else []
        self._buffered -= n
        name = f"shard-{len(self._shards):05d}.safetensors"
        assert self._tmp is not None
        save_file(out, str(self._tmp / name))
        self._shards.append({"file": name, "rows": n})

    def _finish(self) -> None:
        if self._buffered:
            self._flush(self._buffered)
        if not self._shards:
            raise ShiftlensError(f"no activations were written to {str(self.directory)!r}")
        assert self._tmp is not None
        if self._texts:
            lengths = torch.tensor([0] + [len(t) for t in self._texts], dtype=torch.int64)
            save_file({"tokens": torch.cat(self._texts),
                       "offsets": torch.cumsum(lengths, 0)}, str(self._tmp / "texts.safetensors"))
        write_json(self._tmp / "store.json", {
            "format": _FORMAT, "d_model": self.d_model, "dtype": str(self.dtype),
            "n_rows": self._n_rows, "n_texts": len(self._texts), "shards": self._shards,
            "meta": self.meta,
        })
        self._record.update(n_rows=self._n_rows, n_shards=len(self._shards))


# ====================================================================== reading
class _Source:
    """What the trainer and the analysis read (shared by the disk store and the in-memory one)."""

    n_rows: int
    d_model: int
    meta: dict[str, Any]

    def _shard_rows(self) -> list[int]:
        raise NotImplementedError

    def _load(self, i: int) -> dict[str, Tensor]:
        raise NotImplementedError

    @property
    def n_shards(self) -> int:
        """Number of shards."""
        return len(self._shard_rows())

    @property
    def fingerprint(self) -> str:
        """Identifies the data (a checkpoint refuses to resume on other data)."""
        raise NotImplementedError

    def batches_per_epoch(self, batch_size: int) -> int:
        """Full batches in one pass (the last partial batch of an epoch is dropped).

        Example:
            >>> InMemoryActivations(torch.zeros(10, 2, 4)).batches_per_epoch(3)
            3
        """
        return self.n_rows // int(batch_size)

    def batches(
        self, batch_size: int, *, seed: int, start_step: int = 0
    ) -> Iterator[Float[Tensor, "batch 2 d_model"]]:
        """Shuffled training batches, endlessly, starting at batch ``start_step``.

        Epoch ``e`` visits the shards in a random order and each shard's rows in a random order
        (both drawn from ``numpy.random.SeedSequence([seed, e, ...])``), as one stream cut into
        batches of ``batch_size``; the remainder of an epoch is dropped. Batch ``t`` is therefore
        a function of ``(seed, t)`` only, and starting at ``start_step`` yields exactly the
        batches a run from step 0 would yield from there on (skipped shards are not read).
        One shard is in memory at a time (two while a batch straddles them).

        Raises:
            ShiftlensError: fewer rows than one batch.

        Example:
            >>> src = InMemoryActivations(torch.randn(10, 2, 4))
            >>> b = list(zip(range(4), src.batches(3, seed=0)))[3][1]
            >>> torch.equal(b, next(src.batches(3, seed=0, start_step=3)))
            True
        """
        B = int(batch_size)
        per_epoch = self.batches_per_epoch(B)
        if per_epoch < 1:
            raise ShiftlensError(f"the activations have {self.n_rows} rows, fewer than one batch "
                                 f"of {B}: collect more text or use a smaller batch_size")
        epoch, skip = divmod(int(start_step), per_epoch)
        skip *= B
        while True:
            yield from self._epoch(epoch, B, per_epoch, skip, seed)
            epoch, skip = epoch + 1, 0

    def _epoch(self, epoch: int, B: int, per_epoch: int, skip: int, seed: int
               ) -> Iterator[Tensor]:
        rows = self._shard_rows()
        order = seeded_rng(seed, epoch).permutation(len(rows))
        carry: Tensor | None = None
        emitted = skip // B
        pos = 0  # stream position of the start of the current shard
        for s in order:
            n = rows[int(s)]
            if pos + n <= skip:  # wholly before the resume point: not read
                pos += n
                continue
            perm = torch.from_numpy(seeded_rng(seed, epoch, int(s)).permutation(n))
            acts = self._load(int(s))["acts"][perm]
            if pos < skip:
                acts = acts[skip - pos:]
            pos += n
            if carry is not None:
                acts = torch.cat([carry, acts])
            k = 0
            while k + B <= acts.shape[0] and emitted < per_epoch:
                yield acts[k:k + B]
                k += B
                emitted += 1
            carry = acts[k:] if emitted < per_epoch else None
            if emitted >= per_epoch:
                return

    def rows(self, batch_size: int, max_rows: int | None = None
             ) -> Iterator[tuple[int, Float[Tensor, "batch 2 d_model"]]]:
        """``(first row index, activations)`` in file order, ``batch_size`` rows at a time.

        Example:
            >>> [i for i, _ in InMemoryActivations(torch.zeros(5, 2, 3)).rows(2)]
            [0, 2, 4]
        """
        limit = self.n_rows if max_rows is None else min(int(max_rows), self.n_rows)
        start = 0
        for s in range(self.n_shards):
            if start >= limit:
                return
            acts = self._load(s)["acts"]
            for k in range(0, acts.shape[0], int(batch_size)):
                if start + k >= limit:
                    return
                yield start + k, acts[k:min(k + int(batch_size), limit - start)]
            start += acts.shape[0]

    def head(self, n: int) -> Float[Tensor, "n 2 d_model"]:
        """The first ``n`` rows in file order (fewer if there are fewer).

        Example:
            >>> InMemoryActivations(torch.zeros(5, 2, 3)).head(2).shape
            torch.Size([2, 2, 3])
        """
        parts = [a for _, a in self.rows(max(1, min(int(n), 65536)), max_rows=n)]
        return torch.cat(parts)

    def row_info(self, rows: Sequence[int]) -> dict[str, np.ndarray]:
        """The ``text`` index, ``pos`` and ``token`` of the given global rows (-1 if unknown).

        Example:
            >>> InMemoryActivations(torch.zeros(3, 2, 2)).row_info([1])["text"].tolist()
            [-1]
        """
        raise NotImplementedError

    def text_tokens(self, text: int) -> Int[Tensor, " n_tokens"]:
        """The token ids of text ``text`` as collected (empty if texts were not recorded).

        Example:
            >>> InMemoryActivations(torch.zeros(3, 2, 2)).text_tokens(0).numel()
            0
        """
        raise NotImplementedError


class ActivationStore(_Source):
    """A published activation store (see the module docstring), opened for reading.

    Opening checks the manifest and every file's size (not the digests: that would read the whole
    store); each shard's SHA-256 is checked when the shard is read.

    Attributes:
        directory: The store.
        n_rows, d_model, n_texts: Sizes.
        dtype: The stored dtype.
        meta: What the writer recorded (models, layer, hook, ...).

    Raises:
        ShiftlensError: not a store, a missing/truncated file, or (on read) a modified shard.

    Example:
        >>> store = ActivationStore("out/acts")  # doctest: +SKIP
        >>> next(store.batches(256, seed=0)).shape  # doctest: +SKIP
        torch.Size([256, 2, 128])
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        where = repr(str(self.directory))
        man = verify_directory(self.directory, STORE_KIND, digests=False)
        self._digests = {k: v.get("sha256") for k, v in man["files"].items()}
        info = read_json(self.directory / "store.json", where=f"{where}: store.json")
        if not isinstance(info, dict) or info.get("format") != _FORMAT:
            raise ShiftlensError(f"{where}: store.json is not of format {_FORMAT}")
        try:
            self.d_model = int(info["d_model"])
            self.n_rows = int(info["n_rows"])
            self.n_texts = int(info["n_texts"])
            self.dtype = getattr(torch, str(info["dtype"]).removeprefix("torch."))
            self._shards = [(str(s["file"]), int(s["rows"])) for s in info["shards"]]
            self.meta = dict(info.get("meta") or {})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ShiftlensError(f"{where}: store.json is incomplete ({type(e).__name__}: {e})"
                                 ) from e
        if sum(r for _, r in self._shards) != self.n_rows:
            raise ShiftlensError(f"{where}: shard rows do not add up to n_rows={self.n_rows}")
        manifest_bytes = (self.directory / "manifest.json").read_bytes()
        self._fingerprint = hashlib.sha256(manifest_bytes).hexdigest()
        self._texts: dict[str, Tensor] | None = None

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.directory)!r}, rows={self.n_rows}, "
                f"d_model={self.d_model}, shards={self.n_shards}, dtype={self.dtype})")

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the store's manifest (which holds every file's SHA-256).

        Example:
            >>> len(ActivationStore("out/acts").fingerprint)  # doctest: +SKIP
            64
        """
        return self._fingerprint

    def _shard_rows(self) -> list[int]:
        return [r for _, r in self._shards]

    def _load(self, i: int) -> dict[str, Tensor]:
        name, rows = self._shards[i]
        where = f"{str(self.directory)!r}: {name}"
        try:
            data = (self.directory / name).read_bytes()
        except OSError as e:
            raise ShiftlensError(f"{where}: cannot read ({e.strerror or e})") from e
        if hashlib.sha256(data).hexdigest() != self._digests.get(name):
            raise ShiftlensError(f"{where} does not match its SHA-256 in manifest.json "
                                 "(modified after the store was written)")
        out = st_load(data)
        acts = out.get("acts")
        if acts is None or tuple(acts.shape) != (rows, 2, self.d_model):
            raise ShiftlensError(f"{where}: acts has shape "
                                 f"{None if acts is None else list(acts.shape)}, expected "
                                 f"{[rows, 2, self.d_model]}")
        return out

    def _column(self, i: int, name: str) -> Tensor:
        with safe_open(str(self.directory / self._shards[i][0]), framework="pt") as f:
            return f.get_tensor(name)

    def row_info(self, rows: Sequence[int]) -> dict[str, np.ndarray]:
        """The ``text`` index, ``pos`` and ``token`` of the given global rows (-1 if unknown).

        Reads only those columns of the shards that hold the rows.

        Example:
            >>> store.row_info([0, 5])["pos"]  # doctest: +SKIP
            array([1, 6])
        """
        idx = np.asarray(list(rows), dtype=np.int64)
        out = {k: np.full(idx.shape, -1, dtype=np.int64) for k in ("text", "pos", "token")}
        if idx.size == 0:
            return out
        if idx.min() < 0 or idx.max() >= self.n_rows:
            raise ShiftlensError(f"row index out of range (the store has {self.n_rows} rows)")
        bounds = np.cumsum([0] + self._shard_rows())
        shard = np.searchsorted(bounds, idx, side="right") - 1
        for s in np.unique(shard):
            sel = shard == s
            local = idx[sel] - bounds[s]
            for k in out:
                out[k][sel] = self._column(int(s), k).numpy()[local]
        return out

    def text_tokens(self, text: int) -> Int[Tensor, " n_tokens"]:
        """The token ids of text ``text`` as collected (empty if texts were not recorded).

        Example:
            >>> store.text_tokens(0)[:3]  # doctest: +SKIP
            tensor([  0, 101, 230])
        """
        if self.n_texts == 0:
            return torch.zeros(0, dtype=torch.int64)
        if self._texts is None:
            with safe_open(str(self.directory / "texts.safetensors"), framework="pt") as f:
                self._texts = {k: f.get_tensor(k) for k in f.keys()}
        off = self._texts["offsets"]
        if not 0 <= int(text) < self.n_texts:
            raise ShiftlensError(f"text {text} out of range ({self.n_texts} texts)")
        return self._texts["tokens"][int(off[int(text)]):int(off[int(text) + 1])]


class InMemoryActivations(_Source):
    """The store's interface over tensors in memory (no files).

    Args:
        acts: ``[rows, 2, d_model]`` base and tuned activations.
        shard_rows: Pretend shards of this many rows (the data order is then the same as a
            store written with the same ``shard_rows``).
        text, pos, token: Optional per-row provenance.
        texts: Optional token ids of each text.
        meta: Free-form facts (models, layer, ...).

    Example:
        >>> src = InMemoryActivations(torch.randn(100, 2, 8), shard_rows=40)
        >>> src.n_shards, next(src.batches(16, seed=0)).shape
        (3, torch.Size([16, 2, 8]))
    """

    def __init__(self, acts: Float[Tensor, "rows 2 d_model"], *, shard_rows: int | None = None,
                 text: Int[Tensor, " rows"] | None = None, pos: Int[Tensor, " rows"] | None = None,
                 token: Int[Tensor, " rows"] | None = None,
                 texts: Sequence[Tensor] | None = None, meta: dict[str, Any] | None = None
                 ) -> None:
        if acts.dim() != 3 or acts.shape[1] != 2:
            raise ShiftlensError(f"activations must be [rows, 2, d_model], got {list(acts.shape)}")
        self.acts = acts.detach().cpu()
        self.n_rows, self.d_model = int(acts.shape[0]), int(acts.shape[2])
        n = self.n_rows
        self._cols = {k: (torch.full((n,), -1, dtype=torch.int64) if v is None else
                          v.detach().cpu().to(torch.int64).reshape(-1))
                      for k, v in (("text", text), ("pos", pos), ("token", token))}
        self._texts = [t.detach().cpu().to(torch.int64) for t in (texts or [])]
        self.meta = dict(meta or {})
        size = n if shard_rows is None else max(1, int(shard_rows))
        self._rows = [min(size, n - s) for s in range(0, n, size)] or [0]
        h = hashlib.sha256()
        h.update(self.acts.contiguous().float().numpy().tobytes())
        h.update(json.dumps(self._rows).encode())
        self._fingerprint = h.hexdigest()

    def __repr__(self) -> str:
        return f"InMemoryActivations(rows={self.n_rows}, d_model={self.d_model})"

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the activations and the shard sizes.

        Example:
            >>> len(InMemoryActivations(torch.zeros(2, 2, 2)).fingerprint)
            64
        """
        return self._fingerprint

    def _shard_rows(self) -> list[int]:
        return self._rows

    def _load(self, i: int) -> dict[str, Tensor]:
        start = sum(self._rows[:i])
        sl = slice(start, start + self._rows[i])
        return {"acts": self.acts[sl], **{k: v[sl] for k, v in self._cols.items()}}

    def row_info(self, rows: Sequence[int]) -> dict[str, np.ndarray]:
        """The ``text`` index, ``pos`` and ``token`` of the given rows (-1 if unknown).

        Example:
            >>> InMemoryActivations(torch.zeros(3, 2, 2)).row_info([2])["token"].tolist()
            [-1]
        """
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return {k: v[idx].numpy() for k, v in self._cols.items()}

    def text_tokens(self, text: int) -> Int[Tensor, " n_tokens"]:
        """The token ids of one text (empty if none were given).

        Example:
            >>> InMemoryActivations(torch.zeros(1, 2, 2), texts=[torch.tensor([0, 4])]).text_tokens(0)
            tensor([0, 4])
        """
        if not self._texts:
            return torch.zeros(0, dtype=torch.int64)
        return self._texts[int(text)]


# ====================================================================== capture
def _as_prompt(item: Any, i: int) -> Any:
    from shiftlens.prompts import InstructionPrompt

    if isinstance(item, InstructionPrompt):
        return item
    if isinstance(item, str):
        if not item.strip():
            raise ShiftlensError(f"text #{i} is empty")
        return InstructionPrompt(item, id=f"#{i}")
    raise ShiftlensError(f"text #{i} is a {type(item).__name__}, not a string or an "
                         "InstructionPrompt")


def collect_activations(
    pair: Any,
    texts: Sequence[Any],
    layer: int,
    directory: str | Path,
    *,
    hook: str = "resid_post",
    skip_bos: bool = True,
    with_reference: bool = True,
    batch_size: int = 16,
    chunk_texts: int = 256,
    shard_rows: int = 65536,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> ActivationStore:
    """Capture both models' residual stream at one layer over a corpus, streamed to disk.

    Every text is tokenized once for the pair (``<bos>`` prepended as the models expect) and
    run through both models with :func:`shiftlens.capture.run_hooks_batched`; each position
    becomes one row ``(x_base, x_tuned)`` of the store, with its text index, position and token.
    ``chunk_texts`` texts are captured at a time, so memory holds one chunk's activations and
    one shard, whatever the corpus size.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        texts: Strings (plain text, e.g. :func:`shiftlens.zoo.organisms.neutral_texts`) or
            :class:`shiftlens.InstructionPrompt` (their reference response appended when
            ``with_reference``). Each must fit the models' context.
        layer: The layer.
        hook: ``"resid_pre"``, ``"resid_mid"`` or ``"resid_post"`` of that layer.
        skip_bos: Leave out ``<bos>`` positions (their residual is an outlier shared by both
            models, an attention sink, and tells nothing about the text).
        with_reference: For prompts, append the reference response.
        batch_size: Texts per forward pass.
        chunk_texts: Texts captured before their rows are handed to the writer.
        shard_rows: Rows per shard file.
        dtype: Stored dtype.
        progress: Show a progress bar.

    Returns:
        The opened :class:`ActivationStore`.

    Raises:
        ShiftlensError: an incompatible pair, a bad layer/hook, an empty corpus, a text longer
            than the context, non-finite activations (naming the model and text), or a
            directory that is not a shiftlens directory.

    Example:
        >>> from shiftlens.zoo.organisms import organism_pair, neutral_texts
        >>> pair = organism_pair("topic")  # doctest: +SKIP
        >>> store = collect_activations(pair, neutral_texts(256), 2, "out/acts")  # doctest: +SKIP
        >>> store.n_rows  # doctest: +SKIP
        12029
    """
    from shiftlens.bridge import model_name
    from shiftlens.capture import run_hooks_batched
    from shiftlens.checks import check_int, check_layer, pad_token_id
    from shiftlens.prompts import BOS

    layer = check_layer(pair.base, layer)
    name = hook_for(layer, hook)
    check_int("batch_size", batch_size, minimum=1)
    check_int("chunk_texts", chunk_texts, minimum=1)
    items = list(texts)
    if not items:
        raise ShiftlensError("collect_activations needs at least one text")
    prompts = [_as_prompt(t, i) for i, t in enumerate(items)]
    tps = [pair.tokenize(p, response=(p.reference if with_reference and p.reference else None))
           for p in prompts]
    pad = pad_token_id(pair.tokenizer)
    d_model = int(pair.cfg.d_model)
    meta = dict(models=dict(pair.names), layer=layer, hook=hook, hook_name=name,
                skip_bos=bool(skip_bos), n_texts=len(tps), with_reference=bool(with_reference),
                model_dtype=str(getattr(pair.cfg, "dtype", "")))
    bar = tqdm(total=len(tps), desc=f"activations L{layer}", disable=not progress, unit="text")
    with ActivationWriter(directory, d_model, shard_rows=shard_rows, dtype=dtype,
                          meta=meta) as w:
        for start in range(0, len(tps), chunk_texts):
            chunk = tps[start:start + chunk_texts]
            acts = {role: run_hooks_batched(model, chunk, [name], batch_size=batch_size,
                                            progress=False, pad_id=pad)[name]
                    for role, model in pair}
            for j, tp in enumerate(chunk):
                i = start + j
                w.add_text(tp.tokens)
                keep = torch.ones(len(tp.tokens), dtype=torch.bool)
                if skip_bos:
                    keep &= tp.segments != BOS
                pair_acts = []
                for role in ("base", "tuned"):
                    a = acts[role][j]
                    if not bool(torch.isfinite(a).all()):
                        bad = int(torch.nonzero(~torch.isfinite(a))[0, 0])
                        raise ShiftlensError(
                            f"{role} model {model_name(pair.models[role])!r}: non-finite "
                            f"activation at {name}, text #{i}, position {bad}")
                    pair_acts.append(a[keep].float())
                pos = torch.nonzero(keep).flatten()
                w.add(torch.stack(pair_acts, 1), text=torch.full_like(pos, i), pos=pos,
                      token=tp.tokens[keep])
            del acts
            bar.update(len(chunk))
    bar.close()
    return ActivationStore(directory)
