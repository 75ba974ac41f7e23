"""How long will the report take? An estimate from timed calibration units, before the run.

:func:`estimate_report` times a few small units on the pair itself, on its device and dtype:

* one forward pass of both models on a prompt of median length (batch 1), and the same prompt
  in a batch of :data:`BATCH` (per prompt: what batched capture pays);
* a matrix product the size of the model's weights (the weight-reading analyses: PCA of W_out,
  Q/K word pairs);
* a fixed loop of small tensor operations (the per-item bookkeeping of those analyses, which
  dominates on small models);
* one small figure drawn and written as PNG and SVG (every section writes figures).

Each lens's planned work (:data:`WORK_MODELS`, in those units) is multiplied by the timings:
forward passes per prompt from the prompt caps that will apply, weight flops and items from the
model's shape and the report options. The result is rough (the aim is the right order of
magnitude: minutes or hours), and is only printed when it exceeds :data:`ESTIMATE_THRESHOLD_S`.

A lens outside the built-in four can supply its own model: a function
``estimate_work(cfg, counts, options) -> Work`` (or a dict of Work's fields: a lens does not
import the report layer) in its section module (``LensSpec.section``'s module; the crosscoder
lens has one, counting its training); without one it is counted as two
batched forward passes per prompt and one figure.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shiftlens.errors import ShiftlensError

if TYPE_CHECKING:
    import torch

__all__ = ["ESTIMATE_THRESHOLD_S", "BATCH", "Work", "Calibration", "Estimate", "WORK_MODELS",
           "calibrate", "estimate_report"]

#: Runs expected to take longer than this (seconds) print the estimate before they start.
ESTIMATE_THRESHOLD_S = 60.0
#: Batch size of the batched calibration pass (the capture-based lenses batch 8 prompts).
BATCH = 8
#: Bookkeeping cost of one item (a head's word pairs; a component's annotation and its share of
#: the bootstrap tests; a layer's decomposition; a crosscoder training step's optimizer and top-k
#: work) in units of the calibration loop; fitted on the embedded pair, where this bookkeeping,
#: not arithmetic, is most of the time (benchmarks/estimate.py prints the per-lens ratios).
ITEM_COST = {"head": 10.0, "component": 1.0, "layer": 24.0, "step": 8.0}


@dataclass
class Work:
    """The planned work of one lens, in calibration units.

    Attributes:
        forwards: Unbatched forward passes of both models (per prompt work that decodes or
            back-propagates one prompt at a time).
        batched: Forward passes of both models that run in batches (capture, patching).
        flops: Floating-point operations on weights outside forward passes.
        items: Bookkeeping items by kind (``"head"``, ``"component"``, ``"layer"``).
        figures: Figures written.

    Example:
        >>> Work(forwards=10.0, figures=1).figures
        1
    """

    forwards: float = 0.0
    batched: float = 0.0
    flops: float = 0.0
    items: dict[str, float] = field(default_factory=dict)
    figures: int = 0


@dataclass
class Calibration:
    """The timed units (seconds) of :func:`calibrate`.

    Attributes:
        forward_s: One forward pass of both models, batch 1, on the calibration prompt.
        batched_s: The same per prompt, in a batch of :data:`BATCH`.
        flops_per_s: Matrix-product rate on the models' device and dtype.
        loop_s: The fixed loop of small tensor operations.
        figure_s: One small figure drawn and written (PNG + SVG).
        tokens: Length of the calibration prompt (tokens, response included).
        seconds: What calibrating took.

    Example:
        >>> Calibration(0.1, 0.02, 1e10, 0.05, 0.5, 20, 1.0).forward_s
        0.1
    """

    forward_s: float
    batched_s: float
    flops_per_s: float
    loop_s: float
    figure_s: float
    tokens: int
    seconds: float


@dataclass
class Estimate:
    """The estimated run time of a report.

    Attributes:
        seconds: The estimate for the whole report.
        per_lens: The estimate per lens.
        work: The planned :class:`Work` per lens.
        calibration: The timed units.

    Example:
        >>> cal = Calibration(0.1, 0.02, 1e10, 0.05, 0.5, 20, 1.0)
        >>> Estimate(150.0, {"attention": 150.0}, {}, cal).message()
        'estimated ~3 min (attention ~3 min), from a 100 ms calibration forward pass'
    """

    seconds: float
    per_lens: dict[str, float]
    work: dict[str, Work]
    calibration: Calibration

    def message(self) -> str:
        """One line: the total and per lens, rounded for reading.

        Example:
            >>> cal = Calibration(0.1, 0.02, 1e10, 0.05, 0.5, 20, 1.0)
            >>> Estimate(30.0, {"ffn": 30.0}, {}, cal).message()
            'estimated ~30 s (ffn ~30 s), from a 100 ms calibration forward pass'
        """
        parts = ", ".join(f"{k} ~{_duration(v)}" for k, v in self.per_lens.items())
        return (f"estimated ~{_duration(self.seconds)} ({parts}), from a "
                f"{self.calibration.forward_s * 1000:.0f} ms calibration forward pass")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (recorded in ``metrics.json["estimate"]``).

        Example:
            >>> cal = Calibration(0.1, 0.02, 1e10, 0.05, 0.5, 20, 1.0)
            >>> Estimate(30.0, {"ffn": 30.0}, {}, cal).to_dict()["seconds"]
            30.0
        """
        from dataclasses import asdict

        return {"seconds": round(self.seconds, 1),
                "per_lens": {k: round(v, 1) for k, v in self.per_lens.items()},
                "calibration": asdict(self.calibration)}


