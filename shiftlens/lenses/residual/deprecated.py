"""Names kept for code written against shiftlens 0.1 (each warns with a DeprecationWarning).

* ``greedy_response`` - use :func:`shiftlens.generate.greedy` (the one greedy decoding);
* ``check_pair_compatible`` - use :func:`shiftlens.lenses.residual.compare.check_pair` (the
  pair's own :meth:`shiftlens.ModelPair.check_compatible` plus one device and dtype).
"""

from __future__ import annotations

import warnings
from typing import Any

from jaxtyping import Int
from torch import Tensor

__all__ = ["greedy_response", "check_pair_compatible"]


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
    from shiftlens.generate import greedy

    warnings.warn("shiftlens.residual.greedy_response is deprecated; use "
                  "shiftlens.generate.greedy", DeprecationWarning, stacklevel=2)
    stops = None if eos_token_id is None else [eos_token_id]
    return greedy(model, tokens, max_new_tokens, stop_ids=stops).with_stop()


def check_pair_compatible(pair: Any) -> None:
    """Deprecated: use :func:`shiftlens.lenses.residual.compare.check_pair`.

    Raises :class:`shiftlens.ShiftlensError` unless both models can be compared position by
    position: the pair's own check (shapes, tokenizer) plus one device and one dtype.

    Example:
        >>> check_pair_compatible(pair)  # doctest: +SKIP
    """
    from shiftlens.lenses.residual.compare import check_pair

    warnings.warn("shiftlens.residual.check_pair_compatible is deprecated; use "
                  "pair.check_compatible() (the residual lens's functions run "
                  "shiftlens.lenses.residual.check_pair themselves)", DeprecationWarning,
                  stacklevel=2)
    check_pair(pair)
