"""Lens 2: self-attention - attention to the instruction, and the word pairs each head encodes.

Two views of what instruction tuning changed in the attention heads (Wu et al., "From Language
Modeling to Instruction Following: Understanding the Behavior Shift in LLMs after Instruction
Tuning", NAACL 2024, §4):

**Activation view** (:func:`instruction_attention`): for every layer and head of both models,
the attention mass that the query positions (the response tokens, or the last prompt token)
put on each key segment (``bos``, ``instruction``, ``context``, ``template``, ``response``),
per prompt; averaged over prompts, with a paired t-test per head across prompts on the
instruction mass (tuned vs base) and Holm / Benjamini-Hochberg adjusted p-values.

**Weight view** (:func:`word_pairs`, :func:`word_pairs_layer`, :func:`model_word_pairs`):
the paper's bilinear reading of a head. Word vectors E (a word = the mean of its tokens'
input embeddings) are projected by the head's W_Q and W_K (normalization weight folded in,
grouped-query K heads expanded): Q = E W_Q, K = E W_K. The head's d_head dimensions are ranked
by their energy sum_w Q[w, d]^2 + sum_w K[w, d]^2; in each top dimension the top-K words by
|Q| and by |K| form candidate (query word, key word) pairs, kept when the two activations have
the same sign (their product raises the attention logit) and the words pass a relatedness
filter. All vocabulary projections of a layer are one matmul (all heads' Q and the layer's K
heads at once).

**Verb shift** (:func:`verb_shift`, the paper's Table 3 protocol): per head, how often each
word occurs in the head's word pairs in base and in tuned; for instruction verbs and for
general verbs, the fraction of heads in which the count rose (ties ignored), per layer group,
with a Welch t-test between the two verb sets.

Weights: :func:`shiftlens.weights.qk_weights` reads the current weights and folds the
attention-input norm's gamma unless TransformerLens already folded it (``processing="compat"``).
For LayerNorm models (GPT-2) word vectors are centred first, as LayerNorm centres its input.
Biases and rotary position embeddings are ignored (the bilinear term only), as in the paper.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.capture import run_hooks_batched
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.io import load_bundle, save_bundle
from shiftlens.pair import model_name as _name
from shiftlens.prompts import (
    INSTRUCTION,
    RESPONSE,
    SEGMENTS,
    InstructionPrompt,
    TokenizedPrompt,
    default_prompts,
    tokenize_prompt,
)
from shiftlens.stats import layer_groups, p_adjust, paired_test, welch_test
from shiftlens.weights import WordVocab, check_layer, embedding, qk_weights, word_matrix

__all__ = [
    "SegmentAttention",
    "segment_attention",
    "instruction_attention",
    "InstructionAttentionResult",
    "PairFilter",
    "BoundFilter",
    "CosineThreshold",
    "cosine_threshold",
    "EmbeddingFilter",
    "VectorFilter",
    "resolve_filter",
    "word_embeddings",
    "LayerPairs",
    "project_vocab",
    "layer_word_pairs",
    "word_pairs",
    "word_pairs_layer",
    "model_word_pairs",
    "pair_word_counts",
    "instruction_verbs",
    "general_verbs",
    "verb_shift",
    "VerbShiftResult",
]

ROLES = ("base", "tuned")
_EPS = 1e-12


def _pid(p: InstructionPrompt, i: int) -> str:
    return p.id or f"#{i}"


def _pyplot() -> Any:
    import os

    import matplotlib

    interactive = bool(os.environ.get("DISPLAY")) or bool(os.environ.get("MPLBACKEND"))
    if not interactive:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ============================================================================ activation view


@dataclass
class SegmentAttention:
    """One model's attention mass on each key segment, per prompt, layer and head.

    Attributes:
        mass: ``[prompt, layer, head, segment]``: for the prompt's query positions (response
            tokens averaged, or the last prompt token), the total attention on the key
            positions of each segment of :data:`shiftlens.prompts.SEGMENTS`.
        layers: The layer index of each ``layer`` row.
        used_last: Per prompt, True when the last prompt token was the query.
        prompt_ids: Prompt ids (``#i`` when a prompt has none).
        model_name: The model's name.

    Example:
        >>> sa = segment_attention(pair.tuned, prompts, query="response")  # doctest: +SKIP
        >>> sa.mass.shape  # [prompt, layer, head, segment]  # doctest: +SKIP
    """

    mass: Float[Tensor, "prompt layer head segment"]
    layers: list[int]
    used_last: list[bool]
    prompt_ids: list[str]
    model_name: str


def _check_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(model.cfg.n_layers))
    out = []
    for layer in layers:
        check_layer(model, layer)
        if layer not in out:
            out.append(layer)
    if not out:
        raise ShiftlensError(f"{_name(model)}: empty list of layers")
    return sorted(out)


def _pad_id(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


@torch.no_grad()
def segment_attention(
    model: Any,
    prompts: Sequence[InstructionPrompt],
    query: str = "response",
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> SegmentAttention:
    """Attention mass of the query positions on each key segment, for one model.

    With ``query="response"`` each prompt's reference response is appended and the mass is
    averaged over the response positions (a response query attends to earlier response
    tokens too: the ``response`` segment). A prompt without a reference falls back to its
    last prompt token (recorded in ``used_last``). With ``query="last"`` the last prompt token
    is the query for every prompt (nothing is appended). Padding never receives attention
    (right padding, causal mask) and is trimmed before reduction
    (:func:`shiftlens.capture.run_hooks_batched`).

    Args:
        model: A TransformerBridge.
        prompts: Instruction prompts.
        query: ``"response"`` or ``"last"``.
        layers: Layers to read (default: all).
        batch_size: Prompts per forward pass.
        progress: Show progress bars.

    Returns:
        A :class:`SegmentAttention` with ``mass[prompt, layer, head, segment]``.

    Raises:
        ShiftlensError: unknown query, no prompts, a layer out of range.

    Example:
        >>> sa = segment_attention(pair.base, default_prompts()[:4])  # doctest: +SKIP
        >>> sa.mass.shape  # doctest: +SKIP
        torch.Size([4, 2, 4, 5])
    """
    if query not in ("response", "last"):
        raise ShiftlensError(f"query must be 'response' or 'last', got {query!r}")
    if len(prompts) == 0:
        raise ShiftlensError(f"{_name(model)}: no prompts given")
    for p in prompts:
        if not isinstance(p, InstructionPrompt):
            raise ShiftlensError(f"expected InstructionPrompt objects, got {type(p).__name__}")
    layers = _check_layers(model, layers)
    tok = model.tokenizer
    if tok is None:
        raise ShiftlensError(f"{_name(model)} has no tokenizer")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    bos = bool(model.cfg.default_prepend_bos)

    def tokenize(p: InstructionPrompt, response: str | None) -> TokenizedPrompt:
        return tokenize_prompt(tok, p, prepend_bos=bos, response=response, n_ctx=n_ctx,
                               model_name=repr(_name(model)))

    with_resp = [i for i, p in enumerate(prompts) if query == "response" and p.reference]
    resp_set = set(with_resp)
    last = [i for i in range(len(prompts)) if i not in resp_set]
    last_set = set(last)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    n_heads = model.cfg.n_heads
    mass = torch.full((len(prompts), len(layers), n_heads, len(SEGMENTS)), float("nan"))
    groups = (
        (with_resp, "segment_mean", lambda p: tokenize(p, p.reference)),
        (last, "last", lambda p: tokenize(p, None)),
    )
    for idx, reduce, tk in groups:
        if not idx:
            continue
        tps = [tk(prompts[i]) for i in idx]
        acts = run_hooks_batched(
            model, tps, names, batch_size=batch_size, reduce=reduce, progress=progress,
            desc=f"attention {_name(model)}", pad_id=_pad_id(tok),
        )
        for j, name in enumerate(names):
            for k, i in enumerate(idx):
                a = acts[name][k].float()
                mass[i, j] = a[RESPONSE] if reduce == "segment_mean" else a
    return SegmentAttention(
        mass=mass,
        layers=layers,
        used_last=[i in last_set for i in range(len(prompts))],
        prompt_ids=[_pid(p, i) for i, p in enumerate(prompts)],
        model_name=_name(model),
    )


@dataclass
class InstructionAttentionResult:
    """Attention to the instruction in base vs tuned (:func:`instruction_attention`).

    Attributes:
        mass: ``[role, prompt, layer, head, segment]`` attention mass (role 0 base, 1 tuned).
        layers: Layer index of each ``layer`` row.
        prompt_ids: Ids of the prompts used.
        used_last: Per prompt, True when the last prompt token was the query (``query="last"``
            or no reference response).
        excluded: Ids of the prompts excluded because they have no instruction tokens.
        query: ``"response"`` or ``"last"``.
        model_names: ``{"base": ..., "tuned": ...}``.
        tests: One row per head: mean instruction mass in base and tuned, ``delta``, paired
            t-test across prompts (``t``, ``p``, ``df``, bootstrap CI), ``p_holm``, ``p_bh``,
            sorted by ``delta`` descending (``rank`` 0 = largest increase).
        alternative: Alternative hypothesis of the paired tests (tuned vs base).
        seed: Bootstrap seed.
        n_layers: The models' number of layers (for the lower/middle/upper layer groups).
    """

    mass: Float[Tensor, "role prompt layer head segment"]
    layers: list[int]
    prompt_ids: list[str]
    used_last: list[bool]
    excluded: list[str]
    query: str
    model_names: dict[str, str]
    tests: pd.DataFrame
    alternative: str = "two-sided"
    seed: int = 0
    n_layers: int | None = None

    @property
    def n_prompts(self) -> int:
        """Prompts used in the averages."""
        return len(self.prompt_ids)

    @property
    def fallback_last(self) -> list[str]:
        """Ids of prompts whose last prompt token was used because they had no reference."""
        if self.query != "response":
            return []
        return [p for p, u in zip(self.prompt_ids, self.used_last) if u]

    def mean_mass(self, role: str) -> Float[Tensor, "layer head segment"]:
        """Mean over prompts of one model's mass (``role`` ``"base"`` or ``"tuned"``).

        Example:
            >>> res.mean_mass("tuned")[:, :, 1]  # instruction mass per layer, head  # doctest: +SKIP
        """
        if role not in ROLES:
            raise ShiftlensError(f"unknown role {role!r}; use 'base' or 'tuned'")
        return self.mass[ROLES.index(role)].mean(0)

    def delta(self, segment: str = "instruction") -> Float[Tensor, "layer head"]:
        """Tuned minus base mean mass on ``segment``, ``[layer, head]`` (the heatmap).

        Example:
            >>> res.delta().shape  # doctest: +SKIP
            torch.Size([2, 4])
        """
        if segment not in SEGMENTS:
            raise ShiftlensError(f"unknown segment {segment!r}; choose from {SEGMENTS}")
        s = SEGMENTS.index(segment)
        return self.mean_mass("tuned")[..., s] - self.mean_mass("base")[..., s]

    def to_frame(self, per_prompt: bool = False) -> pd.DataFrame:
        """Rows (layer, head, segment, base, tuned, delta), means over prompts.

        Args:
            per_prompt: One row per prompt too (a ``prompt`` column) instead of the means.

        Example:
            >>> res.to_frame().query("segment == 'instruction'").head()  # doctest: +SKIP
        """
        n_p, n_l, n_h, n_s = self.mass.shape[1:]
        if per_prompt:
            b = self.mass[0].numpy().ravel()
            t = self.mass[1].numpy().ravel()
            idx = np.indices((n_p, n_l, n_h, n_s)).reshape(4, -1)
            return pd.DataFrame({
                "prompt": np.asarray(self.prompt_ids, dtype=object)[idx[0]],
                "layer": np.asarray(self.layers)[idx[1]],
                "head": idx[2],
                "segment": np.asarray(SEGMENTS, dtype=object)[idx[3]],
                "base": b,
                "tuned": t,
                "delta": t - b,
            })
        b = self.mean_mass("base").numpy().ravel()
        t = self.mean_mass("tuned").numpy().ravel()
        idx = np.indices((n_l, n_h, n_s)).reshape(3, -1)
        return pd.DataFrame({
            "layer": np.asarray(self.layers)[idx[0]],
            "head": idx[1],
            "segment": np.asarray(SEGMENTS, dtype=object)[idx[2]],
            "base": b,
            "tuned": t,
            "delta": t - b,
        })

    def ranking(self) -> pd.DataFrame:
        """Heads ranked by the change of their instruction mass (largest increase first).

        Example:
            >>> res.ranking().head(5)[["layer", "head", "delta", "p_holm"]]  # doctest: +SKIP
        """
        return self.tests.copy()

    def summary(self) -> dict[str, Any]:
        """Headline numbers: mean instruction mass per model with a paired test across
        prompts (head-averaged), per layer group, the top heads, significant head counts.

        Example:
            >>> print(res.summary()["sentence"])  # doctest: +SKIP
        """
        ins = self.mass[..., INSTRUCTION]  # [role, prompt, layer, head]
        per_prompt = ins.mean((2, 3))
        overall = paired_test(per_prompt[1].numpy(), per_prompt[0].numpy(),
                              alternative=self.alternative, seed=self.seed)
        groups: dict[str, Any] = {}
        gnames = layer_groups(self.n_layers or max(self.layers) + 1)
        for g in dict.fromkeys(gnames[layer] for layer in self.layers):
            cols = [j for j, layer in enumerate(self.layers) if gnames[layer] == g]
            x = ins[:, :, cols].mean((2, 3))
            groups[g] = paired_test(x[1].numpy(), x[0].numpy(), alternative=self.alternative,
                                    seed=self.seed).to_dict()
        t = self.tests
        sig_up = int(((t.p_holm < 0.05) & (t.delta > 0)).sum())
        sig_down = int(((t.p_holm < 0.05) & (t.delta < 0)).sum())
        bh_up = int(((t.p_bh < 0.05) & (t.delta > 0)).sum())
        bh_down = int(((t.p_bh < 0.05) & (t.delta < 0)).sum())
        top = t.head(5)[["layer", "head", "base", "tuned", "delta", "p", "p_holm"]]
        q = "response tokens" if self.query == "response" else "the last prompt token"
        if self.fallback_last:
            q += f" (last prompt token for {len(self.fallback_last)} prompts without reference)"
        sentence = (
            f"Over {self.n_prompts} prompts ({len(self.excluded)} excluded without instruction "
            f"tokens), the attention of {q} on the instruction is {overall.mean_b:.3f} in "
            f"base and {overall.mean_a:.3f} in tuned (mean over heads; paired t-test across "
            f"prompts p={overall.pvalue:.3g}). {sig_up} of {len(t)} heads attend to the "
            f"instruction significantly more and {sig_down} less after tuning (Holm-adjusted "
            f"p<0.05; {bh_up} up / {bh_down} down at BH FDR 0.05)."
        )
        if top.shape[0]:
            r = top.iloc[0]
            sentence += (f" Largest increase: layer {int(r['layer'])} head {int(r['head'])} "
                         f"({r.base:.3f} -> {r.tuned:.3f}).")
        return {
            "n_prompts": self.n_prompts,
            "n_excluded": len(self.excluded),
            "excluded": list(self.excluded),
            "n_fallback_last": len(self.fallback_last),
            "fallback_last": self.fallback_last,
            "query": self.query,
            "models": dict(self.model_names),
            "instruction_mass": overall.to_dict(),
            "by_layer_group": groups,
            "n_heads": int(len(t)),
            "n_heads_up_holm": sig_up,
            "n_heads_down_holm": sig_down,
            "n_heads_up_bh": bh_up,
            "n_heads_down_bh": bh_down,
            "top_heads": top.to_dict("records"),
            "seed": self.seed,
            "sentence": sentence,
        }

    def save(self, directory: str | Path) -> Path:
        """Write the result (JSON + Parquet + safetensors; no pickle).

        Example:
            >>> res.save("out/attention")  # doctest: +SKIP
        """
        meta = {
            "layers": self.layers,
            "prompt_ids": self.prompt_ids,
            "used_last": self.used_last,
            "excluded": self.excluded,
            "query": self.query,
            "model_names": self.model_names,
            "alternative": self.alternative,
            "seed": self.seed,
            "n_layers": self.n_layers,
            "segments": list(SEGMENTS),
        }
        return save_bundle(directory, "InstructionAttentionResult", meta,
                           frames={"tests": self.tests}, tensors={"mass": self.mass})

    @classmethod
    def load(cls, directory: str | Path) -> InstructionAttentionResult:
        """Read a result written by :meth:`save`.

        Example:
            >>> res = InstructionAttentionResult.load("out/attention")  # doctest: +SKIP
        """
        meta, frames, tensors = load_bundle(directory, "InstructionAttentionResult")
        return cls(
            mass=tensors["mass"],
            layers=[int(x) for x in meta["layers"]],
            prompt_ids=list(meta["prompt_ids"]),
            used_last=[bool(x) for x in meta["used_last"]],
            excluded=list(meta["excluded"]),
            query=str(meta["query"]),
            model_names=dict(meta["model_names"]),
            tests=frames["tests"],
            alternative=str(meta["alternative"]),
            seed=int(meta["seed"]),
            n_layers=None if meta.get("n_layers") is None else int(meta["n_layers"]),
        )

    def show(self, path: str | Path | None = None, *, alpha: float = 0.05) -> Any:
        """Layers x heads heatmap of the change in instruction mass, and mean mass per segment.

        Heads whose BH-adjusted p-value is below ``alpha`` are marked with a dot.

        Args:
            path: Save the figure there when given.
            alpha: Marking threshold on ``p_bh``.

        Returns:
            The matplotlib figure.

        Example:
            >>> fig = res.show("out/attention.png")  # doctest: +SKIP
        """
        plt = _pyplot()
        d = self.delta().numpy()
        n_l, n_h = d.shape
        fig, (ax, ax2) = plt.subplots(
            1, 2, figsize=(max(6.0, 0.35 * n_h + 6.5), max(3.0, 0.3 * n_l + 1.5)),
            gridspec_kw={"width_ratios": [max(2, n_h), 6]},
        )
        v = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 1.0
        im = ax.imshow(d, aspect="auto", cmap="RdBu_r", vmin=-(v or 1.0), vmax=(v or 1.0),
                       origin="lower")
        sig = self.tests[self.tests.p_bh < alpha]
        rows = {layer: j for j, layer in enumerate(self.layers)}
        if len(sig):
            ax.scatter(sig["head"].to_numpy(), [rows[int(x)] for x in sig["layer"]], s=8, c="k")
        ax.set_yticks(range(n_l), [str(x) for x in self.layers])
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"instruction mass, tuned - base ({self.query} queries)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
        mb = self.mean_mass("base").mean((0, 1)).numpy()
        mt = self.mean_mass("tuned").mean((0, 1)).numpy()
        x = np.arange(len(SEGMENTS))
        ax2.bar(x - 0.2, mb, 0.4, label=f"base: {self.model_names.get('base', '')}"[:40])
        ax2.bar(x + 0.2, mt, 0.4, label=f"tuned: {self.model_names.get('tuned', '')}"[:40])
        ax2.set_xticks(x, list(SEGMENTS), rotation=30, fontsize=8)
        ax2.set_ylabel("mean attention mass")
        ax2.legend(fontsize=7)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def instruction_attention(
    pair: Any,
    prompts: Sequence[InstructionPrompt] | None = None,
    query: str = "response",
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    alternative: str = "two-sided",
    ci: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> InstructionAttentionResult:
    """Which heads look at the instruction more after tuning (the activation view).

    For every layer and head of both models, the attention mass that the query positions put
    on the instruction, context, template, BOS and response tokens
    (:func:`segment_attention`), per prompt; then per head a paired t-test across prompts of
    the instruction mass (tuned vs base) with Holm and Benjamini-Hochberg adjusted p-values
    over all heads.

    Prompts without instruction tokens are excluded from the averages (their ids are in
    ``result.excluded``; a :class:`ShiftlensWarning` says how many). With
    ``query="response"``, prompts without a reference use their last prompt token
    (``result.fallback_last``).

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts: Instruction prompts (default: :func:`shiftlens.prompts.default_prompts`).
        query: ``"response"`` (reference-response tokens) or ``"last"`` (last prompt token).
        layers: Layers to analyse (default all).
        batch_size: Prompts per forward pass.
        alternative: Alternative of the per-head paired tests (``"greater"``: tuned > base).
        ci: Compute bootstrap CIs of the per-head differences.
        seed: Bootstrap seed (recorded).
        progress: Show progress bars.

    Returns:
        An :class:`InstructionAttentionResult`.

    Raises:
        ShiftlensError: no prompts, every prompt lacks instruction tokens, a layer out of range.

    Example:
        >>> res = instruction_attention(pair, default_prompts()[:8])  # doctest: +SKIP
        >>> res.ranking().head(3)  # doctest: +SKIP
    """
    prompts = list(default_prompts()) if prompts is None else list(prompts)
    if not prompts:
        raise ShiftlensError("instruction_attention: no prompts given")
    layers = _check_layers(pair.base, layers)
    kept: list[InstructionPrompt] = []
    ids: list[str] = []
    excluded_ids: list[str] = []
    for i, p in enumerate(prompts):
        if not isinstance(p, InstructionPrompt):
            raise ShiftlensError(f"expected InstructionPrompt objects, got {type(p).__name__}")
        if bool(pair.tokenize(p).mask("instruction").any()):
            kept.append(p)
            ids.append(_pid(p, i))
        else:
            excluded_ids.append(_pid(p, i))
    if not kept:
        raise ShiftlensError(
            f"instruction_attention: none of the {len(prompts)} prompts has instruction tokens "
            f"(give instruction spans; e.g. prompt {excluded_ids[0]!r})"
        )
    if excluded_ids:
        n_ex = len(excluded_ids)
        warnings.warn(
            f"{n_ex} of {len(prompts)} prompts have no instruction tokens and are excluded "
            f"from the averages: {excluded_ids[:5]}{'...' if n_ex > 5 else ''}",
            ShiftlensWarning,
            stacklevel=2,
        )
    sa = {
        role: segment_attention(model, kept, query, layers=layers, batch_size=batch_size,
                                progress=progress)
        for role, model in pair
    }
    mass = torch.stack([sa["base"].mass, sa["tuned"].mass])
    tests = _head_tests(mass, layers, alternative=alternative, ci=ci, seed=seed)
    return InstructionAttentionResult(
        mass=mass,
        layers=layers,
        prompt_ids=ids,
        used_last=sa["base"].used_last,
        excluded=excluded_ids,
        query=query,
        model_names=dict(pair.names),
        tests=tests,
        alternative=alternative,
        seed=seed,
        n_layers=int(pair.cfg.n_layers),
    )


def _head_tests(
    mass: Float[Tensor, "role prompt layer head segment"],
    layers: list[int],
    *,
    alternative: str,
    ci: bool,
    seed: int,
) -> pd.DataFrame:
    ins = mass[..., INSTRUCTION].double().numpy()  # [role, prompt, layer, head]
    rows = []
    for j, layer in enumerate(layers):
        for h in range(ins.shape[3]):
            r = paired_test(ins[1, :, j, h], ins[0, :, j, h], alternative=alternative, ci=ci,
                            seed=seed)
            rows.append({
                "layer": layer, "head": h, "base": r.mean_b, "tuned": r.mean_a,
                "delta": r.diff, "t": r.statistic, "p": r.pvalue, "df": r.df,
                "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n_a,
            })
    df = pd.DataFrame(rows)
    df["p_holm"] = p_adjust(df["p"].to_numpy(), "holm")
    df["p_bh"] = p_adjust(df["p"].to_numpy(), "bh")
    df = df.sort_values(["delta", "layer", "head"], ascending=[False, True, True],
                        kind="stable").reset_index(drop=True)
    df.insert(0, "rank", np.arange(len(df)))
    return df


# ============================================================================ relatedness filters


@runtime_checkable
class BoundFilter(Protocol):
    """A relatedness test bound to one vocabulary: which (query word, key word) pairs pass.

    Called with word indices into the vocabulary; returns a boolean mask. May also define
    ``block(q_words[..., a], k_words[..., b]) -> bool[..., a, b]`` (every combination of two
    word lists at once; used by :func:`layer_word_pairs` when present, which avoids gathering
    one vector pair per candidate) and ``similarity(q_word, k_word)`` (reported in the pair
    tables).

    Example:
        >>> bound = resolve_filter("embedding").bind(model, vocab)  # doctest: +SKIP
    """

    def __call__(self, q_word: Tensor, k_word: Tensor) -> Tensor: ...


@runtime_checkable
class PairFilter(Protocol):
    """A relatedness filter: ``bind(model, vocab)`` returns a :class:`BoundFilter`.

    Implement this to plug in any measure (e.g. GloVe similarities: see
    :class:`VectorFilter`). ``bind`` is called once per vocabulary (and model), before any
    layer is analysed.

    Example:
        >>> pairs = word_pairs(model, 3, 5, vocab, filter="embedding")  # doctest: +SKIP
    """

    def bind(self, model: Any, vocab: WordVocab) -> BoundFilter: ...


@dataclass
class CosineThreshold:
    """Cosine relatedness with a per-word threshold: the paper's mean + z·σ rule.

    A pair (a, b) passes when ``cos(a, b) > threshold[a]`` and ``cos(a, b) > threshold[b]``;
    ``threshold[w]`` is the mean plus ``z`` standard deviations of w's cosine similarities to
    the baseline words (w itself left out). Words without a vector never pass.

    Attributes:
        unit: Unit-norm word vectors (zero rows for words without a vector).
        threshold: Per-word threshold (``inf`` for words without a vector).
        name: Description (recorded in results).
    """

    unit: Float[Tensor, "n_words d"]
    threshold: Float[Tensor, " n_words"]
    name: str = "cosine"

    def similarity(self, q_word: Int[Tensor, " n"], k_word: Int[Tensor, " n"]) -> Float[Tensor, " n"]:
        """Cosine similarity of the pairs' vectors.

        Example:
            >>> bound.similarity(torch.tensor([0]), torch.tensor([1]))  # doctest: +SKIP
        """
        return (self.unit[q_word] * self.unit[k_word]).sum(-1)

    def __call__(self, q_word: Int[Tensor, " n"], k_word: Int[Tensor, " n"]) -> Bool[Tensor, " n"]:
        s = self.similarity(q_word, k_word)
        return (s > self.threshold[q_word]) & (s > self.threshold[k_word])

    def block(
        self, q_word: Int[Tensor, "*batch a"], k_word: Int[Tensor, "*batch b"]
    ) -> Bool[Tensor, "*batch a b"]:
        """The rule for every (q_word[..., i], k_word[..., j]) combination (batched matmul).

        Example:
            >>> bound.block(torch.tensor([[0, 1]]), torch.tensor([[2, 3, 4]])).shape  # doctest: +SKIP
            torch.Size([1, 2, 3])
        """
        S = self.unit[q_word] @ self.unit[k_word].transpose(-1, -2)
        return (S > self.threshold[q_word][..., :, None]) & (
            S > self.threshold[k_word][..., None, :])


@torch.no_grad()
def cosine_threshold(
    vectors: Float[Tensor, "n_words d"],
    *,
    has_vector: Bool[Tensor, " n_words"] | None = None,
    z: float = 1.96,
    n_baseline: int = 3000,
    chunk: int = 4096,
    name: str = "cosine",
) -> CosineThreshold:
    """Bind the mean + z·σ cosine rule to word vectors (one row per vocabulary word).

    The baseline is the first ``n_baseline`` words that have a vector (the most frequent ones
    for a frequency-ordered vocabulary, as in the paper, which used 3,000). The mean and the
    variance of a word's similarities to the baseline are computed in closed form from the
    baseline's vector sum and Gram matrix (float64, ``O(n_words d^2)``, no
    ``n_words x n_baseline`` matrix), in chunks of ``chunk`` rows.

    Args:
        vectors: Word vectors, row i for vocabulary word i.
        has_vector: Which rows are real vectors (default: all).
        z: Standard deviations above the mean (1.96 in the paper).
        n_baseline: Baseline size.
        chunk: Rows per similarity block.
        name: Recorded description.

    Example:
        >>> ct = cosine_threshold(torch.randn(100, 16), n_baseline=50)
        >>> ct.threshold.shape
        torch.Size([100])
    """
    V = vectors.detach().float()
    n = V.shape[0]
    has = torch.ones(n, dtype=torch.bool) if has_vector is None else has_vector.to(torch.bool)
    unit = torch.nn.functional.normalize(V, dim=-1) * has[:, None]
    base = torch.nonzero(has).squeeze(-1)[: max(0, int(n_baseline))]
    thr = torch.full((n,), float("inf"))
    if base.numel() >= 2:
        # mean and variance of cos(w, b) over the baseline without the n x b matrix:
        # sum_b cos = u_w . (sum_b u_b) and sum_b cos^2 = u_w^T (B^T B) u_w (float64)
        B = unit[base].double()
        s1, G = B.sum(0), B.T @ B
        in_base = torch.zeros(n, dtype=torch.bool)
        in_base[base] = True
        for s in range(0, n, chunk):
            U = unit[s : s + chunk].double()
            own = in_base[s : s + chunk].double()  # leave the word itself out
            sq = (U * U).sum(1)
            cnt = base.numel() - own
            m = (U @ s1 - own * sq) / cnt
            m2 = (((U @ G) * U).sum(1) - own * sq**2) / cnt
            thr[s : s + chunk] = (m + z * (m2 - m**2).clamp(min=0).sqrt()).float()
    thr = torch.where(has, thr, torch.full_like(thr, float("inf")))
    return CosineThreshold(unit=unit, threshold=thr, name=name)


class EmbeddingFilter:
    """The default relatedness filter: cosine of the model's own input word embeddings.

    An offline stand-in for the paper's GloVe filter (a deviation, see docs/attention.md):
    a word's vector is the mean of its tokens' input embeddings, and a pair passes the
    mean + ``z``·σ rule of :class:`CosineThreshold` against the first ``n_baseline``
    vocabulary words.

    Example:
        >>> df = word_pairs(model, 0, 0, vocab, filter=EmbeddingFilter(z=2.5))  # doctest: +SKIP
    """

    def __init__(self, *, z: float = 1.96, n_baseline: int = 3000) -> None:
        self.z = float(z)
        self.n_baseline = int(n_baseline)

    def __repr__(self) -> str:
        return f"EmbeddingFilter(z={self.z}, n_baseline={self.n_baseline})"

    def bind(self, model: Any, vocab: WordVocab) -> CosineThreshold:
        """Word vectors from ``model``'s input embedding, thresholds for ``vocab``."""
        _check_vocab(vocab, model)
        V = word_matrix(embedding(model), vocab)
        return cosine_threshold(V, z=self.z, n_baseline=self.n_baseline, name=repr(self))


