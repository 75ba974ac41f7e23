"""The crosscoder on tensors: the model, BatchTopK, decoder norms, Latent Scaling, the logit lens.

Layer (1) of the lens (see :mod:`shiftlens.lenses.crosscoder`): pure functions of tensors and the
:class:`Crosscoder` module. Nothing here reads a model or a file.

Definitions (docs/crosscoder.md has them with their sources):

* **Crosscoder** (Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model
  Diffing"): one latent code for the pair of activations ``x = (x_base, x_tuned)`` of one layer on
  the same token, ``f(x) = ReLU(W_enc[base] x_base + W_enc[tuned] x_tuned + b_enc)`` (one encoder
  over the concatenated activation), and one decoder per model,
  ``x̂_m = f W_dec[m] + b_dec[m]``. Latent ``j`` has a decoder vector in each model,
  ``d_j^base`` and ``d_j^tuned``.
* **BatchTopK** (Bussmann et al. 2024, arXiv 2412.06410): in a batch of ``B`` examples only the
  ``k B`` largest latent activations of the whole batch are kept (``k`` per example on average,
  not exactly ``k`` each). As in crosscoder diffing (Minder et al. 2025, arXiv 2504.02922) the
  activations are ranked after weighting each latent by the sum of its decoder norms,
  ``f_j (||d_j^base|| + ||d_j^tuned||)``: the decoder-norm-weighted sparsity of the L1
  crosscoder, turned into a selection. After training a threshold ``theta`` on the same weighted
  score replaces the batch selection, so a latent's activation on one token no longer depends on
  the rest of the batch.
* **Relative decoder norm** (Minder et al. 2025): ``Δ_j = ((||d_j^tuned|| - ||d_j^base||) /
  max(||d_j^tuned||, ||d_j^base||) + 1) / 2``: 0 base-only, 0.5 equal norms, 1 tuned-only.
* **Latent Scaling** (Minder et al. 2025): for latent ``j`` with activations ``f_ij`` and a
  direction ``u``, the scale ``β`` that best explains a target ``y_i`` as ``β f_ij u`` has the
  closed form ``β = Σ_i f_ij (u · y_i) / (||u||² Σ_i f_ij²)`` (least squares over the examples
  where the latent is active).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from shiftlens.errors import ShiftlensError

__all__ = [
    "ROLES",
    "CrosscoderConfig",
    "Crosscoder",
    "batch_topk",
    "relative_norm",
    "closed_form_beta",
    "logit_lens_directions",
    "LatentThresholds",
    "classify_latents",
    "CLASSES",
]

#: The classes a latent can get (:func:`classify_latents`).
CLASSES: tuple[str, ...] = ("tuned_only", "base_only", "shared", "other", "dead")

#: The two models, in the order of the crosscoder's model axis.
ROLES: tuple[str, str] = ("base", "tuned")


# ====================================================================== configuration
@dataclass(frozen=True)
class CrosscoderConfig:
    """Everything that decides a trained crosscoder, besides its data and device.

    Attributes:
        n_latents: Dictionary size (latents shared by both models).
        k: Active latents per example, on average over a batch (BatchTopK).
        steps: Optimizer steps.
        batch_size: Examples (token positions) per step.
        lr: Adam learning rate after warm-up.
        warmup_steps: Linear learning-rate warm-up from 0.
        decay_fraction: Linear decay to 0 over this last fraction of the steps.
        auxk_alpha: Weight of the auxiliary loss that revives dead latents (Gao et al. 2024;
            0 turns it off).
        aux_k: Dead latents used per example by the auxiliary loss (default ``d_model // 2``).
        dead_steps: A latent that fired on no example for this many steps counts as dead.
        init_norm: Norm of every decoder vector at initialisation (the encoder starts as the
            decoder's transpose).
        norm_rows: Rows read (in file order) to fit the input normalisation and the decoder
            bias's starting value.
        threshold_batches: Batches averaged to fit the inference threshold after training.
        checkpoint_every: Steps between checkpoints (0: only at the end).
        log_every: Steps between training-log rows.
        seed: Seeds the initialisation and the data order.

    Example:
        >>> cfg = CrosscoderConfig(n_latents=256, k=8, steps=1000)
        >>> cfg.replace(steps=10).steps, cfg.k
        (10, 8)
    """

    n_latents: int = 1024
    k: int = 16
    steps: int = 2000
    batch_size: int = 512
    lr: float = 1e-3
    warmup_steps: int = 50
    decay_fraction: float = 0.2
    auxk_alpha: float = 1 / 32
    aux_k: int | None = None
    dead_steps: int = 200
    init_norm: float = 0.1
    norm_rows: int = 8192
    threshold_batches: int = 32
    checkpoint_every: int = 500
    log_every: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        from shiftlens.checks import check_float, check_int

        check_int("n_latents", self.n_latents, minimum=1)
        check_int("k", self.k, minimum=1, maximum=self.n_latents)
        check_int("steps", self.steps, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_float("lr", self.lr, minimum=0.0)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_float("decay_fraction", self.decay_fraction, minimum=0.0, maximum=1.0)
        check_float("auxk_alpha", self.auxk_alpha, minimum=0.0)
        if self.aux_k is not None:
            check_int("aux_k", self.aux_k, minimum=1)
        check_int("dead_steps", self.dead_steps, minimum=1)
        check_float("init_norm", self.init_norm, minimum=0.0)
        if not self.init_norm > 0:
            raise ShiftlensError(f"init_norm must be > 0, got {self.init_norm}")
        check_int("norm_rows", self.norm_rows, minimum=1)
        check_int("threshold_batches", self.threshold_batches, minimum=1)
        check_int("checkpoint_every", self.checkpoint_every, minimum=0)
        check_int("log_every", self.log_every, minimum=1)
        check_int("seed", self.seed, minimum=0)

    def replace(self, **changes: Any) -> CrosscoderConfig:
        """A copy with some fields changed (checked again).

        Example:
            >>> CrosscoderConfig().replace(k=4).k
            4
        """
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ShiftlensError(f"CrosscoderConfig has no fields {unknown}")
        return CrosscoderConfig(**{**asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-safe dict.

        Example:
            >>> CrosscoderConfig().to_dict()["k"]
            16
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CrosscoderConfig:
        """Rebuild from :meth:`to_dict` (unknown keys refused).

        Example:
            >>> CrosscoderConfig.from_dict(CrosscoderConfig(k=3).to_dict()).k
            3
        """
        if not isinstance(d, dict):
            raise ShiftlensError(f"a crosscoder configuration is a dict, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ShiftlensError(f"unknown crosscoder configuration keys {unknown}")
        return cls(**d)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): warm-up, flat, linear decay.

        Example:
            >>> cfg = CrosscoderConfig(steps=100, warmup_steps=10, decay_fraction=0.5, lr=1.0)
            >>> [round(cfg.lr_at(s), 2) for s in (0, 9, 10, 50, 75, 99)]
            [0.1, 1.0, 1.0, 1.0, 0.5, 0.02]
        """
        lr = self.lr
        if self.warmup_steps and step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        n_decay = int(round(self.decay_fraction * self.steps))
        start = self.steps - n_decay
        if n_decay and step >= start:
            lr *= (self.steps - step) / n_decay
        return lr


# ====================================================================== BatchTopK
def batch_topk(
    scores: Float[Tensor, "batch n_latents"], k: int
) -> Bool[Tensor, "batch n_latents"]:
    """Which entries BatchTopK keeps: the ``k * batch`` largest positive scores of the batch.

    The selection is over the whole batch (Bussmann et al. 2024): one example may keep more than
    ``k`` latents and another fewer, ``k`` per example on average. Entries that are not positive
    are never kept, so fewer than ``k * batch`` are kept when fewer are positive. Ties at the
    boundary are broken by ``torch.topk`` (deterministic on one device).

    Args:
        scores: Non-negative selection scores (the crosscoder passes ``f_j (||d_j^base|| +
            ||d_j^tuned||)``).
        k: Average number kept per example.

    Returns:
        A boolean mask of the kept entries.

    Example:
        >>> s = torch.tensor([[3.0, 0.0, 1.0], [2.0, 5.0, 4.0]])
        >>> batch_topk(s, 1).int().tolist()   # the 2 largest of the batch: 5 and 4
        [[0, 0, 0], [0, 1, 1]]
    """
    n = scores.shape[0] * k
    flat = scores.reshape(-1)
    n = min(n, flat.numel())
    idx = flat.topk(n, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[idx] = True
    mask &= flat > 0
    return mask.reshape(scores.shape)


# ====================================================================== the model
class Crosscoder(torch.nn.Module):
    """A BatchTopK crosscoder on one layer of a base/tuned pair (Lindsey et al. 2024).

    Parameters (``m`` indexes :data:`ROLES`: 0 base, 1 tuned):

    * ``W_enc [2, d_model, n_latents]`` and ``b_enc [n_latents]``: the shared encoder over the
      concatenated activation, ``f = ReLU(Σ_m x_m W_enc[m] + b_enc)``;
    * ``W_dec [2, n_latents, d_model]`` and ``b_dec [2, d_model]``: one decoder per model,
      ``x̂_m = f W_dec[m] + b_dec[m]``.

    Buffers: ``scale [2]`` (each model's activations are multiplied by its scale before encoding,
    so that their mean squared norm is ``d_model``; :meth:`normalize`), ``threshold`` (the
    inference threshold on the decoder-norm-weighted score; NaN until fitted) and
    ``steps_since_fired [n_latents]`` (training bookkeeping for dead latents). Everything the
    crosscoder computes is in normalised units.

    Args:
        d_model: Width of the residual stream.
        n_latents: Dictionary size.
        k: BatchTopK's average number of active latents per example.
        device: Where the parameters live.
        dtype: Their dtype.
        seed: Seeds the initialisation (:meth:`initialize`).
        init_norm: Norm of each decoder vector at initialisation.

    Example:
        >>> cc = Crosscoder(8, 32, 4, seed=0)
        >>> x = torch.randn(16, 2, 8)
        >>> f = cc.encode(x, mode="batch")
        >>> int((f > 0).sum()) <= 4 * 16, cc.decode(f).shape
        (True, torch.Size([16, 2, 8]))
    """

    def __init__(self, d_model: int, n_latents: int, k: int, *, device: Any = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0,
                 init_norm: float = 0.1) -> None:
        super().__init__()
        from shiftlens.checks import check_int

        self.d_model = check_int("d_model", d_model, minimum=1)
        self.n_latents = check_int("n_latents", n_latents, minimum=1)
        self.k = check_int("k", k, minimum=1, maximum=n_latents)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ShiftlensError(f"the crosscoder's dtype must be a torch floating dtype "
                                 f"(float32, bfloat16, ...), got {dtype!r}")
        try:
            device = torch.device(device)
            torch.empty(0, device=device)
        except (RuntimeError, TypeError, ValueError, AssertionError) as e:
            raise ShiftlensError(f"the crosscoder's device {str(device)!r} is not usable here "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from e
        kw: dict[str, Any] = dict(device=device, dtype=dtype)
        self.W_enc = torch.nn.Parameter(torch.zeros(2, d_model, n_latents, **kw))
        self.b_enc = torch.nn.Parameter(torch.zeros(n_latents, **kw))
        self.W_dec = torch.nn.Parameter(torch.zeros(2, n_latents, d_model, **kw))
        self.b_dec = torch.nn.Parameter(torch.zeros(2, d_model, **kw))
        self.register_buffer("scale", torch.ones(2, **kw))
        self.register_buffer("threshold", torch.full((), float("nan"), **kw))
        self.register_buffer("steps_since_fired",
                             torch.zeros(n_latents, dtype=torch.long, device=device))
        #: Set by :func:`~shiftlens.lenses.crosscoder.train.train_crosscoder`: the
        #: configuration, the training log (one dict per logged step) and facts about the run.
        self.config: CrosscoderConfig | None = None
        self.log: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.initialize(seed, init_norm)

    # ------------------------------------------------------------------ set-up
    @torch.no_grad()
    def initialize(self, seed: int, init_norm: float = 0.1) -> None:
        """Random decoder directions of norm ``init_norm``, the encoder their transpose.

        Drawn in float64 on the CPU from a generator seeded with ``seed``, then cast, so the
        initialisation is the same on every device and dtype. Biases and the threshold reset.

        Example:
            >>> cc = Crosscoder(8, 16, 2, seed=3)
            >>> torch.allclose(cc.W_dec.norm(dim=-1), torch.full((2, 16), 0.1))
            True
        """
        g = torch.Generator().manual_seed(int(seed))
        w = torch.randn(2, self.n_latents, self.d_model, generator=g, dtype=torch.float64)
        w = w / w.norm(dim=-1, keepdim=True) * float(init_norm)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.transpose(1, 2))
        self.b_enc.zero_()
        self.b_dec.zero_()
        self.threshold.fill_(float("nan"))
        self.steps_since_fired.zero_()

    @property
    def device(self) -> torch.device:
        """The parameters' device."""
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype."""
        return self.W_enc.dtype

    # ------------------------------------------------------------------ the maps
    def normalize(
        self, x: Float[Tensor, "batch 2 d_model"]
    ) -> Float[Tensor, "batch 2 d_model"]:
        """Model activations -> the crosscoder's units (each model multiplied by its ``scale``),
        on the crosscoder's device and dtype.

        Example:
            >>> Crosscoder(4, 8, 2).normalize(torch.ones(3, 2, 4)).shape
            torch.Size([3, 2, 4])
        """
        x = x.to(device=self.device, dtype=self.dtype)
        return x * self.scale[None, :, None]

    def decoder_norms(self) -> Float[Tensor, "2 n_latents"]:
        """``||d_j^m||`` for both models (row 0 base, row 1 tuned).

        Example:
            >>> Crosscoder(4, 8, 2).decoder_norms().shape
            torch.Size([2, 8])
        """
        return self.W_dec.norm(dim=-1)

    def pre_activations(
        self, x: Float[Tensor, "batch 2 d_model"]
    ) -> Float[Tensor, "batch n_latents"]:
        """``ReLU(Σ_m x_m W_enc[m] + b_enc)`` for normalised ``x``, before any sparsity.

        Example:
            >>> Crosscoder(4, 8, 2).pre_activations(torch.randn(3, 2, 4)).min() >= 0
            tensor(True)
        """
        return torch.relu(torch.einsum("bmd,mdl->bl", x, self.W_enc) + self.b_enc)

    def scores(self, f: Float[Tensor, "batch n_latents"]) -> Float[Tensor, "batch n_latents"]:
        """The selection score of BatchTopK and of the threshold: ``f_j (||d_j^base|| +
        ||d_j^tuned||)`` (no gradient).

        Example:
            >>> cc = Crosscoder(4, 8, 2)
            >>> torch.allclose(cc.scores(torch.ones(1, 8)), torch.full((1, 8), 0.2))
            True
        """
        return f.detach() * self.decoder_norms().detach().sum(0)

    def encode(
        self, x: Float[Tensor, "batch 2 d_model"], mode: str = "threshold"
    ) -> Float[Tensor, "batch n_latents"]:
        """The sparse latent code of normalised activations.

        Args:
            x: Normalised activations ``[batch, 2, d_model]`` (:meth:`normalize`).
            mode: ``"batch"``: BatchTopK over this batch (training); ``"threshold"``: keep the
                latents whose weighted score exceeds :attr:`threshold` (inference: each
                example on its own); ``"dense"``: no sparsity (the ReLU code).

        Raises:
            ShiftlensError: ``mode="threshold"`` before the threshold was fitted.

        Example:
            >>> cc = Crosscoder(4, 8, 2); x = torch.randn(5, 2, 4)
            >>> int((cc.encode(x, mode="batch") > 0).sum()) <= 10
            True
        """
        f = self.pre_activations(x)
        if mode == "dense":
            return f
        if mode == "batch":
            return f * batch_topk(self.scores(f), self.k).to(f.dtype)
        if mode == "threshold":
            th = float(self.threshold)
            if not math.isfinite(th):
                raise ShiftlensError("the crosscoder's inference threshold is not fitted yet "
                                     "(train_crosscoder fits it; or use mode='batch')")
            return f * (self.scores(f) > th).to(f.dtype)
        raise ShiftlensError(f"mode must be 'batch', 'threshold' or 'dense', got {mode!r}")

    def decode(self, f: Float[Tensor, "batch n_latents"]) -> Float[Tensor, "batch 2 d_model"]:
        """``x̂_m = f W_dec[m] + b_dec[m]`` for both models (normalised units).

        Example:
            >>> Crosscoder(4, 8, 2).decode(torch.zeros(3, 8)).abs().max().item()
            0.0
        """
        return torch.einsum("bl,mld->bmd", f, self.W_dec) + self.b_dec

    def forward(
        self, x: Float[Tensor, "batch 2 d_model"], mode: str = "threshold"
    ) -> tuple[Float[Tensor, "batch 2 d_model"], Float[Tensor, "batch n_latents"]]:
        """Reconstruction and code of normalised activations (see :meth:`encode`).

        Example:
            >>> cc = Crosscoder(4, 8, 2); xh, f = cc(torch.randn(3, 2, 4), mode="batch")
            >>> xh.shape, f.shape
            (torch.Size([3, 2, 4]), torch.Size([3, 8]))
        """
        f = self.encode(x, mode)
        return self.decode(f), f

    # ------------------------------------------------------------------ state
    def tensors(self) -> dict[str, Tensor]:
        """Every parameter and buffer by name (what a checkpoint stores).

        Example:
            >>> sorted(Crosscoder(4, 8, 2).tensors())
            ['W_dec', 'W_enc', 'b_dec', 'b_enc', 'scale', 'steps_since_fired', 'threshold']
        """
        return {n: t.detach() for n, t in (*self.named_parameters(), *self.named_buffers())}

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, Tensor], *, where: str = "") -> None:
        """Copy a :meth:`tensors` dict in, exactly (shapes and names checked).

        Example:
            >>> a, b = Crosscoder(4, 8, 2, seed=0), Crosscoder(4, 8, 2, seed=1)
            >>> b.load_tensors(a.tensors()); torch.equal(a.W_dec, b.W_dec)
            True
        """
        own = self.tensors()
        missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or extra:
            raise ShiftlensError(f"{where or 'crosscoder'}: tensors {missing or extra} "
                                 f"{'missing' if missing else 'unexpected'}")
        for name, t in own.items():
            src = tensors[name]
            if tuple(src.shape) != tuple(t.shape):
                raise ShiftlensError(f"{where or 'crosscoder'}: {name} has shape "
                                     f"{tuple(src.shape)}, expected {tuple(t.shape)}")
            t.copy_(src.to(device=t.device, dtype=t.dtype))


# ====================================================================== reading latents
def relative_norm(norms: Float[Tensor, "2 n_latents"]) -> Float[Tensor, " n_latents"]:
    """Minder et al.'s relative decoder norm ``Δ = ((n_t - n_b) / max(n_t, n_b) + 1) / 2``.

    0: the latent has a decoder only in the base; 1: only in the tuned model; 0.5: equal
    norms. A latent with both norms 0 gets NaN.

    Args:
        norms: ``[2, n_latents]`` decoder norms (row 0 base, row 1 tuned).

    Example:
        >>> relative_norm(torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 1.0]])).tolist()
        [0.0, 1.0, 0.5]
    """
    nb, nt = norms[0].double(), norms[1].double()
    big = torch.maximum(nb, nt)
    out = ((nt - nb) / big.clamp(min=1e-300) + 1) / 2
    return torch.where(big > 0, out, torch.full_like(out, float("nan")))


def closed_form_beta(
    f: Float[Tensor, " n"], u: Float[Tensor, " d"], y: Float[Tensor, "n d"]
) -> float:
    """Latent Scaling for one latent: ``argmin_β Σ_i ||β f_i u - y_i||²`` in closed form.

    ``β = Σ_i f_i (u · y_i) / (||u||² Σ_i f_i²)`` (float64). NaN when the latent never fires or
    ``u`` is zero. The lens accumulates the same sums over a whole activation store at once
    (:func:`shiftlens.lenses.crosscoder.compare.latent_statistics`); this function is the
    definition.

    Args:
        f: The latent's activations on ``n`` examples.
        u: Its decoder direction (in the same units as ``y``).
        y: The targets (a model's activation, its reconstruction error with the latent's own
            contribution added back, or its reconstruction).

    Example:
        >>> u = torch.tensor([1.0, 0.0]); f = torch.tensor([1.0, 2.0])
        >>> closed_form_beta(f, u, 0.5 * f[:, None] * u)
        0.5
    """
    f64, u64, y64 = f.double(), u.double(), y.double()
    den = float((u64 @ u64) * (f64 @ f64))
    if not den > 0:
        return float("nan")
    return float(f64 @ (y64 @ u64)) / den


def logit_lens_directions(
    directions: Float[Tensor, "n d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    *,
    center: bool = False,
) -> Float[Tensor, "n d_vocab"]:
    """Read residual-stream directions through the unembedding: ``(u - mean(u)?) W_U``.

    ``W_U`` should have the final norm's gain folded in (:func:`shiftlens.weights.unembedding`):
    then each row is the direct effect of adding ``u`` to the last residual stream on the
    logits, to first order and up to the norm's positive rescaling, biases excluded (they do not
    depend on ``u``). ``center=True`` removes the mean first, as a LayerNorm does (not an
    RMSNorm).

    Args:
        directions: Rows of residual-stream directions.
        W_U: ``[d_model, d_vocab]`` unembedding.
        center: Subtract each direction's mean over ``d_model`` first.

    Example:
        >>> W_U = torch.eye(3)
        >>> logit_lens_directions(torch.tensor([[0.0, 2.0, 1.0]]), W_U).argmax().item()
        1
    """
    u = directions.to(W_U.dtype)
    if center:
        u = u - u.mean(-1, keepdim=True)
    return u @ W_U.to(u.device)


def seeded_rng(*keys: int) -> np.random.Generator:
    """A numpy generator seeded from integers (the data order of one epoch / one shard)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))



