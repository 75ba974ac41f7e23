"""Booting one TransformerBridge: names, devices, placement, and refusing broken weights.

The leaf under :mod:`shiftlens.pair`, :mod:`shiftlens.capture`, :mod:`shiftlens.weights` and the
lenses: it imports nothing from them (only :mod:`shiftlens.errors`, :mod:`shiftlens.weightfiles`
and, for ``.gguf`` paths, :mod:`shiftlens.checkpoints`), so none of them form an import cycle.

What :func:`load_bridge` guarantees beyond ``TransformerBridge.boot_transformers``:

* **No silently random weights.** transformers initialises every tensor a checkpoint lacks at
  random and only logs it (TransformerLens even silences that log). ``load_bridge`` loads
  through the model class TransformerLens would use, with ``output_loading_info=True``, and
  raises :class:`~shiftlens.errors.ShiftlensError` naming every missing and unexpected tensor.
  Tied weights (GPT-2's ``lm_head``) and non-persistent buffers (rotary frequencies) are not in
  that report, so they are never false alarms. Local safetensors files are checked first
  (:func:`shiftlens.weightfiles.verify_checkpoint_files`): a truncated file is named with the
  tensors it cuts off. Then one pass over the parameters refuses any NaN or infinity, naming the
  tensor (:func:`check_finite_weights`).
* **Placement.** ``device_map`` (a dict, or ``"auto"``/``"balanced"``/``"balanced_low_0"``/
  ``"sequential"``), ``max_memory``, ``offload_folder`` and ``n_devices`` reach TransformerLens'
  accelerate dispatch; maps TransformerLens refuses are refused up front
  (:func:`check_device_map`), and string maps are resolved on an empty (meta) model
  (:func:`plan_device_map`) before any weight is read.
* **One input device.** :func:`device_of` is where inputs go; for a dispatched model whose
  embedding is offloaded TransformerLens records ``cfg.device="meta"``, which ``load_bridge``
  corrects to the offload hook's execution device, so ``cfg.device`` is always usable.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from shiftlens.devicemap import (  # noqa: F401 - re-exported
    DEVICE_MAP_PRESETS,
    DeviceMap,
    DevicePlan,
    _config_of,
    check_device_map,
    empty_model,
    parse_device_map,
    plan_device_map,
)
from shiftlens.errors import ShiftlensError, ShiftlensWarning

__all__ = [
    "DEVICE_MAP_PRESETS",
    "DTYPE_NAMES",
    "DevicePlan",
    "model_name",
    "model_source",
    "short_name",
    "short_names",
    "resolve_dtype",
    "resolve_device",
    "quiet_loading",
    "device_of",
    "materialized",
    "named_weights",
    "check_finite_weights",
    "check_device_map",
    "parse_device_map",
    "plan_device_map",
    "empty_model",
    "load_bridge",
    "load_packaged",
]


_WRAPPER_SEGMENT = "._original_component"


# ---------------------------------------------------------------------------------- names
#: Directory names that say nothing about the model alone; the parent is added (``pair/base``).
GENERIC_DIR_NAMES = frozenset({
    "base", "tuned", "model", "models", "hf", "final", "main", "checkpoint", "checkpoints",
    "instruct", "chat", "sft", "merged", "output", "outputs", "out", "weights", "latest", "best",
    "snapshot", "export", "converted",
})
_GENERIC_RE = re.compile(
    r"(?:checkpoint|ckpt|step|global_step|epoch|iter|iteration|run)[-_]?\d+"
    r"|v?\d+(?:\.\d+)*|[0-9a-f]{40}", re.IGNORECASE)
_HUB_CACHE_RE = re.compile(r"models--([^/\\]+)--([^/\\]+)[/\\]snapshots[/\\][0-9a-f]+")


def _is_local(ref: str) -> bool:
    """Whether ``ref`` names a local path (it exists, or reads as a path), not a hub id."""
    if ref.startswith(("/", "./", "../", "~", ".\\", "..\\")) or ref.endswith(".gguf"):
        return True
    try:
        return Path(ref).expanduser().exists()
    except OSError:  # pragma: no cover - a name too long for the file system
        return False


def _path_parts(ref: str) -> list[str]:
    return [p for p in Path(ref).expanduser().parts if p not in ("/", "\\", "~", ".", "")]


def _tail(parts: list[str], k: int) -> str:
    return "/".join(parts[-k:])


def _first_k(parts: list[str]) -> int:
    """How many trailing path components name the model readably (2 for ``.../pair/base``)."""
    last = parts[-1] if parts else ""
    generic = last.lower() in GENERIC_DIR_NAMES or bool(_GENERIC_RE.fullmatch(last))
    return min(len(parts), 2 if generic else 1) or 1


def short_name(ref: str | Path) -> str:
    """A short, readable name for a model reference, for figures, sentences and tables.

    * a hub id stays as it is (``"Qwen/Qwen2.5-0.5B"``);
    * a Hugging Face cache snapshot (``.../models--Qwen--Qwen2.5-0.5B/snapshots/<sha>``) gives
      its hub id back;
    * a local directory or file gives its last path component (``/data/llama-7b`` ->
      ``"llama-7b"``, ``/m/qwen-q8.gguf`` -> ``"qwen-q8.gguf"``), with its parent added when
      that component alone says nothing (``base``, ``tuned``, ``model``, ``final``,
      ``checkpoint-500``, ``v2``, ...): ``shiftlens/zoo/pair/base`` -> ``"pair/base"``.

    The full reference stays in ``ModelPair.sources`` and in every report's ``metrics.json``.

    Example:
        >>> short_name("Qwen/Qwen2.5-0.5B")
        'Qwen/Qwen2.5-0.5B'
        >>> short_name("/work/zoo/pair/base"), short_name("/data/llama-7b/")
        ('pair/base', 'llama-7b')
        >>> short_name("/hf/hub/models--Qwen--Qwen2.5-0.5B/snapshots/" + "a" * 40)
        'Qwen/Qwen2.5-0.5B'
    """
    s = str(ref)
    m = _HUB_CACHE_RE.search(s)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    if not _is_local(s):
        return s
    parts = _path_parts(s)
    if not parts:
        return s
    return _tail(parts, _first_k(parts))


def short_names(base: str | Path, tuned: str | Path) -> tuple[str, str]:
    """Short names for a pair (:func:`short_name`), lengthened until the two differ.

    Two checkpoints that end alike (``/runs/a/final`` and ``/runs/b/final``) get as many parent
    components as it takes to tell them apart (``a/final``, ``b/final``).

    Example:
        >>> short_names("/runs/a/final", "/runs/b/final")
        ('a/final', 'b/final')
        >>> short_names("/x/2024/exp/model", "/x/2025/exp/model")
        ('2024/exp/model', '2025/exp/model')
    """
    nb, nt = short_name(base), short_name(tuned)
    sb, st = str(base), str(tuned)
    if nb != nt or not (_is_local(sb) and _is_local(st)) or _HUB_CACHE_RE.search(sb):
        return nb, nt
    pb, pt = _path_parts(sb), _path_parts(st)
    k = max(_first_k(pb), _first_k(pt))
    while _tail(pb, k) == _tail(pt, k) and k < max(len(pb), len(pt)):
        k += 1
    return _tail(pb, k), _tail(pt, k)


def model_source(model: Any) -> str:
    """Where a bridge was loaded from, in full: the reference given to :func:`load_bridge`
    (hub id, directory or ``.gguf`` file), else its ``cfg.model_name``.

    Example:
        >>> class Cfg: model_name = "/data/models/llama-7b"
        >>> class M: cfg = Cfg()
        >>> model_source(M())
        '/data/models/llama-7b'
    """
    src = getattr(model, "shiftlens_source", None)
    if src:
        return str(src)
    return str(getattr(getattr(model, "cfg", None), "model_name", None) or type(model).__name__)


def model_name(model: Any) -> str:
    """A short readable name for a bridge: :func:`short_name` of :func:`model_source`.

    Example:
        >>> class Cfg: model_name = "Qwen/Qwen2.5-0.5B"
        >>> class M: cfg = Cfg()
        >>> model_name(M())
        'Qwen/Qwen2.5-0.5B'
        >>> Cfg.model_name = "/work/shiftlens/zoo/pair/tuned"
        >>> model_name(M())
        'pair/tuned'
    """
    return short_name(model_source(model))


# ---------------------------------------------------------------------------------- dtype, device
#: Weight dtypes accepted by name (``dtype="bfloat16"``); a ``torch.dtype`` is accepted as well.
DTYPE_NAMES: tuple[str, ...] = ("float32", "float16", "bfloat16", "float64")
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
                  "float": "float32", "double": "float64", "fp64": "float64"}


def resolve_dtype(dtype: Any) -> torch.dtype:
    """A weight dtype from a ``torch.dtype`` or its name (``"bfloat16"``, ``"torch.float16"``).

    Raises:
        ShiftlensError: an unknown name, or a dtype that is not floating point.

    Example:
        >>> resolve_dtype("bfloat16"), resolve_dtype(torch.float16)
        (torch.bfloat16, torch.float16)
        >>> resolve_dtype("float8")
        Traceback (most recent call last):
        ...
        shiftlens.errors.ShiftlensError: dtype 'float8' is not a weight dtype; use one of float32, float16, bfloat16, float64 (a name or the torch.dtype)
    """
    choices = ", ".join(DTYPE_NAMES)
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ShiftlensError(f"dtype {dtype} is not a floating-point weight dtype; use one of "
                                 f"{choices}")
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        key = _DTYPE_ALIASES.get(key, key)
        if key in DTYPE_NAMES:
            return getattr(torch, key)
    raise ShiftlensError(f"dtype {dtype!r} is not a weight dtype; use one of {choices} (a name "
                         "or the torch.dtype)")


def resolve_device(device: Any) -> torch.device:
    """A checked device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, an index or a
    ``torch.device``, refused when unknown or not present on this machine.

    Raises:
        ShiftlensError: an unknown device type (``"tpu"``), CUDA or MPS requested where torch
            has none, or a CUDA index beyond the devices torch sees.

    Example:
        >>> resolve_device("CPU")
        device(type='cpu')
        >>> resolve_device("tpu")
        Traceback (most recent call last):
        ...
        shiftlens.errors.ShiftlensError: unknown device 'tpu'; use cpu, cuda, cuda:N or mps
    """
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ShiftlensError(f"device must be a string such as 'cpu' or 'cuda:0' or a "
                             f"torch.device, got {type(device).__name__} {device!r}")
    if isinstance(device, int):
        device = f"cuda:{device}"
    if isinstance(device, str):
        text = device.strip().lower()
        if not re.fullmatch(r"cpu|mps|meta|cuda(:\d+)?", text):
            raise ShiftlensError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps")
        dev = torch.device(text)
    else:
        dev = device
    if dev.type == "cuda":
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not have:
            raise ShiftlensError(f"device {str(device)!r} requested but CUDA is not available "
                                 f"(torch {torch.__version__}); use cpu")
        if dev.index is not None and dev.index >= have:
            raise ShiftlensError(f"device {str(device)!r}: no such CUDA device ({have} available)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if not (mps and mps.is_available()):
            raise ShiftlensError("device 'mps' requested but it is not available; use cpu")
    elif dev.type not in ("cpu", "meta"):
        raise ShiftlensError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps")
    return dev


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No ``Loading weights`` progress bars from transformers inside the block.

    The user's transformers setting is restored afterwards (bars stay on or off as they were),
    so it only scopes shiftlens' own loads; download bars of ``huggingface_hub`` are kept.

    Example:
        >>> with quiet_loading():
        ...     pass
    """
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _clean(name: str) -> str:
    """A parameter name as the checkpoint spells it (TransformerLens' wrapper levels removed)."""
    return name.replace(_WRAPPER_SEGMENT, "").removeprefix("_original_component.")