class VectorFilter:
    """A relatedness filter from external word vectors (e.g. GloVe, as in the paper).

    Args:
        vectors: ``{word: vector}`` or ``(words, matrix)``. Vocabulary words without a vector
            never pass.
        z: Standard deviations above the mean similarity (1.96 in the paper).
        n_baseline: Baseline size (the first words of the vocabulary that have vectors).
        name: Recorded description.

    Example:
        >>> glove = {"write": [0.1, 0.3], "poem": [0.2, 0.2]}  # your own vectors
        >>> f = VectorFilter(glove)
        >>> f.dim
        2
    """

    def __init__(
        self,
        vectors: Mapping[str, Any] | tuple[Sequence[str], Any],
        *,
        z: float = 1.96,
        n_baseline: int = 3000,
        name: str = "vectors",
    ) -> None:
        if isinstance(vectors, Mapping):
            words, mat = list(vectors.keys()), [vectors[w] for w in vectors]
        else:
            words, mat = list(vectors[0]), vectors[1]
        M = torch.as_tensor(np.asarray(mat, dtype=np.float32))
        if M.dim() != 2 or M.shape[0] != len(words):
            raise ShiftlensError(
                f"VectorFilter: expected {len(words)} vectors of equal length, got shape "
                f"{tuple(M.shape)}"
            )
        self.index = {w: i for i, w in enumerate(words)}
        self.matrix = M
        self.dim = int(M.shape[1])
        self.z = float(z)
        self.n_baseline = int(n_baseline)
        self.name = name

    def __repr__(self) -> str:
        return (f"VectorFilter({self.name!r}, {len(self.index)} words, z={self.z}, "
                f"n_baseline={self.n_baseline})")

    def bind(self, model: Any, vocab: WordVocab) -> CosineThreshold:
        """Vectors of the vocabulary's words (the model is not used)."""
        rows = [self.index.get(w, -1) for w in vocab.words]
        has = torch.tensor([r >= 0 for r in rows], dtype=torch.bool)
        idx = torch.tensor([max(r, 0) for r in rows], dtype=torch.long)
        V = self.matrix[idx] if len(rows) else torch.zeros(0, self.dim)
        return cosine_threshold(V, has_vector=has, z=self.z, n_baseline=self.n_baseline,
                                name=repr(self))


