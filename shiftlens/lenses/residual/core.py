"""The residual lens on one model and on tensors: similarity measures, the logit lens, KL, patching.

Layer (1) of the lens (see :mod:`shiftlens.lenses.residual`): pure functions of tensors
(:func:`cosine_per_position`, :func:`linear_cka`, :func:`kl_divergence`) and of one
``TransformerBridge`` (:func:`logit_lens`, :func:`lens_logits`, :func:`response_logprob`,
:func:`patched_logits`). Nothing here knows about the base/tuned pair; :mod:`.compare` runs these
functions on both models.

None of these definitions is from Wu et al. (2024, NAACL), whose lenses are attribution,
attention and feed-forward knowledge; they are standard interpretability tools applied to the
paper's frame (base vs tuned on identical tokens): linear CKA (Kornblith et al., 2019), the
logit lens (nostalgebraist, 2020) and activation patching (Meng et al., 2022).

Devices: a function that reads a model sends its inputs to :func:`shiftlens.bridge.device_of`
of that model, every mask or index is moved to the device of the tensor it indexes, a residual
read through the logit lens goes to the device of the final norm (and its output to that of the
unembedding), and a patched activation goes to the device of the activation it replaces: the
two models of a pair, and the layers of one dispatched model, may live on different devices.

Non-finite values: :func:`nonfinite_at` finds the first NaN/infinity of a tensor and
:func:`locate_nonfinite` the first hook of a forward pass where one appears; the pair functions
use them to name the model, prompt, layer and position in their errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from shiftlens.bridge import device_of, model_name
from shiftlens.checks import check_int, check_layers
from shiftlens.diagnose import BLOCK_ORDER, locate_nonfinite, nonfinite_at  # noqa: F401 - re-exported
from shiftlens.errors import ShiftlensError
from shiftlens.prompts import SEGMENTS

__all__ = [
    "RESID_HOOKS",
    "COMPONENTS",
    "DIRECTIONS",
    "RESULT_SEGMENTS",
    "cosine_per_position",
    "linear_cka",
    "kl_divergence",
    "logit_lens",
    "lens_logits",
    "response_logprob",
    "patched_logits",
    "nonfinite_at",
    "locate_nonfinite",
]

#: Residual-stream hooks compared by ``similarity`` (TL names without ``blocks.{l}.``).
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

_DEPTH = {"resid_pre": 0.0, "resid_mid": 0.5, "resid_post": 1.0}


def hook_name(component: str, layer: int) -> str:
    """The TL hook name of a component at a layer (``blocks.{layer}.hook_...``)."""
    return COMPONENTS[component].format(l=layer)


def depth(layer: int, hook: str) -> float:
    """Position of a residual hook in depth: ``l`` (pre), ``l + 0.5`` (mid), ``l + 1`` (post)."""
    return layer + _DEPTH[hook]


def finite_mean(x: Any) -> float:
    """Mean of the finite values (NaN when there are none; never a numpy warning)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def module_device(module: Any, default: torch.device) -> torch.device:
    """The device a module computes on: an offload hook's execution device, else that of its
    first parameter not on the meta device, else ``default``."""
    for m in (module, getattr(module, "original_component", None)):
        exe = getattr(getattr(m, "_hf_hook", None), "execution_device", None)
        if exe is not None:
            return torch.device("cuda", exe) if isinstance(exe, int) else torch.device(exe)
    for p in module.parameters() if hasattr(module, "parameters") else ():
        if p.device.type != "meta":
            return p.device
    return default


