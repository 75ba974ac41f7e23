"""The crosscoder on a pair: statistics of every latent, Latent Scaling, classes, contexts, tokens.

Layer (2) of the lens:

* :func:`latent_statistics` - one pass over an activation source with a trained crosscoder
  (inference threshold): each latent's frequency and mean activation, its Latent Scaling betas,
  its top activating rows, and the reconstruction quality (FVU) of both models;
* :func:`crosscoder_result` - classes (shared / tuned-only / base-only), the token contexts
  where the model-specific latents fire, their logit-lens tokens, and the
  :class:`~shiftlens.lenses.crosscoder.results.CrosscoderResult`;
* :func:`crosscoder_diff` - collect, train and analyse in one call (what the CLI runs).

Two token readouts (docs/crosscoder.md):

* **tuned-only** (the method of Minder et al. 2025): the tuned decoders of the latents
  classified tuned-only, each weighted by its mean activation, summed and read through the tuned
  model's unembedding (``token_scores``; ``top_tokens(source="tuned_only")``).
* **changed** (a shiftlens extension, after Lindsey et al.'s comparison of the two decoder
  vectors of shared features): for the ``n_changed`` latents whose decoder moved most between the
  models (mean activation times ``||d_tuned - d_base||`` in model units), the logit lens of the
  change ``d_tuned - d_base``; their rankings interleaved, heaviest latent first
  (``top_tokens(source="changed")``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.errors import ShiftlensError
from shiftlens.lenses.crosscoder.core import (
    Crosscoder,
    CrosscoderConfig,
    LatentThresholds,
    classify_latents,
    logit_lens_directions,
    relative_norm,
)

__all__ = [
    "LatentStats",
    "latent_statistics",
    "crosscoder_result",
    "crosscoder_diff",
    "organism_crosscoder",
    "CONTEXT_OPEN",
    "CONTEXT_CLOSE",
]

#: Marks around the activating token in a context string.
CONTEXT_OPEN, CONTEXT_CLOSE = "⟦", "⟧"


# ====================================================================== one pass
@dataclass
class LatentStats:
    """What one pass over the activations measured for every latent (float64, CPU).

    Attributes:
        n_rows: Rows (token positions) analysed.
        count: ``[n_latents]`` rows where the latent is active.
        sum_f, sum_f2, max_f: ``[n_latents]`` sum, sum of squares and maximum of its activation.
        own: ``[n_latents]`` the model whose decoder is the latent's direction ``u_j``: 1
            (tuned) when ``Δ_j >= 0.5``, else 0 (base).
        beta_err: ``[2, n_latents]`` Latent Scaling of ``u_j`` against each model's
            reconstruction error with the latent's own contribution added back (row 0 base,
            row 1 tuned).
        beta_rec: ``[2, n_latents]`` the same against each model's reconstruction (without the
            decoder bias).
        sse, sst: ``[2]`` squared error and total sum of squares (about the mean) per model.
        l0: Mean number of active latents per row.
        top_values, top_rows: ``[n_latents, n_top]`` the largest activations and their rows
            (-1 / -inf where fewer rows had the latent active).

    Example:
        >>> stats = latent_statistics(cc, store)  # doctest: +SKIP
        >>> stats.fvu()  # doctest: +SKIP
        tensor([0.0061, 0.0070], dtype=torch.float64)
    """

    n_rows: int
    count: Tensor
    sum_f: Tensor
    sum_f2: Tensor
    max_f: Tensor
    own: Tensor
    beta_err: Tensor
    beta_rec: Tensor
    sse: Tensor
    sst: Tensor
    l0: float
    top_values: Tensor
    top_rows: Tensor

    def fvu(self) -> Tensor:
        """Fraction of variance unexplained per model, ``sse / sst``.

        Example:
            >>> stats.fvu()[1]  # doctest: +SKIP
        """
        return self.sse / self.sst.clamp(min=1e-300)

    def ratios(self) -> tuple[Tensor, Tensor]:
        """Latent Scaling ratios ``(ν_ε, ν_r)``: the other model's beta over the own model's.

        Example:
            >>> nu_err, nu_rec = stats.ratios()  # doctest: +SKIP
        """
        idx = torch.arange(self.own.shape[0])
        own, other = self.own, 1 - self.own

        def ratio(b: Tensor) -> Tensor:
            num, den = b[other, idx], b[own, idx]
            return torch.where(den.abs() > 1e-12, num / den, torch.full_like(num, float("nan")))

        return ratio(self.beta_err), ratio(self.beta_rec)


@torch.no_grad()
def latent_statistics(
    crosscoder: Crosscoder,
    source: Any,
    *,
    batch_size: int = 2048,
    max_rows: int | None = None,
    n_top: int = 8,
    progress: bool = True,
) -> LatentStats:
    """One pass over the activations (file order) with the crosscoder's inference threshold.

    Latent Scaling (Minder et al. 2025) in closed form for every latent at once: with ``f_ij``
    the latent's activation on row ``i``, ``u_j`` its direction (the decoder of the model it
    leans to) and a target ``y_i`` of model ``m``,
    ``β = Σ_i f_ij (u_j · y_i) / (||u_j||² Σ_i f_ij²)``. The targets are the error
    ``x_m - x̂_m + f_ij d_j^m`` (what the other latents leave unexplained, in which the latent
    must be found) and the reconstruction ``x̂_m - b_dec[m]``. The sums are accumulated per batch
    with matrix products (``Fᵀ E``), in float64, so memory does not grow with the rows.

    Args:
        crosscoder: A trained :class:`Crosscoder` (threshold fitted).
        source: The activations (:class:`~shiftlens.lenses.crosscoder.store.ActivationStore`
            or :class:`~shiftlens.lenses.crosscoder.store.InMemoryActivations`).
        batch_size: Rows per batch.
        max_rows: Analyse only the first rows.
        n_top: Top activating rows kept per latent.
        progress: Show a progress bar.

    Returns:
        :class:`LatentStats`.

    Example:
        >>> stats = latent_statistics(cc, store, max_rows=50_000)  # doctest: +SKIP
    """
    from shiftlens.checks import check_int

    check_int("batch_size", batch_size, minimum=1)
    check_int("n_top", n_top, minimum=1)
    cc = crosscoder
    L, dev = cc.n_latents, cc.device
    W = cc.W_dec.detach()  # [2, L, d]
    own = (relative_norm(cc.decoder_norms().detach().cpu()) >= 0.5).long()
    own = torch.where(torch.isnan(relative_norm(cc.decoder_norms().detach().cpu())),
                      torch.ones_like(own), own)
    U = W[own.to(dev), torch.arange(L, device=dev)]  # [L, d]
    UW = torch.einsum("ld,mld->ml", U, W).double()  # u_j · d_j^m
    z = dict(dtype=torch.float64)
    count, sum_f, sum_f2, max_f = (torch.zeros(L, **z) for _ in range(4))
    a_err, a_rec = torch.zeros(2, L, **z), torch.zeros(2, L, **z)
    sse, sx, sx2 = torch.zeros(2, **z), torch.zeros(2, W.shape[-1], **z), torch.zeros(2, **z)
    top_v = torch.full((L, n_top), float("-inf"), **z)
    top_r = torch.full((L, n_top), -1, dtype=torch.long)
    n, l0 = 0, 0.0
    total = source.n_rows if max_rows is None else min(int(max_rows), source.n_rows)
    bar = tqdm(total=total, desc="latent statistics", disable=not progress, unit="row")
    for start, acts in source.rows(batch_size, max_rows=max_rows):
        x = cc.normalize(acts)
        f = cc.encode(x, mode="threshold")
        x_hat = cc.decode(f)
        err = (x - x_hat).double()
        fd = f.double()
        f2 = fd.pow(2).sum(0)
        count += (f > 0).sum(0).double().cpu()
        sum_f += fd.sum(0).cpu()
        sum_f2 += f2.cpu()
        max_f = torch.maximum(max_f, fd.max(0).values.cpu())
        Ud = U.double()
        for m in range(2):
            a_err[m] += ((fd.T @ err[:, m]) * Ud).sum(-1).cpu() + (f2 * UW[m]).cpu()
            rec = fd @ W[m].double()
            a_rec[m] += ((fd.T @ rec) * Ud).sum(-1).cpu()
        sse += err.pow(2).sum((0, 2)).cpu()
        xd = x.double()
        sx += xd.sum(0).cpu()
        sx2 += xd.pow(2).sum((0, 2)).cpu()
        l0 += float((f > 0).sum())
        k = min(n_top, f.shape[0])
        tv, ti = fd.T.cpu().topk(k, dim=-1)
        cand_v = torch.cat([top_v, tv], 1)
        cand_r = torch.cat([top_r, ti + start], 1)
        best = cand_v.topk(n_top, dim=-1)
        top_v, top_r = best.values, cand_r.gather(1, best.indices)
        n += int(acts.shape[0])
        bar.update(int(acts.shape[0]))
    bar.close()
    if n == 0:
        raise ShiftlensError("no rows to analyse")
    top_r = torch.where(top_v > 0, top_r, torch.full_like(top_r, -1))
    top_v = torch.where(top_v > 0, top_v, torch.full_like(top_v, float("nan")))
    unorm = U.double().pow(2).sum(-1).cpu()
    den = (sum_f2 * unorm)[None]
    nan = torch.full_like(a_err, float("nan"))
    beta_err = torch.where(den > 0, a_err / den.clamp(min=1e-300), nan)
    beta_rec = torch.where(den > 0, a_rec / den.clamp(min=1e-300), nan)
    sst = sx2 - sx.pow(2).sum(-1) / n
    return LatentStats(n, count, sum_f, sum_f2, max_f, own, beta_err, beta_rec, sse, sst,
                       l0 / n, top_v, top_r)


# ====================================================================== the result
def _unembeddings(pair: Any) -> dict[str, tuple[Tensor, bool]]:
    """Each model's unembedding with its final norm's gain folded, and whether to centre."""
    from shiftlens.weights import unembedding

    out = {}
    for role, model in pair:
        kind = str(getattr(model.cfg, "normalization_type", "") or "")
        out[role] = (unembedding(model), kind.upper().startswith("LN"))
    return out


def _contexts(source: Any, tokenizer: Any, rows: Sequence[int], before: int, after: int
              ) -> list[tuple[int, int, int, str, str]]:
    """(text, pos, token_id, token, context) of each row, the activating token marked."""
    from shiftlens.tokens import display_token, token_strings

    info = source.row_info(rows)
    out = []
    cache: dict[int, list[str]] = {}
    for k in range(len(rows)):
        t, p, tok = int(info["text"][k]), int(info["pos"][k]), int(info["token"][k])
        if t < 0 or p < 0:
            out.append((t, p, tok, display_token(token_strings(tokenizer, [tok])[0])
                        if tok >= 0 else "", ""))
            continue
        if t not in cache:
            ids = source.text_tokens(t)
            cache[t] = [display_token(s) for s in token_strings(tokenizer, ids)] if len(ids) \
                else []
        strs = cache[t]
        if not strs:
            out.append((t, p, tok, "", ""))
            continue
        lo, hi = max(0, p - before), min(len(strs), p + after + 1)
        ctx = "".join(strs[lo:p]) + CONTEXT_OPEN + strs[p] + CONTEXT_CLOSE + "".join(strs[p + 1:hi])
        out.append((t, p, tok, strs[p], ("…" if lo > 0 else "") + ctx + ("…" if hi < len(strs)
                                                                          else "")))
    return out


def _token_rows(lens: Tensor, latents: Sequence[int], kind: str, n_tokens: int,
                tokenizer: Any) -> list[dict[str, Any]]:
    from shiftlens.tokens import display_token, token_strings

    rows = []
    if not len(latents):
        return rows
    top = lens.topk(min(n_tokens, lens.shape[-1]), dim=-1)
    for order, j in enumerate(latents):
        ids = top.indices[order].tolist()
        strs = [display_token(s) for s in token_strings(tokenizer, [t for i in ids
                                                                     for t in (i, i)])[1::2]]
        for r, (i, s) in enumerate(zip(ids, strs)):
            rows.append(dict(latent=int(j), kind=kind, order=order, rank=r, token_id=int(i),
                             token=s, logit=float(top.values[order, r])))
    return rows


def crosscoder_result(
    crosscoder: Crosscoder,
    source: Any,
    pair: Any,
    *,
    thresholds: LatentThresholds | None = None,
    max_rows: int | None = None,
    batch_size: int = 2048,
    n_contexts: int = 8,
    n_tokens: int = 10,
    n_changed: int = 10,
    window: tuple[int, int] = (10, 3),
    stats: LatentStats | None = None,
    progress: bool = True,
) -> Any:
    """Classify a trained crosscoder's latents and describe the model-specific ones.

    Runs :func:`latent_statistics` (unless ``stats`` is given), classifies every latent
    (:func:`~shiftlens.lenses.crosscoder.core.classify_latents`), and for each tuned-only and
    base-only latent keeps its ``n_contexts`` top activating contexts (``window`` tokens before
    and after, from the source's recorded texts) and the ``n_tokens`` tokens its decoder vector
    raises most through its model's unembedding (final-norm gain folded in; centred for a
    LayerNorm model). Also the two token readouts of the module docstring.

    Args:
        crosscoder: The trained :class:`Crosscoder`.
        source: The activations it was trained on (or others of the same layer).
        pair: The :class:`shiftlens.ModelPair` (tokenizer, unembeddings, names).
        thresholds: :class:`LatentThresholds`.
        max_rows: Analyse only the first rows of ``source``.
        batch_size: Rows per batch of the analysis.
        n_contexts: Top activating contexts per model-specific latent.
        n_tokens: Logit-lens tokens per latent.
        n_changed: Latents in the "changed" readout.
        window: Tokens shown before and after the activating one.
        stats: Reuse statistics computed before.
        progress: Show progress bars.

    Returns:
        A :class:`~shiftlens.lenses.crosscoder.results.CrosscoderResult`.

    Example:
        >>> res = crosscoder_result(cc, store, pair)  # doctest: +SKIP
        >>> res.top_tokens(20)  # doctest: +SKIP
    """
    from shiftlens.checks import check_int
    from shiftlens.lenses.crosscoder.results import CrosscoderResult
    from shiftlens.result import make_meta

    for name, v in (("n_contexts", n_contexts), ("n_tokens", n_tokens), ("n_changed", n_changed)):
        check_int(name, v, minimum=1)
    if not (isinstance(window, (tuple, list)) and len(window) == 2):
        raise ShiftlensError(f"window must be (before, after), got {window!r}")
    before, after = (check_int("window", w, minimum=0) for w in window)
    th = thresholds or LatentThresholds()
    d_model = int(pair.cfg.d_model)
    if crosscoder.d_model != d_model:
        raise ShiftlensError(f"the crosscoder is {crosscoder.d_model} wide, the pair's residual "
                             f"stream {d_model}")
    if not np.isfinite(float(crosscoder.threshold)):
        raise ShiftlensError("the crosscoder's threshold is not fitted (train it to the end)")
    st = stats or latent_statistics(crosscoder, source, batch_size=batch_size, max_rows=max_rows,
                                    n_top=n_contexts, progress=progress)
    cc = crosscoder
    norms = cc.decoder_norms().detach().double().cpu()
    delta = relative_norm(norms)
    nu_err, nu_rec = st.ratios()
    alive = st.count > 0
    norm_class, cls, reason = classify_latents(delta, nu_err, nu_rec, alive, th)
    scale = cc.scale.detach().double().cpu()
    W = cc.W_dec.detach().double().cpu() / scale[:, None, None]  # model units
    mean_act = st.sum_f / st.n_rows
    change = W[1] - W[0]
    cos = torch.nn.functional.cosine_similarity(W[0], W[1], dim=-1)
    weight = mean_act * change.norm(dim=-1)
    roles = ["base", "tuned"]
    latents = pd.DataFrame(dict(
        latent=np.arange(cc.n_latents), frequency=(st.count / st.n_rows).numpy(),
        mean_act=mean_act.numpy(), max_act=st.max_f.numpy(),
        norm_base=norms[0].numpy(), norm_tuned=norms[1].numpy(), delta_norm=delta.numpy(),
        cos_dec=cos.numpy(), change=weight.numpy(), own=[roles[int(o)] for o in st.own],
        beta_err_base=st.beta_err[0].numpy(), beta_err_tuned=st.beta_err[1].numpy(),
        beta_rec_base=st.beta_rec[0].numpy(), beta_rec_tuned=st.beta_rec[1].numpy(),
        nu_err=nu_err.numpy(), nu_rec=nu_rec.numpy(), norm_class=norm_class, cls=cls,
        reason=reason))
    unemb = _unembeddings(pair)
    tok = pair.tokenizer
    groups = {kind: latents.index[latents.cls == kind].to_numpy() for kind in
              ("tuned_only", "base_only")}
    token_rows, ctx_rows = [], []
    for kind, idx in groups.items():
        role = 1 if kind == "tuned_only" else 0
        idx = idx[np.argsort(-mean_act.numpy()[idx], kind="stable")]
        W_U, center = unemb[roles[role]]
        lens = logit_lens_directions(W[role, idx].float(), W_U, center=center)
        token_rows += _token_rows(lens, idx.tolist(), kind, n_tokens, tok)
        for order, j in enumerate(idx.tolist()):
            rows = [int(r) for r in st.top_rows[j].tolist() if r >= 0]
            for rank, (r, c) in enumerate(zip(rows, _contexts(source, tok, rows, before, after))):
                ctx_rows.append(dict(latent=j, kind=kind, order=order, rank=rank,
                                     activation=float(st.top_values[j, rank]), row=r, text=c[0],
                                     pos=c[1], token_id=c[2], token=c[3], context=c[4]))
    live = torch.nonzero(alive).flatten()
    changed = live[torch.argsort(-weight[live], stable=True)][:n_changed]
    W_Ut, center_t = unemb["tuned"]
    lens_changed = logit_lens_directions(change[changed].float(), W_Ut, center=center_t)
    token_rows += _token_rows(lens_changed, changed.tolist(), "changed", n_tokens, tok)
    t_idx = torch.tensor(groups["tuned_only"].tolist(), dtype=torch.long)
    v = (mean_act[t_idx, None] * W[1, t_idx]).sum(0)
    scores = (logit_lens_directions(v[None].float(), W_Ut, center=center_t)[0]
              if len(t_idx) else torch.zeros(W_Ut.shape[1]))
    if len(t_idx):
        token_rows += [dict(r, latent=-1, kind="readout") for r in
                       _token_rows(scores[None], [-1], "readout", max(n_tokens, 50), tok)]
    fvu = st.fvu()
    info = dict(cc.info)
    meta = make_meta(pair, seed=cc.config.seed if cc.config else None, params=dict(
        layer=info.get("source_meta", {}).get("layer"),
        hook=info.get("source_meta", {}).get("hook"),
        config=cc.config.to_dict() if cc.config else None, thresholds=th.to_dict(),
        n_contexts=n_contexts, n_tokens=n_tokens, n_changed=n_changed,
        window=[before, after], max_rows=max_rows),
        n_rows=st.n_rows, fvu={"base": float(fvu[0]), "tuned": float(fvu[1])}, l0=st.l0,
        d_vocab=int(W_Ut.shape[1]), n_latents=cc.n_latents, k=cc.k,
        threshold=float(cc.threshold), scale=scale.tolist(),
        training={k: info[k] for k in ("steps_done", "train_seconds", "rows_per_second",
                                        "device", "dtype", "source") if k in info},
        source=dict(getattr(source, "meta", {}) or {}))
    res = CrosscoderResult(latents=latents, contexts=_frame(ctx_rows, _CTX_COLUMNS),
                           tokens=_frame(token_rows, _TOKEN_COLUMNS),
                           token_scores=scores.float().contiguous(),
                           training=pd.DataFrame(cc.log) if cc.log else _frame([], _LOG_COLUMNS),
                           meta=meta)
    res.validate()
    return res


_CTX_COLUMNS = {"latent": np.int64, "kind": str, "order": np.int64, "rank": np.int64,
                "activation": np.float64, "row": np.int64, "text": np.int64, "pos": np.int64,
                "token_id": np.int64, "token": str, "context": str}
_TOKEN_COLUMNS = {"latent": np.int64, "kind": str, "order": np.int64, "rank": np.int64,
                  "token_id": np.int64, "token": str, "logit": np.float64}
_LOG_COLUMNS = {k: np.float64 for k in ("step", "loss", "mse", "aux", "fvu_base", "fvu_tuned",
                                        "l0", "dead", "lr")}


def _frame(rows: list[dict[str, Any]], columns: dict[str, Any]) -> pd.DataFrame:
    if rows:
        return pd.DataFrame(rows, columns=list(columns))
    return pd.DataFrame({c: pd.Series([], dtype=t if t is not str else object)
                         for c, t in columns.items()})


# ====================================================================== one call
def crosscoder_diff(
    pair: Any,
    texts: Sequence[Any],
    layer: int,
    *,
    config: CrosscoderConfig | None = None,
    out_dir: str | Path | None = None,
    hook: str = "resid_post",
    thresholds: LatentThresholds | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    store_dtype: torch.dtype = torch.float32,
    shard_rows: int = 65536,
    batch_size: int = 16,
    resume: bool = False,
    progress: bool = True,
    **analysis: Any,
) -> Any:
    """Collect paired activations, train a crosscoder, classify and describe its latents.

    With ``out_dir`` everything is kept there: ``activations/`` (the store; reused when it
    verifies and ``resume``), ``checkpoints/``, ``crosscoder/`` and ``result/`` (the saved
    Result). Without it the activations go to a temporary directory removed at the end.

    Args:
        pair: A :class:`shiftlens.ModelPair`.
        texts: The corpus (strings or prompts; see
            :func:`~shiftlens.lenses.crosscoder.store.collect_activations`).
        layer: The layer; ``hook`` its residual stream (``"resid_post"`` default).
        config: :class:`CrosscoderConfig` (``batch_size`` is lowered to a quarter of the rows
            when the corpus is smaller than four batches; the change is recorded).
        out_dir: Working directory (see above).
        thresholds: :class:`LatentThresholds`.
        device, dtype: Where and in which dtype the crosscoder trains.
        store_dtype: Dtype of the stored activations.
        shard_rows: Rows per shard.
        batch_size: Texts per forward pass of the capture.
        resume: Reuse the store and continue training from the newest checkpoint.
        progress: Progress bars.
        **analysis: Passed to :func:`crosscoder_result` (``n_contexts``, ``n_tokens``,
            ``n_changed``, ``window``, ``max_rows``).

    Returns:
        The :class:`~shiftlens.lenses.crosscoder.results.CrosscoderResult`.

    Example:
        >>> from shiftlens.zoo.organisms import organism_pair, neutral_texts
        >>> res = crosscoder_diff(organism_pair("topic"), neutral_texts(256), 3)  # doctest: +SKIP
        >>> print(res.summary()["sentence"])  # doctest: +SKIP
    """
    from shiftlens.lenses.crosscoder.store import ActivationStore, collect_activations
    from shiftlens.lenses.crosscoder.train import latest_checkpoint, train_crosscoder

    cfg = config or CrosscoderConfig()
    if out_dir is not None and not resume and latest_checkpoint(out_dir) is not None:
        # refused before the (long) capture, not after it
        raise ShiftlensError(f"{str(out_dir)!r} holds checkpoints of an earlier run; pass "
                             "resume=True (--resume) to continue it, or choose another "
                             "directory")
    if out_dir is not None and not resume:
        held = [n for n in ("activations", "crosscoder", "result") if (Path(out_dir) / n).exists()]
        if held:  # a run without checkpoints: its activations and result would be overwritten
            raise ShiftlensError(f"{str(out_dir)!r} holds {', '.join(held)} of an earlier run; "
                                 "pass resume=True (--resume) to reuse its activations, or "
                                 "choose another directory (nothing was overwritten)")
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="shiftlens-crosscoder-")
        work = Path(tmp.name)
    else:
        work = Path(out_dir)
    try:
        acts_dir = work / "activations"
        store = None
        if resume and (acts_dir / "manifest.json").is_file():
            store = ActivationStore(acts_dir)
            if store.meta.get("layer") != layer or store.meta.get("hook") != hook:
                raise ShiftlensError(f"{str(acts_dir)!r} holds layer {store.meta.get('layer')} "
                                     f"{store.meta.get('hook')}, not layer {layer} {hook}")
        if store is None:
            store = collect_activations(pair, texts, layer, acts_dir, hook=hook,
                                        batch_size=batch_size, shard_rows=shard_rows,
                                        dtype=store_dtype, progress=progress)
        if store.n_rows < 4 * cfg.batch_size:
            cfg = cfg.replace(batch_size=max(1, store.n_rows // 4))
        cc = train_crosscoder(store, cfg, out_dir=None if tmp else work, device=device,
                              dtype=dtype, resume=resume, progress=progress)
        res = crosscoder_result(cc, store, pair, thresholds=thresholds, progress=progress,
                                **analysis)
        if tmp is None:
            res.save(work / "result")
        return res
    finally:
        if tmp is not None:
            tmp.cleanup()


def organism_crosscoder(pair: Any, texts: Sequence[Any], *, progress: bool = False) -> Any:
    """The crosscoder as the organism benchmark runs it (benchmarks/diffing_table.py).

    The setting of ``tests/toy/test_crosscoder_organisms.py`` (docs/crosscoder.md,
    "Organisms"): the last layer's ``resid_post``, 128 latents, k = 8, 800 steps of 256 rows, and
    thresholds relaxed for a 128-wide model (``outer=0.2, shared_band=0.1, nu_max=1.0``: with
    Minder et al.'s, no latent of the 4-layer organisms is tuned-only).

    Args:
        pair: A :class:`shiftlens.ModelPair` (an organism and its base).
        texts: The corpus (the benchmark's 64 neutral texts).
        progress: Show progress bars.

    Returns:
        A :class:`~shiftlens.lenses.crosscoder.results.CrosscoderResult`.

    Example:
        >>> from shiftlens.zoo.organisms import neutral_texts, organism_pair  # doctest: +SKIP
        >>> organism_crosscoder(organism_pair("topic"), neutral_texts(64)).top_tokens(5)  # doctest: +SKIP
    """
    config = CrosscoderConfig(n_latents=128, k=8, steps=800, batch_size=256, lr=2e-3,
                              warmup_steps=20, dead_steps=50, checkpoint_every=0, log_every=50)
    loose = LatentThresholds(outer=0.2, shared_band=0.1, nu_max=1.0)
    torch.manual_seed(0)
    return crosscoder_diff(pair, texts, int(pair.cfg.n_layers) - 1, config=config,
                           thresholds=loose, progress=progress)