# ====================================================================== classification
@dataclass(frozen=True)
class LatentThresholds:
    """The thresholds that turn decoder norms and Latent Scaling ratios into classes.

    Attributes:
        outer: ``Δ >= 1 - outer`` makes a tuned-only candidate, ``Δ <= outer`` a base-only one
            (Minder et al.'s bins: 0.1).
        shared_band: ``|Δ - 0.5| <= shared_band`` is shared (their bin: 0.4-0.6).
        nu_max: A candidate is confirmed only if the other model carries less than this
            fraction of its direction, both in its reconstruction error (``ν_ε``) and in its
            reconstruction (``ν_r``).

    Example:
        >>> LatentThresholds().nu_max
        0.3
    """

    outer: float = 0.1
    shared_band: float = 0.1
    nu_max: float = 0.3

    def __post_init__(self) -> None:
        from shiftlens.checks import check_float

        check_float("outer", self.outer, minimum=0.0, maximum=0.5)
        check_float("shared_band", self.shared_band, minimum=0.0, maximum=0.5)
        check_float("nu_max", self.nu_max, minimum=0.0)

    def to_dict(self) -> dict[str, float]:
        """The thresholds as a dict.

        Example:
            >>> LatentThresholds().to_dict()["outer"]
            0.1
        """
        return asdict(self)


