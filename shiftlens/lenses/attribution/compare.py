"""Compare a pair: instruction sensitivity, followed vs unfollowed, position of the instruction
(Wu et al. 2024, §3).

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

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.checks import check_choice, check_float, check_int, check_prompts, prompt_id
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.lenses.attribution.core import MODES, attribute, check_autograd
from shiftlens.lenses.attribution.density import instruction_score
from shiftlens.lenses.attribution.results import (
    POSITIONS,
    ROLES,
    SENSITIVITY_COLUMNS,
    FollowedResult,
    PositionResult,
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
    "followed_by_reference",
    "followed_comparison",
    "place_instruction",
    "position_sensitivity",
]

_EMPTY_GREEDY = "greedy response is empty"
#: The plan's parameters in the order the Result records them (a saved plan may sort keys).
_PARAM_KEYS = ("levels", "threshold", "p", "response", "max_new_tokens", "mode", "chunk_size",
               "decoding")


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
            ``decoding``.
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
        raise ShiftlensError(f"{n} responses given for {len(prompts)} prompts")
    bad = [i for i, r in zip(ids, response) if r is not None and not isinstance(r, str)]
    if bad:
        raise ShiftlensError(f"the responses of prompts {bad[:8]} are neither texts nor None")


def _instruction_mask(segments: Tensor, n_prompt: int) -> Bool[Tensor, " n_in"]:
    seg = segments[:n_prompt]
    return seg[seg != BOS] == INSTRUCTION


def validate_sensitivity(
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
) -> SensitivityPlan:
    """Step 1 of :func:`instruction_sensitivity`: check everything before any model runs.

    Every prompt (with its given or reference response) is tokenized with the pair's tokenizer
    and checked against the context length; gradients must be available for both models.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts, response, max_new_tokens, mode, chunk_size, levels, threshold, p, seed: As in
            :func:`instruction_sensitivity`.

    Returns:
        The :class:`SensitivityPlan`.

    Raises:
        ShiftlensError: no prompts, a missing reference with ``response="reference"``, a
            prompt (+ response) longer than the context, gradients disabled, bad parameters.

    Example:
        >>> plan = validate_sensitivity(pair, prompts, max_new_tokens=12)  # doctest: +SKIP
    """
    prompts = check_prompts(prompts, who="instruction_sensitivity")
    ids = [prompt_id(pr, i) for i, pr in enumerate(prompts)]
    _check_response_source(response, prompts, ids)
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    check_choice("mode", mode, MODES)
    check_int("chunk_size", chunk_size, minimum=1)
    check_int("levels", levels, minimum=1)
    check_int("threshold", threshold, minimum=0, maximum=levels - 1)
    check_float("p", p, minimum=1.0, open_min=True)
    for role, model in pair:
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
                                    else "given", max_new_tokens, mode, chunk_size, "greedy")))
    return SensitivityPlan(
        prompts=tuple(prompts), ids=tuple(ids), responses=tuple(responses),
        masks=tuple(_instruction_mask(tp.segments, tp.n_prompt) for tp in tps),
        models=dict(pair.names), params=params, seed=int(seed))


def accumulate_sensitivity(model: Any, plan: SensitivityPlan, index: int,
                           role: str) -> SensitivityRecord:
    """Step 2 of :func:`instruction_sensitivity`: attribute prompt ``index`` with one model.

    An empty greedy response (EOS first) gives a record without matrix, a NaN score and a
    :class:`ShiftlensWarning`; a prompt without instruction tokens scores NaN (with a warning).

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
    check_choice("role", role, ROLES)
    check_int("index", index, minimum=0, maximum=len(plan) - 1)
    pr, resp, pid = plan.prompts[index], plan.responses[index], plan.ids[index]
    par = plan.params
    try:
        att = attribute(model, pr, resp, max_new_tokens=par["max_new_tokens"], mode=par["mode"],
                        chunk_size=par["chunk_size"], model_name=plan.models[role])
    except ShiftlensError as e:
        if resp is not None or _EMPTY_GREEDY not in str(e):
            raise
        warnings.warn(str(e), ShiftlensWarning, stacklevel=2)
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
    meta = make_meta(models={r: plan.models[r] for r in ROLES}, seed=plan.seed, params=params)
    return SensitivityResult(frame, mats, list(plan.masks), meta)


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
    context length before any model runs. The three steps are public:
    :func:`validate_sensitivity`, :func:`accumulate_sensitivity`, :func:`assemble_sensitivity`.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompts: The prompts (ids should be unique; categories group the summary).
        response: ``"generate"``, ``"reference"`` or one response per prompt (a text, or None
            for each model's own greedy response).
        max_new_tokens: Generation limit.
        mode, chunk_size: See :func:`~shiftlens.lenses.attribution.core.attribute`.
        levels, threshold, p: Density parameters (changeable later:
            :meth:`~shiftlens.lenses.attribution.results.SensitivityResult.rescore`).
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
                                threshold=threshold, p=p, seed=seed)
    records = []
    for i in tqdm(range(len(plan)), desc="instruction sensitivity", disable=not progress):
        for role, model in pair:
            records.append(accumulate_sensitivity(model, plan, i, role))
    return assemble_sensitivity(plan, records)


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


