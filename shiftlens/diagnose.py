"""Where a NaN or an infinity first appears: one diagnosis for every lens.

:func:`nonfinite_at` finds the first non-finite entry of a tensor; :func:`locate_nonfinite`
runs one forward pass and names the first hook (in the order the model computes them) whose
activation holds one. The lenses use both to say, in their errors, where the forward pass first
turned non-finite, next to which weights (if any) are non-finite (:func:`shiftlens.bridge.
check_finite_weights`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Int, Shaped
from torch import Tensor

from shiftlens.bridge import device_of

__all__ = ["BLOCK_ORDER", "nonfinite_at", "locate_nonfinite", "describe_site", "where_nonfinite"]

#: The hooks of one block in the order a forward pass computes them.
BLOCK_ORDER = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")


def nonfinite_at(x: Shaped[Tensor, "*dims"]) -> tuple[int, tuple[int, ...]] | None:
    """``(number of NaN/infinite entries, index of the first)`` of ``x``, or None if all finite.

    Example:
        >>> nonfinite_at(torch.tensor([[1.0, 2.0], [float("nan"), float("inf")]]))
        (2, (1, 0))
        >>> nonfinite_at(torch.ones(3)) is None
        True
    """
    if not (x.is_floating_point() or x.is_complex()) or x.numel() == 0:
        return None
    bad = ~torch.isfinite(x.detach())
    if not bool(bad.any()):
        return None
    first = torch.nonzero(bad)[0]
    return int(bad.sum()), tuple(int(i) for i in first)


def locate_nonfinite(
    model: Any, tokens: Int[Tensor, " pos"]
) -> tuple[str, int, int] | None:
    """Where one forward pass first produces a NaN or an infinity.

    Runs ``model`` on ``tokens`` and checks, in the order they are computed, ``hook_embed``,
    then every block's ``hook_resid_pre``, ``hook_attn_out``, ``hook_resid_mid``,
    ``hook_mlp_out`` and ``hook_resid_post`` (those the model has), then the logits. Nothing is
    stored: each hook records only whether it saw a non-finite value.

    Args:
        model: A TransformerBridge.
        tokens: One sequence ``[pos]``.

    Returns:
        ``(hook name or "logits", layer (-1 for the embedding and the logits), first
        position)``, or None when all are finite.

    Example:
        >>> locate_nonfinite(pair.tuned, tp.tokens)  # doctest: +SKIP
        ('blocks.1.hook_mlp_out', 1, 0)
    """
    names = [("hook_embed", -1)] + [
        (f"blocks.{layer}.hook_{h}", layer) for layer in range(int(model.cfg.n_layers))
        for h in BLOCK_ORDER]
    names = [(n, layer) for n, layer in names if n in model.hook_dict]
    found: list[tuple[int, str, int, int]] = []

    def make(rank: int, name: str, layer: int) -> Callable[..., Tensor]:
        def hook(act: Tensor, hook: Any = None) -> Tensor:
            r = nonfinite_at(act[0]) if act.dim() > 1 else nonfinite_at(act)
            if r is not None:
                found.append((rank, name, layer, r[1][0]))
            return act

        return hook

    with torch.no_grad(), model.hooks(fwd_hooks=[(n, make(k, n, layer))
                                                 for k, (n, layer) in enumerate(names)]):
        logits = model(tokens.reshape(1, -1).to(device_of(model)), return_type="logits")
    if found:
        _, name, layer, pos = min(found)
        return name, layer, pos
    r = nonfinite_at(logits[0])
    return None if r is None else ("logits", -1, r[1][0])


def describe_site(name: str, layer: int) -> str:
    """Words for a site :func:`locate_nonfinite` returns.

    Example:
        >>> describe_site("hook_embed", -1), describe_site("blocks.1.hook_mlp_out", 1)
        ('hook_embed (the input embedding)', 'blocks.1.hook_mlp_out (layer 1)')
    """
    if name == "logits":
        return "the logits"
    if name == "hook_embed":
        return "hook_embed (the input embedding)"
    return f"{name} (layer {layer})"


def where_nonfinite(model: Any, tokens: Int[Tensor, " pos"], *, finite: str = "") -> str:
    """The clause an error adds about where ``model`` turns non-finite on ``tokens``.

    Runs :func:`locate_nonfinite`; a failure of the diagnosis is said, never raised (it must
    not hide the finding).

    Args:
        model: A TransformerBridge.
        tokens: One sequence ``[pos]``.
        finite: What to say when the forward pass is finite ("" for nothing).

    Returns:
        ``"; the forward pass first becomes non-finite at <site>, position <p>"``, ``finite``
        or ``"; locating it failed (...)"``.

    Example:
        >>> where_nonfinite(pair.tuned, tp.tokens)  # doctest: +SKIP
        '; the forward pass first becomes non-finite at blocks.1.hook_mlp_out (layer 1), position 0'
    """
    try:
        where = locate_nonfinite(model, tokens)
    except Exception as e:  # noqa: BLE001 - the diagnosis must not hide the finding
        return f"; locating it failed ({type(e).__name__}: {e})"
    if where is None:
        return finite
    name, layer, pos = where
    return (f"; the forward pass first becomes non-finite at {describe_site(name, layer)}, "
            f"position {pos}")
