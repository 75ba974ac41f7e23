"""The crosscoder lens's part of the report, and its contract examples.

:func:`section` is what the report runs for ``--lenses crosscoder``: the report's prompts (with
their reference responses) are the corpus, one layer's residual stream is collected into a
temporary store, a small crosscoder is trained and its latents classified. It talks to the
report only through :class:`shiftlens.lenses.registry.ReportContext`.

Report options (``build_report(options=...)``): ``crosscoder_layer`` (default: the middle
layer, ``n_layers // 2``), ``crosscoder_hook`` (``"resid_post"``), ``crosscoder_config`` (a dict
of :class:`~shiftlens.lenses.crosscoder.core.CrosscoderConfig` fields overriding the report's
small default: ``4 d_model`` latents, ``k = 8``, 600 steps).
"""

from __future__ import annotations

from typing import Any

from shiftlens.lenses.crosscoder.results import token_list
from shiftlens.lenses.registry import Section

__all__ = ["section", "examples", "report_config"]


def report_config(d_model: int, overrides: dict[str, Any] | None = None) -> Any:
    """The report's crosscoder configuration: small enough for a report on a CPU.

    Example:
        >>> report_config(64).n_latents
        256
    """
    from shiftlens.lenses.crosscoder.core import CrosscoderConfig

    cfg = CrosscoderConfig(n_latents=4 * int(d_model), k=8, steps=600, batch_size=256,
                           checkpoint_every=0, log_every=25)
    return cfg.replace(**(overrides or {}))


def estimate_work(cfg: Any, counts: Any, options: Any) -> Any:
    """The crosscoder's planned work for the report's run-time estimate.

    One batched pass of both models per prompt (the activations), the training's matrix products
    (per step, forward and backward through both models' encoder and decoder: about
    ``12 * batch * 2 * d_model * n_latents`` flops) and one bookkeeping item per step (optimizer,
    top-k, dead-latent tracking), one figure.

    Args:
        cfg: The pair's config (``d_model``).
        counts: Prompts per cap key (``{"crosscoder": 64}``).
        options: The report options (``crosscoder_config`` overrides).

    Returns:
        The fields of a :class:`shiftlens.report.estimate.Work` as a dict (a lens does not
        import the report layer).

    Example:
        >>> class C: d_model = 64
        >>> estimate_work(C(), {"crosscoder": 10}, {})["batched"]
        20.0
    """
    c = report_config(int(getattr(cfg, "d_model", 1) or 1), (options or {}).get("crosscoder_config"))
    d = int(getattr(cfg, "d_model", 1) or 1)
    flops = 12.0 * c.steps * c.batch_size * 2 * d * c.n_latents
    return {"batched": 2.0 * int(counts.get("crosscoder", 0)), "flops": flops,
            "items": {"step": float(c.steps)}, "figures": 1}


def section(ctx: Any, sec: Section) -> None:
    """Fill the report's crosscoder section: classes, tuned-only latents, token readouts.

    Args:
        ctx: The report's :class:`~shiftlens.lenses.registry.ReportContext`.
        sec: The section to fill.

    Example:
        >>> get_lens("crosscoder").run_section()(ctx, sec)  # doctest: +SKIP
    """
    from shiftlens.lenses.crosscoder.compare import crosscoder_diff

    pair = ctx.pair
    ps = ctx.prompts_for("crosscoder")
    layer = int(ctx.options.get("crosscoder_layer", int(pair.cfg.n_layers) // 2))
    hook = str(ctx.options.get("crosscoder_hook", "resid_post"))
    cfg = report_config(int(pair.cfg.d_model), ctx.options.get("crosscoder_config"))
    cfg = cfg.replace(seed=int(ctx.seed))
    sec.note = ("Crosscoder on " + ctx.limit_note("crosscoder", len(ps))
                + f" (their text and reference responses), blocks.{layer}.hook_{hook}.")

    def run() -> None:
        res = crosscoder_diff(pair, ps, layer, hook=hook, config=cfg, progress=ctx.progress)
        sec.n_prompts["crosscoder"] = len(ps)
        s = sec.summaries["crosscoder"] = res.summary()
        ctx.save_result(res, "crosscoder")
        ctx.csv(sec, res.to_frame(), "crosscoder_latents")
        if len(res.contexts):
            ctx.csv(sec, res.contexts, "crosscoder_contexts")
        ctx.csv(sec, res.tokens, "crosscoder_tokens")
        n_t = s["counts"]["tuned_only"]
        key = (f"Crosscoder (blocks.{layer}.hook_{hook}): {n_t} tuned-only latent"
               f"{'s' if n_t != 1 else ''}" + (f", raising {token_list(s['top_tokens'][:5])}" if n_t else
                                                 f"; most changed decoders raise "
                                                 f"{token_list(s['changed_tokens'][:5])}") + ".")
        ctx.figure(sec, res.show(), "crosscoder", s["sentence"], key=key)

    ctx.attempt(sec, "crosscoder", run)


def examples(pair: Any, prompts: list[Any]) -> list[Any]:
    """One small :class:`~shiftlens.lenses.crosscoder.results.CrosscoderResult` (seconds).

    Args:
        pair: A :class:`shiftlens.ModelPair` (the contract test uses a tiny Llama pair).
        prompts: Prompts with reference responses.

    Returns:
        ``[CrosscoderResult]``.

    Example:
        >>> [type(r).__name__ for r in examples(pair, prompts)]  # doctest: +SKIP
        ['CrosscoderResult']
    """
    from shiftlens.lenses.crosscoder.compare import crosscoder_diff
    from shiftlens.lenses.crosscoder.core import CrosscoderConfig, LatentThresholds

    # loose thresholds, so that a random tiny pair has model-specific latents and every table
    # of the Result is exercised (contexts, tokens, the tuned-only readout)
    loose = LatentThresholds(outer=0.49, shared_band=0.0, nu_max=100.0)
    cfg = CrosscoderConfig(n_latents=32, k=4, steps=60, batch_size=32, warmup_steps=5, lr=1e-2,
                           dead_steps=10, checkpoint_every=0, log_every=10, norm_rows=256,
                           threshold_batches=4)
    layer = int(pair.cfg.n_layers) // 2
    return [crosscoder_diff(pair, list(prompts), layer, config=cfg, thresholds=loose,
                            progress=False, n_contexts=3, n_tokens=5, n_changed=3)]
