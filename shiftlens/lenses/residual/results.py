"""The residual lens's Results: similarity, output shift (KL, logit lens), cross-model patching.

Each class is a :class:`shiftlens.result.Result` (saved, loaded, compared, summarised and drawn
by the base). The contract of this lens:

* ``to_frame()`` - the per-unit frame (one row per prompt and layer/hook/segment, per prompt
  and position, or per prompt and patched site);
* ``to_frame(aggregate=True)`` - the same measurements aggregated over prompts (the prompt is
  the statistical unit), with seeded percentile-bootstrap 95% CIs: the table behind
  ``summary()`` and ``plot()``; ``table()`` is its deprecated old name;
* ``summary()`` - headline numbers and a ``"sentence"`` (JSON-safe; the report's metrics);
* ``plot(**opts)`` - the figure (:mod:`.plots`); ``show(path=None, **opts)`` from the base.

``meta`` is :func:`shiftlens.result.make_meta` (``models``, ``seed``, ``params``, ``versions``)
plus ``n_layers`` (the models' depth) and ``prompt_ids`` (:func:`shiftlens.checks.prompt_id`
of every prompt, in order).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shiftlens.errors import ShiftlensError
from shiftlens.lenses.residual import plots
from shiftlens.lenses.residual.core import (
    COMPONENTS,
    DIRECTIONS,
    RESID_HOOKS,
    RESULT_SEGMENTS,
    depth,
    finite_mean,
    hook_name,
)
from shiftlens.result import Result
from shiftlens.stats import TestResult, bootstrap_ci, change_sentence, fmt_number, paired_test
from shiftlens.tokens import display_token

__all__ = ["SimilarityResult", "OutputShiftResult", "PatchingResult", "ALTERNATIVES"]

#: The alternatives of this lens's tests (``"two-sided"`` is the default everywhere).
ALTERNATIVES = ("two-sided", "greater", "less")


# ====================================================================== shared
def _bootstrap_mean(x: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float, int]:
    """Mean of the finite values, its percentile-bootstrap 95% CI and their number."""
    a = np.asarray(x, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    lo, hi = bootstrap_ci(a, n_boot=n_boot, seed=seed)
    return float(a.mean()), lo, hi, int(a.size)


def _ratio_ci(
    num: np.ndarray, den: np.ndarray, min_gap: float, n_boot: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Ratio of means with a percentile bootstrap CI over items (NaN where undefined)."""
    n = num.size
    if n == 0 or abs(den.mean()) < min_gap:
        return float("nan"), float("nan"), float("nan")
    rec = float(num.mean() / den.mean())
    if n < 2:
        return rec, float("nan"), float("nan")
    idx = rng.integers(0, n, (n_boot, n))
    bn, bd = num[idx].mean(1), den[idx].mean(1)
    ok = np.abs(bd) >= min_gap
    if ok.sum() < 2:
        return rec, float("nan"), float("nan")
    lo, hi = np.quantile(bn[ok] / bd[ok], [0.025, 0.975])
    return rec, float(lo), float(hi)


def _params(res: Result, *keys: str) -> dict[str, Any]:
    """``meta["params"]``, checked to hold ``keys`` (a loaded result without them is refused)."""
    p = res.meta.get("params") if isinstance(res.meta, dict) else None
    if not isinstance(p, dict):
        raise ShiftlensError(f"{type(res).__name__}: meta has no 'params'")
    missing = [k for k in keys if k not in p]
    if missing:
        raise ShiftlensError(f"{type(res).__name__}: meta['params'] lacks {missing}")
    return p


def _meta_value(res: Result, key: str) -> Any:
    if not isinstance(res.meta, dict) or key not in res.meta:
        raise ShiftlensError(f"{type(res).__name__}: meta has no {key!r}")
    return res.meta[key]


