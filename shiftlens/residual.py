"""Residual-stream and output shift, and where in depth the shift lives (cross-model patching).

Three views of a base/tuned pair that go beyond the three lenses of Wu et al. (2024), "From
Language Modeling to Instruction Following: Understanding the Behavior Shift in LLMs after
Instruction Tuning" (NAACL 2024):

* :func:`similarity` - how far the two residual streams drift apart, layer by layer
  (``resid_pre``/``resid_mid``/``resid_post``) and segment by segment: the cosine similarity of
  the two models' vectors at the same position, and linear CKA (Kornblith et al., 2019) over
  the positions of a segment.
* :func:`output_shift` - the logit lens (each model's own final norm + unembedding applied to
  each layer's residual stream), the per-token KL(tuned || base) of the next-token
  distributions at the output and at every layer, and the vocabulary tokens whose probability
  rose most (each token's share of the KL, aggregated over a prompt set).
* :func:`patching` - cross-model activation patching: run the base model while replacing its
  residual stream, attention output or MLP output at layer ``l`` (at chosen positions) with the
  tuned model's activation on the same tokens, and measure which fraction of the tuned-vs-base
  gap in the log-probability of the tuned model's response is recovered; and the reverse
  (the tuned model run with base activations).

Layer (1) functions work on one ``TransformerBridge`` (:func:`logit_lens`, :func:`lens_logits`,
:func:`patched_logits`, :func:`greedy_response`, :func:`response_logprob`) or on tensors
(:func:`cosine_per_position`, :func:`linear_cka`, :func:`kl_divergence`); layer (2) functions
take a :class:`shiftlens.ModelPair`; layer (3) are the Result classes.

Which weights: activations are whatever the bridges compute (raw checkpoint weights by default,
so they equal the Hugging Face model's). The logit lens calls each model's own ``ln_final``
and ``unembed`` modules (plus the final logit soft-cap where the config has one, as Gemma 2
does), so applied to the last ``resid_post`` it reproduces the model's logits exactly.

Memory stays bounded by one batch: activations are reduced to statistics batch by batch and
discarded; the lens is applied to chunks of positions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.capture import run_hooks_batched
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.generate import greedy, greedy_batch
from shiftlens.io import load_bundle, save_bundle
from shiftlens.pair import SHAPE_FIELDS
from shiftlens.prompts import RESPONSE, SEGMENTS, InstructionPrompt, TokenizedPrompt
from shiftlens.stats import bootstrap_ci

__all__ = [
    "RESID_HOOKS",
    "COMPONENTS",
    "DIRECTIONS",
    "cosine_per_position",
    "linear_cka",
    "kl_divergence",
    "logit_lens",
    "lens_logits",
    "greedy_response",
    "response_logprob",
    "patched_logits",
    "check_pair_compatible",
    "similarity",
    "output_shift",
    "patching",
    "SimilarityResult",
    "OutputShiftResult",
    "PatchingResult",
]

#: Residual-stream hooks compared by :func:`similarity` (TL names without ``blocks.{l}.``).
RESID_HOOKS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")

#: Patchable components and their TL hook (``{l}`` is the layer).
COMPONENTS: dict[str, str] = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
}

#: Patching directions: ``"tuned->base"`` runs the base model with tuned activations patched
#: in; ``"base->tuned"`` runs the tuned model with base activations.
DIRECTIONS: tuple[str, ...] = ("tuned->base", "base->tuned")

#: Segment names used in results: the token segments plus ``"all"`` (every position).
RESULT_SEGMENTS: tuple[str, ...] = (*SEGMENTS, "all")

Positions = Union[str, Sequence[Union[str, int]]]


# ====================================================================== helpers
def _mname(model: Any) -> str:
    return str(getattr(getattr(model, "cfg", None), "model_name", None) or type(model).__name__)


def _device(model: Any) -> torch.device:
    dev = getattr(model.cfg, "device", None)
    if dev is None:
        p = next(iter(model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")
    return torch.device(dev)


def _pad_id(pair: Any) -> int:
    tok = pair.tokenizer
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    return int(tok.eos_token_id or 0)


def _label(tp: TokenizedPrompt) -> str:
    """The prompt's label for error messages (its quoted id or the start of its text)."""
    return tp.prompt.label


def _pid(tp: TokenizedPrompt, index: int) -> str:
    """The prompt's id for result frames (``prompt{index}`` when it has none)."""
    return tp.prompt.id or f"prompt{index}"


