"""Lens 2's Results: attention to the instruction (base vs tuned), and the verb shift of the heads'
word pairs (Wu et al. 2024, §4). Both are :class:`shiftlens.result.Result` subclasses: saved and
loaded by field type, summarised in a sentence, drawn by :mod:`shiftlens.lenses.attention.plots`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from shiftlens.errors import ShiftlensError
from shiftlens.prompts import INSTRUCTION, SEGMENTS
from shiftlens.result import Result
from shiftlens.stats import (
    change_sentence,
    digits_for,
    fmt_number,
    layer_groups,
    paired_test,
    test_label,
)

__all__ = ["ROLES", "InstructionAttentionResult", "VerbShiftResult"]

#: The two models of a pair, in the order of the ``role`` axis.
ROLES = ("base", "tuned")

_TEST_COLUMNS = ("rank", "layer", "head", "base", "tuned", "delta", "t", "p", "df", "ci_low",
                 "ci_high", "n", "p_holm", "p_bh")
_COUNT_COLUMNS = ("layer", "head", "group", "verb_set", "verb", "base", "tuned")
_VERB_COLUMNS = ("group", "verb_set", "verb", "n_heads", "rose", "fell", "ties", "fraction_rose")
_FUNNEL_COLUMNS = ("role", "layer", "head", "candidates", "self", "opposite_sign", "unrelated",
                   "kept")
_VERB_TEST_COLUMNS = ("group", "mean_instruction", "mean_general", "diff", "sd_instruction",
                      "sd_general", "n_instruction", "n_general", "t", "p", "df", "ci_low",
                      "ci_high")


def _need_columns(frame: Any, columns: tuple[str, ...], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ShiftlensError(f"{what} must be a DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ShiftlensError(f"{what} lacks the columns {missing}")


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


_NONFINITE_COLUMNS = ("id", "role", "model", "layer", "heads")


def _empty_nonfinite() -> pd.DataFrame:
    return pd.DataFrame({
        "id": pd.Series(dtype="str"), "role": pd.Series(dtype="str"),
        "model": pd.Series(dtype="str"), "layer": pd.Series(dtype=np.int64),
        "heads": pd.Series(dtype=np.int64)})


def _verb_verdict(diff: float, p: float, alternative: str, alpha: float) -> str:
    """Which verb set rose in more heads, and whether the test says so, in words."""
    d, pv = float(diff), float(p)
    if not np.isfinite(d):
        return "not comparable (a verb set has no verb whose count changed)"
    if d == 0:
        return "equal"
    word = "higher for instruction verbs" if d > 0 else "higher for general verbs"
    if not np.isfinite(pv):
        return f"{word}, not testable (fewer than two verbs with a change in a set)"
    if (alternative == "greater" and d < 0) or (alternative == "less" and d > 0):
        return f"{word} (the one-sided test looked for the opposite direction)"
    return f"{word}, {'significantly' if pv < alpha else 'not significantly'}"


def _describe_nonfinite(cells: pd.DataFrame) -> str:
    from shiftlens.lenses.attention.core import describe_nonfinite

    return describe_nonfinite(cells)


@dataclass(eq=False, repr=False)
class InstructionAttentionResult(Result):
    """Attention to the instruction in base vs tuned
    (:func:`~shiftlens.lenses.attention.compare.instruction_attention`).

    Attributes:
        mass: ``[role, prompt, layer, head, segment]`` attention mass (role 0 base, 1 tuned;
            segments :data:`shiftlens.prompts.SEGMENTS`).
        layers: Layer index of each ``layer`` row.
        prompt_ids: Ids of the prompts used (:func:`shiftlens.checks.prompt_id`).
        used_last: Per prompt, True when the last prompt token was the query (``query="last"``
            or no reference response).
        excluded: Ids of the prompts excluded because they have no instruction tokens.
        tests: One row per head: mean instruction mass in base and tuned, ``delta``, paired
            t-test across prompts (``t``, ``p``, ``df``, bootstrap CI), ``p_holm``, ``p_bh``,
            sorted by ``delta`` descending (``rank`` 0 = largest increase).
        nonfinite: The prompts excluded because their attention mass was NaN or infinite: one
            row per (prompt, model, layer), columns ``id, role, model, layer, heads`` (empty
            when none was).
        meta: Models, seed, parameters (``query``, ``layers``, ``alternative``, ``ci``),
            versions, the models' ``n_layers`` and the ``segments``.

    Example:
        >>> res = instruction_attention(pair, prompts)  # doctest: +SKIP
        >>> res.query, res.delta().shape  # doctest: +SKIP
        ('response', torch.Size([2, 4]))
    """

    mass: Float[Tensor, "role prompt layer head segment"]
    layers: list[int]
    prompt_ids: list[str]
    used_last: list[bool]
    excluded: list[str]
    tests: pd.DataFrame
    nonfinite: pd.DataFrame = field(default_factory=_empty_nonfinite)
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ meta
    @property
    def params(self) -> dict[str, Any]:
        """The parameters recorded in ``meta``."""
        return dict(self.meta.get("params") or {})

    @property
    def query(self) -> str:
        """``"response"`` or ``"last"``: which positions were the queries."""
        return str(self.params.get("query", "response"))

    @property
    def alternative(self) -> str:
        """Alternative hypothesis of the paired tests (tuned vs base)."""
        return str(self.params.get("alternative", "two-sided"))

    @property
    def seed(self) -> int:
        """Bootstrap seed."""
        s = self.meta.get("seed")
        return 0 if s is None else int(s)

    @property
    def n_layers(self) -> int | None:
        """The models' number of layers (for the lower/middle/upper layer groups)."""
        n = self.meta.get("n_layers")
        return None if n is None else int(n)

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

    def validate(self) -> None:
        """Refuse inconsistent fields (checked after loading).

        Example:
            >>> res.validate()  # doctest: +SKIP
        """
        m = self.mass
        if m.dim() != 5 or m.shape[0] != 2 or m.shape[4] != len(SEGMENTS):
            raise ShiftlensError(f"mass must be [2, prompt, layer, head, {len(SEGMENTS)}], got "
                                 f"{list(m.shape)}")
        n_p, n_l, n_h = m.shape[1:4]
        if len(self.prompt_ids) != n_p or len(self.used_last) != n_p:
            raise ShiftlensError(f"{n_p} prompts in mass, {len(self.prompt_ids)} prompt ids and "
                                 f"{len(self.used_last)} used_last flags")
        if len(self.layers) != n_l:
            raise ShiftlensError(f"{n_l} layers in mass but {len(self.layers)} layer indices")
        _need_columns(self.tests, _TEST_COLUMNS, "tests")
        if len(self.tests) != n_l * n_h:
            raise ShiftlensError(f"tests has {len(self.tests)} rows, expected one per head "
                                 f"({n_l} x {n_h})")
        if set(self.excluded) & set(self.prompt_ids):
            raise ShiftlensError("a prompt is both used and excluded")
        _need_columns(self.nonfinite, _NONFINITE_COLUMNS, "nonfinite")
        if set(self.nonfinite["id"]) & set(self.prompt_ids):
            raise ShiftlensError("a prompt is both used and excluded as non-finite")
        bad = ~torch.isfinite(m)
        if bool(bad.any()):
            r, i, j, h, _ = (int(x) for x in bad.nonzero()[0])
            raise ShiftlensError(
                f"mass holds {int(bad.sum())} non-finite values (first: {ROLES[r]}, prompt "
                f"{self.prompt_ids[i]!r}, layer {self.layers[j]}, head {h}): a result is computed "
                "over finite masses only (excluded prompts belong in nonfinite)")
        if self.query not in ("response", "last"):
            raise ShiftlensError(f"unknown query {self.query!r} in meta")

    # ------------------------------------------------------------------ views
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
            per_prompt: One row per prompt too (an ``id`` column, the prompt ids of every
                lens) instead of the means.

        Example:
            >>> res.to_frame().query("segment == 'instruction'").head()  # doctest: +SKIP
        """
        n_p, n_l, n_h, n_s = self.mass.shape[1:]
        layers, segs = np.asarray(self.layers), np.asarray(SEGMENTS, dtype=object)
        if per_prompt:
            b = self.mass[0].cpu().numpy().ravel()
            t = self.mass[1].cpu().numpy().ravel()
            idx = np.indices((n_p, n_l, n_h, n_s)).reshape(4, -1)
            return pd.DataFrame({
                "id": np.asarray(self.prompt_ids, dtype=object)[idx[0]],
                "layer": layers[idx[1]], "head": idx[2], "segment": segs[idx[3]],
                "base": b, "tuned": t, "delta": t - b,
            })
        b = self.mean_mass("base").cpu().numpy().ravel()
        t = self.mean_mass("tuned").cpu().numpy().ravel()
        idx = np.indices((n_l, n_h, n_s)).reshape(3, -1)
        return pd.DataFrame({
            "layer": layers[idx[0]], "head": idx[1], "segment": segs[idx[2]],
            "base": b, "tuned": t, "delta": t - b,
        })

    def ranking(self) -> pd.DataFrame:
        """Heads ranked by the change of their instruction mass (largest increase first).

        Example:
            >>> res.ranking().head(5)[["layer", "head", "delta", "p_holm"]]  # doctest: +SKIP
        """
        return self.tests.copy()

    def summary(self, *, alpha: float = 0.05) -> dict[str, Any]:
        """Headline numbers: mean instruction mass per model with a paired test across
        prompts (head-averaged), per layer group, the top heads, significant head counts.

        The sentence counts heads by their Holm-adjusted p-value (family-wise error over every
        head tested), as the figure's dots do; ``n_heads_up_bh`` / ``n_heads_down_bh`` give
        the Benjamini-Hochberg counts for reference. Every exclusion is counted in it (prompts
        without instruction tokens; prompts with a non-finite mass, with their model and
        layers).

        Args:
            alpha: Significance level of the head counts and the verdicts.

        Example:
            >>> print(res.summary()["sentence"])  # doctest: +SKIP
        """
        ins = self.mass[..., INSTRUCTION].cpu()  # [role, prompt, layer, head]
        per_prompt = ins.mean((2, 3))
        overall = paired_test(per_prompt[1].numpy(), per_prompt[0].numpy(),
                              alternative=self.alternative, seed=self.seed)
        groups: dict[str, Any] = {}
        gnames = layer_groups(self.n_layers or max(self.layers) + 1)
        for g in dict.fromkeys(gnames[layer] for layer in self.layers):
            cols = [j for j, layer in enumerate(self.layers) if gnames[layer] == g]
            x = ins[:, :, cols].mean((2, 3))
            groups[g] = {**paired_test(x[1].numpy(), x[0].numpy(), alternative=self.alternative,
                                       seed=self.seed).to_dict(),
                         "layers": [self.layers[j] for j in cols]}
        t = self.tests
        sig_up = int(((t.p_holm < alpha) & (t.delta > 0)).sum())
        sig_down = int(((t.p_holm < alpha) & (t.delta < 0)).sum())
        bh_up = int(((t.p_bh < alpha) & (t.delta > 0)).sum())
        bh_down = int(((t.p_bh < alpha) & (t.delta < 0)).sum())
        top = t.head(5)[["layer", "head", "base", "tuned", "delta", "p", "p_holm"]]
        q = "response tokens" if self.query == "response" else "the last prompt token"
        if self.fallback_last:
            q += f" (the last prompt token for {len(self.fallback_last)} prompts without a reference)"
        headline = change_sentence(
            f"the share of attention that {q} put on the instruction (mean over all heads)",
            overall.mean_b, overall.mean_a, p=overall.pvalue, test="paired t-test across prompts",
            alternative=self.alternative, ci=(overall.ci_low, overall.ci_high), n=overall.n_a,
            alpha=alpha)
        test = test_label("paired t-test", self.alternative)
        sentence = (f"{headline} {sig_up} of {len(t)} heads attend to the instruction "
                    f"significantly more after tuning and {sig_down} significantly less ({test} "
                    f"per head across prompts, Holm-adjusted p < {alpha:g} over all {len(t)} "
                    "heads).")
        if len(t):
            r = t.iloc[0]
            what = "Largest increase" if r.delta > 0 else (
                "No head's instruction attention rose; smallest decrease" if r.delta < 0
                else "No head's instruction attention changed; first head")
            sentence += (f" {what}: layer {int(r['layer'])} head {int(r['head'])} "
                         f"({r.base:.3f} -> {r.tuned:.3f}, Holm p = {fmt_number(r.p_holm)}).")
        n_nf = int(self.nonfinite["id"].nunique()) if len(self.nonfinite) else 0
        excl = []
        if self.excluded:
            excl.append(f"{len(self.excluded)} prompt{'s' if len(self.excluded) > 1 else ''} "
                        "without instruction tokens")
        if n_nf:
            excl.append(f"{n_nf} prompt{'s' if n_nf > 1 else ''} whose attention mass was "
                        f"non-finite ({_describe_nonfinite(self.nonfinite)})")
        if excl:
            sentence += (f" Excluded from every average and test: {'; '.join(excl)}; "
                         f"{self.n_prompts} prompts used.")
        return {
            "n_prompts": self.n_prompts,
            "n_excluded": len(self.excluded),
            "excluded": list(self.excluded),
            "n_nonfinite": n_nf,
            "nonfinite": self.nonfinite.to_dict("records"),
            "n_fallback_last": len(self.fallback_last),
            "fallback_last": self.fallback_last,
            "query": self.query,
            "alternative": self.alternative,
            "models": dict(self.model_names),
            "instruction_mass": overall.to_dict(),
            "by_layer_group": groups,
            "n_heads": int(len(t)),
            "correction": "holm",
            "alpha": alpha,
            "n_heads_up_holm": sig_up,
            "n_heads_down_holm": sig_down,
            "n_heads_up_bh": bh_up,
            "n_heads_down_bh": bh_down,
            "top_heads": top.to_dict("records"),
            "seed": self.seed,
            "headline": headline,
            "sentence": sentence,
        }

    def plot(self, *, alpha: float = 0.05, correction: str = "holm") -> Any:
        """Layers x heads heatmap of the change in instruction mass, and mean mass per segment
        (:func:`~shiftlens.lenses.attention.plots.head_delta_figure`).

        Args:
            alpha: Heads whose adjusted p-value is below ``alpha`` get a dot.
            correction: ``"holm"`` (the default, as the summary counts heads) or ``"bh"``.

        Example:
            >>> fig = res.show("out/attention.png")  # doctest: +SKIP
        """
        from shiftlens.lenses.attention.plots import head_delta_figure

        return head_delta_figure(self, alpha=alpha, correction=correction)


@dataclass(eq=False, repr=False)
class VerbShiftResult(Result):
    """Do heads gain word pairs with instruction verbs after tuning?
    (:func:`~shiftlens.lenses.attention.compare.verb_shift`)

    Attributes:
        counts: One row per (layer, head, verb): the number of the head's word pairs that
            contain the verb in ``base`` and in ``tuned``, with its ``group`` and ``verb_set``.
        verbs: One row per (group, verb_set, verb): heads where the count rose / fell / tied
            and ``fraction_rose`` = rose / (rose + fell) (NaN when no head changed).
        tests: One row per layer group (and ``all``): mean ``fraction_rose`` of instruction
            and of general verbs, their difference and Welch's t-test.
        pairs: Every word pair of both models (``role`` column), or None when not kept.
        funnel: Per (role, layer, head), what happened to the candidate pairs:
            ``candidates``, ``self`` (a word with itself), ``opposite_sign``, ``unrelated``
            (dropped by the relatedness filter), ``kept`` (None in results saved before it
            was recorded).
        meta: Models, seed, parameters (layers, top_dims, top_k, filter, min_dims, ...),
            versions, and the vocabulary: ``n_words``, ``n_skipped_words``, the encodable
            ``instruction_verbs`` / ``general_verbs`` and the ``missing_verbs``; the filter's
            ``filter_reason``.

    Example:
        >>> res = verb_shift(pair, vocab)  # doctest: +SKIP
        >>> res.meta["missing_verbs"], res.tests.columns[:3].tolist()  # doctest: +SKIP
        ([], ['group', 'mean_instruction', 'mean_general'])
    """

    counts: pd.DataFrame
    verbs: pd.DataFrame
    tests: pd.DataFrame
    pairs: pd.DataFrame | None = None
    funnel: pd.DataFrame | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        """The parameters recorded in ``meta``."""
        return dict(self.meta.get("params") or {})

    def validate(self) -> None:
        """Refuse inconsistent tables (checked after loading).

        Example:
            >>> res.validate()  # doctest: +SKIP
        """
        _need_columns(self.counts, _COUNT_COLUMNS, "counts")
        _need_columns(self.verbs, _VERB_COLUMNS, "verbs")
        _need_columns(self.tests, _VERB_TEST_COLUMNS, "tests")
        verbs = list(self.meta.get("instruction_verbs", [])) + list(
            self.meta.get("general_verbs", []))
        heads = self.counts[["layer", "head"]].drop_duplicates()
        if verbs and (set(self.counts["verb"]) != set(verbs)
                      or len(self.counts) != len(heads) * len(verbs)):
            raise ShiftlensError(f"counts must hold one row per (layer, head, verb): "
                                 f"{len(self.counts)} rows for {len(heads)} heads and "
                                 f"{len(verbs)} verbs")
        groups = list(dict.fromkeys(self.verbs["group"]))
        if list(self.tests["group"]) != groups:
            raise ShiftlensError(f"tests has groups {list(self.tests['group'])}, the verb "
                                 f"table {groups}")
        if verbs and len(self.verbs) != len(groups) * len(verbs):
            raise ShiftlensError(f"verbs must hold one row per (group, verb): {len(self.verbs)} "
                                 f"rows for {len(groups)} groups and {len(verbs)} verbs")
        if self.pairs is not None:
            _need_columns(self.pairs, ("role", "layer", "head", "dim", "q_word", "k_word"),
                          "pairs")
            if not set(self.pairs["role"]) <= set(ROLES):
                raise ShiftlensError(f"pairs has roles {sorted(set(self.pairs['role']))}")
        if self.funnel is not None:
            _need_columns(self.funnel, _FUNNEL_COLUMNS, "funnel")
            f = self.funnel
            parts = f["self"] + f["opposite_sign"] + f["unrelated"] + f["kept"]
            if len(f) and not (parts == f["candidates"]).all():
                raise ShiftlensError("funnel: self + opposite_sign + unrelated + kept must equal "
                                     "candidates in every row")

    def to_frame(self) -> pd.DataFrame:
        """Per-head rows: ``layer, head, group, verb_set, verb, base, tuned``.

        Example:
            >>> res.to_frame().query("verb == 'write'")  # doctest: +SKIP
        """
        return self.counts.copy()

    def filter_counts(self) -> dict[str, dict[str, int]]:
        """Per model, the candidate pairs summed over heads: ``candidates``, ``self``,
        ``opposite_sign``, ``unrelated`` (dropped by the relatedness filter), ``kept``.

        Example:
            >>> verb_res.filter_counts()["base"]["unrelated"]  # doctest: +SKIP
            1234
        """
        if self.funnel is None:
            return {}
        keys = ("candidates", "self", "opposite_sign", "unrelated", "kept")
        return {role: {k: int(sub[k].sum()) for k in keys}
                for role, sub in self.funnel.groupby("role", sort=False)}

    def settings(self) -> str:
        """The parameters that decide the numbers, in words (quoted by the sentence).

        Example:
            >>> verb_res.settings()  # doctest: +SKIP
            '5,000-word vocabulary, top_dims=10, top_k=50, min_dims=1, exclude_self=True, ...'
        """
        p = self.params
        layers = p.get("layers")
        n, n_layers = self.meta.get("n_words"), self.meta.get("n_layers")
        lay = ("all layers" if layers is None or (n_layers is not None
                                                   and list(layers) == list(range(n_layers)))
               else f"layers {', '.join(map(str, layers))}")
        def used(name: str, why: str) -> str:
            asked, got = p.get(name), self.meta.get(f"{name}_used")
            if got is None or asked == got:
                return f"{name}={asked}"
            if asked is None:
                return f"{name}=None (all {got})"
            return f"{name}={asked} ({got} used: {why})"

        return (f"{n:,}-word vocabulary" if isinstance(n, int) else "vocabulary") + (
            f", {used('top_dims', 'd_head')}, {used('top_k', 'the vocabulary size')}, "
            f"min_dims={p.get('min_dims')}, exclude_self={p.get('exclude_self')}, {lay}, "
            f"filter {p.get('filter')} bound to {p.get('filter_model', 'base')}")

    def summary(self, *, alpha: float = 0.05) -> dict[str, Any]:
        """Per layer group: mean fraction of heads with more pairs for instruction vs general
        verbs, Welch's t-test, plus a sentence.

        The sentence states, per group, which verb set's pairs rose in more heads, the test
        with its sidedness and verdict, how many verbs of each set entered the test (a verb
        whose count changed in no head of the group has no fraction and is left out, counted),
        the settings (vocabulary, ``top_dims``, ``top_k``, ``min_dims``, filter: results
        with other settings differ) and how many candidate pairs the relatedness filter
        dropped in each model, and why.

        Args:
            alpha: Significance level of the verdicts.

        Example:
            >>> print(verb_res.summary()["sentence"])  # doctest: +SKIP
        """
        groups = {r.group: {k: _py(v) for k, v in r._asdict().items() if k != "Index"}
                  for r in self.tests.itertuples()}
        alt = str(self.params.get("alternative", "two-sided"))
        n_sets = {vs: int(self.verbs.loc[self.verbs.group == self.verbs.group.iloc[0],
                                         "verb_set"].eq(vs).sum()) if len(self.verbs) else 0
                  for vs in ("instruction", "general")}
        parts = []
        for r in self.tests.itertuples():
            f = digits_for(r.mean_instruction, r.mean_general, None) if np.isfinite(
                r.mean_instruction) and np.isfinite(r.mean_general) else ".3f"
            parts.append(
                f"{r.group}: {fmt_number(r.mean_instruction, f)} vs "
                f"{fmt_number(r.mean_general, f)}, "
                f"{_verb_verdict(r.diff, r.p, alt, alpha)} (p = {fmt_number(r.p)}; "
                f"{r.n_instruction} of {n_sets['instruction']} instruction and {r.n_general} of "
                f"{n_sets['general']} general verbs changed in some head)")
        counts = self.filter_counts()
        reason = self.meta.get("filter_reason") or ""
        if counts and self.params.get("filter") not in (None, "none"):
            (r0, c0), *rest = counts.items()
            drops = (f"{c0['unrelated']:,} of {c0['unrelated'] + c0['kept']:,} same-sign "
                     f"candidate pairs in {r0}" + "".join(
                         f" and {c['unrelated']:,} of {c['unrelated'] + c['kept']:,} in {role}"
                         for role, c in rest))
            filt = (f" The relatedness filter dropped {drops}"
                    + (f" because {reason}" if reason else "") + ".")
        elif counts:
            filt = " No relatedness filter: every same-sign candidate pair was kept."
        else:
            filt = ""
        sentence = (
            "Fraction of heads whose word pairs with a verb rose after tuning (among heads where "
            "the count changed; mean over verbs), instruction vs general verbs, "
            f"{test_label('Welch t-test', alt)} per layer group - " + "; ".join(parts)
            + f". Settings: {self.settings()}." + filt
        )
        return {
            "groups": groups,
            "models": dict(self.model_names),
            "alternative": alt,
            "n_words": self.meta.get("n_words"),
            "n_skipped_words": self.meta.get("n_skipped_words"),
            "missing_verbs": self.meta.get("missing_verbs"),
            "settings": self.settings(),
            "filter_counts": counts,
            "filter_reason": reason,
            "seed": self.meta.get("seed"),
            "sentence": sentence,
        }

    def plot(self) -> Any:
        """Bars per layer group: mean fraction of heads where pairs rose, by verb set
        (:func:`~shiftlens.lenses.attention.plots.verb_shift_figure`).

        Example:
            >>> fig = verb_res.show("out/verbs.png")  # doctest: +SKIP
        """
        from shiftlens.lenses.attention.plots import verb_shift_figure

        return verb_shift_figure(self)