def classify_latents(
    delta: Float[Tensor, " n_latents"],
    nu_err: Float[Tensor, " n_latents"],
    nu_rec: Float[Tensor, " n_latents"],
    alive: Bool[Tensor, " n_latents"],
    thresholds: LatentThresholds | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Shared / tuned-only / base-only by decoder norms, checked by Latent Scaling.

    1. By the relative decoder norm ``Δ`` (:func:`relative_norm`): ``Δ >= 1 - outer``
       tuned-only candidate, ``Δ <= outer`` base-only candidate, ``|Δ - 0.5| <= shared_band``
       shared, anything else ``other``; a latent that never fired is ``dead``.
    2. A candidate keeps its class only if Latent Scaling finds its direction (its decoder in
       the model it belongs to) absent from the other model: ``ν_ε < nu_max`` (the other model's
       reconstruction error, with the latent's own contribution added back, does not carry it;
       else Complete Shrinkage, Minder et al. 2025) and ``ν_r < nu_max`` (the other model's
       reconstruction does not carry it through other latents; else Latent Decoupling).
       A rejected candidate becomes ``shared``; undefined ratios make it ``other``.

    Args:
        delta: Relative decoder norms.
        nu_err: ``β_ε(other model) / β_ε(own model)`` per latent.
        nu_rec: ``β_r(other model) / β_r(own model)``.
        alive: Whether each latent fired on the analysed rows.
        thresholds: :class:`LatentThresholds` (default: its defaults).

    Returns:
        ``(norm_class, cls, reason)``: the class by norms alone, the final class and, for a
        rejected or undetermined candidate, why ("" otherwise).

    Example:
        >>> d = torch.tensor([0.95, 0.95, 0.5, 0.02])
        >>> ne, nr = torch.tensor([0.05, 0.8, 1.0, 0.1]), torch.tensor([0.1, 0.1, 1.0, 0.0])
        >>> classify_latents(d, ne, nr, torch.tensor([True, True, True, True]))[1]
        ['tuned_only', 'shared', 'shared', 'base_only']
    """
    th = thresholds or LatentThresholds()
    norm_class, cls, reason = [], [], []
    for j in range(delta.shape[0]):
        dj = float(delta[j])
        if not bool(alive[j]) or not math.isfinite(dj):
            norm_class.append("dead")
            cls.append("dead")
            reason.append("")
            continue
        if dj >= 1 - th.outer:
            nc = "tuned_only"
        elif dj <= th.outer:
            nc = "base_only"
        elif abs(dj - 0.5) <= th.shared_band:
            nc = "shared"
        else:
            nc = "other"
        norm_class.append(nc)
        if nc not in ("tuned_only", "base_only"):
            cls.append(nc)
            reason.append("")
            continue
        other = "base" if nc == "tuned_only" else "tuned"
        ne, nr = float(nu_err[j]), float(nu_rec[j])
        if not (math.isfinite(ne) and math.isfinite(nr)):
            cls.append("other")
            reason.append("Latent Scaling undefined (the latent's own-model fit is zero)")
        elif ne >= th.nu_max:
            cls.append("shared")
            reason.append(f"complete shrinkage: the {other} model's error carries its direction "
                          f"(nu_err = {ne:.2f})")
        elif nr >= th.nu_max:
            cls.append("shared")
            reason.append(f"latent decoupling: the {other} model's reconstruction carries its "
                          f"direction (nu_rec = {nr:.2f})")
        else:
            cls.append(nc)
            reason.append("")
    return norm_class, cls, reason
