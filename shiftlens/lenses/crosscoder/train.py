"""Training a BatchTopK crosscoder: seeded, explicit device and dtype, resumable bit for bit.

:func:`train_crosscoder` trains a :class:`~shiftlens.lenses.crosscoder.core.Crosscoder` on an
activation source (an :class:`~shiftlens.lenses.crosscoder.store.ActivationStore` streamed from
disk, or :class:`~shiftlens.lenses.crosscoder.store.InMemoryActivations`):

1. **Normalisation.** Each model's activations are multiplied by one scalar so that their mean
   squared norm is ``d_model`` (fitted on the first ``norm_rows`` rows); the decoder biases
   start at each model's geometric median of those rows (Gao et al. 2024).
2. **Steps.** Batch ``t`` of the source's deterministic shuffled stream (a function of the seed
   and ``t`` only); BatchTopK with the decoder-norm-weighted score; loss = squared error summed
   over both models' activations, averaged over the batch, plus ``auxk_alpha`` times the
   auxiliary loss of Gao et al. (2024; as in Bussmann et al. 2024): the dead latents' (no
   activation for ``dead_steps`` steps) ``aux_k`` largest pre-activations per example must
   reconstruct the remaining error, normalised by the error's variance. Adam, learning rate
   from :meth:`CrosscoderConfig.lr_at`.
3. **Checkpoints** every ``checkpoint_every`` steps (and when stopped): parameters, buffers,
   Adam's state, the step and the training log, written atomically
   (:func:`shiftlens.io.atomic_directory`: ``state.safetensors`` + ``state.json``); the last
   two are kept. ``resume=True`` continues from the newest valid one; nothing random is drawn
   outside the seeded initialisation and data order, so training ``2N`` steps and training ``N``,
   stopping, and resuming for ``N`` give identical weights (same device, dtype and torch).
4. **Threshold.** After the last step the inference threshold is the mean over
   ``threshold_batches`` batches of the smallest weighted score BatchTopK kept (Bussmann et al.
   2024), so a latent's activation then depends on its own token only.
5. The trained crosscoder is written to ``out_dir/crosscoder`` (:func:`save_crosscoder`).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.errors import ShiftlensError
from shiftlens.io import (
    atomic_directory,
    read_json,
    read_manifest,
    read_tensors,
    verify_directory,
    write_json,
    write_tensors,
)
from shiftlens.lenses.crosscoder.core import Crosscoder, CrosscoderConfig, batch_topk

__all__ = [
    "CROSSCODER_KIND",
    "CHECKPOINT_KIND",
    "train_crosscoder",
    "save_crosscoder",
    "load_crosscoder",
    "latest_checkpoint",
    "geometric_median",
]

#: Manifest kind of a trained crosscoder directory.
CROSSCODER_KIND = "Crosscoder"
#: Manifest kind of a training checkpoint.
CHECKPOINT_KIND = "CrosscoderCheckpoint"
_KEEP = 2


# ====================================================================== one step
def geometric_median(x: Tensor, iters: int = 100, eps: float = 1e-9) -> Tensor:
    """The point minimising the summed Euclidean distance to the rows of ``x`` (Weiszfeld's
    algorithm from the mean, float64, a fixed number of iterations: deterministic).

    Example:
        >>> geometric_median(torch.tensor([[0.0, 0.0], [0.0, 0.0], [9.0, 9.0]])).abs().max() < 1e-3
        tensor(True)
    """
    x = x.double()
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=-1).clamp(min=eps)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m


def _normalisation(model: Crosscoder, source: Any, rows: int) -> None:
    """Fit ``scale`` (mean squared norm -> d_model) and start ``b_dec`` at each model's
    geometric median of the normalised rows (as Gao et al. 2024 start their bias)."""
    x = source.head(rows).double()
    ms = x.pow(2).sum(-1).mean(0)  # [2]
    if not bool((ms > 0).all()):
        raise ShiftlensError("a model's activations are all zero in the first rows: nothing to "
                             "normalise")
    scale = (model.d_model / ms).sqrt()
    xs = x * scale[None, :, None]
    with torch.no_grad():
        model.scale.copy_(scale.to(model.scale.dtype))
        model.b_dec.copy_(torch.stack([geometric_median(xs[:, m]) for m in range(2)])
                          .to(model.dtype))


def _aux_loss(model: Crosscoder, pre: Tensor, err: Tensor, dead: Tensor, aux_k: int) -> Tensor:
    """Gao et al.'s AuxK: the dead latents' top pre-activations reconstruct the error."""
    n_dead = int(dead.sum())
    k = min(aux_k, n_dead)
    masked = torch.where(dead[None, :], pre, torch.zeros_like(pre))
    top = masked.topk(k, dim=-1)
    f_aux = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    e_hat = torch.einsum("bl,mld->bmd", f_aux, model.W_dec)
    var = (err - err.mean(0, keepdim=True)).pow(2).sum((1, 2)).mean()
    return (err - e_hat).pow(2).sum((1, 2)).mean() / var.clamp(min=1e-12)


def _step(model: Crosscoder, opt: torch.optim.Optimizer, cfg: CrosscoderConfig, x: Tensor,
          step: int, aux_k: int) -> dict[str, Any]:
    for g in opt.param_groups:
        g["lr"] = cfg.lr_at(step)
    pre = model.pre_activations(x)
    f = pre * batch_topk(model.scores(pre), model.k).to(pre.dtype)
    x_hat = model.decode(f)
    err = x - x_hat
    mse = err.pow(2).sum((1, 2)).mean()
    dead = model.steps_since_fired >= cfg.dead_steps
    aux = torch.zeros((), dtype=mse.dtype, device=mse.device)
    if cfg.auxk_alpha > 0 and bool(dead.any()):
        aux = _aux_loss(model, pre, err.detach(), dead, aux_k)
    loss = mse + cfg.auxk_alpha * aux
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        fired = (f > 0).any(0)
        model.steps_since_fired.copy_(torch.where(fired, torch.zeros_like(
            model.steps_since_fired), model.steps_since_fired + 1))
        e = err.detach().double()
        xc = (x - x.mean(0, keepdim=True)).double()
        fvu = e.pow(2).sum((0, 2)) / xc.pow(2).sum((0, 2)).clamp(min=1e-300)
    if not math.isfinite(float(loss.detach())):
        raise ShiftlensError(f"crosscoder training diverged at step {step} (loss {float(loss.detach())}); "
                             "lower lr")
    loss, mse, aux = loss.detach(), mse.detach(), aux.detach()
    return dict(step=step + 1, loss=float(loss), mse=float(mse), aux=float(aux),
                fvu_base=float(fvu[0]), fvu_tuned=float(fvu[1]),
                l0=float((f > 0).sum(-1).double().mean()), dead=float(dead.double().mean()),
                lr=float(opt.param_groups[0]["lr"]))


@torch.no_grad()
def _fit_threshold(model: Crosscoder, source: Any, cfg: CrosscoderConfig) -> float:
    """Mean over batches of the smallest weighted score BatchTopK keeps (Bussmann et al.)."""
    mins = []
    it = source.batches(cfg.batch_size, seed=cfg.seed + 1)
    for _ in range(min(cfg.threshold_batches, max(1, source.batches_per_epoch(cfg.batch_size)))):
        x = model.normalize(next(it))
        s = model.scores(model.pre_activations(x))
        keep = batch_topk(s, model.k)
        if bool(keep.any()):
            mins.append(float(s[keep].min()))
    if not mins:
        raise ShiftlensError("no latent is ever active: cannot fit the inference threshold")
    return sum(mins) / len(mins)


# ====================================================================== checkpoints
def _opt_tensors(opt: torch.optim.Optimizer, names: list[str]) -> dict[str, Tensor]:
    out = {}
    state = opt.state_dict()["state"]
    for i, name in enumerate(names):
        for key, v in state.get(i, {}).items():
            out[f"optim/{name}/{key}"] = v if isinstance(v, Tensor) else torch.tensor(v)
    return out


def _load_opt(opt: torch.optim.Optimizer, names: list[str], tensors: dict[str, Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for i, name in enumerate(names):
        keys = [k for k in tensors if k.startswith(f"optim/{name}/")]
        if keys:
            state[i] = {k.rsplit("/", 1)[1]: tensors[k] for k in keys}
    sd["state"] = state
    opt.load_state_dict(sd)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest checkpoint under ``out_dir/checkpoints`` that verifies, or None.

    Example:
        >>> latest_checkpoint("out/crosscoder-run")  # doctest: +SKIP
        PosixPath('out/crosscoder-run/checkpoints/step-0001000')
    """
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    for d in sorted((p for p in root.iterdir() if p.name.startswith("step-")), reverse=True):
        try:
            verify_directory(d, CHECKPOINT_KIND)
        except ShiftlensError:
            continue
        return d
    return None