def _duration(s: float) -> str:
    if s < 90:
        return f"{max(1, round(s))} s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    return f"{s / 3600:.1f} h"


# ============================================================================ work models
def _dims(cfg: Any) -> dict[str, int]:
    get = lambda k, d=0: int(getattr(cfg, k, None) or d)  # noqa: E731
    d_model = get("d_model", 1)
    return {"L": get("n_layers", 1), "H": get("n_heads", 1), "d": d_model,
            "dh": get("d_head", max(1, d_model // max(1, get("n_heads", 1)))),
            "dm": get("d_mlp", 4 * d_model), "V": get("d_vocab", 1)}


def _attribution(cfg: Any, n: Mapping[str, int], options: Mapping[str, Any]) -> Work:
    # each model decodes its own response (T steps) and back-propagates each response token
    t = int(options.get("attribution_tokens", 32))
    return Work(forwards=float((n.get("attribution", 0) + 1) * (t + 2)), figures=1)


def _attention(cfg: Any, n: Mapping[str, int], options: Mapping[str, Any]) -> Work:
    d = _dims(cfg)
    v = min(int(options.get("verb_words", 5000)), d["V"])
    heads = 2 * d["L"] * d["H"]
    flops = heads * (4 * v * d["d"] * d["dh"] + 2 * v * v * d["dh"])
    return Work(batched=2.0 * n.get("attention", 0), forwards=1.0, flops=float(flops),
                items={"head": float(heads)}, figures=2)


def _default_k(ref: str, fallback: int) -> int:
    try:
        from shiftlens.lenses.registry import resolve_ref

        return int(resolve_ref(ref))
    except Exception:  # noqa: BLE001 - the lens may not define it; the estimate is rough
        return fallback


def _ffn(cfg: Any, n: Mapping[str, int], options: Mapping[str, Any]) -> Work:
    d = _dims(cfg)
    k = options.get("concept_k") or _default_k("shiftlens.lenses.ffn.compare:DEFAULT_CONCEPT_K", 128)
    k = min(int(k), d["d"])
    per_layer = 8 * d["dm"] * d["d"] ** 2 + 2 * k * d["d"] * d["V"]
    # figures: the per-group concept shares (several panels), the rotation, the concept table
    return Work(flops=float(2 * d["L"] * per_layer), figures=3,
                items={"component": float(2 * d["L"] * k), "layer": float(4 * d["L"])})


def _residual(cfg: Any, n: Mapping[str, int], options: Mapping[str, Any]) -> Work:
    d = _dims(cfg)
    comps = len(options.get("patching_components", ("resid_pre", "attn_out", "mlp_out")))
    # similarity + output shift: one batched pass each; patching: per direction, layer and
    # component one patched pass of one model (half a pair pass), plus the responses' decoding
    per_patch = d["L"] * comps + 8
    return Work(batched=2.5 * n.get("residual", 0) + float(per_patch * n.get("patching", 0)),
                figures=3)


#: The built-in lenses' planned work: ``f(cfg, counts, options) -> Work`` where ``counts`` maps
#: each prompt-cap key to the number of prompts it will use.
WORK_MODELS: dict[str, Callable[[Any, Mapping[str, int], Mapping[str, Any]], Work]] = {
    "attribution": _attribution,
    "attention": _attention,
    "ffn": _ffn,
    "residual": _residual,
}


def _default_work(keys: Sequence[str]) -> Callable[..., Work]:
    def work(cfg: Any, n: Mapping[str, int], options: Mapping[str, Any]) -> Work:
        return Work(batched=2.0 * sum(n.get(k, 0) for k in keys), figures=1)

    return work


# ============================================================================ calibration
def _median_prompt(pair: Any, prompts: Sequence[Any]) -> tuple[torch.Tensor, int]:
    sample = list(prompts)[:: max(1, len(prompts) // 32)][:32]
    toks = []
    for p in sample:
        try:
            toks.append(pair.tokenize(p, response=p.reference or None).tokens)
        except Exception:  # noqa: BLE001 - a prompt the lenses will reject: skip it here
            continue
    if not toks:
        raise ShiftlensError("estimate: no prompt of the set could be tokenized")
    lengths = [int(t.numel()) for t in toks]
    med = statistics.median_low(lengths)
    return toks[lengths.index(med)], med


def _best(fn: Callable[[], Any], repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calibrate(pair: Any, prompts: Sequence[Any]) -> Calibration:
    """Time the calibration units on ``pair`` (about a second on the embedded pair).

    Args:
        pair: The :class:`shiftlens.ModelPair` to be measured (its device and dtype).
        prompts: The prompt set; a prompt of median length (with its reference) is used.

    Example:
        >>> cal = calibrate(toy_pair(), toy_prompts(8))  # doctest: +SKIP
        >>> cal.forward_s < 1  # doctest: +SKIP
        True
    """
    import torch

    from shiftlens.bridge import device_of

    t_start = time.perf_counter()
    tokens, n_tok = _median_prompt(pair, prompts)
    dev = device_of(pair.base)
    one = tokens[None].to(dev)
    many = one.repeat(BATCH, 1)

    def fwd(x: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                pair.base(x, return_type="logits")
                pair.tuned(x, return_type="logits")
            _sync(dev)
        return run

    forward_s = _best(fwd(one))
    batched_s = _best(fwd(many), repeat=2) / BATCH
    d = _dims(pair.cfg)
    dtype = getattr(pair.cfg, "dtype", torch.float32) or torch.float32
    n = max(64, min(1024, d["d"]))
    a = torch.randn(n, n, device=dev, dtype=dtype)

    def mm() -> None:
        a @ a
        _sync(dev)

    flops_per_s = 2 * n ** 3 / max(_best(mm), 1e-9)
    small = torch.randn(32, 32)

    def loop() -> None:
        for _ in range(200):
            torch.topk(small @ small, 5, dim=-1)

    loop_s = _best(loop)
    figure_s = _figure_seconds()
    return Calibration(forward_s, batched_s, flops_per_s, loop_s, figure_s, n_tok,
                       time.perf_counter() - t_start)


def _figure_seconds() -> float:
    """One small figure drawn, written as PNG and SVG and embedded (one run: the first figure
    also pays matplotlib's start-up, as the report's first figure does)."""
    from shiftlens.viz.style import figure_html, new_figure, pyplot, save_figure

    t0 = time.perf_counter()
    fig, axes = new_figure(1, 2, width=9.0, height=3.5)
    axes[0, 0].bar(range(12), range(12))
    axes[0, 1].imshow([[i * j for j in range(16)] for i in range(16)])
    with tempfile.TemporaryDirectory() as tmp:
        save_figure(fig, f"{tmp}/calibration")
    figure_html(fig)
    pyplot().close(fig)
    return time.perf_counter() - t0


# ============================================================================ estimate
def estimate_report(
    pair: Any,
    prompts: Sequence[Any],
    *,
    lenses: Sequence[str],
    counts: Mapping[str, Mapping[str, int]],
    options: Mapping[str, Any] | None = None,
    calibration: Calibration | None = None,
) -> Estimate:
    """Estimate the run time of a report before it runs (see the module docstring).

    Args:
        pair: The pair to be measured.
        prompts: The prompt set (after ``max_prompts``).
        lenses: The lenses that will run.
        counts: Per lens, the prompts each cap key will use (``{"residual": {"residual": 16,
            "patching": 8}}``).
        options: The report options (``attribution_tokens``, ``verb_words``, ...).
        calibration: Timed units already measured (default: :func:`calibrate` now).

    Returns:
        The :class:`Estimate`.

    Example:
        >>> est = estimate_report(pair, prompts, lenses=["attention"],  # doctest: +SKIP
        ...                       counts={"attention": {"attention": 64}})
        >>> print(est.message())  # doctest: +SKIP
        estimated ~2 min (attention ~2 min), from a 70 ms calibration forward pass
    """
    from shiftlens.lenses.registry import registered_lenses, resolve_ref

    options = dict(options or {})
    cal = calibration or calibrate(pair, prompts)
    specs = registered_lenses()
    per_lens: dict[str, float] = {}
    works: dict[str, Work] = {}
    for name in lenses:
        spec = specs.get(name)
        model = None
        if spec is not None:
            try:
                model = resolve_ref(spec.section.split(":")[0] + ":estimate_work")
            except Exception:  # noqa: BLE001 - optional
                model = None
        if model is None:
            model = WORK_MODELS.get(name) or _default_work(
                list(spec.limits) if spec is not None else [name])
        w = model(pair.cfg, dict(counts.get(name, {})), options)
        if isinstance(w, Mapping):  # a lens returns Work's fields (lenses sit below the report)
            w = Work(**w)
        works[name] = w
        per_lens[name] = (w.forwards * cal.forward_s + w.batched * cal.batched_s
                          + w.flops / cal.flops_per_s
                          + sum(ITEM_COST.get(k, 1.0) * v for k, v in w.items.items()) * cal.loop_s
                          + w.figures * cal.figure_s)
    return Estimate(sum(per_lens.values()), per_lens, works, cal)
