"""The one Result base: what every lens returns, saves, reloads, summarises and draws.

Every lens result (``SensitivityResult``, ``InstructionAttentionResult``, ``RotationResult``, ...)
is a dataclass that subclasses :class:`Result`. The base gives all of them the same contract:

* ``meta`` - one block of metadata (model names, seed, parameters, versions; :func:`make_meta`);
* :meth:`Result.to_frame` - a pandas DataFrame, one row per prompt / head / layer / component;
* :meth:`Result.summary` - headline numbers with their statistics and a ``"sentence"``;
* :meth:`Result.plot` / :meth:`Result.show` - a matplotlib figure (saved when given a path);
* :meth:`Result.save` / :func:`load` - a directory of JSON + Parquet + safetensors, written
  atomically with a manifest (SHA-256 and shapes) and verified on load; never pickle;
* ``_repr_html_`` for notebooks (sentence, table, figure inline) and a short ``__repr__``.

Saving is driven by field type, so a subclass writes no I/O code: tensors (and numpy arrays) go
to ``tensors.safetensors``, DataFrames to ``<field>.parquet``, nested Results into the same
bundle, prompts as their JSONL dicts, and everything else to ``result.json`` (tuples, NaN and
infinities, ``None`` inside lists kept exactly). :meth:`Result.equals` compares two results
field by field (NaN-aware), so a round trip can be tested.

A kind registry maps each class name (and older names, :meth:`Result.register_alias`) to its
class, so ``shiftlens.load(dir)`` returns the right class.

Writing a Result subclass::

    @dataclass(eq=False, repr=False)
    class MyResult(Result):
        frame: pd.DataFrame
        scores: Tensor
        meta: dict[str, Any] = field(default_factory=dict)

        def to_frame(self): return self.frame.copy()
        def summary(self): return {"mean": ..., "sentence": "..."}
        def plot(self, **opts): ...  # a matplotlib Figure
"""

from __future__ import annotations

import dataclasses
import html as _html
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from shiftlens.errors import ShiftlensError
from shiftlens.io import (
    atomic_directory,
    read_json,
    read_parquet,
    read_tensors,
    verify_directory,
    write_json,
    write_parquet,
    write_tensors,
)

__all__ = ["Result", "make_meta", "result_kinds"]

_KINDS: dict[str, type[Result]] = {}
_FORMAT = 1


def result_kinds() -> dict[str, type[Result]]:
    """The registered Result classes by kind name (aliases included).

    Example:
        >>> "Result" in result_kinds()
        False
    """
    return dict(_KINDS)


