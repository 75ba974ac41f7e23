"""Saving and loading results without pickle: JSON + Parquet + safetensors in one directory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from shiftlens.errors import ShiftlensError

__all__ = ["save_bundle", "load_bundle", "to_jsonable"]


def to_jsonable(x: Any) -> Any:
    """Convert numpy/torch scalars, tuples and NaN/inf into JSON-safe values.

    Example:
        >>> to_jsonable({"a": np.float32(1.5), "b": float("nan")})
        {'a': 1.5, 'b': 'NaN'}
    """
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (np.generic,)):
        x = x.item()
    if isinstance(x, torch.Tensor):
        return to_jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    return x


def _from_json(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _from_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_from_json(v) for v in x]
    if x == "NaN":
        return float("nan")
    if x == "Infinity":
        return float("inf")
    if x == "-Infinity":
        return float("-inf")
    return x


def save_bundle(
    directory: str | Path,
    kind: str,
    meta: dict[str, Any],
    frames: dict[str, pd.DataFrame] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``result.json`` (kind + meta), one Parquet file per frame, ``tensors.safetensors``.

    Example:
        >>> save_bundle("out/r", "Demo", {"seed": 0}, {"rows": pd.DataFrame({"x": [1]})})  # doctest: +SKIP
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    frames = frames or {}
    (d / "result.json").write_text(
        json.dumps(
            {"kind": kind, "meta": to_jsonable(meta), "frames": sorted(frames)},
            indent=1,
            ensure_ascii=False,
        )
    )
    for name, df in frames.items():
        df.to_parquet(d / f"{name}.parquet", index=False)
    if tensors:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                  str(d / "tensors.safetensors"))
    return d


def load_bundle(
    directory: str | Path, kind: str
) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict[str, torch.Tensor]]:
    """Read a bundle written by :func:`save_bundle`, checking its kind.

    Example:
        >>> meta, frames, tensors = load_bundle("out/r", "Demo")  # doctest: +SKIP
    """
    d = Path(directory)
    f = d / "result.json"
    if not f.exists():
        raise ShiftlensError(f"{str(d)!r} holds no saved result (result.json missing)")
    rec = json.loads(f.read_text())
    if rec.get("kind") != kind:
        raise ShiftlensError(f"{str(d)!r} holds a {rec.get('kind')!r} result, not {kind!r}")
    frames = {n: pd.read_parquet(d / f"{n}.parquet") for n in rec.get("frames", [])}
    t = d / "tensors.safetensors"
    tensors = load_file(str(t)) if t.exists() else {}
    return _from_json(rec["meta"]), frames, tensors
