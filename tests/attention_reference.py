"""The attention lens's independent reference, shared by its unit and toy tiers: segment masses
computed from the full captured attention patterns (``reduce=None``), not by the lens."""

from __future__ import annotations

import torch

from shiftlens.pair import ModelPair
from shiftlens.prompts import SEGMENTS

__all__ = ["full_patterns", "direct_mass"]

def full_patterns(pair: ModelPair, prompts):
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(pair.cfg.n_layers)]
    return pair.run_with_cache(prompts, names, reduce=None, with_reference=True, progress=False)


def direct_mass(pair: ModelPair, prompts, layers, query: str, cache=None) -> torch.Tensor:
    """[role, prompt, layer, head, segment] from full captured patterns (reduce=None)."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    if cache is None:
        cache = full_patterns(pair, prompts)
    H = pair.cfg.n_heads
    out = torch.zeros(2, len(prompts), len(layers), H, len(SEGMENTS))
    for r, role in enumerate(("base", "tuned")):
        for i, tp in enumerate(cache.prompts):
            n = tp.tokens.shape[0]
            if query == "response" and n > tp.n_prompt:
                qpos = list(range(tp.n_prompt, n))
            else:
                qpos = [tp.n_prompt - 1]
            onehot = torch.zeros(n, len(SEGMENTS))
            onehot[torch.arange(n), tp.segments] = 1.0
            for j, name in enumerate(names):
                pat = cache[role, name][i].double()  # [head, q, k]
                out[r, i, j] = (pat[:, qpos, :] @ onehot.double()).mean(1).float()
    return out