def _save_checkpoint(out_dir: Path, model: Crosscoder, opt: torch.optim.Optimizer,
                     names: list[str], step: int, cfg: CrosscoderConfig, fingerprint: str,
                     log: list[dict[str, Any]], elapsed: float) -> Path:
    root = out_dir / "checkpoints"
    target = root / f"step-{step:07d}"
    record: dict[str, Any] = {}
    with atomic_directory(target, kind=CHECKPOINT_KIND, record=record) as tmp:
        tensors = {f"model/{k}": v for k, v in model.tensors().items()}
        tensors.update(_opt_tensors(opt, names))
        record["tensors"] = write_tensors(tmp / "state.safetensors", tensors)
        write_json(tmp / "state.json", dict(step=step, config=cfg.to_dict(), source=fingerprint,
                                            dtype=str(model.dtype), log=log, elapsed=elapsed))
    old = sorted((p for p in root.iterdir() if p.name.startswith("step-") and p != target),
                 reverse=True)
    for p in old[_KEEP - 1:]:
        try:
            if read_manifest(p).get("kind") == CHECKPOINT_KIND:
                shutil.rmtree(p)
        except ShiftlensError:
            pass  # not ours: left alone
    return target


def _resume(ckpt: Path, model: Crosscoder, opt: torch.optim.Optimizer, names: list[str],
            cfg: CrosscoderConfig, fingerprint: str) -> tuple[int, list[dict[str, Any]], float]:
    where = repr(str(ckpt))
    man = verify_directory(ckpt, CHECKPOINT_KIND)
    state = read_json(ckpt / "state.json", where=f"{where}: state.json")
    if state.get("config") != cfg.to_dict():
        raise ShiftlensError(f"{where} was written with another configuration "
                             f"({state.get('config')}); resume with the same CrosscoderConfig")
    if state.get("source") != fingerprint:
        raise ShiftlensError(f"{where} was trained on other activations; resume on the same "
                             "store")
    if state.get("dtype") != str(model.dtype):
        raise ShiftlensError(f"{where} was trained in {state.get('dtype')}, not {model.dtype}")
    tensors = read_tensors(ckpt / "state.safetensors", (man.get("record") or {}).get("tensors"),
                           where=f"{where}: state.safetensors")
    model.load_tensors({k[6:]: v for k, v in tensors.items() if k.startswith("model/")},
                       where=where)
    _load_opt(opt, names, {k: v.to(model.device) if not k.endswith("/step") else v
                           for k, v in tensors.items() if k.startswith("optim/")})
    return int(state["step"]), list(state.get("log") or []), float(state.get("elapsed") or 0.0)


