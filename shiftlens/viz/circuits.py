"""Interactive views (circuitsvis, offline): attention patterns, token importance, concept words.

* :func:`attention_patterns` - base and tuned attention patterns of one prompt side by side,
  per layer, plus their difference (tuned - base).
* :func:`importance_tokens` - the prompt's tokens coloured by importance density (Wu et al.
  2024, §3) for base, tuned and the difference; :func:`token_rows` is the generic version.
* :func:`concept_table` - the top words of each principal component of a layer's W_out
  (Wu et al. 2024, §5), base beside tuned, as a plain HTML table (no JavaScript needed).

Every function returns a :class:`shiftlens.viz.html.Visualization` (self-contained HTML,
``_repr_html_`` for notebooks) whose ``data`` holds the numbers it shows.
"""

from __future__ import annotations

import html as _html
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from shiftlens.errors import ShiftlensError
from shiftlens.prompts import SEGMENTS, InstructionPrompt, TokenizedPrompt
from shiftlens.tokens import display_token, token_strings  # token_strings re-exported
from shiftlens.viz.html import Visualization

__all__ = ["attention_patterns", "token_strings", "token_rows", "importance_tokens", "concept_table"]

ROLES = ("base", "tuned")
_SEGMENT_NOTE = (
    '<div class="sl-muted">Underline: <span class="sl-tok sl-seg-instruction">instruction</span> '
    '<span class="sl-tok sl-seg-context">context</span> '
    '<span class="sl-tok sl-seg-template">template</span> '
    '<span class="sl-tok sl-seg-response">BOS / response</span></div>'
)


def _segments_html(tokens: Sequence[str], segments: Sequence[int]) -> str:
    """The tokens underlined by segment, each shown by :func:`~shiftlens.tokens.display_token`."""
    spans = []
    for t, s in zip(tokens, segments):
        shown = display_token(t)
        spans.append(f'<span class="sl-tok sl-seg-{SEGMENTS[int(s)]}" '
                     f'title="{SEGMENTS[int(s)]}">{_html.escape(shown)}</span>')
    return '<div class="sl-segments">' + "".join(spans) + "</div>"


def _as_prompt(prompt: InstructionPrompt | str) -> InstructionPrompt:
    if isinstance(prompt, InstructionPrompt):
        return prompt
    if isinstance(prompt, str):
        return InstructionPrompt(prompt)
    raise ShiftlensError(f"expected an InstructionPrompt or a string, got {type(prompt).__name__}")


def _layers(pair: Any, layers: int | Sequence[int] | None) -> list[int]:
    n = int(pair.cfg.n_layers)
    if layers is None:
        return list(range(n))
    sel = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
    if not sel:
        raise ShiftlensError("attention_patterns: no layers given")
    for layer in sel:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n:
            raise ShiftlensError(
                f"attention_patterns: layer {layer!r} out of range for {pair.names['base']!r} "
                f"(n_layers={n})"
            )
    return [int(x) for x in dict.fromkeys(sel)]


def _heads(pair: Any, heads: Sequence[int] | None) -> list[int]:
    n = int(pair.cfg.n_heads)
    if heads is None:
        return list(range(n))
    sel = list(heads)
    for h in sel:
        if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or not 0 <= h < n:
            raise ShiftlensError(
                f"attention_patterns: head {h!r} out of range for {pair.names['base']!r} "
                f"(n_heads={n})"
            )
    if not sel:
        raise ShiftlensError("attention_patterns: no heads given")
    return [int(x) for x in dict.fromkeys(sel)]


