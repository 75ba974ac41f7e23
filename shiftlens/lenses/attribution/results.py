"""The attribution lens's Results: one attribution, instruction sensitivity, followed/unfollowed,
position of the instruction (Wu et al. 2024, §3).

Every class is a :class:`shiftlens.result.Result`: ``meta`` (models, seed, parameters,
versions), ``to_frame``, ``summary`` (with a sentence), ``plot``/``show``, ``save`` and
``shiftlens.load`` by field type, and ``validate`` (checked after every load).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from shiftlens.checks import prompt_id
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.lenses.attribution.density import importance_density, instruction_score
from shiftlens.prompts import BOS, INSTRUCTION, SEGMENTS, InstructionPrompt
from shiftlens.result import Result
from shiftlens.stats import paired_test, welch_test

__all__ = [
    "ROLES",
    "POSITIONS",
    "AttributionResult",
    "SensitivityResult",
    "FollowedResult",
    "PositionResult",
    "Attribution",
]

#: The two models of a pair, in frame order.
ROLES: tuple[str, ...] = ("base", "tuned")
#: Instruction placements of :func:`~shiftlens.lenses.attribution.compare.place_instruction`.
POSITIONS: tuple[str, ...] = ("start", "middle", "end")

#: Columns of :attr:`SensitivityResult.frame`, in order.
SENSITIVITY_COLUMNS: tuple[str, ...] = (
    "id", "category", "n_input", "n_instruction", "base_score", "tuned_score",
    "base_n_response", "tuned_n_response", "base_response", "tuned_response", "base_mean_prob",
    "tuned_mean_prob", "base_mode", "tuned_mode", "reference", "note",
)
_FOLLOWED_COLUMNS = ("id", "category", "role", "score", "followed")
_POSITION_COLUMNS = ("item", "id", "position", "role", "score", "n_input", "n_instruction",
                     "n_response", "response")


def _seed(meta: dict[str, Any]) -> int:
    s = meta.get("seed")
    return int(s) if s is not None else 0


def _missing(frame: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    gone = [c for c in cols if c not in frame.columns]
    if gone:
        raise ShiftlensError(f"{what}: frame lacks columns {gone}")


# ====================================================================== one attribution
@dataclass(eq=False, repr=False)
class AttributionResult(Result):
    """The attribution of one response to the prompt tokens of one model (Wu et al. 2024, §3).

    Attributes:
        prompt: The source prompt.
        tokens: All token ids: BOS (if any) + prompt + response.
        segments: Segment code (index into :data:`shiftlens.prompts.SEGMENTS`) per position.
        n_prompt: Prompt positions including BOS; the response starts there.
        matrix: Raw attribution ``a[n, m]`` over the input tokens (prompt positions that are not
            BOS, in order; see :attr:`input_positions`) and the response tokens.
        probs: ``p(y_m | x, y_<m)`` of every response token.
        response: The response text (decoded response tokens).
        mode: ``"forward"`` or ``"reverse"``, the mode used.
        generated: Whether the response was generated greedily by the model.
        token_strings: Each token's raw string (``convert_ids_to_tokens``; for display).
        meta: ``models`` (``{"model": name}``), ``params`` (requested mode, chunk size,
            generation limit), ``versions``, and ``mode_reason``, ``dtype``, ``stopped_at_eos``,
            ``forward_impl`` / ``vjp_batching`` where they apply.

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
    mode: str
    generated: bool = False
    token_strings: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ views
    @property
    def model_name(self) -> str:
        """The model explained (``meta["models"]["model"]``)."""
        return str(((self.meta or {}).get("models") or {}).get("model", ""))

    @property
    def model_names(self) -> dict[str, str]:
        """No base/tuned pair here: the figure names the model in its title (see
        :attr:`model_name`), so nothing is written under it."""
        return {}

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

    @property
    def label(self) -> str:
        """Names the prompt and the model in messages."""
        return f"prompt {self.prompt.label} ({self.model_name})"

    def density(self, levels: int = 10, threshold: int = 7,
                p: float | int = 4) -> Float[Tensor, " n_in"]:
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
        return instruction_score(self.density(levels, threshold, p), self.instruction_mask,
                                 label=self.label)

    def score_or_nan(self) -> float:
        """The instruction score with the defaults, NaN (silently) without instruction tokens.

        Example:
            >>> att.score_or_nan()  # doctest: +SKIP
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShiftlensWarning)
            return self.score()

    # ------------------------------------------------------------------ the contract
    def to_frame(self, levels: int = 10, threshold: int = 7, p: float | int = 4) -> pd.DataFrame:
        """One row per input token: position, token, segment, density and attribution totals.

        ``prompt_id`` is :func:`shiftlens.checks.prompt_id` of the prompt (``#0`` without id).

        Example:
            >>> att.to_frame().head()  # doctest: +SKIP
        """
        pos = self.input_positions
        strings = self.token_strings or tuple(str(int(t)) for t in self.tokens)
        dens = self.density(levels, threshold, p).cpu().numpy()
        m = self.matrix.detach().double().cpu()
        return pd.DataFrame({
            "prompt_id": prompt_id(self.prompt, 0),
            "model": self.model_name,
            "position": pos.cpu().numpy(),
            "token_id": self.tokens[pos].cpu().numpy(),
            "token": [strings[int(i)] for i in pos],
            "segment": [SEGMENTS[int(s)] for s in self.input_segments],
            "density": dens,
            "attribution_sum": m.sum(1).numpy(),
            "attribution_max": m.amax(1).numpy(),
        })

    def summary(self) -> dict[str, Any]:
        """The instruction score, the sizes and a sentence.

        Returns:
            ``{"model", "prompt_id", "score", "n_input", "n_output", "n_instruction", "mode",
            "response", "sentence"}`` (score NaN without instruction tokens).

        Example:
            >>> att.summary()["sentence"]  # doctest: +SKIP
        """
        score = self.score_or_nan()
        n_ins = int(self.instruction_mask.sum())
        what = (f"instruction score {score:.3f} ({n_ins} instruction tokens)" if n_ins
                else "no instruction tokens, so no instruction score")
        sentence = (f"{self.model_name or 'The model'}'s response {self.response!r:.60} "
                    f"({self.n_output} tokens) to prompt {prompt_id(self.prompt, 0)!r} rests on "
                    f"{self.n_input} prompt tokens: {what} (Wu et al. 2024, §3).")
        return {"model": self.model_name, "prompt_id": prompt_id(self.prompt, 0),
                "score": score, "n_input": self.n_input, "n_output": self.n_output,
                "n_instruction": n_ins, "mode": self.mode, "response": self.response,
                "sentence": sentence}

    def plot(self, *, sparsified: bool = False) -> Any:
        """Heatmap of the attribution matrix (inputs x response) with the density beside it.

        Args:
            sparsified: Show the sparsified levels ``s`` instead of the raw matrix.

        Example:
            >>> fig = att.show("out/att.png", sparsified=True)  # doctest: +SKIP
        """
        from shiftlens.lenses.attribution.plots import attribution_figure

        return attribution_figure(self, sparsified=sparsified)

    def validate(self) -> None:
        """Shapes agree: tokens/segments/token strings, matrix = inputs x response, probs.

        Example:
            >>> att.validate()  # doctest: +SKIP
        """
        T = int(self.tokens.shape[0])
        if self.segments.shape != self.tokens.shape:
            raise ShiftlensError(f"{T} tokens but {tuple(self.segments.shape)} segments")
        if not 1 <= int(self.n_prompt) < T:
            raise ShiftlensError(f"n_prompt={self.n_prompt} outside [1, {T})")
        want = (int(self.input_positions.numel()), T - int(self.n_prompt))
        if tuple(self.matrix.shape) != want:
            raise ShiftlensError(f"matrix has shape {tuple(self.matrix.shape)}, the tokens say "
                                 f"{want} (inputs x response)")
        if tuple(self.probs.shape) != (want[1],):
            raise ShiftlensError(f"probs has shape {tuple(self.probs.shape)} for {want[1]} "
                                 "response tokens")
        if self.token_strings and len(self.token_strings) != T:
            raise ShiftlensError(f"{len(self.token_strings)} token strings for {T} tokens")
        if self.mode not in ("forward", "reverse"):
            raise ShiftlensError(f"mode must be 'forward' or 'reverse', got {self.mode!r}")

    def _repr_info(self) -> str:
        return (f"{self.model_name}, prompt {prompt_id(self.prompt, 0)!r}, N={self.n_input}, "
                f"M={self.n_output}, {self.mode}")


# ====================================================================== instruction sensitivity
def _test_block(tuned: Any, base: Any, seed: int) -> dict[str, Any]:
    r = welch_test(np.asarray(tuned, float), np.asarray(base, float), alternative="greater",
                   seed=seed)
    return r.to_dict()


@dataclass(eq=False, repr=False)
class SensitivityResult(Result):
    """Instruction scores of base and tuned on the same prompts (Wu et al. 2024, §3).

    Attributes:
        frame: One row per prompt (columns :data:`SENSITIVITY_COLUMNS`): ``id`` (see
            :func:`shiftlens.checks.prompt_id`), ``category, n_input, n_instruction,
            base_score, tuned_score, base_n_response, tuned_n_response, base_response,
            tuned_response, base_mean_prob, tuned_mean_prob, base_mode, tuned_mode, reference,
            note``.
        matrices: ``{"base": [...], "tuned": [...]}`` raw attribution matrices per prompt (None
            where no response could be attributed), so the density parameters can change.
        instruction_masks: Per prompt, True at the instruction tokens among the inputs.
        meta: ``models``, ``seed`` (bootstrap), ``params`` (``levels``, ``threshold``, ``p``,
            ``response`` source, ``max_new_tokens``, ``mode``, ``chunk_size``, ``decoding``),
            ``versions``.

    Example:
        >>> res = instruction_sensitivity(pair, prompts)  # doctest: +SKIP
        >>> res.summary()["sentence"]  # doctest: +SKIP
    """

    frame: pd.DataFrame
    matrices: dict[str, list[Tensor | None]]
    instruction_masks: list[Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        """The parameters as one dict (read-only view of ``meta``): density and generation
        parameters, ``seed`` and ``model_names``.

        Example:
            >>> res.params["threshold"]  # doctest: +SKIP
            7
        """
        p = dict((self.meta or {}).get("params") or {})
        order = ("levels", "threshold", "p", "response", "max_new_tokens", "mode", "chunk_size")
        out = {k: p.pop(k) for k in order if k in p}
        out["seed"] = _seed(self.meta)
        out["model_names"] = self.model_names
        out.update(p)
        return out

    def to_frame(self) -> pd.DataFrame:
        """The per-prompt DataFrame (a copy).

        Example:
            >>> res.to_frame()[["id", "base_score", "tuned_score"]]  # doctest: +SKIP
        """
        return self.frame.copy()

    def rescore(self, levels: int = 10, threshold: int = 7,
                p: float | int = 4) -> SensitivityResult:
        """Recompute the scores from the stored raw matrices with other ``L``, ``b``, ``p``.

        Example:
            >>> res.rescore(threshold=5).summary()["overall"]["pvalue"]  # doctest: +SKIP
        """
        df = self.frame.copy()
        labels = [f"prompt {i!r}" for i in df["id"]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShiftlensWarning)
            for role in ROLES:
                df[f"{role}_score"] = [
                    float("nan") if a is None else instruction_score(
                        importance_density(a, levels, threshold, p), mask, label=lab)
                    for a, mask, lab in zip(self.matrices[role], self.instruction_masks, labels)
                ]
        meta = {**self.meta, "params": {**(self.meta.get("params") or {}), "levels": levels,
                                        "threshold": threshold, "p": p}}
        return SensitivityResult(df, self.matrices, self.instruction_masks, meta)

    def summary(self) -> dict[str, Any]:
        """Means, one-sided Welch test (tuned > base) and bootstrap 95% CI, overall and per
        category.

        Returns:
            ``{"overall": {...}, "by_category": {cat: {...}}, "n_prompts", "n_scored",
            "params", "sentence"}``; each block is a :class:`shiftlens.stats.TestResult` dict
            (``mean_a`` = tuned, ``mean_b`` = base).

        Example:
            >>> res.summary()["overall"]["pvalue"] < 0.05  # doctest: +SKIP
            True
        """
        df = self.frame
        seed = _seed(self.meta)
        overall = _test_block(df["tuned_score"], df["base_score"], seed)
        cats = {}
        for cat, sub in df.groupby(df["category"].fillna(""), sort=True):
            cats[str(cat) or "(none)"] = _test_block(sub["tuned_score"], sub["base_score"], seed)
        scored = int((np.isfinite(df["base_score"]) & np.isfinite(df["tuned_score"])).sum())
        o = overall
        names = self.model_names
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
        return {"overall": overall, "by_category": cats, "n_prompts": len(df),
                "n_scored": scored, "params": self.params, "sentence": sentence}

    def plot(self) -> Any:
        """Mean instruction score of base and tuned per category (bars) with every prompt (dots).

        Example:
            >>> fig = res.show("out/sensitivity.png")  # doctest: +SKIP
        """
        from shiftlens.lenses.attribution.plots import sensitivity_figure

        return sensitivity_figure(self)

    def validate(self) -> None:
        """One frame row, one mask and one matrix per role for every prompt, shapes agreeing.

        Example:
            >>> res.validate()  # doctest: +SKIP
        """
        _missing(self.frame, SENSITIVITY_COLUMNS, "SensitivityResult")
        n = len(self.frame)
        if sorted(self.matrices) != sorted(ROLES):
            raise ShiftlensError(f"matrices must have roles {ROLES}, got {sorted(self.matrices)}")
        if len(self.instruction_masks) != n or any(len(self.matrices[r]) != n for r in ROLES):
            raise ShiftlensError(
                f"{n} prompts but {len(self.instruction_masks)} masks and "
                f"{[len(self.matrices[r]) for r in ROLES]} matrices (base, tuned)")
        for i, (mask, n_in, n_ins) in enumerate(zip(self.instruction_masks, self.frame["n_input"],
                                                    self.frame["n_instruction"])):
            if mask.ndim != 1 or mask.numel() != int(n_in) or int(mask.sum()) != int(n_ins):
                raise ShiftlensError(f"prompt {i}: mask of {mask.numel()} tokens "
                                     f"({int(mask.sum())} instruction) but the frame says "
                                     f"{n_in} ({n_ins})")
            for r in ROLES:
                a = self.matrices[r][i]
                if a is not None and (a.ndim != 2 or a.shape[0] != int(n_in)):
                    raise ShiftlensError(f"prompt {i}, {r}: matrix of shape {tuple(a.shape)} "
                                         f"for {n_in} input tokens")


# ====================================================================== followed vs unfollowed
@dataclass(eq=False, repr=False)
class FollowedResult(Result):
    """Instruction scores of responses labelled followed / not followed (Wu et al. 2024, §3).

    Attributes:
        frame: One row per labelled response: ``id, category, role, score, followed``.
        n_unlabelled: Responses left out for want of a label.
        meta: ``models``, ``seed`` (bootstrap), ``params`` (``roles`` and the density
            parameters of the source), ``versions``.

    Example:
        >>> fr = followed_comparison(res, labels)  # doctest: +SKIP
        >>> fr.summary()["pooled"]["pvalue"]  # doctest: +SKIP
    """

    frame: pd.DataFrame
    n_unlabelled: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        """``roles``, ``seed``, ``n_unlabelled``, the density parameters and ``model_names``.

        Example:
            >>> fr.params["roles"]  # doctest: +SKIP
            ['base', 'tuned']
        """
        p = dict((self.meta or {}).get("params") or {})
        return {"roles": p.pop("roles", list(ROLES)), "seed": _seed(self.meta),
                "n_unlabelled": self.n_unlabelled, **p, "model_names": self.model_names}

    def to_frame(self) -> pd.DataFrame:
        """The per-response DataFrame (a copy).

        Example:
            >>> fr.to_frame().groupby("followed")["score"].mean()  # doctest: +SKIP
        """
        return self.frame.copy()

    def _block(self, sub: pd.DataFrame) -> dict[str, Any]:
        f = sub.loc[sub["followed"], "score"].to_numpy(float)
        u = sub.loc[~sub["followed"], "score"].to_numpy(float)
        return welch_test(f, u, alternative="greater", seed=_seed(self.meta)).to_dict()

    def summary(self) -> dict[str, Any]:
        """One-sided Welch test followed > unfollowed, pooled over roles and per role.

        Returns:
            ``{"pooled": TestResult dict (mean_a = followed), "by_role": {...}, "counts",
            "sentence"}``.

        Example:
            >>> fr.summary()["sentence"]  # doctest: +SKIP
        """
        df = self.frame
        pooled = self._block(df)
        by_role = {r: self._block(sub) for r, sub in df.groupby("role", sort=True)}
        counts = {
            str(r): {"followed": int(sub["followed"].sum()),
                     "unfollowed": int((~sub["followed"]).sum())}
            for r, sub in df.groupby("role", sort=True)
        }
        o = pooled
        sentence = (
            f"Followed responses: instruction score {o['mean_a']:.3f} (n={o['n_a']}) vs "
            f"unfollowed {o['mean_b']:.3f} (n={o['n_b']}), diff {o['diff']:+.3f}, 95% CI "
            f"[{o['ci_low']:.3f}, {o['ci_high']:.3f}], one-sided Welch p={o['pvalue']:.3g}."
        )
        return {"pooled": pooled, "by_role": by_role, "counts": counts, "sentence": sentence}

    def plot(self) -> Any:
        """Box plot of the instruction score of followed vs unfollowed responses per role.

        Example:
            >>> fig = fr.show()  # doctest: +SKIP
        """
        from shiftlens.lenses.attribution.plots import followed_figure

        return followed_figure(self)

    def validate(self) -> None:
        """Columns present, ``followed`` boolean, roles base/tuned.

        Example:
            >>> fr.validate()  # doctest: +SKIP
        """
        _missing(self.frame, _FOLLOWED_COLUMNS, "FollowedResult")
        if self.frame["followed"].dtype != bool:
            raise ShiftlensError(f"followed must be boolean, got {self.frame['followed'].dtype}")
        bad = sorted(set(map(str, self.frame["role"])) - set(ROLES))
        if bad:
            raise ShiftlensError(f"unknown roles {bad}")


# ====================================================================== position of the instruction
@dataclass(eq=False, repr=False)
class PositionResult(Result):
    """Instruction score with the same instruction at the start, middle or end of the context.

    Attributes:
        frame: One row per (item, position, role): ``item, id, position, role, score,
            n_input, n_instruction, n_response, response``.
        meta: ``models``, ``seed`` (bootstrap), ``params`` (``positions``, density parameters,
            response source, suffix, generation limit), ``versions``.

    Example:
        >>> pr = position_sensitivity(pair, items)  # doctest: +SKIP
        >>> pr.summary()["means"]  # doctest: +SKIP
    """

    frame: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def positions(self) -> list[str]:
        """The placements compared, in order."""
        return list(((self.meta or {}).get("params") or {}).get("positions", POSITIONS))

    @property
    def params(self) -> dict[str, Any]:
        """The parameters, ``seed`` and ``model_names`` as one dict (read-only view of ``meta``).

        Example:
            >>> pr.params["positions"]  # doctest: +SKIP
        """
        return {**((self.meta or {}).get("params") or {}), "seed": _seed(self.meta),
                "model_names": self.model_names}

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
        seed, positions, df = _seed(self.meta), self.positions, self.frame
        means = {role: {pos: float(df.loc[(df["role"] == role) & (df["position"] == pos),
                                          "score"].mean()) for pos in positions}
                 for role in ROLES}
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
                "n_items": int(df["item"].nunique()), "sentence": sentence}

    def plot(self) -> Any:
        """Mean score (± standard error) against placement, one line per model.

        Example:
            >>> fig = pr.show()  # doctest: +SKIP
        """
        from shiftlens.lenses.attribution.plots import position_figure

        return position_figure(self)

    def validate(self) -> None:
        """Columns present, positions among :data:`POSITIONS`, roles base/tuned.

        Example:
            >>> pr.validate()  # doctest: +SKIP
        """
        _missing(self.frame, _POSITION_COLUMNS, "PositionResult")
        bad = sorted(set(map(str, self.frame["position"])) - set(POSITIONS))
        if bad:
            raise ShiftlensError(f"unknown positions {bad}")
        bad = sorted(set(map(str, self.frame["role"])) - set(ROLES))
        if bad:
            raise ShiftlensError(f"unknown roles {bad}")


#: The 0.x name of :class:`AttributionResult` (imports keep working).
Attribution = AttributionResult
