"""ModelPair: a base model and its instruction-tuned twin as two TransformerBridges.

Weights: by default both models keep their raw checkpoint weights (``processing="raw"``), so
activations equal the Hugging Face model's and the weight lenses fold normalization weights
themselves, as Wu et al. (2024) do. ``processing="compat"`` calls TransformerLens'
``enable_compatibility_mode()`` on both models: LayerNorm/RMSNorm weights folded into the
following linear maps, writing weights and the unembedding centred (HookedTransformer's
numerics). The weight lenses detect this and do not fold twice.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from shiftlens.bridge import (
    DeviceMap,
    load_bridge,
    model_name,
    model_source,
    named_weights,
    resolve_device,
    resolve_dtype,
    short_names,
)
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.prompts import InstructionPrompt, TokenizedPrompt, tokenize_prompt

# load_bridge and model_name live in shiftlens.bridge (the leaf module); re-exported here.
__all__ = ["ModelPair", "PROBE_STRINGS", "SHAPE_FIELDS", "load_bridge", "model_name"]

#: Strings whose tokenization must be identical in both models' tokenizers.
PROBE_STRINGS: tuple[str, ...] = (
    "Instruction: reverse the words.\nInput: red cat sleeps\nResponse:",
    "Write a haiku about autumn leaves, please!",
    "def f(x):\n    return x ** 2  # square",
    "Translate 'über naïve café' into English: 1,234.56 — ok?",
    "  leading spaces and\ttabs\n\nnewlines ",
    "数学 123 😀",
)

#: Config fields that must agree between base and tuned.
SHAPE_FIELDS: tuple[str, ...] = (
    "n_layers",
    "n_heads",
    "n_key_value_heads",
    "d_model",
    "d_head",
    "d_mlp",
    "d_vocab",
)

Processing = Literal["raw", "compat"]


def _bridge_cls() -> type:
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge


def _check_names(names: Any) -> tuple[str, str]:
    """``(base, tuned)`` display names: two different, non-empty, one-line strings."""
    if isinstance(names, str) or not isinstance(names, (tuple, list)) or len(names) != 2:
        raise ShiftlensError(f"names must be a (base, tuned) pair of strings, got {names!r}")
    out = []
    for role, n in zip(("base", "tuned"), names):
        if not isinstance(n, str) or not n.strip() or "\n" in n:
            raise ShiftlensError(f"the {role} name must be a non-empty one-line string, got {n!r}")
        out.append(n.strip())
    if out[0] == out[1]:
        raise ShiftlensError(f"the base and tuned names must differ, got {out[0]!r} twice")
    return out[0], out[1]


def _per_role(value: Any, what: str) -> tuple[Any, Any]:
    """``value`` for both models, or a ``(base, tuned)`` pair of values."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ShiftlensError(
                f"{what} must be one value for both models or a (base, tuned) pair, got "
                f"{len(value)} values"
            )
        return value[0], value[1]
    return value, value