FilterSpec = Any  # "embedding" | None | PairFilter


def resolve_filter(filter: FilterSpec) -> PairFilter | None:
    """Turn a filter argument into a :class:`PairFilter` (or None for no filter).

    ``"embedding"`` -> :class:`EmbeddingFilter` (the default); ``None`` or ``"none"`` -> no
    relatedness filter (every same-sign pair is kept); any object with a ``bind`` method is
    used as is.

    Example:
        >>> resolve_filter("embedding")
        EmbeddingFilter(z=1.96, n_baseline=3000)
        >>> resolve_filter(None) is None
        True
    """
    if filter is None or (isinstance(filter, str) and filter == "none"):
        return None
    if isinstance(filter, str):
        if filter == "embedding":
            return EmbeddingFilter()
        raise ShiftlensError(f"unknown filter {filter!r}; use 'embedding', None or a PairFilter")
    if isinstance(filter, PairFilter):
        return filter
    raise ShiftlensError(
        f"filter {type(filter).__name__} has no bind(model, vocab) method (see PairFilter)"
    )


# ============================================================================ weight view


def _check_vocab(vocab: WordVocab, model: Any = None) -> None:
    if not isinstance(vocab, WordVocab):
        raise ShiftlensError(f"expected a WordVocab, got {type(vocab).__name__}")
    if len(vocab) == 0:
        who = f" for {_name(model)}" if model is not None else ""
        raise ShiftlensError(
            f"empty vocabulary{who}: no word could be encoded"
            + (f" ({len(vocab.skipped)} skipped)" if vocab.skipped else "")
        )