@torch.no_grad()
def attention_patterns(
    pair: Any,
    prompt: InstructionPrompt | str,
    layers: int | Sequence[int] | None = None,
    *,
    heads: Sequence[int] | None = None,
    response: bool | str = True,
    difference: bool = True,
) -> Visualization:
    """Base and tuned attention patterns of one prompt, side by side, per layer.

    Both models run on identical tokens (:meth:`shiftlens.ModelPair.tokenize`, capture of
    ``blocks.{l}.attn.hook_pattern``); each layer gets a row with circuitsvis
    ``AttentionHeads`` for base, for tuned and (``difference=True``) for tuned - base (blue:
    less attention after tuning, red: more).

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        prompt: The prompt (a plain string is a prompt without spans).
        layers: A layer or layers (default: every layer; pass a few for large models, the
            page holds ``n_heads * pos**2`` numbers per layer and model).
        heads: Heads to show (default all).
        response: ``True`` appends the prompt's reference response when it has one, a string
            appends that text, ``False`` shows the prompt only.
        difference: Add the tuned - base panel.

    Returns:
        A :class:`Visualization`; ``data["patterns"][role][layer]`` is the ``[head, q, k]``
        tensor shown and ``data["tokens"]`` the token strings (the views label them with
        :func:`~shiftlens.tokens.display_token`: a newline reads ``⏎``, a NUL ``\\x00``).

    Raises:
        ShiftlensError: a layer or head out of range, an empty response, too many tokens.

    Example:
        >>> from shiftlens.zoo import toy_pair, toy_prompts
        >>> vis = attention_patterns(toy_pair(), toy_prompts(1)[0], layers=[1])  # doctest: +SKIP
        >>> vis.save("out/attention.html")  # doctest: +SKIP
    """
    from shiftlens.capture import run_hooks_batched

    prompt = _as_prompt(prompt)
    sel = _layers(pair, layers)
    hsel = _heads(pair, heads)
    if isinstance(response, str):
        resp: str | None = response
    elif response:
        resp = prompt.reference or None
    else:
        resp = None
    tp: TokenizedPrompt = pair.tokenize(prompt, response=resp)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in sel]
    tok = pair.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    patterns: dict[str, dict[int, Tensor]] = {}
    for role, model in pair:
        acts = run_hooks_batched(model, [tp], names, batch_size=1, reduce=None, progress=False,
                                 pad_id=pad)
        patterns[role] = {
            layer: acts[name][0][hsel].float().cpu() for layer, name in zip(sel, names)
        }
    tokens = token_strings(tok, tp.tokens)
    shown = [display_token(t) for t in tokens]  # no blank or glyph-less label in the views
    vis = Visualization(f"Attention patterns, prompt {prompt.label}")
    vis.add_html(
        f'<div class="sl-muted">base: {_html.escape(pair.names["base"])} &middot; tuned: '
        f'{_html.escape(pair.names["tuned"])} &middot; {len(tokens)} tokens '
        f'({tp.n_prompt} prompt{", response appended" if resp else ""}). Click a head to enlarge; '
        "rows are query (destination) tokens, columns key (source) tokens.</div>"
    )
    vis.add_html(_segments_html(tokens, tp.segments.tolist()) + _SEGMENT_NOTE)
    for layer in sel:
        head_names = [f"L{layer}H{h}" for h in hsel]
        cols = []
        for role in ROLES:
            v = Visualization()
            v.add_component("AttentionHeads", {
                "attention": patterns[role][layer], "tokens": shown,
                "attentionHeadNames": head_names, "maxValue": 1.0, "minValue": 0.0,
                "maskUpperTri": True,
            })
            cols.append((f"{role}: {pair.names[role]}", v))
        if difference:
            d = patterns["tuned"][layer] - patterns["base"][layer]
            m = float(d.abs().max()) or 1e-6
            v = Visualization()
            v.add_component("AttentionHeads", {
                "attention": d, "tokens": shown, "attentionHeadNames": head_names,
                "maxValue": m, "minValue": -m, "negativeColor": "blue", "positiveColor": "red",
                "maskUpperTri": True,
            })
            cols.append((f"tuned - base (max |diff| {m:.3g})", v))
        vis.add_html(f"<h4>layer {layer}</h4>")
        vis.row(cols)
    vis.data = {"tokens": tokens, "segments": tp.segments.tolist(), "layers": sel, "heads": hsel,
                "patterns": patterns, "prompt_id": prompt.id, "models": dict(pair.names)}
    return vis


