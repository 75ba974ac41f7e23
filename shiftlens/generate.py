"""The one greedy decoding of shiftlens: equal to a no-cache argmax loop, whatever the release.

Every response shiftlens generates (attribution's own responses, the residual lens's tuned
responses, the embedded pair's evaluation, the self-check) comes from :func:`greedy_batch` /
:func:`greedy`. The contract, identical everywhere:

* token ``t`` is ``argmax`` of the model's logits at the last position of ``prompt + t_<t``
  (a full, uncached forward pass defines the answer: :func:`argmax_loop`);
* decoding stops at the first stop token (default: the tokenizer's and the generation config's
  EOS ids), after ``max_new_tokens`` tokens, or when the sequence fills the context window;
* :attr:`Generation.tokens` never contains the stop token; :attr:`Generation.stop_token` says
  which one ended the response (``None`` when none did).

Why a module of its own. Incremental decoding with a key/value cache goes through the bridge's
attention components, and whether they extend the cache depends on the name under which the
installed ``transformers`` hands the cache to each attention layer (``past_key_values`` up to
5.23, ``cache`` from 5.24). TransformerLens 4.3 reads only the old name; under 5.24 the cache
stays empty, every decoding step attends to itself alone and all tokens after the first are
wrong (issue 12). Two layers protect against this and whatever a later release changes:

1. while decoding, the bridge's attention components receive the cache under both names
   (:func:`_cache_alias`), so the cached path works under both releases;
2. every cached decoding is **verified**: one uncached teacher-forced forward pass over
   ``prompt + response`` must give, at each response position, the token that was generated
   (for a causal model the logits at position ``i`` of that pass are exactly the no-cache
   loop's logits at step ``i``). Where it does not, the verified prefix is kept, decoding
   continues without the cache, a :class:`~shiftlens.ShiftlensWarning` names the installed
   versions, and the model is decoded without the cache from then on.

So the returned tokens always equal the no-cache argmax loop; the cache only makes them faster.
``benchmarks/generate.py`` measures what the verification and the fallback cost.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from shiftlens.errors import ShiftlensError, ShiftlensWarning

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "Generation",
    "argmax_loop",
    "cache_status",
    "greedy",
    "greedy_batch",
    "installed_versions",
    "stop_token_ids",
]

#: The default response length of every shiftlens function that generates.
DEFAULT_MAX_NEW_TOKENS = 32

# models whose cached decoding disagreed with the uncached forward: decoded without the cache
_CACHE_BROKEN: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
# models whose cached decoding has been verified at least once
_CACHE_VERIFIED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Generation:
    """One greedy response.

    Attributes:
        tokens: The generated token ids (CPU, ``long``), the stop token excluded.
        stop_token: The stop token that ended the response, or ``None`` when decoding ended at
            ``max_new_tokens`` or at the context window.
        cached: Whether the tokens came from (verified) cached decoding; ``False`` when they were
            computed without the key/value cache.

    Example:
        >>> g = Generation(torch.tensor([5, 7]), stop_token=2)
        >>> g.stopped, g.with_stop().tolist()
        (True, [5, 7, 2])
    """

    tokens: Int[Tensor, " n_new"]
    stop_token: int | None = None
    cached: bool = False

    @property
    def stopped(self) -> bool:
        """Whether a stop token ended the response."""
        return self.stop_token is not None

    def with_stop(self) -> Int[Tensor, " n_out"]:
        """The tokens followed by the stop token when there was one.

        Example:
            >>> Generation(torch.tensor([4]), None).with_stop().tolist()
            [4]
        """
        if self.stop_token is None:
            return self.tokens.clone()
        return torch.cat([self.tokens, torch.tensor([self.stop_token], dtype=torch.long)])


# ============================================================================ model access
def _is_bridge(model: Any) -> bool:
    return hasattr(model, "original_model") and hasattr(model, "cfg")


def _hf(model: Any) -> Any:
    return getattr(model, "original_model", model)


def _label(model: Any) -> str:
    name = getattr(getattr(model, "cfg", None), "model_name", None)
    if name is None:
        name = getattr(getattr(_hf(model), "config", None), "_name_or_path", None)
    return repr(str(name)) if name else type(model).__name__


def _input_device(model: Any) -> torch.device:
    """Where input ids go: the device of the input embedding (``cfg.device`` for a bridge)."""
    hf = _hf(model)
    emb = getattr(hf, "get_input_embeddings", lambda: None)()
    if emb is not None and getattr(emb, "weight", None) is not None:
        dev = emb.weight.device
        if dev.type != "meta":
            return dev
    cfg_dev = getattr(getattr(model, "cfg", None), "device", None)
    if cfg_dev is not None:
        return torch.device(cfg_dev)
    p = next(iter(hf.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _n_ctx(model: Any) -> int:
    n = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n is None:
        n = getattr(getattr(_hf(model), "config", None), "max_position_embeddings", None)
    return int(n) if n else 10**9


def stop_token_ids(model: Any) -> frozenset[int]:
    """The default stop tokens of a model: its tokenizer's and generation config's EOS ids.

    Args:
        model: A TransformerBridge or a Hugging Face causal LM.

    Returns:
        The set of token ids that end a response (empty when the model declares none).

    Example:
        >>> from shiftlens.zoo import toy_pair  # doctest: +SKIP
        >>> sorted(stop_token_ids(toy_pair().tuned))  # doctest: +SKIP
        [2]
    """
    ids: set[int] = set()
    tok = getattr(model, "tokenizer", None)
    if tok is not None and getattr(tok, "eos_token_id", None) is not None:
        ids.add(int(tok.eos_token_id))
    gc = getattr(_hf(model), "generation_config", None)
    e = getattr(gc, "eos_token_id", None)
    if isinstance(e, int):
        ids.add(e)
    elif isinstance(e, (list, tuple)):
        ids.update(int(i) for i in e)
    return frozenset(ids)


def _logits(model: Any, ids: Tensor, **cache_kwargs: Any) -> Tensor:
    """Logits ``[batch, pos, vocab]`` of one forward pass (bridge or Hugging Face model)."""
    if _is_bridge(model):
        out = model(ids, return_type="logits", **cache_kwargs)
        if isinstance(out, tuple):  # pragma: no cover - older bridges
            out = out[0]
        return out
    return _hf(model)(input_ids=ids, **cache_kwargs).logits


def _cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """Hand our cache object to the Hugging Face forward under the name this release uses."""
    try:
        params = inspect.signature(_hf(model).forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        params = {}
    name = "cache" if "cache" in params else "past_key_values"
    return {name: cache, "use_cache": True}


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=_hf(model).config)
    except TypeError:  # pragma: no cover - releases without the config argument
        return DynamicCache()


@contextlib.contextmanager
def _cache_alias(model: Any) -> Iterator[None]:
    """While decoding, give each bridge attention the cache under both of its names.

    TransformerLens 4.3's attention components look for ``past_key_values`` (or
    ``layer_past``); ``transformers`` >= 5.24 passes the cache to each attention layer as
    ``cache``. A forward pre-hook (a public torch mechanism, removed on exit) copies one name to
    the other. Verification (see the module docstring) guards whatever this cannot fix.
    """
    handles = []
    if _is_bridge(model):

        def alias(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
                kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
            return args, kwargs

        for module in _hf(model).modules():
            if hasattr(type(module), "_update_kv_cache"):
                handles.append(module.register_forward_pre_hook(alias, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ============================================================================ the reference
@torch.no_grad()
def argmax_loop(
    model: Any,
    tokens: Int[Tensor, " pos"],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    stop_ids: Iterable[int] | None = None,
) -> Generation:
    """The definition of greedy decoding: one full forward pass per token, no cache.

    Slow (quadratic in the response length) and independent of every cache mechanism; the
    self-check and the tests compare :func:`greedy` with it.

    Args:
        model: A TransformerBridge or a Hugging Face causal LM.
        tokens: Prompt token ids ``[pos]`` (BOS included where the model uses one).
        max_new_tokens: Most tokens to generate (>= 1).
        stop_ids: Stop tokens (default :func:`stop_token_ids`); ``[]`` never stops early.

    Returns:
        The :class:`Generation` (``cached=False``).

    Example:
        >>> g = argmax_loop(model, torch.tensor([1, 17, 42]), 4)  # doctest: +SKIP
    """
    return _uncached_batch(model, [_check_tokens(tokens, model)], _check_n(max_new_tokens),
                           _stops(model, stop_ids))[0]


# ============================================================================ public API
def greedy(
    model: Any,
    tokens: Int[Tensor, " pos"],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    stop_ids: Iterable[int] | None = None,
    use_cache: bool = True,
) -> Generation:
    """Greedy response of one model to one prompt (equal to :func:`argmax_loop`).

    Args:
        model: A TransformerBridge or a Hugging Face causal LM.
        tokens: Prompt token ids ``[pos]`` (BOS included where the model uses one).
        max_new_tokens: Most tokens to generate (>= 1).
        stop_ids: Stop tokens (default :func:`stop_token_ids`); ``[]`` never stops early.
        use_cache: Decode with the key/value cache, verified by one uncached forward pass
            (default), or without it.

    Returns:
        The :class:`Generation`.

    Example:
        >>> from shiftlens.zoo import toy_pair  # doctest: +SKIP
        >>> pair = toy_pair()  # doctest: +SKIP
        >>> p = toy_prompts(1)[0]  # doctest: +SKIP
        >>> g = greedy(pair.tuned, pair.tokenize(p).tokens, 12)  # doctest: +SKIP
        >>> pair.tokenizer.decode(g.tokens)  # doctest: +SKIP
    """
    return greedy_batch(model, [tokens], max_new_tokens, stop_ids=stop_ids,
                        use_cache=use_cache)[0]


def greedy_batch(
    model: Any,
    prompts: Sequence[Int[Tensor, " _pos"]],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    stop_ids: Iterable[int] | None = None,
    use_cache: bool = True,
    batch_size: int = 16,
) -> list[Generation]:
    """Greedy responses of one model to many prompts (each equal to :func:`argmax_loop`).

    Prompts of equal length are decoded together (no padding enters a cached pass); the answer
    does not depend on ``batch_size`` beyond float rounding.

    Args:
        model: A TransformerBridge or a Hugging Face causal LM.
        prompts: Prompt token ids, one ``[pos]`` tensor per prompt.
        max_new_tokens: Most tokens per response (>= 1).
        stop_ids: Stop tokens (default :func:`stop_token_ids`); ``[]`` never stops early.
        use_cache: Decode with the verified key/value cache (default) or without it.
        batch_size: Most prompts per forward pass.

    Returns:
        One :class:`Generation` per prompt, in order.

    Example:
        >>> gens = greedy_batch(pair.tuned, [pair.tokenize(p).tokens for p in prompts], 12)  # doctest: +SKIP
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ShiftlensError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    n_new = _check_n(max_new_tokens)
    toks = [_check_tokens(t, model, i) for i, t in enumerate(prompts)]
    stops = _stops(model, stop_ids)
    out: list[Generation | None] = [None] * len(toks)
    cached = bool(use_cache) and model not in _CACHE_BROKEN
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(toks):
        groups.setdefault(int(t.shape[0]), []).append(i)
    for _, idx in sorted(groups.items()):
        for b in range(0, len(idx), batch_size):
            chunk = idx[b : b + batch_size]
            batch = [toks[i] for i in chunk]
            if cached and model not in _CACHE_BROKEN:
                gens = _cached_verified(model, batch, n_new, stops)
            else:
                gens = _uncached_batch(model, batch, n_new, stops)
            for i, g in zip(chunk, gens):
                out[i] = g
    return [g for g in out if g is not None]


