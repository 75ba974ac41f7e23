"""Lens 1: gradient input->output attribution, importance density and instruction sensitivity.

Wu et al. (2024), "From Language Modeling to Instruction Following: Understanding the Behavior
Shift in LLMs after Instruction Tuning" (NAACL 2024), section 3. For a prompt ``x_1..x_N`` (a BOS
token is not among them) with input token embeddings ``e_n`` (the ``hook_embed`` output,
positional embeddings excluded) and a response ``y_1..y_M``:

- attribution ``a[n, m] = e_n . d p(y_m | x, y_<m) / d e_n`` (gradient of the probability),
- sparsified per response token: clip negatives, divide by the column max (+1e-9),
  ``s = ceil(L * value)``, ``s <= b`` set to 0 (``L = 10``, ``b = 7``),
- importance density ``I_n = ||s[n, :]||_1 / ||s[n, :]||_p`` (``p = 4``, +1e-9), divided by its
  max (+1e-9),
- instruction score ``sum_{n in instruction} I_n / log2(2 + |instruction|)``.

How the matrix is computed (:func:`attribute`): one forward pass with the input embeddings
replaced by a leaf tensor (a ``hook_embed`` hook) and the unembedding applied only at the
positions that predict response tokens (Hugging Face ``logits_to_keep``), giving the final
hidden states ``h_m`` and ``p_m = p(y_m | ...)``. The head gradient ``g_m = dp_m/dh_m`` (one
small backward through unembedding + softmax) turns the rest into Jacobian products of the
transformer body:

- reverse mode: ``a[:, m] = e . J_m^T g_m``, one vector-Jacobian product per response token,
  batched with ``torch.autograd.grad(..., is_grads_batched=True)``;
- forward mode: ``a[n, :] = g . (J e_n)``, one Jacobian-vector product per prompt token
  (tangent = the token's own embedding at its position), all response tokens at once;
  ``torch.func.vmap`` over ``torch.func.jvp`` so the primal runs once per chunk, with dual
  tensors (``torch.autograd.forward_ad``) over a batch of copies as the fallback.

``mode="auto"`` takes forward mode when ``N <= M`` (fewer products), reverse mode otherwise.
Gradients never reach the model parameters (``torch.autograd.grad`` / ``torch.func`` only).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import einops
import numpy as np
import pandas as pd
import torch
import torch.autograd.forward_ad as fwAD
from jaxtyping import Bool, Float, Int, Real
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.generate import greedy
from shiftlens.io import load_bundle, save_bundle
from shiftlens.pair import model_name as _name
from shiftlens.prompts import (
    BOS,
    CONTEXT,
    INSTRUCTION,
    RESPONSE,
    SEGMENTS,
    InstructionPrompt,
    TokenizedPrompt,
    tokenize_prompt,
)
from shiftlens.stats import paired_test, welch_test

__all__ = [
    "MODES",
    "POSITIONS",
    "Attribution",
    "sparsify",
    "importance_density",
    "instruction_score",
    "greedy_response",
    "attribution_matrix",
    "attribute",
    "SensitivityResult",
    "instruction_sensitivity",
    "FollowedResult",
    "followed_by_reference",
    "followed_comparison",
    "PositionResult",
    "place_instruction",
    "position_sensitivity",
]

#: Attribution modes accepted by :func:`attribute`.
MODES: tuple[str, ...] = ("auto", "forward", "reverse")
#: Instruction placements of :func:`place_instruction` / :func:`position_sensitivity`.
POSITIONS: tuple[str, ...] = ("start", "middle", "end")

ROLES = ("base", "tuned")
_EPS = 1e-9


# ====================================================================== density and score
def sparsify(
    scores: Real[Tensor, "n_in n_out"], levels: int = 10, threshold: int = 7
) -> Float[Tensor, "n_in n_out"]:
    """The sparsified attribution levels ``s`` of Wu et al. (2024, §3), in float64.

    Per response token (column): clip negatives to 0, divide by the column max (+1e-9),
    ``s = ceil(levels * value)``, then set ``s <= threshold`` to 0. Idempotent on its own output
    when every non-zero column reaches ``levels`` (as after one application).

    Args:
        scores: Raw attributions ``a[n, m]`` (``n_input x n_output``); ints or floats.
        levels: Number of levels ``L``.
        threshold: Levels ``<= threshold`` are dropped (``b``).

    Returns:
        Float64 tensor of integers in ``{0} U (threshold, levels]``.

    Raises:
        ShiftlensError: empty matrix, non-finite values, or bad ``levels``/``threshold``.

    Example:
        >>> sparsify(torch.tensor([[1.0, -1.0], [0.75, 2.0], [0.5, 1.5]])).tolist()
        [[10.0, 0.0], [8.0, 10.0], [0.0, 8.0]]
    """
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ShiftlensError(
            f"attribution scores must be a non-empty (n_input, n_output) matrix, got shape "
            f"{tuple(scores.shape)}"
        )
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ShiftlensError(f"levels must be a positive int, got {levels!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold < levels:
        raise ShiftlensError(f"threshold must be an int in [0, levels), got {threshold!r}")
    a = scores.detach().to(torch.float64)
    if not torch.isfinite(a).all():
        raise ShiftlensError("attribution matrix contains NaN or infinite values")
    a = a.clamp(min=0)
    a = a / (a.amax(dim=0, keepdim=True) + _EPS)
    s = torch.ceil(levels * a)
    return torch.where(s <= threshold, torch.zeros_like(s), s)


def importance_density(
    scores: Real[Tensor, "n_in n_out"], levels: int = 10, threshold: int = 7, p: float | int = 4
) -> Float[Tensor, " n_in"]:
    """Importance density of every input token from an attribution matrix (Wu et al. 2024, §3).

    Per response token (column) ``m``: negatives are clipped to 0, the column is divided by its
    max (+1e-9), ``s = ceil(levels * value)`` and entries ``s <= threshold`` are set to 0. Then
    ``I_n = ||s[n, :]||_1 / (||s[n, :]||_p + 1e-9)`` and ``I / (max_n I_n + 1e-9)``, so
    ``I`` lies in [0, 1]. Computed in float64 on the input's device. A matrix already on the
    ``0..levels`` integer scale whose every non-zero column reaches ``levels`` (the published
    matrices of the paper) is unchanged by the re-normalisation.

    Args:
        scores: Raw attributions ``a[n, m]`` (``n_input x n_output``); ints or floats.
        levels: Number of levels ``L``.
        threshold: Levels ``<= threshold`` are dropped (``b``).
        p: The norm in the denominator (``p > 1``).

    Returns:
        Float64 tensor ``[n_input]`` in [0, 1].

    Raises:
        ShiftlensError: empty matrix, non-finite values, or bad ``levels``/``threshold``/``p``.

    Example:
        >>> a = torch.tensor([[1.0, 0.2], [0.9, 1.0], [0.0, 0.1]])
        >>> sparsify(a).tolist()
        [[10.0, 0.0], [9.0, 10.0], [0.0, 0.0]]
        >>> [round(v, 4) for v in importance_density(a).tolist()]  # [1, 19 / (9^4 + 10^4)^(1/4), 0] / max
        [0.5971, 1.0, 0.0]
    """
    if not (isinstance(p, (int, float)) and p > 1 and math.isfinite(p)):
        raise ShiftlensError(f"p must be a finite number > 1, got {p!r}")
    s = sparsify(scores, levels, threshold)
    l1 = s.sum(dim=1)
    lp = s.pow(p).sum(dim=1).pow(1.0 / p)
    dens = l1 / (lp + _EPS)
    return dens / (dens.max() + _EPS)


def instruction_score(
    density: Float[Tensor, " n_in"], mask: Bool[Tensor, " n_in"], *, label: str = "prompt"
) -> float:
    """Instruction score ``sum_{n in instruction} I_n / log2(2 + |instruction|)`` (§3).

    Args:
        density: Importance density of the input tokens (:func:`importance_density`).
        mask: True at the instruction tokens.
        label: Names the prompt in messages.

    Returns:
        The score; NaN (with a :class:`ShiftlensWarning`) when the mask is empty.

    Example:
        >>> instruction_score(torch.tensor([1.0, 0.5, 0.0]), torch.tensor([True, True, False]))
        0.75
    """
    if density.shape != mask.shape:
        raise ShiftlensError(
            f"{label}: density has {tuple(density.shape)} entries but the mask "
            f"{tuple(mask.shape)}"
        )
    k = int(mask.sum())
    if k == 0:
        warnings.warn(
            f"{label}: no instruction token (no instruction span); instruction score is NaN",
            ShiftlensWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(density.to(torch.float64)[mask.to(density.device)].sum()) / math.log2(2 + k)


# ====================================================================== Attribution
def _decode_tokens(tokenizer: Any, ids: Sequence[int]) -> tuple[str, ...]:
    """Raw token strings (``convert_ids_to_tokens``: byte-level ``Ġ``, sentencepiece ``▁``)."""
    if tokenizer is None:
        return tuple(str(i) for i in ids)
    return tuple(str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids]))


@dataclass
class Attribution:
    """The attribution of one response to the prompt tokens of one model.

    Attributes:
        prompt: The source prompt.
        tokens: All token ids: BOS (if any) + prompt + response.
        segments: Segment code (index into :data:`shiftlens.prompts.SEGMENTS`) per position.
        n_prompt: Prompt positions including BOS; the response starts there.
        matrix: Raw attribution ``a[n, m]`` over the input tokens (prompt positions that are not
            BOS, in order; see :attr:`input_positions`) and the response tokens.
        probs: ``p(y_m | x, y_<m)`` of every response token.
        response: The response text (decoded response tokens).
        model_name: The model explained.
        mode: ``"forward"`` or ``"reverse"``, the mode used.
        generated: Whether the response was generated greedily by the model.
        token_strings: Each token's raw string (``convert_ids_to_tokens``; for display).
        meta: Extra record (mode choice reason, chunk size, dtype, EOS stop, ...).

    Example:
        >>> att = attribute(model, prompt)  # doctest: +SKIP
        >>> att.score(), att.density().shape  # doctest: +SKIP
        (0.83, torch.Size([14]))
    """

    prompt: InstructionPrompt
    tokens: Int[Tensor, " pos"]
    segments: Int[Tensor, " pos"]
    n_prompt: int
    matrix: Float[Tensor, "n_in n_out"]
    probs: Float[Tensor, " n_out"]
    response: str
    model_name: str
    mode: str
    generated: bool = False
    token_strings: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ views
    @property
    def input_positions(self) -> Int[Tensor, " n_in"]:
        """Sequence positions of the attributed input tokens (prompt, BOS excluded)."""
        seg = self.segments[: self.n_prompt]
        return torch.nonzero(seg != BOS).flatten()

    @property
    def input_tokens(self) -> Int[Tensor, " n_in"]:
        """Token ids of the attributed input tokens."""
        return self.tokens[self.input_positions]

    @property
    def response_tokens(self) -> Int[Tensor, " n_out"]:
        """Token ids of the response."""
        return self.tokens[self.n_prompt :]

    @property
    def n_input(self) -> int:
        """Number of input (prompt, non-BOS) tokens ``N``."""
        return int(self.matrix.shape[0])

    @property
    def n_output(self) -> int:
        """Number of response tokens ``M``."""
        return int(self.matrix.shape[1])

    @property
    def input_segments(self) -> Int[Tensor, " n_in"]:
        """Segment code of each input token."""
        return self.segments[self.input_positions]

    @property
    def masks(self) -> dict[str, Bool[Tensor, " n_in"]]:
        """Segment masks over the input tokens (``instruction``, ``context``, ``template``)."""
        seg = self.input_segments
        return {s: seg == SEGMENTS.index(s) for s in ("instruction", "context", "template")}

    @property
    def instruction_mask(self) -> Bool[Tensor, " n_in"]:
        """True at the instruction tokens among the inputs."""
        return self.input_segments == INSTRUCTION

    def density(self, levels: int = 10, threshold: int = 7, p: float | int = 4) -> Float[Tensor, " n_in"]:
        """Importance density of the input tokens (:func:`importance_density`).

        Example:
            >>> att.density(levels=10, threshold=5)  # doctest: +SKIP
        """
        return importance_density(self.matrix, levels, threshold, p)

    def score(self, levels: int = 10, threshold: int = 7, p: float | int = 4) -> float:
        """Instruction score (:func:`instruction_score`); NaN with a warning without instruction.

        Example:
            >>> att.score()  # doctest: +SKIP
            0.91
        """
        return instruction_score(
            self.density(levels, threshold, p), self.instruction_mask, label=self._label
        )

    @property
    def _label(self) -> str:
        return f"prompt {self.prompt.label} ({self.model_name})"

    def to_frame(self, levels: int = 10, threshold: int = 7, p: float | int = 4) -> pd.DataFrame:
        """One row per input token: position, token, segment, density and attribution totals.

        Example:
            >>> att.to_frame().head()  # doctest: +SKIP
        """
        pos = self.input_positions
        strings = self.token_strings or tuple(str(int(t)) for t in self.tokens)
        dens = self.density(levels, threshold, p).cpu().numpy()
        m = self.matrix.detach().double().cpu()
        return pd.DataFrame(
            {
                "prompt_id": self.prompt.id,
                "model": self.model_name,
                "position": pos.cpu().numpy(),
                "token_id": self.tokens[pos].cpu().numpy(),
                "token": [strings[int(i)] for i in pos],
                "segment": [SEGMENTS[int(s)] for s in self.input_segments],
                "density": dens,
                "attribution_sum": m.sum(1).numpy(),
                "attribution_max": m.amax(1).numpy(),
            }
        )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write the attribution (JSON + safetensors, no pickle).

        Example:
            >>> att.save("out/att")  # doctest: +SKIP
        """
        meta = {
            "prompt": self.prompt.to_dict(),
            "n_prompt": self.n_prompt,
            "response": self.response,
            "model_name": self.model_name,
            "mode": self.mode,
            "generated": self.generated,
            "token_strings": list(self.token_strings),
            "meta": self.meta,
        }
        tensors = {
            "tokens": self.tokens,
            "segments": self.segments,
            "matrix": self.matrix,
            "probs": self.probs,
        }
        return save_bundle(directory, "Attribution", meta, tensors=tensors)

    @classmethod
    def load(cls, directory: str | Path) -> Attribution:
        """Read an attribution written by :meth:`save`.

        Example:
            >>> att = Attribution.load("out/att")  # doctest: +SKIP
        """
        meta, _, t = load_bundle(directory, "Attribution")
        return cls(
            prompt=InstructionPrompt.from_dict(meta["prompt"]),
            tokens=t["tokens"],
            segments=t["segments"],
            n_prompt=int(meta["n_prompt"]),
            matrix=t["matrix"],
            probs=t["probs"],
            response=meta["response"],
            model_name=meta["model_name"],
            mode=meta["mode"],
            generated=bool(meta["generated"]),
            token_strings=tuple(meta["token_strings"]),
            meta=dict(meta["meta"]),
        )

    def show(self, path: str | Path | None = None, *, sparsified: bool = False) -> Any:
        """Heatmap of the attribution matrix (inputs x response) with the density beside it.

        Args:
            path: Save the figure there (PNG/SVG/PDF by suffix) when given.
            sparsified: Show the sparsified levels ``s`` instead of the raw matrix.

        Returns:
            The matplotlib figure.

        Example:
            >>> fig = att.show("out/att.png")  # doctest: +SKIP
        """
        plt = _pyplot()
        m = self.matrix.detach().double().cpu()
        if sparsified:
            m = sparsify(m)
        strings = self.token_strings or tuple(str(int(t)) for t in self.tokens)
        ins = [repr(strings[int(i)])[1:-1] for i in self.input_positions]
        outs = [repr(strings[int(i)])[1:-1] for i in range(self.n_prompt, len(self.tokens))]
        h = max(3.0, 0.22 * len(ins) + 1.5)
        w = max(4.0, 0.3 * len(outs) + 3.5)
        fig, (ax, ax2) = plt.subplots(
            1, 2, figsize=(w, h), gridspec_kw={"width_ratios": [max(1, len(outs)), 3]},
            sharey=True,
        )
        im = ax.imshow(m.numpy(), aspect="auto", cmap="magma" if sparsified else "RdBu_r",
                       **({} if sparsified else _sym_limits(m)))
        ax.set_yticks(range(len(ins)), ins, fontsize=7)
        ax.set_xticks(range(len(outs)), outs, fontsize=7, rotation=90)
        ax.set_xlabel("response token")
        ax.set_title(f"{Path(self.model_name).name or self.model_name}: e·dp/de ({self.mode} mode)",
                     fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04)
        dens = self.density().cpu().numpy()
        colors = ["C3" if s == INSTRUCTION else "C0" if s == CONTEXT else "0.6"
                  for s in self.input_segments.tolist()]
        ax2.barh(range(len(ins)), dens, color=colors)
        ax2.set_xlabel("importance density")
        ax2.set_title(f"instruction score {self._score_or_nan():.3f}", fontsize=9)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig

    def _score_or_nan(self) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShiftlensWarning)
            return self.score()


