"""Model-diff amplification on tensors and models: the logits ``base + a (tuned - base)`` and greedy
decoding from them.

Layer (1) of the lens (see :mod:`shiftlens.lenses.amplification`). Amplifying the difference
between a fine-tuned model and its base exaggerates what fine-tuning changed, so that rare
behaviours show up in a few samples (model-diff amplification, Goodfire / Aranguri & McGrath
2025; the diffing-toolkit's amplification method; the idea of contrasting two models' logits
goes back to contrastive decoding, Li et al. 2023). With ``a = 0`` the combined model is the
base, with ``a = 1`` the tuned model, with ``a > 1`` the change is extrapolated.

:class:`AmplifiedModel` is a causal LM whose logits are the combination; it is decoded by
:func:`shiftlens.generate.greedy_batch` with ``use_cache=False``: each new token is the argmax
of a full forward pass of *both* models over the whole sequence (the definition of greedy
decoding, :func:`shiftlens.generate.argmax_loop`, applied to the combined logits). Cost: a
response of ``n`` tokens after a ``p``-token prompt runs each model ``n`` times over ``p + i``
tokens (``i < n``), about ``2n(p + n/2)`` token-positions against ``p + n`` for one model's
cached decoding; fine at toy scale and for short responses, a KV cache per model would be the
next step at scale (``docs/diffing.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from shiftlens.bridge import device_of, model_name
from shiftlens.errors import ShiftlensError

__all__ = ["amplified_logits", "AmplifiedModel", "amplified_generations"]


def amplified_logits(
    base: Float[Tensor, "*rows vocab"], tuned: Float[Tensor, "*rows vocab"], alpha: float
) -> Float[Tensor, "*rows vocab"]:
    """``base + alpha (tuned - base)`` in float64, exact at ``alpha`` 0 and 1.

    The combination is anchored at the nearer model (``tuned + (alpha - 1)(tuned - base)`` for
    ``alpha >= 0.5``), which is the same number mathematically and makes ``alpha = 0`` return the
    base logits and ``alpha = 1`` the tuned logits bit for bit, so their argmaxes equal each
    model's own greedy choice.

    Args:
        base: The base model's logits.
        tuned: The tuned model's logits at the same positions (moved to ``base``'s device).
        alpha: The amplification (any real number; negative values move away from tuned).

    Returns:
        The combined logits (float64, on ``base``'s device).

    Example:
        >>> b, t = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0])
        >>> amplified_logits(b, t, 2.0).tolist(), torch.equal(amplified_logits(b, t, 1.0), t.double())
        ([3.0, 0.0], True)
    """
    b, t = base.double(), tuned.to(base.device).double()
    a = float(alpha)
    if a >= 0.5:
        return t + (a - 1.0) * (t - b)
    return b + a * (t - b)


class AmplifiedModel(torch.nn.Module):
    """A causal LM whose logits are ``base + alpha (tuned - base)`` of two models.

    It has what :mod:`shiftlens.generate` reads from a Hugging Face model (``config`` with the
    context window, ``generation_config`` with the stop tokens, ``get_input_embeddings``, a
    ``tokenizer``) and a ``forward(input_ids)`` returning an object with ``.logits``, so
    :func:`shiftlens.generate.greedy_batch` (with ``use_cache=False``) decodes it exactly like a
    model: the one decoding contract of shiftlens.

    Args:
        base, tuned: TransformerBridges (or Hugging Face causal LMs) with one tokenizer.
        alpha: The amplification.

    Example:
        >>> amp = AmplifiedModel(pair.base, pair.tuned, 4.0)  # doctest: +SKIP
        >>> greedy_batch(amp, [tokens], 16, use_cache=False)[0].tokens  # doctest: +SKIP
    """

    def __init__(self, base: Any, tuned: Any, alpha: float) -> None:
        super().__init__()
        self._models = (base, tuned)  # not submodules: their parameters stay theirs
        self.alpha = float(alpha)
        hf = getattr(base, "original_model", base)
        cfg = getattr(base, "cfg", None)
        n_ctx = getattr(cfg, "n_ctx", None) or getattr(hf.config, "max_position_embeddings",
                                                       None)
        self.config = SimpleNamespace(max_position_embeddings=n_ctx,
                                      vocab_size=int(getattr(cfg, "d_vocab", None)
                                                     or hf.config.vocab_size),
                                      _name_or_path=f"{model_name(base)} + {self.alpha:g} x "
                                                    f"({model_name(tuned)} - base)")
        self.generation_config = getattr(hf, "generation_config", None)
        self.tokenizer = getattr(base, "tokenizer", None)
        self._device = device_of(base)

    def get_input_embeddings(self) -> Any:
        """The base model's input embedding (where input ids go)."""
        hf = self._models[0]
        hf = getattr(hf, "original_model", hf)
        return hf.get_input_embeddings()

    @torch.no_grad()
    def forward(self, input_ids: Tensor, **kwargs: Any) -> Any:  # noqa: D401 - HF-style
        """``SimpleNamespace(logits=base + alpha (tuned - base))`` for ``input_ids``."""
        if kwargs.get("use_cache"):
            raise ShiftlensError("AmplifiedModel decodes without a key/value cache "
                                 "(greedy_batch(..., use_cache=False))")
        out = []
        for m in self._models:
            if hasattr(m, "original_model") and hasattr(m, "cfg"):
                out.append(m(input_ids.to(device_of(m)), return_type="logits"))
            else:
                out.append(m(input_ids=input_ids.to(device_of(m))).logits)
        return SimpleNamespace(logits=amplified_logits(out[0], out[1], self.alpha))


def amplified_generations(
    base: Any,
    tuned: Any,
    prompts: Sequence[Int[Tensor, " _pos"]],
    alphas: Sequence[float],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 8,
) -> dict[float, list[Any]]:
    """Greedy responses decoded from ``base + a (tuned - base)`` for each ``a`` in ``alphas``.

    Args:
        base, tuned: The two models (one tokenizer, same vocabulary).
        prompts: Prompt token ids, one ``[pos]`` tensor each (BOS included where used).
        alphas: Amplifications (0 = base, 1 = tuned).
        max_new_tokens: Longest response.
        batch_size: Prompts per forward pass.

    Returns:
        ``{alpha: [Generation per prompt]}`` (:class:`shiftlens.generate.Generation`).

    Example:
        >>> gens = amplified_generations(pair.base, pair.tuned, [toks], [0.0, 4.0])  # doctest: +SKIP
        >>> pair.tokenizer.decode(gens[4.0][0].tokens)  # doctest: +SKIP
    """
    from shiftlens.generate import greedy_batch

    return {float(a): greedy_batch(AmplifiedModel(base, tuned, a), list(prompts), max_new_tokens,
                                   use_cache=False, batch_size=batch_size) for a in alphas}
