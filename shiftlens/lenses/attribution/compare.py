"""Compare a pair: instruction sensitivity, both response settings side by side, followed vs
unfollowed (Wu et al. 2024, §3); the position of the instruction is in
:mod:`~shiftlens.lenses.attribution.placement`.

:func:`instruction_sensitivity` is three steps, each public so that a runner can compute one
(prompt, model) record at a time (in another process, on another machine, resumed after a
crash) and still assemble the very same Result:

1. :func:`validate_sensitivity` checks every input (prompts, responses, context lengths,
   gradients, parameters) before any model runs and returns a :class:`SensitivityPlan`;
2. :func:`accumulate_sensitivity` attributes one prompt with one model: a
   :class:`SensitivityRecord` (the raw matrix and the score);
3. :func:`assemble_sensitivity` puts the records of every (prompt, model) together into a
   :class:`~shiftlens.lenses.attribution.results.SensitivityResult`, equal field by field
   (``equals``) whatever order the records were computed in.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.checks import check_choice, check_float, check_int, check_prompts, prompt_id
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.generate import DEFAULT_MAX_NEW_TOKENS
from shiftlens.lenses.attribution.core import MODES, attribute, check_autograd, check_model
from shiftlens.lenses.attribution.density import instruction_score
from shiftlens.lenses.attribution.derived import (
    HEADLINES,
    FollowedResult,
    ResponseSettingsResult,
)
from shiftlens.lenses.attribution.results import (
    ALTERNATIVES,
    ROLES,
    SENSITIVITY_COLUMNS,
    SensitivityResult,
)
from shiftlens.prompts import BOS, INSTRUCTION, InstructionPrompt
from shiftlens.result import make_meta

__all__ = [
    "SensitivityPlan",
    "SensitivityRecord",
    "validate_sensitivity",
    "accumulate_sensitivity",
    "assemble_sensitivity",
    "instruction_sensitivity",
    "response_settings",
    "followed_by_reference",
    "followed_comparison",
]

_EMPTY_GREEDY = "greedy response is empty"
#: The plan's parameters in the order the Result records them (a saved plan may sort keys).
_PARAM_KEYS = ("levels", "threshold", "p", "response", "max_new_tokens", "mode", "chunk_size",
               "decoding", "alternative")


# ====================================================================== instruction sensitivity
@dataclass(frozen=True)
class SensitivityPlan:
    """What :func:`validate_sensitivity` checked: everything a record needs, nothing run yet.

    Attributes:
        prompts: The prompts, in order.
        ids: Their ids (:func:`shiftlens.checks.prompt_id`: the prompt's id, else ``#<index>``).
        responses: Per prompt the response text to attribute, or None (each model's own greedy
            response).
        masks: Per prompt, True at the instruction tokens among the input tokens (the prompt
            tokens without BOS), from the pair's tokenizer.
        models: ``{"base": name, "tuned": name}``.
        params: ``levels``, ``threshold``, ``p``, ``response`` (``"generate"``,
            ``"reference"`` or ``"given"``), ``max_new_tokens``, ``mode``, ``chunk_size``,
            ``decoding``, ``alternative``.
        seed: Bootstrap seed of the summary.

    Example:
        >>> plan = validate_sensitivity(pair, prompts)  # doctest: +SKIP
        >>> len(plan), plan.keys()[:2]  # doctest: +SKIP
        (12, [(0, 'base'), (0, 'tuned')])
    """

    prompts: tuple[InstructionPrompt, ...]
    ids: tuple[str, ...]
    responses: tuple[str | None, ...]
    masks: tuple[Tensor, ...]
    models: dict[str, str]
    params: dict[str, Any]
    seed: int

    def __len__(self) -> int:
        return len(self.prompts)

    def keys(self) -> list[tuple[int, str]]:
        """Every ``(prompt index, role)`` a record is needed for, in the one-process order.

        Example:
            >>> plan.keys()  # doctest: +SKIP
        """
        return [(i, role) for i in range(len(self.prompts)) for role in ROLES]

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain values (prompts, tuples, dicts, tensors) that a Result saves.

        Example:
            >>> SensitivityPlan.from_dict(plan.to_dict()) == plan  # doctest: +SKIP
        """
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SensitivityPlan:
        """Rebuild a plan from :meth:`to_dict` (after a save and load: lists become tuples).

        Example:
            >>> plan = SensitivityPlan.from_dict(saved)  # doctest: +SKIP
        """
        try:
            return cls(prompts=tuple(d["prompts"]), ids=tuple(str(i) for i in d["ids"]),
                       responses=tuple(d["responses"]), masks=tuple(d["masks"]),
                       models=dict(d["models"]), params=dict(d["params"]), seed=int(d["seed"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ShiftlensError(f"not a saved SensitivityPlan: {e!r}") from e


@dataclass(frozen=True)
class SensitivityRecord:
    """One prompt attributed with one model (:func:`accumulate_sensitivity`).

    Attributes:
        index: The prompt's position in the plan.
        role: ``"base"`` or ``"tuned"``.
        id: The prompt's id (checked against the plan when assembling).
        matrix: The raw attribution matrix ``[n_input, n_response]`` (CPU), or None when the
            model's greedy response was empty.
        score: The instruction score with the plan's density parameters (NaN without
            instruction tokens or response).
        n_response: Response tokens attributed.
        response: The response text.
        mean_prob: Mean ``p(y_m | x, y_<m)`` over the response tokens.
        mode: Autodiff mode used (``""`` without response).
        note: Why there is no matrix (``"empty greedy response"``), else ``""``.

    Example:
        >>> rec = accumulate_sensitivity(pair.tuned, plan, 0, "tuned")  # doctest: +SKIP
        >>> rec.score, rec.response  # doctest: +SKIP
    """

    index: int
    role: str
    id: str
    matrix: Float[Tensor, "n_in n_out"] | None
    score: float
    n_response: int
    response: str
    mean_prob: float
    mode: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The record as plain values (a tensor or None, numbers, strings).

        Example:
            >>> SensitivityRecord.from_dict(rec.to_dict()) == rec  # doctest: +SKIP
        """
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SensitivityRecord:
        """Rebuild a record from :meth:`to_dict`.

        Example:
            >>> rec = SensitivityRecord.from_dict(saved)  # doctest: +SKIP
        """
        try:
            return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})
        except (KeyError, TypeError) as e:
            raise ShiftlensError(f"not a saved SensitivityRecord: {e!r}") from e


def _response_for(prompt: InstructionPrompt, source: Any, i: int) -> str | None:
    if source == "generate":
        return None
    if source == "reference":
        return prompt.reference
    return source[i]


def _check_response_source(response: Any, prompts: list[InstructionPrompt],
                           ids: list[str]) -> None:
    if isinstance(response, str):
        if response not in ("generate", "reference"):
            raise ShiftlensError(
                f"response must be 'generate', 'reference' or a list of texts, got {response!r}")
        if response == "reference":
            missing = [i for p, i in zip(prompts, ids) if not p.reference]
            if missing:
                raise ShiftlensError(f"prompts without a reference response: {missing[:8]}")
        return
    if not isinstance(response, Sequence) or len(response) != len(prompts):
        n = len(response) if isinstance(response, Sequence) else type(response).__name__
        raise ShiftlensError(f"response: {n} responses given for {len(prompts)} prompts")
    bad = [i for i, r in zip(ids, response) if r is not None and not isinstance(r, str)]
    if bad:
        raise ShiftlensError(f"the responses of prompts {bad[:8]} are neither texts nor None")


def _instruction_mask(segments: Tensor, n_prompt: int) -> Bool[Tensor, " n_in"]:
    seg = segments[:n_prompt]
    return seg[seg != BOS] == INSTRUCTION


def _check_pair(pair: Any) -> None:
    """A :class:`shiftlens.ModelPair` (or a runner's view of one): model ``names``, a tokenizer,
    and ``(role, model)`` pairs when iterated. Touches no model (a view may load them lazily)."""
    names = getattr(pair, "names", None)
    if not isinstance(names, Mapping) or not hasattr(pair, "tokenize") \
            or not hasattr(pair, "__iter__"):
        raise ShiftlensError(f"pair must be a shiftlens.ModelPair, got {type(pair).__name__}")


def validate_sensitivity(
    pair: Any,
    prompts: Sequence[InstructionPrompt],
    *,
    response: str | Sequence[str] = "generate",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    mode: str = "auto",
    chunk_size: int = 16,
    levels: int = 10,
    threshold: int = 7,
    p: float | int = 4,
    alternative: str = "two-sided",
    seed: int = 0,
) -> SensitivityPlan:
    """Step 1 of :func:`instruction_sensitivity`: check everything before any model runs.

    Every prompt (with its given or reference response) is tokenized with the pair's tokenizer
    and checked against the context length; gradients must be available for both models.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts, response, max_new_tokens, mode, chunk_size, levels, threshold, p, alternative,
            seed: As in :func:`instruction_sensitivity`.

    Returns:
        The :class:`SensitivityPlan`.

    Raises:
        ShiftlensError: not a pair, no prompts, a missing reference with
            ``response="reference"``, a prompt (+ response) longer than the context, gradients
            disabled, bad parameters (each named with its value).

    Example:
        >>> plan = validate_sensitivity(pair, prompts, max_new_tokens=12)  # doctest: +SKIP
    """
    _check_pair(pair)
    prompts = check_prompts(prompts, who="instruction_sensitivity")
    ids = [prompt_id(pr, i) for i, pr in enumerate(prompts)]
    _check_response_source(response, prompts, ids)
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    check_choice("mode", mode, MODES)
    check_int("chunk_size", chunk_size, minimum=1)
    check_int("levels", levels, minimum=1)
    check_int("threshold", threshold, minimum=0, maximum=levels - 1)
    check_float("p", p, minimum=1.0, open_min=True)
    check_choice("alternative", alternative, ALTERNATIVES)
    seed = check_int("seed", seed)
    for role, model in pair:
        check_model(model, f"{role} model {pair.names[role]!r}")
        check_autograd(model, f"{role} model {pair.names[role]!r}")
    responses = [_response_for(pr, response, i) for i, pr in enumerate(prompts)]
    tps = [pair.tokenize(pr, response=r) for pr, r in zip(prompts, responses)]
    n_ctx = getattr(pair.cfg, "n_ctx", None)
    if n_ctx is not None:
        full = [i for i, r, tp in zip(ids, responses, tps) if r is None and tp.n_prompt >= n_ctx]
        if full:
            raise ShiftlensError(
                f"prompts {full[:8]} fill the context length {n_ctx}: no room for a response")
    params = dict(zip(_PARAM_KEYS, (levels, threshold, p, response if isinstance(response, str)
                                    else "given", max_new_tokens, mode, chunk_size, "greedy",
                                    alternative)))
    return SensitivityPlan(
        prompts=tuple(prompts), ids=tuple(ids), responses=tuple(responses),
        masks=tuple(_instruction_mask(tp.segments, tp.n_prompt) for tp in tps),
        models=dict(pair.names), params=params, seed=int(seed))


def accumulate_sensitivity(model: Any, plan: SensitivityPlan, index: int,
                           role: str) -> SensitivityRecord:
    """Step 2 of :func:`instruction_sensitivity`: attribute prompt ``index`` with one model.

    An empty greedy response (EOS first) gives a record without matrix, a NaN score and a
    :class:`ShiftlensWarning`; a prompt without instruction tokens scores NaN (with a warning);
    the summary leaves both out and names them. A non-finite attribution is an error naming
    the role, the prompt, the model and where the forward pass first turns non-finite.

    Args:
        model: The pair's model for ``role`` (``pair.base`` or ``pair.tuned``).
        plan: From :func:`validate_sensitivity`.
        index: The prompt's position in the plan.
        role: ``"base"`` or ``"tuned"``.

    Returns:
        The :class:`SensitivityRecord`.

    Example:
        >>> recs = [accumulate_sensitivity(getattr(pair, r), plan, i, r)  # doctest: +SKIP
        ...         for i, r in plan.keys()]
    """
    if not isinstance(plan, SensitivityPlan):
        raise ShiftlensError(f"plan must be a SensitivityPlan (validate_sensitivity), got "
                             f"{type(plan).__name__}")
    check_choice("role", role, ROLES)
    check_int("index", index, minimum=0, maximum=len(plan) - 1)
    pr, resp, pid = plan.prompts[index], plan.responses[index], plan.ids[index]
    par = plan.params
    try:
        att = attribute(model, pr, resp, max_new_tokens=par["max_new_tokens"], mode=par["mode"],
                        chunk_size=par["chunk_size"], model_name=plan.models[role])
    except ShiftlensError as e:
        if resp is not None or _EMPTY_GREEDY not in str(e):
            raise ShiftlensError(f"{role} model: {e}") from e
        warnings.warn(f"{role} model: {e}", ShiftlensWarning, stacklevel=2)
        return SensitivityRecord(index, role, pid, None, float("nan"), 0, "", float("nan"), "",
                                 "empty greedy response")
    if not torch.equal(att.instruction_mask.cpu(), plan.masks[index].cpu()):
        raise ShiftlensError(f"prompt {pr.label}: the {role} model's tokenizer gives other "
                             "instruction tokens than the pair's")
    score = instruction_score(att.density(par["levels"], par["threshold"], par["p"]),
                              att.instruction_mask, label=att.label)
    return SensitivityRecord(index, role, pid, att.matrix, score, att.n_output, att.response,
                             float(att.probs.double().mean()), att.mode)


def _index_records(
    plan: SensitivityPlan, records: Iterable[SensitivityRecord]
) -> dict[tuple[int, str], SensitivityRecord]:
    got: dict[tuple[int, str], SensitivityRecord] = {}
    for r in records:
        if not isinstance(r, SensitivityRecord):
            raise ShiftlensError(f"expected SensitivityRecords, got a {type(r).__name__}")
        key = (r.index, r.role)
        if not 0 <= r.index < len(plan) or r.role not in ROLES:
            raise ShiftlensError(f"record {key} is not part of the plan ({len(plan)} prompts)")
        if r.id != plan.ids[r.index]:
            raise ShiftlensError(f"record {key} is of prompt {r.id!r}, the plan has "
                                 f"{plan.ids[r.index]!r} there (another plan?)")
        if key in got:
            raise ShiftlensError(f"two records for prompt {r.id!r}, {r.role} model")
        got[key] = r
    missing = [k for k in plan.keys() if k not in got]
    if missing:
        raise ShiftlensError(f"{len(missing)} records missing, first (prompt, model): "
                             f"{[(plan.ids[i], role) for i, role in missing[:4]]}")
    return got


def assemble_sensitivity(plan: SensitivityPlan,
                         records: Iterable[SensitivityRecord]) -> SensitivityResult:
    """Step 3 of :func:`instruction_sensitivity`: the Result from every (prompt, model) record.

    Records may come in any order (and from any process); the Result equals the one
    :func:`instruction_sensitivity` returns for the same plan.

    Args:
        plan: From :func:`validate_sensitivity`.
        records: One :class:`SensitivityRecord` per ``plan.keys()`` entry.

    Returns:
        The :class:`~shiftlens.lenses.attribution.results.SensitivityResult`.

    Raises:
        ShiftlensError: a record missing, duplicated, or of another plan.

    Example:
        >>> res = assemble_sensitivity(plan, reversed(recs))  # doctest: +SKIP
    """
    got = _index_records(plan, records)
    rows: list[dict[str, Any]] = []
    mats: dict[str, list[Tensor | None]] = {r: [] for r in ROLES}
    for i, pr in enumerate(plan.prompts):
        mask = plan.masks[i]
        row: dict[str, Any] = {"id": plan.ids[i], "category": pr.category,
                               "n_input": int(mask.shape[0]), "n_instruction": int(mask.sum())}
        notes = []
        for role in ROLES:
            rec = got[(i, role)]
            mats[role].append(rec.matrix)
            if rec.note:
                notes.append(f"{role}: {rec.note}")
            row.update({f"{role}_score": rec.score, f"{role}_n_response": rec.n_response,
                        f"{role}_response": rec.response, f"{role}_mean_prob": rec.mean_prob,
                        f"{role}_mode": rec.mode})
        if int(mask.sum()) == 0:
            notes.append("no instruction span")
        row["reference"] = pr.reference
        row["note"] = "; ".join(notes)
        rows.append(row)
    frame = pd.DataFrame(rows)[list(SENSITIVITY_COLUMNS)]
    params = {k: plan.params[k] for k in (*_PARAM_KEYS, *sorted(plan.params)) if k in plan.params}
    params.setdefault("alternative", "two-sided")  # plans saved before the parameter existed
    meta = make_meta(models={r: plan.models[r] for r in ROLES}, seed=plan.seed, params=params)
    return SensitivityResult(frame, mats, list(plan.masks), meta)


def instruction_sensitivity(
    pair: Any,
    prompts: Sequence[InstructionPrompt],
    *,
    response: str | Sequence[str] = "generate",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    mode: str = "auto",
    chunk_size: int = 16,
    levels: int = 10,
    threshold: int = 7,
    p: float | int = 4,
    alternative: str = "two-sided",
    seed: int = 0,
    progress: bool = True,
) -> SensitivityResult:
    """Instruction score of base and tuned on every prompt, with the statistics (§3).

    Each model is attributed on its own greedy response (the paper's setting,
    ``response="generate"``), on each prompt's ``reference`` (``"reference"``), or on given
    response texts (a sequence, one per prompt). The two settings can disagree (the models'
    own responses differ in length and content): :func:`response_settings` runs both side by
    side. A prompt without instruction span scores NaN (with a :class:`ShiftlensWarning`); a
    model whose greedy response is empty (EOS first) scores NaN for that prompt with a note;
    the summary leaves such prompts out of both samples and names them. A non-finite
    attribution is an error (role, prompt, model, where it turns non-finite). Every prompt is
    tokenized and checked against the context length before any model runs. The three steps
    are public: :func:`validate_sensitivity`, :func:`accumulate_sensitivity`,
    :func:`assemble_sensitivity`.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts: The prompts (ids should be unique; categories group the summary).
        response: ``"generate"``, ``"reference"`` or one response per prompt (a text, or None
            for each model's own greedy response).
        max_new_tokens: Generation limit, default
            :data:`shiftlens.generate.DEFAULT_MAX_NEW_TOKENS` (32): long enough for a complete
            instruction-following answer, while a base model that never stops (it rambles to
            the limit) costs half of the former 64 (generation and Jacobian products both grow
            with the response).
        mode, chunk_size: See :func:`~shiftlens.lenses.attribution.core.attribute`.
        levels, threshold, p: Density parameters (changeable later:
            :meth:`~shiftlens.lenses.attribution.results.SensitivityResult.rescore`).
        alternative: Welch's t-test of tuned vs base: ``"two-sided"`` (default), ``"greater"``
            (tuned > base) or ``"less"``; the summary's sentence names a one-sided test.
        seed: Bootstrap seed of the confidence intervals.
        progress: Progress bar over prompts.

    Returns:
        The :class:`~shiftlens.lenses.attribution.results.SensitivityResult`.

    Raises:
        ShiftlensError: no prompts, a missing reference with ``response="reference"``, a
            prompt (+ response) longer than the context, gradients disabled.

    Example:
        >>> from shiftlens.testing import tiny_pair
        >>> res = instruction_sensitivity(tiny_pair("llama"), default_prompts()[:6])  # doctest: +SKIP
        >>> print(res.summary()["sentence"])  # doctest: +SKIP
    """
    plan = validate_sensitivity(pair, prompts, response=response, max_new_tokens=max_new_tokens,
                                mode=mode, chunk_size=chunk_size, levels=levels,
                                threshold=threshold, p=p, alternative=alternative, seed=seed)
    records = []
    for i in tqdm(range(len(plan)), desc="instruction sensitivity", disable=not progress):
        for role, model in pair:
            records.append(accumulate_sensitivity(model, plan, i, role))
    return assemble_sensitivity(plan, records)


# ====================================================================== both response settings
def response_settings(
    pair: Any,
    prompts: Sequence[InstructionPrompt],
    *,
    headline: str = "auto",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    mode: str = "auto",
    chunk_size: int = 16,
    levels: int = 10,
    threshold: int = 7,
    p: float | int = 4,
    alternative: str = "two-sided",
    seed: int = 0,
    progress: bool = True,
) -> ResponseSettingsResult:
    """Instruction sensitivity in both response settings, side by side, with response lengths.

    The same prompts are scored twice: with each prompt's reference response for both models
    (``response="reference"``: one text, so a difference is the models' reading of the
    prompt) and with each model's own greedy response (``"generate"``, the paper's setting,
    Wu et al. §3, where response length and content differ between the models). Prompts
    without a reference response are left out of both (a :class:`ShiftlensWarning`; the
    summary names them).

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts: The prompts (those with a ``reference`` are used).
        headline: Which setting leads: ``"auto"`` (the same reference response when at least
            two prompts are scored with it), ``"reference"`` or ``"own"``.
        max_new_tokens, mode, chunk_size, levels, threshold, p, alternative, seed, progress:
            As in :func:`instruction_sensitivity`.

    Returns:
        The :class:`~shiftlens.lenses.attribution.derived.ResponseSettingsResult`.

    Raises:
        ShiftlensError: no prompt has a reference response, or what
            :func:`instruction_sensitivity` refuses.

    Example:
        >>> rs = response_settings(pair, toy_prompts(28), max_new_tokens=12)  # doctest: +SKIP
        >>> print(rs.summary()["sentence"])  # doctest: +SKIP
    """
    check_choice("headline", headline, HEADLINES)
    prompts = check_prompts(prompts, who="response_settings")
    ids = [prompt_id(pr, i) for i, pr in enumerate(prompts)]
    keep = [(pid, pr) for pid, pr in zip(ids, prompts) if pr.reference]
    left = [pid for pid, pr in zip(ids, prompts) if not pr.reference]
    if not keep:
        raise ShiftlensError("response_settings: no prompt has a reference response; the "
                             "same-response setting needs one (instruction_sensitivity scores "
                             "each model's own response)")
    if left:
        warnings.warn(f"response_settings: {len(left)} prompts without a reference response "
                      f"are left out of both settings: {left[:8]}", ShiftlensWarning,
                      stacklevel=2)
    # ids fixed to the full list's, so both settings name each prompt as the caller's list does
    used = [dataclasses.replace(pr, id=pid) for pid, pr in keep]
    kw = dict(max_new_tokens=max_new_tokens, mode=mode, chunk_size=chunk_size, levels=levels,
              threshold=threshold, p=p, alternative=alternative, seed=seed, progress=progress)
    ref = instruction_sensitivity(pair, used, response="reference", **kw)  # type: ignore[arg-type]
    own = instruction_sensitivity(pair, used, response="generate", **kw)  # type: ignore[arg-type]
    return ResponseSettingsResult.from_results(ref, own, headline=headline, left_out=left)


# ====================================================================== followed vs unfollowed
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
    if not isinstance(result, SensitivityResult):
        raise ShiftlensError(f"followed_by_reference takes a SensitivityResult, got "
                             f"{type(result).__name__}")
    check_choice("match", match, ("exact", "prefix"))
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


def _check_roles(roles: Any) -> list[str]:
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, Sequence) or not roles:
        raise ShiftlensError(f"roles must be 'base', 'tuned' or both, got {roles!r}")
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise ShiftlensError(f"unknown roles {bad}; use 'base' and/or 'tuned'")
    return list(dict.fromkeys(roles))


def followed_comparison(
    result: SensitivityResult,
    followed: Mapping[Any, bool],
    *,
    roles: Sequence[str] = ROLES,
    alternative: str = "two-sided",
    seed: int = 0,
) -> FollowedResult:
    """Do responses that follow the instruction have a higher instruction score? (§3)

    Args:
        result: A :class:`~shiftlens.lenses.attribution.results.SensitivityResult` (its
            scores and responses are used).
        followed: Labels keyed ``(role, prompt_id)``, or ``prompt_id`` (same label for every
            role); each a bool. Responses without a label are left out (counted in
            ``n_unlabelled``); labelled responses without a score are left out of the tests and
            named in the summary.
        roles: Which models' responses to include (``"base"``, ``"tuned"`` or both).
        alternative: Welch's t-test of followed vs unfollowed: ``"two-sided"`` (default),
            ``"greater"`` (followed > unfollowed) or ``"less"``.
        seed: Bootstrap seed.

    Returns:
        The :class:`~shiftlens.lenses.attribution.derived.FollowedResult`.

    Raises:
        ShiftlensError: not a SensitivityResult, an unknown role, a label for an unknown prompt
            id, a label that is not a bool, or no label at all.

    Example:
        >>> fr = followed_comparison(res, followed_by_reference(res))  # doctest: +SKIP
    """
    if not isinstance(result, SensitivityResult):
        raise ShiftlensError(f"followed_comparison takes a SensitivityResult, got "
                             f"{type(result).__name__}")
    if not isinstance(followed, Mapping):
        raise ShiftlensError(f"followed must map (role, prompt id) or prompt id to a bool, got "
                             f"{type(followed).__name__}")
    roles = _check_roles(roles)
    check_choice("alternative", alternative, ALTERNATIVES)
    seed = check_int("seed", seed)
    notbool = [k for k, v in followed.items() if not isinstance(v, (bool, np.bool_))]
    if notbool:
        raise ShiftlensError(f"followed labels must be True or False, got "
                             f"{followed[notbool[0]]!r} for {notbool[0]!r}")
    ids = {str(i) for i in result.frame["id"]}
    unknown = sorted({str(k[1] if isinstance(k, tuple) else k) for k in followed} - ids)
    if unknown:
        raise ShiftlensError(f"labels for unknown prompt ids {unknown[:8]}")
    rows, n_unl = [], 0
    for _, r in result.frame.iterrows():
        for role in roles:
            key = str(r["id"])
            lab = followed.get((role, key), followed.get(key))
            if lab is None:
                n_unl += 1
                continue
            rows.append({"id": key, "category": r["category"], "role": role,
                         "score": float(r[f"{role}_score"]), "followed": bool(lab)})
    if not rows:
        raise ShiftlensError("no response has a followed/unfollowed label")
    src = result.meta.get("params") or {}
    meta = make_meta(models=result.model_names, seed=seed, params={
        "roles": list(roles), "alternative": alternative,
        **{k: src.get(k) for k in ("levels", "threshold", "p")}})
    return FollowedResult(pd.DataFrame(rows), n_unl, meta)