# ====================================================================== tensors
def cosine_per_position(
    a: Float[Tensor, "pos d_model"], b: Float[Tensor, "pos d_model"]
) -> Float[Tensor, " pos"]:
    """Cosine similarity of two models' residual vectors at each position (in float64).

    A zero vector gives NaN (the angle is undefined). ``b`` is read on ``a``'s device.

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
        y: ``[n, d2]`` (the tuned model's, same positions; read on ``x``'s device).

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

    Terms with ``p_v = 0`` count 0 (also where ``q_v = 0``). Both inputs on one device.

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


# ====================================================================== one model
def logit_lens(
    model: Any, resid: Float[Tensor, "*rows d_model"]
) -> Float[Tensor, "*rows d_vocab"]:
    """Apply a model's own final norm and unembedding (and final soft-cap) to residual vectors.

    For the last layer's ``resid_post`` this equals the model's logits (tested on GPT-2, Llama,
    Qwen2 and Gemma 2 bridges, raw and compatibility-mode weights). The vectors are moved to the
    final norm's device first (in a model dispatched over several devices an early layer's
    residual lives elsewhere), and the normed vectors to the unembedding's.

    Args:
        model: A TransformerBridge.
        resid: Residual-stream vectors ``[..., d_model]`` in the model's dtype (any device).

    Returns:
        Logits ``[..., d_vocab]`` (on the unembedding's device).

    Example:
        >>> logits = logit_lens(pair.base, cache["blocks.3.hook_resid_post"])  # doctest: +SKIP
    """
    if resid.shape[-1] != model.cfg.d_model:
        raise ShiftlensError(
            f"{model_name(model)}: residual width {resid.shape[-1]} != d_model "
            f"{model.cfg.d_model}"
        )
    with torch.no_grad():
        normed = model.ln_final(resid.to(module_device(model.ln_final, resid.device)))
        logits = model.unembed(normed.to(module_device(model.unembed, normed.device)))
        cap = getattr(model.cfg, "output_logits_soft_cap", None) or 0.0
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
    return logits


def hooked_forward(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    capture: Sequence[str] = (),
    patch: dict[str, Callable[..., Tensor]] | None = None,
    return_logits: bool = True,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """One forward pass (no grad) keeping the ``capture`` hooks and running the ``patch`` hooks.

    ``tokens`` go to the model's input device (:func:`shiftlens.bridge.device_of`).
    """
    acts: dict[str, Tensor] = {}

    def make_capture(name: str) -> Callable[..., Tensor]:
        def hook(act: Tensor, hook: Any = None) -> Tensor:
            acts[name] = act.detach()
            return act

        return hook

    fwd = [(n, make_capture(n)) for n in capture]
    fwd += list((patch or {}).items())
    with torch.no_grad(), model.hooks(fwd_hooks=fwd):
        out = model(tokens.to(device_of(model)),
                    return_type="logits" if return_logits else None)
    missing = [n for n in capture if n not in acts]
    if missing:
        raise ShiftlensError(f"{model_name(model)}: hook {missing[0]!r} did not fire")
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
    names = [hook_name(hook, layer) for layer in check_layers(model, layers)]
    _, acts = hooked_forward(model, tokens[None], names, return_logits=False)
    return torch.stack([logit_lens(model, acts[n][0]) for n in names])


def response_logprob(
    logits: Float[Tensor, "pos d_vocab"], tokens: Int[Tensor, " pos"], n_prompt: int
) -> float:
    """Teacher-forced log-probability (nats) of the response ``tokens[n_prompt:]``.

    Args:
        logits: One sequence's logits ``[pos, d_vocab]``.
        tokens: The sequence ``[pos]`` (prompt + response); read on the logits' device.
        n_prompt: Number of prompt positions; the response starts there.

    Returns:
        ``sum_t log p(tokens[t] | tokens[:t])`` over response positions (in float64).

    Example:
        >>> logits = pair.tuned(tp.tokens[None])[0]  # doctest: +SKIP
        >>> response_logprob(logits, tp.tokens, tp.n_prompt)  # doctest: +SKIP
    """
    n = int(tokens.shape[0])
    n_prompt = check_int("n_prompt", n_prompt, who="response_logprob")
    if not 1 <= n_prompt < n:
        raise ShiftlensError(f"response_logprob: need 1 <= n_prompt < {n}, got {n_prompt}")
    lp = torch.log_softmax(logits[n_prompt - 1 : n - 1].double(), -1)
    tgt = tokens[n_prompt:n].to(lp.device)
    return float(lp.gather(-1, tgt[:, None]).sum())


def replace_hook(
    who: str, name: str, source: Tensor, mask: Tensor
) -> Callable[..., Tensor]:
    """A forward hook replacing the activation by ``source`` where ``mask`` is true.

    Refuses (naming ``who`` and the hook) a source whose shape or dtype differs from the
    activation: no dtype is converted silently. The source and the mask are moved to the
    activation's device (the source model, or this layer of it, may live on another device).
    """
    def hook(act: Tensor, hook: Any = None) -> Tensor:
        if act.shape != source.shape:
            raise ShiftlensError(
                f"{who}: cannot patch {name}: activation shape {tuple(act.shape)} != "
                f"source shape {tuple(source.shape)} (incompatible models?)"
            )
        if act.dtype != source.dtype:
            raise ShiftlensError(
                f"{who}: cannot patch {name}: activation dtype {act.dtype} vs source "
                f"{source.dtype} (no dtype is converted silently)"
            )
        m = mask.to(act.device).reshape(mask.shape + (1,) * (act.dim() - mask.dim()))
        return torch.where(m, source.to(act.device), act)

    return hook


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
        tokens: Token ids ``[batch, pos]`` (sent to the model's input device).
        hook_name: A TL hook whose activation is ``[batch, pos, d_model]`` (e.g.
            ``"blocks.3.hook_resid_pre"``, ``"blocks.3.hook_attn_out"``).
        source: Replacement activations (e.g. the tuned model's at the same hook and tokens),
            in the activation's dtype; moved to the activation's device.
        mask: Positions to replace.

    Returns:
        The patched run's logits.

    Raises:
        ShiftlensError: the hook does not exist or its activation's shape or dtype differs
            from ``source``'s.

    Example:
        >>> logits = patched_logits(pair.base, toks, "blocks.1.hook_resid_post", src, mask)  # doctest: +SKIP
    """
    who = model_name(model)
    if hook_name not in model.hook_dict:
        raise ShiftlensError(f"{who} has no hook {hook_name!r}")
    logits, _ = hooked_forward(model, tokens, patch={hook_name: replace_hook(who, hook_name,
                                                                              source, mask)})
    assert logits is not None
    return logits