# ====================================================================== the loop
def train_crosscoder(
    source: Any,
    config: CrosscoderConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
) -> Crosscoder:
    """Train a BatchTopK crosscoder on paired activations (see the module docstring).

    Args:
        source: An :class:`~shiftlens.lenses.crosscoder.store.ActivationStore` or
            :class:`~shiftlens.lenses.crosscoder.store.InMemoryActivations`.
        config: The :class:`CrosscoderConfig` (default: its defaults).
        out_dir: Where checkpoints (``checkpoints/step-NNNNNNN``) and the trained crosscoder
            (``crosscoder/``) go; None trains in memory only (no checkpoints).
        device: Where the crosscoder trains (batches are moved there).
        dtype: Its parameters' dtype.
        resume: Continue from the newest checkpoint in ``out_dir`` (which must have been written
            with the same configuration, data and dtype); when ``out_dir/crosscoder`` is already
            complete for them it is loaded and returned. Without ``resume`` an ``out_dir`` that
            holds checkpoints is refused.
        stop_at: Stop after this many steps in total (a checkpoint is written there when
            ``out_dir`` is given), to be resumed later; the threshold is only fitted at the end.
        progress: Show a progress bar (loss, FVU, L0).

    Returns:
        The :class:`Crosscoder`, with ``config``, ``log`` (one dict per ``log_every`` steps:
        ``step``, ``loss``, ``mse``, ``aux``, ``fvu_base``, ``fvu_tuned``, ``l0``, ``dead``,
        ``lr``) and ``info`` (source, rows/s, wall time, device, dtype, steps done).

    Raises:
        ShiftlensError: a bad configuration, too few rows for a batch, a checkpoint from another
            run, or a diverging loss.

    Example:
        >>> from shiftlens.lenses.crosscoder.store import InMemoryActivations
        >>> src = InMemoryActivations(torch.randn(4096, 2, 16))
        >>> cc = train_crosscoder(src, CrosscoderConfig(n_latents=64, k=4, steps=20,
        ...                       batch_size=256), progress=False)
        >>> cc.log[-1]["step"], math.isfinite(float(cc.threshold))
        (20, True)
    """
    cfg = config or CrosscoderConfig()
    if not isinstance(cfg, CrosscoderConfig):
        raise ShiftlensError(f"config must be a CrosscoderConfig, got {type(cfg).__name__}")
    if source.batches_per_epoch(cfg.batch_size) < 1:
        raise ShiftlensError(f"the activations have {source.n_rows} rows, fewer than one batch "
                             f"of {cfg.batch_size}")
    if stop_at is not None:
        from shiftlens.checks import check_int

        check_int("stop_at", stop_at, minimum=1)
    end = cfg.steps if stop_at is None else min(cfg.steps, int(stop_at))
    out = Path(out_dir) if out_dir is not None else None
    fingerprint = source.fingerprint
    if out is not None and resume:
        done = _finished(out, cfg, fingerprint, device, dtype)
        if done is not None:
            return done
    model = Crosscoder(source.d_model, cfg.n_latents, cfg.k, device=device, dtype=dtype,
                       seed=cfg.seed, init_norm=cfg.init_norm)
    names = [n for n, _ in model.named_parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), foreach=False)
    start, log, elapsed = 0, [], 0.0
    ckpt = latest_checkpoint(out) if out is not None else None
    if ckpt is not None and not resume:
        raise ShiftlensError(f"{str(out)!r} holds checkpoints of an earlier run; pass resume=True "
                             "(--resume) to continue it, or choose another directory")
    if ckpt is not None:
        start, log, elapsed = _resume(ckpt, model, opt, names, cfg, fingerprint)
    else:
        _normalisation(model, source, cfg.norm_rows)
    aux_k = cfg.aux_k or max(1, source.d_model // 2)
    t0 = time.perf_counter()
    batches = source.batches(cfg.batch_size, seed=cfg.seed, start_step=start)
    bar = tqdm(total=cfg.steps, initial=start, desc="crosscoder", disable=not progress,
               unit="step")
    step = start
    for step in range(start, end):
        row = _step(model, opt, cfg, model.normalize(next(batches)), step, aux_k)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            log.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3g}", fvu=f"{row['fvu_tuned']:.3f}",
                            l0=f"{row['l0']:.1f}")
        bar.update(1)
        if out is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                and step + 1 < end:
            _save_checkpoint(out, model, opt, names, step + 1, cfg, fingerprint, log,
                             elapsed + time.perf_counter() - t0)
    bar.close()
    done_steps = end
    elapsed += time.perf_counter() - t0
    model.config, model.log = cfg, log
    model.info = dict(source=fingerprint, steps_done=done_steps, device=str(model.device),
                      dtype=str(dtype), train_seconds=elapsed,
                      rows_per_second=(done_steps * cfg.batch_size / elapsed if elapsed > 0
                                       else float("nan")),
                      source_meta=dict(getattr(source, "meta", {}) or {}))
    if done_steps < cfg.steps:
        if out is not None and done_steps > start:
            _save_checkpoint(out, model, opt, names, done_steps, cfg, fingerprint, log, elapsed)
        return model
    with torch.no_grad():
        model.threshold.fill_(_fit_threshold(model, source, cfg))
    if out is not None:
        save_crosscoder(model, out / "crosscoder")
    return model