def _sym_limits(m: Tensor) -> dict[str, float]:
    v = float(m.abs().max()) or 1.0
    return {"vmin": -v, "vmax": v}


def _pyplot() -> Any:
    import matplotlib

    if not _has_display():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _has_display() -> bool:
    import os

    return bool(os.environ.get("DISPLAY")) and os.environ.get("MPLBACKEND", "").lower() != "agg"


# ====================================================================== checks and generation
def _check_autograd(model: Any, label: str) -> None:
    if torch.is_inference_mode_enabled():
        raise ShiftlensError(
            f"{label}: torch.inference_mode() is active; attribution needs gradients. Call "
            "attribute() outside inference mode"
        )
    if not torch.is_grad_enabled():
        raise ShiftlensError(
            f"{label}: gradients are disabled (torch.no_grad() or set_grad_enabled(False) is "
            "active); attribution needs them. Call attribute() outside no_grad"
        )
    p = next(iter(model.parameters()), None)
    if p is not None and p.is_inference():
        raise ShiftlensError(
            f"{label}: the model's weights are inference tensors (it was loaded or modified "
            "under torch.inference_mode()); reload it outside inference mode"
        )


def _device(model: Any) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def greedy_response(
    model: Any,
    tokens: Int[Tensor, " pos"],
    max_new_tokens: int = 64,
    *,
    stop_ids: Iterable[int] | None = None,
) -> tuple[Int[Tensor, " n_new"], bool]:
    """Deprecated: use :func:`shiftlens.generate.greedy` (the one greedy decoding).

    Kept for code written against 0.1: returns ``(new_tokens, stopped_at_eos)`` with the stop
    token excluded, computed by :func:`shiftlens.generate.greedy`.

    Example:
        >>> ids, eos = greedy_response(model, torch.tensor([0, 17, 42]), 8)  # doctest: +SKIP
    """
    warnings.warn("shiftlens.attribution.greedy_response is deprecated; use "
                  "shiftlens.generate.greedy", DeprecationWarning, stacklevel=2)
    g = greedy(model, tokens, max_new_tokens, stop_ids=stop_ids)
    return g.tokens, g.stopped