# ---------------------------------------------------------------------------------- devices
def _hf(model: Any) -> Any:
    return getattr(model, "original_model", model)


def _input_embedding(hf: Any) -> Any:
    get = getattr(hf, "get_input_embeddings", None)
    if not callable(get):
        return None
    try:
        emb = get()
    except (AttributeError, NotImplementedError):
        return None
    return getattr(emb, "original_component", None) or emb


def device_of(model: Any) -> torch.device:
    """The device a model's inputs go to.

    ``cfg.device`` (what TransformerLens and :mod:`shiftlens.capture` use), except where it
    cannot hold inputs: a dispatched model whose input embedding is offloaded (its weights on
    the meta device, materialized per call by accelerate) takes the offload hook's execution
    device. :func:`load_bridge` writes that value back into ``cfg.device``.

    Args:
        model: A TransformerBridge (or a Hugging Face model).

    Example:
        >>> from shiftlens.zoo import pair_dirs
        >>> device_of(load_bridge(pair_dirs()[0]))  # doctest: +SKIP
        device(type='cpu')
    """
    hf = _hf(model)
    emb = _input_embedding(hf)
    hook = getattr(emb, "_hf_hook", None) if emb is not None else None
    exe = getattr(hook, "execution_device", None)
    if exe is not None:
        return torch.device(exe) if not isinstance(exe, int) else torch.device("cuda", exe)
    dev = getattr(getattr(model, "cfg", None), "device", None)
    if dev is not None and torch.device(dev).type != "meta":
        return torch.device(dev)
    if emb is not None:
        p = next(emb.parameters(), None)
        if p is not None and p.device.type != "meta":
            return p.device
    for p in hf.parameters() if hasattr(hf, "parameters") else ():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def materialized(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inside the block, every offloaded parameter under ``module`` holds its real data.

    Accelerate's CPU/disk offload leaves parameters on the meta device and fills them in for
    the duration of a forward call; reading weights (``W_out``, norm gains) outside a forward
    needs the same. A no-op for models that are not offloaded.

    Example:
        >>> with materialized(model.blocks[3].mlp):  # doctest: +SKIP
        ...     W = model.blocks[3].mlp.W_out
    """
    try:
        from accelerate.utils import align_module_device, has_offloaded_params
    except ImportError:  # accelerate missing: nothing can be offloaded
        yield module
        return
    with contextlib.ExitStack() as stack:
        for sub in module.modules():
            if has_offloaded_params(sub):
                stack.enter_context(align_module_device(sub))
        yield module


def named_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter of a model, by checkpoint name, materialized one module at a time.

    Names are the Hugging Face ones (``model.layers.0.mlp.down_proj.weight``: TransformerLens'
    wrapper levels removed). Offloaded parameters are read in for their module only, so memory
    stays at one module's weights. A tied parameter is yielded once, under the name of the
    tensor it is tied to (``transformer.wte.weight``, not ``lm_head.weight``), so the sequence is
    the same whatever the placement.

    Raises:
        ShiftlensError: a parameter is on the meta device and no offload hook can fill it in.

    Example:
        >>> n = sum(w.numel() for _, w in named_weights(model))  # doctest: +SKIP
    """
    from contextlib import nullcontext

    try:
        from accelerate.utils import align_module_device, has_offloaded_params
    except ImportError:  # pragma: no cover - accelerate is a transformers dependency here
        align_module_device = has_offloaded_params = None
    hf = _hf(model)
    # a tied parameter once, under its source's name, whatever the placement (dispatching can
    # give the two ends of a tie separate meta parameters; offloaded reads are new objects)
    tied = set(getattr(hf, "all_tied_weights_keys", None) or ())  # targets -> their sources
    wanted = {n for n, _ in hf.named_parameters() if _clean(n) not in tied}
    seen: set[int] = set()
    for mname, mod in hf.named_modules():
        if not any(True for _ in mod.parameters(recurse=False)):
            continue
        offloaded = has_offloaded_params is not None and has_offloaded_params(mod)
        with align_module_device(mod) if offloaded else nullcontext():
            for pname, p in mod.named_parameters(recurse=False):
                raw = f"{mname}.{pname}" if mname else pname
                if raw not in wanted:
                    continue
                full = _clean(raw)
                if p.device.type == "meta":
                    raise ShiftlensError(
                        f"{model_name(model)}: parameter {full!r} is on the meta device and no "
                        "offload hook holds its data (a weightless or broken load)"
                    )
                if not offloaded:  # resident parameters live on: their ids are stable
                    if id(p) in seen:
                        continue
                    seen.add(id(p))
                yield full, p


def _nonfinite(p: torch.Tensor) -> tuple[int, int, int, tuple[int, ...]] | None:
    """``(n_bad, n_nan, n_inf, first index)`` when ``p`` holds a NaN or infinity, else None."""
    if not p.is_floating_point() or p.numel() == 0:
        return None
    with torch.no_grad():
        x = p.detach()
        if x.element_size() < 2:  # float8: no reductions
            x = x.float()
        # one pass: min and max propagate NaN and show +-inf; no overflow, so no false alarms
        lo, hi = torch.aminmax(x)
        if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
            return None
        nan = torch.isnan(x)
        inf = torch.isinf(x)
        n_nan, n_inf = int(nan.sum()), int(inf.sum())
        first = torch.nonzero(nan | inf)[0]
        return n_nan + n_inf, n_nan, n_inf, tuple(int(i) for i in first)


def check_finite_weights(model: Any, *, name: str | None = None) -> None:
    """Raise :class:`ShiftlensError` if any parameter holds a NaN or an infinity.

    One pass per tensor (``torch.aminmax``: NaN propagates into both, an infinity shows as the
    minimum or maximum, and nothing can overflow, so there are no false alarms); only a tensor
    found bad is then counted element by element. Offloaded parameters are read one module at a
    time (:func:`named_weights`).

    Args:
        model: A TransformerBridge or a Hugging Face model.
        name: The model's name for the message (default :func:`model_name`).

    Raises:
        ShiftlensError: naming every tensor with non-finite values, their counts and the first
            bad index.

    Example:
        >>> check_finite_weights(model)  # doctest: +SKIP
    """
    who = name or model_name(model)
    bad = []
    for pname, p in named_weights(model):
        r = _nonfinite(p)
        if r is not None:
            bad.append((pname, tuple(p.shape), r))
    if bad:
        lines = "; ".join(
            f"{n!r} {list(shape)}: {r[0]} non-finite ({r[1]} NaN, {r[2]} inf), first at index "
            f"{list(r[3])}"
            for n, shape, r in bad[:5]
        )
        more = f" and {len(bad) - 5} more tensors" if len(bad) > 5 else ""
        raise ShiftlensError(f"model {who!r} has non-finite weights: {lines}{more}")


# ---------------------------------------------------------------------------------- loading
def _shape_mismatches(path: str, config: Any) -> str:
    """The tensors of the local checkpoint ``path`` whose shapes differ from what ``config``'s
    model expects (read from the safetensors headers and an empty model: nothing loaded)."""
    try:
        from shiftlens.weightfiles import SafetensorsCheckpoint

        ck = SafetensorsCheckpoint(path)
        want = {n: tuple(p.shape) for n, p in empty_model(config or path).state_dict().items()}
        bad = [f"{n} is {list(ck.entry(n).shape)} in the file, the model expects "
               f"{list(want[n])}" for n in ck.keys() if n in want
               and tuple(ck.entry(n).shape) != want[n]]
    except Exception as e:  # noqa: BLE001 - the diagnosis must not hide the error
        return f"tensor shapes differ (naming them failed: {type(e).__name__}: {e})"
    if not bad:
        return "tensor shapes differ"
    return (f"{len(bad)} tensor{'s' if len(bad) != 1 else ''} of the wrong shape: "
            + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))


