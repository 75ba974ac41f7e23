"""The attribution lens's Results for one attribution and for instruction sensitivity
(Wu et al. 2024, §3); the Results built on instruction sensitivity (both response settings side
by side, followed/unfollowed, position of the instruction) are in
:mod:`~shiftlens.lenses.attribution.derived`.

Every class is a :class:`shiftlens.result.Result`: ``meta`` (models, seed, parameters,
versions), ``to_frame``, ``summary`` (with a sentence), ``plot``/``show``, ``save`` and
``shiftlens.load`` by field type, and ``validate`` (checked after every load).

Statistics are two-sided unless ``alternative`` asks otherwise (then the sentence names the
one-sided test), and never computed over silently dropped values: a prompt without a score (no
instruction span, an empty greedy response) is left out of both models' samples and the summary
and its sentence say how many and which.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from shiftlens.checks import check_choice, check_float, check_int, prompt_id
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.lenses.attribution.density import importance_density, instruction_score
from shiftlens.lenses.attribution.external import (
    LAYOUTS,
    check_external_mask,
    check_external_matrix,
    per_prompt,
    per_role,
)
from shiftlens.prompts import BOS, INSTRUCTION, SEGMENTS, InstructionPrompt
from shiftlens.result import Result, make_meta
from shiftlens.stats import change_sentence, fmt_number, welch_test
from shiftlens.tokens import display_token

__all__ = [
    "ROLES",
    "POSITIONS",
    "ALTERNATIVES",
    "SETTINGS",
    "LAYOUTS",
    "AttributionResult",
    "SensitivityResult",
    "Attribution",
]

#: The two models of a pair, in frame order.
ROLES: tuple[str, ...] = ("base", "tuned")
#: Instruction placements of :func:`~shiftlens.lenses.attribution.compare.place_instruction`.
POSITIONS: tuple[str, ...] = ("start", "middle", "end")

#: The ``alternative`` of every test of the lens (two-sided unless asked otherwise).
ALTERNATIVES: tuple[str, ...] = ("two-sided", "greater", "less")
#: Which responses the models explain (``params["response"]``), in words.
SETTINGS: dict[str, str] = {
    "generate": "each model explained its own greedy response",
    "reference": "both models explained the same reference response",
    "given": "both models explained the given response of each prompt",
}

#: Columns of :attr:`SensitivityResult.frame`, in order.
SENSITIVITY_COLUMNS: tuple[str, ...] = (
    "id", "category", "n_input", "n_instruction", "base_score", "tuned_score",
    "base_n_response", "tuned_n_response", "base_response", "tuned_response", "base_mean_prob",
    "tuned_mean_prob", "base_mode", "tuned_mode", "reference", "note",
)


def _visible(s: str) -> str:
    """Control characters that :func:`display_token` leaves (a byte token such as ESC) as
    ``\\x1b``: fonts have no glyph for them, so a label would be blank (and matplotlib warns)."""
    return "".join(c if c.isprintable() or c == " " else
                   (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}") for c in s)


def _seed(meta: dict[str, Any]) -> int:
    s = meta.get("seed")
    return int(s) if s is not None else 0


def alternative_of(meta: Mapping[str, Any] | None) -> str:
    """The alternative hypothesis a Result was made with (``"two-sided"`` when not recorded).

    Example:
        >>> alternative_of({"params": {"alternative": "greater"}}), alternative_of({})
        ('greater', 'two-sided')
    """
    return str(((meta or {}).get("params") or {}).get("alternative") or "two-sided")


def left_out_sentence(excluded: Sequence[Mapping[str, Any]], n: int, what: str = "prompts",
                      key: str = "id") -> str:
    """Words for the values a statistic left out: how many, why and where.

    Args:
        excluded: One ``{key: ..., "reason": ...}`` per left-out item.
        n: How many items there were.
        what: What the items are (``"prompts"``, ``"responses"``).
        key: The field naming an item.

    Example:
        >>> left_out_sentence([{"id": "a", "reason": "no instruction span"}], 5)
        '1 of 5 prompts left out of the statistics (no instruction span: a).'
    """
    if not excluded:
        return ""
    by: dict[str, list[str]] = {}
    for e in excluded:
        by.setdefault(str(e.get("reason") or "no score"), []).append(str(e.get(key)))
    parts = [f"{r}: {', '.join(ids[:6])}{f' and {len(ids) - 6} more' if len(ids) > 6 else ''}"
             for r, ids in by.items()]
    return f"{len(excluded)} of {n} {what} left out of the statistics ({'; '.join(parts)})."


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
        token_strings: The text each token adds (:func:`shiftlens.tokens.token_strings`: a
            byte-level ``Ġreverse`` is `` reverse``, a newline ``\n``); frames and figures show
            them through :func:`shiftlens.tokens.display_token`.
        raw_token_strings: Each token's vocabulary entry (``convert_ids_to_tokens``: ``Ġ``,
            ``▁``, ``Ċ`` as the tokenizer spells them), for whoever needs them.
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
    raw_token_strings: tuple[str, ...] = ()
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

    @property
    def display_strings(self) -> list[str]:
        """Every token as people read it (:func:`shiftlens.tokens.display_token` of
        :attr:`token_strings`: `` reverse``, ``⏎``; other control characters as ``\\x1b``; the
        token id where no string is known)."""
        strings = self.token_strings or tuple(str(int(t)) for t in self.tokens)
        return [_visible(display_token(str(t))) for t in strings]

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

        ``prompt_id`` is :func:`shiftlens.checks.prompt_id` of the prompt (``#0`` without id);
        ``token`` is the token as people read it (:attr:`display_strings`), ``raw_token`` its
        vocabulary entry (when known).

        Example:
            >>> att.to_frame().head()  # doctest: +SKIP
        """
        pos = self.input_positions
        shown = self.display_strings
        raw = self.raw_token_strings or tuple(str(int(t)) for t in self.tokens)
        dens = self.density(levels, threshold, p).cpu().numpy()
        m = self.matrix.detach().double().cpu()
        return pd.DataFrame({
            "prompt_id": prompt_id(self.prompt, 0),
            "model": self.model_name,
            "position": pos.cpu().numpy(),
            "token_id": self.tokens[pos].cpu().numpy(),
            "token": [shown[int(i)] for i in pos],
            "raw_token": [str(raw[int(i)]) for i in pos],
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
        for name in ("token_strings", "raw_token_strings"):
            got = getattr(self, name)
            if got and len(got) != T:
                raise ShiftlensError(f"{len(got)} {name.replace('_', ' ')} for {T} tokens")
        bad = int((~torch.isfinite(self.matrix)).sum()) + int((~torch.isfinite(self.probs)).sum())
        if bad:
            raise ShiftlensError(f"{self.label}: {bad} non-finite values in the matrix and "
                                 "probabilities")
        if self.mode not in ("forward", "reverse"):
            raise ShiftlensError(f"mode must be 'forward' or 'reverse', got {self.mode!r}")

    def _repr_info(self) -> str:
        return (f"{self.model_name}, prompt {prompt_id(self.prompt, 0)!r}, N={self.n_input}, "
                f"M={self.n_output}, {self.mode}")


# ====================================================================== instruction sensitivity
_WHAT = "instruction score"


def welch_block(a: Any, b: Any, seed: int, alternative: str = "two-sided") -> dict[str, Any]:
    """Welch's test of mean(a) vs mean(b) with a bootstrap 95% CI, as a plain dict.

    The samples must already be free of NaN (the callers leave out, and report, what has no
    score); ``alternative`` is one of :data:`ALTERNATIVES`.

    Example:
        >>> welch_block([0.5, 0.6, 0.7], [0.1, 0.2, 0.2], 0)["alternative"]
        'two-sided'
    """
    return welch_test(np.asarray(a, float), np.asarray(b, float), alternative=alternative,
                      seed=seed).to_dict()


def _note_of(row: pd.Series) -> str:
    note = str(row.get("note") or "")
    if note:
        return note
    gone = [r for r in ROLES if not math.isfinite(float(row[f"{r}_score"]))]
    return f"no {' or '.join(gone)} score" if gone else ""


@dataclass(eq=False, repr=False)
class SensitivityResult(Result):
    """Instruction scores of base and tuned on the same prompts (Wu et al. 2024, §3).

    Attributes:
        frame: One row per prompt (columns :data:`SENSITIVITY_COLUMNS`): ``id`` (see
            :func:`shiftlens.checks.prompt_id`), ``category, n_input, n_instruction,
            base_score, tuned_score, base_n_response, tuned_n_response, base_response,
            tuned_response, base_mean_prob, tuned_mean_prob, base_mode, tuned_mode, reference,
            note``.
        matrices: ``{"base": [...], "tuned": [...]}`` raw attribution matrices per prompt,
            ``[n_input, n_response]`` (None where no response could be attributed), so the
            density parameters can change.
        instruction_masks: Per prompt, True at the instruction tokens among the inputs.
        meta: ``models``, ``seed`` (bootstrap), ``params`` (``levels``, ``threshold``, ``p``,
            ``response`` source, ``max_new_tokens``, ``mode``, ``chunk_size``, ``decoding``,
            ``alternative``), ``versions``.

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
        parameters, ``alternative``, ``seed`` and ``model_names``.

        Example:
            >>> res.params["threshold"]  # doctest: +SKIP
            7
        """
        p = dict((self.meta or {}).get("params") or {})
        order = ("levels", "threshold", "p", "response", "max_new_tokens", "mode", "chunk_size",
                 "alternative")
        out = {k: p.pop(k) for k in order if k in p}
        out["seed"] = _seed(self.meta)
        out["model_names"] = self.model_names
        out.update(p)
        return out

    @property
    def alternative(self) -> str:
        """The alternative of the tests (``"two-sided"`` unless the analysis asked otherwise)."""
        return alternative_of(self.meta)

    @property
    def setting(self) -> str:
        """Which responses the models explain: ``"generate"`` (each its own greedy response,
        the paper's setting), ``"reference"`` (the same reference response) or ``"given"``."""
        return str(((self.meta or {}).get("params") or {}).get("response") or "generate")

    def scored(self) -> pd.Series:
        """True for the prompts where both models have a finite score (the statistics' sample).

        Example:
            >>> res.frame[res.scored()]  # doctest: +SKIP
        """
        f = self.frame
        return pd.Series(np.isfinite(f["base_score"].to_numpy(float))
                         & np.isfinite(f["tuned_score"].to_numpy(float)), index=f.index)

    def exclusions(self) -> list[dict[str, str]]:
        """The prompts left out of the statistics, each ``{"id", "reason"}`` (the row's note:
        no instruction span, an empty greedy response, ...).

        Example:
            >>> res.exclusions()  # doctest: +SKIP
            [{'id': 'noins', 'reason': 'no instruction span'}]
        """
        ok = self.scored()
        return [{"id": str(r["id"]), "reason": _note_of(r)}
                for _, r in self.frame[~ok].iterrows()]

    def response_lengths(self) -> dict[str, float]:
        """Mean response length in tokens of each model over the scored prompts.

        Example:
            >>> res.response_lengths()  # doctest: +SKIP
            {'base': 12.0, 'tuned': 2.1}
        """
        sub = self.frame[self.scored()]
        return {r: float(sub[f"{r}_n_response"].mean()) if len(sub) else float("nan")
                for r in ROLES}

    def same_responses(self) -> bool:
        """Whether both models explained the same response text on every scored prompt.

        Example:
            >>> instruction_sensitivity(pair, prompts, response="reference").same_responses()  # doctest: +SKIP
            True
        """
        sub = self.frame[self.scored()]
        return bool((sub["base_response"].astype(str) == sub["tuned_response"].astype(str)).all())

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
        check_int("levels", levels, minimum=1, who="rescore")
        check_int("threshold", threshold, minimum=0, maximum=levels - 1, who="rescore")
        check_float("p", p, minimum=1.0, open_min=True, who="rescore")
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

    def setting_sentence(self) -> str:
        """Which responses were explained, their mean lengths, and the confound when the two
        models explained different responses.

        Example:
            >>> res.setting_sentence()  # doctest: +SKIP
            "Each model explained its own greedy response (mean length: base 12.0, tuned 2.1 tokens): ..."
        """
        words = SETTINGS.get(self.setting, f"responses: {self.setting}")
        ln = self.response_lengths()
        s = (f"{words[:1].upper()}{words[1:]} (mean length: base {fmt_number(ln['base'], '.1f')}, "
             f"tuned {fmt_number(ln['tuned'], '.1f')} tokens)")
        if not self.same_responses():
            s += (": the two models explain different responses, so response length and content"
                  " are part of the difference (response_settings puts the same-response setting"
                  " beside it)")
        return s + "."

    def summary(self) -> dict[str, Any]:
        """Means, Welch's t-test (two-sided unless ``alternative`` says otherwise) and a
        bootstrap 95% CI of tuned - base, overall and per category, over the prompts where both
        models have a score; the rest are listed.

        Returns:
            ``{"overall": {...}, "by_category": {cat: {...}}, "n_prompts", "n_scored",
            "excluded": [{"id", "reason"}], "setting", "response_lengths", "same_responses",
            "alternative", "params", "sentence"}``; each block is a
            :class:`shiftlens.stats.TestResult` dict (``mean_a`` = tuned, ``mean_b`` = base).

        Example:
            >>> res.summary()["overall"]["pvalue"] < 0.05  # doctest: +SKIP
            True
        """
        df, seed, alt = self.frame, _seed(self.meta), self.alternative
        sub = df[self.scored()]
        overall = welch_block(sub["tuned_score"], sub["base_score"], seed, alt)
        cats = {}
        for cat, g in df.groupby(df["category"].fillna(""), sort=True):
            g = g[self.scored().loc[g.index]]
            cats[str(cat) or "(none)"] = welch_block(g["tuned_score"], g["base_score"], seed, alt)
        o = overall
        excluded = self.exclusions()
        sentence = change_sentence(_WHAT, o["mean_b"], o["mean_a"], p=o["pvalue"],
                                   test="Welch t-test", alternative=alt,
                                   ci=(o["ci_low"], o["ci_high"]), n=len(sub))
        sentence += " " + self.setting_sentence()
        if excluded:
            sentence += " " + left_out_sentence(excluded, len(df))
        names = self.model_names
        if names:
            sentence = f"{names.get('tuned', 'tuned')} vs {names.get('base', 'base')}: " + sentence
        return {"overall": overall, "by_category": cats, "n_prompts": len(df),
                "n_scored": len(sub), "excluded": excluded, "setting": self.setting,
                "response_lengths": self.response_lengths(),
                "same_responses": self.same_responses(), "alternative": alt,
                "params": self.params, "sentence": sentence}

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
        alt = ((self.meta or {}).get("params") or {}).get("alternative")
        if alt is not None and alt not in ALTERNATIVES:
            raise ShiftlensError(f"alternative must be one of {ALTERNATIVES}, got {alt!r}")

    # ------------------------------------------------------------------ your own matrices
    @classmethod
    def from_matrices(
        cls,
        matrices: Mapping[str, Sequence[Any]],
        instruction_masks: Sequence[Any],
        *,
        prompts: Sequence[InstructionPrompt] | None = None,
        ids: Sequence[str] | None = None,
        categories: Sequence[str | None] | None = None,
        responses: Mapping[str, Sequence[str]] | None = None,
        references: Sequence[str | None] | None = None,
        mean_probs: Mapping[str, Sequence[float]] | None = None,
        layout: str = "input_response",
        response: str = "given",
        models: Mapping[str, str] | None = None,
        levels: int = 10,
        threshold: int = 7,
        p: float | int = 4,
        alternative: str = "two-sided",
        seed: int = 0,
        mode: str = "external",
    ) -> SensitivityResult:
        """Bring your own attributions: the lens-1 Result from raw matrices computed anywhere.

        The paper's released matrices, Inseq's output or your own gradients become a
        :class:`SensitivityResult`, so :meth:`summary`, :meth:`rescore`, the figures,
        :func:`~shiftlens.lenses.attribution.compare.followed_comparison` and
        :meth:`~shiftlens.lenses.attribution.derived.PositionResult.from_sensitivity` work on
        them. Scores are computed exactly as :func:`instruction_sensitivity` computes them
        (:func:`importance_density`, :func:`instruction_score`), so the matrices
        :func:`instruction_sensitivity` stores give back its Result.

        Shapes and orientation: per prompt, the input tokens are the prompt's tokens that are
        attributed to (BOS excluded), ``n_input`` of them, and its ``instruction_masks`` entry
        is a boolean ``[n_input]`` (True at the instruction tokens). Each matrix is
        ``a[n, m]``: ``[n_input, n_response]`` with ``layout="input_response"`` (shiftlens'
        own, the default) or ``[n_response, n_input]`` with ``layout="response_input"``
        (transposed on the way in). A matrix whose input axis does not match its mask is
        refused (the message says when it looks transposed); None stands for a prompt the model
        gave no response to. Integer matrices on the paper's 0..10 scale are accepted as they
        are.

        Args:
            matrices: ``{"base": [...], "tuned": [...]}``, one matrix (tensor or array) or None
                per prompt.
            instruction_masks: One boolean mask ``[n_input]`` per prompt.
            prompts: The prompts (their ids, categories and references), or None.
            ids: Prompt ids (default: the prompts' :func:`~shiftlens.checks.prompt_id`, else
                ``#<index>``); must be unique.
            categories: Per prompt category (default: the prompts', else None).
            responses: ``{"base": [...], "tuned": [...]}`` response texts (default ``""``).
            references: Per prompt reference response (default: the prompts', else None).
            mean_probs: ``{"base": [...], "tuned": [...]}`` mean ``p(y_m)`` (default NaN).
            layout: ``"input_response"`` or ``"response_input"`` (see above).
            response: Which responses the matrices explain: ``"generate"`` (each model its own),
                ``"reference"`` (the same for both) or ``"given"``; the sentence says it.
            models: ``{"base": name, "tuned": name}``.
            levels, threshold, p: Density parameters (:func:`importance_density`).
            alternative: ``"two-sided"``, ``"greater"`` or ``"less"`` (tuned vs base).
            seed: Bootstrap seed.
            mode: Written to the ``<role>_mode`` columns (how the matrices were computed).

        Returns:
            The :class:`SensitivityResult`.

        Raises:
            ShiftlensError: roles other than base/tuned, counts that disagree, a matrix that is
                not 2-D numbers, whose input axis does not match its mask (transposed?), with no
                response column or with NaN/inf values, a mask that is not 1-D boolean,
                duplicate ids, bad density parameters or alternative.

        Example:
            >>> mats = {"base": [torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 1.0], [0.0, 0.1, 0.1]])],
            ...         "tuned": [torch.tensor([[1.0, 1.0, 1.0], [0.1, 0.2, 0.1], [0.0, 0.1, 0.1]])]}
            >>> res = SensitivityResult.from_matrices(mats, [torch.tensor([True, False, False])])
            >>> res.frame[["base_score", "tuned_score"]].round(3).values.tolist()
            [[0.375, 0.631]]
        """
        if not isinstance(matrices, Mapping) or sorted(map(str, matrices)) != sorted(ROLES):
            got = sorted(map(str, matrices)) if isinstance(matrices, Mapping) else \
                type(matrices).__name__
            raise ShiftlensError(f"matrices must be {{'base': [...], 'tuned': [...]}}, got {got}")
        check_choice("layout", layout, LAYOUTS, who="from_matrices")
        check_choice("response", response, tuple(SETTINGS), who="from_matrices")
        check_choice("alternative", alternative, ALTERNATIVES, who="from_matrices")
        check_int("levels", levels, minimum=1, who="from_matrices")
        check_int("threshold", threshold, minimum=0, maximum=levels - 1, who="from_matrices")
        check_float("p", p, minimum=1.0, open_min=True, who="from_matrices")
        seed = check_int("seed", seed, who="from_matrices")
        masks_in = per_prompt("instruction_masks", instruction_masks, len(instruction_masks)
                               if isinstance(instruction_masks, Sequence) else -1, None)
        n = len(masks_in)
        if n == 0:
            raise ShiftlensError("from_matrices: no prompts (no instruction masks given)")
        ps = per_prompt("prompts", prompts, n, None)
        if any(q is not None and not isinstance(q, InstructionPrompt) for q in ps):
            raise ShiftlensError("from_matrices: prompts must be InstructionPrompts")
        ids_ = [str(i) for i in per_prompt("ids", ids, n, None)] if ids is not None else \
            [prompt_id(q, i) if q is not None else f"#{i}" for i, q in enumerate(ps)]
        dup = sorted({i for i in ids_ if ids_.count(i) > 1})
        if dup:
            raise ShiftlensError(f"from_matrices: duplicate prompt ids {dup[:8]}")
        cats = per_prompt("categories", categories, n, None) if categories is not None else \
            [q.category if q is not None else None for q in ps]
        refs = per_prompt("references", references, n, None) if references is not None else \
            [q.reference if q is not None else None for q in ps]
        texts = per_role("responses", responses, n, "", ROLES)
        probs = per_role("mean_probs", mean_probs, n, float("nan"), ROLES)
        mats_in = {r: per_prompt(f"matrices[{r!r}]", matrices[r], n, None) for r in ROLES}
        masks = [check_external_mask(m, f"prompt {ids_[i]!r}") for i, m in enumerate(masks_in)]
        mats: dict[str, list[Tensor | None]] = {r: [] for r in ROLES}
        rows = []
        for i in range(n):
            row: dict[str, Any] = {"id": ids_[i], "category": cats[i],
                                   "n_input": int(masks[i].numel()),
                                   "n_instruction": int(masks[i].sum())}
            notes = []
            for r in ROLES:
                a = check_external_matrix(mats_in[r][i], int(masks[i].numel()), layout,
                                  f"prompt {ids_[i]!r}, {r}")
                mats[r].append(a)
                if a is None:
                    notes.append(f"{r}: no matrix")
                    score = float("nan")
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ShiftlensWarning)  # noted below
                        score = instruction_score(importance_density(a, levels, threshold, p),
                                                  masks[i], label=f"prompt {ids_[i]!r}")
                row.update({f"{r}_score": score,
                            f"{r}_n_response": 0 if a is None else int(a.shape[1]),
                            f"{r}_response": str(texts[r][i] or ""),
                            f"{r}_mean_prob": float(probs[r][i]),
                            f"{r}_mode": "" if a is None else str(mode)})
            if int(masks[i].sum()) == 0:
                notes.append("no instruction span")
            row["reference"] = refs[i]
            row["note"] = "; ".join(notes)
            rows.append(row)
        frame = pd.DataFrame(rows)[list(SENSITIVITY_COLUMNS)]
        params = {"levels": levels, "threshold": threshold, "p": p, "response": response,
                  "alternative": alternative, "source": "from_matrices", "layout": layout}
        meta = make_meta(models=dict(models or {}), seed=seed, params=params)
        out = cls(frame, mats, masks, meta)
        out.validate()
        return out


#: The 0.x name of :class:`AttributionResult` (imports keep working).
Attribution = AttributionResult