def _finished(out: Path, cfg: CrosscoderConfig, fingerprint: str, device: Any,
              dtype: torch.dtype) -> Crosscoder | None:
    d = out / "crosscoder"
    if not (d / "manifest.json").is_file():
        return None
    cc = load_crosscoder(d, device=device, dtype=dtype)
    if cc.config != cfg or cc.info.get("source") != fingerprint or cc.info.get("dtype") != str(
            dtype):
        raise ShiftlensError(f"{str(d)!r} holds a crosscoder trained with another configuration, "
                             "data or dtype; choose another directory")
    return cc


# ====================================================================== files
def save_crosscoder(model: Crosscoder, directory: str | Path) -> Path:
    """Write a trained crosscoder atomically: ``crosscoder.safetensors`` + ``crosscoder.json``.

    The JSON holds the configuration, the training log and ``info``; no pickle.

    Example:
        >>> save_crosscoder(cc, "out/cc")  # doctest: +SKIP
    """
    record: dict[str, Any] = {}
    with atomic_directory(directory, kind=CROSSCODER_KIND, record=record) as tmp:
        record["tensors"] = write_tensors(tmp / "crosscoder.safetensors", model.tensors())
        write_json(tmp / "crosscoder.json", dict(
            d_model=model.d_model, n_latents=model.n_latents, k=model.k,
            dtype=str(model.dtype), config=model.config.to_dict() if model.config else None,
            log=model.log, info=model.info))
    return Path(directory)