class _CheckedLoader:
    """``model_class`` for ``boot_transformers``: the class TL would pick, loading with checks.

    TransformerLens calls ``model_class.from_pretrained(name, **model_kwargs)``; this loads with
    ``output_loading_info=True`` and refuses missing/unexpected tensors and non-finite weights
    before TransformerLens wraps the model. ``from_config`` (``load_weights=False``) passes
    through unchecked.
    """

    def __init__(self, name: str, cls: Any, strict: bool, check_finite: bool) -> None:
        self.name, self.cls, self.strict, self.check_finite = name, cls, strict, check_finite
        self.loading_info: dict[str, Any] | None = None
        self.__name__ = getattr(cls, "__name__", type(self).__name__)

    def _resolve(self, config: Any) -> Any:
        if self.cls is not None:
            return self.cls
        from transformer_lens.model_bridge.sources.transformers import (
            determine_architecture_from_hf_config,
            get_hf_model_class_for_architecture,
        )

        return get_hf_model_class_for_architecture(determine_architecture_from_hf_config(config))

    def from_config(self, config: Any, **kwargs: Any) -> Any:
        return self._resolve(config).from_config(config, **kwargs)

    def from_pretrained(self, name: str, **kwargs: Any) -> Any:
        from transformers import PreTrainedModel

        cls = self._resolve(kwargs.get("config"))
        if isinstance(cls, type) and issubclass(cls, PreTrainedModel):
            kwargs.pop("code_revision", None)  # what TL does for concrete classes
        try:
            model, info = cls.from_pretrained(name, output_loading_info=True, **kwargs)
        except RuntimeError as e:
            if "mismatched" not in str(e):
                raise
            # transformers' own report of the shapes is a log record TL silences: name them
            raise ShiftlensError(f"checkpoint {self.name!r} does not match its config: "
                                 + _shape_mismatches(name, kwargs.get("config"))) from e
        self.loading_info = info
        missing = sorted(info.get("missing_keys") or ())
        unexpected = sorted(info.get("unexpected_keys") or ())
        if missing or unexpected:
            msg = (
                f"checkpoint {self.name!r} does not match {type(model).__name__}: "
                + "; ".join(
                    f"{label} {len(keys)} tensor{'s' if len(keys) != 1 else ''} "
                    f"{keys[:10]}{' ...' if len(keys) > 10 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys
                )
                + (" (transformers would initialise the missing ones at random)" if missing
                   else "")
            )
            if self.strict:
                raise ShiftlensError(msg + "; pass strict=False to load it anyway")
            warnings.warn(msg, ShiftlensWarning, stacklevel=2)
        if self.check_finite:
            check_finite_weights(model, name=self.name)
        return model


