"""The validators every lens uses: layers, heads, integers, prompts, vocabularies, finiteness.

One implementation of each check, so the same bad input gets the same :class:`ShiftlensError`
(naming the model, layer, head or prompt) in every lens, and the same prompt id everywhere:
:func:`prompt_id` is the id of a prompt in every frame, file and figure, so the lenses' frames
join on it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from shiftlens.errors import ShiftlensError

__all__ = [
    "prompt_id",
    "check_int",
    "check_float",
    "check_choice",
    "check_layer",
    "check_layers",
    "check_head",
    "check_prompts",
    "check_finite",
    "check_vocab",
    "pad_token_id",
    "check_device",
]


def _who(model: Any) -> str:
    from shiftlens.bridge import model_name

    return repr(model_name(model))


def prompt_id(prompt: Any, index: int) -> str:
    """The id of a prompt in every result: its own ``id``, else ``#<index>`` (0-based position).

    Example:
        >>> from shiftlens.prompts import InstructionPrompt
        >>> prompt_id(InstructionPrompt("Hi", id="a"), 3), prompt_id(InstructionPrompt("Hi"), 3)
        ('a', '#3')
    """
    pid = getattr(prompt, "id", None)
    return str(pid) if pid not in (None, "") else f"#{index}"


def check_int(name: str, value: Any, *, minimum: int | None = None,
              maximum: int | None = None, who: str = "") -> int:
    """``value`` as an ``int`` (bools refused), within ``[minimum, maximum]``.

    Example:
        >>> check_int("k", 3, minimum=1)
        3
        >>> check_int("k", True, minimum=1)
        Traceback (most recent call last):
        ...
        shiftlens.errors.ShiftlensError: k must be an integer, got True
    """
    pre = f"{who}: " if who else ""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_floating_point \
                and value.dtype != torch.bool:
            value = int(value.item())
        else:
            raise ShiftlensError(f"{pre}{name} must be an integer, got {value!r}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ShiftlensError(f"{pre}{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ShiftlensError(f"{pre}{name} must be <= {maximum}, got {v}")
    return v


def check_float(name: str, value: Any, *, minimum: float | int | None = None,
                maximum: float | int | None = None, open_min: bool = False, who: str = "") -> float:
    """``value`` as a finite ``float`` (bools refused) within the bounds.

    Example:
        >>> check_float("alpha", 0.05, minimum=0, maximum=1, open_min=True)
        0.05
    """
    pre = f"{who}: " if who else ""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise ShiftlensError(f"{pre}{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ShiftlensError(f"{pre}{name} must be finite, got {v}")
    if minimum is not None and (v <= minimum if open_min else v < minimum):
        raise ShiftlensError(f"{pre}{name} must be {'>' if open_min else '>='} {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ShiftlensError(f"{pre}{name} must be <= {maximum}, got {v}")
    return v


def check_choice(name: str, value: Any, choices: Sequence[Any], *, who: str = "") -> Any:
    """``value`` if it is one of ``choices``.

    Example:
        >>> check_choice("mode", "auto", ("auto", "forward"))
        'auto'
    """
    if not isinstance(value, (str, int, float, type(None))) or value not in choices:
        pre = f"{who}: " if who else ""
        raise ShiftlensError(f"{pre}{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def _cfg(model: Any) -> Any:
    return getattr(model, "cfg", model)


def check_layer(model: Any, layer: Any, head: Any = None) -> int:
    """``layer`` as an int in ``[0, n_layers)`` (and ``head`` in ``[0, n_heads)`` when given).

    Args:
        model: A TransformerBridge (or anything with ``cfg.n_layers``/``cfg.n_heads``).
        layer: The layer index.
        head: Optional head index.

    Returns:
        The layer index.

    Example:
        >>> check_layer(pair.base, 0)  # doctest: +SKIP
        0
    """
    n = int(_cfg(model).n_layers)
    if isinstance(layer, bool) or not isinstance(layer, (numbers.Integral, np.integer)):
        raise ShiftlensError(f"{_who(model)}: layer {layer!r} out of range: a layer is an "
                             f"integer index in [0, {n})")
    if not 0 <= int(layer) < n:
        raise ShiftlensError(f"{_who(model)}: layer {layer!r} out of range (n_layers={n})")
    if head is not None:
        check_head(model, layer, head)
    return int(layer)


def check_head(model: Any, layer: Any, head: Any) -> int:
    """``head`` as an int in ``[0, n_heads)`` of ``layer``.

    Example:
        >>> check_head(pair.base, 0, 1)  # doctest: +SKIP
        1
    """
    h = int(_cfg(model).n_heads)
    if isinstance(head, bool) or not isinstance(head, (numbers.Integral, np.integer)):
        raise ShiftlensError(f"{_who(model)}: head {head!r} of layer {layer} out of range: a "
                             f"head is an integer index in [0, {h})")
    if not 0 <= int(head) < h:
        raise ShiftlensError(f"{_who(model)}: head {head!r} of layer {layer} out of range "
                             f"(n_heads={h})")
    return int(head)


def check_layers(model: Any, layers: Any = None) -> list[int]:
    """Layer indices: all layers for ``None``, else each checked, duplicates dropped, in order.

    Example:
        >>> check_layers(pair.base, [2, 0, 2])  # doctest: +SKIP
        [2, 0]
    """
    if layers is None:
        return list(range(int(_cfg(model).n_layers)))
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [layers]
    if isinstance(layers, (str, bytes)) or not isinstance(layers, (Sequence, np.ndarray, range)):
        raise ShiftlensError(f"{_who(model)}: layers must be a list of layer indices or None, got "
                             f"{layers!r}")
    out = [check_layer(model, layer) for layer in layers]
    if not out:
        raise ShiftlensError(f"{_who(model)}: empty list of layers")
    return list(dict.fromkeys(out))


def check_prompts(prompts: Any, *, who: str = "") -> list[Any]:
    """A non-empty list of :class:`~shiftlens.prompts.InstructionPrompt` (a single one wrapped).

    Example:
        >>> from shiftlens.prompts import InstructionPrompt
        >>> len(check_prompts([InstructionPrompt("Hi")]))
        1
    """
    from shiftlens.prompts import InstructionPrompt

    pre = f"{who}: " if who else ""
    if isinstance(prompts, InstructionPrompt):
        return [prompts]
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (Sequence, tuple)) \
            and not hasattr(prompts, "__iter__"):
        raise ShiftlensError(f"{pre}prompts must be a list of InstructionPrompt, got "
                             f"{type(prompts).__name__}"
                             + (" (wrap text in shiftlens.InstructionPrompt)"
                                if isinstance(prompts, str) else ""))
    out = list(prompts)
    if not out:
        raise ShiftlensError(f"{pre}no prompts given")
    for i, p in enumerate(out):
        if not isinstance(p, InstructionPrompt):
            raise ShiftlensError(f"{pre}prompt {i} is a {type(p).__name__}, not an "
                                 "InstructionPrompt")
    return out


def check_finite(x: Tensor, *, what: str) -> Tensor:
    """Raise unless every entry of ``x`` is finite; ``what`` names it (model, layer, prompt).

    Example:
        >>> check_finite(torch.ones(2), what="base model, layer 0")
        tensor([1., 1.])
    """
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            n = int(bad.sum())
            first = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
            raise ShiftlensError(f"{what}: {n} non-finite value(s) (first at index {first}: "
                                 f"{x[first].item()})")
    return x


def check_vocab(vocab: Any, model: Any = None, *, where: str = "") -> Any:
    """A non-empty word vocabulary whose token ids lie inside the model's vocabulary.

    Args:
        vocab: A :class:`shiftlens.weights.WordVocab`.
        model: Optional model whose ``cfg.d_vocab`` bounds the ids.
        where: Context for the message (the model / lens).

    Example:
        >>> check_vocab(vocab, pair.base)  # doctest: +SKIP
    """
    from shiftlens.weights import WordVocab

    pre = where or (_who(model) if model is not None else "")
    pre = f"{pre}: " if pre else ""
    if not isinstance(vocab, WordVocab):
        raise ShiftlensError(f"{pre}expected a shiftlens.weights.WordVocab, got "
                             f"{type(vocab).__name__}")
    if len(vocab) == 0:
        raise ShiftlensError(f"{pre}empty vocabulary: no word could be encoded"
                             + (f" ({len(vocab.skipped)} skipped)" if vocab.skipped else ""))
    if model is not None:
        d = int(_cfg(model).d_vocab)
        flat = [t for ids in vocab.token_ids for t in ids]
        if flat and (min(flat) < 0 or max(flat) >= d):
            raise ShiftlensError(f"{pre}vocabulary token ids outside [0, {d}) (built with another "
                                 "tokenizer?)")
    return vocab


def pad_token_id(tokenizer: Any) -> int:
    """The id used to right-pad batches: the tokenizer's pad, else EOS, else 0.

    Right padding never changes a causal model's outputs at the real positions, so the value
    only has to be a valid id.

    Example:
        >>> pad_token_id(pair.tokenizer)  # doctest: +SKIP
        2
    """
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    return 0


def check_device(device: Any, model: Any = None, *, who: str = "") -> torch.device:
    """Where a computation runs: ``device`` checked usable, or (None) the model's input device.

    Args:
        device: A string or ``torch.device``, or None for the model's device
            (:func:`shiftlens.bridge.device_of`).
        model: The model whose device is the default.
        who: The function named in the error.

    Raises:
        ShiftlensError: ``device`` is not a string or ``torch.device``, or torch cannot use it
            (unknown type, no such CUDA device).

    Example:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device(3.0, who="rotation")
        Traceback (most recent call last):
        ...
        shiftlens.errors.ShiftlensError: rotation: device must be a string or torch.device, got 3.0
    """
    pre = f"{who}: " if who else ""
    if device is None:
        from shiftlens.bridge import device_of

        return device_of(model)
    if not isinstance(device, (str, torch.device)):
        raise ShiftlensError(f"{pre}device must be a string or torch.device, got {device!r}")
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError) as e:
        raise ShiftlensError(f"{pre}device {str(device)!r} cannot be used: {e}") from None
    return dev