# ====================================================================== the attribution matrix
class _Stop(Exception):
    """Raised inside a hook to end a forward pass once the final hidden states are seen."""


def _accepts_logits_to_keep(model: Any) -> bool:
    import inspect

    hf = getattr(model, "original_model", None)
    try:
        return hf is not None and "logits_to_keep" in inspect.signature(hf.forward).parameters
    except (TypeError, ValueError):
        return False


def _head_pass(
    model: Any, toks: Tensor, q: Tensor, y: Tensor, *, reverse: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One forward: returns (E, H_sel, g = dp/dH_sel, p, kept rows).

    ``E`` is the ``hook_embed`` output (a leaf requiring grad when ``reverse``), ``H_sel`` the
    unembedding input at the positions predicting response tokens (with the graph back to ``E``
    when ``reverse``).
    """
    T, M = toks.shape[1], q.shape[0]
    state: dict[str, Tensor] = {}

    def embed_hook(x: Tensor, hook: Any = None) -> Tensor:
        e = x.detach().clone()
        if reverse:
            e.requires_grad_(True)
        state["E"] = e
        return e

    def head_hook(x: Tensor, hook: Any = None) -> Tensor:
        leaf = x.detach().requires_grad_(True)
        state["H"] = x
        state["leaf"] = leaf
        return leaf

    kw: dict[str, Any] = {}
    if _accepts_logits_to_keep(model):
        kw["logits_to_keep"] = q.to(toks.device)
    with model.hooks(fwd_hooks=[("hook_embed", embed_hook), ("unembed.hook_in", head_hook)]):
        logits = model(toks, return_type="logits", **kw)
    if "E" not in state or "leaf" not in state:
        raise ShiftlensError(f"{_name(model)}: hook_embed / unembed.hook_in did not fire")
    rows = q if logits.shape[1] == T else torch.arange(M)
    if logits.shape[1] not in (T, M):
        raise ShiftlensError(f"{_name(model)}: unexpected logits shape {tuple(logits.shape)}")
    lg = logits[0, rows.to(logits.device)].to(torch.float64)
    probs = torch.softmax(lg, dim=-1).gather(1, y.to(lg.device)[:, None])[:, 0]
    (g_full,) = torch.autograd.grad(probs.sum(), state["leaf"])
    H = state["H"]
    hrows = rows.to(H.device)
    return state["E"], H[0, hrows], g_full[0, hrows], probs.detach(), hrows


def _reverse_matrix(
    E: Tensor, H: Tensor, g: Tensor, in_pos: Tensor, chunk: int, progress: bool, desc: str
) -> tuple[Tensor, bool]:
    """a[:, m] = e . J_m^T g_m via batched VJPs; returns (matrix [N, M] float64, batched_ok)."""
    M = H.shape[0]
    N = in_pos.shape[0]
    a = torch.zeros(N, M, dtype=torch.float64, device=E.device)
    e_in = E[0, in_pos].detach().to(torch.float64)
    batched = True
    starts = list(range(0, M, chunk))
    for s in tqdm(starts, desc=desc, disable=not progress, leave=False):
        ms = torch.arange(s, min(M, s + chunk), device=H.device)
        G = torch.zeros((len(ms),) + tuple(H.shape), dtype=H.dtype, device=H.device)
        G[torch.arange(len(ms)), ms] = g[ms]
        J = None
        if batched and len(ms) > 1:
            try:
                (J,) = torch.autograd.grad(H, E, G, retain_graph=True, is_grads_batched=True)
            except RuntimeError:  # an op without a vmap rule: loop instead
                batched = False
        if J is None:
            J = torch.stack(
                [torch.autograd.grad(H, E, G[k], retain_graph=True)[0] for k in range(len(ms))]
            )
        a[:, ms] = einops.einsum(
            J[:, 0, in_pos].to(torch.float64), e_in, "m n d, n d -> n m"
        )
    return a, batched


def _forward_matrix_vmap(
    model: Any, toks: Tensor, q: Tensor, E0: Tensor, g: Tensor, hrows: Tensor, in_pos: Tensor,
    chunk: int, progress: bool, desc: str,
) -> Tensor:
    """a[n, :] = g . (J e_n): ``torch.func.vmap`` over ``torch.func.jvp`` of the transformer body,
    so the primal pass runs once per chunk and only the tangents are batched."""
    N, M = in_pos.shape[0], g.shape[0]
    a = torch.zeros(N, M, dtype=torch.float64, device=g.device)
    g64 = g.to(torch.float64)
    kw: dict[str, Any] = {}
    if _accepts_logits_to_keep(model):
        kw["logits_to_keep"] = q.to(toks.device)

    def body(E: Tensor) -> Tensor:
        got: dict[str, Tensor] = {}

        def embed_hook(x: Tensor, hook: Any = None) -> Tensor:
            return E

        def head_hook(x: Tensor, hook: Any = None) -> Tensor:
            got["h"] = x
            raise _Stop

        try:
            with model.hooks(fwd_hooks=[("hook_embed", embed_hook),
                                        ("unembed.hook_in", head_hook)]):
                model(toks, return_type="logits", **kw)
        except _Stop:
            pass
        if "h" not in got:
            raise RuntimeError("the unembedding input hook did not fire")
        return got["h"][0, hrows.to(got["h"].device)]

    def one(t: Tensor) -> Tensor:
        return torch.func.jvp(body, (E0,), (t,))[1]

    starts = list(range(0, N, chunk))
    for s in tqdm(starts, desc=desc, disable=not progress, leave=False):
        idx = torch.arange(s, min(N, s + chunk), device=E0.device)
        pos = in_pos[idx]
        tangents = torch.zeros((len(idx),) + tuple(E0.shape), dtype=E0.dtype, device=E0.device)
        tangents[torch.arange(len(idx)), 0, pos] = E0[0, pos]
        with torch.no_grad():
            tH = torch.func.vmap(one)(tangents)  # [B, M, d]
        a[idx.to(a.device)] = einops.einsum(tH.to(torch.float64), g64.to(tH.device),
                                            "b m d, m d -> b m")
    return a


def _forward_matrix_dual(
    model: Any, toks: Tensor, q: Tensor, g: Tensor, hrows: Tensor, in_pos: Tensor,
    chunk: int, progress: bool, desc: str,
) -> Tensor:
    """Forward mode with dual tensors, the sequence repeated along the batch (one row per input
    token). Slower than :func:`_forward_matrix_vmap` (the primal is recomputed per row); the
    fallback when ``torch.func.vmap`` fails on a model."""
    N, M = in_pos.shape[0], g.shape[0]
    a = torch.zeros(N, M, dtype=torch.float64, device=g.device)
    g64 = g.to(torch.float64)
    kw: dict[str, Any] = {}
    if _accepts_logits_to_keep(model):
        kw["logits_to_keep"] = q.to(toks.device)
    starts = list(range(0, N, chunk))
    for s in tqdm(starts, desc=desc, disable=not progress, leave=False):
        idx = torch.arange(s, min(N, s + chunk))
        B = len(idx)
        pos = in_pos[idx]
        got: dict[str, Tensor | None] = {}

        def embed_hook(x: Tensor, hook: Any = None, pos: Tensor = pos, B: int = B) -> Tensor:
            tangent = torch.zeros_like(x)
            r = torch.arange(B, device=x.device)
            pp = pos.to(x.device)
            tangent[r, pp] = x[r, pp]
            return fwAD.make_dual(x, tangent)

        def head_hook(x: Tensor, hook: Any = None, got: dict = got) -> Tensor:
            got["t"] = fwAD.unpack_dual(x).tangent
            raise _Stop

        with torch.no_grad(), fwAD.dual_level():
            try:
                with model.hooks(fwd_hooks=[("hook_embed", embed_hook),
                                            ("unembed.hook_in", head_hook)]):
                    model(toks.expand(B, -1), return_type="logits", **kw)
            except _Stop:
                pass
        t = got.get("t")
        if t is None:
            raise RuntimeError("forward-mode tangent did not reach the unembedding input")
        t = t[:, hrows.to(t.device)].to(torch.float64)  # [B, M, d]
        a[idx.to(a.device)] = einops.einsum(t, g64.to(t.device), "b m d, m d -> b m")
    return a


def attribution_matrix(
    model: Any,
    tokens: Int[Tensor, " pos"],
    n_prompt: int,
    input_positions: Int[Tensor, " n_in"] | None = None,
    *,
    mode: str = "auto",
    chunk_size: int = 16,
    progress: bool = False,
    label: str | None = None,
) -> tuple[Float[Tensor, "n_in n_out"], Float[Tensor, " n_out"], dict[str, Any]]:
    """The raw attribution matrix of a token sequence: prompt ``tokens[:n_prompt]``, response after.

    The low-level entry point of :func:`attribute` (no tokenization, no generation).

    Args:
        model: A TransformerBridge.
        tokens: Prompt + response token ids (BOS included when the model uses one).
        n_prompt: Number of prompt positions; ``tokens[n_prompt:]`` is the response.
        input_positions: Prompt positions to attribute to (default: all of ``0..n_prompt-1``).
        mode: ``"auto"``, ``"forward"`` or ``"reverse"``.
        chunk_size: Jacobian products per batch.
        progress: Progress bar over chunks.
        label: Names the input in messages.

    Returns:
        ``(matrix [n_in, n_out], probs [n_out], info)``; ``info`` has ``mode``, ``mode_reason``
        and, when vector-Jacobian products could not be batched, ``vjp_batching``. The matrix
        is float64 for float64 models, else float32; on the CPU.

    Example:
        >>> a, p, info = attribution_matrix(model, torch.tensor([0, 5, 9, 4, 7]), 3)  # doctest: +SKIP
        >>> a.shape, info["mode"]  # doctest: +SKIP
        (torch.Size([3, 2]), 'reverse')
    """
    label = label or _name(model)
    _check_autograd(model, label)
    if mode not in MODES:
        raise ShiftlensError(f"{label}: mode must be one of {MODES}, got {mode!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ShiftlensError(f"{label}: chunk_size must be a positive int, got {chunk_size!r}")
    T = int(tokens.shape[0])
    if not 1 <= n_prompt < T:
        raise ShiftlensError(
            f"{label}: need at least one prompt and one response token (n_prompt={n_prompt}, "
            f"{T} tokens)"
        )
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and T > n_ctx:
        raise ShiftlensError(f"{label}: {T} tokens exceed the context length {n_ctx}")
    in_pos = torch.arange(n_prompt) if input_positions is None else input_positions.cpu()
    if in_pos.numel() == 0:
        raise ShiftlensError(f"{label}: no input position to attribute to")
    if int(in_pos.min()) < 0 or int(in_pos.max()) >= n_prompt:
        raise ShiftlensError(f"{label}: input positions must lie in [0, {n_prompt})")
    N, M = int(in_pos.shape[0]), T - n_prompt
    dev = _device(model)
    toks = tokens[None].to(dev)
    q = torch.arange(n_prompt - 1, T - 1)
    y = tokens[n_prompt:].cpu()
    if mode == "auto":
        chosen = "forward" if N <= M else "reverse"
        reason = f"auto: N={N} {'<=' if N <= M else '>'} M={M}"
    else:
        chosen, reason = mode, "requested"
    info: dict[str, Any] = {}
    in_dev = in_pos.to(dev)
    desc = f"attribute ({chosen})"
    if chosen == "forward":
        E0, _, g, probs, hrows = _head_pass(model, toks, q, y, reverse=False)
        try:
            try:
                a = _forward_matrix_vmap(model, toks, q, E0, g, hrows, in_dev, chunk_size,
                                         progress, desc)
            except (RuntimeError, NotImplementedError) as e:
                info["forward_impl"] = f"dual tensors (vmap failed: {type(e).__name__})"
                a = _forward_matrix_dual(model, toks, q, g, hrows, in_dev, chunk_size, progress,
                                         desc)
        except (RuntimeError, NotImplementedError) as e:
            if mode == "forward":
                raise ShiftlensError(f"{label}: forward-mode AD failed on this model: {e}") from e
            warnings.warn(
                f"{label}: forward-mode AD failed ({type(e).__name__}: {str(e)[:120]}); using "
                "reverse mode",
                ShiftlensWarning,
                stacklevel=2,
            )
            chosen, reason = "reverse", f"forward-mode AD failed: {type(e).__name__}: {e}"
    if chosen == "reverse":
        E, H, g, probs, _ = _head_pass(model, toks, q, y, reverse=True)
        a, batched = _reverse_matrix(E, H, g, in_dev, chunk_size, progress, "attribute (reverse)")
        if not batched:
            info["vjp_batching"] = "looped (is_grads_batched failed)"
        del E, H
    info["mode"] = chosen
    info["mode_reason"] = reason
    wdtype = next(iter(model.parameters())).dtype
    out = torch.float64 if wdtype == torch.float64 else torch.float32
    return a.detach().to(out).cpu(), probs.to(out).cpu(), info


def attribute(
    model: Any,
    prompt: InstructionPrompt | str,
    response: str | Sequence[int] | Int[Tensor, " n_resp"] | None = None,
    *,
    max_new_tokens: int = 64,
    mode: str = "auto",
    chunk_size: int = 16,
    progress: bool = False,
    model_name: str | None = None,
) -> Attribution:
    """Gradient attribution ``a[n, m] = e_n . dp(y_m | x, y_<m)/de_n`` of one response (§3).

    The response is given (text or token ids) or generated greedily by ``model`` (until EOS or
    ``max_new_tokens``). Logits are computed only at the positions predicting response tokens;
    reverse mode batches one vector-Jacobian product per response token, forward mode one
    Jacobian-vector product per prompt token (see the module docstring). Model parameters never
    receive gradients.

    Args:
        model: A TransformerBridge (with a tokenizer).
        prompt: The prompt (a plain string is a prompt without instruction span).
        response: Response text, response token ids, or None to generate greedily.
        max_new_tokens: Generation limit (capped by the context length).
        mode: ``"auto"`` (forward when ``N <= M``, else reverse), ``"forward"`` or ``"reverse"``.
        chunk_size: Products per batch (bounds memory: activations of ``chunk_size`` copies).
        progress: Show a progress bar over chunks.
        model_name: Name recorded in the result (default ``model.cfg.model_name``).

    Returns:
        The :class:`Attribution`.

    Raises:
        ShiftlensError: empty response, prompt + response longer than the context, gradients
            disabled (``torch.no_grad``) or inference mode, bad mode/chunk size.

    Example:
        >>> from shiftlens.testing import tiny_bridge
        >>> model = tiny_bridge("llama")  # doctest: +SKIP
        >>> p = InstructionPrompt("Reverse the words: red cat", instruction=["Reverse the words:"])
        >>> att = attribute(model, p, max_new_tokens=8)  # doctest: +SKIP
        >>> att.matrix.shape == (att.n_input, att.n_output)  # doctest: +SKIP
        True
    """
    name = model_name or _name(model)
    if isinstance(prompt, str):
        prompt = InstructionPrompt(prompt)
    label = f"prompt {prompt.label} ({name})"
    _check_autograd(model, label)
    if mode not in MODES:
        raise ShiftlensError(f"{label}: mode must be one of {MODES}, got {mode!r}")
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ShiftlensError(f"{name}: the model has no tokenizer")
    cfg = model.cfg
    n_ctx = getattr(cfg, "n_ctx", None)
    text_resp = response if isinstance(response, str) else None
    tp = tokenize_prompt(
        tok, prompt, prepend_bos=bool(cfg.default_prepend_bos), response=text_resp, n_ctx=n_ctx,
        model_name=name,
    )
    generated, eos = False, None
    if response is None:
        room = max_new_tokens if n_ctx is None else min(max_new_tokens, n_ctx - tp.n_prompt)
        if room < 1:
            raise ShiftlensError(
                f"{label}: the prompt fills the context ({tp.n_prompt} of {n_ctx} tokens); no "
                "room for a response"
            )
        gen = greedy(model, tp.tokens, room)
        ids, eos = gen.tokens, gen.stopped
        if ids.numel() == 0:
            raise ShiftlensError(
                f"{label}: the model's greedy response is empty (it emits EOS first); nothing "
                "to attribute"
            )
        tp = _append(tp, ids, n_ctx, label)
        generated = True
    elif not isinstance(response, str):
        ids = response if isinstance(response, Tensor) else torch.tensor(list(response))
        ids = ids.to(torch.long).flatten().cpu()
        if ids.numel() == 0:
            raise ShiftlensError(f"{label}: the response is empty")
        tp = _append(tp, ids, n_ctx, label)
    in_pos = torch.nonzero(tp.segments[: tp.n_prompt] != BOS).flatten()
    if in_pos.numel() == 0:
        raise ShiftlensError(f"{label}: the prompt has no token besides BOS")
    a, probs, info = attribution_matrix(
        model, tp.tokens, tp.n_prompt, in_pos, mode=mode, chunk_size=chunk_size,
        progress=progress, label=label,
    )
    meta: dict[str, Any] = {
        "chunk_size": chunk_size,
        "dtype": str(next(iter(model.parameters())).dtype),
        **{k: v for k, v in info.items() if k != "mode"},
    }
    if eos is not None:
        meta["stopped_at_eos"] = bool(eos)
    return Attribution(
        prompt=prompt,
        tokens=tp.tokens,
        segments=tp.segments,
        n_prompt=tp.n_prompt,
        matrix=a,
        probs=probs,
        response=tok.decode(tp.tokens[tp.n_prompt :].tolist()),
        model_name=name,
        mode=info["mode"],
        generated=generated,
        token_strings=_decode_tokens(tok, tp.tokens.tolist()),
        meta=meta,
    )


def _append(tp: TokenizedPrompt, ids: Tensor, n_ctx: int | None, label: str) -> TokenizedPrompt:
    tokens = torch.cat([tp.tokens, ids.to(tp.tokens.dtype)])
    if n_ctx is not None and tokens.shape[0] > n_ctx:
        raise ShiftlensError(
            f"{label}: {tokens.shape[0]} tokens (prompt {tp.n_prompt} + response "
            f"{ids.numel()}) exceed the context length {n_ctx}"
        )
    segs = torch.cat([tp.segments, torch.full((ids.numel(),), RESPONSE, dtype=tp.segments.dtype)])
    return replace(tp, tokens=tokens, segments=segs)


# ====================================================================== pair: instruction sensitivity
def _scores_from(
    matrices: Sequence[Tensor | None], masks: Sequence[Tensor], labels: Sequence[str],
    levels: int, threshold: int, p: float | int,
) -> list[float]:
    out = []
    for a, mask, lab in zip(matrices, masks, labels):
        if a is None:
            out.append(float("nan"))
            continue
        out.append(instruction_score(importance_density(a, levels, threshold, p), mask, label=lab))
    return out


def _summary_block(tuned: Any, base: Any, seed: int) -> dict[str, Any]:
    r = welch_test(np.asarray(tuned, float), np.asarray(base, float), alternative="greater",
                   seed=seed)
    return r.to_dict()


@dataclass
class SensitivityResult:
    """Instruction scores of base and tuned on the same prompts (Wu et al. 2024, §3).

    Attributes:
        frame: One row per prompt: ``id, category, n_input, n_instruction, base_score,
            tuned_score, base_n_response, tuned_n_response, base_response, tuned_response,
            base_mean_prob, tuned_mean_prob, base_mode, tuned_mode, reference, note``.
        matrices: ``{"base": [...], "tuned": [...]}`` raw attribution matrices per prompt (None
            where no response could be attributed), so the density parameters can change.
        instruction_masks: Per prompt, True at the instruction tokens among the inputs.
        params: ``levels``, ``threshold``, ``p``, ``response`` source, ``max_new_tokens``,
            ``mode``, ``chunk_size``, ``seed`` (bootstrap), ``model_names``.

    Example:
        >>> res = instruction_sensitivity(pair, prompts)  # doctest: +SKIP
        >>> res.summary()["sentence"]  # doctest: +SKIP
    """

    frame: pd.DataFrame
    matrices: dict[str, list[Tensor | None]]
    instruction_masks: list[Tensor]
    params: dict[str, Any]

    def to_frame(self) -> pd.DataFrame:
        """The per-prompt DataFrame (a copy).

        Example:
            >>> res.to_frame()[["id", "base_score", "tuned_score"]]  # doctest: +SKIP
        """
        return self.frame.copy()

    def rescore(
        self, levels: int = 10, threshold: int = 7, p: float | int = 4
    ) -> SensitivityResult:
        """Recompute the scores from the stored raw matrices with other ``L``, ``b``, ``p``.

        Example:
            >>> res.rescore(threshold=5).summary()["overall"]["pvalue"]  # doctest: +SKIP
        """
        df = self.frame.copy()
        labels = [f"prompt {i!r}" for i in df["id"]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShiftlensWarning)
            for role in ROLES:
                df[f"{role}_score"] = _scores_from(
                    self.matrices[role], self.instruction_masks, labels, levels, threshold, p
                )
        params = {**self.params, "levels": levels, "threshold": threshold, "p": p}
        return SensitivityResult(df, self.matrices, self.instruction_masks, params)

    def summary(self) -> dict[str, Any]:
        """Means, one-sided Welch test (tuned > base) and bootstrap 95% CI, overall and per category.

        Returns:
            ``{"overall": {...}, "by_category": {cat: {...}}, "n_prompts", "n_scored",
            "params", "sentence"}``; each block is a :class:`shiftlens.stats.TestResult` dict
            (``mean_a`` = tuned, ``mean_b`` = base).

        Example:
            >>> res.summary()["overall"]["pvalue"] < 0.05  # doctest: +SKIP
            True
        """
        df = self.frame
        seed = int(self.params.get("seed", 0))
        overall = _summary_block(df["tuned_score"], df["base_score"], seed)
        cats = {}
        for cat, sub in df.groupby(df["category"].fillna(""), sort=True):
            cats[str(cat) or "(none)"] = _summary_block(sub["tuned_score"], sub["base_score"],
                                                        seed)
        scored = int((np.isfinite(df["base_score"]) & np.isfinite(df["tuned_score"])).sum())
        o = overall
        names = self.params.get("model_names", {})
        sentence = (
            f"Instruction score over {len(df)} prompts: tuned {o['mean_a']:.3f} vs base "
            f"{o['mean_b']:.3f} (diff {o['diff']:+.3f}, 95% CI [{o['ci_low']:.3f}, "
            f"{o['ci_high']:.3f}], one-sided Welch p={o['pvalue']:.3g}); "
            + ("the tuned model rests its responses on the instruction more."
               if o["pvalue"] < 0.05 and o["diff"] > 0 else
               "no significant increase for the tuned model.")
        )
        if names:
            sentence = f"{names.get('tuned', 'tuned')} vs {names.get('base', 'base')}: " + sentence
        return {
            "overall": overall,
            "by_category": cats,
            "n_prompts": len(df),
            "n_scored": scored,
            "params": dict(self.params),
            "sentence": sentence,
        }

    def save(self, directory: str | Path) -> Path:
        """Write frame (Parquet), matrices and masks (safetensors) and params (JSON).

        Example:
            >>> res.save("out/sensitivity")  # doctest: +SKIP
        """
        tensors: dict[str, Tensor] = {}
        for role in ROLES:
            for i, a in enumerate(self.matrices[role]):
                if a is not None:
                    tensors[f"{role}/{i}"] = a
        for i, mk in enumerate(self.instruction_masks):
            tensors[f"mask/{i}"] = mk
        meta = {"params": self.params, "n": len(self.instruction_masks)}
        return save_bundle(directory, "SensitivityResult", meta, {"prompts": self.frame}, tensors)

    @classmethod
    def load(cls, directory: str | Path) -> SensitivityResult:
        """Read a result written by :meth:`save`.

        Example:
            >>> res = SensitivityResult.load("out/sensitivity")  # doctest: +SKIP
        """
        meta, frames, t = load_bundle(directory, "SensitivityResult")
        n = int(meta["n"])
        mats = {role: [t.get(f"{role}/{i}") for i in range(n)] for role in ROLES}
        masks = [t[f"mask/{i}"] for i in range(n)]
        return cls(frames["prompts"], mats, masks, dict(meta["params"]))

    def show(self, path: str | Path | None = None) -> Any:
        """Mean instruction score of base and tuned per category (bars) with every prompt (dots).

        Example:
            >>> fig = res.show("out/sensitivity.png")  # doctest: +SKIP
        """
        plt = _pyplot()
        df = self.frame.assign(category=self.frame["category"].fillna("(none)"))
        cats = sorted(df["category"].unique())
        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(cats) + 2), 3.6))
        x = np.arange(len(cats))
        for k, role in enumerate(ROLES):
            means = [df.loc[df["category"] == c, f"{role}_score"].mean() for c in cats]
            ax.bar(x + (k - 0.5) * 0.38, means, 0.38, label=role, color=f"C{k}", alpha=0.7)
            for j, c in enumerate(cats):
                v = df.loc[df["category"] == c, f"{role}_score"].to_numpy()
                ax.scatter(np.full(len(v), j + (k - 0.5) * 0.38), v, s=6, color=f"C{k}")
        ax.set_xticks(x, cats, rotation=30, ha="right")
        ax.set_ylabel("instruction score")
        o = self.summary()["overall"]
        ax.set_title(f"tuned - base {o['diff']:+.3f} (one-sided Welch p={o['pvalue']:.2g})",
                     fontsize=9)
        ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def _response_for(prompt: InstructionPrompt, source: Any, i: int) -> str | None:
    if source == "generate":
        return None
    if source == "reference":
        return prompt.reference
    return source[i]


def instruction_sensitivity(
    pair: Any,
    prompts: Sequence[InstructionPrompt],
    *,
    response: str | Sequence[str] = "generate",
    max_new_tokens: int = 64,
    mode: str = "auto",
    chunk_size: int = 16,
    levels: int = 10,
    threshold: int = 7,
    p: float | int = 4,
    seed: int = 0,
    progress: bool = True,
) -> SensitivityResult:
    """Instruction score of base and tuned on every prompt, with the statistics (§3).

    Each model is attributed on its own greedy response (the paper's setting,
    ``response="generate"``), on each prompt's ``reference`` (``"reference"``), or on given
    response texts (a sequence, one per prompt). A prompt without instruction span scores NaN
    (with a :class:`ShiftlensWarning`); a model whose greedy response is empty (EOS first)
    scores NaN for that prompt with a note. Every prompt is tokenized and checked against the
    context length before any model runs.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts: The prompts (ids should be unique; categories group the summary).
        response: ``"generate"``, ``"reference"`` or one response text per prompt.
        max_new_tokens: Generation limit.
        mode, chunk_size: See :func:`attribute`.
        levels, threshold, p: Density parameters (changeable later: :meth:`SensitivityResult.rescore`).
        seed: Bootstrap seed of the confidence intervals.
        progress: Progress bar over prompts.

    Returns:
        The :class:`SensitivityResult`.

    Raises:
        ShiftlensError: no prompts, a missing reference with ``response="reference"``, a
            prompt (+ response) longer than the context, gradients disabled.

    Example:
        >>> from shiftlens.testing import tiny_pair
        >>> res = instruction_sensitivity(tiny_pair("llama"), default_prompts()[:6])  # doctest: +SKIP
        >>> print(res.summary()["sentence"])  # doctest: +SKIP
    """
    prompts = list(prompts)
    if not prompts:
        raise ShiftlensError("instruction_sensitivity: no prompts given")
    if isinstance(response, str) and response not in ("generate", "reference"):
        raise ShiftlensError(
            f"response must be 'generate', 'reference' or a list of texts, got {response!r}"
        )
    if not isinstance(response, str) and len(response) != len(prompts):
        raise ShiftlensError(
            f"{len(response)} responses given for {len(prompts)} prompts"
        )
    if response == "reference":
        missing = [p_.id or p_.label for p_ in prompts if not p_.reference]
        if missing:
            raise ShiftlensError(f"prompts without a reference response: {missing[:8]}")
    for role, model in pair:
        _check_autograd(model, f"{role} model {pair.names[role]!r}")
    tps = [pair.tokenize(pr, response=_response_for(pr, response, i))
           for i, pr in enumerate(prompts)]  # validates lengths and empty responses up front
    n_ctx = getattr(pair.cfg, "n_ctx", None)
    if response == "generate" and n_ctx is not None:
        full = [pr.id or pr.label for pr, tp in zip(prompts, tps) if tp.n_prompt >= n_ctx]
        if full:
            raise ShiftlensError(
                f"prompts {full[:8]} fill the context length {n_ctx}: no room for a response"
            )
    rows: list[dict[str, Any]] = []
    mats: dict[str, list[Tensor | None]] = {r: [] for r in ROLES}
    masks: list[Tensor] = []
    for i, (pr, tp) in enumerate(
        tqdm(list(zip(prompts, tps)), desc="instruction sensitivity", disable=not progress)
    ):
        in_seg = tp.segments[: tp.n_prompt]
        in_seg = in_seg[in_seg != BOS]
        mask = in_seg == INSTRUCTION
        masks.append(mask)
        row: dict[str, Any] = {
            "id": pr.id,
            "category": pr.category,
            "n_input": int(mask.shape[0]),
            "n_instruction": int(mask.sum()),
        }
        notes = []
        for role, model in pair:
            resp = _response_for(pr, response, i)
            try:
                att = attribute(model, pr, resp, max_new_tokens=max_new_tokens, mode=mode,
                                chunk_size=chunk_size, model_name=pair.names[role])
            except ShiftlensError as e:
                if resp is not None or "greedy response is empty" not in str(e):
                    raise
                warnings.warn(str(e), ShiftlensWarning, stacklevel=2)
                notes.append(f"{role}: empty greedy response")
                mats[role].append(None)
                row.update({f"{role}_score": float("nan"), f"{role}_n_response": 0,
                            f"{role}_response": "", f"{role}_mean_prob": float("nan"),
                            f"{role}_mode": ""})
                continue
            mats[role].append(att.matrix)
            row.update({
                f"{role}_score": instruction_score(
                    att.density(levels, threshold, p), att.instruction_mask, label=att._label
                ),
                f"{role}_n_response": att.n_output,
                f"{role}_response": att.response,
                f"{role}_mean_prob": float(att.probs.double().mean()),
                f"{role}_mode": att.mode,
            })
        if int(mask.sum()) == 0:
            notes.append("no instruction span")
        row["reference"] = pr.reference
        row["note"] = "; ".join(notes)
        rows.append(row)
    cols = ["id", "category", "n_input", "n_instruction", "base_score", "tuned_score",
            "base_n_response", "tuned_n_response", "base_response", "tuned_response",
            "base_mean_prob", "tuned_mean_prob", "base_mode", "tuned_mode", "reference", "note"]
    frame = pd.DataFrame(rows)[cols]
    params = {
        "levels": levels, "threshold": threshold, "p": p,
        "response": response if isinstance(response, str) else "given",
        "max_new_tokens": max_new_tokens, "mode": mode, "chunk_size": chunk_size,
        "seed": seed, "model_names": dict(pair.names), "decoding": "greedy",
    }
    return SensitivityResult(frame, mats, masks, params)


# ====================================================================== followed vs unfollowed
@dataclass
class FollowedResult:
    """Instruction scores of responses labelled followed / not followed (Wu et al. 2024, §3).

    Attributes:
        frame: One row per labelled response: ``id, category, role, score, followed``.
        params: ``roles``, ``seed``, ``n_unlabelled`` and the density parameters of the source.

    Example:
        >>> fr = followed_comparison(res, labels)  # doctest: +SKIP
        >>> fr.summary()["pooled"]["pvalue"]  # doctest: +SKIP
    """

    frame: pd.DataFrame
    params: dict[str, Any]

    def to_frame(self) -> pd.DataFrame:
        """The per-response DataFrame (a copy).

        Example:
            >>> fr.to_frame().groupby("followed")["score"].mean()  # doctest: +SKIP
        """
        return self.frame.copy()

    def summary(self) -> dict[str, Any]:
        """One-sided Welch test followed > unfollowed, pooled over roles and per role.

        Returns:
            ``{"pooled": TestResult dict (mean_a = followed), "by_role": {...}, "counts",
            "sentence"}``.

        Example:
            >>> fr.summary()["sentence"]  # doctest: +SKIP
        """
        df = self.frame
        seed = int(self.params.get("seed", 0))

        def block(sub: pd.DataFrame) -> dict[str, Any]:
            f = sub.loc[sub["followed"], "score"].to_numpy(float)
            u = sub.loc[~sub["followed"], "score"].to_numpy(float)
            return welch_test(f, u, alternative="greater", seed=seed).to_dict()

        pooled = block(df)
        by_role = {r: block(sub) for r, sub in df.groupby("role", sort=True)}
        counts = {
            str(r): {"followed": int(sub["followed"].sum()), "unfollowed": int((~sub["followed"]).sum())}
            for r, sub in df.groupby("role", sort=True)
        }
        o = pooled
        sentence = (
            f"Followed responses: instruction score {o['mean_a']:.3f} (n={o['n_a']}) vs "
            f"unfollowed {o['mean_b']:.3f} (n={o['n_b']}), diff {o['diff']:+.3f}, 95% CI "
            f"[{o['ci_low']:.3f}, {o['ci_high']:.3f}], one-sided Welch p={o['pvalue']:.3g}."
        )
        return {"pooled": pooled, "by_role": by_role, "counts": counts, "sentence": sentence}

    def save(self, directory: str | Path) -> Path:
        """Write the frame (Parquet) and params (JSON).

        Example:
            >>> fr.save("out/followed")  # doctest: +SKIP
        """
        return save_bundle(directory, "FollowedResult", {"params": self.params},
                           {"responses": self.frame})

    @classmethod
    def load(cls, directory: str | Path) -> FollowedResult:
        """Read a result written by :meth:`save`.

        Example:
            >>> fr = FollowedResult.load("out/followed")  # doctest: +SKIP
        """
        meta, frames, _ = load_bundle(directory, "FollowedResult")
        df = frames["responses"]
        df["followed"] = df["followed"].astype(bool)
        return cls(df, dict(meta["params"]))

    def show(self, path: str | Path | None = None) -> Any:
        """Box plot of the instruction score of followed vs unfollowed responses per role.

        Example:
            >>> fig = fr.show()  # doctest: +SKIP
        """
        plt = _pyplot()
        df = self.frame
        roles = sorted(df["role"].unique())
        fig, ax = plt.subplots(figsize=(1.8 * len(roles) + 2, 3.4))
        data, labels = [], []
        for r in roles:
            for f in (True, False):
                v = df.loc[(df["role"] == r) & (df["followed"] == f), "score"].dropna()
                data.append(v.to_numpy())
                labels.append(f"{r}\n{'followed' if f else 'unfollowed'}")
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
        ax.set_ylabel("instruction score")
        ax.set_title(f"followed > unfollowed: p={self.summary()['pooled']['pvalue']:.2g}",
                     fontsize=9)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def followed_by_reference(
    result: SensitivityResult, *, match: str = "prefix"
) -> dict[tuple[str, str], bool]:
    """Label each generated response followed when it reproduces the prompt's reference.

    For tasks with one right answer (the toy pair's word tasks): ``"exact"`` compares the
    stripped texts, ``"prefix"`` accepts a response that starts with the stripped reference.
    Prompts without a reference get no label.

    Returns:
        ``{(role, prompt_id): followed}``.

    Example:
        >>> labels = followed_by_reference(res)  # doctest: +SKIP
    """
    if match not in ("exact", "prefix"):
        raise ShiftlensError(f"match must be 'exact' or 'prefix', got {match!r}")
    out: dict[tuple[str, str], bool] = {}
    for _, r in result.frame.iterrows():
        ref = r["reference"]
        if not isinstance(ref, str) or not ref.strip():
            continue
        ref = ref.strip()
        for role in ROLES:
            resp = str(r[f"{role}_response"] or "").strip()
            out[(role, str(r["id"]))] = resp == ref if match == "exact" else resp.startswith(ref)
    return out


def followed_comparison(
    result: SensitivityResult,
    followed: Mapping[Any, bool],
    *,
    roles: Sequence[str] = ROLES,
    seed: int = 0,
) -> FollowedResult:
    """Do responses that follow the instruction have a higher instruction score? (§3)

    Args:
        result: An :class:`SensitivityResult` (its scores and responses are used).
        followed: Labels keyed ``(role, prompt_id)``, or ``prompt_id`` (same label for every
            role). Responses without a label are left out (counted in ``n_unlabelled``).
        roles: Which models' responses to include.
        seed: Bootstrap seed.

    Returns:
        The :class:`FollowedResult`.

    Raises:
        ShiftlensError: an unknown role, a label for an unknown prompt id, or no label at all.

    Example:
        >>> fr = followed_comparison(res, followed_by_reference(res))  # doctest: +SKIP
    """
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise ShiftlensError(f"unknown roles {bad}; use 'base' and/or 'tuned'")
    ids = {str(i) for i in result.frame["id"]}
    unknown = sorted({str(k[1] if isinstance(k, tuple) else k) for k in followed} - ids)
    if unknown:
        raise ShiftlensError(f"labels for unknown prompt ids {unknown[:8]}")
    rows, n_unl = [], 0
    for _, r in result.frame.iterrows():
        for role in roles:
            key_r, key = (role, str(r["id"])), str(r["id"])
            lab = followed.get(key_r, followed.get(key))
            if lab is None:
                n_unl += 1
                continue
            rows.append({"id": key, "category": r["category"], "role": role,
                         "score": float(r[f"{role}_score"]), "followed": bool(lab)})
    if not rows:
        raise ShiftlensError("no response has a followed/unfollowed label")
    params = {"roles": list(roles), "seed": seed, "n_unlabelled": n_unl,
              **{k: result.params.get(k) for k in ("levels", "threshold", "p")},
              "model_names": result.params.get("model_names", {})}
    return FollowedResult(pd.DataFrame(rows), params)


# ====================================================================== position sensitivity
def place_instruction(
    instruction: str,
    context: Sequence[str],
    position: str,
    *,
    joiner: str = " ",
    sep: str = "\n",
    suffix: str = "\nResponse:",
    id: str = "",
    category: str | None = None,
) -> InstructionPrompt:
    """Build a prompt with ``instruction`` at the start, middle or end of a long context.

    The context pieces (sentences, paragraphs) are joined with ``joiner``; the instruction
    becomes its own line (``sep``) before them, after them, or between the first and second half
    of the pieces. ``suffix`` (e.g. a response cue) ends the prompt. Spans are set by offsets.

    Args:
        instruction: The instruction text.
        context: The context pieces (at least 2 for ``"middle"``).
        position: ``"start"``, ``"middle"`` or ``"end"``.
        joiner: Between context pieces.
        sep: Between the instruction and the context.
        suffix: Appended after everything (template).
        id: Prompt id (default ``""``); ``category``: its category.

    Returns:
        The :class:`InstructionPrompt` (``meta["position"]`` records the placement).

    Example:
        >>> p = place_instruction("Summarize the text.", ["A b.", "C d.", "E f."], "middle")
        >>> p.text
        'A b.\\nSummarize the text.\\nC d. E f.\\nResponse:'
    """
    if position not in POSITIONS:
        raise ShiftlensError(f"position must be one of {POSITIONS}, got {position!r}")
    pieces = [str(c) for c in context]
    if not instruction.strip():
        raise ShiftlensError(f"prompt {id!r}: empty instruction")
    if not pieces or not all(c.strip() for c in pieces):
        raise ShiftlensError(f"prompt {id!r}: the context must be non-empty pieces")
    if position == "middle" and len(pieces) < 2:
        raise ShiftlensError(f"prompt {id!r}: 'middle' needs at least 2 context pieces")
    if position == "start":
        parts = [("i", instruction), ("t", sep), ("c", joiner.join(pieces))]
    elif position == "end":
        parts = [("c", joiner.join(pieces)), ("t", sep), ("i", instruction)]
    else:
        k = len(pieces) // 2
        parts = [("c", joiner.join(pieces[:k])), ("t", sep), ("i", instruction), ("t", sep),
                 ("c", joiner.join(pieces[k:]))]
    parts.append(("t", suffix))
    text, ins, ctx = "", [], []
    for kind, s in parts:
        if kind == "i":
            ins.append((len(text), len(text) + len(s)))
        elif kind == "c":
            ctx.append((len(text), len(text) + len(s)))
        text += s
    return InstructionPrompt(text, instruction=tuple(ins), context=tuple(ctx), id=id,
                             category=category, meta={"position": position})


@dataclass
class PositionResult:
    """Instruction score with the same instruction at the start, middle or end of the context.

    Attributes:
        frame: One row per (item, position, role): ``item, id, position, role, score,
            n_input, n_instruction, n_response, response``.
        params: Positions, density parameters, response source, seed, model names.

    Example:
        >>> pr = position_sensitivity(pair, items)  # doctest: +SKIP
        >>> pr.summary()["means"]  # doctest: +SKIP
    """

    frame: pd.DataFrame
    params: dict[str, Any]

    def to_frame(self) -> pd.DataFrame:
        """The per-(item, position, role) DataFrame (a copy).

        Example:
            >>> pr.to_frame().pivot_table("score", "position", "role")  # doctest: +SKIP
        """
        return self.frame.copy()

    def _wide(self, role: str) -> pd.DataFrame:
        sub = self.frame[self.frame["role"] == role]
        return sub.pivot_table(index="item", columns="position", values="score", dropna=False)

    def summary(self) -> dict[str, Any]:
        """Mean score per position and role, and paired one-sided tests.

        ``edges_vs_middle``: per role, start > middle and end > middle (paired over items; the
        "lost in the middle" pattern). ``tuned_vs_base``: per position, tuned > base (paired).

        Example:
            >>> pr.summary()["sentence"]  # doctest: +SKIP
        """
        seed = int(self.params.get("seed", 0))
        positions = [p_ for p_ in self.params.get("positions", POSITIONS)]
        means = {
            role: {pos: float(self.frame.loc[(self.frame["role"] == role)
                                             & (self.frame["position"] == pos), "score"].mean())
                   for pos in positions}
            for role in ROLES
        }
        edges: dict[str, dict[str, Any]] = {}
        if "middle" in positions:
            for role in ROLES:
                w = self._wide(role)
                edges[role] = {
                    f"{pos}>middle": paired_test(w[pos], w["middle"], alternative="greater",
                                                 seed=seed).to_dict()
                    for pos in positions if pos != "middle" and pos in w
                }
        tvb = {}
        wb, wt = self._wide("base"), self._wide("tuned")
        for pos in positions:
            if pos in wb and pos in wt:
                tvb[pos] = paired_test(wt[pos], wb[pos], alternative="greater",
                                       seed=seed).to_dict()
        parts = [f"{role}: " + ", ".join(f"{pos} {means[role][pos]:.3f}" for pos in positions)
                 for role in ROLES]
        sentence = "Mean instruction score by placement - " + "; ".join(parts) + "."
        return {"means": means, "edges_vs_middle": edges, "tuned_vs_base": tvb,
                "n_items": int(self.frame["item"].nunique()), "sentence": sentence}

    def save(self, directory: str | Path) -> Path:
        """Write the frame (Parquet) and params (JSON).

        Example:
            >>> pr.save("out/position")  # doctest: +SKIP
        """
        return save_bundle(directory, "PositionResult", {"params": self.params},
                           {"scores": self.frame})

    @classmethod
    def load(cls, directory: str | Path) -> PositionResult:
        """Read a result written by :meth:`save`.

        Example:
            >>> pr = PositionResult.load("out/position")  # doctest: +SKIP
        """
        meta, frames, _ = load_bundle(directory, "PositionResult")
        return cls(frames["scores"], dict(meta["params"]))

    def show(self, path: str | Path | None = None) -> Any:
        """Mean score (± standard error) against placement, one line per model.

        Example:
            >>> fig = pr.show()  # doctest: +SKIP
        """
        plt = _pyplot()
        positions = list(self.params.get("positions", POSITIONS))
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
        for k, role in enumerate(ROLES):
            sub = self.frame[self.frame["role"] == role]
            g = sub.groupby("position")["score"]
            m = [g.mean().get(p_, np.nan) for p_ in positions]
            se = [g.sem().get(p_, np.nan) for p_ in positions]
            ax.errorbar(range(len(positions)), m, yerr=se, marker="o", capsize=3, label=role,
                        color=f"C{k}")
        ax.set_xticks(range(len(positions)), positions)
        ax.set_xlabel("instruction placement")
        ax.set_ylabel("instruction score")
        ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def position_sensitivity(
    pair: Any,
    items: Sequence[tuple[str, Sequence[str]]],
    *,
    positions: Sequence[str] = POSITIONS,
    ids: Sequence[str] | None = None,
    responses: Sequence[str] | None = None,
    suffix: str = "\nResponse:",
    max_new_tokens: int = 64,
    mode: str = "auto",
    chunk_size: int = 16,
    levels: int = 10,
    threshold: int = 7,
    p: float | int = 4,
    seed: int = 0,
    progress: bool = True,
) -> PositionResult:
    """Instruction score of both models with each instruction at the start, middle or end (§3).

    Every item is an ``(instruction, context_pieces)`` pair; :func:`place_instruction` builds
    one prompt per placement. Each model is attributed on its own greedy response per prompt,
    or on a fixed response per item (``responses``), which keeps the response identical across
    placements.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        items: ``(instruction, context_pieces)`` pairs.
        positions: Placements to compare.
        ids: Item ids (default ``"item-000"``...).
        responses: Optional fixed response text per item.
        suffix: Appended to every prompt (e.g. a response cue).
        max_new_tokens, mode, chunk_size: See :func:`attribute`.
        levels, threshold, p: Density parameters.
        seed: Bootstrap seed.
        progress: Progress bar.

    Returns:
        The :class:`PositionResult`.

    Example:
        >>> items = [("Count the animals.", ["A cat sat.", "A dog ran.", "Rain fell."])]
        >>> pr = position_sensitivity(pair, items)  # doctest: +SKIP
    """
    items = list(items)
    if not items:
        raise ShiftlensError("position_sensitivity: no items given")
    bad = [p_ for p_ in positions if p_ not in POSITIONS]
    if bad or not positions:
        raise ShiftlensError(f"positions must be a non-empty subset of {POSITIONS}, got {positions}")
    ids = [f"item-{i:03d}" for i in range(len(items))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(items):
        raise ShiftlensError(f"{len(ids)} ids for {len(items)} items")
    if responses is not None and len(responses) != len(items):
        raise ShiftlensError(f"{len(responses)} responses for {len(items)} items")
    prompts, resp = [], []
    for i, (ins, ctx) in enumerate(items):
        for pos in positions:
            prompts.append(place_instruction(ins, ctx, pos, suffix=suffix, id=f"{ids[i]}@{pos}",
                                             category=pos))
            resp.append(None if responses is None else responses[i])
    res = instruction_sensitivity(
        pair, prompts, response="generate" if responses is None else resp,  # type: ignore[arg-type]
        max_new_tokens=max_new_tokens, mode=mode, chunk_size=chunk_size, levels=levels,
        threshold=threshold, p=p, seed=seed, progress=progress,
    )
    rows = []
    for _, r in res.frame.iterrows():
        item, pos = str(r["id"]).rsplit("@", 1)
        for role in ROLES:
            rows.append({"item": item, "id": r["id"], "position": pos, "role": role,
                         "score": r[f"{role}_score"], "n_input": r["n_input"],
                         "n_instruction": r["n_instruction"],
                         "n_response": r[f"{role}_n_response"],
                         "response": r[f"{role}_response"]})
    params = {"positions": list(positions), "levels": levels, "threshold": threshold, "p": p,
              "response": "generate" if responses is None else "given", "suffix": suffix,
              "max_new_tokens": max_new_tokens, "seed": seed,
              "model_names": dict(pair.names)}
    return PositionResult(pd.DataFrame(rows), params)
