"""Device maps: checking, parsing and planning where a model's layers go, before loading.

``load_bridge(device_map=...)`` hands a device map to TransformerLens' accelerate dispatch.
:func:`check_device_map` refuses, up front, the maps TransformerLens would refuse (or misread);
:func:`parse_device_map` reads the command line's ``--device-map`` text; :func:`plan_device_map`
resolves a string map (``"auto"``, ``"balanced"``...) on an empty (meta) model, with the bytes
each device would hold, before any weight is read. Re-exported by :mod:`shiftlens.bridge`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from shiftlens.errors import ShiftlensError

__all__ = ["DEVICE_MAP_PRESETS", "DeviceMap", "DevicePlan", "check_device_map",
           "parse_device_map", "plan_device_map", "empty_model"]

#: The string device maps accelerate resolves itself.
DEVICE_MAP_PRESETS: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")

DeviceMap = Union[str, Mapping[str, Union[int, str, torch.device]]]

def _norm_target(key: str, v: Any) -> int | str:
    if isinstance(v, torch.device):
        return v.index if v.type == "cuda" and v.index is not None else str(v)
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ShiftlensError(
            f"device_map[{key!r}] = {v!r}: a target is a GPU index, 'cpu', 'disk' or a torch "
            "device string"
        )
    if isinstance(v, int):
        if v < 0:
            raise ShiftlensError(f"device_map[{key!r}] = {v}: GPU indices are >= 0")
        return v
    s = v.strip().lower()
    if s in ("cpu", "disk", "meta"):
        return s
    try:
        torch.device(s)
    except RuntimeError as e:
        raise ShiftlensError(
            f"device_map[{key!r}] = {v!r} is not a device (use a GPU index, 'cpu', 'disk' or "
            "e.g. 'cuda:1')"
        ) from e
    return s


def _is_gpu(v: int | str) -> bool:
    return isinstance(v, int) or (isinstance(v, str) and v.split(":")[0] in ("cuda", "xpu", "npu"))


def check_device_map(device_map: DeviceMap, *, n_devices: int | None = None) -> DeviceMap:
    """Refuse, before anything is loaded, the device maps TransformerLens 4.3 refuses.

    TransformerLens' ``boot_transformers`` (``sources/transformers/source.py`` and
    ``utilities/multi_gpu.py``) rejects:

    * ``device`` together with ``device_map`` (mutually exclusive; checked by :func:`load_bridge`);
    * ``"meta"`` targets when weights are loaded: there is no data to offload from;
    * a map mixing CPU or disk offload with a GPU target: TransformerLens materializes offloaded
      weights through accelerate's hooks in every component call, but has verified that only on
      CPU-only hardware, so it refuses any map that also places weights on a GPU
      (``MIXED_OFFLOAD_GPU_ERROR``). All-GPU maps, all-CPU maps and CPU+disk maps are accepted;
    * ``n_devices > 1`` whose realized map holds CPU targets (``n_devices`` is GPU-only);
    * a map that splits tied parameters across devices (found after loading; converted to a
      :class:`ShiftlensError` by :func:`load_bridge`).

    Args:
        device_map: A preset string (:data:`DEVICE_MAP_PRESETS`) or ``{module: target}`` with
            targets a GPU index, ``"cpu"``, ``"disk"`` or a torch device.
        n_devices: The ``n_devices`` that goes with it (both together are ambiguous: refused).

    Returns:
        The map with targets normalized (``torch.device("cuda", 1)`` -> ``1``, lower case).

    Raises:
        ShiftlensError: saying which entry is refused and why.

    Example:
        >>> check_device_map({"model.embed_tokens": "cpu", "model.layers": "disk", "lm_head": "cpu"})
        {'model.embed_tokens': 'cpu', 'model.layers': 'disk', 'lm_head': 'cpu'}
        >>> check_device_map({"model.layers.0": 0, "model.layers.1": "cpu"})
        Traceback (most recent call last):
        ...
        shiftlens.errors.ShiftlensError: device_map mixes CPU/disk offload ...
    """
    if n_devices is not None:
        raise ShiftlensError(
            f"give device_map or n_devices, not both (device_map={device_map!r}, "
            f"n_devices={n_devices})"
        )
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_PRESETS:
            raise ShiftlensError(
                f"device_map {device_map!r} is not one of {list(DEVICE_MAP_PRESETS)} (or give a "
                "dict {module: target})"
            )
        return device_map
    if not isinstance(device_map, Mapping) or not device_map:
        raise ShiftlensError(
            f"device_map must be one of {list(DEVICE_MAP_PRESETS)} or a non-empty dict "
            f"{{module name: target}}, got {device_map!r}"
        )
    norm = {str(k): _norm_target(str(k), v) for k, v in device_map.items()}
    meta = sorted(k for k, v in norm.items() if v == "meta")
    if meta:
        raise ShiftlensError(
            f"device_map puts {meta[:5]} on 'meta': TransformerLens refuses meta targets when "
            "loading weights (there is no data to offload from); use 'disk' to keep weights "
            "off memory"
        )
    offload = sorted(k for k, v in norm.items() if v in ("cpu", "disk"))
    gpu = sorted(k for k, v in norm.items() if _is_gpu(v))
    if offload and gpu:
        raise ShiftlensError(
            f"device_map mixes CPU/disk offload ({offload[:3]}{'...' if len(offload) > 3 else ''}) "
            f"with GPU targets ({gpu[:3]}{'...' if len(gpu) > 3 else ''}): TransformerLens 4.3 "
            "refuses such maps (its offload path is verified on CPU-only hardware only). Put "
            "everything on GPUs (plan_device_map with a larger max_memory, or bfloat16), or "
            "everything on 'cpu'/'disk'"
        )
    return norm


def parse_device_map(text: str) -> DeviceMap:
    """A device map from command-line text: a preset name, a JSON object, or ``@file.json``.

    Args:
        text: ``"auto"``, ``'{"model.layers.0": "disk", "": "cpu"}'`` or ``"@map.json"``.

    Returns:
        The checked map (:func:`check_device_map`), ready for ``load_bridge(device_map=...)``.

    Raises:
        ShiftlensError: unreadable file, invalid JSON, or a refused map.

    Example:
        >>> parse_device_map("auto")
        'auto'
        >>> parse_device_map('{"model": "cpu", "lm_head": "disk"}')
        {'model': 'cpu', 'lm_head': 'disk'}
    """
    s = text.strip()
    if s in DEVICE_MAP_PRESETS:
        return s
    if s.startswith("@"):
        try:
            s = Path(s[1:]).expanduser().read_text(encoding="utf-8")
        except OSError as e:
            raise ShiftlensError(f"cannot read device map file {text[1:]!r}: {e}") from e
    try:
        obj = json.loads(s)
    except ValueError as e:
        raise ShiftlensError(
            f"device map {text!r} is neither one of {list(DEVICE_MAP_PRESETS)} nor a JSON "
            f"object ({e})"
        ) from e
    if not isinstance(obj, dict):
        raise ShiftlensError(f"device map {text!r}: expected a JSON object, got {type(obj).__name__}")
    return check_device_map(obj)


@dataclass
class DevicePlan:
    """Where each module of a model would go, computed on an empty (meta-device) model.

    Attributes:
        device_map: ``{module: target}``, accepted by :func:`load_bridge` (checked with
            :func:`check_device_map` unless ``plan_device_map(check=False)``).
        n_parameters: Exact parameter count (tied parameters counted once).
        parameter_bytes: ``n_parameters`` times the dtype's size.
        bytes_per_device: Parameter bytes placed on each target (``"0"``, ``"cpu"``, ...).
        dtype: The dtype the sizes assume.
        max_memory: The budgets the plan was made for.

    Example:
        >>> plan = plan_device_map(config, max_memory={0: "80GiB", 1: "80GiB"},  # doctest: +SKIP
        ...                        dtype=torch.bfloat16)
        >>> plan.bytes_per_device  # doctest: +SKIP
        {'0': 70246400000, '1': 70861012992}
    """

    device_map: dict[str, int | str]
    n_parameters: int
    parameter_bytes: int
    bytes_per_device: dict[str, int]
    dtype: torch.dtype
    max_memory: dict[Any, Any] | None = field(default=None)

    @property
    def devices(self) -> list[str]:
        """The targets used, GPUs first."""
        return sorted(self.bytes_per_device, key=lambda d: (not d.isdigit(), d))


def _config_of(model: Any, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model, PretrainedConfig):
        return model
    try:
        return AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ShiftlensError(f"could not read the config of {str(model)!r}: {e}") from e


def empty_model(model: Any, *, dtype: torch.dtype = torch.float32) -> Any:
    """A Hugging Face causal LM of ``model``'s config with every tensor on the meta device.

    Built under ``accelerate.init_empty_weights(include_buffers=True)``: no memory is allocated,
    whatever the size (a 70B Llama takes about a second). Module classes, parameter names,
    shapes and tied-weight links are those of the real model.

    Args:
        model: A hub id, a local directory or a ``transformers`` config.
        dtype: The parameters' dtype.

    Example:
        >>> from shiftlens.zoo import pair_dirs
        >>> m = empty_model(pair_dirs()[0])
        >>> m.lm_head.weight.device.type, sum(p.numel() for p in m.parameters())
        ('meta', 996992)
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = _config_of(model)
    with init_empty_weights(include_buffers=True):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def plan_device_map(
    model: Any,
    *,
    max_memory: Mapping[int | str, int | str] | None = None,
    strategy: str = "balanced",
    dtype: torch.dtype = torch.float32,
    check: bool = True,
) -> DevicePlan:
    """Place a model on devices without loading it (accelerate on an empty, meta-device model).

    Builds the model from its config under ``accelerate.init_empty_weights`` (nothing is
    allocated, whatever the model size), then ``accelerate.infer_auto_device_map`` with the
    architecture's no-split blocks (``_no_split_modules``) and, for the balanced strategies,
    ``get_balanced_memory`` - the way ``from_pretrained(device_map="balanced")`` does.

    Args:
        model: A hub id, a local directory or a ``transformers`` config.
        max_memory: Budget per target, e.g. ``{0: "80GiB", 1: "80GiB", "cpu": "200GiB"}``
            (default: what this machine has free).
        strategy: ``"balanced"`` (= ``"auto"``), ``"balanced_low_0"`` or ``"sequential"``.
        dtype: The dtype the weights will be loaded in.
        check: Refuse a plan TransformerLens would refuse (:func:`check_device_map`), e.g. a
            70B model in float32 on two 80 GB GPUs spills onto the CPU next to the GPUs.

    Returns:
        The :class:`DevicePlan`.

    Example:
        >>> from transformers import LlamaConfig
        >>> cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        ...                   num_attention_heads=4, vocab_size=100)
        >>> plan = plan_device_map(cfg, max_memory={"cpu": "1GiB"})
        >>> plan.device_map, plan.n_parameters
        ({'': 'cpu'}, 177216)
    """
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    strategies = ("auto", "balanced", "balanced_low_0", "sequential")
    if strategy not in strategies:
        raise ShiftlensError(f"strategy must be one of {list(strategies)}, got {strategy!r}")
    import logging

    m = empty_model(model, dtype=dtype)
    no_split = list(getattr(m, "_no_split_modules", None) or [])
    mm = dict(max_memory) if max_memory is not None else None
    # planning for GPUs this machine lacks is the point: silence accelerate's "Device 1 is not
    # available" warnings for the duration
    log = logging.getLogger("accelerate.utils.modeling")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        if strategy != "sequential":
            mm = get_balanced_memory(m, max_memory=mm, no_split_module_classes=no_split,
                                     dtype=dtype, low_zero=strategy == "balanced_low_0")
        dm = dict(infer_auto_device_map(m, max_memory=mm, no_split_module_classes=no_split,
                                        dtype=dtype))
    finally:
        log.setLevel(level)
    dm = {k: (v if isinstance(v, int) else str(v)) for k, v in dm.items()}
    itemsize = torch.empty((), dtype=dtype).element_size()
    keys = sorted(dm, key=len, reverse=True)
    per: dict[str, int] = {}
    n = 0
    for pname, p in m.named_parameters():
        n += p.numel()
        k = next((k for k in keys if k == "" or pname == k or pname.startswith(k + ".")), None)
        if k is None:
            raise ShiftlensError(f"plan for {type(m).__name__}: parameter {pname!r} is unplaced")
        dev = str(dm[k])
        per[dev] = per.get(dev, 0) + p.numel() * itemsize
    if check:
        check_device_map(dm)
    return DevicePlan(dm, n, n * itemsize, per, dtype, mm)