def _layer_norm_model(model: Any) -> bool:
    return str(getattr(model.cfg, "normalization_type", "") or "").upper().startswith("LN")


@torch.no_grad()
def word_embeddings(model: Any, vocab: WordVocab) -> Float[Tensor, "n_words d_model"]:
    """Input word vectors for the QK projections: the mean of each word's token embeddings.

    Centred across d_model for LayerNorm models (LayerNorm centres its input before scaling;
    RMSNorm does not).

    Example:
        >>> E = word_embeddings(pair.base, vocab)  # doctest: +SKIP
    """
    _check_vocab(vocab, model)
    E = word_matrix(embedding(model), vocab)
    if _layer_norm_model(model):
        E = E - E.mean(-1, keepdim=True)
    return E


@dataclass
class LayerPairs:
    """Word pairs of the heads of one layer, as tensors (one entry per kept pair).

    Entries are sorted by head, then by ``score`` descending.

    Attributes:
        head: Row of ``W_Q`` the pair belongs to.
        dim: The d_head dimension the pair was found in.
        dim_rank: That dimension's energy rank in its head (0 = highest).
        q_word, k_word: Vocabulary indices of the query word and the key word.
        q_act, k_act: Their activations ``Q[q_word, dim]``, ``K[k_word, dim]`` (same sign).
        energy: ``[head, d_head]`` energy sum_w Q^2 + sum_w K^2 of every dimension.
        top_dims: ``[head, n_top]`` the selected dimensions, highest energy first.

    Example:
        >>> lp = layer_word_pairs(model, 3, vocab)  # doctest: +SKIP
        >>> lp.head.unique()  # heads with kept pairs  # doctest: +SKIP
    """

    head: Int[Tensor, " n"]
    dim: Int[Tensor, " n"]
    dim_rank: Int[Tensor, " n"]
    q_word: Int[Tensor, " n"]
    k_word: Int[Tensor, " n"]
    q_act: Float[Tensor, " n"]
    k_act: Float[Tensor, " n"]
    energy: Float[Tensor, "head d_head"]
    top_dims: Int[Tensor, "head n_top"]

    @property
    def score(self) -> Float[Tensor, " n"]:
        """``q_act * k_act``: the pair's contribution to the attention logit in that dim."""
        return self.q_act * self.k_act

    def __len__(self) -> int:
        return int(self.head.shape[0])


