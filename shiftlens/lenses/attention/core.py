"""Lens 2, one model: attention mass per prompt segment, and the word pairs of the QK circuits.

Two views of a model's attention heads (Wu et al., "From Language Modeling to Instruction
Following: Understanding the Behavior Shift in LLMs after Instruction Tuning", NAACL 2024, §4):

**Activation view** (:func:`segment_attention`): for every layer and head, the attention mass
that the query positions (the response tokens, or the last prompt token) put on each key
segment (``bos``, ``instruction``, ``context``, ``template``, ``response``), per prompt.

**Weight view** (:func:`qk_word_pairs` on tensors, :func:`word_pairs` on a model): the paper's
bilinear reading of a head. Word vectors E (a word = the mean of its tokens' input embeddings)
are projected by the head's W_Q and W_K (normalization weight folded in, grouped-query K heads
expanded): Q = E W_Q, K = E W_K. The head's d_head dimensions are ranked by their energy
sum_w Q[w, d]^2 + sum_w K[w, d]^2; in each top dimension the top-K words by |Q| and by |K| form
candidate (query word, key word) pairs, kept when the two activations have the same sign (their
product raises the attention logit) and the words pass a relatedness filter
(:mod:`shiftlens.lenses.attention.filters`). All vocabulary projections of a layer are one
matmul (all heads' Q and the layer's K heads at once). :func:`pair_word_counts` counts the
pairs each word takes part in, per head; :func:`instruction_verbs` and :func:`general_verbs`
are the shipped verb lexicons.

Weights: :func:`shiftlens.weights.qk_weights` reads the current weights and folds the
attention-input norm's gamma unless TransformerLens already folded it (``processing="compat"``).
For LayerNorm models (GPT-2) word vectors are centred first, as LayerNorm centres its input.
Biases and rotary position embeddings are ignored (the bilinear term only), as in the paper.

Devices: the activation view runs each model where its inputs go (``cfg.device``, through
:func:`shiftlens.capture.run_hooks_batched`) and returns CPU tensors. The weight view reads the
weights on the CPU (:mod:`shiftlens.weights`) and computes on ``device`` when given, else on
the model's input device (:func:`shiftlens.bridge.device_of`); index tensors are created on, or
moved to, the device of the tensor they index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from shiftlens.bridge import model_name
from shiftlens.capture import run_hooks_batched
from shiftlens.checks import (
    check_choice,
    check_int,
    check_layers,
    check_prompts,
    pad_token_id,
    prompt_id,
)
from shiftlens.errors import ShiftlensError
from shiftlens.prompts import (
    RESPONSE,
    SEGMENTS,
    InstructionPrompt,
    TokenizedPrompt,
    tokenize_prompt,
)

__all__ = [
    "QUERIES",
    "SegmentAttention",
    "segment_attention",
    "instruction_verbs",
    "general_verbs",
]

#: The query positions :func:`segment_attention` reads: the response tokens, or the last prompt
#: token.
QUERIES = ("response", "last")
#: Vocabulary size of :func:`word_pairs` when no vocabulary is given.
DEFAULT_WORDS = 5000
#: What :func:`segment_attention` does with a non-finite mass: raise, or keep the values.
NONFINITE = ("raise", "keep")
#: Columns of the tables that record non-finite masses (:meth:`SegmentAttention.nonfinite`).
NONFINITE_COLUMNS = ("id", "role", "model", "layer", "heads")


# ============================================================================ checks
def check_flag(name: str, value: Any, *, who: str = "") -> bool:
    """``value`` if it is a bool (``True``/``False``; 1, "yes" or None are refused).

    Example:
        >>> check_flag("progress", False)
        False
    """
    if not isinstance(value, (bool, np.bool_)):
        pre = f"{who}: " if who else ""
        raise ShiftlensError(f"{pre}{name} must be True or False, got {value!r}")
    return bool(value)


def check_model(model: Any, who: str) -> Any:
    """A model (TransformerBridge or weight source): something with ``cfg.n_layers``.

    Example:
        >>> check_model(None, "word_pairs")
        Traceback (most recent call last):
        ...
        shiftlens.errors.ShiftlensError: word_pairs: model must be a TransformerBridge (or a weight source), got NoneType
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None or getattr(cfg, "n_layers", None) is None or hasattr(model, "tuned"):
        hint = " (a ModelPair: pass pair.base or pair.tuned)" if hasattr(model, "tuned") else ""
        raise ShiftlensError(f"{who}: model must be a TransformerBridge (or a weight source), got "
                             f"{type(model).__name__}{hint}")
    return model


