"""Running a lens one record at a time: the in-process executor, shards, resume, merge.

:func:`run_lens` computes every (prompt, role) record of a lens's :class:`~shiftlens.runner.
units.LensUnits` into a run directory (:class:`~shiftlens.runner.store.RunStore`), skipping
records that are already there, and :func:`load_run` assembles the Result from them, equal to
the in-process function's.

Per-model units run role-major: the base model is loaded, computes all its records and is freed
(``del``, ``gc.collect()``, ``torch.cuda.empty_cache()``) before the tuned model is loaded, so
only one model is resident at a time. Units that need both models load a
:class:`~shiftlens.pair.ModelPair`. An in-memory pair is used as it is (nothing is loaded or
freed).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from shiftlens.checks import check_prompts, prompt_id
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.runner.fingerprint import model_fingerprint
from shiftlens.runner.store import RUN_FORMAT, RunStore, prompts_fingerprint
from shiftlens.runner.units import MODEL_ROLES, PAIR_ROLE, PairView, bind_params, resolve_units

__all__ = [
    "EXECUTORS",
    "RunSummary",
    "run_lens",
    "load_run",
    "run_status",
    "parse_shard",
    "pair_signature",
    "pair_names",
    "check_signature",
    "free_memory",
]

#: The executors :func:`run_lens` knows.
EXECUTORS: tuple[str, ...] = ("inprocess", "ray")


# ============================================================================ shards
def parse_shard(shard: Any) -> tuple[int, int] | None:
    """``"i/N"``, ``(i, N)``, ``"slurm"`` or None -> ``(i, N)`` with ``0 <= i < N``, or None.

    ``"slurm"`` reads a Slurm job array: ``i = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN``,
    ``N = SLURM_ARRAY_TASK_COUNT``. Shard ``i`` of ``N`` computes the prompts whose index is
    ``i`` modulo ``N`` (interleaved, so every shard gets a mix of categories and lengths).

    Raises:
        ShiftlensError: malformed, ``i`` out of range, or ``"slurm"`` outside a job array.

    Example:
        >>> parse_shard("1/4"), parse_shard((0, 2)), parse_shard(None)
        ((1, 4), (0, 2), None)
    """
    if shard is None:
        return None
    if shard == "slurm":
        env = os.environ
        try:
            i = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            n = int(env["SLURM_ARRAY_TASK_COUNT"])
        except (KeyError, ValueError) as e:
            raise ShiftlensError("--shard slurm needs a Slurm job array (SLURM_ARRAY_TASK_ID and "
                                 f"SLURM_ARRAY_TASK_COUNT are not both set: {e})") from e
        shard = (i, n)
    if isinstance(shard, str):
        a, sep, b = shard.partition("/")
        if not sep or not a.strip().isdigit() or not b.strip().isdigit():
            raise ShiftlensError(f"a shard reads i/N (e.g. 0/4), got {shard!r}")
        shard = (int(a), int(b))
    if (not isinstance(shard, (tuple, list)) or len(shard) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in shard)):
        raise ShiftlensError(f"a shard is 'i/N' or (i, N), got {shard!r}")
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise ShiftlensError(f"shard {i}/{n}: need N >= 1 and 0 <= i < N (shards count from 0)")
    return int(i), int(n)


# ============================================================================ models
def pair_signature(model: Any) -> dict[str, Any]:
    """What both models of a pair must share: shapes, vocabulary, tokenization, BOS.

    The runner computes it for every model it loads and compares it with the one stored in the
    run's plan, so two models that are never resident together (or are loaded on different
    machines) are still checked as :meth:`~shiftlens.pair.ModelPair.check_compatible` checks a
    loaded pair.

    Example:
        >>> sig = pair_signature(pair.base)  # doctest: +SKIP
        >>> sig == pair_signature(pair.tuned)  # doctest: +SKIP
        True
    """
    from shiftlens.pair import PROBE_STRINGS, SHAPE_FIELDS

    cfg, tok = model.cfg, model.tokenizer
    shapes = {f: getattr(cfg, f, None) for f in SHAPE_FIELDS}
    if shapes.get("n_key_value_heads") is None:
        shapes["n_key_value_heads"] = cfg.n_heads
    vocab = hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()
    probes = hashlib.sha256(json.dumps(
        [list(tok(s, add_special_tokens=False)["input_ids"]) for s in PROBE_STRINGS]).encode())
    return {"shapes": shapes, "vocab_sha256": vocab, "probes_sha256": probes.hexdigest(),
            "bos_token_id": tok.bos_token_id, "prepend_bos": bool(cfg.default_prepend_bos)}


def _is_pair(x: Any) -> bool:
    return all(hasattr(x, a) for a in ("base", "tuned", "names", "tokenizer"))


def _full_ref(ref: str | Path) -> str:
    """A model reference in full, as the loader records it: an existing local path resolved."""
    p = Path(ref).expanduser()
    return str(p.resolve()) if p.exists() else str(ref)


def pair_names(base: str | Path, tuned: str | Path,
               names: tuple[str, str] | None = None) -> dict[str, str]:
    """The names a :class:`~shiftlens.pair.ModelPair` loaded from these references gets.

    The given ``names``, else the pair's own rule (:func:`shiftlens.bridge.short_names` of the
    full references: a hub id as it is, a directory's last component(s)), so a run's Result
    names its models as the in-process function's does. Shards on machines that keep the
    models at different absolute paths get the same names when the paths end alike.

    Raises:
        ShiftlensError: ``names`` not two different non-empty strings.

    Example:
        >>> pair_names("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct")
        {'base': 'Qwen/Qwen2.5-0.5B', 'tuned': 'Qwen/Qwen2.5-0.5B-Instruct'}
        >>> pair_names("a", "b", names=("base 7B", "chat 7B"))["tuned"]
        'chat 7B'
    """
    if names is not None:
        if (isinstance(names, str) or len(names) != 2 or not all(
                isinstance(n, str) and n.strip() and "\n" not in n for n in names)
                or names[0].strip() == names[1].strip()):
            raise ShiftlensError(f"names must be two different one-line strings, got {names!r}")
        return {"base": names[0].strip(), "tuned": names[1].strip()}
    try:
        from shiftlens.bridge import short_names
    except ImportError:  # pragma: no cover - a release whose pairs are named by their paths
        return {"base": str(base), "tuned": str(tuned)}
    nb, nt = short_names(_full_ref(base), _full_ref(tuned))
    return {"base": nb, "tuned": nt}


class _Source:
    """Where the models come from: two paths (loaded per role) or an in-memory pair."""

    def __init__(self, models: Any, *, device: Any, dtype: torch.dtype, processing: str,
                 load_kwargs: Mapping[str, Any], names: tuple[str, str] | None = None) -> None:
        self.pair = models if _is_pair(models) else None
        if self.pair is not None:
            if (device is not None or load_kwargs or dtype != torch.float32
                    or processing != "raw" or names is not None):
                raise ShiftlensError("device, dtype, processing, names and load options apply "
                                     "to models given as paths; this ModelPair is already "
                                     "loaded")
            self.paths = None
            self.names = dict(self.pair.names)
            self.dtype = next(iter(self.pair.base.parameters())).dtype
            self.processing = self.pair.processing
            self.device = None
        else:
            if not isinstance(models, (tuple, list)) or len(models) != 2 or not all(
                    isinstance(m, (str, Path)) for m in models):
                raise ShiftlensError("models must be a ModelPair or (base, tuned) paths / hub "
                                     f"ids, got {type(models).__name__}")
            if processing not in ("raw", "compat"):
                raise ShiftlensError(f"processing must be 'raw' or 'compat', got {processing!r}")
            self.paths = {"base": str(models[0]), "tuned": str(models[1])}
            self.names = pair_names(models[0], models[1], names)
            self.dtype, self.processing, self.device = dtype, processing, device
        self.load_kwargs = dict(load_kwargs)

    # ------------------------------------------------------------------ identity
    def identity(self) -> tuple[dict[str, Any], dict[str, str]]:
        if self.pair is not None:
            fps = {r: model_fingerprint(m) for r, m in self.pair}
        else:
            fps = {r: model_fingerprint(p) for r, p in self.paths.items()}
        if fps["base"]["fingerprint"] == fps["tuned"]["fingerprint"]:
            warnings.warn(f"base {self.names['base']!r} and tuned {self.names['tuned']!r} have "
                          "the same fingerprint (identical weights?): every shift will be zero",
                          ShiftlensWarning, stacklevel=4)
        refs = ({r: _full_ref(p) for r, p in self.paths.items()} if self.paths is not None
                else dict(getattr(self.pair, "sources", {}) or {}))
        return {r: {"name": self.names[r], **fps[r]} for r in MODEL_ROLES}, refs

    def device_type(self) -> str:
        if self.pair is not None:
            return next(iter(self.pair.base.parameters())).device.type
        if self.load_kwargs.get("device_map") is not None or self.load_kwargs.get("n_devices"):
            return "device_map"
        return torch.device(self.device or "cpu").type

    def spec(self) -> dict[str, Any]:
        """What a remote worker needs to load the models itself."""
        if self.paths is None:
            raise ShiftlensError("the Ray executor loads the models in its workers: give the "
                                 "models as (base, tuned) paths or hub ids, not a loaded pair")
        return {"paths": self.paths, "device": None if self.device is None else str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."), "processing": self.processing,
                "load_kwargs": self.load_kwargs, "names": [self.names["base"],
                                                           self.names["tuned"]]}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> _Source:
        return cls((spec["paths"]["base"], spec["paths"]["tuned"]), device=spec["device"],
                   dtype=getattr(torch, spec["dtype"]), processing=spec["processing"],
                   load_kwargs=spec["load_kwargs"], names=tuple(spec["names"]))

    # ------------------------------------------------------------------ loading
    def _load_one(self, role: str) -> Any:
        from shiftlens.pair import load_bridge

        kw = dict(self.load_kwargs)
        if isinstance(kw.get("device_map"), (tuple, list)):
            kw["device_map"] = kw["device_map"][MODEL_ROLES.index(role)]
        if kw.get("offload_folder") is not None:  # the two models share parameter names
            kw["offload_folder"] = Path(kw["offload_folder"]) / role
        model = load_bridge(self.paths[role], device=self.device, dtype=self.dtype, **kw)
        if self.processing == "compat":
            try:
                model.enable_compatibility_mode(disable_warnings=True)
            except (ValueError, NotImplementedError, RuntimeError) as e:
                raise ShiftlensError(f"processing='compat' is not possible for "
                                     f"{self.paths[role]!r}: {e}") from e
        return model

    @contextlib.contextmanager
    def resident(self, role: str) -> Iterator[tuple[Any, Any]]:
        """``(model, view)`` for ``role`` while the block runs; loaded models are freed after.

        ``model`` is the role's bridge (the pair for ``"pair"``); ``view`` is what a plan sees.
        """
        if self.pair is not None:
            yield (self.pair if role == PAIR_ROLE else self.pair.models[role]), self.pair
            return
        held: dict[str, Any] = {}
        try:
            if role == PAIR_ROLE:
                from shiftlens.pair import ModelPair

                held["pair"] = ModelPair.from_pretrained(
                    self.paths["base"], self.paths["tuned"], device=self.device,
                    dtype=self.dtype, processing=self.processing, **self.load_kwargs)
                held["pair"].names = dict(self.names)  # the run's names (as given or derived)
                yield held["pair"], held["pair"]
            else:
                held["model"] = self._load_one(role)
                held["view"] = PairView(self.names, {role: held["model"]})
                yield held["model"], held["view"]
        finally:
            cuda = any(_on_cuda(v) for v in held.values())
            held.clear()
            free_memory(cuda)


def _on_cuda(obj: Any) -> bool:
    model = getattr(obj, "base", obj)
    try:
        return any(p.device.type == "cuda" for p in model.parameters())
    except Exception:  # noqa: BLE001 - a view or an exotic object: nothing on CUDA known
        return False


def free_memory(cuda: bool | None = None) -> None:
    """Collect garbage and return cached CUDA blocks (after a model was dropped).

    Example:
        >>> free_memory(cuda=False)
    """
    gc.collect()
    if cuda or (cuda is None and torch.cuda.is_available() and torch.cuda.is_initialized()):
        torch.cuda.empty_cache()


# ============================================================================ the run
class _Context:
    """Everything an executor needs for one run session."""

    def __init__(self, units: Any, store: RunStore, source: _Source, prompts: list[Any],
                 params: dict[str, Any]) -> None:
        self.units, self.store, self.source = units, store, source
        self.prompts, self.params = prompts, params
        self.ids = [prompt_id(p, i) for i, p in enumerate(prompts)]
        self.plan: tuple[str, Any, list[Any], dict[str, Any]] | None = None

    def ensure_plan(self, view: Any) -> tuple[str, Any, list[Any], dict[str, Any]]:
        """Plan with the resident model(s) the first time; check every later model against it."""
        if self.plan is None:
            value = self.units.plan(view, self.prompts, **self.params)
            data = self.store.encode_plan(value, self.prompts, _view_signature(view))
            self.plan = self.store.publish_plan(data)
        else:
            check_signature(self.plan[3].get("signature"), _view_signature(view),
                            self.source.names)
        return self.plan

    def publish(self, data: bytes) -> tuple[str, Any, list[Any], dict[str, Any]]:
        self.plan = self.store.publish_plan(data)
        return self.plan


def _view_signature(view: Any) -> dict[str, Any]:
    models = list(view)
    sigs = [pair_signature(m) for _, m in models]
    if any(s != sigs[0] for s in sigs[1:]):
        check_signature(sigs[0], sigs[1], getattr(view, "names", {}))
    return sigs[0]


def check_signature(stored: Any, now: Mapping[str, Any], names: Mapping[str, str]) -> None:
    """Refuse a model whose :func:`pair_signature` differs from the run's.

    Example:
        >>> check_signature(pair_signature(pair.base), pair_signature(pair.tuned), pair.names)  # doctest: +SKIP
    """
    if stored == now:
        return
    from shiftlens.runner.store import _describe_diff

    diffs: list[str] = []
    _describe_diff(stored, dict(now), "signature", diffs)
    raise ShiftlensError(f"incompatible pair (base {names.get('base')!r} vs tuned "
                         f"{names.get('tuned')!r}): {'; '.join(diffs)}")


def _execute_inprocess(ctx: _Context, todo: Sequence[tuple[int, str]], bar: Any) -> int:
    by_role: dict[str, list[int]] = {}
    for i, role in todo:
        by_role.setdefault(role, []).append(i)
    computed = 0
    for role in ctx.units.roles:
        if role not in by_role:
            continue
        bar.set_postfix_str(f"loading {role}", refresh=True)
        with ctx.source.resident(role) as (model, view):
            digest, plan, prompts, _ = ctx.ensure_plan(view)
            for i in by_role[role]:
                bar.set_postfix_str(f"{role} {ctx.ids[i]}", refresh=False)
                record = ctx.units.compute(plan, role, model, prompts[i], i)
                ctx.store.write_record(
                    i, role, ctx.store.encode_record(i, role, record, digest, ctx.ids[i]))
                computed += 1
                bar.update(1)
            del model, view
    return computed


@dataclass(frozen=True)
class RunSummary:
    """What one :func:`run_lens` session did.

    Attributes:
        path: The run directory.
        units: The units' name (``"attribution.instruction_sensitivity"``).
        executor: ``"inprocess"`` or ``"ray"``.
        shard: ``(i, N)`` or None.
        total: Records of the whole run (prompts x roles).
        assigned: Records this session was responsible for (``total`` without a shard).
        done_before: Of those, valid records found at the start.
        computed: Records computed now.
        recomputed: Of those, records that were present but damaged (each warned about).
        missing: Records of the whole run still without a file (other shards' work).
        seconds: Wall time.

    Example:
        >>> s = run_lens("attribution", (base, tuned), prompts, "runs/sens")  # doctest: +SKIP
        >>> s.complete, s.computed  # doctest: +SKIP
        (True, 24)
        >>> res = s.load()  # doctest: +SKIP
    """

    path: Path
    units: str
    executor: str
    shard: tuple[int, int] | None
    total: int
    assigned: int
    done_before: int
    computed: int
    recomputed: int
    missing: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every record of the run is there (:func:`load_run` can assemble it)."""
        return self.missing == 0

    def load(self) -> Any:
        """The assembled Result (:func:`load_run`).

        Example:
            >>> res = summary.load()  # doctest: +SKIP
        """
        return load_run(self.path)

    def __str__(self) -> str:
        sh = f" shard {self.shard[0]}/{self.shard[1]}" if self.shard else ""
        state = ("complete" if self.complete else
                 f"{self.missing} of {self.total} records still missing")
        return (f"{self.units}{sh}: {self.computed} records computed "
                f"({self.recomputed} replacing damaged ones), {self.done_before} already done, "
                f"{self.seconds:.1f} s; run {state}")


def _prompts(prompts: Any) -> list[Any]:
    if isinstance(prompts, (str, Path)):
        from shiftlens.prompts import load_prompts

        prompts = load_prompts(prompts)
    return check_prompts(prompts, who="run_lens")


def _encode_params(units: Any, params: dict[str, Any]) -> Any:
    from shiftlens.result import _Writer

    w = _Writer()
    try:
        enc = w.enc(params, "params")
    except ShiftlensError as e:
        raise ShiftlensError(f"{units.name}: parameters must be JSON-safe values: {e}") from e
    if w.tensors or w.frames:
        raise ShiftlensError(f"{units.name}: parameters must be JSON-safe values, not tensors or "
                             f"tables ({sorted(w.tensors) or sorted(w.frames)})")
    return json.loads(json.dumps(enc, allow_nan=False))


def _run_info(units: Any, ref: str | None, params: dict[str, Any], prompts: list[Any],
              source: _Source) -> dict[str, Any]:
    from shiftlens.generate import installed_versions

    models, sources = source.identity()
    info = {
        "format": RUN_FORMAT,
        "units_name": units.name,
        "units": ref,
        "function": getattr(units, "function", None),
        "roles": list(units.roles),
        "params": _encode_params(units, params),
        "prompts": {"n": len(prompts), "sha256": prompts_fingerprint(prompts)},
        "models": models,
        "sources": sources,
        "load": {"dtype": str(source.dtype).removeprefix("torch."),
                 "processing": source.processing},
        "device_type": source.device_type(),
        "versions": installed_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
    }
    return json.loads(json.dumps(info, allow_nan=False))


def run_lens(
    lens: Any,
    models: Any,
    prompts: Any,
    out: str | Path,
    *,
    params: Mapping[str, Any] | None = None,
    resume: bool = False,
    shard: Any = None,
    executor: str = "inprocess",
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    max_restarts: int = 3,
    ray_address: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    processing: str = "raw",
    names: tuple[str, str] | None = None,
    progress: bool = True,
    **load_kwargs: Any,
) -> RunSummary:
    """Compute a lens record by record into ``out``; resumable, shardable, distributable.

    Each (prompt, role) record is written atomically as soon as it is computed, so an
    interrupted run loses at most the records being computed. ``out/run.json`` records the
    identity of the run (the units, every parameter with its default, the prompts' SHA-256,
    content fingerprints of both models, dtype and weight processing, versions);
    ``resume=True`` (and every shard) joins an existing run only when the identity is the same,
    skips its valid records and recomputes damaged ones with a warning. :func:`load_run`
    assembles the Result, equal field by field to the in-process function's.

    Args:
        lens: A registered lens with units (``"attribution"``, ``"residual.output_shift"``), a
            ``"module:object"`` reference, or a :class:`~shiftlens.runner.units.LensUnits`.
        models: ``(base, tuned)`` as paths, hub ids or ``.gguf`` files (loaded by the runner,
            one at a time for per-model units), or a loaded :class:`~shiftlens.pair.ModelPair`
            (in-process only).
        prompts: :class:`~shiftlens.prompts.InstructionPrompt` list, or a prompt file
            (:func:`~shiftlens.prompts.load_prompts`).
        out: The run directory (new, empty, or a run to resume).
        params: The lens's parameters (``{"max_new_tokens": 12}``); unknown names are refused.
        resume: Continue the run in ``out`` (same identity required).
        shard: ``"i/N"`` / ``(i, N)`` / ``"slurm"``: compute only prompts ``index % N == i``
            (:func:`parse_shard`); implies joining an existing run.
        executor: ``"inprocess"`` or ``"ray"`` (:mod:`shiftlens.runner.distributed`).
        workers: Ray actors (each holds one model at a time).
        gpus_per_worker: GPUs per Ray actor (fractions share a GPU); needs ``device="cuda"``.
        cpus_per_worker: CPUs per Ray actor (also its torch threads).
        max_restarts: Ray restarts of a dead actor (its unfinished records are retried).
        ray_address: Ray cluster to connect to (default: ``RAY_ADDRESS``, else a local one).
        device, dtype, processing, names: As in :meth:`~shiftlens.pair.ModelPair.from_pretrained`
            (``names`` defaults to the pair's rule: :func:`pair_names`).
        progress: One progress bar with ETA over all records (and all Ray workers).
        **load_kwargs: Passed to the model loader (``device_map``, ``max_memory``,
            ``offload_folder``, ``n_devices``, ...; a ``(base, tuned)`` pair of device maps
            is split per model).

    Returns:
        A :class:`RunSummary`; ``summary.load()`` gives the Result once ``summary.complete``.

    Raises:
        ShiftlensError: bad lens, parameters, prompts or shard; ``out`` not a run directory, or
            a run of other inputs; an incompatible pair; anything the lens refuses.

    Example:
        >>> from shiftlens.zoo import pair_dirs, toy_prompts
        >>> s = run_lens("attribution", pair_dirs(), toy_prompts(12), "runs/sens",  # doctest: +SKIP
        ...              params={"max_new_tokens": 12})
        >>> res = s.load()  # doctest: +SKIP
    """
    from shiftlens.checks import check_choice

    t0 = time.perf_counter()
    units, ref = resolve_units(lens)
    check_choice("executor", executor, EXECUTORS)
    prompts = _prompts(prompts)
    bound = bind_params(units, params)
    source = _Source(models, device=device, dtype=dtype, processing=processing,
                     load_kwargs=load_kwargs, names=names)
    sh = parse_shard(shard)
    if executor == "ray":  # refuse an in-memory pair or bad resources before writing anything
        from shiftlens.runner.distributed import check_resources

        source.spec()
        check_resources(source, workers, gpus_per_worker, cpus_per_worker, max_restarts)
    info = _run_info(units, ref, bound, prompts, source)
    store = RunStore.prepare(out, info, join=resume or sh is not None)
    keys = store.keys()
    mine = [k for k in keys if sh is None or k[0] % sh[1] == sh[0]]
    done, damaged = store.scan(mine, store.plan_digest())
    if damaged:
        first = next(iter(damaged.values()))
        warnings.warn(f"{len(damaged)} record(s) in {str(store.path)!r} are damaged and will be "
                      f"recomputed; first: {first}", ShiftlensWarning, stacklevel=2)
    todo = [k for k in mine if k not in done]
    ctx = _Context(units, store, source, prompts, bound)
    session_fields = {"executor": executor, "shard": list(sh) if sh else None,
                      "assigned": len(mine), "todo": len(todo),
                      "workers": workers if executor == "ray" else 1}
    with store.session(**session_fields) as session, tqdm(
            total=len(mine), initial=len(mine) - len(todo), desc=units.name, unit="record",
            disable=not progress, dynamic_ncols=True) as bar:
        if not todo:
            computed = 0
        elif executor == "ray":
            from shiftlens.runner.distributed import execute_ray

            computed = execute_ray(ctx, todo, bar, workers=workers,
                                   gpus_per_worker=gpus_per_worker,
                                   cpus_per_worker=cpus_per_worker, max_restarts=max_restarts,
                                   address=ray_address)
        else:
            computed = _execute_inprocess(ctx, todo, bar)
        session.update(computed=computed)
    missing = sum(1 for k in keys if not store.record_path(*k).exists())
    return RunSummary(path=store.path, units=units.name, executor=executor, shard=sh,
                      total=len(keys), assigned=len(mine), done_before=len(done),
                      computed=computed, recomputed=len(damaged), missing=missing,
                      seconds=time.perf_counter() - t0)


# ============================================================================ reading a run
def run_status(path: str | Path) -> dict[str, Any]:
    """How far a run is: every record checked (digest, unit, plan).

    Returns:
        ``{"units", "total", "done", "missing": [(prompt id, role), ...],
        "damaged": {(prompt id, role): reason}, "by_role": {role: done}}``.

    Example:
        >>> run_status("runs/sens")["done"]  # doctest: +SKIP
        24
    """
    store = RunStore.open(path)
    keys = store.keys()
    digest = store.plan_digest()
    done, damaged = store.scan(keys, digest)
    ids = _ids(store)
    return {
        "units": store.info["units_name"],
        "total": len(keys),
        "done": len(done),
        "missing": [(ids(i), r) for i, r in keys if (i, r) not in done and (i, r) not in damaged],
        "damaged": {(ids(i), r): why for (i, r), why in damaged.items()},
        "by_role": {role: sum(1 for k in done if k[1] == role) for role in store.info["roles"]},
    }


def _ids(store: RunStore) -> Any:
    try:
        prompts = store.read_plan()[2]
    except ShiftlensError:
        return lambda i: f"#{i}"
    return lambda i: prompt_id(prompts[i], i)


def _registered_units(name: str) -> Any:
    """The registered lens units called ``name`` (a run started with a wrapper object)."""
    from shiftlens.lenses.registry import registered_lenses, resolve_ref

    for spec in registered_lenses().values():
        if not spec.units:
            continue
        obj = resolve_ref(spec.units)
        for u in (obj.values() if isinstance(obj, Mapping) else [obj]):
            if getattr(u, "name", None) == name:
                return u
    return None


def load_run(path: str | Path, *, units: Any = None) -> Any:
    """Assemble the Result of a complete run directory (no model is loaded).

    Every record is read and checked (its SHA-256, that it belongs to this run's plan), then the
    lens's ``assemble`` builds the Result: equal, field by field, to what the in-process
    function returns for the same inputs.

    Args:
        path: The run directory.
        units: The LensUnits, when the run was made with an object no module exports and no
            registered lens provides units of its name (else found from ``run.json``).

    Raises:
        ShiftlensError: not a run directory, records missing or damaged (the message says how
            many, names the first and how to complete the run).

    Example:
        >>> res = load_run("runs/sens")  # doctest: +SKIP
        >>> res.save("results/sens")  # doctest: +SKIP
    """
    store = RunStore.open(path)
    where = repr(str(store.path))
    if units is None:
        ref = store.info.get("units")
        units = resolve_units(ref)[0] if ref else _registered_units(store.info["units_name"])
        if units is None:
            raise ShiftlensError(f"{where} was made with units {store.info['units_name']!r}, "
                                 "which no registered lens provides; pass them: "
                                 "load_run(path, units=...)")
    if units.name != store.info["units_name"]:
        raise ShiftlensError(f"{where} is a run of {store.info['units_name']!r}, not of "
                             f"{units.name!r}")
    digest, plan, prompts, _ = store.read_plan()
    records: dict[tuple[int, str], Any] = {}
    problems: list[str] = []
    for i, role in store.keys():
        try:
            records[(i, role)] = store.read_record(i, role, digest)
        except ShiftlensError as e:
            problems.append(f"{prompt_id(prompts[i], i)} ({role}): {e}")
    if problems:
        raise ShiftlensError(
            f"{where}: {len(problems)} of {len(store.keys())} records are missing or damaged "
            f"(first: {problems[0]}); complete the run with the same 'shiftlens run' command "
            "and --resume")
    return units.assemble(plan, prompts, records)
