"""The attribution lens's figures, drawn with :mod:`shiftlens.viz.style`.

Each Result's ``plot`` calls one of these; :meth:`shiftlens.result.Result.show` names the models
under the figure and saves it. :func:`instruction_score_figure` also draws your own scores (a
frame), with bootstrap CIs and a test per category.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shiftlens.errors import ShiftlensError
from shiftlens.lenses.attribution.density import sparsify
from shiftlens.lenses.attribution.derived import (
    FollowedResult,
    PositionResult,
    ResponseSettingsResult,
)
from shiftlens.lenses.attribution.results import (
    ROLES,
    AttributionResult,
    SensitivityResult,
)
from shiftlens.prompts import CONTEXT, INSTRUCTION
from shiftlens.stats import bootstrap_ci, fmt_number, paired_test, test_label, welch_test
from shiftlens.viz.style import (
    BASE_COLOR,
    ROLE_COLORS,
    TUNED_COLOR,
    label_models,
    new_figure,
)

__all__ = [
    "attribution_figure",
    "sensitivity_figure",
    "settings_figure",
    "followed_figure",
    "position_figure",
    "instruction_score_figure",
]

_SEGMENT_COLORS = {INSTRUCTION: "#d1242f", CONTEXT: TUNED_COLOR}


def _sym_limits(m: Any) -> dict[str, float]:
    v = float(m.abs().max()) or 1.0
    return {"vmin": -v, "vmax": v}


def attribution_figure(result: AttributionResult, *, sparsified: bool = False) -> Any:
    """Heatmap of one attribution matrix (prompt tokens x response tokens), density beside it.

    Tokens are shown as people read them (:func:`shiftlens.tokens.display_token`: `` reverse``,
    ``⏎``, never the vocabulary's ``Ġreverse`` / ``Ċ``). Instruction tokens' density bars are
    red, context blue, template grey. The model, the mode and the instruction score head the
    figure; the colour scale sits under the heatmap.

    Args:
        result: An :class:`~shiftlens.lenses.attribution.results.AttributionResult`.
        sparsified: Show the sparsified levels ``s`` (:func:`sparsify`) instead of ``a``.

    Returns:
        The matplotlib figure.

    Example:
        >>> fig = attribution_figure(attribute(model, prompt))  # doctest: +SKIP
    """
    m = result.matrix.detach().double().cpu()
    if sparsified:
        m = sparsify(m)
    shown = result.display_strings
    ins = [shown[int(i)] for i in result.input_positions]
    outs = [shown[i] for i in range(result.n_prompt, len(result.tokens))]
    heat = max(1.2, 0.28 * len(outs))  # inches of heatmap; the density panel gets 1.8
    width = heat + 1.8 + 2.2  # + room for the prompt tokens and the margins
    fig, axes = new_figure(1, 2, width=width, height=max(3.4, 0.2 * len(ins) + 2.2),
                           sharey=True, layout="constrained",
                           gridspec_kw={"width_ratios": [heat, 1.8]})
    ax, ax2 = axes[0]
    im = ax.imshow(m.numpy(), aspect="auto", cmap="magma" if sparsified else "RdBu_r",
                   **({} if sparsified else _sym_limits(m)))
    ax.set_yticks(range(len(ins)), ins)
    ax.set_xticks(range(len(outs)), outs, rotation=90)
    ax.set_xlabel("response token")
    ax.set_ylabel("prompt token")
    cb = fig.colorbar(im, ax=ax, location="bottom", shrink=min(0.9, 4.0 / heat), aspect=25,
                      pad=0.02)  # at most 4 inches long, a thin bar
    cb.set_label("sparsified level s" if sparsified else "attribution a[n, m] = e·∂p/∂e")
    dens = result.density().cpu().numpy()
    colors = [_SEGMENT_COLORS.get(s, "0.6") for s in result.input_segments.tolist()]
    ax2.barh(range(len(ins)), dens, color=colors)
    ax2.set_xlim(0, 1.05)
    ax2.set_xlabel("importance density")
    name = Path(result.model_name).name or result.model_name or "model"
    score = fmt_number(result.score_or_nan(), ".3f")
    title = f"{name}: {result.mode} mode, instruction score {score}"
    fig.suptitle(textwrap.fill(title, max(30, int(width * 11))), fontsize=10)
    return fig


def _category_scores(result: SensitivityResult) -> pd.DataFrame:
    return result.frame.assign(category=result.frame["category"].fillna("(none)"))


def sensitivity_figure(result: SensitivityResult) -> Any:
    """Mean instruction score of base and tuned per category (bars), every prompt a dot.

    The title gives the overall difference and Welch's test as the result's summary states it
    (two-sided unless the analysis asked otherwise), over the prompts both models scored.

    Example:
        >>> fig = sensitivity_figure(instruction_sensitivity(pair, prompts))  # doctest: +SKIP
    """
    df = _category_scores(result)
    cats = sorted(df["category"].unique())
    fig, axes = new_figure(width=max(5.2, 1.1 * len(cats) + 2), height=3.8)
    ax = axes[0, 0]
    x = np.arange(len(cats))
    for k, role in enumerate(ROLES):
        off = (k - 0.5) * 0.38
        means = [df.loc[df["category"] == c, f"{role}_score"].mean() for c in cats]
        ax.bar(x + off, means, 0.38, label=role, color=ROLE_COLORS[role], alpha=0.7)
        for j, c in enumerate(cats):
            v = df.loc[df["category"] == c, f"{role}_score"].to_numpy()
            ax.scatter(np.full(len(v), j + off), v, s=6, color=ROLE_COLORS[role])
    ax.set_xticks(x, cats, rotation=30, ha="right")
    ax.set_xlabel("prompt category")
    ax.set_ylabel("instruction score")
    s = result.summary()
    o = s["overall"]
    ax.set_title(f"tuned − base {fmt_number(o['diff'], '+.3f')}\n"
                 f"{test_label('Welch t-test', s['alternative'])} p = "
                 f"{fmt_number(o['pvalue'], '.2g')}, n = {s['n_scored']}")
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def _setting_panel(ax: Any, res: SensitivityResult, title: str) -> None:
    """Base and tuned mean score with bootstrap 95% CIs and every prompt as a dot; the mean
    response length of each model under its bar."""
    sub = res.frame[res.scored()]
    lengths = res.response_lengths()
    for k, role in enumerate(ROLES):
        v = sub[f"{role}_score"].to_numpy(float)
        mean = float(v.mean()) if v.size else float("nan")
        lo, hi = bootstrap_ci(v) if v.size >= 2 else (mean, mean)
        err = [[mean - lo if np.isfinite(lo) else 0.0], [hi - mean if np.isfinite(hi) else 0.0]]
        ax.bar(k, mean, 0.6, yerr=err, capsize=3, color=ROLE_COLORS[role], alpha=0.75)
        jitter = np.linspace(-0.18, 0.18, max(1, v.size))
        ax.scatter(k + jitter[: v.size], v, s=6, color="0.2", zorder=3)
    ax.set_xticks(range(len(ROLES)),
                  [f"{r}\n{fmt_number(lengths[r], '.1f')} tokens" for r in ROLES])
    s = res.summary()
    o = s["overall"]
    ax.set_title(f"{title}\ntuned − base {fmt_number(o['diff'], '+.3f')}\n"
                 f"{test_label('Welch', s['alternative'])} p = {fmt_number(o['pvalue'], '.2g')}")


def settings_figure(result: ResponseSettingsResult) -> Any:
    """Both response settings side by side: base and tuned on the same reference response, and
    each on its own greedy response (the paper's setting), mean response length under each bar.

    The headline setting's panel comes first and says so.

    Example:
        >>> fig = settings_figure(response_settings(pair, prompts))  # doctest: +SKIP
    """
    h = result.headline
    order = [h, "own" if h == "reference" else "reference"]
    titles = {"reference": "same reference response", "own": "own greedy response (paper)"}
    fig, axes = new_figure(1, 2, width=8.0, height=4.2, sharey=True)
    for ax, key in zip(axes[0], order):
        res = result.reference if key == "reference" else result.own
        _setting_panel(ax, res, titles[key] + (" · headline" if key == h else ""))
    axes[0, 0].set_ylabel("instruction score")
    fig.tight_layout()
    return fig


def followed_figure(result: FollowedResult) -> Any:
    """Box plots of the instruction score of followed vs unfollowed responses per model.

    Example:
        >>> fig = followed_figure(followed_comparison(res, labels))  # doctest: +SKIP
    """
    df = result.frame
    roles = sorted(df["role"].unique())
    fig, axes = new_figure(width=1.8 * len(roles) + 2, height=3.4)
    ax = axes[0, 0]
    data, labels = [], []
    for r in roles:
        for f in (True, False):
            v = df.loc[(df["role"] == r) & (df["followed"] == f), "score"].dropna()
            data.append(v.to_numpy())
            labels.append(f"{r}\n{'followed' if f else 'unfollowed'}")
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.set_ylabel("instruction score")
    s = result.summary()
    alt = s["alternative"]
    name = "two-sided" if alt == "two-sided" else \
        f"one-sided (followed {'>' if alt == 'greater' else '<'} unfollowed)"
    ax.set_title(f"followed − unfollowed {fmt_number(s['pooled']['diff'], '+.3f')}\n"
                 f"{name} Welch p = {fmt_number(s['pooled']['pvalue'], '.2g')}")
    fig.tight_layout()
    return fig


def position_figure(result: PositionResult) -> Any:
    """Mean instruction score (± standard error) against the instruction's placement.

    Example:
        >>> fig = position_figure(position_sensitivity(pair, items))  # doctest: +SKIP
    """
    positions = result.positions
    fig, axes = new_figure(width=5.2, height=3.4)
    ax = axes[0, 0]
    for role in ROLES:
        g = result.frame[result.frame["role"] == role].groupby("position")["score"]
        m = [g.mean().get(p_, np.nan) for p_ in positions]
        se = [g.sem().get(p_, np.nan) for p_ in positions]
        ax.errorbar(range(len(positions)), m, yerr=se, marker="o", capsize=3, label=role,
                    color=ROLE_COLORS[role])
    ax.set_xticks(range(len(positions)), positions)
    ax.set_xlabel("instruction placement")
    ax.set_ylabel("instruction score")
    ax.legend()
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- your own scores
def _score_long(frame: pd.DataFrame, score: str) -> pd.DataFrame:
    df = frame.copy()
    if "category" not in df.columns:
        df["category"] = "all prompts"
    df["category"] = df["category"].fillna("(none)").astype(str)
    if {"base", "tuned"} <= set(df.columns):
        if "prompt_id" not in df.columns:
            df = df.reset_index().rename(columns={"index": "prompt_id"})
        return df.melt(id_vars=["prompt_id", "category"], value_vars=["base", "tuned"],
                       var_name="role", value_name="score")
    role_col = next((c for c in ("role", "model") if c in df.columns), None)
    if role_col is None or score not in df.columns:
        raise ShiftlensError(
            "instruction_score_figure: expected columns base/tuned, or role (or model) and "
            f"{score!r}; got {list(df.columns)}"
        )
    if not set(df[role_col].unique()) <= set(ROLES):
        raise ShiftlensError(
            f"instruction_score_figure: column {role_col!r} must hold 'base'/'tuned', got "
            f"{sorted(map(str, df[role_col].unique()))[:4]}"
        )
    out = df.rename(columns={role_col: "role", score: "score"})
    if "prompt_id" not in out.columns:
        out["prompt_id"] = np.arange(len(out))
    return out[["prompt_id", "category", "role", "score"]]


def _compare(long: pd.DataFrame) -> Any:
    piv = long.pivot_table(index="prompt_id", columns="role", values="score", aggfunc="mean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if {"base", "tuned"} <= set(piv.columns) and piv.dropna().shape[0] >= 2:
            return paired_test(piv["tuned"].to_numpy(), piv["base"].to_numpy())
        t = long[long.role == "tuned"]["score"].to_numpy()
        b = long[long.role == "base"]["score"].to_numpy()
        return welch_test(t, b)


def _group_bars(ax: Any, long: pd.DataFrame, groups: list[str],
                names: Mapping[str, str]) -> float:
    """Mean per group and model with 95% bootstrap CIs; returns the highest bar top."""
    x = np.arange(len(groups))
    top = 0.0
    for off, role, color in ((-0.2, "base", BASE_COLOR), (0.2, "tuned", TUNED_COLOR)):
        means, lo, hi = [], [], []
        for g in groups:
            v = long[(long.role == role) & ((long.category == g) if g != "all" else True)]
            v = v["score"].to_numpy(dtype=float)
            m = float(v.mean()) if v.size else float("nan")
            a, b = bootstrap_ci(v) if v.size >= 2 else (m, m)
            means.append(m)
            lo.append(m - a if np.isfinite(a) else 0.0)
            hi.append(b - m if np.isfinite(b) else 0.0)
            top = max(top, np.nanmax([m + hi[-1], 0.0]))
        label = role + (f": {names[role]}" if names.get(role) else "")
        ax.bar(x + off, means, 0.4, yerr=[lo, hi], capsize=3, color=color, label=label[:60])
    return top


def instruction_score_figure(
    frame: Any,
    model_names: Mapping[str, str] | None = None,
    *,
    score: str = "score",
    title: str = "Instruction score, base vs tuned",
) -> Any:
    """Instruction score base vs tuned per category (Wu et al. 2024, §3).

    Given a :class:`~shiftlens.lenses.attribution.results.SensitivityResult`, its own figure
    (:func:`sensitivity_figure`: mean per category with every prompt as a dot) is drawn with
    the model names under it. Given a frame (your own scores), the figure is built here: mean
    per category with 95% bootstrap CIs, and per category the p-value of a two-sided paired
    t-test across prompts (Welch's test when prompts cannot be paired); the last group pools all
    prompts.

    The instruction score sums the importance density of the instruction tokens (divided by
    log2(2 + number of instruction tokens)); higher means the response rests more on the
    instruction.

    Args:
        frame: A SensitivityResult, or a frame with one row per prompt and ``base`` and
            ``tuned`` (or ``base_score``/``tuned_score``) columns (wide), or one row per prompt
            and model with ``role`` (or ``model``) in {"base", "tuned"} and ``score`` (long);
            optional ``category`` and ``prompt_id`` (or ``id``).
        model_names: ``{"base": ..., "tuned": ...}`` for the legend.
        score: The score column of a long frame.
        title: Axes title.

    Returns:
        The matplotlib figure.

    Raises:
        ShiftlensError: the frame has neither layout, or no finite score.

    Example:
        >>> df = pd.DataFrame({"category": ["a", "a", "b", "b"], "base": [0.2, 0.3, 0.1, 0.2],
        ...                    "tuned": [0.5, 0.6, 0.3, 0.5]})
        >>> fig = instruction_score_figure(df)
        >>> len(fig.axes[0].patches)  # 3 groups (a, b, all) x 2 models
        6
    """
    if isinstance(frame, SensitivityResult):
        return label_models(sensitivity_figure(frame), model_names or frame.model_names)
    if not isinstance(frame, pd.DataFrame):
        raise ShiftlensError("instruction_score_figure takes a SensitivityResult or a "
                             f"DataFrame, got {type(frame).__name__}")
    frame = frame.rename(columns={"base_score": "base", "tuned_score": "tuned"})
    if "prompt_id" not in frame.columns and "id" in frame.columns:
        frame = frame.rename(columns={"id": "prompt_id"})
    long = _score_long(frame, score)
    long = long[np.isfinite(long["score"].astype(float))]
    if long.empty:
        raise ShiftlensError("instruction_score_figure: no finite instruction scores")
    cats = sorted(long["category"].unique())
    groups = cats + (["all"] if len(cats) > 1 else [])
    fig, axes = new_figure(width=max(5.0, 1.1 * len(groups) + 2.5), height=3.8)
    ax = axes[0, 0]
    top = _group_bars(ax, long, groups, model_names or {})
    for xi, g in enumerate(groups):
        sub = long if g == "all" else long[long.category == g]
        r = _compare(sub)
        txt = f"p={r.pvalue:.2g}" if np.isfinite(r.pvalue) else "p=n/a"
        ax.text(xi, top * 1.04 + 1e-9, f"{txt}\nn={sub['prompt_id'].nunique()}", ha="center",
                va="bottom", fontsize=9)
    ax.set_xticks(np.arange(len(groups)), groups, rotation=20 if len(groups) > 4 else 0)
    ax.set_ylim(0, top * 1.25 + 1e-9)
    ax.set_xlabel("prompt category (p: two-sided t-test, paired where prompts pair)")
    ax.set_ylabel("instruction score (importance density)")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return label_models(fig, model_names)