def _require_columns(df: Any, columns: tuple[str, ...], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ShiftlensError(f"{what} is a {type(df).__name__}, not a DataFrame")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ShiftlensError(f"{what} lacks the columns {missing}")


def _cached(res: Result, key: str, build: Any) -> pd.DataFrame:
    """An aggregate computed once per result (a Result is not changed after it is made)."""
    cache = res.__dict__.setdefault("_aggregates", {})
    if key not in cache:
        cache[key] = build()
    return cache[key].copy()


def _deprecated_table(res: Result) -> pd.DataFrame:
    warnings.warn(f"{type(res).__name__}.table() is deprecated; use "
                  "to_frame(aggregate=True)", DeprecationWarning, stacklevel=3)
    return res.to_frame(aggregate=True)


# ====================================================================== similarity
_SIM_COLUMNS = ("prompt_id", "category", "layer", "hook", "hook_name", "segment", "n_positions",
                "cosine", "cka")
_SIM_TOKEN_COLUMNS = ("prompt_id", "position", "token_id", "segment", "layer", "hook", "cosine")


@dataclass(eq=False, repr=False)
class SimilarityResult(Result):
    """Residual-stream similarity of base and tuned, per prompt, layer, hook and segment.

    Attributes:
        frame: One row per (prompt, layer, hook, segment): ``cosine`` (mean over the segment's
            positions of the per-position cosine), ``cka`` (linear CKA over the segment's
            positions; NaN below 3 positions), ``n_positions``, ``hook_name``, ``category``.
        tokens: With ``per_token=True``, one row per (prompt, position, layer, hook) with the
            position's cosine; otherwise an empty frame with those columns.
        meta: Models, seed, params (``layers``, ``hooks``, ``with_reference``, ``per_token``,
            ``n_boot``), versions, ``n_layers`` and ``prompt_ids``.

    Example:
        >>> res = similarity(pair, prompts)  # doctest: +SKIP
        >>> res.summary()["sentence"]  # doctest: +SKIP
        >>> res.to_frame(aggregate=True).query("segment == 'all'")  # doctest: +SKIP
    """

    frame: pd.DataFrame
    tokens: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self, aggregate: bool = False) -> pd.DataFrame:
        """Per prompt, layer, hook and segment; or (``aggregate=True``) means over prompts.

        The aggregate has one row per hook, segment and layer: ``cosine`` and ``cka`` means over
        prompts with bootstrap 95% CIs (``*_low``, ``*_high``), ``n_cosine``/``n_cka`` (prompts
        with a finite value) and ``depth`` (``l``, ``l + 0.5``, ``l + 1`` for pre/mid/post).

        Example:
            >>> res.to_frame().query("segment == 'response'")  # doctest: +SKIP
            >>> res.to_frame(aggregate=True).head()  # doctest: +SKIP
        """
        if not aggregate:
            return self.frame.copy()
        return _cached(self, "aggregate", self._aggregate)

    def table(self) -> pd.DataFrame:
        """Deprecated: ``to_frame(aggregate=True)``.

        Example:
            >>> res.table()  # doctest: +SKIP
        """
        return _deprecated_table(self)

    def _aggregate(self) -> pd.DataFrame:
        p = _params(self, "n_boot")
        n_boot, seed = int(p["n_boot"]), int(self.meta.get("seed") or 0)
        rows = []
        for (hook, seg, layer), g in self.frame.groupby(["hook", "segment", "layer"], sort=True):
            cm, clo, chi, n = _bootstrap_mean(g["cosine"].to_numpy(), n_boot, seed)
            km, klo, khi, nk = _bootstrap_mean(g["cka"].to_numpy(), n_boot, seed)
            rows.append(dict(
                hook=hook, segment=seg, layer=int(layer), depth=depth(int(layer), hook),
                cosine=cm, cosine_low=clo, cosine_high=chi, n_cosine=n,
                cka=km, cka_low=klo, cka_high=khi, n_cka=nk))
        return pd.DataFrame(rows).sort_values(["segment", "depth"]).reset_index(drop=True)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: where (depth) and on which segment the streams drift apart most.

        Returns:
            A dict with ``final`` (per segment: cosine and CKA at the last ``resid_post``
            with CIs), ``lowest`` (the depth with the lowest mean cosine over all positions),
            ``per_layer`` (mean cosine at each layer's ``resid_post``, all positions) and a
            ``sentence``.

        Example:
            >>> print(res.summary()["sentence"])  # doctest: +SKIP
        """
        t = self.to_frame(aggregate=True)
        n_prompts = len(_meta_value(self, "prompt_ids"))
        out: dict[str, Any] = {"models": self.model_names, "n_prompts": n_prompts}
        final: dict[str, Any] = {}
        last = t[(t.hook == "resid_post") & (t.layer == t.layer.max())]
        for _, r in last.iterrows():
            if r.n_cosine == 0:
                continue
            final[r.segment] = dict(
                layer=int(r.layer), cosine=r.cosine, cosine_ci=[r.cosine_low, r.cosine_high],
                cka=r.cka, cka_ci=[r.cka_low, r.cka_high], n_prompts=int(r.n_cosine),
            )
        out["final"] = final
        allp = t[(t.segment == "all") & (t.n_cosine > 0)]
        out["per_layer"] = {
            int(r.layer): r.cosine for _, r in allp[allp.hook == "resid_post"].iterrows()
        }
        if not (len(allp) and allp.cosine.notna().any()):
            out["sentence"] = "No finite similarity values."
            return out
        r = allp.loc[allp.cosine.idxmin()]
        out["lowest"] = dict(layer=int(r.layer), hook=r.hook, cosine=r.cosine,
                             cosine_ci=[r.cosine_low, r.cosine_high], n_prompts=int(r.n_cosine))
        segs = {s: v["cosine"] for s, v in final.items() if s not in ("all", "bos")}
        seg_txt = ""
        if segs:
            worst = min(segs, key=lambda s: segs[s] if np.isfinite(segs[s]) else np.inf)
            seg_txt = (f"; at the last layer the {worst} segment has drifted most "
                       f"(cosine {segs[worst]:.3f})")
        n_layers = int(_meta_value(self, "n_layers"))
        n_cmp = len(_params(self, "layers")["layers"])
        scope = (f"{n_layers} layers" if n_cmp == n_layers
                 else f"{n_cmp} of {n_layers} layers compared")
        hooks = sorted(set(t.hook), key=RESID_HOOKS.index)
        if len(hooks) < len(RESID_HOOKS):
            scope += f" ({', '.join(hooks)} only)"
        undefined = ""
        if int(r.n_cosine) < n_prompts:
            undefined = (f", over {int(r.n_cosine)} of {n_prompts} prompts: the cosine is "
                         "undefined where a residual vector is zero")
        out["sentence"] = (
            f"Over {n_prompts} prompts and {scope}, the residual streams are least similar at "
            f"blocks.{int(r.layer)}.hook_{r.hook} (mean cosine {r.cosine:.3f}, 95% CI "
            f"[{fmt_number(r.cosine_low, '.3f')}, {fmt_number(r.cosine_high, '.3f')}]"
            f"{undefined}){seg_txt}."
        )
        return out

    def plot(self, metric: str = "both") -> Any:
        """One panel per segment (a grid, at most 3 across): similarity against depth.

        Args:
            metric: ``"cosine"``, ``"cka"`` or ``"both"`` (two lines per panel).

        Returns:
            A matplotlib Figure.

        Example:
            >>> fig = res.plot(metric="cosine")  # doctest: +SKIP
        """
        return plots.similarity_figure(self, metric=metric)

    def validate(self) -> None:
        """Refuse inconsistent fields: columns, hooks/layers vs params, rows per prompt.

        Example:
            >>> res.validate()  # doctest: +SKIP
        """
        _require_columns(self.frame, _SIM_COLUMNS, "SimilarityResult.frame")
        _require_columns(self.tokens, _SIM_TOKEN_COLUMNS, "SimilarityResult.tokens")
        p = _params(self, "layers", "hooks", "per_token", "n_boot")
        ids = _meta_value(self, "prompt_ids")
        _meta_value(self, "n_layers")
        f = self.frame
        if not set(f.hook) <= set(p["hooks"]) <= set(RESID_HOOKS):
            raise ShiftlensError(f"SimilarityResult: hooks {sorted(set(f.hook))} are not the "
                                 f"compared hooks {p['hooks']}")
        if not set(f.layer) <= set(p["layers"]) or not set(f.segment) <= set(RESULT_SEGMENTS):
            raise ShiftlensError("SimilarityResult: rows for layers or segments that were not "
                                 "compared")
        if not set(f.prompt_id) <= set(ids):
            raise ShiftlensError("SimilarityResult: frame holds prompt ids not in meta")
        sites = f[["hook", "layer", "hook_name"]].drop_duplicates()
        if any(hook_name(h, int(l_)) != n for h, l_, n in zip(sites.hook, sites.layer,
                                                                sites.hook_name)):
            raise ShiftlensError("SimilarityResult: hook_name disagrees with hook and layer")
        n_all = int((f.segment == "all").sum())
        if n_all != len(ids) * len(p["layers"]) * len(p["hooks"]):
            raise ShiftlensError(f"SimilarityResult: {n_all} 'all' rows for {len(ids)} prompts x "
                                 f"{len(p['layers'])} layers x {len(p['hooks'])} hooks")
        want = int(f.n_positions[f.segment == "all"].sum()) if p["per_token"] else 0
        if len(self.tokens) != want:
            raise ShiftlensError(f"SimilarityResult: {len(self.tokens)} token rows, expected "
                                 f"{want}")


# ====================================================================== output shift
_KL_COLUMNS = ("prompt_id", "category", "position", "token_id", "segment", "layer", "site", "kl",
               "top1_agree")
_TOP_COLUMNS = ("token_id", "token", "count", "mean_logprob_rise", "mean_p_tuned", "mean_p_base",
                "kl_share")


@dataclass(eq=False, repr=False)
class OutputShiftResult(Result):
    """Per-token KL(tuned || base) at the output and through the logit lens, and rising tokens.

    Attributes:
        frame: One row per (prompt, position, layer): ``kl`` of the two models' next-token
            distributions; ``site`` is ``"blocks.{l}.hook_resid_post"`` (the logit lens at
            layer ``l``) or ``"logits"`` (the real output, ``layer == n_layers``);
            ``top1_agree`` whether both models' most likely next token is the same.
        top_tokens: One row per vocabulary token that was among the ``top_k`` contributors to
            KL at some counted position: ``count`` (such positions), ``mean_logprob_rise``
            (mean of log p_tuned - log p_base there), ``mean_p_tuned``/``mean_p_base`` (there)
            and ``kl_share`` (its summed contribution p_tuned (log p_tuned - log p_base) over
            all counted positions, divided by their number). Sorted by ``count``, then share.
        n_counted_positions: Positions counted for ``top_tokens`` (those of ``segments``).
        lens_check_max_abs_diff: Largest |lens(final resid_post) - logits| seen on the first
            batch (the logit-lens consistency check; NaN when the last layer was not read, so
            there was nothing to check).
        meta: Models, seed, params (``layers``, ``with_reference``, ``segments``, ``top_k``,
            ``chunk_rows``, ``n_boot``), versions, ``n_layers`` and ``prompt_ids``.

    Example:
        >>> res = output_shift(pair, prompts)  # doctest: +SKIP
        >>> res.top_tokens.head(10)  # doctest: +SKIP
    """

    frame: pd.DataFrame
    top_tokens: pd.DataFrame
    n_counted_positions: int = 0
    lens_check_max_abs_diff: float = float("nan")
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self, aggregate: bool = False) -> pd.DataFrame:
        """Per prompt, position and layer; or (``aggregate=True``) per segment and layer.

        The aggregate averages each prompt's positions first, then the prompts (mean with a
        bootstrap 95% CI ``kl_low``/``kl_high``), and gives the mean top-1 agreement;
        ``segment == "all"`` pools every position. ``layer == n_layers`` is the real output.

        Example:
            >>> res.to_frame().query("site == 'logits'")  # doctest: +SKIP
            >>> res.to_frame(aggregate=True).query("segment == 'all'")  # doctest: +SKIP
        """
        if not aggregate:
            return self.frame.copy()
        return _cached(self, "aggregate", self._aggregate)

    def table(self) -> pd.DataFrame:
        """Deprecated: ``to_frame(aggregate=True)``.

        Example:
            >>> res.table()  # doctest: +SKIP
        """
        return _deprecated_table(self)

    def _aggregate(self) -> pd.DataFrame:
        p = _params(self, "n_boot")
        n_boot, seed = int(p["n_boot"]), int(self.meta.get("seed") or 0)
        f = self.frame
        g = pd.concat([f.assign(segment_=f.segment), f.assign(segment_="all")],
                      ignore_index=True)
        per_prompt = g.groupby(["segment_", "layer", "site", "prompt_id"], sort=True).agg(
            kl=("kl", "mean"), agree=("top1_agree", "mean")).reset_index()
        rows = []
        for (seg, layer, site), h in per_prompt.groupby(["segment_", "layer", "site"]):
            m, lo, hi, n = _bootstrap_mean(h.kl.to_numpy(), n_boot, seed)
            rows.append(dict(segment=seg, layer=int(layer), site=site, kl=m, kl_low=lo,
                             kl_high=hi, top1_agree=finite_mean(h.agree.to_numpy()), n_prompts=n))
        return pd.DataFrame(rows).sort_values(["segment", "layer"]).reset_index(drop=True)

    def summary(self) -> dict[str, Any]:
        """Headline: output KL per segment with CIs, KL by depth, the top rising tokens.

        Example:
            >>> print(res.summary()["sentence"])  # doctest: +SKIP
        """
        t = self.to_frame(aggregate=True)
        out: dict[str, Any] = {"models": self.model_names,
                               "n_prompts": len(_meta_value(self, "prompt_ids"))}
        out["output_kl"] = {
            r.segment: dict(kl=r.kl, ci=[r.kl_low, r.kl_high], top1_agree=r.top1_agree,
                            n_prompts=int(r.n_prompts))
            for _, r in t[t.site == "logits"].iterrows()
        }
        lens = t[(t.site != "logits") & (t.segment == "all")]
        out["lens_kl_per_layer"] = {int(r.layer): r.kl for _, r in lens.iterrows()}
        out["top_tokens"] = [
            dict(token=r.token, token_id=int(r.token_id), count=int(r["count"]),
                 mean_logprob_rise=r.mean_logprob_rise, kl_share=r.kl_share)
            for _, r in self.top_tokens.head(10).iterrows()
        ]
        out["lens_check_max_abs_diff"] = self.lens_check_max_abs_diff
        out["sentence"] = self._sentence(out)
        return out

    def _sentence(self, out: dict[str, Any]) -> str:
        a = out["output_kl"].get("all")
        if a is None:
            return "No positions were analysed."
        segs = {s: v["kl"] for s, v in out["output_kl"].items() if s != "all"
                and np.isfinite(v["kl"])}
        seg_txt = ""
        if segs:
            hi_s = max(segs, key=segs.get)
            seg_txt = f", highest on the {hi_s} segment ({segs[hi_s]:.3g})"
        lens_txt = ""
        per_layer = out["lens_kl_per_layer"]
        if per_layer:
            ks = sorted(per_layer)
            lens_txt = (f"; through the logit lens it is {per_layer[ks[0]]:.3g} after layer "
                        f"{ks[0]} and {per_layer[ks[-1]]:.3g} after layer {ks[-1]} (of "
                        f"{int(_meta_value(self, 'n_layers'))})")
        tok_txt = ""
        if out["top_tokens"]:
            tok_txt = "; tokens the tuned model favours most: " + ", ".join(
                repr(display_token(d["token"])) for d in out["top_tokens"][:5])
        return (f"KL(tuned || base) of the next-token distributions averages {a['kl']:.3g} nats "
                f"per token (95% CI [{a['ci'][0]:.3g}, {a['ci'][1]:.3g}], {a['n_prompts']} "
                f"prompts){seg_txt}{lens_txt}{tok_txt}.")

    def plot(self, n_tokens: int = 15) -> Any:
        """KL by layer per segment (logit lens; output as the last point) and the top tokens.

        Args:
            n_tokens: Rising tokens shown in the right panel (at least 1).

        Example:
            >>> fig = res.plot(n_tokens=10)  # doctest: +SKIP
        """
        return plots.output_shift_figure(self, n_tokens=n_tokens)

    def validate(self) -> None:
        """Refuse inconsistent fields: sites vs layers, equal rows per site, top-token counts.

        Example:
            >>> res.validate()  # doctest: +SKIP
        """
        _require_columns(self.frame, _KL_COLUMNS, "OutputShiftResult.frame")
        _require_columns(self.top_tokens, _TOP_COLUMNS, "OutputShiftResult.top_tokens")
        p = _params(self, "layers", "segments", "top_k", "n_boot")
        n_layers = int(_meta_value(self, "n_layers"))
        if not set(self.frame.prompt_id) <= set(_meta_value(self, "prompt_ids")):
            raise ShiftlensError("OutputShiftResult: frame holds prompt ids not in meta")
        f = self.frame
        want = np.where(f.layer.to_numpy() == n_layers, "logits",
                        np.char.add(np.char.add("blocks.", f.layer.to_numpy().astype(str)),
                                    ".hook_resid_post"))
        if len(f) and not (f.site.to_numpy().astype(str) == want).all():
            raise ShiftlensError("OutputShiftResult: site disagrees with layer (the output is "
                                 f"layer {n_layers}, the lens of layer l is "
                                 "blocks.{l}.hook_resid_post)")
        if not set(f.layer) <= set(p["layers"]) | {n_layers}:
            raise ShiftlensError("OutputShiftResult: rows for layers that were not read")
        sizes = f.groupby("site").size()
        if len(sizes) and sizes.nunique() != 1:
            raise ShiftlensError("OutputShiftResult: the sites hold different numbers of "
                                 "positions")
        total = int(self.top_tokens["count"].sum())
        if total != int(p["top_k"]) * int(self.n_counted_positions):
            raise ShiftlensError(f"OutputShiftResult: top-token counts sum to {total}, not "
                                 f"top_k x counted positions = {p['top_k']} x "
                                 f"{self.n_counted_positions}")


# ====================================================================== patching
_PATCH_COLUMNS = ("prompt_id", "category", "direction", "layer", "component", "hook_name",
                  "n_patched", "lp_patched", "lp_target", "lp_source", "recovery", "positions")
_PATCH_PROMPT_COLUMNS = ("prompt_id", "category", "response", "n_response", "n_patched",
                         "lp_base", "lp_tuned", "gap", "defined")


@dataclass(eq=False, repr=False)
class PatchingResult(Result):
    """Cross-model activation patching: recovered fraction of the response log-prob gap.

    For direction ``"tuned->base"`` (base run, tuned activations patched in) a prompt's
    recovery is ``(lp_patched - lp_base) / (lp_tuned - lp_base)``; for ``"base->tuned"``
    (tuned run, base activations) it is ``(lp_patched - lp_tuned) / (lp_base - lp_tuned)``.
    Either way 1 means the patched run scores the response like the model the activations
    came from, 0 like the model that was run. ``lp`` is the summed log-probability of the
    tuned model's response. Where ``|gap| < min_gap`` recovery is undefined (NaN) and
    :attr:`note` says why.

    Attributes:
        frame: One row per (prompt, direction, layer, component): ``lp_target`` (clean run of
            the patched model), ``lp_source`` (the other model), ``lp_patched``, ``recovery``,
            ``n_patched`` (positions replaced), ``hook_name``, ``positions``.
        prompts: One row per prompt: ``response`` text, ``n_response``, ``n_patched``,
            ``lp_base``, ``lp_tuned``, ``gap`` (tuned - base), ``defined``.
        note: Why some recoveries are NaN ("" when all are defined).
        meta: Models, seed, params (``layers``, ``components``, ``directions``, ``positions``,
            ``response``, ``max_new_tokens``, ``min_gap``, ``n_boot``), versions,
            ``n_layers`` and ``prompt_ids``.

    Example:
        >>> res = patching(pair, prompts)  # doctest: +SKIP
        >>> res.to_frame(aggregate=True).query("component == 'resid_pre'")  # doctest: +SKIP
    """

    frame: pd.DataFrame
    prompts: pd.DataFrame
    note: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self, aggregate: bool = False) -> pd.DataFrame:
        """Per prompt, direction, layer and component; or (``aggregate=True``) pooled over prompts.

        The aggregate has one row per direction, component and layer: ``recovery`` is the ratio
        of means over prompts, ``mean(lp_patched - lp_target) / mean(lp_source - lp_target)``
        (robust to prompts with a small gap), with a bootstrap CI resampling prompts;
        ``mean_prompt_recovery`` averages the defined per-prompt ratios; NaN where the mean gap
        is below ``min_gap``.

        Example:
            >>> res.to_frame().groupby("component").recovery.mean()  # doctest: +SKIP
            >>> res.to_frame(aggregate=True)  # doctest: +SKIP
        """
        if not aggregate:
            return self.frame.copy()
        return _cached(self, "aggregate", self._aggregate)

    def table(self) -> pd.DataFrame:
        """Deprecated: ``to_frame(aggregate=True)``.

        Example:
            >>> res.table()  # doctest: +SKIP
        """
        return _deprecated_table(self)

    def _aggregate(self) -> pd.DataFrame:
        p = _params(self, "n_boot", "min_gap")
        n_boot, min_gap = int(p["n_boot"]), float(p["min_gap"])
        rng = np.random.default_rng(int(self.meta.get("seed") or 0))
        rows = []
        for (d, comp, layer), g in self.frame.groupby(["direction", "component", "layer"],
                                                      sort=True):
            num = (g.lp_patched - g.lp_target).to_numpy(np.float64)
            den = (g.lp_source - g.lp_target).to_numpy(np.float64)
            rec, lo, hi = _ratio_ci(num, den, min_gap, n_boot, rng)
            rows.append(dict(
                direction=d, component=comp, layer=int(layer), hook_name=g.hook_name.iloc[0],
                recovery=rec, recovery_low=lo, recovery_high=hi,
                mean_prompt_recovery=finite_mean(g.recovery.to_numpy()),
                mean_gap=float(den.mean()), n_prompts=int(len(g)),
                n_defined=int(np.isfinite(g.recovery.to_numpy(np.float64)).sum()),
            ))
        return pd.DataFrame(rows)

    def gap_test(self) -> TestResult:
        """Is there a gap to recover? A paired t-test of ``lp_tuned`` against ``lp_base``.

        Over prompts, with the alternative the result was computed with (``"two-sided"``
        unless ``patching(alternative=...)`` asked otherwise); the CI is the seeded bootstrap
        95% CI of the mean gap (``n_boot`` resamples), the one the summary reports.

        Example:
            >>> t = res.gap_test(); t.pvalue, t.ci_low, t.ci_high  # doctest: +SKIP
        """
        p = _params(self, "n_boot")
        alt = p.get("alternative", "two-sided")
        q = self.prompts
        t = paired_test(q.lp_tuned.to_numpy(np.float64), q.lp_base.to_numpy(np.float64),
                        alternative=alt, ci=False)
        _, lo, hi, _ = _bootstrap_mean(q.gap.to_numpy(np.float64), int(p["n_boot"]),
                                       int(self.meta.get("seed") or 0))
        return dataclasses.replace(t, ci_low=lo, ci_high=hi)

    def gap_caveat(self) -> str:
        """Why the recovered fractions may mean little: the gap's 95% CI includes 0 ("" if not).

        Not said where the mean gap is below ``min_gap`` (:attr:`note` says that) or with one
        prompt (no CI).

        Example:
            >>> res.gap_caveat()  # doctest: +SKIP
            ''
        """
        p = _params(self, "min_gap")
        t = self.gap_test()
        if not (np.isfinite(t.ci_low) and np.isfinite(t.diff)) or abs(t.diff) < float(
                p["min_gap"]):
            return ""
        if t.ci_low <= 0 <= t.ci_high:
            return (f"the tuned-vs-base gap is not reliably non-zero: its mean {t.diff:+.3g} "
                    f"nats has a 95% CI [{t.ci_low:.3g}, {t.ci_high:.3g}] that includes 0 "
                    f"({t.n_a} prompts), so the recovered fractions divide by a gap that may be "
                    "zero and do not show where the tuned behaviour lives")
        return ""

    def summary(self) -> dict[str, Any]:
        """Headline: the gap and its test, and per direction and component the layer recovering
        most.

        The sentence states the gap's direction and verdict in words (a two-sided paired t-test
        unless ``alternative`` was given), says when the gap is not reliably non-zero
        (:meth:`gap_caveat`), and names per direction the attention/MLP site recovering most
        (residual patches trivially carry everything computed so far).

        Example:
            >>> print(res.summary()["sentence"])  # doctest: +SKIP
        """
        p = _params(self, "directions", "components", "response", "positions", "n_boot")
        t = self.to_frame(aggregate=True)
        test = self.gap_test()
        caveat = self.gap_caveat()
        out: dict[str, Any] = {
            "models": self.model_names, "n_prompts": int(len(self.prompts)),
            "gap": dict(mean=test.diff, ci=[test.ci_low, test.ci_high],
                        n_defined=int(self.prompts.defined.sum()),
                        reliable=not caveat and bool(np.isfinite(test.ci_low))),
            "gap_test": dict(test=test.test, alternative=test.alternative,
                             statistic=test.statistic, pvalue=test.pvalue, n=test.n_a),
            "response": p["response"], "positions": p["positions"],
            "note": self.note, "caveat": caveat, "best": {},
        }
        parts = []
        for d in p["directions"]:
            best = out["best"][d] = {}
            for comp in p["components"]:
                g = t[(t.direction == d) & (t.component == comp) & t.recovery.notna()]
                if not len(g):
                    best[comp] = None
                    continue
                r = g.loc[g.recovery.idxmax()]
                best[comp] = dict(layer=int(r.layer), recovery=r.recovery,
                                  ci=[r.recovery_low, r.recovery_high])
            found = {c: v for c, v in best.items() if v is not None}
            comps = [c for c in found if c in ("attn_out", "mlp_out")] or list(found)
            if comps:
                c = max(comps, key=lambda c: found[c]["recovery"])
                v = found[c]
                ci = v["ci"]
                ci_txt = (f"95% CI [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]%"
                          if np.isfinite(ci[0]) and np.isfinite(ci[1]) else "no CI")
                parts.append(f"{d}: {c} of layer {v['layer']} recovers "
                             f"{100 * v['recovery']:.0f}% ({ci_txt})")
        if not np.isfinite(test.diff) or not parts:
            out["sentence"] = "Recovery is undefined: " + (self.note or "no defined gap") + "."
            return out
        kind = {"greedy": "tuned model's greedy", "reference": "reference",
                "given": "given"}.get(p["response"], str(p["response"]))
        gap = change_sentence(
            f"the log-probability of the {kind} response (summed over its tokens)",
            float(self.prompts.lp_base.mean()), float(self.prompts.lp_tuned.mean()),
            p=test.pvalue, test="paired t-test", alternative=test.alternative,
            ci=[test.ci_low, test.ci_high], n=test.n_a, unit=" nats")
        if caveat:
            gap += (" The gap is not reliably non-zero (its 95% CI includes 0), so the recovered "
                    "fractions below may mean little.")
        elif not np.isfinite(test.ci_low):
            gap += " With one prompt the gap has no confidence interval."
        out["sentence"] = (gap + " Fraction of the gap recovered by patching one site: "
                           + "; ".join(parts) + "." + (f" Note: {self.note}" if self.note else ""))
        return out

    def plot(self) -> Any:
        """Recovery against layer, one line per component, one panel per direction.

        Example:
            >>> fig = res.plot()  # doctest: +SKIP
        """
        return plots.patching_figure(self)

    def validate(self) -> None:
        """Refuse inconsistent fields: one row per prompt and site, gap = lp_tuned - lp_base.

        Example:
            >>> res.validate()  # doctest: +SKIP
        """
        _require_columns(self.frame, _PATCH_COLUMNS, "PatchingResult.frame")
        _require_columns(self.prompts, _PATCH_PROMPT_COLUMNS, "PatchingResult.prompts")
        p = _params(self, "layers", "components", "directions", "min_gap", "n_boot")
        ids = list(_meta_value(self, "prompt_ids"))
        _meta_value(self, "n_layers")
        if list(self.prompts.prompt_id) != ids:
            raise ShiftlensError("PatchingResult: the prompts table does not list meta's prompt "
                                 "ids in order")
        if not set(p["components"]) <= set(COMPONENTS) or not set(p["directions"]) <= set(
                DIRECTIONS):
            raise ShiftlensError("PatchingResult: unknown components or directions in params")
        want = len(ids) * len(p["directions"]) * len(p["layers"]) * len(p["components"])
        if len(self.frame) != want:
            raise ShiftlensError(f"PatchingResult: {len(self.frame)} rows, expected {want} ("
                                 "prompts x directions x layers x components)")
        f = self.frame
        if not (set(f.direction) <= set(p["directions"]) and set(f.component) <= set(
                p["components"]) and set(f.layer) <= set(p["layers"])):
            raise ShiftlensError("PatchingResult: rows for sites that were not patched")
        q = self.prompts
        gap = (q.lp_tuned - q.lp_base).to_numpy(np.float64)
        if not np.allclose(q.gap.to_numpy(np.float64), gap, rtol=0, atol=1e-9, equal_nan=True):
            raise ShiftlensError("PatchingResult: gap != lp_tuned - lp_base")
        if not (q.defined.to_numpy(bool) == (np.abs(gap) >= float(p["min_gap"]))).all():
            raise ShiftlensError("PatchingResult: 'defined' disagrees with |gap| >= min_gap")