def followed_comparison(
    result: SensitivityResult,
    followed: Mapping[Any, bool],
    *,
    roles: Sequence[str] = ROLES,
    seed: int = 0,
) -> FollowedResult:
    """Do responses that follow the instruction have a higher instruction score? (§3)

    Args:
        result: A :class:`~shiftlens.lenses.attribution.results.SensitivityResult` (its
            scores and responses are used).
        followed: Labels keyed ``(role, prompt_id)``, or ``prompt_id`` (same label for every
            role). Responses without a label are left out (counted in ``n_unlabelled``).
        roles: Which models' responses to include.
        seed: Bootstrap seed.

    Returns:
        The :class:`~shiftlens.lenses.attribution.results.FollowedResult`.

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
        "roles": list(roles), **{k: src.get(k) for k in ("levels", "threshold", "p")}})
    return FollowedResult(pd.DataFrame(rows), n_unl, meta)


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


def _position_rows(res: SensitivityResult) -> list[dict[str, Any]]:
    rows = []
    for _, r in res.frame.iterrows():
        item, pos = str(r["id"]).rsplit("@", 1)
        for role in ROLES:
            rows.append({"item": item, "id": r["id"], "position": pos, "role": role,
                         "score": r[f"{role}_score"], "n_input": r["n_input"],
                         "n_instruction": r["n_instruction"],
                         "n_response": r[f"{role}_n_response"],
                         "response": r[f"{role}_response"]})
    return rows


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
    one prompt per placement (id ``"<item id>@<position>"``). Each model is attributed on its
    own greedy response per prompt, or on a fixed response per item (``responses``), which
    keeps the response identical across placements.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        items: ``(instruction, context_pieces)`` pairs.
        positions: Placements to compare.
        ids: Item ids (default ``"item-000"``...).
        responses: Optional fixed response text per item.
        suffix: Appended to every prompt (e.g. a response cue).
        max_new_tokens, mode, chunk_size: See :func:`~shiftlens.lenses.attribution.core.attribute`.
        levels, threshold, p: Density parameters.
        seed: Bootstrap seed.
        progress: Progress bar.

    Returns:
        The :class:`~shiftlens.lenses.attribution.results.PositionResult`.

    Example:
        >>> items = [("Count the animals.", ["A cat sat.", "A dog ran.", "Rain fell."])]
        >>> pr = position_sensitivity(pair, items)  # doctest: +SKIP
    """
    items = list(items)
    if not items:
        raise ShiftlensError("position_sensitivity: no items given")
    bad = [p_ for p_ in positions if p_ not in POSITIONS]
    if bad or not positions:
        raise ShiftlensError(f"positions must be a non-empty subset of {POSITIONS}, got "
                             f"{positions}")
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
    params = {"positions": list(positions), "levels": levels, "threshold": threshold, "p": p,
              "response": "generate" if responses is None else "given", "suffix": suffix,
              "max_new_tokens": max_new_tokens}
    return PositionResult(pd.DataFrame(_position_rows(res)),
                          make_meta(pair, seed=seed, params=params))