def _kv_map(n_q: int, n_k: int) -> Int[Tensor, " head"]:
    if n_k == n_q:
        return torch.arange(n_q)
    if n_k < 1 or n_q % n_k:
        raise ShiftlensError(f"{n_q} query heads cannot share {n_k} key heads")
    return torch.arange(n_q) // (n_q // n_k)


def project_vocab(
    E: Float[Tensor, "n_words d_model"],
    W_Q: Float[Tensor, "head d_model d_head"],
    W_K: Float[Tensor, "kv_head d_model d_head"],
) -> tuple[Float[Tensor, "n_words head d_head"], Float[Tensor, "n_words kv_head d_head"]]:
    """Q = E W_Q and K = E W_K for every head at once: one matmul.

    Example:
        >>> Q, K = project_vocab(torch.randn(10, 8), torch.randn(4, 8, 2), torch.randn(2, 8, 2))
        >>> Q.shape, K.shape
        (torch.Size([10, 4, 2]), torch.Size([10, 2, 2]))
    """
    n_q, n_k = W_Q.shape[0], W_K.shape[0]
    W = torch.cat(
        [einops.rearrange(W_Q, "h d e -> d (h e)"), einops.rearrange(W_K, "h d e -> d (h e)")],
        dim=1,
    )
    P = E @ W.to(E.dtype)
    e = W_Q.shape[2]
    Q = einops.rearrange(P[:, : n_q * e], "n (h e) -> n h e", h=n_q)
    K = einops.rearrange(P[:, n_q * e :], "n (h e) -> n h e", h=n_k)
    return Q, K


def _check_sizes(top_dims: int | None, top_k: int) -> None:
    if top_dims is not None and (not isinstance(top_dims, int) or top_dims < 1):
        raise ShiftlensError(f"top_dims must be a positive int or None (all), got {top_dims!r}")
    if not isinstance(top_k, int) or top_k < 1:
        raise ShiftlensError(f"top_k must be a positive int, got {top_k!r}")