def token_rows(
    tokens: Sequence[str],
    rows: Mapping[str, Float[Tensor, " pos"] | Sequence[float] | np.ndarray],
    *,
    diverging: Sequence[str] = (),
    title: str = "",
    segments: Sequence[int] | None = None,
) -> Visualization:
    """Tokens coloured by values, one circuitsvis ``ColoredTokens`` row per named series.

    Args:
        tokens: Token strings (shown through :func:`~shiftlens.tokens.display_token`).
        rows: ``{label: values}``, each with one value per token.
        diverging: Labels whose colour scale is symmetric around 0 (blue negative, red
            positive); the others are scaled from 0 to their maximum.
        title: Heading.
        segments: Optional segment code per token (underlined above the rows).

    Raises:
        ShiftlensError: a series of the wrong length, or no series.

    Example:
        >>> vis = token_rows(["a", "b"], {"base": [0.2, 1.0], "tuned": [0.9, 0.1]})
        >>> [name for name, _ in vis.components]
        ['ColoredTokens', 'ColoredTokens']
    """
    if not rows:
        raise ShiftlensError("token_rows: no value series given")
    vis = Visualization(title)
    vis.data = {"tokens": list(tokens), "rows": dict(rows)}
    if segments is not None:
        if len(segments) != len(tokens):
            raise ShiftlensError(f"token_rows: {len(segments)} segment codes for {len(tokens)} tokens")
        vis.add_html(_segments_html(tokens, segments) + _SEGMENT_NOTE)
    for label, values in rows.items():
        v = torch.as_tensor(np.asarray(values, dtype=np.float64)).flatten()
        if v.numel() != len(tokens):
            raise ShiftlensError(f"token_rows: series {label!r} has {v.numel()} values for "
                                 f"{len(tokens)} tokens")
        finite = v[torch.isfinite(v)]
        top = float(finite.abs().max()) if finite.numel() else 1.0
        top = top or 1.0
        # ColoredTokens writes each token as innerHTML: escape it, so "<bos>" shows as text
        shown = [_html.escape(display_token(t), quote=False) for t in tokens]
        props: dict[str, Any] = {"tokens": shown, "values": v, "maxValue": top}
        if label in diverging:
            props.update(minValue=-top, negativeColor="blue", positiveColor="red")
        else:
            props.update(minValue=0.0, positiveColor="red")
        vis.add_html(f'<div><span class="sl-label">{_html.escape(label)}</span></div>')
        vis.add_component("ColoredTokens", props)
    return vis