def cache_status(model: Any) -> str:
    """How :func:`greedy` decodes this model: ``"verified"``, ``"unverified"`` or ``"broken: ..."``.

    ``"broken: ..."`` (with the reason) means a cached decoding disagreed with the uncached
    forward pass, so the model is decoded without the cache.

    Example:
        >>> cache_status(pair.tuned)  # doctest: +SKIP
        'verified'
    """
    if model in _CACHE_BROKEN:
        return f"broken: {_CACHE_BROKEN[model]}"
    return "verified" if _CACHE_VERIFIED.get(model) else "unverified"


# ============================================================================ internals
def _check_n(n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ShiftlensError(f"max_new_tokens must be an integer >= 1, got {n!r}")
    return n


def _check_tokens(t: Any, model: Any, i: int | None = None) -> Tensor:
    where = "prompt" if i is None else f"prompt {i}"
    if not isinstance(t, Tensor):
        raise ShiftlensError(f"{where}: token ids must be a torch tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise ShiftlensError(f"{where}: token ids must be integers, got dtype {t.dtype}")
    if t.dim() != 1 or t.shape[0] < 1:
        raise ShiftlensError(f"{where}: token ids must be a non-empty 1-D tensor, got shape "
                             f"{tuple(t.shape)}")
    t = t.detach().cpu().long()
    vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if vocab is None:
        vocab = getattr(getattr(_hf(model), "config", None), "vocab_size", None)
    if vocab is not None and (int(t.min()) < 0 or int(t.max()) >= int(vocab)):
        raise ShiftlensError(f"{where}: token ids must lie in [0, {vocab}) for model "
                             f"{_label(model)}, got {int(t.min())}..{int(t.max())}")
    if t.shape[0] >= _n_ctx(model):
        raise ShiftlensError(f"{where}: {t.shape[0]} tokens leave no room to generate in the "
                             f"context window of {_n_ctx(model)} of model {_label(model)}")
    return t


def _stops(model: Any, stop_ids: Iterable[int] | None) -> frozenset[int]:
    if stop_ids is None:
        return stop_token_ids(model)
    try:
        return frozenset(int(s) for s in stop_ids)
    except (TypeError, ValueError) as e:
        raise ShiftlensError(f"stop_ids must be token ids, got {stop_ids!r}") from e


def _finish(rows: list[list[int]], stops: frozenset[int], cached: bool) -> list[Generation]:
    out = []
    for r in rows:
        stop = next((k for k, t in enumerate(r) if t in stops), None)
        if stop is None:
            out.append(Generation(torch.tensor(r, dtype=torch.long), None, cached))
        else:
            out.append(Generation(torch.tensor(r[:stop], dtype=torch.long), int(r[stop]), cached))
    return out


@torch.no_grad()
def _uncached_batch(
    model: Any, prompts: list[Tensor], n_new: int, stops: frozenset[int],
    prefix: list[list[int]] | None = None,
) -> list[Generation]:
    """The no-cache loop, batched with right padding (exact for causal models)."""
    dev = _input_device(model)
    n_ctx = _n_ctx(model)
    seqs = [p.tolist() + (list(prefix[i]) if prefix else []) for i, p in enumerate(prompts)]
    new = [list(prefix[i]) if prefix else [] for i in range(len(prompts))]
    done = [bool(n and n[-1] in stops) or len(n) >= n_new for n in new]
    while True:
        active = [i for i, d in enumerate(done) if not d and len(seqs[i]) < n_ctx]
        if not active:
            break
        lengths = [len(seqs[i]) for i in active]
        batch = torch.zeros((len(active), max(lengths)), dtype=torch.long)
        for j, i in enumerate(active):
            batch[j, : lengths[j]] = torch.tensor(seqs[i])
        logits = _logits(model, batch.to(dev))
        last = logits[torch.arange(len(active), device=logits.device),
                      torch.tensor(lengths, device=logits.device) - 1]
        nxt = last.argmax(-1).tolist()
        for j, i in enumerate(active):
            seqs[i].append(int(nxt[j]))
            new[i].append(int(nxt[j]))
            if nxt[j] in stops or len(new[i]) >= n_new:
                done[i] = True
    return _finish(new, stops, cached=False)


@torch.no_grad()
def _cached_rows(model: Any, prompts: list[Tensor], n_new: int, stops: frozenset[int]
                 ) -> list[list[int]]:
    """Greedy decoding of equal-length prompts with the key/value cache (unverified)."""
    dev = _input_device(model)
    room = _n_ctx(model) - int(prompts[0].shape[0])
    steps = min(n_new, room)
    batch = torch.stack(prompts).to(dev)
    cache = _new_cache(model)
    kw = _cache_kwargs(model, cache)
    rows: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    with _cache_alias(model):
        logits = _logits(model, batch, **kw)
        for step in range(steps):
            nxt = logits[:, -1].argmax(-1)
            for j, t in enumerate(nxt.tolist()):
                if not done[j]:
                    rows[j].append(int(t))
                    done[j] = t in stops
            if all(done) or step + 1 == steps:
                break
            logits = _logits(model, nxt[:, None].to(dev), **kw)
    return rows


@torch.no_grad()
def _first_disagreement(model: Any, prompts: list[Tensor], rows: list[list[int]]
                        ) -> list[tuple[int, int] | None]:
    """Teacher-forced check: per row, ``(k, argmax)`` at the first position where the uncached
    forward's argmax differs from the generated token, or ``None`` when all agree."""
    dev = _input_device(model)
    n_p = int(prompts[0].shape[0])
    need = [r for r in rows if r]
    out: list[tuple[int, int] | None] = [None] * len(rows)
    if not need:
        return out
    width = n_p + max(len(r) for r in rows) - 1
    batch = torch.zeros((len(rows), width), dtype=torch.long)
    for j, (p, r) in enumerate(zip(prompts, rows)):
        seq = p.tolist() + r[:-1]
        batch[j, : len(seq)] = torch.tensor(seq)
    logits = _logits(model, batch.to(dev))
    pred = logits[:, n_p - 1 :].argmax(-1).cpu()
    for j, r in enumerate(rows):
        for k, t in enumerate(r):
            if int(pred[j, k]) != t:
                out[j] = (k, int(pred[j, k]))
                break
    return out


def installed_versions() -> dict[str, str]:
    """Installed versions of torch, transformers, transformer-lens and shiftlens.

    Recorded in every self-check, every Result's ``meta`` and every decoding warning.

    Example:
        >>> sorted(installed_versions())
        ['shiftlens', 'torch', 'transformer-lens', 'transformers']
    """
    from importlib.metadata import PackageNotFoundError, version

    from shiftlens._version import __version__

    out = {}
    for pkg in ("torch", "transformers", "transformer-lens"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "not installed"
    out["shiftlens"] = __version__
    return out


def _versions() -> str:
    v = installed_versions()
    return ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "transformer-lens"))


def _cached_verified(model: Any, prompts: list[Tensor], n_new: int, stops: frozenset[int]
                     ) -> list[Generation]:
    rows = _cached_rows(model, prompts, n_new, stops)
    bad = _first_disagreement(model, prompts, rows)
    if not any(b is not None for b in bad):
        _CACHE_VERIFIED[model] = True
        return _finish(rows, stops, cached=True)
    j = next(i for i, b in enumerate(bad) if b is not None)
    k, want = bad[j]  # type: ignore[misc]
    reason = (f"cached decoding gave token {rows[j][k]} at response position {k} where the "
              f"uncached forward pass gives {want} ({_versions()})")
    _CACHE_BROKEN[model] = reason
    warnings.warn(
        f"model {_label(model)}: {reason}; shiftlens decodes this model without the key/value "
        "cache from now on (same tokens as before the fault, slower)",
        ShiftlensWarning,
        stacklevel=4,
    )
    # keep each row's verified prefix, then continue without the cache
    prefix = [r if b is None else r[: b[0]] + [b[1]] for r, b in zip(rows, bad)]
    return _uncached_batch(model, prompts, n_new, stops, prefix=prefix)
