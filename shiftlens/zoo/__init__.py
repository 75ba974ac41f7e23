"""The embedded pair: a tiny base LM and its instruction-tuned twin, with a known shift.

No model hub is needed: ``shiftlens/zoo/pair/`` ships a 4-layer ``LlamaForCausalLM`` (grouped-query
attention) pre-trained on a synthetic English-like grammar (``base``) and a copy instruction-tuned
on seven word tasks in one fixed template (``tuned``). Both are plain Hugging Face directories.
``manifest.json`` records how they were trained and how they score; see ``docs/zoo.md``.

Example:
    >>> from shiftlens.zoo import toy_pair, toy_prompts
    >>> pair = toy_pair()  # doctest: +SKIP
    >>> prompts = toy_prompts(14)
    >>> prompts[0].text.splitlines()[0]
    'Instruction: reverse the words.'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from shiftlens.errors import ShiftlensError
from shiftlens.pair import ModelPair
from shiftlens.zoo.grammar import TASK_NAMES
from shiftlens.zoo.heldout import heldout_sentences, toy_prompts

__all__ = [
    "TASK_NAMES",
    "PAIR_DIR",
    "pair_dirs",
    "toy_pair",
    "toy_prompts",
    "manifest",
    "heldout_sentences",
]

#: Where the shipped pair lives (``base/``, ``tuned/``, ``manifest.json``).
PAIR_DIR: Path = Path(__file__).resolve().parent / "pair"


def pair_dirs() -> tuple[Path, Path]:
    """The shipped base and tuned Hugging Face directories.

    Returns:
        ``(base_dir, tuned_dir)``.

    Raises:
        ShiftlensError: the directories are missing (a broken install or checkout).

    Example:
        >>> base, tuned = pair_dirs()
        >>> (base / "config.json").exists() and tuned.name == "tuned"
        True
    """
    base, tuned = PAIR_DIR / "base", PAIR_DIR / "tuned"
    for d in (base, tuned):
        if not (d / "config.json").exists() or not (d / "model.safetensors").exists():
            raise ShiftlensError(
                f"toy pair directory {d} is missing or incomplete; rebuild it with "
                "`python -m shiftlens.zoo.train`"
            )
    return base, tuned


def manifest() -> dict[str, Any]:
    """The shipped pair's ``manifest.json`` (training record and evaluation).

    Example:
        >>> manifest()["model"]["architecture"]
        'LlamaForCausalLM'
    """
    return json.loads((PAIR_DIR / "manifest.json").read_text())


def toy_pair(
    device: str | torch.device | None = "cpu", dtype: torch.dtype = torch.float32, **kwargs: Any
) -> ModelPair:
    """Load the shipped pair as a :class:`shiftlens.pair.ModelPair` (offline, a second or two).

    Args:
        device: device for both models (None with a ``device_map=`` in ``kwargs``).
        dtype: weight dtype for both (the checkpoints are stored in float32).
        **kwargs: passed to :meth:`ModelPair.from_pretrained` (e.g. ``processing="compat"``).

    Returns:
        The pair; ``.base`` and ``.tuned`` are TransformerBridges, ``.tokenizer`` the shared
        tokenizer (it prepends ``<bos>``).

    Example:
        >>> pair = toy_pair()  # doctest: +SKIP
        >>> pair.base.cfg.n_layers  # doctest: +SKIP
        4
    """
    base, tuned = pair_dirs()
    return ModelPair.from_pretrained(base, tuned, device=device, dtype=dtype, **kwargs)