def load_crosscoder(directory: str | Path, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> Crosscoder:
    """Verify and read a crosscoder written by :func:`save_crosscoder`.

    Args:
        directory: The crosscoder directory.
        device: Where to put it.
        dtype: Its dtype (default: the dtype it was trained in).

    Example:
        >>> cc = load_crosscoder("out/run/crosscoder")  # doctest: +SKIP
    """
    d = Path(directory)
    where = repr(str(d))
    man = verify_directory(d, CROSSCODER_KIND)
    info = read_json(d / "crosscoder.json", where=f"{where}: crosscoder.json")
    tensors = read_tensors(d / "crosscoder.safetensors", (man.get("record") or {}).get("tensors"),
                           where=f"{where}: crosscoder.safetensors")
    try:
        saved = getattr(torch, str(info["dtype"]).removeprefix("torch."))
        cc = Crosscoder(int(info["d_model"]), int(info["n_latents"]), int(info["k"]),
                        device=device, dtype=dtype or saved)
        cc.config = CrosscoderConfig.from_dict(info["config"]) if info.get("config") else None
        cc.log = list(info.get("log") or [])
        cc.info = dict(info.get("info") or {})
    except (KeyError, TypeError, AttributeError) as e:
        raise ShiftlensError(f"{where}: crosscoder.json is incomplete ({e})") from e
    cc.load_tensors(tensors, where=where)
    return cc