def importance_tokens(
    base: Any, tuned: Any, *, tokenizer: Any = None, title: str | None = None
) -> Visualization:
    """A prompt's tokens coloured by importance density: base, tuned and tuned - base.

    Importance density (Wu et al. 2024, §3) says how much each prompt token matters to the
    response, normalised to [0, 1] per model. The two attributions must cover the same prompt
    tokens (they may explain different responses, e.g. each model's own greedy answer).

    Args:
        base: The base model's :class:`shiftlens.attribution.Attribution` (anything with
            ``input_positions``, ``tokens``, ``segments``, ``token_strings``, ``density()``,
            ``model_name``, ``prompt``).
        tuned: The tuned model's attribution of the same prompt.
        tokenizer: The pair's tokenizer: token strings are re-decoded with their spaces
            (:func:`token_strings`); default: the attributions' own ``token_strings``.
        title: Heading (default names the prompt).

    Returns:
        A :class:`Visualization`; ``data`` holds ``tokens``, ``base``, ``tuned``, ``diff``
        and the instruction scores.

    Raises:
        ShiftlensError: the attributions are of different prompt tokens.

    Example:
        >>> from shiftlens.attribution import attribute
        >>> vis = importance_tokens(attribute(pair.base, p), attribute(pair.tuned, p))  # doctest: +SKIP
    """
    tb, tt = base.tokens[base.input_positions], tuned.tokens[tuned.input_positions]
    label = getattr(base.prompt, "label", repr(getattr(base.prompt, "id", "")))
    if tb.shape != tt.shape or not torch.equal(tb.cpu(), tt.cpu()):
        raise ShiftlensError(
            f"importance_tokens: the attributions of prompt {label} cover different prompt "
            f"tokens ({tb.numel()} vs {tt.numel()}); attribute the same prompt with both models"
        )
    if tokenizer is not None:
        strings = token_strings(tokenizer, base.tokens)
    else:
        strings = list(base.token_strings) or [str(int(t)) for t in base.tokens]
    toks = [strings[int(i)] for i in base.input_positions]
    db = base.density().double().cpu()
    dt = tuned.density().double().cpu()
    diff = dt - db
    segs = base.segments[base.input_positions].tolist()
    scores = {}
    for role, att in (("base", base), ("tuned", tuned)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores[role] = float(att.score())
        except Exception:  # noqa: BLE001 - a score is decoration here
            scores[role] = float("nan")
    vis = token_rows(
        toks,
        {f"base ({base.model_name})": db, f"tuned ({tuned.model_name})": dt,
         "tuned - base": diff},
        diverging=("tuned - base",),
        title=title or f"Importance density of the prompt tokens, prompt {label}",
        segments=segs,
    )
    vis.add_html(
        '<div class="sl-muted">Importance density (Wu et al. 2024, §3), 0 = irrelevant to the '
        f"response, 1 = most important token. Instruction score: base {scores['base']:.3f}, "
        f"tuned {scores['tuned']:.3f}. Responses explained: base "
        f"{_html.escape(repr(base.response))}, tuned {_html.escape(repr(tuned.response))}.</div>"
    )
    vis.data = {"tokens": toks, "segments": segs, "base": db, "tuned": dt, "diff": diff,
                "scores": scores, "prompt_id": base.prompt.id}
    return vis


def _concept_frame(source: Any, layer: int | None) -> pd.DataFrame:
    """Normalise ConceptWords / ConceptShift / a frame (or a pair of them) to one frame."""
    if isinstance(source, (list, tuple)):
        parts = []
        for role, s in zip(ROLES, source):
            f = _concept_frame(s, layer)
            if "role" not in f or f["role"].isna().all():
                f = f.assign(role=role)
            parts.append(f)
        return pd.concat(parts, ignore_index=True)
    if isinstance(source, pd.DataFrame):
        df = source.copy()
    elif hasattr(source, "to_frame"):
        df = source.to_frame()
    else:
        raise ShiftlensError(
            f"concept_table: expected ConceptWords, ConceptShift or a DataFrame, got "
            f"{type(source).__name__}"
        )
    need = {"layer", "component", "words"}
    if not need <= set(df.columns):
        raise ShiftlensError(f"concept_table: the frame lacks columns {sorted(need - set(df.columns))}")
    if "seed" in df.columns and df["seed"].nunique() > 1:
        df = df[df["seed"] == df["seed"].min()]
    if "role" not in df.columns:
        if "model" in df.columns and set(df["model"].unique()) <= set(ROLES):
            df["role"] = df["model"]
        else:
            df["role"] = None
    if layer is not None:
        if layer not in set(df["layer"].astype(int)):
            raise ShiftlensError(f"concept_table: layer {layer} is not in the concepts "
                                 f"(layers {sorted(set(df['layer'].astype(int)))})")
        df = df[df["layer"].astype(int) == layer]
    return df


def _word_cells(words: str, scores: str | None, n_words: int) -> str:
    ws = [w for w in str(words).split("|") if w][:n_words]
    ss: list[float] = []
    if isinstance(scores, str) and scores:
        ss = [float(x) for x in scores.split("|")][:n_words]
    top = max((abs(s) for s in ss), default=1.0) or 1.0
    out = []
    for i, w in enumerate(ws):
        if i < len(ss):
            a = min(1.0, abs(ss[i]) / top)
            rgb = "214,39,40" if ss[i] >= 0 else "31,119,180"
            style = f'background: rgba({rgb},{0.12 + 0.5 * a:.2f})'
            tip = f' title="{ss[i]:+.3f}"'
        else:
            style, tip = "", ""
        out.append(f'<span class="sl-word" style="{style}"{tip}>{_html.escape(w)}</span>')
    return "".join(out)


def concept_table(
    source: Any,
    *,
    layer: int | None = None,
    n_components: int = 8,
    n_words: int = 12,
    title: str | None = None,
) -> Visualization:
    """Top words of each W_out principal component, base beside tuned (Wu et al. 2024, §5).

    Each word is shaded by its cosine with the component (red positive, blue negative; hover
    for the value). With annotations (a :class:`shiftlens.lenses.ffn.ConceptShiftResult`) the task and
    linguistic level of each concept are shown too.

    Args:
        source: A :class:`shiftlens.ffn.ConceptWords`, a ``(base, tuned)`` pair of them, a
            :class:`shiftlens.lenses.ffn.ConceptShiftResult`, or a frame with ``layer``, ``component``,
            ``words`` (``|``-separated) and optionally ``scores``, ``model``/``role``,
            ``explained_variance_ratio``, ``task``, ``level``.
        layer: The layer to show (required when the source holds several).
        n_components: Components shown (the first, by explained variance).
        n_words: Words per component.
        title: Heading.

    Raises:
        ShiftlensError: unknown source type, missing columns, a layer not in the source, or
            several layers and no ``layer``.

    Example:
        >>> from shiftlens.ffn import concept_words
        >>> vis = concept_table((concept_words(pair.base, 1, k=8), concept_words(pair.tuned, 1, k=8)))  # doctest: +SKIP
    """
    df = _concept_frame(source, layer)
    layers = sorted(set(df["layer"].astype(int)))
    if len(layers) != 1:
        raise ShiftlensError(f"concept_table: the source holds layers {layers}; pass layer=")
    lay = layers[0]
    roles = [r for r in ROLES if r in set(df["role"].dropna())] or [None]
    cols = ["component"]
    html_rows = []
    for c in range(n_components):
        cells = [f"<td>{c}</td>"]
        any_row = False
        for r in roles:
            sub = df[(df["component"].astype(int) == c)
                     & ((df["role"] == r) if r is not None else True)]
            if not len(sub):
                cells.append("<td></td>")
                continue
            any_row = True
            row = sub.iloc[0]
            evr = row.get("explained_variance_ratio", float("nan"))
            meta = f'<div class="sl-muted">{float(evr):.1%} of variance' if pd.notna(evr) else '<div class="sl-muted">'
            if "explainable" in row and not bool(row["explainable"]):
                meta += " &middot; not explainable"
            elif "task" in row and pd.notna(row.get("task")):
                meta += f" &middot; task: {_html.escape(str(row['task']))}"
                if pd.notna(row.get("level")) and str(row.get("level")) not in ("", "-"):
                    meta += f" &middot; level: {_html.escape(str(row['level']))}"
            meta += "</div>"
            cells.append("<td>" + _word_cells(row["words"], row.get("scores"), n_words) + meta + "</td>")
        if any_row:
            html_rows.append("<tr>" + "".join(cells) + "</tr>")
    names = {}
    if "model" in df.columns:
        for r in roles:
            m = df[df["role"] == r]["model"] if r is not None else df["model"]
            if len(m):
                names[r] = str(m.iloc[0])
    for r in roles:
        label = r or "model"
        if names.get(r) and names[r] != r:
            label += f" ({names[r]})"
        cols.append(label)
    head = "".join(f"<th>{_html.escape(c)}</th>" for c in cols)
    table = f'<table class="sl-table"><tr>{head}</tr>' + "".join(html_rows) + "</table>"
    vis = Visualization(title or f"Top words of the W_out principal components, layer {lay}")
    vis.add_html(
        '<div class="sl-muted">Each W_out principal component read through the unembedding: '
        "words with the largest |cosine| (red +, blue -; Wu et al. 2024, §5).</div>" + table
    )
    vis.data = {"layer": lay, "frame": df.reset_index(drop=True), "roles": roles}
    return vis
