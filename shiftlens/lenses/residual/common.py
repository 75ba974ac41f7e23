"""What the residual lens's pair functions share: the pair check, argument checks, batching, and
the error for a non-finite value.

:func:`check_pair` is public (also from :mod:`.compare` and ``shiftlens.residual``); the rest
is internal to :mod:`.compare` and :mod:`.patching`.

Nothing silent: a NaN or infinity in an activation, logit or log-probability that a statistic
would be computed from raises :func:`nonfinite_error` (a :class:`ShiftlensError`) naming the
model, the prompt, the hook (layer) and the position, where the forward pass first turned
non-finite (:func:`shiftlens.diagnose.locate_nonfinite`) and which weights, if any, hold non-finite values.
No result of this lens is ever computed over silently dropped values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from shiftlens.bridge import check_finite_weights
from shiftlens.checks import check_int, check_layers, check_prompts
from shiftlens.diagnose import nonfinite_at, where_nonfinite
from shiftlens.errors import ShiftlensError
from shiftlens.prompts import InstructionPrompt, TokenizedPrompt

__all__ = ["check_pair"]


# ====================================================================== the pair
def check_pair(pair: Any) -> None:
    """Raise :class:`ShiftlensError` unless both models can be compared position by position.

    Runs the pair's own check (:meth:`shiftlens.ModelPair.check_compatible`: equal shapes,
    the same tokenizer, the same BOS handling) also on a pair built with ``check=False``, and
    adds what comparing both models' activations needs: one dtype (nothing is converted
    silently). The models may live on different devices (``ModelPair.from_pretrained(...,
    device_map=({"": 0}, {"": 1}))``): activations are moved explicitly where they are compared
    or patched in. The pair's identical-weights warning is not repeated here (it was given when
    the pair was built).

    Args:
        pair: A :class:`shiftlens.ModelPair`.

    Raises:
        ShiftlensError: naming the field and both models.

    Example:
        >>> check_pair(pair)  # doctest: +SKIP
    """
    for attr in ("base", "tuned", "tokenize", "tokenizer", "check_compatible", "names"):
        if not hasattr(pair, attr):
            raise ShiftlensError(f"expected a shiftlens.ModelPair, got {type(pair).__name__}")
    pair.check_compatible(weights=False)
    who = f"base {pair.names['base']!r} vs tuned {pair.names['tuned']!r}"
    tb, tt = getattr(pair.base.cfg, "dtype", None), getattr(pair.tuned.cfg, "dtype", None)
    if tb is not None and tt is not None and tb != tt:
        raise ShiftlensError(f"incompatible pair ({who}): dtypes {tb} != {tt}")


# ====================================================================== arguments
def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool (``0``/``1``/strings are refused: a flag is True or False)."""
    if not isinstance(value, bool):
        raise ShiftlensError(f"{name} must be True or False, got {value!r}")
    return value


def _names(values: Any, allowed: Sequence[str], what: str, *, empty_ok: bool = False
           ) -> list[str]:
    """``values`` (one name or several) deduplicated, each one of ``allowed``."""
    if isinstance(values, str):
        values = [values]
    elif isinstance(values, (bytes, dict)) or not isinstance(values, (Sequence, set, frozenset)):
        raise ShiftlensError(f"{what}s must be a name or a list of names from "
                             f"{tuple(allowed)}, got {values!r}")
    out = list(dict.fromkeys(values))
    if not out and not empty_ok:
        raise ShiftlensError(f"no {what}s given")
    for v in out:
        if not isinstance(v, str) or v not in allowed:
            raise ShiftlensError(f"unknown {what} {v!r}; choose from {tuple(allowed)}")
    return out


def _common(pair: Any, prompts: Any, batch_size: Any, n_boot: Any, seed: Any,
            layers: Any, **flags: Any) -> tuple[list[InstructionPrompt], list[int]]:
    """The checks every pair function starts with; returns the prompts and the layers.

    ``flags`` are boolean arguments (``with_reference=...``), each checked to be a bool.
    """
    check_pair(pair)
    ps = check_prompts(prompts)
    check_int("batch_size", batch_size, minimum=1)
    check_int("n_boot", n_boot, minimum=1)
    check_int("seed", seed, minimum=0)
    for name, value in flags.items():
        check_bool(name, value)
    return ps, check_layers(pair.base, layers)


