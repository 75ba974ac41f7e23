"""Lens 1 (attribution) on a planted weight edit: a copy of a tiny model with one token's
embedding row set to zero. Known truth: e_n = 0 for that token, so its attribution row is exactly
0 (positional embeddings are excluded from e_n), in both autodiff modes.
"""

from __future__ import annotations

import torch

from shiftlens import attribution as A
from shiftlens.pair import load_bridge
from shiftlens.prompts import InstructionPrompt

PROMPT = InstructionPrompt(
    "Sort the words: red cat dog\nResponse:",
    instruction=["Sort the words:"],
    context=["red cat dog"],
    id="sort-1",
    category="sort",
    reference=" cat dog red",
)


def test_planted_zero_embedding_row(tiny_dirs, tmp_path):
    """Zero one token's embedding row in a copy: e_n = 0, so its attribution row is exactly 0
    (positional embeddings are excluded from e_n), and the other rows are not all zero."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_dirs("gpt2")[0]
    hf = AutoModelForCausalLM.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(src)
    target = tok(" red", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        hf.get_input_embeddings().weight[target] = 0
    hf.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model = load_bridge(tmp_path / "m")
    att = A.attribute(model, PROMPT, " cat dog red", mode="reverse")
    hit = att.input_tokens == target
    assert hit.sum() == 1
    assert torch.all(att.matrix[hit] == 0)
    assert att.matrix[~hit].abs().sum() > 0
    att_f = A.attribute(model, PROMPT, " cat dog red", mode="forward")
    assert torch.all(att_f.matrix[hit] == 0)
