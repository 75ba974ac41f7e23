"""Model diffing with a crosscoder: which latents of one layer are shared by base and tuned,
which belong to one model only (Lindsey et al. 2024; BatchTopK, Bussmann et al. 2024; Latent
Scaling, Minder et al. 2025). Not in Wu et al. 2024.

Registered as ``"crosscoder"``. The layers of the lens:

* :mod:`.core` - tensors: ``Crosscoder`` (shared encoder, one decoder per model, BatchTopK on
  decoder-norm-weighted activations, inference threshold), ``CrosscoderConfig``,
  ``batch_topk``, ``relative_norm``, ``closed_form_beta``, ``logit_lens_directions``,
  ``LatentThresholds``, ``classify_latents``;
* :mod:`.store` - paired activations streamed to disk in safetensors shards:
  ``collect_activations``, ``ActivationWriter``, ``ActivationStore``, ``InMemoryActivations``;
* :mod:`.train` - ``train_crosscoder`` (seeded, explicit device/dtype, atomic checkpoints,
  bit-identical resume), ``save_crosscoder``, ``load_crosscoder``;
* :mod:`.compare` - ``latent_statistics`` (Latent Scaling in one pass), ``crosscoder_result``,
  ``crosscoder_diff`` (collect, train, analyse);
* :mod:`.results` - ``CrosscoderResult``; :mod:`.plots` - its figure; :mod:`.section` - the
  report section and contract examples; :mod:`.cli` - ``shiftlens crosscoder``.

The public names load on first use (importing this package imports no torch).

Example:
    >>> from shiftlens.lenses.crosscoder import SPEC
    >>> SPEC.name
    'crosscoder'
"""

from __future__ import annotations

from shiftlens.lenses.registry import LensSpec, lazy_api, register_lens

_PKG = "shiftlens.lenses.crosscoder"

SPEC = register_lens(LensSpec(
    name="crosscoder",
    title="Crosscoder: latents shared by both models, and latents of one model only",
    about="A BatchTopK crosscoder (Lindsey et al. 2024; Bussmann et al. 2024) on both models' "
          "residual stream at one layer: one sparse code, one decoder per model. Latents are "
          "classified shared / tuned-only / base-only by their decoder norms and checked with "
          "Latent Scaling (Minder et al. 2025); tuned-only latents are shown with their top "
          "activating contexts and the tokens their decoder raises (not in Wu et al.).",
    section=f"{_PKG}.section:section",
    results=(f"{_PKG}.results:CrosscoderResult",),
    cli=f"{_PKG}.cli:add_commands",
    limits={"crosscoder": 64},
    requires=(f"{_PKG}.compare:crosscoder_diff",),
    examples=f"{_PKG}.section:examples",
    order=70,
))

#: Where each public name lives.
_API: dict[str, str] = {
    **dict.fromkeys(("ROLES", "CLASSES", "CrosscoderConfig", "Crosscoder", "batch_topk",
                     "relative_norm", "closed_form_beta", "logit_lens_directions",
                     "LatentThresholds", "classify_latents"), "core"),
    **dict.fromkeys(("ActivationWriter", "ActivationStore", "InMemoryActivations",
                     "collect_activations", "hook_for"), "store"),
    **dict.fromkeys(("train_crosscoder", "save_crosscoder", "load_crosscoder",
                     "latest_checkpoint"), "train"),
    **dict.fromkeys(("LatentStats", "latent_statistics", "crosscoder_result", "crosscoder_diff",
                     "organism_crosscoder"),
                    "compare"),
    **dict.fromkeys(("CrosscoderResult", "SOURCES"), "results"),
    "crosscoder_figure": "plots",
}

__all__ = ["SPEC", *_API]


__getattr__, __dir__ = lazy_api(__name__, _API)