@torch.no_grad()
def layer_word_pairs(
    E: Float[Tensor, "n_words d_model"],
    W_Q: Float[Tensor, "head d_model d_head"],
    W_K: Float[Tensor, "kv_head d_model d_head"],
    *,
    top_dims: int | None = 10,
    top_k: int = 50,
    pair_filter: Callable[[Tensor, Tensor], Tensor] | None = None,
    exclude_self: bool = True,
    kv_map: Int[Tensor, " head"] | None = None,
) -> LayerPairs:
    """Word pairs of every head of a layer from tensors (the batched core).

    One matmul projects the vocabulary through all heads (:func:`project_vocab`); energy
    ranking, top-K selection and the same-sign rule are batched over heads and dimensions;
    the relatedness filter is called once for all candidates of the layer.

    Args:
        E: Word vectors (rows = vocabulary words).
        W_Q: Query weights of the heads (norm folded).
        W_K: Key weights, either one per query head or one per key/value group.
        top_dims: Dimensions kept per head (highest energy; None = all; capped at d_head).
        top_k: Words kept per dimension for Q and for K (capped at the vocabulary size).
        pair_filter: ``f(q_word, k_word) -> bool mask`` (e.g. a bound :class:`PairFilter`).
        exclude_self: Drop pairs of a word with itself (as in the paper).
        kv_map: Key head of each query head (default: consecutive groups, as in GQA).

    Returns:
        The :class:`LayerPairs`.

    Example:
        >>> lp = layer_word_pairs(torch.randn(50, 8), torch.randn(2, 8, 4), torch.randn(2, 8, 4),
        ...                       top_dims=2, top_k=5)
        >>> lp.top_dims.shape
        torch.Size([2, 2])
    """
    _check_sizes(top_dims, top_k)
    n, _ = E.shape
    if n == 0:
        raise ShiftlensError("empty vocabulary: no word vectors")
    H, _, e = W_Q.shape
    km = _kv_map(H, W_K.shape[0]) if kv_map is None else kv_map
    T = e if top_dims is None else min(top_dims, e)
    k = min(top_k, n)
    Q, K = project_vocab(E, W_Q, W_K)  # [n, H, e], [n, H_kv, e]
    energy = (Q**2).sum(0) + (K**2).sum(0)[km]  # [H, e]
    dims = energy.topk(T, dim=-1).indices  # [H, T], highest energy first
    hh = torch.arange(H)[:, None]
    Qs = Q.permute(1, 2, 0)[hh, dims]  # [H, T, n]
    Ks = K.permute(1, 2, 0)[km[:, None], dims]  # [H, T, n]
    qi = Qs.abs().topk(k, dim=-1).indices  # [H, T, k]
    ki = Ks.abs().topk(k, dim=-1).indices
    qa = Qs.gather(-1, qi)
    ka = Ks.gather(-1, ki)
    keep = (qa[..., :, None] * ka[..., None, :]) > 0  # [H, T, k, k]
    if exclude_self:
        keep &= qi[..., :, None] != ki[..., None, :]
    blockwise = pair_filter is not None and callable(getattr(pair_filter, "block", None))
    if blockwise:  # all k x k combinations of each (head, dim) at once, heads in chunks
        step = max(1, int(2**24 // max(1, T * k * max(1, E.shape[1]))))
        for s in range(0, H, step):
            keep[s : s + step] &= pair_filter.block(qi[s : s + step], ki[s : s + step]).to(
                torch.bool)
    h, t, i, j = keep.nonzero(as_tuple=True)
    qw, kw = qi[h, t, i], ki[h, t, j]
    if pair_filter is not None and not blockwise and h.numel():
        ok = pair_filter(qw, kw).to(torch.bool)
        h, t, i, j, qw, kw = h[ok], t[ok], i[ok], j[ok], qw[ok], kw[ok]
    q_act, k_act = qa[h, t, i], ka[h, t, j]
    order = torch.argsort(q_act * k_act, descending=True, stable=True)
    order = order[torch.argsort(h[order], stable=True)]
    h, t, qw, kw, q_act, k_act = h[order], t[order], qw[order], kw[order], q_act[order], k_act[order]
    return LayerPairs(
        head=h, dim=dims[h, t], dim_rank=t, q_word=qw, k_word=kw, q_act=q_act, k_act=k_act,
        energy=energy, top_dims=dims,
    )


def _bind(filter: FilterSpec, model: Any, vocab: WordVocab) -> tuple[Any, str]:
    f = resolve_filter(filter)
    if f is None:
        return None, "none"
    return f.bind(model, vocab), repr(f)


def _layer_weights(
    model: Any, layer: int, heads: Sequence[int] | None, fold_norm: bool
) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Selected heads' W_Q, the key heads they use (deduplicated) and the head -> key map."""
    W_Q, W_K = qk_weights(model, layer, fold_norm=fold_norm)  # K expanded per query head
    n_heads = W_Q.shape[0]
    hs = list(range(n_heads)) if heads is None else list(dict.fromkeys(heads))
    for hd in hs:
        check_layer(model, layer, hd)
    if not hs:
        raise ShiftlensError(f"{_name(model)}: empty list of heads for layer {layer}")
    n_kv = int(getattr(model.cfg, "n_key_value_heads", None) or n_heads)
    g = n_heads // n_kv if n_kv and n_heads % n_kv == 0 else 1
    group = [hd // g for hd in hs]
    uniq = sorted(set(group))
    W_K_u = torch.stack([W_K[u * g] for u in uniq])
    km = torch.tensor([uniq.index(x) for x in group], dtype=torch.long)
    return W_Q[hs], W_K_u, km, hs


def _pairs_frame(
    lp: LayerPairs, layer: int, heads: list[int], vocab: WordVocab, bound: Any
) -> pd.DataFrame:
    words = np.asarray(vocab.words, dtype=object)
    h = lp.head.numpy().astype(np.int64)
    rank = np.zeros(len(h), dtype=np.int64)
    if len(h):
        starts = np.r_[0, np.flatnonzero(np.diff(h)) + 1]
        counts = np.diff(np.r_[starts, len(h)])
        rank = np.arange(len(h)) - np.repeat(starts, counts)
    qw, kw = lp.q_word, lp.k_word
    if hasattr(bound, "similarity"):
        sim = bound.similarity(qw, kw).numpy()
    else:
        sim = np.full(len(h), np.nan)
    return pd.DataFrame({
        "layer": np.full(len(h), layer, dtype=np.int64),
        "head": np.asarray(heads, dtype=np.int64)[h],
        "rank": rank,
        "dim": lp.dim.numpy().astype(np.int64),
        "dim_rank": lp.dim_rank.numpy().astype(np.int64),
        "energy": lp.energy[lp.head, lp.dim].numpy(),
        "q_word": words[qw.numpy()],
        "k_word": words[kw.numpy()],
        "q_act": lp.q_act.numpy(),
        "k_act": lp.k_act.numpy(),
        "score": lp.score.numpy(),
        "similarity": np.asarray(sim, dtype=np.float32),
        "q_index": qw.numpy().astype(np.int64),
        "k_index": kw.numpy().astype(np.int64),
    })


@torch.no_grad()
def word_pairs_layer(
    model: Any,
    layer: int,
    vocab: WordVocab,
    *,
    heads: Sequence[int] | None = None,
    top_dims: int | None = 10,
    top_k: int = 50,
    filter: FilterSpec = "embedding",
    exclude_self: bool = True,
    fold_norm: bool = True,
) -> pd.DataFrame:
    """Word pairs of all (or some) heads of a layer, with one batched projection.

    See :func:`word_pairs` for the method and the columns.

    Args:
        model: A TransformerBridge.
        layer: Layer index.
        vocab: Word vocabulary (:func:`shiftlens.vocab.default_vocab`).
        heads: Query heads to analyse (default all).
        top_dims: Dimensions per head, by energy (None = all d_head).
        top_k: Words per dimension by |Q| and by |K|.
        filter: ``"embedding"`` (default), None, or a :class:`PairFilter`.
        exclude_self: Drop pairs of a word with itself.
        fold_norm: Fold the attention-input norm's gamma into W_Q/W_K.

    Returns:
        One row per (head, dimension, query word, key word), per head sorted by ``score``.

    Raises:
        ShiftlensError: layer or head out of range, empty vocabulary.

    Example:
        >>> df = word_pairs_layer(pair.base, 0, vocab)  # doctest: +SKIP
        >>> df.groupby("head").size()  # doctest: +SKIP
    """
    check_layer(model, layer)
    _check_vocab(vocab, model)
    _check_sizes(top_dims, top_k)
    W_Q, W_K, km, hs = _layer_weights(model, layer, heads, fold_norm)
    bound, fname = _bind(filter, model, vocab)
    E = word_embeddings(model, vocab)
    lp = layer_word_pairs(E, W_Q, W_K, top_dims=top_dims, top_k=top_k, pair_filter=bound,
                          exclude_self=exclude_self, kv_map=km)
    df = _pairs_frame(lp, layer, hs, vocab, bound)
    df.attrs.update({"model": _name(model), "filter": fname, "n_words": len(vocab),
                     "n_skipped_words": len(vocab.skipped)})
    return df


def word_pairs(
    model: Any,
    layer: int,
    head: int,
    vocab: WordVocab,
    *,
    top_dims: int | None = 10,
    top_k: int = 50,
    filter: FilterSpec = "embedding",
    exclude_self: bool = True,
    fold_norm: bool = True,
) -> pd.DataFrame:
    """The word pairs a head encodes in its QK circuit (Wu et al. 2024, §4).

    Word vectors E (mean of each word's token input embeddings) are projected by the head's
    W_Q and W_K (norm gamma folded, GQA key heads expanded): Q = E W_Q, K = E W_K. The head's
    d_head dimensions are ranked by energy sum_w Q[w,d]^2 + sum_w K[w,d]^2; for each of the
    ``top_dims`` top dimensions, the ``top_k`` words with largest |Q| and with largest |K|
    form candidate (query word, key word) pairs, kept when ``Q * K > 0`` (the pair raises the
    attention logit) and the relatedness filter passes (default: the model's own embedding
    cosine with the paper's mean + 1.96σ rule, :class:`EmbeddingFilter`).

    Args:
        model: A TransformerBridge.
        layer: Layer index.
        head: Query head index.
        vocab: Word vocabulary; words the tokenizer could not encode are in
            ``vocab.skipped`` (counted in ``df.attrs["n_skipped_words"]``).
        top_dims: Dimensions analysed, by energy (None = all).
        top_k: Words per dimension.
        filter: ``"embedding"``, None (no filter) or a :class:`PairFilter`.
        exclude_self: Drop pairs of a word with itself.
        fold_norm: Fold the attention-input norm weight.

    Returns:
        A DataFrame sorted by ``score`` (``rank`` 0 = top pair), columns ``layer, head, rank,
        dim, dim_rank, energy, q_word, k_word, q_act, k_act, score, similarity, q_index,
        k_index`` (``score = q_act * k_act``, ``similarity`` from the filter when it has one).

    Raises:
        ShiftlensError: layer or head out of range, empty vocabulary.

    Example:
        >>> from shiftlens.vocab import default_vocab
        >>> vocab = default_vocab(model.tokenizer, 5000)  # doctest: +SKIP
        >>> word_pairs(model, 3, 7, vocab).head()[["q_word", "k_word", "score"]]  # doctest: +SKIP
    """
    check_layer(model, layer, head)
    return word_pairs_layer(model, layer, vocab, heads=[head], top_dims=top_dims, top_k=top_k,
                            filter=filter, exclude_self=exclude_self, fold_norm=fold_norm)


@torch.no_grad()
def model_word_pairs(
    model: Any,
    vocab: WordVocab,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    top_dims: int | None = 10,
    top_k: int = 50,
    filter: FilterSpec = "embedding",
    bound_filter: Any = None,
    exclude_self: bool = True,
    fold_norm: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Word pairs of every head of every (selected) layer: one batched projection per layer.

    The filter is bound once (``bound_filter`` overrides ``filter`` with an already bound
    one, e.g. to use the base model's embedding filter for both models of a pair).

    Example:
        >>> df = model_word_pairs(pair.tuned, vocab, layers=[0, 1])  # doctest: +SKIP
    """
    _check_vocab(vocab, model)
    _check_sizes(top_dims, top_k)
    layers = _check_layers(model, layers)
    if bound_filter is not None:
        bound, fname = bound_filter, getattr(bound_filter, "name", type(bound_filter).__name__)
    else:
        bound, fname = _bind(filter, model, vocab)
    E = word_embeddings(model, vocab)
    frames = []
    for layer in tqdm(layers, desc=f"word pairs {_name(model)}", disable=not progress,
                      leave=False):
        W_Q, W_K, km, hs = _layer_weights(model, layer, heads, fold_norm)
        lp = layer_word_pairs(E, W_Q, W_K, top_dims=top_dims, top_k=top_k, pair_filter=bound,
                              exclude_self=exclude_self, kv_map=km)
        frames.append(_pairs_frame(lp, layer, hs, vocab, bound))
    df = pd.concat(frames, ignore_index=True)
    df.attrs.update({"model": _name(model), "filter": fname, "n_words": len(vocab),
                     "n_skipped_words": len(vocab.skipped)})
    return df


def pair_word_counts(
    pairs: pd.DataFrame, words: Sequence[str] | None = None, *, min_dims: int = 1
) -> pd.DataFrame:
    """How many distinct word pairs of each head contain each word.

    Pairs are unordered (``a–b`` and ``b–a`` are one pair) and a pair counts once per head,
    however many dimensions it was found in; with ``min_dims`` > 1 only pairs found in at
    least that many dimensions of the head count (the authors' released analysis keeps pairs
    seen in more than one dimension).

    Args:
        pairs: A frame from :func:`word_pairs` / :func:`model_word_pairs`.
        words: Count only these words (default all).
        min_dims: Minimum number of dimensions a pair must appear in.

    Returns:
        Columns ``layer, head, word, count`` (words with count 0 are absent).

    Example:
        >>> pair_word_counts(df, ["write", "explain"]).head()  # doctest: +SKIP
    """
    cols = ["layer", "head", "word", "count"]
    if len(pairs) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "word" else np.int64)
                             for c in cols})
    q = pairs["q_word"].astype(str).to_numpy()
    k = pairs["k_word"].astype(str).to_numpy()
    d = pd.DataFrame({
        "layer": pairs["layer"].to_numpy(), "head": pairs["head"].to_numpy(),
        "a": np.where(q <= k, q, k), "b": np.where(q <= k, k, q), "dim": pairs["dim"].to_numpy(),
    })
    u = d.drop_duplicates().groupby(["layer", "head", "a", "b"], sort=False).size()
    u = u[u >= min_dims].reset_index()[["layer", "head", "a", "b"]]
    both = pd.concat([
        u[["layer", "head", "a"]].rename(columns={"a": "word"}),
        u.loc[u.a != u.b, ["layer", "head", "b"]].rename(columns={"b": "word"}),
    ])
    if words is not None:
        both = both[both.word.isin(set(words))]
    out = both.groupby(["layer", "head", "word"]).size().rename("count").reset_index()
    out["count"] = out["count"].astype(np.int64)
    return out


# ============================================================================ verb shift


def _lexicon(name: str) -> list[str]:
    ref = resources.files("shiftlens") / "data" / name
    out = []
    for line in ref.read_text(encoding="utf-8").splitlines():
        w = line.strip()
        if w and not w.startswith("#"):
            out.append(w)
    return out


def instruction_verbs() -> list[str]:
    """The shipped instruction-verb lexicon (``shiftlens/data/instruction_verbs.txt``).

    Example:
        >>> instruction_verbs()[:4]
        ['write', 'explain', 'summarize', 'translate']
    """
    return _lexicon("instruction_verbs.txt")


def general_verbs() -> list[str]:
    """The shipped general-verb sample (``shiftlens/data/general_verbs.txt``).

    Example:
        >>> general_verbs()[:3]
        ['go', 'make', 'take']
    """
    return _lexicon("general_verbs.txt")


@dataclass
class VerbShiftResult:
    """Do heads gain word pairs with instruction verbs after tuning? (:func:`verb_shift`)

    Attributes:
        counts: One row per (layer, head, verb): the number of the head's word pairs that
            contain the verb in ``base`` and in ``tuned``, with its ``group`` and ``verb_set``.
        verbs: One row per (group, verb_set, verb): heads where the count rose / fell / tied
            and ``fraction_rose`` = rose / (rose + fell) (NaN when no head changed).
        tests: One row per layer group (and ``all``): mean ``fraction_rose`` of instruction
            and of general verbs, their difference and Welch's t-test.
        pairs: Every word pair of both models (``role`` column), or None when not kept.
        meta: Model names, vocabulary size and skipped words, verbs missing from the
            vocabulary, the parameters, the filter and the seed.
    """

    counts: pd.DataFrame
    verbs: pd.DataFrame
    tests: pd.DataFrame
    pairs: pd.DataFrame | None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Per-head rows: ``layer, head, group, verb_set, verb, base, tuned``.

        Example:
            >>> res.to_frame().query("verb == 'write'")  # doctest: +SKIP
        """
        return self.counts.copy()

    def summary(self) -> dict[str, Any]:
        """Per layer group: mean fraction of heads with more pairs for instruction vs general
        verbs, Welch's t-test, plus a sentence.

        Example:
            >>> print(verb_res.summary()["sentence"])  # doctest: +SKIP
        """
        groups = {r.group: {k: _py(v) for k, v in r._asdict().items() if k != "Index"}
                  for r in self.tests.itertuples()}
        parts = []
        for r in self.tests.itertuples():
            parts.append(
                f"{r.group}: {r.mean_instruction:.2f} vs {r.mean_general:.2f} "
                f"(Welch p={r.p:.3g}, {r.n_instruction}/{r.n_general} verbs)"
            )
        sentence = (
            "Fraction of heads (ties ignored) whose word pairs with a verb rose after tuning, "
            "instruction vs general verbs - " + "; ".join(parts) + "."
        )
        return {
            "groups": groups,
            "models": self.meta.get("model_names", {}),
            "n_words": self.meta.get("n_words"),
            "n_skipped_words": self.meta.get("n_skipped_words"),
            "missing_verbs": self.meta.get("missing_verbs"),
            "seed": self.meta.get("seed"),
            "sentence": sentence,
        }

    def save(self, directory: str | Path) -> Path:
        """Write the result (JSON + Parquet; no pickle).

        Example:
            >>> verb_res.save("out/verbs")  # doctest: +SKIP
        """
        frames = {"counts": self.counts, "verbs": self.verbs, "tests": self.tests}
        if self.pairs is not None:
            frames["pairs"] = self.pairs
        return save_bundle(directory, "VerbShiftResult", self.meta, frames=frames)

    @classmethod
    def load(cls, directory: str | Path) -> VerbShiftResult:
        """Read a result written by :meth:`save`.

        Example:
            >>> verb_res = VerbShiftResult.load("out/verbs")  # doctest: +SKIP
        """
        meta, frames, _ = load_bundle(directory, "VerbShiftResult")
        return cls(frames["counts"], frames["verbs"], frames["tests"], frames.get("pairs"), meta)

    def show(self, path: str | Path | None = None) -> Any:
        """Bar chart per layer group: mean fraction of heads where pairs rose, by verb set.

        Example:
            >>> fig = verb_res.show("out/verbs.png")  # doctest: +SKIP
        """
        plt = _pyplot()
        t = self.tests
        x = np.arange(len(t))
        fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(t) + 2), 3.5))
        for off, col, lab in ((-0.2, "instruction", "instruction verbs"),
                              (0.2, "general", "general verbs")):
            sd = t[f"sd_{col}"].to_numpy(dtype=float)
            n = t[f"n_{col}"].to_numpy(dtype=float)
            err = np.where(n > 1, sd / np.sqrt(np.maximum(n, 1)), np.nan)
            ax.bar(x + off, t[f"mean_{col}"].to_numpy(dtype=float), 0.4, yerr=err, capsize=3,
                   label=lab)
        for xi, p in zip(x, t["p"].to_numpy(dtype=float)):
            if np.isfinite(p):
                ax.text(xi, 1.02, f"p={p:.2g}", ha="center", fontsize=7)
        ax.axhline(0.5, color="0.5", ls="--", lw=0.8)
        ax.set_xticks(x, t["group"].tolist())
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("fraction of heads with more pairs")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title("word pairs with verbs, tuned vs base (ties ignored)", fontsize=9)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _extend_vocab(vocab: WordVocab, words: Sequence[str], tokenizer: Any) -> WordVocab:
    have = set(vocab.words)
    missing = [w for w in dict.fromkeys(words) if w not in have]
    if not missing:
        return vocab
    try:
        extra = WordVocab.build(tokenizer, missing, max_tokens=3)
    except ShiftlensError:  # none encodable
        return WordVocab(list(vocab.words), [list(t) for t in vocab.token_ids],
                         list(vocab.skipped) + missing)
    return WordVocab(list(vocab.words) + extra.words,
                     [list(t) for t in vocab.token_ids] + extra.token_ids,
                     list(vocab.skipped) + extra.skipped)


@torch.no_grad()
def verb_shift(
    pair: Any,
    vocab: WordVocab | None = None,
    *,
    instruction: Sequence[str] | None = None,
    general: Sequence[str] | None = None,
    n_words: int = 5000,
    layers: Sequence[int] | None = None,
    top_dims: int | None = 10,
    top_k: int = 50,
    filter: FilterSpec = "embedding",
    min_dims: int = 1,
    exclude_self: bool = True,
    group_names: Sequence[str] = ("lower", "middle", "upper"),
    alternative: str = "two-sided",
    seed: int = 0,
    keep_pairs: bool = True,
    progress: bool = True,
) -> VerbShiftResult:
    """Table 3 of Wu et al. (2024, §4): do heads gain word pairs with instruction verbs?

    For each head, each verb's number of word pairs (:func:`model_word_pairs`,
    :func:`pair_word_counts`) in base and in tuned; per layer group (the paper's
    lower/middle/upper thirds, :func:`shiftlens.stats.layer_groups`) and verb, the fraction of
    heads where the count rose among heads where it changed (ties ignored); then per group a
    Welch t-test between the fractions of the instruction verbs and of the general verbs.

    The relatedness filter is bound once, to the base model (so a pair's relatedness is the
    same in both models); each model projects its own embeddings through its own W_Q/W_K.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        vocab: Word vocabulary (default :func:`shiftlens.vocab.default_vocab` with ``n_words``
            words). The verbs are added when missing; verbs the tokenizer cannot encode are
            listed in ``meta["missing_verbs"]``.
        instruction: Instruction verbs (default :func:`instruction_verbs`).
        general: General verbs (default :func:`general_verbs`); must not overlap.
        n_words: Size of the default vocabulary.
        layers: Layers to analyse (default all).
        top_dims, top_k, filter, exclude_self: As in :func:`word_pairs`.
        min_dims: See :func:`pair_word_counts`.
        group_names: Layer-group names (their number sets the number of groups).
        alternative: Alternative of the Welch tests (instruction vs general).
        seed: Bootstrap seed of the tests (recorded).
        keep_pairs: Keep every pair of both models in ``result.pairs``.
        progress: Progress bars.

    Returns:
        A :class:`VerbShiftResult`.

    Raises:
        ShiftlensError: the verb sets overlap, a set has no encodable verb, empty vocabulary,
            a layer out of range.

    Example:
        >>> res = verb_shift(pair)  # doctest: +SKIP
        >>> res.tests  # doctest: +SKIP
    """
    instruction = list(dict.fromkeys(instruction_verbs() if instruction is None else instruction))
    general = list(dict.fromkeys(general_verbs() if general is None else general))
    overlap = sorted(set(instruction) & set(general))
    if overlap:
        raise ShiftlensError(f"verb_shift: verbs in both sets: {overlap[:10]}")
    if not instruction or not general:
        raise ShiftlensError("verb_shift: both verb sets must be non-empty")
    tok = pair.tokenizer
    if vocab is None:
        from shiftlens.vocab import default_vocab

        vocab = default_vocab(tok, n_words, extra=instruction + general)
    else:
        _check_vocab(vocab, pair.base)
        vocab = _extend_vocab(vocab, instruction + general, tok)
    _check_vocab(vocab, pair.base)
    have = set(vocab.words)
    missing = [w for w in instruction + general if w not in have]
    ins_ok = [w for w in instruction if w in have]
    gen_ok = [w for w in general if w in have]
    for label, ok in (("instruction", ins_ok), ("general", gen_ok)):
        if not ok:
            raise ShiftlensError(
                f"verb_shift: none of the {label} verbs can be encoded by the tokenizer of "
                f"{pair.names['base']!r}"
            )
    layers = _check_layers(pair.base, layers)
    bound, fname = _bind(filter, pair.base, vocab)
    pairs = {}
    for role, model in pair:
        df = model_word_pairs(model, vocab, layers=layers, top_dims=top_dims, top_k=top_k,
                              bound_filter=bound, filter=None, exclude_self=exclude_self, progress=progress)
        df.insert(0, "role", role)
        pairs[role] = df
    verbs = ins_ok + gen_ok
    vset = {w: "instruction" for w in ins_ok} | {w: "general" for w in gen_ok}
    gnames = layer_groups(pair.cfg.n_layers, tuple(group_names))
    n_heads = pair.cfg.n_heads
    grid = pd.MultiIndex.from_product([layers, range(n_heads), verbs],
                                      names=["layer", "head", "word"]).to_frame(index=False)
    for role in ROLES:
        c = pair_word_counts(pairs[role], verbs, min_dims=min_dims)
        grid = grid.merge(c.rename(columns={"count": role}), on=["layer", "head", "word"],
                          how="left")
        grid[role] = grid[role].fillna(0).astype(np.int64)
    grid = grid.rename(columns={"word": "verb"})
    grid.insert(2, "group", [gnames[layer] for layer in grid["layer"]])
    grid.insert(3, "verb_set", grid["verb"].map(vset))
    rows = []
    group_order = [g for g in dict.fromkeys(gnames[layer] for layer in layers)]
    for g in group_order + ["all"]:
        sub = grid if g == "all" else grid[grid.group == g]
        for v in verbs:
            s = sub[sub.verb == v]
            rose = int((s.tuned > s.base).sum())
            fell = int((s.tuned < s.base).sum())
            ties = int((s.tuned == s.base).sum())
            rows.append({"group": g, "verb_set": vset[v], "verb": v, "n_heads": len(s),
                         "rose": rose, "fell": fell, "ties": ties,
                         "fraction_rose": rose / (rose + fell) if rose + fell else float("nan")})
    vdf = pd.DataFrame(rows)
    trows = []
    for g in group_order + ["all"]:
        s = vdf[vdf.group == g]
        a = s[s.verb_set == "instruction"].fraction_rose.to_numpy(dtype=float)
        b = s[s.verb_set == "general"].fraction_rose.to_numpy(dtype=float)
        with warnings.catch_warnings():  # scipy warns when a set's fractions are all equal
            warnings.filterwarnings("ignore", message="Precision loss", category=RuntimeWarning)
            r = welch_test(a, b, alternative=alternative, seed=seed)
        a_ok, b_ok = a[np.isfinite(a)], b[np.isfinite(b)]
        trows.append({
            "group": g, "mean_instruction": r.mean_a, "mean_general": r.mean_b, "diff": r.diff,
            "sd_instruction": float(a_ok.std()) if a_ok.size else float("nan"),
            "sd_general": float(b_ok.std()) if b_ok.size else float("nan"),
            "n_instruction": r.n_a, "n_general": r.n_b, "t": r.statistic, "p": r.pvalue,
            "df": r.df, "ci_low": r.ci_low, "ci_high": r.ci_high,
        })
    meta = {
        "model_names": dict(pair.names),
        "n_words": len(vocab),
        "n_skipped_words": len(vocab.skipped),
        "missing_verbs": missing,
        "instruction_verbs": ins_ok,
        "general_verbs": gen_ok,
        "layers": layers,
        "top_dims": top_dims,
        "top_k": top_k,
        "filter": fname,
        "filter_model": "base",
        "min_dims": min_dims,
        "exclude_self": exclude_self,
        "group_names": list(group_names),
        "alternative": alternative,
        "seed": seed,
    }
    all_pairs = pd.concat([pairs["base"], pairs["tuned"]], ignore_index=True) if keep_pairs else None
    return VerbShiftResult(grid, vdf, pd.DataFrame(trows), all_pairs, meta)