def check_pair(pair: Any, who: str) -> Any:
    """A :class:`shiftlens.ModelPair` (anything with ``base``, ``tuned``, ``names``, ``cfg``).

    Example:
        >>> check_pair(None, "verb_shift")
        Traceback (most recent call last):
        ...
        shiftlens.errors.ShiftlensError: verb_shift: pair must be a shiftlens.ModelPair, got NoneType
    """
    if not all(hasattr(pair, a) for a in ("base", "tuned", "names", "cfg")):
        raise ShiftlensError(f"{who}: pair must be a shiftlens.ModelPair, got "
                             f"{type(pair).__name__}")
    return pair




def nonfinite_cells(mass: Float[Tensor, "prompt layer head segment"], prompt_ids: Sequence[str],
                    layers: Sequence[int], role: str, model: str) -> pd.DataFrame:
    """One row per (prompt, layer) whose mass holds a NaN or an infinity.

    Example:
        >>> m = torch.zeros(2, 1, 3, 5); m[1, 0, 2, 0] = float("nan")
        >>> nonfinite_cells(m, ["a", "b"], [4], "tuned", "t").to_dict("records")
        [{'id': 'b', 'role': 'tuned', 'model': 't', 'layer': 4, 'heads': 1}]
    """
    bad = ~torch.isfinite(mass).all(-1)  # [prompt, layer, head]
    p, j = bad.any(-1).nonzero(as_tuple=True)
    return pd.DataFrame({
        "id": pd.Series([prompt_ids[i] for i in p.tolist()], dtype="str"),
        "role": pd.Series([role] * len(p), dtype="str"),
        "model": pd.Series([model] * len(p), dtype="str"),
        "layer": np.asarray([layers[i] for i in j.tolist()], dtype=np.int64),
        "heads": bad.sum(-1)[p, j].numpy().astype(np.int64),
    })


def check_words(name: str, words: Any, *, who: str = "") -> list[str]:
    """A list of words (strings); a bare string is refused (it is not a list of letters).

    Example:
        >>> check_words("instruction", ["write", "list"])
        ['write', 'list']
    """
    pre = f"{who}: " if who else ""
    if isinstance(words, (str, bytes)) or not isinstance(words, (Sequence, set, frozenset,
                                                                 np.ndarray, pd.Index)):
        raise ShiftlensError(f"{pre}{name} must be a list of words, got {words!r}"
                             + (f" (write [{words!r}])" if isinstance(words, str) else ""))
    out = list(words)
    bad = [w for w in out if not isinstance(w, str)]
    if bad:
        raise ShiftlensError(f"{pre}{name} must hold strings, got {bad[:3]!r}")
    return out


def describe_nonfinite(cells: pd.DataFrame, *, limit: int = 3) -> str:
    """The non-finite cells in words: per model, the prompts and their layers.

    Example:
        >>> cells = pd.DataFrame({"id": ["a", "a"], "role": ["tuned"] * 2, "model": ["t"] * 2,
        ...                       "layer": [2, 3], "heads": [4, 4]})
        >>> describe_nonfinite(cells)
        "tuned model 't': prompt 'a' (layers 2, 3)"
    """
    parts = []
    for (role, model), sub in cells.groupby(["role", "model"], sort=False):
        by_prompt = sub.groupby("id", sort=False)["layer"].apply(list)
        items = [f"prompt {pid!r} (layer{'s' if len(set(ls)) > 1 else ''} "
                 f"{', '.join(str(x) for x in sorted(set(ls)))})"
                 for pid, ls in list(by_prompt.items())[:limit]]
        more = len(by_prompt) - limit
        who = f"model {model!r}" if role == "model" else f"{role} model {model!r}"
        parts.append(f"{who}: " + ", ".join(items)
                     + (f" and {more} more prompt{'s' if more > 1 else ''}" if more > 0 else ""))
    return "; ".join(parts)


