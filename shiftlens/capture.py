"""Paired activation capture: both models' hooks on identical tokens, segment-aware.

Prompts are batched with right padding. For a causal model no real position can attend to a
later (padding) position and position ids of real tokens are unchanged, so per-prompt results
equal unbatched runs; padding is trimmed before anything is stored. Only the requested hooks
are kept, and with ``reduce`` the activations are reduced inside the hook, so a run over many
prompts never holds full activations:

- ``reduce=None``: per prompt, the activation without batch dim and padding
  (``[pos, ...]``; attention patterns ``[head, q, k]``).
- ``reduce="segment_mean"``: per prompt, the mean over the positions of each segment
  (``[segment, ...]``, NaN where a segment is empty); attention patterns become
  ``[q_segment, head, k_segment]``: for query positions in one segment (averaged), the total
  attention on the key positions of each segment.
- ``reduce="last"``: the activation at the last prompt position (``[...]``); attention
  patterns become ``[head, k_segment]``.

Segments are :data:`shiftlens.prompts.SEGMENTS`.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.bridge import device_of, model_name
from shiftlens.checks import pad_token_id
from shiftlens.errors import ShiftlensError
from shiftlens.io import (
    atomic_directory,
    read_json,
    read_tensors,
    verify_directory,
    write_json,
    write_tensors,
)
from shiftlens.prompts import SEGMENTS, InstructionPrompt, TokenizedPrompt

__all__ = ["PairCache", "capture_pair", "default_hook_names", "resolve_hook_names", "REDUCTIONS"]

REDUCTIONS = (None, "segment_mean", "last")
ROLES = ("base", "tuned")


def default_hook_names(n_layers: int) -> list[str]:
    """Residual streams (pre/mid/post), attention patterns and MLP activations of every layer.

    Example:
        >>> default_hook_names(1)
        ['blocks.0.hook_resid_pre', 'blocks.0.hook_resid_mid', 'blocks.0.hook_resid_post', 'blocks.0.attn.hook_pattern', 'blocks.0.mlp.hook_post']
    """
    out = []
    for layer in range(n_layers):
        out += [
            f"blocks.{layer}.hook_resid_pre",
            f"blocks.{layer}.hook_resid_mid",
            f"blocks.{layer}.hook_resid_post",
            f"blocks.{layer}.attn.hook_pattern",
            f"blocks.{layer}.mlp.hook_post",
        ]
    return out


def resolve_hook_names(model: Any, names_filter: Any, model_label: str = "model") -> list[str]:
    """Turn a TL-style ``names_filter`` (None, str, list of str, callable) into hook names.

    A predicate selects among the hooks the model can run (TransformerLens keeps some switched
    off until enabled, e.g. ``hook_mlp_in``); ``lambda name: True`` means every usable hook.

    Raises:
        ShiftlensError: an explicitly named hook does not exist on the model (with the closest
            valid names), or a filter matches nothing.

    Example:
        >>> resolve_hook_names(model, "blocks.0.hook_resid_post")  # doctest: +SKIP
        ['blocks.0.hook_resid_post']
    """
    available = list(model.hook_dict.keys())
    if names_filter is None:
        names = default_hook_names(model.cfg.n_layers)
    elif isinstance(names_filter, str):
        names = [names_filter]
    elif callable(names_filter):
        # hooks the bridge has switched off (hook_mlp_in, hook_attn_in, ... until enabled) never
        # fire and cannot be added: a predicate selects among the usable ones
        gated = getattr(model, "_gated_hook_reason", None)
        names = [n for n in available if names_filter(n)
                 and not (callable(gated) and gated(getattr(model.hook_dict[n], "name", None) or n))]
        if not names:
            raise ShiftlensError(f"names_filter matched no hook of {model_label}")
        return names
    else:
        names = list(names_filter)
        if not names:
            raise ShiftlensError("names_filter is an empty list")
    aset = set(available)
    for n in names:
        if not isinstance(n, str) or n not in aset:
            close = difflib.get_close_matches(str(n), available, n=3)
            raise ShiftlensError(
                f"unknown hook name {n!r} for {model_label}" + (f"; did you mean {close}?" if close else "")
            )
    return list(dict.fromkeys(names))


def _is_pattern(name: str) -> bool:
    return name.endswith("hook_pattern") or name.endswith("hook_attn_scores")


def _segment_onehot(segments: Tensor, dtype: torch.dtype) -> Tensor:
    """[batch, pos] codes (-1 = padding) -> [batch, pos, n_seg] one-hot."""
    n = len(SEGMENTS)
    valid = segments >= 0
    oh = torch.nn.functional.one_hot(segments.clamp(min=0), n).to(dtype)
    return oh * valid.unsqueeze(-1).to(dtype)


def _reduce(
    name: str, act: Tensor, seg: Tensor, lengths: list[int], n_prompt: list[int], mode: str | None
) -> list[Tensor]:
    """Reduce one batch's activation into per-prompt tensors (padding removed)."""
    out: list[Tensor] = []
    pattern = _is_pattern(name)
    if act.dim() > 0 and act.shape[0] == 1 and len(lengths) > 1:
        # a hook shared by the whole batch (e.g. positional embeddings): the same for each prompt
        act = act.expand(len(lengths), *act.shape[1:])
    if mode is None:
        for i, L in enumerate(lengths):
            out.append(act[i, :, :L, :L] if pattern else act[i, :L])
        return out
    a = act.float()
    oh = _segment_onehot(seg, a.dtype)  # [b, pos, S]
    if mode == "segment_mean":
        counts = oh.sum(1)  # [b, S]
        if pattern:
            # mass on key segments, then mean over query positions of each query segment
            if name.endswith("hook_attn_scores"):
                raise ShiftlensError(f"reduce='segment_mean' is not defined for {name}")
            key_mass = torch.einsum("bhqk,bks->bhqs", a, oh)
            red = torch.einsum("bhqs,bqt->bths", key_mass, oh) / counts[:, :, None, None]
        else:
            red = torch.einsum("bp...,bps->bs...", a, oh)
            red = red / counts.reshape(counts.shape + (1,) * (red.dim() - 2))
        return [red[i] for i in range(a.shape[0])]
    if mode == "last":
        idx = torch.tensor([n - 1 for n in n_prompt])
        if pattern:
            if name.endswith("hook_attn_scores"):
                raise ShiftlensError(f"reduce='last' is not defined for {name}")
            rows = a[torch.arange(a.shape[0]), :, idx]  # [b, h, k]
            red = torch.einsum("bhk,bks->bhs", rows, oh)
        else:
            red = a[torch.arange(a.shape[0]), idx]
        return [red[i] for i in range(a.shape[0])]
    raise ShiftlensError(f"unknown reduce {mode!r}; choose from {REDUCTIONS}")


