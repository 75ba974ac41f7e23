"""shiftlens: what did instruction tuning change inside this model?

Compare a pre-trained causal LM ("base") with its instruction-tuned twin ("tuned") through
TransformerLens' ``TransformerBridge``: paired activation capture, input->output attribution,
attention to the instruction, head word pairs and feed-forward concepts (Wu et al., "From
Language Modeling to Instruction Following: Understanding the Behavior Shift in LLMs after
Instruction Tuning", NAACL 2024), plus residual-stream diffing and cross-model patching.

Importing ``shiftlens`` is cheap: the names below load their module on first use (so
``shiftlens --help`` never imports torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from shiftlens._version import __version__
from shiftlens.errors import SelfCheckError, ShiftlensError, ShiftlensWarning

#: Public name -> the module that defines it (loaded on first access).
_LAZY = {
    "ModelPair": "shiftlens.pair",
    "PairCache": "shiftlens.capture",
    "InstructionPrompt": "shiftlens.prompts",
    "TokenizedPrompt": "shiftlens.prompts",
    "default_prompts": "shiftlens.prompts",
    "load_prompts": "shiftlens.prompts",
    "save_prompts": "shiftlens.prompts",
    "tokenize_prompt": "shiftlens.prompts",
    "selfcheck": "shiftlens.instrument",
    "load": "shiftlens.lenses",
    "instruction_sensitivity": "shiftlens.lenses.attribution",
}

__all__ = [
    "__version__",
    "ShiftlensError",
    "ShiftlensWarning",
    "SelfCheckError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'shiftlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