def nonfinite_message(cells: pd.DataFrame, n_prompts: int, who: str = "", *,
                      n_bad: int | None = None) -> str:
    """The error for non-finite attention masses: models, prompts, layers, and what to check.

    Example:
        >>> cells = pd.DataFrame({"id": ["a"], "role": ["tuned"], "model": ["t"], "layer": [2],
        ...                       "heads": [4]})
        >>> nonfinite_message(cells, 5).split(":")[0]
        'non-finite attention mass for 1 of 5 prompts'
    """
    if n_bad is None:  # prompts counted by id (give n_bad when ids may repeat)
        n_bad = int(cells["id"].nunique())
    first = cells.iloc[0]
    pre = f"{who}: " if who else ""
    role = "" if first["role"] == "model" else f"{first['role']} "
    return (f"{pre}non-finite attention mass for {n_bad} of {n_prompts} prompts: "
            f"{describe_nonfinite(cells)}. First: {role}model {first['model']!r}, "
            f"prompt {first['id']!r}, layer {int(first['layer'])}. NaN or infinite weights "
            "(edited after loading: shiftlens.bridge.check_finite_weights names them) or an "
            "activation overflow (float16: load the models in float32)?")


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
        prompt_ids: Prompt ids (:func:`shiftlens.checks.prompt_id`: the prompt's ``id``, else
            ``#<index>``).
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

    def nonfinite(self, role: str = "model") -> pd.DataFrame:
        """Where the mass is NaN or infinite: one row per (prompt, layer).

        Args:
            role: Written in the ``role`` column (``"base"`` / ``"tuned"`` in a pair).

        Returns:
            Columns ``id, role, model, layer, heads`` (``heads``: how many of the layer's heads
            have a non-finite mass for that prompt); empty when every value is finite.

        Example:
            >>> sa = SegmentAttention(torch.zeros(1, 1, 2, 5), [0], [False], ["a"], "m")
            >>> len(sa.nonfinite())
            0
        """
        return nonfinite_cells(self.mass, self.prompt_ids, self.layers, role, self.model_name)


def _query_groups(model: Any, prompts: list[InstructionPrompt], query: str
                  ) -> list[tuple[list[int], str, list[TokenizedPrompt]]]:
    """The prompts read at their response tokens and those read at their last prompt token,
    each with its reduction and its tokens."""
    tok = model.tokenizer
    if tok is None:
        raise ShiftlensError(f"{model_name(model)!r} has no tokenizer")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    bos = bool(model.cfg.default_prepend_bos)

    def tokenize(p: InstructionPrompt, response: str | None) -> TokenizedPrompt:
        return tokenize_prompt(tok, p, prepend_bos=bos, response=response, n_ctx=n_ctx,
                               model_name=repr(model_name(model)))

    with_resp = [i for i, p in enumerate(prompts) if query == "response" and p.reference]
    last = sorted(set(range(len(prompts))) - set(with_resp))
    return [
        (with_resp, "segment_mean", [tokenize(prompts[i], prompts[i].reference)
                                     for i in with_resp]),
        (last, "last", [tokenize(prompts[i], None) for i in last]),
    ]


@torch.no_grad()
def segment_attention(
    model: Any,
    prompts: Sequence[InstructionPrompt],
    query: str = "response",
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    nonfinite: str = "raise",
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
        layers: Layers to read (default: all; sorted, duplicates dropped).
        batch_size: Prompts per forward pass.
        progress: Show progress bars.
        nonfinite: What a NaN or infinite mass does (weights edited after loading, an fp16
            overflow): ``"raise"`` (default) a :class:`ShiftlensError` naming the model, the
            prompts and the layers; ``"keep"`` returns the values as they are (see
            :meth:`SegmentAttention.nonfinite`; :func:`~shiftlens.lenses.attention.compare.
            instruction_attention` uses it to exclude and record such prompts).

    Returns:
        A :class:`SegmentAttention` with ``mass[prompt, layer, head, segment]`` (CPU).

    Raises:
        ShiftlensError: unknown query, no prompts, a layer out of range, a bad ``batch_size``
            or ``progress``, a non-finite mass (with ``nonfinite="raise"``).

    Example:
        >>> sa = segment_attention(pair.base, default_prompts()[:4])  # doctest: +SKIP
        >>> sa.mass.shape  # doctest: +SKIP
        torch.Size([4, 2, 4, 5])
    """
    check_choice("query", query, QUERIES)
    check_choice("nonfinite", nonfinite, NONFINITE)
    check_model(model, "segment_attention")
    name = model_name(model)
    prompts = check_prompts(prompts, who=repr(name))
    layers = sorted(check_layers(model, layers))
    batch_size = check_int("batch_size", batch_size, minimum=1)
    progress = check_flag("progress", progress)
    hooks = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    mass = torch.full((len(prompts), len(layers), int(model.cfg.n_heads), len(SEGMENTS)),
                      float("nan"))
    used_last = [False] * len(prompts)
    for idx, reduce, tps in _query_groups(model, prompts, query):
        if not idx:
            continue
        acts = run_hooks_batched(
            model, tps, hooks, batch_size=batch_size, reduce=reduce, progress=progress,
            desc=f"attention {name}", pad_id=pad_token_id(model.tokenizer),
        )
        for j, hook in enumerate(hooks):
            for k, i in enumerate(idx):
                a = acts[hook][k].float().cpu()
                mass[i, j] = a[RESPONSE] if reduce == "segment_mean" else a
        if reduce == "last":
            for i in idx:
                used_last[i] = True
    out = SegmentAttention(
        mass=mass,
        layers=layers,
        used_last=used_last,
        prompt_ids=[prompt_id(p, i) for i, p in enumerate(prompts)],
        model_name=name,
    )
    if nonfinite == "raise":
        bad = out.nonfinite()
        if len(bad):
            n_bad = int((~torch.isfinite(mass)).flatten(1).any(-1).sum())
            raise ShiftlensError(nonfinite_message(bad, len(prompts), n_bad=n_bad))
    return out


# ============================================================================ lexicons
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
