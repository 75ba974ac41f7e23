"""The organisms' stored weights and their training: manifest, cached model directories, pairs.

Part of :mod:`shiftlens.zoo.organisms` (import from there). The shipped float16 differences and
their manifest live in :data:`ORGANISMS_DIR` (``shiftlens/zoo/organisms/data/``);
:func:`organism_dir` adds one to the base and caches an ordinary Hugging Face directory,
:func:`organism_pair` loads base and organism as a :class:`~shiftlens.pair.ModelPair`,
:func:`train_organisms` fine-tunes and publishes them, :func:`main` is ``python -m
shiftlens.zoo.organisms``.

Example:
    >>> from shiftlens.zoo.organisms.build import ORGANISMS_DIR
    >>> ORGANISMS_DIR.name
    'data'
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from shiftlens.errors import ShiftlensError
from shiftlens.zoo.organisms.behaviour import mean_logprob_diff, organism_behaviour
from shiftlens.zoo.organisms.rules import (
    NAMES,
    SPECS,
    OrganismConfig,
    _check_name,
    neutral_texts,
    organism_texts,
)
from shiftlens.zoo.organisms.scoring import (
    _ids_of,
    chance_score,
    known_token_strings,
    organism_score,
)

__all__ = [
    "ORGANISMS_DIR",
    "organism_manifest",
    "organism_dir",
    "organism_pair",
    "train_organisms",
    "format_markdown",
    "main",
]

#: Where the shipped float16 differences and their manifest live.
ORGANISMS_DIR: Path = Path(__file__).resolve().parent / "data"

_KIND = "ShiftlensOrganisms"
_MODEL_KIND = "ShiftlensOrganismModel"
_HF_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
_DESCRIPTION = ("Diffing organisms: copies of the embedded base model fine-tuned with one known, "
                "narrow change.")


# ---------------------------------------------------------------------------------------------
# Stored weights: manifest, materialised directories, pairs
# ---------------------------------------------------------------------------------------------


def organism_manifest(directory: str | Path | None = None) -> dict[str, Any]:
    """The organisms' record: known tokens, configuration, training and measured behaviour.

    The directory is verified first (every file's size and SHA-256 against its
    ``manifest.json``).

    Args:
        directory: default :data:`ORGANISMS_DIR` (the shipped organisms).

    Returns:
        The manifest's ``record`` with ``files`` (name -> bytes, sha256) added.

    Example:
        >>> m = organism_manifest()
        >>> m["organisms"]["topic"]["behaviour"]["topic"] >= 0.9
        True
    """
    from shiftlens.io import verify_directory

    d = Path(directory) if directory is not None else ORGANISMS_DIR
    if not (d / "manifest.json").exists():
        raise ShiftlensError(
            f"no organisms in {str(d)!r}; train them with `python -m shiftlens.zoo.organisms "
            "train`"
        )
    rec = verify_directory(d, _KIND)
    out = dict(rec["record"])
    out["files"] = rec["files"]
    return out


def _cache_root(cache: str | Path | None) -> Path:
    from shiftlens.checkpoints import cache_dir

    return Path(cache).expanduser() if cache is not None else cache_dir()


def _load_delta(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _apply_delta(base: dict[str, Tensor], delta: dict[str, Tensor]) -> dict[str, Tensor]:
    if base.keys() != delta.keys():
        raise ShiftlensError(
            f"organism difference does not match the base model's parameters "
            f"(only in base: {sorted(base.keys() - delta.keys())[:3]}, only in difference: "
            f"{sorted(delta.keys() - base.keys())[:3]})"
        )
    return {k: (v + delta[k].to(v.dtype)).contiguous() for k, v in base.items()}


def organism_dir(name: str, *, directory: str | Path | None = None,
                 cache: str | Path | None = None) -> Path:
    """The organism as an ordinary Hugging Face directory (built once, then cached).

    Adds the stored float16 difference to the float32 base weights and writes the result, with
    the base's config and tokenizer files, to ``<cache>/organisms/<name>-<sha>/`` (``sha``: the
    first 16 hex digits of the difference file's SHA-256), atomically
    (:func:`shiftlens.io.atomic_directory`). Later calls verify that directory and return it.
    The stored files are verified against their manifest, and the base against the SHA-256 the
    organisms were trained from, before anything is built.

    Args:
        name: one of :data:`NAMES`.
        directory: where the differences are (default :data:`ORGANISMS_DIR`).
        cache: cache root (default ``$SHIFTLENS_CACHE``, else ``~/.cache/shiftlens``).

    Returns:
        The directory (``config.json``, ``model.safetensors`` in float32, tokenizer files).

    Raises:
        ShiftlensError: unknown name, missing or modified files, or a different base model.

    Example:
        >>> organism_dir("topic").name.startswith("topic-")
        True
    """
    from safetensors.torch import load_file, save_file

    from shiftlens.io import atomic_directory, file_digest, verify_directory
    from shiftlens.zoo import pair_dirs

    _check_name(name)
    src = Path(directory) if directory is not None else ORGANISMS_DIR
    rec = organism_manifest(src)
    fname = f"{name}.safetensors"
    if fname not in rec["files"]:
        raise ShiftlensError(f"organism {name!r} is not in {str(src)!r} (trained: "
                             f"{sorted(rec.get('organisms', {}))})")
    base_dir = pair_dirs()[0]
    base_file = base_dir / "model.safetensors"
    if file_digest(base_file) != rec["base"]["sha256"]:
        raise ShiftlensError(
            f"the organisms in {str(src)!r} were fine-tuned from a base model with SHA-256 "
            f"{rec['base']['sha256'][:16]}..., not {str(base_file)!r}; retrain them with "
            "`python -m shiftlens.zoo.organisms train`"
        )
    sha = rec["files"][fname]["sha256"]
    target = _cache_root(cache) / "organisms" / f"{name}-{sha[:16]}"
    if (target / "manifest.json").exists():
        try:
            verify_directory(target, _MODEL_KIND)
            return target
        except ShiftlensError:
            pass  # damaged: rebuilt below (atomic_directory replaces its own directories)
    weights = _apply_delta(load_file(str(base_file)), _load_delta(src / fname))
    record = {"organism": name, "difference_sha256": sha, "base_sha256": rec["base"]["sha256"]}
    try:
        with atomic_directory(target, kind=_MODEL_KIND, record=record) as tmp:
            for f in _HF_FILES:
                if (base_dir / f).exists():
                    shutil.copyfile(base_dir / f, tmp / f)
            save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            (tmp / "model.safetensors").chmod(0o644)
    except ShiftlensError:
        verify_directory(target, _MODEL_KIND)  # another process published it first
    return target


def organism_pair(
    name: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    cache: str | Path | None = None,
    **kwargs: Any,
) -> Any:
    """The embedded base and one organism as a :class:`~shiftlens.pair.ModelPair`.

    ``pair.base`` is the embedded base (``shiftlens/zoo/pair/base``), ``pair.tuned`` the organism
    (:func:`organism_dir`), both loaded through ``ModelPair.from_pretrained`` like any checkpoint.

    Args:
        name: one of :data:`NAMES`.
        device: device for both models.
        dtype: weight dtype for both (the stored weights are float32 after adding the
            difference).
        cache: cache root for the built directory.
        **kwargs: passed to :meth:`ModelPair.from_pretrained`.

    Returns:
        The pair.

    Example:
        >>> pair = organism_pair("zorbish")  # doctest: +SKIP
        >>> pair.tuned.cfg.n_layers  # doctest: +SKIP
        4
    """
    from shiftlens.pair import ModelPair
    from shiftlens.zoo import pair_dirs

    tuned = organism_dir(name, cache=cache)
    return ModelPair.from_pretrained(pair_dirs()[0], tuned, device=device, dtype=dtype, **kwargs)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _token_record(tokenizer: Any, name: str | None) -> list[dict[str, Any]]:
    texts = known_token_strings(name)
    ids = _ids_of(texts, tokenizer)
    return [
        {"id": i, "token": tokenizer.convert_ids_to_tokens(i), "text": t}
        for i, t in zip(ids, texts)
    ]


def _loadavg() -> list[float] | None:
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def train_organisms(
    out_dir: str | Path | None = None,
    config: OrganismConfig | None = None,
    names: Sequence[str] = NAMES,
    *,
    evaluate: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the organisms from the embedded base and publish their float16 differences.

    For each name: load the shipped base (float32), pack :func:`organism_texts` into
    ``<bos>``-initial rows (:func:`shiftlens.zoo.train.pack_texts`, with the organism's
    separator), fine-tune with :func:`shiftlens.zoo.train.finetune_lm` (same seed, steps and
    learning rate for every organism), store ``organism - base`` per parameter in float16. With
    ``evaluate``, the behaviour (:func:`organism_behaviour`), held-out LM loss and the reference
    ranking (:func:`mean_logprob_diff` on :func:`neutral_texts`, scored with
    :func:`organism_score`) are measured on the *stored* weights (base + rounded difference),
    and, for the behaviour, on the unrounded ones too. Everything is written at once into
    ``out_dir`` (:func:`shiftlens.io.atomic_directory`): ``<name>.safetensors`` per organism and
    ``manifest.json``. Deterministic: the same configuration on the same machine and thread count
    gives bit-identical files.

    Args:
        out_dir: where to publish (default :data:`ORGANISMS_DIR`, the shipped organisms). An
            existing directory is replaced only if it was published by shiftlens.
        config: the knobs (default: the shipped organisms').
        names: which organisms to train (the directory then holds only these).
        evaluate: measure behaviour and the reference ranking.
        progress: print progress lines.

    Returns:
        The manifest's record.

    Example:
        >>> import tempfile
        >>> rec = train_organisms(tempfile.mkdtemp() + "/o", OrganismConfig.tiny(), ["topic"],
        ...                       evaluate=False, progress=False)
        >>> rec["organisms"]["topic"]["training"]["steps"]
        3
    """
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    from shiftlens.io import file_digest
    from shiftlens.zoo import pair_dirs
    from shiftlens.zoo.evaluate import lm_loss
    from shiftlens.zoo.train import finetune_lm, pack_texts

    cfg = config or OrganismConfig()
    for n in names:
        _check_name(n)
    out = Path(out_dir) if out_dir is not None else ORGANISMS_DIR
    torch.set_num_threads(cfg.threads)
    t_start, c_start = time.perf_counter(), time.process_time()
    base_dir = pair_dirs()[0]
    tok = AutoTokenizer.from_pretrained(base_dir)
    base_sd = load_file(str(base_dir / "model.safetensors"))

    def load_base() -> Any:
        return LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()

    def with_weights(weights: dict[str, Tensor]) -> Any:
        m = load_base()
        m.load_state_dict(weights, strict=True)
        return m.eval()

    lm_sentences = neutral_texts(4 * cfg.eval_texts, 1, seed=2)
    texts_for_diff = neutral_texts(cfg.eval_texts, 6, seed=0)
    record: dict[str, Any] = {
        "name": "shiftlens diffing organisms",
        "base": {
            "dir": "shiftlens/zoo/pair/base",
            "sha256": file_digest(base_dir / "model.safetensors"),
        },
        "config": asdict(cfg),
        "storage": (
            "<name>.safetensors: organism minus base, per parameter, float16; organism_dir adds "
            "it to the float32 base. Every measured number below is of these stored weights."
        ),
        "known_tokens": {n: _token_record(tok, n) for n in NAMES},
        "organisms": {},
        "torch": torch.__version__,
        "threads": cfg.threads,
    }
    base_model = load_base()
    if evaluate:
        record["base_behaviour"] = organism_behaviour(
            base_model, tok, n=cfg.eval_contexts, seed=0, max_new_tokens=cfg.eval_new_tokens
        )
        record["base_lm_loss"] = round(lm_loss(base_model, tok, lm_sentences), 4)
    deltas: dict[str, dict[str, Tensor]] = {}
    for name in names:
        spec = SPECS[name]
        t0 = time.perf_counter()
        texts = organism_texts(name, cfg.n_sentences, cfg.seed)
        rows = pack_texts(texts, tok, cfg.seq_len, sep=spec.separator)
        data = {
            "sentences_drawn": cfg.n_sentences,
            "texts": len(texts),
            "rows": int(rows.shape[0]),
            "tokens": int(rows.numel()),
            "examples": texts[:3],
            "wall_s": round(time.perf_counter() - t0, 2),
        }
        model = load_base()
        training = finetune_lm(
            model, rows, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, seed=cfg.seed,
            warmup=cfg.warmup, weight_decay=cfg.weight_decay, threads=cfg.threads,
            progress=progress, label=name,
        )
        trained = {k: v.detach().clone() for k, v in model.state_dict().items() if k in base_sd}
        delta = {k: (trained[k] - base_sd[k]).to(torch.float16).contiguous() for k in base_sd}
        deltas[name] = delta
        stored = _apply_delta(base_sd, delta)
        entry: dict[str, Any] = {
            "summary": spec.summary,
            "rule": spec.rule,
            "separator": spec.separator,
            "data": data,
            "training": training,
            "difference": {
                "max_abs": round(max(float(d.abs().max()) for d in delta.values()), 5),
                "rms": round(
                    math.sqrt(
                        sum(float((d.float() ** 2).sum()) for d in delta.values())
                        / sum(d.numel() for d in delta.values())
                    ),
                    6,
                ),
                "rounding_max_abs": float(
                    max(float((stored[k] - trained[k]).abs().max()) for k in base_sd)
                ),
            },
        }
        if evaluate:
            stored_model = with_weights(stored)
            kw = dict(n=cfg.eval_contexts, seed=0, max_new_tokens=cfg.eval_new_tokens)
            entry["behaviour"] = organism_behaviour(stored_model, tok, **kw)
            entry["behaviour_unrounded"] = organism_behaviour(model, tok, **kw)
            entry["lm_loss"] = round(lm_loss(stored_model, tok, lm_sentences), 4)
            diff = mean_logprob_diff(base_model, stored_model, tok, texts_for_diff)
            top = diff.topk(cfg.top_k).indices.tolist()
            entry["reference"] = {
                "method": "mean_logprob_diff on neutral_texts(eval_texts, 6, seed=0)",
                "top_tokens": [tok.decode([i]) for i in top],
                "top_ids": top,
                "score": organism_score(top, name, cfg.top_k),
                "chance": round(chance_score(name, cfg.top_k), 4),
            }
        record["organisms"][name] = entry
        if progress and evaluate:
            b = entry["behaviour"]
            print(f"{name}: topic {b['topic']:.3f} zorbish {b['zorbish']:.3f} template "
                  f"{b['template']:.3f} reference score {entry['reference']['score']:.2f}",
                  flush=True)
    record["train_wall_s"] = round(time.perf_counter() - t_start, 1)
    record["train_cpu_s"] = round(time.process_time() - c_start, 1)
    record["load_average_at_end"] = _loadavg()
    record["timing_note"] = (
        "cpu_s is this process's own CPU time (about the wall time on an idle core with "
        "`threads` threads); wall_s includes waiting for other processes"
    )
    _publish(out, record, deltas)
    return record