_CACHE_KIND = "PairCache"


@dataclass
class PairCache:
    """Both models' cached activations on identical tokens, keyed by TL hook names.

    Attributes:
        prompts: The tokenized prompts (tokens and segment codes), in input order.
        names: Cached hook names.
        reduce: The reduction applied (None, ``"segment_mean"`` or ``"last"``).
        model_names: ``{"base": ..., "tuned": ...}``.
        data: ``data[role][hook_name]`` is a list with one tensor per prompt.

    Indexing (what users try first works):

    - ``cache["tuned", "blocks.1.hook_resid_post"]``: one tensor per prompt (a list);
    - ``cache["tuned", "blocks.1.hook_resid_post", 3]``: prompt 3's tensor;
    - ``cache["blocks.1.hook_resid_post"]``: ``{"base": [...], "tuned": [...]}``;
    - ``cache["tuned"]``: ``{hook_name: [...]}`` of that model;
    - ``cache.to_activation_cache("tuned", 3)``: a TransformerLens ``ActivationCache`` of one
      prompt (batch dimension 1), with ``accumulated_resid``, ``decompose_resid``,
      ``logit_attrs``, ``apply_ln_to_stack`` and TL's own indexing (``cache["resid_post", 1]``).

    Example:
        >>> cache = pair.run_with_cache(prompts, ["blocks.1.hook_resid_post"])  # doctest: +SKIP
        >>> cache["tuned", "blocks.1.hook_resid_post"][0].shape  # doctest: +SKIP
        torch.Size([17, 64])
    """

    prompts: list[TokenizedPrompt]
    names: list[str]
    reduce: str | None
    model_names: dict[str, str]
    data: dict[str, dict[str, list[Tensor]]]

    def __post_init__(self) -> None:
        self._models: dict[str, Any] = {}

    def _key_error(self, key: Any) -> ShiftlensError:
        return ShiftlensError(
            f"PairCache key {key!r} not understood: use cache[role, hook] (a list, one tensor per "
            f"prompt), cache[role, hook, i], cache[hook] (both roles) or cache[role]; roles are "
            f"'base' and 'tuned', cached hooks: {self.names[:4]}{'...' if len(self.names) > 4 else ''}"
        )

    def _role(self, role: Any) -> dict[str, list[Tensor]]:
        if role not in ROLES:
            raise ShiftlensError(f"unknown model role {role!r}; use 'base' or 'tuned'")
        return self.data[role]

    def _hook(self, role: str, name: Any) -> list[Tensor]:
        d = self._role(role)
        if name not in d:
            close = difflib.get_close_matches(str(name), self.names, n=3)
            raise ShiftlensError(f"hook {name!r} was not cached" + (
                f"; did you mean {close}?" if close else f"; cached: {self.names[:6]}..."))
        return d[name]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            if len(key) == 2:
                return self._hook(key[0], key[1])
            if len(key) == 3:
                items = self._hook(key[0], key[1])
                i = key[2]
                if isinstance(i, bool) or not isinstance(i, int) or not -len(items) <= i < len(items):
                    raise ShiftlensError(f"prompt index {i!r} out of range ({len(items)} prompts)")
                return items[i]
            raise self._key_error(key)
        if isinstance(key, str):
            if key in ROLES:
                return dict(self._role(key))
            if key in self.names:
                return {role: self.data[role][key] for role in ROLES}
        raise self._key_error(key)

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        return (f"PairCache({len(self.prompts)} prompts, {len(self.names)} hooks, "
                f"reduce={self.reduce!r}, base={self.model_names.get('base')!r}, "
                f"tuned={self.model_names.get('tuned')!r})")

    def get(self, role: str, name: str, index: int) -> Tensor:
        """One prompt's activation.

        Example:
            >>> cache.get("base", "blocks.0.hook_resid_post", 0)  # doctest: +SKIP
        """
        return self[role, name, index]

    def stack(self, role: str, name: str) -> Tensor:
        """Stack per-prompt tensors (reduced caches, or prompts of equal length).

        Example:
            >>> cache.stack("base", "blocks.0.hook_resid_post").shape  # doctest: +SKIP
            torch.Size([64, 5, 512])
        """
        items = self[role, name]
        shapes = {tuple(t.shape) for t in items}
        if len(shapes) != 1:
            raise ShiftlensError(
                f"cannot stack {name}: prompts have different shapes {sorted(shapes)[:3]}; "
                "use reduce='segment_mean' or 'last', or iterate"
            )
        return torch.stack(items)

    def masks(self, index: int) -> dict[str, Tensor]:
        """Segment masks of prompt ``index``.

        Example:
            >>> cache.masks(0)["instruction"]  # doctest: +SKIP
        """
        return self.prompts[index].masks

    # ------------------------------------------------------------------ TransformerLens
    def to_activation_cache(self, role: str, index: int, model: Any = None) -> Any:
        """One prompt's activations of one model as a TransformerLens ``ActivationCache``.

        Every cached hook is given a batch dimension of 1, so TL's own analysis methods work
        (``accumulated_resid``, ``decompose_resid``, ``logit_attrs``, ``apply_ln_to_stack``,
        ``cache["resid_post", 1]``) and equal the model's own ``run_with_cache``. They need the
        hooks they read: capture with ``names_filter=lambda name: True`` (every hook) and
        ``reduce=None``.

        Args:
            role: ``"base"`` or ``"tuned"``.
            index: The prompt.
            model: The TransformerBridge of that role (default: the model this cache was
                captured from, while it is alive; required after :meth:`load`).

        Raises:
            ShiftlensError: a reduced cache, an unknown role/index, or no model.

        Example:
            >>> cache = pair.run_with_cache([p], lambda n: True)  # doctest: +SKIP
            >>> ac = cache.to_activation_cache("tuned", 0)  # doctest: +SKIP
            >>> ac.accumulated_resid(layer=-1, incl_mid=True).shape  # doctest: +SKIP
        """
        from transformer_lens import ActivationCache

        if self.reduce is not None:
            raise ShiftlensError(f"to_activation_cache needs per-position activations; this cache "
                                 f"was reduced with reduce={self.reduce!r} (capture with "
                                 "reduce=None)")
        self._role(role)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self):
            raise ShiftlensError(f"prompt index {index!r} out of range ({len(self)} prompts)")
        if model is None:
            ref = self._models.get(role)
            model = ref() if ref is not None else None
        if model is None:
            raise ShiftlensError(f"to_activation_cache({role!r}, ...): pass model= (the {role} "
                                 "TransformerBridge); a loaded cache does not hold its models")
        tensors = {name: self.data[role][name][index].unsqueeze(0) for name in self.names}
        return ActivationCache(tensors, model, has_batch_dim=True)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``activations.safetensors`` + ``cache.json`` atomically (bit-exact; no pickle).

        Published in one step with a manifest of every file's SHA-256 and every tensor's shape
        (:func:`shiftlens.io.atomic_directory`): an interrupted overwrite leaves the old cache.

        Example:
            >>> cache.save("out/cache")  # doctest: +SKIP
        """
        tensors: dict[str, Tensor] = {}
        for role in ROLES:
            for name in self.names:
                for i, t in enumerate(self.data[role][name]):
                    tensors[f"{role}/{name}/{i}"] = t.contiguous()
        for i, tp in enumerate(self.prompts):
            tensors[f"tokens/{i}"] = tp.tokens.contiguous()
            tensors[f"segments/{i}"] = tp.segments.contiguous()
        meta = {
            "format": "shiftlens.PairCache/1",
            "names": self.names,
            "reduce": self.reduce,
            "model_names": self.model_names,
            "segments": list(SEGMENTS),
            "prompts": [
                {
                    "prompt": tp.prompt.to_dict(),
                    "n_prompt": tp.n_prompt,
                    "offsets": [list(o) for o in tp.offsets],
                    "response": tp.response,
                }
                for tp in self.prompts
            ],
        }
        record: dict[str, Any] = {}
        with atomic_directory(directory, kind=_CACHE_KIND, record=record) as tmp:
            record["tensors"] = write_tensors(tmp / "activations.safetensors", tensors)
            write_json(tmp / "cache.json", meta)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> PairCache:
        """Verify and read a cache written by :meth:`save`.

        Raises:
            ShiftlensError: naming the directory and the first inconsistency (missing or
                modified file, a tensor of the wrong shape, prompts and tensors that disagree).

        Example:
            >>> cache = PairCache.load("out/cache")  # doctest: +SKIP
        """
        d = Path(directory)
        where = repr(str(d))
        try:
            man = verify_directory(d, _CACHE_KIND)
        except ShiftlensError as e:
            if not (d / "cache.json").exists() and "manifest.json missing" in str(e):
                raise ShiftlensError(f"{where} holds no PairCache (cache.json missing)") from e
            raise
        meta = read_json(d / "cache.json", where=f"{where}: cache.json")
        tensors = read_tensors(d / "activations.safetensors", (man.get("record") or {})
                               .get("tensors"), where=f"{where}: activations.safetensors")
        try:
            prompts = []
            for i, rec in enumerate(meta["prompts"]):
                prompts.append(
                    TokenizedPrompt(
                        prompt=InstructionPrompt.from_dict(rec["prompt"]),
                        tokens=tensors[f"tokens/{i}"],
                        segments=tensors[f"segments/{i}"],
                        n_prompt=rec["n_prompt"],
                        offsets=tuple(tuple(o) for o in rec["offsets"]),
                        response=rec["response"],
                    )
                )
            n = len(prompts)
            data = {
                role: {name: [tensors[f"{role}/{name}/{i}"] for i in range(n)]
                       for name in meta["names"]}
                for role in ROLES
            }
            expected = 2 * n * (1 + len(meta["names"]))
            if len(tensors) != expected:
                raise ShiftlensError(f"{len(tensors)} tensors for {n} prompts x "
                                     f"{len(meta['names'])} hooks (expected {expected})")
            return cls(prompts, list(meta["names"]), meta["reduce"], dict(meta["model_names"]),
                       data)
        except ShiftlensError as e:
            raise ShiftlensError(f"{where}: {e}") from e
        except (KeyError, TypeError, ValueError) as e:
            raise ShiftlensError(f"{where}: cache.json and activations.safetensors disagree "
                                 f"({type(e).__name__}: {e})") from e


def run_hooks_batched(
    model: Any,
    tokenized: Sequence[TokenizedPrompt],
    names: Sequence[str],
    *,
    batch_size: int = 8,
    reduce: str | None = None,
    store_device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "capture",
    pad_id: int = 0,
    require_all: bool = True,
) -> dict[str, list[Tensor]]:
    """Run one model over tokenized prompts in right-padded batches, keeping reduced hooks.

    Args:
        require_all: Raise when a named hook does not fire; with ``False`` such hooks are left
            out of the result (a predicate selected them among hooks that exist but are not on
            this model's forward path, e.g. an unused rotary-embedding output).

    Returns:
        ``{hook_name: [per-prompt tensor, ...]}`` in the order of ``tokenized``.

    Example:
        >>> acts = run_hooks_batched(pair.base, tps, ["blocks.0.hook_resid_post"])  # doctest: +SKIP
    """
    if batch_size < 1:
        raise ShiftlensError(f"batch_size must be >= 1, got {batch_size}")
    if reduce not in REDUCTIONS:
        raise ShiftlensError(f"unknown reduce {reduce!r}; choose from {REDUCTIONS}")
    order = sorted(range(len(tokenized)), key=lambda i: -int(tokenized[i].tokens.shape[0]))
    results: dict[str, list[Tensor | None]] = {n: [None] * len(tokenized) for n in names}
    device = device_of(model)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        tps = [tokenized[i] for i in batch]
        lengths = [int(tp.tokens.shape[0]) for tp in tps]
        width = max(lengths)
        toks = torch.full((len(tps), width), pad_id, dtype=torch.long)
        seg = torch.full((len(tps), width), -1, dtype=torch.long)
        for j, tp in enumerate(tps):
            toks[j, : lengths[j]] = tp.tokens
            seg[j, : lengths[j]] = tp.segments
        n_prompt = [tp.n_prompt for tp in tps]

        def make_hook(
            name: str, seg: Tensor = seg, lengths: list[int] = lengths,
            n_prompt: list[int] = n_prompt, batch: list[int] = batch,
        ) -> Callable[..., Tensor]:
            def hook(act: Tensor, hook: Any = None) -> Tensor:
                reduced = _reduce(name, act.detach(), seg.to(act.device), lengths, n_prompt, reduce)
                for j, r in zip(batch, reduced):
                    results[name][j] = r.to(store_device).clone()
                return act

            return hook

        with torch.no_grad(), model.hooks(fwd_hooks=[(n, make_hook(n)) for n in names]):
            model(toks.to(device), return_type=None)
    for n in names:
        missing = [i for i, v in enumerate(results[n]) if v is None]
        if missing and require_all:
            raise ShiftlensError(f"hook {n!r} did not fire on {model_name(model)}")
        if missing and len(missing) == len(results[n]):
            del results[n]
        elif missing:
            raise ShiftlensError(f"hook {n!r} fired for some prompts of {model_name(model)} and "
                                 f"not for others (first missing: prompt {missing[0]})")
    return results  # type: ignore[return-value]


def capture_pair(
    pair: Any,
    prompts: Sequence[InstructionPrompt],
    names_filter: Any = None,
    *,
    batch_size: int = 8,
    reduce: str | None = None,
    with_reference: bool = True,
    progress: bool = True,
    store_device: str | torch.device = "cpu",
) -> PairCache:
    """Run base and tuned on the same tokens and cache the requested hooks of both.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts: Instruction prompts.
        names_filter: None (residual streams, attention patterns, MLP activations of every
            layer), a hook name, a list of hook names, or a predicate on hook names.
        batch_size: Prompts per forward pass (right-padded; results equal unbatched runs).
        reduce: None, ``"segment_mean"`` or ``"last"`` (see the module docstring).
        with_reference: Append each prompt's reference response (segment ``response``).
        progress: Show a progress bar.
        store_device: Where cached tensors are kept (default CPU).

    Returns:
        The :class:`PairCache`.

    Example:
        >>> cache = capture_pair(pair, prompts, reduce="segment_mean")  # doctest: +SKIP
    """
    if len(prompts) == 0:
        raise ShiftlensError("no prompts given")
    names = resolve_hook_names(pair.base, names_filter, pair.names["base"])
    resolve_hook_names(pair.tuned, names, pair.names["tuned"])
    tokenized = [
        pair.tokenize(p, response=(p.reference if with_reference and p.reference else None))
        for p in prompts
    ]
    pad_id = pad_token_id(pair.tokenizer)
    data = {}
    for role, model in pair:
        data[role] = run_hooks_batched(
            model,
            tokenized,
            names,
            batch_size=batch_size,
            reduce=reduce,
            store_device=store_device,
            progress=progress,
            desc=f"capture {role}",
            pad_id=pad_id,
            require_all=not callable(names_filter),
        )
    names = [n for n in names if all(n in data[r] for r in data)]
    cache = PairCache(tokenized, names, reduce, dict(pair.names), data)
    cache._models = {role: weakref.ref(model) for role, model in pair}
    return cache


def segment_mean(
    act: Float[Tensor, " pos *rest"], tp: TokenizedPrompt
) -> Float[Tensor, " seg *rest"]:
    """Mean of a per-position activation over each segment of a tokenized prompt (NaN if empty).

    Example:
        >>> segment_mean(torch.ones(tp.tokens.shape[0], 4), tp).shape  # doctest: +SKIP
        torch.Size([5, 4])
    """
    oh = _segment_onehot(tp.segments[None], act.dtype)[0]  # [pos, S]
    s = torch.einsum("p...,ps->s...", act, oh)
    c = oh.sum(0)
    return s / c.reshape(c.shape + (1,) * (s.dim() - 1))
