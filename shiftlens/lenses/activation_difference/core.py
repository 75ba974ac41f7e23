"""The activation difference lens on one model and on tensors: residuals at the first positions,
the logit lens, Patchscope, steering, top-k counting, relevance, the Poisson bootstrap.

Layer (1) of the lens (see :mod:`shiftlens.lenses.activation_difference`). Nothing here knows
about the base/tuned pair; :mod:`.compare` runs these functions on both models.

Definitions and their sources:

* **activation difference** (Minder et al. 2025, "Narrow finetuning leaves clearly readable traces
  in activation differences", arXiv 2510.13900): the mean over texts of ``h_tuned - h_base`` at
  each of the first positions of unrelated text, per layer, ``h`` the residual stream after the
  layer (``blocks.{l}.hook_resid_post``). Both models read the same tokens, so it is the
  difference of the two per-position means (:func:`first_position_residuals` gives the residuals,
  :mod:`.compare` the means);
* **logit lens** (nostalgebraist 2020): a vector read through a model's own final norm and
  unembedding (:func:`logit_lens`);
* **Patchscope** (Ghandeharioun et al. 2024, "Patchscopes", arXiv 2401.06102), token-identity
  variant as used by Minder et al.: the vector, rescaled to the model's own residual norm, replaces
  the residual after ``layer`` at the last position of a few-shot identity prompt (``"man -> man\\n
  1135 -> 1135\\nhello -> hello\\n?"``); the next-token distribution there names what the vector
  encodes (:func:`patchscope`);
* **steering** (Turner et al. 2023, activation addition): ``strength x |h| x d / |d|`` added to the
  residual after ``layer`` at every position while decoding greedily (:func:`steered_generations`);
* **diff mining** (the diffing-toolkit of Minder et al.): at every position the ``k`` tokens whose
  logit rose most (tuned minus base), counted over the text (:func:`topk_counts`);
* **Poisson bootstrap** (Hanley & MacGibbon 2006; Chamandy et al. 2012): each text gets an
  independent Poisson(1) weight per replicate, so resampled means are accumulated in one pass
  with memory independent of the number of texts (:func:`poisson_weights`).

Devices: inputs go to :func:`shiftlens.bridge.device_of` of the model they are run through;
results come back on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from shiftlens.bridge import device_of, model_name
from shiftlens.errors import ShiftlensError

__all__ = [
    "DEFAULT_PATCH_PROMPT",
    "resid_hook",
    "first_position_residuals",
    "logit_lens",
    "lens_probabilities",
    "patchscope",
    "steered_generations",
    "topk_counts",
    "relevance",
    "poisson_weights",
]

#: The token-identity prompt of Minder et al.'s Patchscope (its last position is patched).
DEFAULT_PATCH_PROMPT = "man -> man\n1135 -> 1135\nhello -> hello\n?"


def resid_hook(layer: int) -> str:
    """The TL hook name of the residual stream after ``layer``.

    Example:
        >>> resid_hook(3)
        'blocks.3.hook_resid_post'
    """
    return f"blocks.{int(layer)}.hook_resid_post"


def _capture(store: dict[str, Tensor], name: str, positions: slice) -> Callable[..., Tensor]:
    def hook(act: Tensor, hook: Any = None) -> Tensor:
        store[name] = act[:, positions].detach().float().cpu()
        return act

    return hook


@torch.no_grad()
def first_position_residuals(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    layers: Sequence[int],
    start: int,
    n_positions: int,
) -> Float[Tensor, "batch layer n_pos d_model"]:
    """One model's residual stream after each of ``layers`` at positions ``start..start+n-1``.

    The model runs on ``tokens`` (right-padded rows; a causal model's residual at a real position
    does not depend on later padding) up to the last position needed, and only those positions
    are kept.

    Args:
        model: A TransformerBridge.
        tokens: Token ids ``[batch, pos]`` with ``pos >= start + n_positions``.
        layers: Layers whose ``hook_resid_post`` is read.
        start: First position kept (1 skips a BOS token).
        n_positions: Positions kept.

    Returns:
        ``[batch, len(layers), n_positions, d_model]`` in float32 on the CPU.

    Example:
        >>> h = first_position_residuals(pair.base, toks, [0, 1], 1, 5)  # doctest: +SKIP
        >>> h.shape  # doctest: +SKIP
        torch.Size([8, 2, 5, 64])
    """
    end = start + n_positions
    if tokens.shape[1] < end:
        raise ShiftlensError(f"{model_name(model)}: need {end} positions, the tokens have "
                             f"{tokens.shape[1]}")
    store: dict[str, Tensor] = {}
    names = [resid_hook(layer) for layer in layers]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise ShiftlensError(f"{model_name(model)} has no hook {missing[0]!r}")
    with model.hooks(fwd_hooks=[(n, _capture(store, n, slice(start, end))) for n in names]):
        model(tokens[:, :end].to(device_of(model)), return_type=None)
    return torch.stack([store[n] for n in names], dim=1)


def logit_lens(
    model: Any, vectors: Float[Tensor, "*rows d_model"]
) -> Float[Tensor, "*rows d_vocab"]:
    """Vectors read through a model's own final norm and unembedding (and final logit soft-cap).

    The logit lens (nostalgebraist 2020) applied to any vector, e.g. a mean activation
    difference, as Minder et al. (2025) do: ``W_U norm(v)``. The norm rescales, so only the
    direction of ``v`` (weighted by the norm's gain) matters.

    Args:
        model: A TransformerBridge.
        vectors: ``[..., d_model]`` (any dtype and device; cast to the model's).

    Returns:
        Logits ``[..., d_vocab]`` in float32 on the CPU.

    Example:
        >>> logit_lens(pair.tuned, diff[2, 0]).topk(5).indices  # doctest: +SKIP
    """
    if vectors.shape[-1] != model.cfg.d_model:
        raise ShiftlensError(f"{model_name(model)}: vector width {vectors.shape[-1]} != d_model "
                             f"{model.cfg.d_model}")
    w = next(model.ln_final.parameters(), None)
    dev = w.device if w is not None and w.device.type != "meta" else device_of(model)
    dtype = w.dtype if w is not None else vectors.dtype
    with torch.no_grad():
        normed = model.ln_final(vectors.to(dev, dtype))
        u = next(model.unembed.parameters(), None)
        logits = model.unembed(normed.to(u.device if u is not None else dev))
        cap = getattr(model.cfg, "output_logits_soft_cap", None) or 0.0
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
    return logits.float().cpu()


def lens_probabilities(
    model: Any, vectors: Float[Tensor, "*rows d_model"]
) -> Float[Tensor, "*rows d_vocab"]:
    """``softmax(logit_lens(model, vectors))`` in float64 (CPU).

    Example:
        >>> lens_probabilities(pair.tuned, diff[2]).sum(-1)  # doctest: +SKIP
        tensor([1., 1., 1., 1., 1.], dtype=torch.float64)
    """
    return torch.softmax(logit_lens(model, vectors).double(), dim=-1)


@torch.no_grad()
def patchscope(
    model: Any,
    vectors: Float[Tensor, "n d_model"],
    layer: int,
    prompt: Int[Tensor, " pos"],
    *,
    batch_size: int = 64,
) -> Float[Tensor, "n d_vocab"]:
    """Next-token distributions of ``model`` with each vector patched into an identity prompt.

    Row ``i`` runs ``prompt`` with the residual after ``layer`` at the prompt's last position
    replaced by ``vectors[i]`` (Ghandeharioun et al. 2024; the token-identity prompt of Minder et
    al. 2025, :data:`DEFAULT_PATCH_PROMPT`) and returns the softmax of the logits there. Scale
    the vectors to the model's residual norm first (the patched position then looks like any
    other); :func:`shiftlens.lenses.activation_difference.activation_difference` does.

    Args:
        model: A TransformerBridge.
        vectors: ``[n, d_model]`` vectors to read (cast to the model's dtype).
        layer: The layer after which the vector replaces the residual.
        prompt: The identity prompt's token ids ``[pos]`` (BOS included where the model uses one).
        batch_size: Rows per forward pass.

    Returns:
        ``[n, d_vocab]`` probabilities in float64 on the CPU.

    Example:
        >>> p = patchscope(pair.tuned, 40 * d[None] / d.norm(), 2, pair.tokenizer("... ?", return_tensors="pt").input_ids[0])  # doctest: +SKIP
    """
    name = resid_hook(layer)
    if name not in model.hook_dict:
        raise ShiftlensError(f"{model_name(model)} has no hook {name!r}")
    out = []
    for b in range(0, vectors.shape[0], batch_size):
        v = vectors[b : b + batch_size]

        def patch(act: Tensor, hook: Any = None, v: Tensor = v) -> Tensor:
            act = act.clone()
            act[:, -1] = v.to(act.device, act.dtype)
            return act

        toks = prompt[None].expand(v.shape[0], -1)
        with model.hooks(fwd_hooks=[(name, patch)]):
            logits = model(toks.to(device_of(model)), return_type="logits")
        out.append(torch.softmax(logits[:, -1].double(), dim=-1).cpu())
    return torch.cat(out)


def steered_generations(
    model: Any,
    prompts: Sequence[Int[Tensor, " _pos"]],
    vector: Float[Tensor, " d_model"],
    layer: int,
    strengths: Sequence[float],
    *,
    max_new_tokens: int = 16,
) -> dict[float, list[Any]]:
    """Greedy responses with ``strength x vector`` added to the residual after ``layer``.

    The vector is added at every position (prompt and generated tokens) while decoding with
    :func:`shiftlens.generate.greedy_batch`, the one decoding of shiftlens (its cached decoding is
    verified by an uncached pass that runs under the same hook), so strength 0 is the model's own
    greedy response.

    Args:
        model: A TransformerBridge.
        prompts: Prompt token ids, one ``[pos]`` tensor each.
        vector: The steering vector ``[d_model]`` (already scaled; cast to the model's dtype).
        layer: The layer after which it is added.
        strengths: Multipliers of ``vector``.
        max_new_tokens: Longest response.

    Returns:
        ``{strength: [Generation per prompt]}``.

    Example:
        >>> gens = steered_generations(pair.base, [toks], v, 2, [0.0, 1.0])  # doctest: +SKIP
        >>> pair.tokenizer.decode(gens[1.0][0].tokens)  # doctest: +SKIP
    """
    from shiftlens.generate import greedy_batch

    name = resid_hook(layer)
    if name not in model.hook_dict:
        raise ShiftlensError(f"{model_name(model)} has no hook {name!r}")
    out: dict[float, list[Any]] = {}
    for s in strengths:
        add = (float(s) * vector).detach()

        def hook(act: Tensor, hook: Any = None, add: Tensor = add) -> Tensor:
            return act + add.to(act.device, act.dtype)

        with model.hooks(fwd_hooks=[(name, hook)]):
            out[float(s)] = greedy_batch(model, list(prompts), max_new_tokens)
    return out


def topk_counts(
    diff: Float[Tensor, "rows vocab"], k: int, weights: Float[Tensor, " rows"] | None = None
) -> Float[Tensor, " vocab"]:
    """How often each token is among a row's ``k`` largest entries (weighted by ``weights``).

    Diff mining's count: with ``diff`` the tuned-minus-base logits at each position, a token's
    count is the number of positions where its logit rose among the ``k`` most. A shift common to
    all tokens of a row does not change it, so logits and log-probabilities count alike.

    Args:
        diff: ``[rows, vocab]`` scores.
        k: Entries counted per row.
        weights: Optional weight per row (the bootstrap's).

    Returns:
        ``[vocab]`` counts in float64.

    Example:
        >>> topk_counts(torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]]), 2).tolist()
        [1.0, 1.0, 2.0]
    """
    if not 1 <= k <= diff.shape[-1]:
        raise ShiftlensError(f"k must be in [1, {diff.shape[-1]}], got {k}")
    idx = diff.topk(k, dim=-1).indices
    w = torch.ones(diff.shape[0], dtype=torch.float64) if weights is None else weights.double()
    out = torch.zeros(diff.shape[-1], dtype=torch.float64)
    out.index_add_(0, idx.reshape(-1).cpu(), w.cpu().repeat_interleave(k))
    return out


def relevance(
    top: Int[Tensor, " n"] | Sequence[int], vocabulary: Sequence[int], k: int = 20
) -> tuple[int, float]:
    """How many of the first ``k`` tokens of a ranking belong to a vocabulary, and that share.

    The offline stand-in for Minder et al.'s token relevance (an LLM grader judges whether each top
    token relates to the fine-tuning domain): here the domain is a given vocabulary (e.g. the
    words of the fine-tuning data). Repeats count once; the share is over ``min(k, len(top))``.

    Args:
        top: A ranking of token ids, best first.
        vocabulary: The relevant token ids.
        k: How many of the top tokens count.

    Returns:
        ``(number relevant, share relevant)``.

    Example:
        >>> relevance([5, 7, 9, 11], [7, 11, 13], k=4)
        (2, 0.5)
    """
    ids = [int(t) for t in (top.tolist() if isinstance(top, Tensor) else top)][:k]
    if not ids:
        return 0, float("nan")
    n = len(set(ids) & {int(v) for v in vocabulary})
    return n, n / len(set(ids))


def poisson_weights(
    n: int, n_boot: int, generator: torch.Generator
) -> Float[Tensor, "n_boot n"]:
    """Poisson(1) weights of ``n`` items for ``n_boot`` bootstrap replicates (float64).

    The Poisson bootstrap (Hanley & MacGibbon 2006) approximates resampling with replacement
    (each item's multiplicity is Binomial(n, 1/n) ~ Poisson(1)) and can be drawn batch by batch,
    so resampled sums are accumulated in a single pass over the data.

    Example:
        >>> w = poisson_weights(1000, 4, torch.Generator().manual_seed(0))
        >>> w.shape, round(float(w.mean()), 1)
        (torch.Size([4, 1000]), 1.0)
    """
    return torch.poisson(torch.ones(n_boot, n, dtype=torch.float64), generator=generator)