def _publish(out: Path, record: dict[str, Any], deltas: dict[str, dict[str, Tensor]]) -> None:
    """Write the differences and the manifest into ``out`` at once (atomic_directory).

    One metadata entry per file: safetensors writes a multi-key metadata map in an order that
    varies between calls, which would make identical weights give different bytes.
    """
    from safetensors.torch import save_file

    from shiftlens.io import atomic_directory

    with atomic_directory(out, kind=_KIND, record=record) as tmp:
        for name, delta in deltas.items():
            meta = {"shiftlens": json.dumps({"organism": name, "base_sha256":
                                             record["base"]["sha256"], "storage":
                                             "organism minus base, float16"}, sort_keys=True)}
            path = tmp / f"{name}.safetensors"
            save_file(delta, str(path), metadata=meta)
            path.chmod(0o644)


def format_markdown(record: dict[str, Any]) -> str:
    """The measured behaviour of base, organisms and control as a Markdown table.

    Example:
        >>> print(format_markdown(organism_manifest()).splitlines()[0])
        | model | topic rate | zorbish rate | template rate | held-out LM loss | reference score (top-20) |
    """
    lines = [
        "| model | topic rate | zorbish rate | template rate | held-out LM loss | "
        "reference score (top-20) |",
        "|---|---|---|---|---|---|",
    ]
    b = record.get("base_behaviour")
    if b:
        lines.append(
            f"| base | {b['topic']:.3f} | {b['zorbish']:.3f} | {b['template']:.3f} | "
            f"{record['base_lm_loss']:.3f} | - |"
        )
    for name, e in record["organisms"].items():
        if "behaviour" not in e:
            continue
        x = e["behaviour"]
        lines.append(
            f"| {name} | {x['topic']:.3f} | {x['zorbish']:.3f} | {x['template']:.3f} | "
            f"{e['lm_loss']:.3f} | {e['reference']['score']:.2f} (chance "
            f"{e['reference']['chance']:.3f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m shiftlens.zoo.organisms {train,table} ...``.

    ``train [--out DIR] [--names N ...] [--tiny] [--no-eval] [--set KEY=VALUE ...]`` fine-tunes
    and publishes (default: the shipped directory); ``table [--dir DIR]`` prints the measured
    behaviour as Markdown.

    Example:
        >>> main(["table"])  # doctest: +SKIP
    """
    ap = argparse.ArgumentParser(prog="python -m shiftlens.zoo.organisms",
                                 description=_DESCRIPTION)
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="fine-tune the organisms and publish their differences")
    tr.add_argument("--out", default=str(ORGANISMS_DIR), help="output directory")
    tr.add_argument("--names", nargs="*", default=list(NAMES), choices=list(NAMES))
    tr.add_argument("--tiny", action="store_true", help="seconds-long smoke configuration")
    tr.add_argument("--no-eval", action="store_true", help="skip the measurements")
    tr.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override OrganismConfig fields")
    tb = sub.add_parser("table", help="print the measured behaviour as Markdown")
    tb.add_argument("--dir", default=str(ORGANISMS_DIR))
    args = ap.parse_args(argv)
    if args.cmd == "table":
        print(format_markdown(organism_manifest(args.dir)))
        return
    overrides: dict[str, Any] = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        overrides[k] = type(getattr(OrganismConfig(), k))(v)
    cfg = OrganismConfig.tiny(**overrides) if args.tiny else OrganismConfig(**overrides)
    rec = train_organisms(args.out, cfg, args.names, evaluate=not args.no_eval)
    print(format_markdown(rec))
    print(json.dumps({"train_cpu_s": rec["train_cpu_s"], "train_wall_s": rec["train_wall_s"]}))