def _tokenize(pair: Any, prompts: Sequence[InstructionPrompt], with_reference: bool
              ) -> list[TokenizedPrompt]:
    return [pair.tokenize(p, response=(p.reference if with_reference and p.reference else None))
            for p in prompts]


def _batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


def _padded(tps: Sequence[TokenizedPrompt], pad_id: int
            ) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """Right-padded token ids and the mask of real positions (on the CPU)."""
    width = max(int(tp.tokens.shape[0]) for tp in tps)
    toks = torch.full((len(tps), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(tps), width), dtype=torch.bool)
    for j, tp in enumerate(tps):
        toks[j, : tp.tokens.shape[0]] = tp.tokens
        valid[j, : tp.tokens.shape[0]] = True
    return toks, valid


# ====================================================================== non-finite values
class NonFinite(ShiftlensError):
    """A non-finite value in one prompt's ``what`` (raised before the pair's diagnosis is added
    by :func:`nonfinite_error`; its message already names the role, hook and prompt)."""

    def __init__(self, role: str, what: str, pid: str, count: int, position: int,
                 tokens: Tensor | None = None) -> None:
        self.role, self.what, self.pid = role, what, pid
        self.count, self.position, self.tokens = count, position, tokens
        super().__init__(f"{role} model: {count} non-finite value(s) in {what} for prompt "
                         f"{pid!r} (first at position {position})")


def check_rows(role: str, what: str, x: Tensor, valid: Tensor,
               tps: Sequence[TokenizedPrompt], ids: Sequence[str]) -> None:
    """Raise :class:`NonFinite` for the first prompt of a right-padded batch ``x [batch, pos,
    ...]`` holding a NaN or infinity at a real position (``valid [batch, pos]``); ``tps`` and
    ``ids`` are the batch's prompts and their ids."""
    bad = ~torch.isfinite(x)
    if bad.dim() > 2:
        bad = bad.flatten(2).any(-1)
    bad = bad & valid.to(bad.device)
    if not bool(bad.any()):
        return
    j, pos = (int(i) for i in torch.nonzero(bad)[0])
    count = int(bad[j].sum()) if x.dim() == 2 else int(
        (~torch.isfinite(x[j][valid[j].to(x.device)])).sum())
    raise NonFinite(role, what, ids[j], count, pos, tps[j].tokens)


def check_prompt_acts(role: str, what: str, x: Tensor, tp: TokenizedPrompt, pid: str) -> None:
    """Raise :class:`NonFinite` if one prompt's ``x [pos, ...]`` holds a NaN or infinity."""
    r = nonfinite_at(x)
    if r is not None:
        raise NonFinite(role, what, pid, r[0], r[1][0], tp.tokens)


def nonfinite_error(pair: Any, err: NonFinite) -> ShiftlensError:
    """The user's error for ``err``: model name, prompt, hook and position, where the forward
    pass first turns non-finite and which weights are non-finite (or that none are)."""
    model = pair.models[err.role] if hasattr(pair, "models") else getattr(pair, err.role)
    msg = (f"{err.role} model {pair.names[err.role]!r}: {err.count} non-finite value(s) in "
           f"{err.what} for prompt {err.pid!r} (first at position {err.position})")
    if err.tokens is not None:
        msg += where_nonfinite(model, err.tokens)
    try:
        check_finite_weights(model, name=pair.names[err.role])
        msg += (f"; its weights are all finite, so an activation overflowed "
                f"(dtype {getattr(model.cfg, 'dtype', '?')}): try float32 or bfloat16")
    except ShiftlensError as e:
        msg += f"; {e}"
    return ShiftlensError(msg + ". No statistic was computed over non-finite values.")