def make_meta(
    pair: Any = None,
    *,
    seed: int | None = None,
    params: Mapping[str, Any] | None = None,
    models: Mapping[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``meta`` block of a Result: models, seed, parameters and versions.

    Args:
        pair: The :class:`shiftlens.ModelPair` measured (its ``names``), or None.
        seed: The seed of any randomness (bootstrap, solvers).
        params: The lens parameters that decide the numbers.
        models: Model names (``{"base": ..., "tuned": ...}`` or ``{"model": ...}``) when no pair.
        **extra: Further JSON-safe entries.

    Returns:
        ``{"models", "seed", "params", "versions", ...}``.

    Example:
        >>> m = make_meta(models={"base": "a", "tuned": "b"}, seed=0, params={"k": 3})
        >>> m["models"], m["params"], sorted(m["versions"])
        ({'base': 'a', 'tuned': 'b'}, {'k': 3}, ['shiftlens', 'torch', 'transformer-lens', 'transformers'])
    """
    from shiftlens.generate import installed_versions

    names = dict(models) if models is not None else (
        dict(pair.names) if pair is not None and hasattr(pair, "names") else {})
    out: dict[str, Any] = {
        "models": names,
        "seed": seed,
        "params": dict(params or {}),
        "versions": installed_versions(),
    }
    out.update(extra)
    return out


# ============================================================================ encoding
_TAGS = ("$tensor", "$ndarray", "$frame", "$series", "$result", "$prompt", "$tuple", "$dict",
         "$float", "$dtype", "$path", "$device")


def _is_plain_key(k: Any) -> bool:
    return isinstance(k, str) and not k.startswith("$")


class _Writer:
    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        self.frames: dict[str, pd.DataFrame] = {}

    def enc(self, x: Any, path: str) -> Any:
        from shiftlens.prompts import InstructionPrompt

        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, (float, np.floating)):
            v = float(x)
            return v if math.isfinite(v) else {"$float": repr(v)}
        if isinstance(x, Tensor):
            self.tensors[path] = x
            return {"$tensor": path}
        if isinstance(x, np.ndarray):
            if x.dtype == object or x.dtype.kind in "USV":
                return {"$ndarray": None, "list": self.enc(x.tolist(), path),
                        "dtype": str(x.dtype)}
            self.tensors[path] = torch.from_numpy(np.ascontiguousarray(x))
            return {"$ndarray": path}
        if isinstance(x, pd.DataFrame):
            self.frames[path] = x
            return {"$frame": path}
        if isinstance(x, pd.Series):
            self.frames[path] = x.to_frame(name=x.name if x.name is not None else "value")
            return {"$series": path, "named": x.name is not None}
        if isinstance(x, Result):
            return {"$result": x.kind, "fields": self.fields(x, path)}
        if isinstance(x, InstructionPrompt):
            return {"$prompt": x.to_dict()}
        if isinstance(x, torch.dtype):
            return {"$dtype": str(x).removeprefix("torch.")}
        if isinstance(x, torch.device):
            return {"$device": str(x)}
        if isinstance(x, Path):
            return {"$path": str(x)}
        if isinstance(x, tuple):
            return {"$tuple": [self.enc(v, f"{path}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [self.enc(v, f"{path}/{i}") for i, v in enumerate(x)]
        if isinstance(x, Mapping):
            if all(_is_plain_key(k) for k in x):
                return {k: self.enc(v, f"{path}/{k}") for k, v in x.items()}
            return {"$dict": [[self.enc(k, f"{path}/k{i}"), self.enc(v, f"{path}/v{i}")]
                              for i, (k, v) in enumerate(x.items())]}
        raise ShiftlensError(f"cannot save {path!r}: values of type {type(x).__name__} are not "
                             "saveable (tensors, arrays, DataFrames, Results, prompts, numbers, "
                             "strings, lists, tuples and dicts are)")

    def fields(self, r: Result, prefix: str) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(r):
            if f.name.startswith("_"):
                continue
            out[f.name] = self.enc(getattr(r, f.name), f"{prefix}{f.name}" if not prefix
                                   else f"{prefix}.{f.name}")
        return out


class _Reader:
    def __init__(self, tensors: dict[str, Tensor], frames: dict[str, pd.DataFrame],
                 where: str) -> None:
        self.tensors, self.frames, self.where = tensors, frames, where

    def dec(self, x: Any) -> Any:
        if isinstance(x, list):
            return [self.dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        tag = next((t for t in _TAGS if t in x), None)
        if tag is None:
            return {k: self.dec(v) for k, v in x.items()}
        try:
            if tag == "$tensor":
                return self.tensors[x["$tensor"]]
            if tag == "$ndarray":
                if x["$ndarray"] is None:
                    return np.asarray(self.dec(x["list"]), dtype=x.get("dtype"))
                return self.tensors[x["$ndarray"]].numpy()
            if tag == "$frame":
                return self.frames[x["$frame"]]
            if tag == "$series":
                df = self.frames[x["$series"]]
                s = df.iloc[:, 0]
                return s if x.get("named") else s.rename(None)
            if tag == "$result":
                cls = _kind_class(x["$result"], self.where)
                return cls._from_fields({k: self.dec(v) for k, v in x["fields"].items()},
                                        self.where)
            if tag == "$prompt":
                from shiftlens.prompts import InstructionPrompt

                return InstructionPrompt.from_dict(x["$prompt"])
            if tag == "$tuple":
                return tuple(self.dec(v) for v in x["$tuple"])
            if tag == "$dict":
                return {self._key(self.dec(k)): self.dec(v) for k, v in x["$dict"]}
            if tag == "$float":
                return float(x["$float"])
            if tag == "$dtype":
                return getattr(torch, x["$dtype"])
            if tag == "$device":
                return torch.device(x["$device"])
            if tag == "$path":
                return Path(x["$path"])
        except ShiftlensError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ShiftlensError(f"{self.where}: result.json is inconsistent with its tensors and "
                                 f"tables ({tag} entry {e!r})") from e
        raise AssertionError(tag)  # pragma: no cover

    @staticmethod
    def _key(k: Any) -> Any:
        return tuple(k) if isinstance(k, list) else k


def _kind_class(kind: Any, where: str) -> type[Result]:
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ShiftlensError(f"{where}: unknown result kind {kind!r} (known: "
                             f"{', '.join(sorted(_KINDS)) or 'none registered'}; import the "
                             "package that defines it first)")
    return _KINDS[kind]


# ============================================================================ comparison
def _equal(a: Any, b: Any, path: str, diffs: list[str]) -> None:
    if len(diffs) > 20:
        return
    if isinstance(a, Result) or isinstance(b, Result):
        if type(a) is not type(b):
            diffs.append(f"{path}: {type(a).__name__} vs {type(b).__name__}")
            return
        for f in dataclasses.fields(a):
            _equal(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}", diffs)
        return
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape \
                or a.dtype != b.dtype:
            diffs.append(f"{path}: tensor shape/dtype differ")
        elif not torch.equal(torch.nan_to_num(a.cpu(), nan=0.0) if a.is_floating_point() else
                             a.cpu(), torch.nan_to_num(b.cpu(), nan=0.0)
                             if b.is_floating_point() else b.cpu()) or (
                a.is_floating_point() and not torch.equal(a.isnan().cpu(), b.isnan().cpu())):
            diffs.append(f"{path}: tensor values differ")
        return
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        try:
            np.testing.assert_array_equal(a, b)
        except AssertionError:
            diffs.append(f"{path}: arrays differ")
        return
    if isinstance(a, (pd.DataFrame, pd.Series)) or isinstance(b, (pd.DataFrame, pd.Series)):
        try:
            if isinstance(a, pd.DataFrame):
                pd.testing.assert_frame_equal(a, b, check_dtype=True)
            else:
                pd.testing.assert_series_equal(a, b)
        except (AssertionError, TypeError) as e:
            diffs.append(f"{path}: tables differ ({str(e).splitlines()[0]})")
        return
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if list(a.keys()) != list(b.keys()):
            diffs.append(f"{path}: keys {list(a)[:5]} vs {list(b)[:5]}")
            return
        for k in a:
            _equal(a[k], b[k], f"{path}[{k!r}]", diffs)
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            diffs.append(f"{path}: {type(a).__name__}[{len(a)}] vs {type(b).__name__}[{len(b)}]")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{i}]", diffs)
        return
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                       and not isinstance(a, bool) and not isinstance(b, bool)):
        diffs.append(f"{path}: {type(a).__name__} vs {type(b).__name__}")
        return
    if a != b:
        diffs.append(f"{path}: {a!r:.60} vs {b!r:.60}")


# ============================================================================ the base
class Result:
    """Base class of every shiftlens result (see the module docstring for the contract).

    Subclasses are ``@dataclass(eq=False, repr=False)`` classes with a ``meta`` field; they
    implement :meth:`to_frame`, :meth:`summary` and :meth:`plot`, and may override
    :meth:`validate` (cross-field invariants, checked after loading) and :meth:`_repr_info`.

    Example:
        >>> res = instruction_sensitivity(pair, prompts)  # doctest: +SKIP
        >>> res.save("out/sens"); shiftlens.load("out/sens").equals(res)  # doctest: +SKIP
        True
    """

    kind: ClassVar[str] = "Result"
    meta: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind", cls.__name__)
        cls.kind = kind
        prev = _KINDS.get(kind)
        if prev is not None and prev.__qualname__ != cls.__qualname__:
            warnings.warn(f"result kind {kind!r} re-registered by {cls.__module__}."
                          f"{cls.__qualname__}", stacklevel=2)
        _KINDS[kind] = cls

    @classmethod
    def register_alias(cls, *names: str) -> None:
        """Also load directories saved under an older kind name.

        Example:
            >>> RotationResult.register_alias("Rotation")  # doctest: +SKIP
        """
        for n in names:
            _KINDS[n] = cls

    # ------------------------------------------------------------------ the contract
    def to_frame(self) -> pd.DataFrame:
        """The result as a DataFrame, one row per prompt / head / layer / component.

        Example:
            >>> res.to_frame().head()  # doctest: +SKIP
        """
        raise NotImplementedError(f"{type(self).__name__}.to_frame")

    def summary(self) -> dict[str, Any]:
        """Headline numbers with their statistics and a ``"sentence"`` in words.

        Example:
            >>> res.summary()["sentence"]  # doctest: +SKIP
        """
        raise NotImplementedError(f"{type(self).__name__}.summary")

    def plot(self, **opts: Any) -> Any:
        """The result's figure (a matplotlib Figure); :meth:`show` labels and saves it.

        Example:
            >>> fig = res.plot()  # doctest: +SKIP
        """
        raise NotImplementedError(f"{type(self).__name__}.plot")

    def validate(self) -> None:
        """Raise :class:`ShiftlensError` when the fields are inconsistent (checked after load).

        Example:
            >>> res.validate()  # doctest: +SKIP
        """

    @property
    def model_names(self) -> dict[str, str]:
        """The model names in ``meta`` (``{"base": ..., "tuned": ...}``, ``{"model": ...}`` for
        single-model results; may be empty)."""
        m = (self.meta or {}).get("models") if isinstance(getattr(self, "meta", None),
                                                           Mapping) else None
        return dict(m) if isinstance(m, Mapping) else {}

    def show(self, path: str | Path | None = None, **opts: Any) -> Any:
        """Draw the figure, name the models under it, and save it when ``path`` is given.

        Args:
            path: File to write (``.png``, ``.svg`` or ``.pdf``; no suffix writes PNG and SVG).
            **opts: Passed to :meth:`plot`.

        Returns:
            The matplotlib Figure.

        Example:
            >>> fig = res.show("out/sensitivity.png")  # doctest: +SKIP
        """
        from shiftlens.viz.style import label_models, save_figure

        fig = self.plot(**opts)
        label_models(fig, self.model_names)
        if path is not None:
            save_figure(fig, path)
        return fig

    # ------------------------------------------------------------------ text
    def sentence(self) -> str:
        """The summary's sentence.

        Example:
            >>> print(res.sentence())  # doctest: +SKIP
        """
        s = self.summary().get("sentence", "")
        return str(s)

    def _repr_info(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            if f.name == "meta" or f.name.startswith("_"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, pd.DataFrame):
                parts.append(f"{f.name}=<{len(v)}x{v.shape[1]} frame>")
            elif isinstance(v, Tensor):
                parts.append(f"{f.name}=<tensor {list(v.shape)}>")
            elif isinstance(v, (list, tuple, dict)):
                parts.append(f"{f.name}=<{len(v)} {type(v).__name__}>")
            elif isinstance(v, (int, float, str, bool)) and len(repr(v)) < 30:
                parts.append(f"{f.name}={v!r}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        info = self._repr_info()
        names = self.model_names
        if names.get("base") and names.get("tuned"):
            info = f"{names['base']} -> {names['tuned']}; " + info
        if len(info) > 160:
            info = info[:157] + "..."
        return f"{type(self).__name__}({info})"

    def _repr_html_(self) -> str:
        e = _html.escape
        parts = [f"<div class='shiftlens-result'><b>{e(type(self).__name__)}</b>"]
        try:
            parts.append(f"<p>{e(self.sentence())}</p>")
        except Exception as err:  # noqa: BLE001 - a notebook view must not raise
            parts.append(f"<p><i>summary failed: {e(type(err).__name__)}: {e(str(err))}</i></p>")
        try:
            df = self.to_frame()
            parts.append(df.head(10).to_html(max_cols=12, float_format=lambda v: f"{v:.4g}"))
            if len(df) > 10:
                parts.append(f"<p><i>{len(df)} rows; .to_frame() has them all</i></p>")
        except Exception as err:  # noqa: BLE001
            parts.append(f"<p><i>table failed: {e(type(err).__name__)}: {e(str(err))}</i></p>")
        try:
            from shiftlens.viz.style import figure_html, pyplot

            fig = self.show()
            try:
                parts.append(figure_html(fig, "png", alt=type(self).__name__))
            finally:
                pyplot().close(fig)
        except Exception as err:  # noqa: BLE001
            parts.append(f"<p><i>figure failed: {e(type(err).__name__)}: {e(str(err))}</i></p>")
        parts.append("</div>")
        return "\n".join(parts)

    # ------------------------------------------------------------------ equality
    def differences(self, other: Any) -> list[str]:
        """Where ``other`` differs from this result (empty when equal; NaN equals NaN).

        Example:
            >>> res.differences(shiftlens.load("out/sens"))  # doctest: +SKIP
            []
        """
        diffs: list[str] = []
        _equal(self, other, type(self).__name__, diffs)
        return diffs

    def equals(self, other: Any) -> bool:
        """Field-by-field equality (tensors, tables, NaN-aware); see :meth:`differences`.

        Example:
            >>> res.equals(res)  # doctest: +SKIP
            True
        """
        return not self.differences(other)

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> Path:
        """Write the result into ``directory`` atomically (JSON + Parquet + safetensors).

        The directory is built under a temporary name and published in one step with a
        manifest of every file's size and SHA-256 and every tensor's shape; an interrupted save
        leaves the previous result (or nothing). An existing directory is only replaced when it
        is empty or holds a shiftlens result.

        Returns:
            The directory.

        Example:
            >>> res.save("out/sensitivity")  # doctest: +SKIP
        """
        w = _Writer()
        fields = w.fields(self, "")
        record: dict[str, Any] = {"tensors": {}, "frames": {}}
        with atomic_directory(directory, kind=self.kind, record=record) as tmp:
            write_json(tmp / "result.json", {"kind": self.kind, "format": _FORMAT,
                                             "fields": fields})
            for i, (name, df) in enumerate(sorted(w.frames.items())):
                _check_frame(df, name, self.kind)
                record["frames"][name] = {"file": f"frame{i}.parquet",
                                          **write_parquet(tmp / f"frame{i}.parquet", df)}
            if w.tensors:
                record["tensors"] = write_tensors(tmp / "tensors.safetensors", w.tensors)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> Result:
        """Verify and read a result saved by :meth:`save`.

        Called on :class:`Result` (or via :func:`load`) it returns whatever kind was saved;
        called on a subclass it also checks the kind. :func:`shiftlens.load` first imports every
        registered lens so that any saved kind is known.

        Raises:
            ShiftlensError: naming the directory and the first inconsistency (missing or
                modified file, wrong shapes, unknown kind, invariants broken).

        Example:
            >>> res = SensitivityResult.load("out/sensitivity")  # doctest: +SKIP
        """
        d = Path(directory)
        where = repr(str(d))
        man = verify_directory(d)
        rec = read_json(d / "result.json", where=f"{where}: result.json")
        if not isinstance(rec, dict) or not isinstance(rec.get("fields"), dict):
            raise ShiftlensError(f"{where}: result.json holds no result fields")
        if rec.get("kind") != man.get("kind"):
            raise ShiftlensError(f"{where}: result.json says {rec.get('kind')!r}, the manifest "
                                 f"{man.get('kind')!r}")
        target = _kind_class(rec.get("kind"), where)
        if cls is not Result and not issubclass(target, cls):
            raise ShiftlensError(f"{where} holds a {rec.get('kind')!r}, not a {cls.kind!r}")
        record = man.get("record") or {}
        tinfo = record.get("tensors") or {}
        t = d / "tensors.safetensors"
        tensors = read_tensors(t, tinfo, where=f"{where}: tensors.safetensors") if tinfo else {}
        frames = {}
        for name, info in (record.get("frames") or {}).items():
            frames[name] = read_parquet(d / info["file"], info, where=f"{where}: {info['file']}")
        reader = _Reader(tensors, frames, where)
        values = {k: reader.dec(v) for k, v in rec["fields"].items()}
        return target._from_fields(values, where)

    @classmethod
    def _from_fields(cls, values: dict[str, Any], where: str) -> Result:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ShiftlensError(f"{where}: saved fields {unknown} are not fields of "
                                 f"{cls.__name__} (saved by another version?)")
        try:
            obj = cls(**{k: v for k, v in values.items() if k in names})
        except (TypeError, ValueError) as e:
            raise ShiftlensError(f"{where}: cannot rebuild a {cls.__name__}: {e}") from e
        for k, v in values.items():
            if k not in names:
                object.__setattr__(obj, k, v)
        try:
            obj.validate()
        except ShiftlensError as e:
            raise ShiftlensError(f"{where}: {e}") from e
        return obj


def _check_frame(df: pd.DataFrame, name: str, kind: str) -> None:
    bad = [c for c in df.columns if not isinstance(c, str)]
    if bad:
        raise ShiftlensError(f"cannot save {kind} table {name!r}: column names must be strings, "
                             f"got {bad[:3]}")
