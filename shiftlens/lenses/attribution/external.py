"""Bring your own attributions: the checks behind :meth:`SensitivityResult.from_matrices`.

Matrices computed outside shiftlens (the paper's released matrices, Inseq's output, your own
gradients) enter the lens through
:meth:`~shiftlens.lenses.attribution.results.SensitivityResult.from_matrices`; this module
checks them: orientation (:data:`LAYOUTS`), shapes against the instruction masks, numbers,
finiteness, and one value per prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from shiftlens.errors import ShiftlensError

__all__ = ["LAYOUTS"]

#: Orientation of matrices given to ``SensitivityResult.from_matrices``: ``[n_input,
#: n_response]`` (shiftlens' own) or ``[n_response, n_input]``.
LAYOUTS: tuple[str, ...] = ("input_response", "response_input")


def check_external_matrix(a: Any, n_in: int, layout: str, where: str) -> Tensor | None:
    """One external matrix as ``[n_input, n_response]`` (CPU, its own dtype), or None."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        if a.dtype.kind not in "iuf":
            raise ShiftlensError(f"{where}: matrix must hold numbers, got a {a.dtype} array")
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, Tensor) or a.dtype == torch.bool or a.is_complex():
        got = f"a {a.dtype} tensor" if isinstance(a, Tensor) else type(a).__name__
        raise ShiftlensError(f"{where}: matrix must be a 2-D tensor or array of numbers (or None "
                             f"without a response), got {got}")
    a = a.detach().cpu()
    if a.ndim != 2:
        raise ShiftlensError(f"{where}: matrix must be 2-D, got shape {tuple(a.shape)}")
    if layout == "response_input":
        a = a.T.contiguous()
    n_axis, m_axis = ("rows", "columns") if layout == "input_response" else ("columns", "rows")
    if a.shape[0] != n_in:
        hint = ""
        if a.shape[1] == n_in:
            other = LAYOUTS[1 - LAYOUTS.index(layout)]
            hint = f"; it looks transposed: pass layout={other!r}"
        raise ShiftlensError(
            f"{where}: the instruction mask has {n_in} input tokens but the matrix "
            f"(layout={layout!r}: input tokens along its {n_axis}) has {a.shape[0]}{hint}")
    if a.shape[1] == 0:
        raise ShiftlensError(f"{where}: matrix has no response token along its {m_axis} (give "
                             "None for a prompt without response)")
    bad = int((~torch.isfinite(a)).sum()) if a.is_floating_point() else 0
    if bad:
        raise ShiftlensError(f"{where}: matrix has {bad} NaN or infinite values; no score is "
                             "computed over non-finite attributions")
    return a


def check_external_mask(m: Any, where: str) -> Tensor:
    """One instruction mask as a 1-D boolean CPU tensor (a tensor, array or list of bools)."""
    if isinstance(m, np.ndarray):
        m = torch.from_numpy(m)
    elif isinstance(m, Sequence) and not isinstance(m, (str, bytes)):
        if not all(isinstance(v, (bool, np.bool_)) for v in m):
            raise ShiftlensError(f"{where}: instruction mask must hold booleans (True at the "
                                 "instruction tokens)")
        m = torch.tensor([bool(v) for v in m], dtype=torch.bool)
    if not isinstance(m, Tensor) or m.dtype != torch.bool or m.ndim != 1:
        got = f"a {m.dtype} tensor of shape {tuple(m.shape)}" if isinstance(m, Tensor) else \
            type(m).__name__
        raise ShiftlensError(f"{where}: instruction mask must be a 1-D boolean tensor (True at the "
                             f"instruction tokens), got {got}")
    return m.cpu()


def per_prompt(name: str, values: Any, n: int, default: Any) -> list[Any]:
    """One value per prompt (``default`` for each when ``values`` is None)."""
    if values is None:
        return [default] * n
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray,
                                                                     pd.Series)):
        raise ShiftlensError(f"{name} must be one value per prompt, got {type(values).__name__}")
    values = list(values)
    if len(values) != n:
        raise ShiftlensError(f"{name}: {len(values)} values for {n} prompts")
    return values


def per_role(name: str, values: Any, n: int, default: Any,
             roles: Sequence[str]) -> dict[str, list[Any]]:
    """``{role: one value per prompt}`` from a mapping with exactly ``roles`` as keys."""
    if values is None:
        return {r: [default] * n for r in roles}
    if not isinstance(values, Mapping) or sorted(map(str, values)) != sorted(roles):
        got = sorted(map(str, values)) if isinstance(values, Mapping) else type(values).__name__
        raise ShiftlensError(f"{name} must be {{'base': [...], 'tuned': [...]}}, got {got}")
    return {r: per_prompt(f"{name}[{r!r}]", values[r], n, default) for r in roles}