def _nanmean(x: np.ndarray) -> float:
    """Mean of the finite values (NaN when there are none; never a numpy warning)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def _check_prompts(prompts: Sequence[InstructionPrompt]) -> None:
    if len(prompts) == 0:
        raise ShiftlensError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, InstructionPrompt):
            raise ShiftlensError(
                f"prompt {i} is a {type(p).__name__}, not an InstructionPrompt"
            )


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ShiftlensError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def _layers_arg(layers: Sequence[int] | None, n_layers: int, who: str) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise ShiftlensError(f"{who}: layer {layer!r} is not an integer")
        if not 0 <= int(layer) < n_layers:
            raise ShiftlensError(f"{who}: layer {layer} out of range (n_layers={n_layers})")
        out.append(int(layer))
    if not out:
        raise ShiftlensError(f"{who}: empty list of layers")
    return list(dict.fromkeys(out))


def _padded(
    tps: Sequence[TokenizedPrompt], pad_id: int
) -> tuple[Int[Tensor, "batch pos"], list[int]]:
    lengths = [int(tp.tokens.shape[0]) for tp in tps]
    toks = torch.full((len(tps), max(lengths)), pad_id, dtype=torch.long)
    for j, tp in enumerate(tps):
        toks[j, : lengths[j]] = tp.tokens
    return toks, lengths


def _batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


def check_pair_compatible(pair: Any) -> None:
    """Raise :class:`ShiftlensError` unless both models can be compared position by position.

    Checks what cross-model comparisons need even on a pair built with ``check=False``: equal
    shapes (layers, heads, widths, vocabulary), the same tokenizer vocabulary, and the same
    device and dtype (nothing is moved silently).

    Args:
        pair: A :class:`shiftlens.ModelPair`.

    Raises:
        ShiftlensError: naming the field and both models.

    Example:
        >>> check_pair_compatible(pair)  # doctest: +SKIP
    """
    for attr in ("base", "tuned", "tokenize", "tokenizer"):
        if not hasattr(pair, attr):
            raise ShiftlensError(f"expected a shiftlens.ModelPair, got {type(pair).__name__}")
    b, t = pair.base, pair.tuned
    who = f"base {_mname(b)!r} vs tuned {_mname(t)!r}"
    for fld in SHAPE_FIELDS:
        vb, vt = getattr(b.cfg, fld, None), getattr(t.cfg, fld, None)
        if fld == "n_key_value_heads":
            vb, vt = vb or b.cfg.n_heads, vt or t.cfg.n_heads
        if vb != vt:
            raise ShiftlensError(
                f"incompatible pair ({who}): {fld} {vb} != {vt}; cross-model comparison needs "
                "the same architecture"
            )
    tb, tt = b.tokenizer, t.tokenizer
    if tb is None or tt is None:
        raise ShiftlensError(f"incompatible pair ({who}): a model has no tokenizer")
    if tb is not tt:
        if len(tb) != len(tt) or tb.get_vocab() != tt.get_vocab():
            raise ShiftlensError(
                f"incompatible pair ({who}): the tokenizers' vocabularies differ "
                f"({len(tb)} vs {len(tt)} entries); both models must read the same tokens"
            )
        if tb.bos_token_id != tt.bos_token_id:
            raise ShiftlensError(
                f"incompatible pair ({who}): BOS ids {tb.bos_token_id} != {tt.bos_token_id}"
            )
    if _device(b) != _device(t):
        raise ShiftlensError(
            f"incompatible pair ({who}): devices {_device(b)} != {_device(t)}; load both on "
            "one device"
        )
    db, dt = getattr(b.cfg, "dtype", None), getattr(t.cfg, "dtype", None)
    if db is not None and dt is not None and db != dt:
        raise ShiftlensError(f"incompatible pair ({who}): dtypes {db} != {dt}")


# ====================================================================== (1) tensors
def cosine_per_position(
    a: Float[Tensor, "pos d_model"], b: Float[Tensor, "pos d_model"]
) -> Float[Tensor, " pos"]:
    """Cosine similarity of two models' residual vectors at each position (in float64).

    A zero vector gives NaN (the angle is undefined).

    Args:
        a: One model's activations ``[pos, d_model]``.
        b: The other model's, at the same positions.

    Returns:
        ``[pos]`` cosine similarities (float64, on ``a``'s device).

    Example:
        >>> x = torch.randn(4, 8)
        >>> torch.allclose(cosine_per_position(x, 2 * x), torch.ones(4, dtype=torch.float64))
        True
    """
    if a.shape != b.shape:
        raise ShiftlensError(f"cosine: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    x, y = a.double(), b.to(a.device).double()
    num = (x * y).sum(-1)
    den = x.norm(dim=-1) * y.norm(dim=-1)
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(num, float("nan")))


def linear_cka(x: Float[Tensor, "n d1"], y: Float[Tensor, "n d2"]) -> float:
    """Linear CKA (Kornblith et al., 2019) between two representations of the same n items.

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc, Yc``;
    computed through the ``n x n`` Gram matrices when ``n`` is smaller than the widths. It is
    invariant to orthogonal transforms and isotropic scaling of either side. Fewer than 3 items,
    or a constant representation, give NaN (CKA of two centred points is always 1).

    Args:
        x: ``[n, d1]`` (e.g. base residual vectors at n positions).
        y: ``[n, d2]`` (the tuned model's, same positions).

    Returns:
        CKA in [0, 1], or NaN.

    Example:
        >>> x = torch.randn(10, 6)
        >>> q, _ = torch.linalg.qr(torch.randn(6, 6))
        >>> round(linear_cka(x, 3 * x @ q), 6)
        1.0
    """
    if x.shape[0] != y.shape[0]:
        raise ShiftlensError(f"CKA: different numbers of items {x.shape[0]} vs {y.shape[0]}")
    n = int(x.shape[0])
    if n < 3:
        return float("nan")
    xc = x.double() - x.double().mean(0, keepdim=True)
    yc = y.to(x.device).double()
    yc = yc - yc.mean(0, keepdim=True)
    if n <= min(x.shape[1], y.shape[1]):
        k, l_ = xc @ xc.T, yc @ yc.T
        num = (k * l_).sum()
        den = torch.sqrt((k * k).sum() * (l_ * l_).sum())
    else:
        num = (yc.T @ xc).pow(2).sum()
        den = torch.sqrt((xc.T @ xc).pow(2).sum() * (yc.T @ yc).pow(2).sum())
    den_f = float(den)
    if not den_f > 0 or not math.isfinite(den_f):
        return float("nan")
    return float(num) / den_f


def kl_divergence(
    logp: Float[Tensor, "*rows vocab"], logq: Float[Tensor, "*rows vocab"]
) -> Float[Tensor, " *rows"]:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) of each row of log-probabilities.

    Args:
        logp: Log-probabilities of p (e.g. the tuned model's, ``log_softmax`` of its logits).
        logq: Log-probabilities of q (the base model's).

    Returns:
        One KL value (nats) per row, in the inputs' dtype.

    Example:
        >>> lp = torch.log_softmax(torch.randn(3, 5), -1)
        >>> kl_divergence(lp, lp).abs().max().item()
        0.0
    """
    p = logp.exp()
    diff = torch.where(p > 0, logp - logq, torch.zeros_like(logp))
    return (p * diff).sum(-1)


# ====================================================================== (1) one model
def logit_lens(
    model: Any, resid: Float[Tensor, "*rows d_model"]
) -> Float[Tensor, "*rows d_vocab"]:
    """Apply a model's own final norm and unembedding (and final soft-cap) to residual vectors.

    For the last layer's ``resid_post`` this equals the model's logits (tested on GPT-2, Llama,
    Qwen2 and Gemma 2 bridges, raw and compatibility-mode weights).

    Args:
        model: A TransformerBridge.
        resid: Residual-stream vectors ``[..., d_model]`` on the model's device and dtype.

    Returns:
        Logits ``[..., d_vocab]``.

    Example:
        >>> logits = logit_lens(pair.base, cache["blocks.3.hook_resid_post"])  # doctest: +SKIP
    """
    if resid.shape[-1] != model.cfg.d_model:
        raise ShiftlensError(
            f"{_mname(model)}: residual width {resid.shape[-1]} != d_model {model.cfg.d_model}"
        )
    with torch.no_grad():
        logits = model.unembed(model.ln_final(resid))
        cap = getattr(model.cfg, "output_logits_soft_cap", None) or 0.0
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
    return logits


def _forward(
    model: Any,
    toks: Int[Tensor, "batch pos"],
    capture: Sequence[str] = (),
    patch: dict[str, Callable[..., Tensor]] | None = None,
    return_logits: bool = True,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """One forward pass with optional captured and patched hooks (no grad)."""
    acts: dict[str, Tensor] = {}

    def make_cap(name: str) -> Callable[..., Tensor]:
        def hook(act: Tensor, hook: Any = None) -> Tensor:
            acts[name] = act.detach()
            return act

        return hook

    fwd = [(n, make_cap(n)) for n in capture]
    fwd += list((patch or {}).items())
    with torch.no_grad(), model.hooks(fwd_hooks=fwd):
        out = model(toks, return_type="logits" if return_logits else None)
    missing = [n for n in capture if n not in acts]
    if missing:
        raise ShiftlensError(f"{_mname(model)}: hook {missing[0]!r} did not fire")
    return out, acts


def lens_logits(
    model: Any,
    tokens: Int[Tensor, " pos"],
    *,
    layers: Sequence[int] | None = None,
    hook: str = "resid_post",
) -> Float[Tensor, "layer pos d_vocab"]:
    """The logit lens of one prompt at several layers of one model.

    Args:
        model: A TransformerBridge.
        tokens: Token ids ``[pos]`` (e.g. ``pair.tokenize(prompt).tokens``).
        layers: Layers to read (default all).
        hook: ``"resid_pre"``, ``"resid_mid"`` or ``"resid_post"``.

    Returns:
        ``[len(layers), pos, d_vocab]`` lens logits (on the model's device).

    Example:
        >>> ll = lens_logits(pair.tuned, pair.tokenize(prompt).tokens)  # doctest: +SKIP
        >>> pair.tokenizer.decode(ll[-1, -1].argmax())  # doctest: +SKIP
    """
    if hook not in RESID_HOOKS:
        raise ShiftlensError(f"lens hook must be one of {RESID_HOOKS}, got {hook!r}")
    ls = _layers_arg(layers, model.cfg.n_layers, _mname(model))
    names = [COMPONENTS[hook].format(l=layer) for layer in ls]
    _, acts = _forward(model, tokens[None].to(_device(model)), names, return_logits=False)
    return torch.stack([logit_lens(model, acts[n][0]) for n in names])


def greedy_response(
    model: Any,
    tokens: Int[Tensor, " pos"],
    *,
    max_new_tokens: int = 16,
    eos_token_id: int | None = None,
) -> Int[Tensor, " n_new"]:
    """Deprecated: use :func:`shiftlens.generate.greedy` (the one greedy decoding).

    Kept for code written against 0.1: the generated ids with the stop token kept
    (``greedy(...).with_stop()``).

    Example:
        >>> ids = greedy_response(pair.tuned, pair.tokenize(prompt).tokens)  # doctest: +SKIP
    """
    warnings.warn("shiftlens.residual.greedy_response is deprecated; use "
                  "shiftlens.generate.greedy", DeprecationWarning, stacklevel=2)
    stops = None if eos_token_id is None else [eos_token_id]
    return greedy(model, tokens, max_new_tokens, stop_ids=stops).with_stop()


def response_logprob(
    logits: Float[Tensor, "pos d_vocab"], tokens: Int[Tensor, " pos"], n_prompt: int
) -> float:
    """Teacher-forced log-probability (nats) of the response ``tokens[n_prompt:]``.

    Args:
        logits: One sequence's logits ``[pos, d_vocab]``.
        tokens: The sequence ``[pos]`` (prompt + response).
        n_prompt: Number of prompt positions; the response starts there.

    Returns:
        ``sum_t log p(tokens[t] | tokens[:t])`` over response positions.

    Example:
        >>> logits = pair.tuned(tp.tokens[None])[0]  # doctest: +SKIP
        >>> response_logprob(logits, tp.tokens, tp.n_prompt)  # doctest: +SKIP
    """
    n = int(tokens.shape[0])
    if not 1 <= n_prompt < n:
        raise ShiftlensError(f"response_logprob: need 1 <= n_prompt < {n}, got {n_prompt}")
    rows = logits[n_prompt - 1 : n - 1].double()
    lp = torch.log_softmax(rows, -1)
    tgt = tokens[n_prompt:n].to(lp.device)
    return float(lp.gather(-1, tgt[:, None]).sum())


def patched_logits(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    hook_name: str,
    source: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos d_vocab"]:
    """Run a model while replacing one hook's activation by ``source`` where ``mask`` is true.

    Args:
        model: The model to run (e.g. the base model).
        tokens: Token ids ``[batch, pos]``.
        hook_name: A TL hook whose activation is ``[batch, pos, d_model]`` (e.g.
            ``"blocks.3.hook_resid_pre"``, ``"blocks.3.hook_attn_out"``).
        source: Replacement activations (e.g. the tuned model's at the same hook and tokens).
        mask: Positions to replace.

    Returns:
        The patched run's logits.

    Raises:
        ShiftlensError: the hook does not exist or its activation's shape, dtype or device
            differs from ``source``'s.

    Example:
        >>> logits = patched_logits(pair.base, toks, "blocks.1.hook_resid_post", src, mask)  # doctest: +SKIP
    """
    if hook_name not in model.hook_dict:
        raise ShiftlensError(f"{_mname(model)} has no hook {hook_name!r}")
    fn = _patch_hook(_mname(model), hook_name, source, mask)
    logits, _ = _forward(model, tokens, patch={hook_name: fn})
    assert logits is not None
    return logits


def _patch_hook(
    who: str, hook_name: str, source: Tensor, mask: Tensor
) -> Callable[..., Tensor]:
    def hook(act: Tensor, hook: Any = None) -> Tensor:
        if act.shape != source.shape:
            raise ShiftlensError(
                f"{who}: cannot patch {hook_name}: activation shape {tuple(act.shape)} != "
                f"source shape {tuple(source.shape)} (incompatible models?)"
            )
        if act.dtype != source.dtype or act.device != source.device:
            raise ShiftlensError(
                f"{who}: cannot patch {hook_name}: activation {act.dtype}/{act.device} vs "
                f"source {source.dtype}/{source.device} (nothing is converted silently)"
            )
        m = mask.to(act.device).reshape(mask.shape + (1,) * (act.dim() - mask.dim()))
        return torch.where(m, source, act)

    return hook


# ====================================================================== results: shared
def _bootstrap_mean(x: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float, int]:
    a = np.asarray(x, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    lo, hi = bootstrap_ci(a, n_boot=n_boot, seed=seed)
    return float(a.mean()), lo, hi, int(a.size)


def _new_figure(nrows: int, ncols: int, w: float | int, h: float | int) -> tuple[Any, Any]:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and not _has_display():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(w, h), squeeze=False)
    return fig, axes


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _has_display() -> bool:
    import os

    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# ====================================================================== similarity
@dataclass
class SimilarityResult:
    """Residual-stream similarity of base and tuned, per prompt, layer, hook and segment.

    Attributes:
        frame: One row per (prompt, layer, hook, segment): ``cosine`` (mean over the segment's
            positions of the per-position cosine), ``cka`` (linear CKA over the segment's
            positions; NaN below 3 positions) and ``n_positions``.
        tokens: With ``per_token=True``, one row per (prompt, position, layer, hook) with the
            position's cosine; otherwise an empty frame.
        meta: Model names, settings, seed.

    Example:
        >>> res = similarity(pair, prompts)  # doctest: +SKIP
        >>> res.summary()["sentence"]  # doctest: +SKIP
    """

    frame: pd.DataFrame
    tokens: pd.DataFrame
    meta: dict[str, Any]

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt, layer, hook and segment.

        Example:
            >>> res.to_frame().query("segment == 'response'")  # doctest: +SKIP
        """
        return self.frame.copy()

    def table(self) -> pd.DataFrame:
        """Means over prompts with bootstrap 95% CIs, per hook, segment and layer.

        Example:
            >>> res.table().head()  # doctest: +SKIP
        """
        rows = []
        n_boot, seed = int(self.meta.get("n_boot", 2000)), int(self.meta.get("seed", 0))
        for (hook, seg, layer), g in self.frame.groupby(["hook", "segment", "layer"], sort=True):
            cm, clo, chi, n = _bootstrap_mean(g["cosine"].to_numpy(), n_boot, seed)
            km, klo, khi, nk = _bootstrap_mean(g["cka"].to_numpy(), n_boot, seed)
            rows.append(
                dict(hook=hook, segment=seg, layer=int(layer), depth=_depth(int(layer), hook),
                     cosine=cm, cosine_low=clo, cosine_high=chi, n_cosine=n,
                     cka=km, cka_low=klo, cka_high=khi, n_cka=nk)
            )
        return pd.DataFrame(rows).sort_values(["segment", "depth"]).reset_index(drop=True)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: where (depth) and on which segment the streams drift apart most.

        Returns:
            A dict with ``final`` (per segment: cosine and CKA at the last ``resid_post``
            with CIs), ``lowest`` (the depth with the lowest mean cosine over all positions),
            ``per_layer`` (mean cosine at each layer's ``resid_post``, all positions) and a
            ``sentence``.

        Example:
            >>> print(res.summary()["sentence"])  # doctest: +SKIP
        """
        t = self.table()
        n_layers = int(self.meta["n_layers"])
        out: dict[str, Any] = {"models": self.meta["model_names"], "n_prompts": self.meta["n_prompts"]}
        final: dict[str, Any] = {}
        last = t[(t.hook == "resid_post") & (t.layer == t.layer.max())]
        for _, r in last.iterrows():
            if r.n_cosine == 0:
                continue
            final[r.segment] = dict(
                layer=int(r.layer), cosine=r.cosine, cosine_ci=[r.cosine_low, r.cosine_high],
                cka=r.cka, cka_ci=[r.cka_low, r.cka_high], n_prompts=int(r.n_cosine),
            )
        out["final"] = final
        allp = t[(t.segment == "all") & (t.n_cosine > 0)]
        out["per_layer"] = {
            int(r.layer): r.cosine for _, r in allp[allp.hook == "resid_post"].iterrows()
        }
        if len(allp) and allp.cosine.notna().any():
            r = allp.loc[allp.cosine.idxmin()]
            out["lowest"] = dict(layer=int(r.layer), hook=r.hook, cosine=r.cosine,
                                 cosine_ci=[r.cosine_low, r.cosine_high])
            segs = {s: v["cosine"] for s, v in final.items() if s not in ("all", "bos")}
            seg_txt = ""
            if segs:
                worst = min(segs, key=lambda s: segs[s] if np.isfinite(segs[s]) else np.inf)
                seg_txt = (f"; at the last layer the {worst} segment has drifted most "
                           f"(cosine {segs[worst]:.3f})")
            out["sentence"] = (
                f"Over {self.meta['n_prompts']} prompts and {n_layers} layers, the residual "
                f"streams are least similar at blocks.{int(r.layer)}.hook_{r.hook} "
                f"(mean cosine {r.cosine:.3f}, 95% CI [{r.cosine_low:.3f}, "
                f"{r.cosine_high:.3f}]){seg_txt}."
            )
        else:
            out["sentence"] = "No finite similarity values."
        return out

    def show(self, metric: str = "both") -> Any:
        """Line figure per segment: similarity against depth (pre/mid/post of each layer).

        Args:
            metric: ``"cosine"``, ``"cka"`` or ``"both"`` (two rows).

        Returns:
            A matplotlib Figure.

        Example:
            >>> res.show().savefig("similarity.png")  # doctest: +SKIP
        """
        if metric not in ("cosine", "cka", "both"):
            raise ShiftlensError(f"metric must be 'cosine', 'cka' or 'both', got {metric!r}")
        t = self.table()
        segs = [s for s in RESULT_SEGMENTS if s in set(t.segment[t.n_cosine > 0])]
        metrics = ["cosine", "cka"] if metric == "both" else [metric]
        fig, axes = _new_figure(len(metrics), max(1, len(segs)), 3.2 * max(1, len(segs)),
                                2.8 * len(metrics))
        for i, m in enumerate(metrics):
            for j, s in enumerate(segs):
                ax = axes[i][j]
                g = t[t.segment == s].sort_values("depth")
                if not g[m].notna().any():
                    ax.text(0.5, 0.5, "undefined\n(< 3 positions)" if m == "cka" else "undefined",
                            ha="center", va="center", transform=ax.transAxes, fontsize=8)
                ax.plot(g.depth, g[m], marker="o", ms=3)
                ax.fill_between(g.depth, g[f"{m}_low"], g[f"{m}_high"], alpha=0.25)
                ax.set_title(f"{s}", fontsize=9)
                ax.set_xlabel("depth (layer; .5 = resid_mid)", fontsize=8)
                if j == 0:
                    ax.set_ylabel(f"{m} base vs tuned", fontsize=8)
                ax.grid(alpha=0.3)
        fig.suptitle(f"residual similarity: {self.meta['model_names']['base']} vs "
                     f"{self.meta['model_names']['tuned']}", fontsize=9)
        fig.tight_layout()
        return fig

    def save(self, directory: str | Path) -> Path:
        """Write the result (JSON + Parquet) to ``directory``.

        Example:
            >>> res.save("out/similarity")  # doctest: +SKIP
        """
        return save_bundle(directory, "SimilarityResult", self.meta,
                           {"frame": self.frame, "tokens": self.tokens})

    @classmethod
    def load(cls, directory: str | Path) -> SimilarityResult:
        """Read a result written by :meth:`save`.

        Example:
            >>> res = SimilarityResult.load("out/similarity")  # doctest: +SKIP
        """
        meta, frames, _ = load_bundle(directory, "SimilarityResult")
        return cls(frames["frame"], frames["tokens"], meta)


def _depth(layer: int, hook: str) -> float:
    return layer + {"resid_pre": 0.0, "resid_mid": 0.5, "resid_post": 1.0}[hook]


def similarity(
    pair: Any,
    prompts: Sequence[InstructionPrompt],
    *,
    hooks: Sequence[str] = RESID_HOOKS,
    layers: Sequence[int] | None = None,
    with_reference: bool = True,
    per_token: bool = False,
    batch_size: int = 8,
    n_boot: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> SimilarityResult:
    """Cosine similarity and linear CKA of the two residual streams, per layer and segment.

    For every prompt, layer and residual hook the two models' vectors at the same positions are
    compared: the per-position cosine (averaged over each segment's positions) and linear CKA
    over the positions of each segment (``"all"`` = every position). Prompts are processed
    ``batch_size`` at a time and their activations discarded after the statistics are taken.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts: Instruction prompts.
        hooks: Any of ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``.
        layers: Layers to compare (default all).
        with_reference: Append each prompt's reference response (the ``response`` segment).
        per_token: Also keep every position's cosine (``result.tokens``).
        batch_size: Prompts per forward pass.
        n_boot: Bootstrap resamples for the CIs in ``table()``/``summary()``.
        seed: Bootstrap seed (recorded).
        progress: Show a progress bar.

    Returns:
        A :class:`SimilarityResult`.

    Raises:
        ShiftlensError: incompatible pair, no prompts, unknown hook, layer out of range.

    Example:
        >>> from shiftlens.testing import tiny_pair  # doctest: +SKIP
        >>> res = similarity(tiny_pair("llama"), default_prompts()[:4])  # doctest: +SKIP
        >>> res.table().query("segment == 'all' and hook == 'resid_post'")  # doctest: +SKIP
    """
    check_pair_compatible(pair)
    _check_prompts(prompts)
    _check_batch_size(batch_size)
    hooks = list(dict.fromkeys(hooks))
    for h in hooks:
        if h not in RESID_HOOKS:
            raise ShiftlensError(f"unknown residual hook {h!r}; choose from {RESID_HOOKS}")
    if not hooks:
        raise ShiftlensError("no hooks given")
    n_layers = int(pair.cfg.n_layers)
    ls = _layers_arg(layers, n_layers, "similarity")
    names = [(layer, h, COMPONENTS[h].format(l=layer)) for layer in ls for h in hooks]
    tps = [
        pair.tokenize(p, response=(p.reference if with_reference and p.reference else None))
        for p in prompts
    ]
    pad = _pad_id(pair)
    rows: list[dict[str, Any]] = []
    tok_parts: list[pd.DataFrame] = []
    hook_names = [n for _, _, n in names]
    for chunk in tqdm(_batches(len(tps), batch_size), desc="similarity", disable=not progress):
        sub = [tps[i] for i in chunk]
        acts = {
            role: run_hooks_batched(model, sub, hook_names, batch_size=batch_size,
                                    reduce=None, progress=False, pad_id=pad)
            for role, model in pair
        }
        for j, tp in enumerate(sub):
            pid = _pid(tp, chunk[j])
            masks = {s: tp.mask(s) for s in SEGMENTS}
            masks["all"] = torch.ones_like(tp.segments, dtype=torch.bool)
            for layer, h, name in names:
                xb, xt = acts["base"][name][j], acts["tuned"][name][j]
                cos = cosine_per_position(xb, xt).cpu()
                for s, m in masks.items():
                    k = int(m.sum())
                    if k == 0:
                        continue
                    m_dev = m.to(xb.device)
                    rows.append(dict(
                        prompt_id=pid, category=tp.prompt.category or "",
                        layer=layer, hook=h, hook_name=name, segment=s, n_positions=k,
                        cosine=_nanmean(cos[m].numpy()),
                        cka=linear_cka(xb[m_dev], xt[m_dev]),
                    ))
                if per_token:
                    tok_parts.append(pd.DataFrame(dict(
                        prompt_id=pid, position=np.arange(len(cos)),
                        token_id=tp.tokens.numpy(),
                        segment=[SEGMENTS[int(c)] for c in tp.segments],
                        layer=layer, hook=h, cosine=cos.numpy(),
                    )))
        del acts
    frame = pd.DataFrame(rows)
    tokens = pd.concat(tok_parts, ignore_index=True) if tok_parts else pd.DataFrame(
        dict(prompt_id=pd.Series([], dtype=str), position=pd.Series([], dtype=np.int64),
             token_id=pd.Series([], dtype=np.int64), segment=pd.Series([], dtype=str),
             layer=pd.Series([], dtype=np.int64), hook=pd.Series([], dtype=str),
             cosine=pd.Series([], dtype=np.float64)))
    meta = dict(
        model_names=dict(pair.names), n_layers=n_layers, layers=ls, hooks=hooks,
        n_prompts=len(tps), with_reference=with_reference, per_token=per_token,
        n_boot=n_boot, seed=seed, prompt_ids=[_pid(tp, i) for i, tp in enumerate(tps)],
    )
    return SimilarityResult(frame, tokens, meta)


# ====================================================================== output shift
@dataclass
class OutputShiftResult:
    """Per-token KL(tuned || base) at the output and through the logit lens, and rising tokens.

    Attributes:
        frame: One row per (prompt, position, layer): ``kl`` of the two models' next-token
            distributions; ``site`` is ``"blocks.{l}.hook_resid_post"`` (the logit lens at
            layer ``l``) or ``"logits"`` (the real output, ``layer == n_layers``);
            ``top1_agree`` whether both models' most likely next token is the same.
        top_tokens: One row per vocabulary token that was among the ``top_k`` contributors to
            KL at some counted position: ``count`` (such positions), ``mean_logprob_rise``
            (mean of log p_tuned - log p_base there), ``mean_p_tuned``/``mean_p_base`` (there)
            and ``kl_share`` (its summed contribution p_tuned (log p_tuned - log p_base) over
            all counted positions, divided by their number). Sorted by ``count``, then share.
        meta: Model names, settings, seed, and the logit-lens consistency check
            (``lens_check_max_abs_diff``).

    Example:
        >>> res = output_shift(pair, prompts)  # doctest: +SKIP
        >>> res.top_tokens.head(10)  # doctest: +SKIP
    """

    frame: pd.DataFrame
    top_tokens: pd.DataFrame
    meta: dict[str, Any]

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt, position and layer (``layer == n_layers``: the real output).

        Example:
            >>> res.to_frame().query("site == 'logits'")  # doctest: +SKIP
        """
        return self.frame.copy()

    def table(self) -> pd.DataFrame:
        """Mean KL per segment and layer (per-prompt means, then mean over prompts + 95% CI).

        Example:
            >>> res.table().query("segment == 'all'")  # doctest: +SKIP
        """
        n_boot, seed = int(self.meta.get("n_boot", 2000)), int(self.meta.get("seed", 0))
        f = self.frame
        parts = [f.assign(segment_=f.segment), f.assign(segment_="all")]
        g = pd.concat(parts, ignore_index=True)
        per_prompt = g.groupby(["segment_", "layer", "site", "prompt_id"], sort=True).agg(
            kl=("kl", "mean"), agree=("top1_agree", "mean")).reset_index()
        rows = []
        for (seg, layer, site), h in per_prompt.groupby(["segment_", "layer", "site"]):
            m, lo, hi, n = _bootstrap_mean(h.kl.to_numpy(), n_boot, seed)
            rows.append(dict(segment=seg, layer=int(layer), site=site, kl=m, kl_low=lo,
                             kl_high=hi, top1_agree=_nanmean(h.agree.to_numpy()), n_prompts=n))
        return pd.DataFrame(rows).sort_values(["segment", "layer"]).reset_index(drop=True)

    def summary(self) -> dict[str, Any]:
        """Headline: output KL per segment with CIs, KL by depth, the top rising tokens.

        Example:
            >>> print(res.summary()["sentence"])  # doctest: +SKIP
        """
        t = self.table()
        L = int(self.meta["n_layers"])
        out: dict[str, Any] = {"models": self.meta["model_names"], "n_prompts": self.meta["n_prompts"]}
        outp = t[t.site == "logits"]
        out["output_kl"] = {
            r.segment: dict(kl=r.kl, ci=[r.kl_low, r.kl_high], top1_agree=r.top1_agree,
                            n_prompts=int(r.n_prompts))
            for _, r in outp.iterrows()
        }
        lens = t[(t.site != "logits") & (t.segment == "all")]
        out["lens_kl_per_layer"] = {int(r.layer): r.kl for _, r in lens.iterrows()}
        top = self.top_tokens.head(10)
        out["top_tokens"] = [
            dict(token=r.token, token_id=int(r.token_id), count=int(r["count"]),
                 mean_logprob_rise=r.mean_logprob_rise, kl_share=r.kl_share)
            for _, r in top.iterrows()
        ]
        out["lens_check_max_abs_diff"] = self.meta.get("lens_check_max_abs_diff")
        a = out["output_kl"].get("all")
        if a is None:
            out["sentence"] = "No positions were analysed."
            return out
        segs = {s: v["kl"] for s, v in out["output_kl"].items() if s not in ("all",)
                and np.isfinite(v["kl"])}
        seg_txt = ""
        if segs:
            hi_s = max(segs, key=segs.get)
            seg_txt = f", highest on the {hi_s} segment ({segs[hi_s]:.3g})"
        lens_txt = ""
        if out["lens_kl_per_layer"]:
            ks = sorted(out["lens_kl_per_layer"])
            lens_txt = (f"; through the logit lens it is {out['lens_kl_per_layer'][ks[0]]:.3g} "
                        f"after layer {ks[0]} and {out['lens_kl_per_layer'][ks[-1]]:.3g} after "
                        f"layer {ks[-1]} (of {L})")
        tok_txt = ""
        if out["top_tokens"]:
            tok_txt = "; tokens the tuned model favours most: " + ", ".join(
                repr(d["token"]) for d in out["top_tokens"][:5])
        out["sentence"] = (
            f"KL(tuned || base) of the next-token distributions averages {a['kl']:.3g} nats "
            f"per token (95% CI [{a['ci'][0]:.3g}, {a['ci'][1]:.3g}], {a['n_prompts']} "
            f"prompts){seg_txt}{lens_txt}{tok_txt}."
        )
        return out

    def show(self, n_tokens: int = 15) -> Any:
        """KL by layer per segment (logit lens; output as the last point) and the top tokens.

        Example:
            >>> res.show().savefig("kl.png")  # doctest: +SKIP
        """
        t = self.table()
        fig, axes = _new_figure(1, 2, 11, 3.8)
        ax = axes[0][0]
        for seg in [s for s in RESULT_SEGMENTS if s in set(t.segment)]:
            g = t[t.segment == seg].sort_values("layer")
            ax.plot(g.layer, g.kl, marker="o", ms=3, label=seg)
            ax.fill_between(g.layer, g.kl_low, g.kl_high, alpha=0.15)
        ax.set_xlabel(f"layer (logit lens of resid_post; {self.meta['n_layers']} = output)")
        ax.set_ylabel("KL(tuned || base), nats/token")
        if len(t) and bool((t.kl > 0).all()):
            ax.set_yscale("log")
        _integer_ticks(ax)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        ax2 = axes[0][1]
        top = self.top_tokens.head(n_tokens).iloc[::-1]
        ax2.barh([repr(s) for s in top.token], top["count"])
        ax2.set_xlabel("positions where the token is a top KL contributor")
        ax2.set_title("tokens favoured by the tuned model", fontsize=9)
        fig.tight_layout()
        return fig

    def save(self, directory: str | Path) -> Path:
        """Write the result (JSON + Parquet).

        Example:
            >>> res.save("out/kl")  # doctest: +SKIP
        """
        return save_bundle(directory, "OutputShiftResult", self.meta,
                           {"frame": self.frame, "top_tokens": self.top_tokens})

    @classmethod
    def load(cls, directory: str | Path) -> OutputShiftResult:
        """Read a result written by :meth:`save`.

        Example:
            >>> res = OutputShiftResult.load("out/kl")  # doctest: +SKIP
        """
        meta, frames, _ = load_bundle(directory, "OutputShiftResult")
        return cls(frames["frame"], frames["top_tokens"], meta)


def output_shift(
    pair: Any,
    prompts: Sequence[InstructionPrompt],
    *,
    layers: Sequence[int] | None = None,
    with_reference: bool = True,
    segments: Sequence[str] | None = None,
    top_k: int = 10,
    batch_size: int = 8,
    chunk_rows: int = 256,
    n_boot: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> OutputShiftResult:
    """Per-token KL(tuned || base) at the output and at each layer (logit lens), rising tokens.

    At every position the two models' next-token distributions are compared: from the real
    logits (``site == "logits"``) and from each model's logit lens at each layer's
    ``resid_post`` (each model read with its own final norm and unembedding). At the positions
    of ``segments`` the vocabulary tokens are ranked by their contribution
    ``p_tuned(v) (log p_tuned(v) - log p_base(v))`` to the output KL; the ``top_k`` of each
    position are counted per token over the prompt set (``result.top_tokens``).

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts: Instruction prompts.
        layers: Layers for the logit lens (default all).
        with_reference: Append each prompt's reference response.
        segments: Segments whose positions count for ``top_tokens`` (default all positions).
        top_k: Tokens counted per position.
        batch_size: Prompts per forward pass.
        chunk_rows: Positions per logit-lens chunk (bounds the ``[rows, d_vocab]`` buffers).
        n_boot: Bootstrap resamples for ``table()``/``summary()``.
        seed: Bootstrap seed (recorded).
        progress: Show a progress bar.

    Returns:
        An :class:`OutputShiftResult`.

    Raises:
        ShiftlensError: incompatible pair, no prompts, bad layer, segment or ``top_k``.

    Example:
        >>> res = output_shift(pair, default_prompts()[:8])  # doctest: +SKIP
        >>> res.summary()["output_kl"]["all"]  # doctest: +SKIP
    """
    check_pair_compatible(pair)
    _check_prompts(prompts)
    _check_batch_size(batch_size)
    n_layers, d_vocab = int(pair.cfg.n_layers), int(pair.cfg.d_vocab)
    ls = _layers_arg(layers, n_layers, "output_shift")
    if not isinstance(top_k, int) or not 1 <= top_k <= d_vocab:
        raise ShiftlensError(f"top_k must be an integer in [1, {d_vocab}], got {top_k!r}")
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ShiftlensError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    segs = list(SEGMENTS) if segments is None else list(segments)
    for s in segs:
        if s not in SEGMENTS:
            raise ShiftlensError(f"unknown segment {s!r}; choose from {SEGMENTS}")
    seg_codes = torch.tensor([SEGMENTS.index(s) for s in segs])
    tps = [
        pair.tokenize(p, response=(p.reference if with_reference and p.reference else None))
        for p in prompts
    ]
    pad = _pad_id(pair)
    names = [COMPONENTS["resid_post"].format(l=layer) for layer in ls]
    acc_count = torch.zeros(d_vocab, dtype=torch.float64)
    acc_rise = torch.zeros(d_vocab, dtype=torch.float64)
    acc_pt = torch.zeros(d_vocab, dtype=torch.float64)
    acc_pb = torch.zeros(d_vocab, dtype=torch.float64)
    acc_share = torch.zeros(d_vocab, dtype=torch.float64)
    n_counted = 0
    lens_diff = 0.0
    parts: list[dict[str, np.ndarray]] = []
    for bi, chunk in enumerate(tqdm(_batches(len(tps), batch_size), desc="output shift",
                                    disable=not progress)):
        sub = [tps[i] for i in chunk]
        toks, lengths = _padded(sub, pad)
        run = {}
        for role, model in pair:
            logits, acts = _forward(model, toks.to(_device(model)), names)
            run[role] = (logits, acts)
        valid = torch.zeros(toks.shape, dtype=torch.bool)
        for j, n in enumerate(lengths):
            valid[j, :n] = True
        vdev = valid.to(_device(pair.base))
        pid = einops.repeat(torch.tensor(chunk), "b -> b p", p=toks.shape[1])[valid]
        pos = einops.repeat(torch.arange(toks.shape[1]), "p -> b p", b=len(sub))[valid]
        seg = torch.full(toks.shape, -1, dtype=torch.long)
        for j, tp in enumerate(sub):
            seg[j, : lengths[j]] = tp.segments
        seg = seg[valid]
        tok_ids = toks[valid]
        counted = torch.isin(seg, seg_codes)
        if bi == 0 and ls[-1] == n_layers - 1:  # the lens of the final resid_post = logits
            for role, model in pair:
                logits, acts = run[role]
                ll = logit_lens(model, acts[names[-1]][vdev][:chunk_rows])
                d = (ll - logits[vdev][:chunk_rows]).abs().max()
                lens_diff = max(lens_diff, float(d))
        sites = [("logits", n_layers, None)] + [(n, layer, n) for layer, n in zip(ls, names)]
        for site, layer, hook_name in sites:
            kls, agree = [], []
            n_rows = int(valid.sum())
            for r0 in range(0, n_rows, chunk_rows):
                sl = slice(r0, r0 + chunk_rows)
                lp = {}
                for role, model in pair:
                    logits, acts = run[role]
                    if hook_name is None:
                        lg = logits[vdev][sl]
                    else:
                        lg = logit_lens(model, acts[hook_name][vdev][sl])
                    lp[role] = torch.log_softmax(lg.double(), -1)
                kls.append(kl_divergence(lp["tuned"], lp["base"]).cpu())
                agree.append((lp["tuned"].argmax(-1) == lp["base"].argmax(-1)).cpu())
                if hook_name is None:
                    cm = counted[sl]
                    if bool(cm.any()):
                        lt, lb = lp["tuned"][cm.to(vdev.device)].cpu(), lp["base"][cm.to(vdev.device)].cpu()
                        pt, pb = lt.exp(), lb.exp()
                        rise = lt - lb
                        contrib = pt * rise
                        acc_share += contrib.sum(0)
                        idx = contrib.topk(top_k, dim=-1).indices
                        flat = idx.reshape(-1)
                        acc_count.index_add_(0, flat, torch.ones(flat.shape, dtype=torch.float64))
                        acc_rise.index_add_(0, flat, rise.gather(-1, idx).reshape(-1))
                        acc_pt.index_add_(0, flat, pt.gather(-1, idx).reshape(-1))
                        acc_pb.index_add_(0, flat, pb.gather(-1, idx).reshape(-1))
                        n_counted += int(cm.sum())
            parts.append(dict(
                prompt=pid.numpy(), position=pos.numpy(), token_id=tok_ids.numpy(),
                segment=seg.numpy(), layer=np.full(n_rows, layer), site=np.array([site] * n_rows),
                kl=torch.cat(kls).numpy(), top1_agree=torch.cat(agree).numpy(),
            ))
        del run
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    labels = np.array([_pid(tp, i) for i, tp in enumerate(tps)])
    cats = np.array([tp.prompt.category or "" for tp in tps])
    frame = pd.DataFrame(dict(
        prompt_id=labels[cat["prompt"]], category=cats[cat["prompt"]],
        position=cat["position"].astype(np.int64), token_id=cat["token_id"].astype(np.int64),
        segment=np.array(SEGMENTS)[cat["segment"]], layer=cat["layer"].astype(np.int64),
        site=cat["site"], kl=cat["kl"].astype(np.float64), top1_agree=cat["top1_agree"],
    ))
    tok = pair.tokenizer
    nz = torch.nonzero(acc_count > 0).flatten()
    cnt = acc_count[nz]
    top = pd.DataFrame(dict(
        token_id=nz.numpy().astype(np.int64),
        token=[tok.decode([int(i)]) for i in nz],
        count=cnt.numpy().astype(np.int64),
        mean_logprob_rise=(acc_rise[nz] / cnt).numpy(),
        mean_p_tuned=(acc_pt[nz] / cnt).numpy(),
        mean_p_base=(acc_pb[nz] / cnt).numpy(),
        kl_share=(acc_share[nz] / max(n_counted, 1)).numpy(),
    ))
    top = top.sort_values(["count", "kl_share"], ascending=False).reset_index(drop=True)
    if lens_diff > 1e-3:
        warnings.warn(
            f"the logit lens of the final resid_post differs from the models' logits by up to "
            f"{lens_diff:.3g}; the lens is approximate for this architecture",
            ShiftlensWarning, stacklevel=2,
        )
    meta = dict(
        model_names=dict(pair.names), n_layers=n_layers, layers=ls, n_prompts=len(tps),
        with_reference=with_reference, segments=segs, top_k=top_k, n_counted_positions=n_counted,
        lens_check_max_abs_diff=lens_diff, n_boot=n_boot, seed=seed,
        prompt_ids=[_pid(tp, i) for i, tp in enumerate(tps)],
    )
    return OutputShiftResult(frame, top, meta)


# ====================================================================== patching
@dataclass
class PatchingResult:
    """Cross-model activation patching: recovered fraction of the response log-prob gap.

    For direction ``"tuned->base"`` (base run, tuned activations patched in) a prompt's
    recovery is ``(lp_patched - lp_base) / (lp_tuned - lp_base)``; for ``"base->tuned"``
    (tuned run, base activations) it is ``(lp_patched - lp_tuned) / (lp_base - lp_tuned)``.
    Either way 1 means the patched run scores the response like the model the activations
    came from, 0 like the model that was run. ``lp`` is the summed log-probability of the
    tuned model's response. Where ``|gap| < min_gap`` recovery is undefined (NaN) and
    :attr:`note` says why.

    Attributes:
        frame: One row per (prompt, direction, layer, component): ``lp_target`` (clean run of
            the patched model), ``lp_source`` (the other model), ``lp_patched``, ``recovery``,
            ``n_patched`` (positions replaced), ``hook_name``.
        prompts: One row per prompt: ``response`` text, ``n_response``, ``lp_base``,
            ``lp_tuned``, ``gap`` (tuned - base), ``defined``.
        meta: Settings, model names, seed.
        note: Why some recoveries are NaN ("" when all are defined).

    Example:
        >>> res = patching(pair, prompts)  # doctest: +SKIP
        >>> res.table().query("component == 'resid_pre'")  # doctest: +SKIP
    """

    frame: pd.DataFrame
    prompts: pd.DataFrame
    meta: dict[str, Any]
    note: str = ""
    _table: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt, direction, layer and component.

        Example:
            >>> res.to_frame().groupby("component").recovery.mean()  # doctest: +SKIP
        """
        return self.frame.copy()

    def table(self) -> pd.DataFrame:
        """Pooled recovery per direction, component and layer with a bootstrap 95% CI.

        ``recovery`` is the ratio of means over prompts, ``mean(lp_patched - lp_target) /
        mean(lp_source - lp_target)`` (robust to prompts with a small gap); the CI resamples
        prompts. ``mean_prompt_recovery`` averages the defined per-prompt ratios. NaN where
        the mean gap is below ``min_gap``.

        Example:
            >>> res.table()  # doctest: +SKIP
        """
        if self._table is not None:
            return self._table.copy()
        n_boot, seed = int(self.meta.get("n_boot", 2000)), int(self.meta.get("seed", 0))
        min_gap = float(self.meta["min_gap"])
        rng = np.random.default_rng(seed)
        rows = []
        for (d, comp, layer), g in self.frame.groupby(["direction", "component", "layer"],
                                                      sort=True):
            num = (g.lp_patched - g.lp_target).to_numpy(np.float64)
            den = (g.lp_source - g.lp_target).to_numpy(np.float64)
            rec, lo, hi = _ratio_ci(num, den, min_gap, n_boot, rng)
            rows.append(dict(
                direction=d, component=comp, layer=int(layer), hook_name=g.hook_name.iloc[0],
                recovery=rec, recovery_low=lo, recovery_high=hi,
                mean_prompt_recovery=_nanmean(g.recovery.to_numpy()),
                mean_gap=float(den.mean()), n_prompts=int(len(g)),
                n_defined=int(np.isfinite(g.recovery.to_numpy(np.float64)).sum()),
            ))
        self._table = pd.DataFrame(rows)
        return self._table.copy()

    def summary(self) -> dict[str, Any]:
        """Headline: the gap, and per direction and component the layer recovering most.

        Example:
            >>> print(res.summary()["sentence"])  # doctest: +SKIP
        """
        t = self.table()
        p = self.prompts
        gap = p.gap.to_numpy(np.float64)
        m, lo, hi, n = _bootstrap_mean(gap, int(self.meta.get("n_boot", 2000)),
                                       int(self.meta.get("seed", 0)))
        out: dict[str, Any] = {
            "models": self.meta["model_names"], "n_prompts": int(len(p)),
            "gap": dict(mean=m, ci=[lo, hi], n_defined=int(p.defined.sum())),
            "response": self.meta["response"], "positions": self.meta["positions"],
            "note": self.note, "best": {},
        }
        parts = []
        for d in self.meta["directions"]:
            out["best"][d] = {}
            for comp in self.meta["components"]:
                g = t[(t.direction == d) & (t.component == comp) & t.recovery.notna()]
                if not len(g):
                    out["best"][d][comp] = None
                    continue
                r = g.loc[g.recovery.idxmax()]
                out["best"][d][comp] = dict(layer=int(r.layer), recovery=r.recovery,
                                            ci=[r.recovery_low, r.recovery_high])
            bests = {c: v for c, v in out["best"][d].items() if v is not None}
            comps = [c for c in bests if c in ("attn_out", "mlp_out")] or list(bests)
            if comps:
                c = max(comps, key=lambda c: bests[c]["recovery"])
                v = bests[c]
                parts.append(f"{d}: {c} of layer {v['layer']} recovers {100 * v['recovery']:.0f}% "
                             f"(95% CI [{100 * v['ci'][0]:.0f}, {100 * v['ci'][1]:.0f}]%)")
        if not np.isfinite(m) or not parts:
            out["sentence"] = ("Recovery is undefined: " + (self.note or "no defined gap") + ".")
        else:
            out["sentence"] = (
                f"Log-prob gap (tuned - base) of the response: {m:+.3g} nats "
                f"(95% CI [{lo:.3g}, {hi:.3g}], {n} prompts). " + "; ".join(parts) + "."
                + (f" Note: {self.note}" if self.note else "")
            )
        return out

    def show(self) -> Any:
        """Recovery against layer, one line per component, one panel per direction.

        Example:
            >>> res.show().savefig("patching.png")  # doctest: +SKIP
        """
        t = self.table()
        dirs = list(self.meta["directions"])
        fig, axes = _new_figure(1, len(dirs), 5 * len(dirs), 3.6)
        for i, d in enumerate(dirs):
            ax = axes[0][i]
            for comp in self.meta["components"]:
                g = t[(t.direction == d) & (t.component == comp)].sort_values("layer")
                ax.plot(g.layer, g.recovery, marker="o", ms=3, label=comp)
                ax.fill_between(g.layer, g.recovery_low, g.recovery_high, alpha=0.15)
            ax.axhline(0, color="k", lw=0.5)
            ax.axhline(1, color="k", lw=0.5, ls="--")
            _integer_ticks(ax)
            run, src = ("base", "tuned") if d == "tuned->base" else ("tuned", "base")
            ax.set_title(f"{run} run, {src} activations patched in", fontsize=9)
            ax.set_xlabel("layer")
            ax.set_ylabel("fraction of gap recovered")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            if self.note:
                ax.text(0.02, 0.02, "some recoveries undefined", transform=ax.transAxes,
                        fontsize=7)
        fig.tight_layout()
        return fig

    def save(self, directory: str | Path) -> Path:
        """Write the result (JSON + Parquet).

        Example:
            >>> res.save("out/patching")  # doctest: +SKIP
        """
        return save_bundle(directory, "PatchingResult", {**self.meta, "note": self.note},
                           {"frame": self.frame, "prompts": self.prompts})

    @classmethod
    def load(cls, directory: str | Path) -> PatchingResult:
        """Read a result written by :meth:`save`.

        Example:
            >>> res = PatchingResult.load("out/patching")  # doctest: +SKIP
        """
        meta, frames, _ = load_bundle(directory, "PatchingResult")
        note = meta.pop("note", "")
        return cls(frames["frame"], frames["prompts"], meta, note)


def _ratio_ci(
    num: np.ndarray, den: np.ndarray, min_gap: float, n_boot: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Ratio of means with a percentile bootstrap CI over items (NaN where undefined)."""
    n = num.size
    if n == 0 or abs(den.mean()) < min_gap:
        return float("nan"), float("nan"), float("nan")
    rec = float(num.mean() / den.mean())
    if n < 2:
        return rec, float("nan"), float("nan")
    idx = rng.integers(0, n, (n_boot, n))
    bn, bd = num[idx].mean(1), den[idx].mean(1)
    ok = np.abs(bd) >= min_gap
    if ok.sum() < 2:
        return rec, float("nan"), float("nan")
    r = bn[ok] / bd[ok]
    lo, hi = np.quantile(r, [0.025, 0.975])
    return rec, float(lo), float(hi)


def _position_mask(tp: TokenizedPrompt, positions: Positions) -> Bool[Tensor, " pos"]:
    n = int(tp.tokens.shape[0])
    if isinstance(positions, str):
        positions = [positions]
    items = list(positions)
    if not items:
        raise ShiftlensError("positions is empty; give 'all', segment names or indices")
    if all(isinstance(p, str) for p in items):
        mask = torch.zeros(n, dtype=torch.bool)
        for s in items:
            if s == "all":
                mask[:] = True
            elif s in SEGMENTS:
                mask |= tp.mask(s)
            else:
                raise ShiftlensError(
                    f"unknown position spec {s!r}; use 'all', a segment {SEGMENTS} or indices"
                )
        return mask
    mask = torch.zeros(n, dtype=torch.bool)
    for p in items:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
            raise ShiftlensError(
                f"positions must be all strings or all integers, got {p!r} ({type(p).__name__})"
            )
        if not -n <= int(p) < n:
            raise ShiftlensError(
                f"prompt {_label(tp)}: position {p} out of range ({n} tokens incl. response)"
            )
        mask[int(p)] = True
    return mask


def _positions_label(positions: Positions) -> str:
    if isinstance(positions, str):
        return positions
    return ",".join(str(p) for p in positions)


def patching(
    pair: Any,
    prompts: Sequence[InstructionPrompt],
    *,
    components: Sequence[str] = ("resid_pre", "attn_out", "mlp_out", "resid_post"),
    layers: Sequence[int] | None = None,
    positions: Positions = "all",
    response: str | Sequence[str] = "greedy",
    max_new_tokens: int = 16,
    directions: Sequence[str] = DIRECTIONS,
    batch_size: int = 8,
    min_gap: float = 1e-4,
    n_boot: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> PatchingResult:
    """Cross-model activation patching: where in depth does the tuned behaviour live?

    For every prompt the tuned model's response (its greedy continuation, the prompt's
    reference, or given strings) is appended and scored, teacher-forced, by both models:
    ``lp_base`` and ``lp_tuned`` (summed log-probabilities). Then, for each layer and
    component, the base model is run on the same tokens while that component's activation at
    the chosen positions is replaced by the tuned model's (direction ``"tuned->base"``), and
    ``(lp_patched - lp_base) / (lp_tuned - lp_base)`` is recorded; ``"base->tuned"`` runs the
    tuned model with base activations and records ``(lp_patched - lp_tuned) / (lp_base -
    lp_tuned)``.

    What is guaranteed: with ``positions="all"``, patching ``resid_post`` of layer ``l``
    equals patching ``resid_pre`` of layer ``l + 1``; patching ``resid_pre`` of layer ``l``
    recovers exactly 100% when the models differ only below layer ``l`` (e.g. only in the
    embeddings for ``l = 0``), and patching the last layer's ``resid_post`` recovers exactly
    100% when their final norm and unembedding are equal - otherwise it measures how the
    *base* head reads the tuned residual stream, which can differ from 100%.

    Args:
        pair: A :class:`shiftlens.ModelPair` (architecture- and tokenizer-compatible).
        prompts: Instruction prompts (without the response; it is appended).
        components: Any of ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"``,
            ``"mlp_out"`` (TL hooks ``blocks.{l}.hook_*``).
        layers: Layers to patch (default all).
        positions: ``"all"``, a segment name or list of names (``"instruction"``,
            ``"context"``, ``"template"``, ``"response"``, ``"bos"``), or explicit position
            indices (applied to every prompt; negative counts from the end).
        response: ``"greedy"`` (the tuned model's greedy continuation, EOS kept),
            ``"reference"`` (each prompt's reference), or one response string per prompt.
        max_new_tokens: Length limit of greedy responses.
        directions: Any of ``"tuned->base"``, ``"base->tuned"``.
        batch_size: Prompts per forward pass.
        min_gap: Gaps (nats) smaller than this leave recovery undefined (NaN).
        n_boot: Bootstrap resamples for the CIs.
        seed: Bootstrap seed (recorded).
        progress: Show a progress bar.

    Returns:
        A :class:`PatchingResult`.

    Raises:
        ShiftlensError: incompatible pair (shapes, tokenizer, device, dtype), no prompts,
            unknown component or direction, layer or position out of range, missing
            reference, wrong number of responses.

    Example:
        >>> res = patching(pair, prompts[:8], components=["resid_pre"])  # doctest: +SKIP
        >>> res.summary()["sentence"]  # doctest: +SKIP
    """
    check_pair_compatible(pair)
    _check_prompts(prompts)
    _check_batch_size(batch_size)
    comps = list(dict.fromkeys(components))
    if not comps:
        raise ShiftlensError("no components given")
    for c in comps:
        if c not in COMPONENTS:
            raise ShiftlensError(f"unknown component {c!r}; choose from {tuple(COMPONENTS)}")
    dirs = list(dict.fromkeys(directions))
    if not dirs:
        raise ShiftlensError("no directions given")
    for d in dirs:
        if d not in DIRECTIONS:
            raise ShiftlensError(f"unknown direction {d!r}; choose from {DIRECTIONS}")
    if not isinstance(min_gap, (int, float)) or not min_gap >= 0:
        raise ShiftlensError(f"min_gap must be a number >= 0, got {min_gap!r}")
    n_layers = int(pair.cfg.n_layers)
    ls = _layers_arg(layers, n_layers, "patching")
    for layer in ls:
        for c in comps:
            name = COMPONENTS[c].format(l=layer)
            for role, model in pair:
                if name not in model.hook_dict:
                    raise ShiftlensError(f"{role} model {pair.names[role]!r} has no hook {name!r}")
    pad = _pad_id(pair)

    # ---- responses
    base_tps = [pair.tokenize(p) for p in prompts]
    if isinstance(response, str) and response == "greedy":
        resp_ids: list[Tensor] = []
        for chunk in tqdm(_batches(len(prompts), batch_size), desc="greedy responses",
                          disable=not progress):
            resp_ids += [g.with_stop() for g in greedy_batch(
                pair.tuned, [base_tps[i].tokens for i in chunk], max_new_tokens,
                batch_size=len(chunk))]
    elif isinstance(response, str) and response == "reference":
        resp_ids = []
        for p in prompts:
            if not p.reference:
                raise ShiftlensError(f"prompt {p.label}: response='reference' but it has none")
            resp_ids.append(_encode_response(pair, p, p.reference))
    elif isinstance(response, str):
        raise ShiftlensError(
            f"response must be 'greedy', 'reference' or one string per prompt, got {response!r}"
        )
    else:
        resp = list(response)
        if len(resp) != len(prompts):
            raise ShiftlensError(f"got {len(resp)} responses for {len(prompts)} prompts")
        resp_ids = [_encode_response(pair, p, r) for p, r in zip(prompts, resp)]
    n_ctx = int(getattr(pair.cfg, "n_ctx", 10**9) or 10**9)
    tps: list[TokenizedPrompt] = []
    for tp, ids in zip(base_tps, resp_ids):
        toks = torch.cat([tp.tokens, ids])
        if toks.shape[0] > n_ctx:
            raise ShiftlensError(f"prompt {_label(tp)}: prompt + response exceed n_ctx {n_ctx}")
        tps.append(TokenizedPrompt(
            prompt=tp.prompt, tokens=toks,
            segments=torch.cat([tp.segments, torch.full((len(ids),), RESPONSE, dtype=torch.long)]),
            n_prompt=tp.n_prompt, offsets=tp.offsets,
            response=pair.tokenizer.decode(ids.tolist()),
        ))
    masks = [_position_mask(tp, positions) for tp in tps]

    # ---- runs
    hook_names = {(layer, c): COMPONENTS[c].format(l=layer) for layer in ls for c in comps}
    needed = list(dict.fromkeys(hook_names.values()))
    role_of = {"tuned->base": ("base", "tuned"), "base->tuned": ("tuned", "base")}
    lp_clean = {"base": np.zeros(len(tps)), "tuned": np.zeros(len(tps))}
    recs: list[dict[str, Any]] = []
    batches = _batches(len(tps), batch_size)
    total = len(batches) * len(dirs) * len(hook_names)
    bar = tqdm(total=total, desc="patching", disable=not progress)
    for chunk in batches:
        sub = [tps[i] for i in chunk]
        toks, lengths = _padded(sub, pad)
        mask = torch.zeros(toks.shape, dtype=torch.bool)
        for j, i in enumerate(chunk):
            mask[j, : lengths[j]] = masks[i]
        cache = {}
        for role, model in pair:
            dev = _device(model)
            logits, acts = _forward(model, toks.to(dev), needed)
            assert logits is not None
            cache[role] = acts
            for j, i in enumerate(chunk):
                lp_clean[role][i] = response_logprob(logits[j, : lengths[j]], sub[j].tokens,
                                                     sub[j].n_prompt)
        for d in dirs:
            target, source = role_of[d]
            model = pair.models[target]
            dev = _device(model)
            mdev = mask.to(dev)
            for (layer, c), name in hook_names.items():
                src = cache[source][name]
                fn = _patch_hook(f"{target} model {pair.names[target]!r}", name, src, mdev)
                logits, _ = _forward(model, toks.to(dev), patch={name: fn})
                assert logits is not None
                for j, i in enumerate(chunk):
                    lp = response_logprob(logits[j, : lengths[j]], sub[j].tokens, sub[j].n_prompt)
                    recs.append(dict(
                        prompt=i, direction=d, layer=layer, component=c, hook_name=name,
                        n_patched=int(masks[i].sum()), lp_patched=lp,
                    ))
                bar.update(1)
        del cache
    bar.close()

    labels = [_pid(tp, i) for i, tp in enumerate(tps)]
    gap = lp_clean["tuned"] - lp_clean["base"]
    defined = np.abs(gap) >= min_gap
    frame = pd.DataFrame(recs)
    tgt_role = frame.direction.map(lambda d: role_of[d][0])
    src_role = frame.direction.map(lambda d: role_of[d][1])
    pi = frame.prompt.to_numpy()
    frame["lp_target"] = np.where(tgt_role == "base", lp_clean["base"][pi], lp_clean["tuned"][pi])
    frame["lp_source"] = np.where(src_role == "base", lp_clean["base"][pi], lp_clean["tuned"][pi])
    den = (frame.lp_source - frame.lp_target).to_numpy()
    num = (frame.lp_patched - frame.lp_target).to_numpy()
    ok = defined[pi]
    frame["recovery"] = np.where(ok, num / np.where(ok, den, 1.0), np.nan)
    frame.insert(0, "prompt_id", [labels[i] for i in pi])
    frame.insert(1, "category", [tps[i].prompt.category or "" for i in pi])
    frame["positions"] = _positions_label(positions)
    frame = frame.drop(columns=["prompt"])
    pframe = pd.DataFrame(dict(
        prompt_id=labels, category=[tp.prompt.category or "" for tp in tps],
        response=[tp.response for tp in tps],
        n_response=[tp.n_response for tp in tps],
        n_patched=[int(m.sum()) for m in masks],
        lp_base=lp_clean["base"], lp_tuned=lp_clean["tuned"], gap=gap, defined=defined,
    ))
    note = ""
    n_undef = int((~defined).sum())
    if n_undef:
        note = (
            f"{n_undef} of {len(tps)} prompts have a tuned-vs-base gap |lp_tuned - lp_base| "
            f"below min_gap={min_gap:g} nats (e.g. identical models), so the fraction of the "
            "gap recovered is undefined there and reported as NaN"
        )
        if abs(gap.mean()) < min_gap:
            note += "; the mean gap is below min_gap too, so pooled recoveries are NaN"
        warnings.warn(note, ShiftlensWarning, stacklevel=2)
    meta = dict(
        model_names=dict(pair.names), n_layers=n_layers, layers=ls, components=comps,
        directions=dirs, positions=_positions_label(positions),
        response=response if isinstance(response, str) else "given",
        max_new_tokens=max_new_tokens, min_gap=float(min_gap), n_boot=n_boot, seed=seed,
        n_prompts=len(tps),
    )
    return PatchingResult(frame, pframe, meta, note)


def _encode_response(pair: Any, prompt: InstructionPrompt, text: str) -> Int[Tensor, " n"]:
    if not isinstance(text, str) or not text.strip():
        raise ShiftlensError(f"prompt {prompt.label}: the response is empty")
    ids = pair.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ShiftlensError(f"prompt {prompt.label}: the response tokenizes to nothing")
    return torch.tensor(list(ids), dtype=torch.long)