class ModelPair:
    """A base model and its instruction-tuned twin, checked compatible.

    Iterating yields ``("base", model)`` then ``("tuned", model)``.

    Attributes:
        base: The pre-trained model (a ``TransformerBridge``).
        tuned: The instruction-tuned model.
        tokenizer: The shared tokenizer (the base model's; checked equal to the tuned one's).
        names: ``{"base": ..., "tuned": ...}`` short model names used in figures, sentences,
            results and errors: the ``names`` given, else a hub id as it is and a local
            directory's last component(s) (``pair/base``; :func:`shiftlens.bridge.short_names`).
        sources: ``{"base": ..., "tuned": ...}`` where each model was loaded from, in full
            (absolute path or hub id; recorded for provenance in reports and Results).
        processing: ``"raw"`` (checkpoint weights) or ``"compat"`` (TL-processed weights).

    Example:
        >>> pair = ModelPair.from_pretrained("path/to/base", "path/to/tuned")  # doctest: +SKIP
        >>> for role, model in pair:  # doctest: +SKIP
        ...     print(role, model.cfg.n_layers)
    """

    def __init__(
        self,
        base: Any,
        tuned: Any,
        *,
        names: tuple[str, str] | None = None,
        processing: str = "raw",
        check: bool = True,
        probe_strings: Sequence[str] = PROBE_STRINGS,
    ) -> None:
        cls = _bridge_cls()
        for role, m in (("base", base), ("tuned", tuned)):
            if not isinstance(m, cls):
                raise ShiftlensError(
                    f"{role} model is a {type(m).__module__}.{type(m).__name__}, not a "
                    "transformer_lens TransformerBridge (boot it with "
                    "TransformerBridge.boot_transformers or use ModelPair.from_pretrained)"
                )
        if processing not in ("raw", "compat"):
            raise ShiftlensError(f"processing must be 'raw' or 'compat', got {processing!r}")
        self.base = base
        self.tuned = tuned
        self.sources = {"base": model_source(base), "tuned": model_source(tuned)}
        if names is None:
            n0, n1 = short_names(self.sources["base"], self.sources["tuned"])
        else:
            n0, n1 = _check_names(names)
        self.names = {"base": n0, "tuned": n1}
        self.processing: Processing = processing
        if base.tokenizer is None or tuned.tokenizer is None:
            missing = "base" if base.tokenizer is None else "tuned"
            raise ShiftlensError(f"{missing} model {self.names[missing]!r} has no tokenizer")
        self.tokenizer = base.tokenizer
        if check:
            self.check_compatible(probe_strings)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        base: str | Path,
        tuned: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        processing: str = "raw",
        check: bool = True,
        names: tuple[str, str] | None = None,
        device_map: DeviceMap | tuple[DeviceMap, DeviceMap] | None = None,
        max_memory: dict[int | str, int | str] | None = None,
        offload_folder: str | Path | None = None,
        n_devices: int | None = None,
        strict: bool = True,
        check_finite: bool = True,
        **boot_kwargs: Any,
    ) -> ModelPair:
        """Boot both models (hub ids, local HF directories or GGUF files).

        Each model is loaded by :func:`shiftlens.bridge.load_bridge`: a checkpoint with missing
        or unexpected tensors, a truncated file or a NaN/infinite weight is refused.

        Args:
            base: The pre-trained model.
            tuned: The instruction-tuned model.
            device: Device for both models (default ``"cpu"``); nothing is moved later. Not
                with ``device_map``/``n_devices``. An unknown or absent device is refused
                before anything loads (:func:`shiftlens.bridge.resolve_device`).
            dtype: Weight dtype for both: a ``torch.dtype`` or its name (``"bfloat16"``).
            processing: ``"raw"`` checkpoint weights (default) or ``"compat"``: TL's folded
                and centred weights (``enable_compatibility_mode``; refused for CPU/disk
                offloaded models, as TransformerLens refuses it).
            check: Run the compatibility checks (tokenizer, shapes, identical weights).
            names: ``(base, tuned)`` display names (default: short names from the references,
                :func:`shiftlens.bridge.short_names`; the full ones stay in ``pair.sources``).
            device_map: Accelerate placement for both models (see ``load_bridge``), or a
                ``(base_map, tuned_map)`` pair, e.g. ``({"": 0}, {"": 1})`` for one GPU each.
            max_memory: Per-target budget for a preset ``device_map``, per model.
            offload_folder: Disk-offload folder; each model gets its own subfolder
                (``base/``, ``tuned/``): the two share parameter names.
            n_devices: Split each model over this many CUDA GPUs.
            strict: Refuse checkpoints with missing or unexpected tensors (``False``: warn).
            check_finite: Refuse NaN/infinite weights.
            **boot_kwargs: Passed to ``TransformerBridge.boot_transformers``.

        Returns:
            The pair.

        Example:
            >>> pair = ModelPair.from_pretrained(  # doctest: +SKIP
            ...     "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct", dtype=torch.bfloat16
            ... )
            >>> big = ModelPair.from_pretrained(  # doctest: +SKIP
            ...     "meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct",
            ...     dtype=torch.bfloat16, device_map=("auto", "auto"),
            ...     max_memory={0: "75GiB", 1: "75GiB"})
        """
        if processing not in ("raw", "compat"):
            raise ShiftlensError(f"processing must be 'raw' or 'compat', got {processing!r}")
        dtype = resolve_dtype(dtype)
        if device is not None:
            resolve_device(device)
        if names is not None:
            names = _check_names(names)
        maps = _per_role(device_map, "device_map")
        if processing == "compat":
            for role, m in zip(("base", "tuned"), maps):
                if isinstance(m, dict) and any(
                    str(v).lower() in ("cpu", "disk") for v in m.values()
                ):
                    raise ShiftlensError(
                        f"processing='compat' with a CPU/disk device_map for the {role} model: "
                        "TransformerLens refuses weight processing on CPU/disk-offloaded "
                        "bridges (it reads raw meta tensors); use processing='raw'"
                    )
        models = []
        for role, path, dm in zip(("base", "tuned"), (base, tuned), maps):
            folder = Path(offload_folder) / role if offload_folder is not None else None
            models.append(load_bridge(
                path, device=device, dtype=dtype, device_map=dm, max_memory=max_memory,
                offload_folder=folder, n_devices=n_devices, strict=strict,
                check_finite=check_finite, **boot_kwargs,
            ))
        if processing == "compat":
            for m in models:
                try:
                    m.enable_compatibility_mode(disable_warnings=True)
                except (ValueError, NotImplementedError, RuntimeError) as e:
                    raise ShiftlensError(
                        f"processing='compat' is not possible for {model_name(m)!r}: {e}"
                    ) from e
        return cls(
            models[0],
            models[1],
            names=names,
            processing=processing,
            check=check,
        )

    @classmethod
    def from_models(
        cls,
        base: Any,
        tuned: Any,
        *,
        names: tuple[str, str] | None = None,
        processing: str = "raw",
        check: bool = True,
    ) -> ModelPair:
        """Wrap two TransformerBridges that are already loaded.

        Args:
            base: The pre-trained bridge.
            tuned: The instruction-tuned bridge.
            names: Optional display names (default: each ``cfg.model_name``).
            processing: Declare how their weights were processed (``"raw"`` or ``"compat"``).
            check: Run the compatibility checks.

        Example:
            >>> pair = ModelPair.from_models(base_bridge, tuned_bridge)  # doctest: +SKIP
        """
        return cls(base, tuned, names=names, processing=processing, check=check)

    # ------------------------------------------------------------------ checks
    def check_compatible(self, probe_strings: Sequence[str] = PROBE_STRINGS, *,
                         weights: bool = True) -> None:
        """Raise :class:`ShiftlensError` unless tokenizers and shapes agree; warn on equal weights.

        Args:
            probe_strings: Texts both tokenizers must encode identically.
            weights: Also compare every parameter (a warning when all are equal). Lenses that
                re-check a pair pass ``False``: the comparison reads both models in full, which
                is slow for offloaded models and was done when the pair was built.

        Example:
            >>> pair.check_compatible()  # doctest: +SKIP
        """
        b, t = self.names["base"], self.names["tuned"]
        who = f"base {b!r} vs tuned {t!r}"
        for field in SHAPE_FIELDS:
            vb = getattr(self.base.cfg, field, None)
            vt = getattr(self.tuned.cfg, field, None)
            if field == "n_key_value_heads":
                vb = vb or self.base.cfg.n_heads
                vt = vt or self.tuned.cfg.n_heads
            if vb != vt:
                raise ShiftlensError(f"incompatible pair ({who}): {field} {vb} != {vt}")
        tb, tt = self.base.tokenizer, self.tuned.tokenizer
        if tb is not tt:
            vb, vt = tb.get_vocab(), tt.get_vocab()
            if vb != vt:
                only_b = sorted(set(vb) - set(vt))[:5]
                only_t = sorted(set(vt) - set(vb))[:5]
                moved = sorted(k for k in set(vb) & set(vt) if vb[k] != vt[k])[:5]
                raise ShiftlensError(
                    f"incompatible tokenizers ({who}): vocabularies differ "
                    f"({len(vb)} vs {len(vt)} entries; only in base: {only_b}; only in tuned: "
                    f"{only_t}; different ids: {moved})"
                )
            for s in probe_strings:
                eb = tb(s, add_special_tokens=False)["input_ids"]
                et = tt(s, add_special_tokens=False)["input_ids"]
                if list(eb) != list(et):
                    raise ShiftlensError(
                        f"incompatible tokenizers ({who}): they tokenize {s!r} differently "
                        f"({list(eb)[:8]}... vs {list(et)[:8]}...)"
                    )
            if tb.bos_token_id != tt.bos_token_id:
                raise ShiftlensError(
                    f"incompatible tokenizers ({who}): BOS ids {tb.bos_token_id} != "
                    f"{tt.bos_token_id}"
                )
        if self.base.cfg.default_prepend_bos != self.tuned.cfg.default_prepend_bos:
            raise ShiftlensError(
                f"incompatible pair ({who}): default_prepend_bos "
                f"{self.base.cfg.default_prepend_bos} != {self.tuned.cfg.default_prepend_bos}"
            )
        if weights and (self.base is self.tuned or self.identical_weights()):
            warnings.warn(
                f"base {b!r} and tuned {t!r} have identical weights: every shift will be zero",
                ShiftlensWarning,
                stacklevel=3,
            )

    def identical_weights(self) -> bool:
        """True when every parameter of the two models is equal (stops at the first difference).

        Example:
            >>> pair.identical_weights()  # doctest: +SKIP
            False
        """
        kb = [n for n, _ in self.base.original_model.named_parameters()]
        kt = [n for n, _ in self.tuned.original_model.named_parameters()]
        if kb != kt:
            return False
        # module by module, so that offloaded weights are read in one module at a time
        gb, gt = named_weights(self.base), named_weights(self.tuned)
        try:
            with torch.no_grad():
                for (nb, v), (nt, w) in zip(gb, gt):
                    if nb != nt or v.shape != w.shape or not torch.equal(v.to(w.device, w.dtype), w):
                        return False
        finally:
            gb.close()
            gt.close()
        return True

    # ------------------------------------------------------------------ access
    @property
    def cfg(self) -> Any:
        """The (shared) TransformerLens config; the base model's."""
        return self.base.cfg

    @property
    def prepend_bos(self) -> bool:
        """Whether prompts get a BOS token (the models' ``cfg.default_prepend_bos``)."""
        return bool(self.base.cfg.default_prepend_bos)

    @property
    def models(self) -> dict[str, Any]:
        """``{"base": base, "tuned": tuned}``."""
        return {"base": self.base, "tuned": self.tuned}

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        yield "base", self.base
        yield "tuned", self.tuned

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"ModelPair(base={self.names['base']!r}, tuned={self.names['tuned']!r}, "
            f"n_layers={c.n_layers}, n_heads={c.n_heads}, d_model={c.d_model}, "
            f"processing={self.processing!r})"
        )

    # ------------------------------------------------------------------ prompts & capture
    def tokenize(
        self, prompt: InstructionPrompt, response: str | None = None
    ) -> TokenizedPrompt:
        """Tokenize a prompt (+ optional response) for this pair, with segment labels.

        Example:
            >>> tp = pair.tokenize(prompt, response=prompt.reference)  # doctest: +SKIP
        """
        if not isinstance(prompt, InstructionPrompt):
            raise ShiftlensError(
                f"expected an InstructionPrompt, got {type(prompt).__name__}"
            )
        return tokenize_prompt(
            self.tokenizer,
            prompt,
            prepend_bos=self.prepend_bos,
            response=response,
            n_ctx=self.cfg.n_ctx,
            model_name=f"{self.names['base']!r}/{self.names['tuned']!r}",
        )

    def run_with_cache(
        self,
        prompts: Sequence[InstructionPrompt],
        names_filter: Any = None,
        *,
        batch_size: int = 8,
        reduce: str | None = None,
        with_reference: bool = True,
        progress: bool = True,
    ) -> Any:
        """Run both models on identical tokens and cache the requested hooks.

        See :func:`shiftlens.capture.capture_pair` for the arguments.

        Raises:
            ShiftlensError: ``prompts`` is not a list of :class:`InstructionPrompt` (a string
                is refused with a hint: wrap it in ``InstructionPrompt``), or is empty.

        Example:
            >>> cache = pair.run_with_cache(prompts, ["blocks.0.hook_resid_post"])  # doctest: +SKIP
        """
        from shiftlens.capture import capture_pair
        from shiftlens.checks import check_prompts

        prompts = check_prompts(prompts, who="run_with_cache")

        return capture_pair(
            self,
            prompts,
            names_filter,
            batch_size=batch_size,
            reduce=reduce,
            with_reference=with_reference,
            progress=progress,
        )
