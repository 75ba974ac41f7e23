"""Model-diff amplification on a base/tuned pair: greedy responses from ``base + a (tuned - base)``.

Layer (2) of the lens: :func:`amplification` validates the pair, the prompts and the
amplifications, decodes every prompt at every ``a`` (:func:`.core.amplified_generations`), then
assembles the responses and the token counts into an :class:`AmplificationResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from shiftlens.bridge import check_finite_weights
from shiftlens.checks import check_int
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.amplification.core import amplified_generations
from shiftlens.lenses.amplification.results import AmplificationResult
from shiftlens.prompts import InstructionPrompt
from shiftlens.result import make_meta

__all__ = ["amplification"]


def _check_pair(pair: Any) -> None:
    for attr in ("base", "tuned", "tokenize", "tokenizer", "check_compatible", "names"):
        if not hasattr(pair, attr):
            raise ShiftlensError(f"expected a shiftlens.ModelPair, got {type(pair).__name__}")
    pair.check_compatible(weights=False)
    # base + a (tuned - base) is NaN for every a once one weight is: refuse, naming the tensor
    # (greedy decoding would otherwise take the argmax of NaN logits without a word)
    for role in ("base", "tuned"):
        check_finite_weights(getattr(pair, role), name=pair.names[role])


def _prompt_tokens(pair: Any, prompts: Any) -> list[torch.Tensor]:
    if isinstance(prompts, (str, InstructionPrompt)):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not prompts:
        raise ShiftlensError("prompts must be a non-empty list of strings or InstructionPrompts")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            p = InstructionPrompt(p, id=f"#{i}")
        if not isinstance(p, InstructionPrompt):
            raise ShiftlensError(f"prompt {i} is a {type(p).__name__}, not a string or an "
                                 "InstructionPrompt")
        out.append(pair.tokenize(p).tokens.long())
    return out


def amplification(
    pair: Any,
    prompts: Sequence[Any],
    *,
    alphas: Sequence[float] = (0.0, 1.0, 2.0, 4.0),
    max_new_tokens: int = 24,
    batch_size: int = 8,
    progress: bool = True,
) -> AmplificationResult:
    """Greedy responses of the amplified model ``base + a (tuned - base)`` for each ``a``.

    ``a = 0`` decodes the base model and ``a = 1`` the tuned model (their own greedy responses,
    exactly); ``a > 1`` extrapolates the fine-tuning's change so that what it did shows in a few
    responses. Each response is decoded by :func:`shiftlens.generate.greedy_batch` without a
    cache (a full forward pass of both models per token; see :mod:`.core` for the cost). The
    Result also counts the tokens of every response: :meth:`AmplificationResult.top_tokens` ranks
    the tokens the most amplified model writes more often than the base.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts: Strings or :class:`~shiftlens.InstructionPrompt`s (their ``text``; BOS added
            where the pair uses one).
        alphas: Amplifications (the toolkit's presets go to 2.5-3; 0 and 1 are the two models).
        max_new_tokens: Longest response.
        batch_size: Prompts per forward pass.
        progress: Show a progress bar.

    Returns:
        An :class:`AmplificationResult`.

    Raises:
        ShiftlensError: an incompatible pair, no prompts, a bad argument.

    Example:
        >>> res = amplification(organism_pair("topic"), neutral_texts(8, 1))  # doctest: +SKIP
        >>> res.to_frame().query("alpha == 4").response.tolist()  # doctest: +SKIP
    """
    _check_pair(pair)
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    if isinstance(alphas, (int, float)):
        alphas = [alphas]
    al = []
    for a in alphas:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not np.isfinite(a):
            raise ShiftlensError(f"alphas must be finite numbers, got {a!r}")
        al.append(float(a))
    al = list(dict.fromkeys(al))
    if not al:
        raise ShiftlensError("alphas is empty")
    toks = _prompt_tokens(pair, prompts)
    gens: dict[float, list[Any]] = {}
    for a in tqdm(al, desc="amplification", disable=not progress):
        gens.update(amplified_generations(pair.base, pair.tuned, toks, [a],
                                          max_new_tokens=max_new_tokens, batch_size=batch_size))
    rows = []
    for a, gs in gens.items():
        for i, g in enumerate(gs):
            rows.append((a, i, pair.tokenizer.decode(toks[i]), pair.tokenizer.decode(g.tokens),
                         " ".join(str(t) for t in g.tokens.tolist()), int(g.tokens.shape[0]),
                         g.stopped))
    frame = pd.DataFrame(rows, columns=["alpha", "prompt_index", "prompt", "response",
                                        "token_ids", "n_tokens", "stopped"])
    vocab = int(pair.cfg.d_vocab)
    counts = torch.zeros(len(al), vocab, dtype=torch.float64)
    for j, a in enumerate(al):
        for g in gens[a]:
            counts[j].index_add_(0, g.tokens.long(), torch.ones(g.tokens.shape[0],
                                                                dtype=torch.float64))
    res = AmplificationResult(
        generations=frame, counts=counts, token_text=_token_texts(pair, counts),
        meta=make_meta(pair, seed=None, params=dict(alphas=al, max_new_tokens=max_new_tokens,
                                                    decoding="greedy, no cache")))
    res.validate()
    return res


def _token_texts(pair: Any, counts: torch.Tensor) -> dict[int, str]:
    from shiftlens.tokens import token_strings

    ids = torch.nonzero(counts.sum(0) > 0).flatten().tolist()
    return {int(i): token_strings(pair.tokenizer, [i, i])[1] for i in ids}
