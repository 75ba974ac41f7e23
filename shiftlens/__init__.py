"""shiftlens: what did instruction tuning change inside this model?

Compare a pre-trained causal LM ("base") with its instruction-tuned twin ("tuned") through
TransformerLens' ``TransformerBridge``: paired activation capture, input->output attribution,
attention to the instruction, head word pairs and feed-forward concepts (Wu et al., "From
Language Modeling to Instruction Following: Understanding the Behavior Shift in LLMs after
Instruction Tuning", NAACL 2024), plus residual-stream diffing and cross-model patching.
"""

from __future__ import annotations

from shiftlens._version import __version__
from shiftlens.capture import PairCache
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.pair import ModelPair
from shiftlens.prompts import (
    InstructionPrompt,
    TokenizedPrompt,
    default_prompts,
    load_prompts,
    save_prompts,
    tokenize_prompt,
)

__all__ = [
    "__version__",
    "ModelPair",
    "PairCache",
    "InstructionPrompt",
    "TokenizedPrompt",
    "ShiftlensError",
    "ShiftlensWarning",
    "default_prompts",
    "load_prompts",
    "save_prompts",
    "tokenize_prompt",
    "selfcheck",
    "load",
    "instruction_sensitivity",
]


def __getattr__(name: str):  # lazy access to lens-level entry points
    if name == "instruction_sensitivity":
        from shiftlens.attribution import instruction_sensitivity

        return instruction_sensitivity
    if name == "load":
        from shiftlens.lenses import load

        return load
    if name == "selfcheck":
        from shiftlens.instrument import selfcheck

        return selfcheck
    raise AttributeError(f"module 'shiftlens' has no attribute {name!r}")
