"""The paper's sparsification, importance density and instruction score (pure tensor math).

Wu et al. (2024), "From Language Modeling to Instruction Following: Understanding the Behavior
Shift in LLMs after Instruction Tuning" (NAACL 2024), section 3. From a raw attribution matrix
``a[n, m]`` (input token ``n``, response token ``m``;
:func:`~shiftlens.lenses.attribution.core.attribute`):

- sparsified per response token: clip negatives, divide by the column max (+1e-9),
  ``s = ceil(L * value)``, ``s <= b`` set to 0 (``L = 10``, ``b = 7``): :func:`sparsify`;
- importance density ``I_n = ||s[n, :]||_1 / ||s[n, :]||_p`` (``p = 4``, +1e-9), divided by its
  max (+1e-9): :func:`importance_density`;
- instruction score ``sum_{n in instruction} I_n / log2(2 + |instruction|)``:
  :func:`instruction_score`.
"""

from __future__ import annotations

import math
import warnings

import torch
from jaxtyping import Bool, Float, Real
from torch import Tensor

from shiftlens.errors import ShiftlensError, ShiftlensWarning

__all__ = ["sparsify", "importance_density", "instruction_score"]

_EPS = 1e-9


# ====================================================================== density and score
def sparsify(
    scores: Real[Tensor, "n_in n_out"], levels: int = 10, threshold: int = 7
) -> Float[Tensor, "n_in n_out"]:
    """The sparsified attribution levels ``s`` of Wu et al. (2024, §3), in float64.

    Per response token (column): clip negatives to 0, divide by the column max (+1e-9),
    ``s = ceil(levels * value)``, then set ``s <= threshold`` to 0. Idempotent on its own output
    when every non-zero column reaches ``levels`` (as after one application).

    Args:
        scores: Raw attributions ``a[n, m]`` (``n_input x n_output``); ints or floats.
        levels: Number of levels ``L``.
        threshold: Levels ``<= threshold`` are dropped (``b``).

    Returns:
        Float64 tensor of integers in ``{0} U (threshold, levels]``, on the input's device.

    Raises:
        ShiftlensError: empty matrix, non-finite values, or bad ``levels``/``threshold``.

    Example:
        >>> sparsify(torch.tensor([[1.0, -1.0], [0.75, 2.0], [0.5, 1.5]])).tolist()
        [[10.0, 0.0], [8.0, 10.0], [0.0, 8.0]]
    """
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ShiftlensError(
            f"attribution scores must be a non-empty (n_input, n_output) matrix, got shape "
            f"{tuple(scores.shape)}"
        )
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ShiftlensError(f"levels must be a positive int, got {levels!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold < levels:
        raise ShiftlensError(f"threshold must be an int in [0, levels), got {threshold!r}")
    a = scores.detach().to(torch.float64)
    if not torch.isfinite(a).all():
        raise ShiftlensError("attribution matrix contains NaN or infinite values")
    a = a.clamp(min=0)
    a = a / (a.amax(dim=0, keepdim=True) + _EPS)
    s = torch.ceil(levels * a)
    return torch.where(s <= threshold, torch.zeros_like(s), s)


def importance_density(
    scores: Real[Tensor, "n_in n_out"], levels: int = 10, threshold: int = 7, p: float | int = 4
) -> Float[Tensor, " n_in"]:
    """Importance density of every input token from an attribution matrix (Wu et al. 2024, §3).

    Per response token (column) ``m``: negatives are clipped to 0, the column is divided by its
    max (+1e-9), ``s = ceil(levels * value)`` and entries ``s <= threshold`` are set to 0. Then
    ``I_n = ||s[n, :]||_1 / (||s[n, :]||_p + 1e-9)`` and ``I / (max_n I_n + 1e-9)``, so
    ``I`` lies in [0, 1]. Computed in float64 on the input's device. A matrix already on the
    ``0..levels`` integer scale whose every non-zero column reaches ``levels`` (the published
    matrices of the paper) is unchanged by the re-normalisation.

    Args:
        scores: Raw attributions ``a[n, m]`` (``n_input x n_output``); ints or floats.
        levels: Number of levels ``L``.
        threshold: Levels ``<= threshold`` are dropped (``b``).
        p: The norm in the denominator (``p > 1``).

    Returns:
        Float64 tensor ``[n_input]`` in [0, 1].

    Raises:
        ShiftlensError: empty matrix, non-finite values, or bad ``levels``/``threshold``/``p``.

    Example:
        >>> a = torch.tensor([[1.0, 0.2], [0.9, 1.0], [0.0, 0.1]])
        >>> sparsify(a).tolist()
        [[10.0, 0.0], [9.0, 10.0], [0.0, 0.0]]
        >>> [round(v, 4) for v in importance_density(a).tolist()]  # [1, 19 / (9^4 + 10^4)^(1/4), 0] / max
        [0.5971, 1.0, 0.0]
    """
    if not (isinstance(p, (int, float)) and p > 1 and math.isfinite(p)):
        raise ShiftlensError(f"p must be a finite number > 1, got {p!r}")
    s = sparsify(scores, levels, threshold)
    l1 = s.sum(dim=1)
    lp = s.pow(p).sum(dim=1).pow(1.0 / p)
    dens = l1 / (lp + _EPS)
    return dens / (dens.max() + _EPS)


def instruction_score(
    density: Float[Tensor, " n_in"], mask: Bool[Tensor, " n_in"], *, label: str = "prompt"
) -> float:
    """Instruction score ``sum_{n in instruction} I_n / log2(2 + |instruction|)`` (§3).

    Args:
        density: Importance density of the input tokens (:func:`importance_density`).
        mask: True at the instruction tokens.
        label: Names the prompt in messages.

    Returns:
        The score; NaN (with a :class:`ShiftlensWarning`) when the mask is empty.

    Example:
        >>> instruction_score(torch.tensor([1.0, 0.5, 0.0]), torch.tensor([True, True, False]))
        0.75
    """
    if density.shape != mask.shape:
        raise ShiftlensError(
            f"{label}: density has {tuple(density.shape)} entries but the mask "
            f"{tuple(mask.shape)}"
        )
    k = int(mask.sum())
    if k == 0:
        warnings.warn(
            f"{label}: no instruction token (no instruction span); instruction score is NaN",
            ShiftlensWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(density.to(torch.float64)[mask.to(density.device)].sum()) / math.log2(2 + k)