def _check_available(device_map: Any) -> None:
    """Refuse CUDA targets this machine does not have (accelerate would fail mid-load)."""
    if not isinstance(device_map, Mapping):
        return
    wanted = set()
    for v in device_map.values():
        if isinstance(v, int):
            wanted.add(v)
        elif isinstance(v, str) and v.split(":")[0] == "cuda":
            wanted.add(int(v.split(":")[1]) if ":" in v else 0)
    have = torch.cuda.device_count()
    if wanted and max(wanted) >= have:
        raise ShiftlensError(
            f"device_map uses CUDA device {max(wanted)} but torch sees {have} CUDA device(s)"
        )


def load_bridge(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    tokenizer: Any = None,
    device_map: DeviceMap | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
    offload_folder: str | Path | None = None,
    n_devices: int | None = None,
    strict: bool = True,
    check_finite: bool = True,
    **boot_kwargs: Any,
) -> Any:
    """Boot one TransformerBridge from a hub id, a local Hugging Face directory or a GGUF file.

    Local directories load offline (set ``HF_HUB_OFFLINE=1`` to make sure nothing is fetched).
    The checkpoint must match the architecture exactly and hold only finite weights (see the
    module docstring).

    Args:
        name_or_path: Hub id (``"Qwen/Qwen2.5-0.5B"``), local HF directory, or ``.gguf`` file
            (converted once into a cached HF directory by :mod:`shiftlens.checkpoints`).
        device: Device for the weights (default ``"cpu"``; checked by :func:`resolve_device`).
            Not with ``device_map`` or ``n_devices``.
        dtype: Weight dtype: a ``torch.dtype`` or its name (``"bfloat16"``; see
            :func:`resolve_dtype`).
        tokenizer: Optional tokenizer to use instead of the checkpoint's.
        device_map: Accelerate placement: ``{module: target}`` (targets a GPU index,
            ``"cpu"``, ``"disk"``) or a preset (:data:`DEVICE_MAP_PRESETS`), which is resolved
            by :func:`plan_device_map` first. Checked with :func:`check_device_map`.
        max_memory: Per-target budgets for a preset ``device_map``.
        offload_folder: Where accelerate may write disk-offloaded weights (safetensors
            checkpoints are read in place; other formats are re-saved there).
        n_devices: Split over this many CUDA GPUs (TransformerLens' shortcut for a balanced
            map); not with ``device_map``.
        strict: Missing or unexpected checkpoint tensors raise (default); ``False`` warns.
        check_finite: Refuse NaN/infinite weights (one pass over the parameters).
        **boot_kwargs: Passed to ``TransformerBridge.boot_transformers``.

    Returns:
        The booted bridge, in eval mode, with ``cfg.device`` = :func:`device_of`, and
        ``shiftlens_source`` = the full reference it was loaded from (:func:`model_source`;
        :func:`model_name` is the short form). transformers' ``Loading weights`` bars are off
        for the load (:func:`quiet_loading`).

    Raises:
        ShiftlensError: an unknown dtype or device, not a model directory, unreadable or truncated files, missing or
            unexpected tensors, non-finite weights, a refused placement, or (offline) a hub id
            that is not cached.

    Example:
        >>> from shiftlens.zoo import pair_dirs
        >>> model = load_bridge(pair_dirs()[0])  # doctest: +SKIP
        >>> offloaded = load_bridge(pair_dirs()[0], device_map={  # doctest: +SKIP
        ...     "model.embed_tokens": "cpu", "model.layers": "disk", "model.norm": "cpu",
        ...     "model.rotary_emb": "cpu", "lm_head": "cpu"}, offload_folder="/tmp/off")
    """
    from transformer_lens.model_bridge import TransformerBridge

    name = str(name_or_path)
    dtype = resolve_dtype(dtype)
    if device is not None:
        device = str(resolve_device(device))
    source = name
    if _is_local(name) and Path(name).expanduser().exists():
        source = str(Path(name).expanduser().resolve())
    if name.endswith(".gguf"):
        from shiftlens.checkpoints import gguf_to_hf_dir

        name = str(gguf_to_hf_dir(name))
    path = Path(name)
    if path.exists() and not (path / "config.json").exists():
        raise ShiftlensError(f"{name!r} exists but is not a Hugging Face model directory")
    load_weights = boot_kwargs.get("load_weights", True)
    if path.is_dir() and load_weights and (
        any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists()
    ):
        from shiftlens.weightfiles import verify_checkpoint_files

        verify_checkpoint_files(path)

    placement: dict[str, Any] = {}
    if device_map is not None or (n_devices is not None and n_devices > 1):
        if device is not None:
            raise ShiftlensError(
                f"give device or device_map/n_devices, not both (device={device!r}, "
                f"device_map={device_map!r}, n_devices={n_devices}): TransformerLens treats "
                "them as mutually exclusive"
            )
        if device_map is not None:
            device_map = check_device_map(device_map, n_devices=n_devices)
            if isinstance(device_map, str) and load_weights:
                device_map = plan_device_map(name, max_memory=max_memory, dtype=dtype,
                                             strategy=device_map).device_map
                max_memory = None
            _check_available(device_map)
            placement["device_map"] = device_map
        else:
            have = torch.cuda.device_count()
            if have < int(n_devices):  # type: ignore[arg-type]
                raise ShiftlensError(
                    f"n_devices={n_devices} needs that many CUDA GPUs; torch sees {have}"
                )
            placement["n_devices"] = n_devices
        if max_memory is not None:
            placement["max_memory"] = dict(max_memory)
        if offload_folder is not None:
            placement["offload_folder"] = str(offload_folder)
    else:
        placement["device"] = device if device is not None else "cpu"
        if n_devices is not None:
            placement["n_devices"] = n_devices

    loader = _CheckedLoader(name, boot_kwargs.pop("model_class", None), strict, check_finite)
    try:
        with quiet_loading():
            model = TransformerBridge.boot_transformers(
                name, dtype=dtype, tokenizer=tokenizer, model_class=loader, **placement,
                **boot_kwargs,
            )
    except ShiftlensError:
        raise
    except OSError as e:
        raise ShiftlensError(
            f"could not load model {name!r}: {e}. Offline, give a local directory or GGUF file."
        ) from e
    except Exception as e:  # safetensors errors, TL/accelerate placement refusals
        if type(e).__name__ == "SafetensorError" or isinstance(e, (ValueError, RuntimeError)):
            raise ShiftlensError(f"could not load model {name!r}: {type(e).__name__}: {e}") from e
        raise
    if getattr(_hf(model), "hf_device_map", None):
        model.cfg.device = str(device_of(model))
    model.shiftlens_source = source  # the full reference; model_name() shortens it
    model.eval()
    return model


def load_packaged(
    name: str,
    *,
    device: str = "cpu",
    dtype: Any = None,
    cache: str | Path | None = None,
    progress: bool = True,
) -> Any:
    """Boot a packaged checkpoint as a ``TransformerBridge`` (converting it on first use).

    Also importable as ``shiftlens.checkpoints.load_packaged``.

    Args:
        name: ``"smollm2"`` or ``"gemma3-270m"``.
        device: Device for the weights.
        dtype: Weight dtype (default float32).
        cache: Cache root.
        progress: Show progress while converting.

    Example:
        >>> model = load_packaged("smollm2")  # doctest: +SKIP
        >>> model.cfg.architecture  # doctest: +SKIP
        'LlamaForCausalLM'
    """
    from shiftlens.checkpoints import packaged_hf_dir

    d = packaged_hf_dir(name, cache, progress=progress)
    return load_bridge(d, device=device, dtype=dtype if dtype is not None else torch.float32)
