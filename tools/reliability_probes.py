"""Issue 14's probe list, run again: what each hostile-but-fair input gets from shiftlens today.

Every probe named in issue 14 (points 1-5), plus one NaN weight for each of the eight
registered lenses, runs through the public API (the CLI through ``shiftlens.cli.main``) on tiny
random-weight Llama models built in code (``shiftlens.testing``). For each probe it records the
issue point, the probe, what it gets now (the exception class and the first line of its message;
``ok: ...`` for a valid result; for the CLI the exit code and the first stderr line) and the test
that covers it. Writes ``benchmarks/results/reliability_probes.json`` and rewrites the table of
``docs/reliability.md`` between ``<!-- probes:begin -->`` and ``<!-- probes:end -->``.

Run from the repository root (about a minute on two CPU cores)::

    HF_HUB_OFFLINE=1 .venv/bin/python tools/reliability_probes.py

``tests/unit/test_reliability_probes.py`` imports :data:`PROBES` and :func:`run_probe`: every
outcome must be a ShiftlensError, CLI exit 2 or the documented valid result, and the docs table
must equal the JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
JSON_PATH = ROOT / "benchmarks" / "results" / "reliability_probes.json"
DOC_PATH = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- probes:begin -->", "<!-- probes:end -->"
MAX_MESSAGE = 150

# what a probe may get: a ShiftlensError, CLI exit 2, or a documented valid result
EXPECT = ("error", "exit 2", "ok")


@dataclass
class Probe:
    """One probe: ``fn(ctx)`` returns a valid result's description (``ok: ...``), a CLI
    ``(exit code, stderr)``, or raises."""

    name: str
    point: int
    text: str
    test: str
    expect: str
    fn: Callable[[Ctx], Any]
    slow: bool = False
    open: str | None = None  # a known finding still open: what it should get instead


PROBES: list[Probe] = []


def probe(point: int, text: str, test: str, expect: str = "error", slow: bool = False,
          open: str | None = None):
    assert expect in EXPECT, expect

    def deco(fn):
        PROBES.append(Probe(fn.__name__, point, text, test, expect, fn, slow, open))
        return fn

    return deco


# ------------------------------------------------------------------------------- shared set-up
class Ctx:
    """Tiny models and scratch directories, built on first use; ``root`` is replaced by
    ``<tmp>`` in recorded messages."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="shiftlens-probes-"))
        self._dirs: tuple[Path, Path] | None = None
        self._n = 0
        self.saved: Path | None = None

    def dirs(self) -> tuple[Path, Path]:
        """A tiny Llama (2 layers, GQA) and its 5%-perturbed twin, saved like checkpoints."""
        if self._dirs is None:
            from shiftlens.testing import perturbed_copy, tiny_model_dir

            base = tiny_model_dir("llama", self.root / "llama" / "base", seed=0)
            tuned = perturbed_copy(base, self.root / "llama" / "tuned", scale=0.05, seed=1)
            self._dirs = (base, tuned)
        return self._dirs

    def tmp(self, name: str) -> Path:
        self._n += 1
        d = self.root / f"{self._n:03d}-{name}"
        d.mkdir(parents=True)
        return d

    def pair(self):
        """A fresh tiny pair (safe to poison in memory)."""
        from shiftlens import ModelPair

        return ModelPair.from_pretrained(*self.dirs())

    def poisoned(self, role: str = "tuned", layer: int = 1, value: float = float("nan")):
        """The issue's probe: one NaN in ``role``'s layer-``layer`` MLP down-projection, edited
        in memory after loading (what the load-time weight check cannot see)."""
        import torch

        pair = self.pair()
        with torch.no_grad():
            pair.models[role].original_model.model.layers[layer].mlp.down_proj.weight[3, 5] = value
        return pair

    def edited_checkpoint(self, name: str, edit: Callable[[dict], Any]) -> Path:
        """A copy of the base checkpoint with its state dict edited."""
        from safetensors.torch import load_file, save_file

        base = self.dirs()[0]
        out = self.tmp(name) / "model"
        shutil.copytree(base, out)
        sd = load_file(out / "model.safetensors")
        edit(sd)
        save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
        return out

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def prompts(n: int = 2):
    from shiftlens import default_prompts

    return [p for p in default_prompts() if p.reference][:n]


def write_jsonl(ctx: Ctx, *lines: str, raw: bytes | None = None) -> Path:
    f = ctx.tmp("jsonl") / "p.jsonl"
    good = '{"id": "g", "text": "Sort: b a", "instruction": ["Sort:"]}'
    if raw is not None:
        f.write_bytes(raw)
    else:
        f.write_text("\n".join([good, *lines]) + "\n", encoding="utf-8", errors="surrogatepass")
    return f


def cli(*argv: str) -> tuple[int, str]:
    from shiftlens.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(list(argv))
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 1
    return rc, err.getvalue()


def sensitivity(pair, n: int):
    from shiftlens import attribution as A

    return A.instruction_sensitivity(pair, prompts(n), response="reference", progress=False)


def describe(x: Any) -> str:
    """A short description of a valid result: its summary sentence when it has one."""
    s = getattr(x, "summary", None)
    if callable(s):
        d = s()
        if isinstance(d, dict) and d.get("sentence"):
            return f"{type(x).__name__}: {d['sentence']}"
        return f"{type(x).__name__}"
    return type(x).__name__


def _save_killed_at(k: int, result: Any, target: Path) -> int:
    """tests/faults.py's ``save_killed_at``: a save SIGKILLed at write step ``k``."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from faults import save_killed_at
    finally:
        sys.path.remove(str(ROOT / "tests"))
    return save_killed_at(k, result, target)


# ========================================================================== 1. saves and loads
@probe(1, "SIGKILL a 3-prompt SensitivityResult save over a 6-prompt one at every write step, "
          "then load", "tests/unit/test_result.py::"
          "test_sigkill_at_every_write_step_never_leaves_a_mixed_result", expect="ok",
       slow=True)
def save_killed_at_every_step(ctx: Ctx) -> str:
    import shiftlens
    from shiftlens import ShiftlensError

    if not hasattr(os, "fork"):
        return "ok: skipped (no fork on this platform)"
    pair = ctx.pair()
    old, new = sensitivity(pair, 6), sensitivity(pair, 3)
    d = ctx.tmp("killed") / "r"
    outcomes: list[str] = []
    for k in range(1, 200):
        old.save(d)
        status = _save_killed_at(k, new, d)
        killed = os.WIFSIGNALED(status)
        try:
            got = shiftlens.load(d)
        except ShiftlensError:
            outcomes.append("error")
        else:
            outcomes.append("old" if got.equals(old) else "new" if got.equals(new) else "MIXED")
        if not killed:
            break
    if "MIXED" in outcomes:
        raise AssertionError(f"a mixed result loaded after a kill at step {outcomes.index('MIXED') + 1}")
    return (f"ok: {len(outcomes) - 1} kill points; the old result loaded {outcomes.count('old')}x, "
            f"the new one {outcomes.count('new')}x, an error {outcomes.count('error')}x, "
            "never old pieces with new ones")


def _saved(ctx: Ctx) -> Path:
    """A fresh copy of one saved 3-prompt SensitivityResult (computed once per context)."""
    if ctx.saved is None:
        ctx.saved = sensitivity(ctx.pair(), 3).save(ctx.tmp("template") / "r")
    d = ctx.tmp("saved") / "r"
    shutil.copytree(ctx.saved, d)
    return d


@probe(1, "a saved SensitivityResult with tensors.safetensors deleted (a matrix loaded as None)",
       "tests/unit/test_result.py::test_damaged_results_are_refused_naming_the_problem")
def result_deleted_matrix(ctx: Ctx):
    import shiftlens

    d = _saved(ctx)
    (d / "tensors.safetensors").unlink()
    return shiftlens.load(d)


@probe(1, "a saved SensitivityResult with one number in result.json edited (a tampered `n`, same size)",
       "tests/unit/test_result.py::test_damaged_results_are_refused_naming_the_problem")
def result_tampered_json(ctx: Ctx):
    import shiftlens

    d = _saved(ctx)
    f = d / "result.json"
    text = f.read_text()  # one digit changed: the same size, another number
    f.write_text(re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), text, count=1))
    return shiftlens.load(d)


@probe(1, "a saved SensitivityResult with its Parquet file truncated to half",
       "tests/unit/test_result.py::test_damaged_results_are_refused_naming_the_problem")
def result_truncated_parquet(ctx: Ctx):
    import shiftlens

    d = _saved(ctx)
    f = next(d.glob("*.parquet"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return shiftlens.load(d)


@probe(1, "a PairCache overwrite (2 prompts over 5) interrupted after the activations are written",
       "tests/unit/test_capture.py::test_interrupted_or_tampered_cache_never_loads_as_whole",
       expect="ok")
def paircache_interrupted_overwrite(ctx: Ctx) -> str:
    import torch

    import shiftlens.capture as cap
    from shiftlens.capture import PairCache

    pair = ctx.pair()
    name = ["blocks.0.hook_resid_post"]
    five = pair.run_with_cache(prompts(5), name, progress=False)
    two = pair.run_with_cache(prompts(2), name, progress=False)
    d = five.save(ctx.tmp("cache") / "c")
    real = cap.write_json

    def die(path, obj):
        raise KeyboardInterrupt

    cap.write_json = die
    try:
        two.save(d)
    except KeyboardInterrupt:
        pass
    finally:
        cap.write_json = real
    back = PairCache.load(d)
    whole = len(back) == 5 and torch.equal(back["base", name[0], 4], five["base", name[0], 4])
    if not whole:
        raise AssertionError("the interrupted overwrite left a cache that is not the old one")
    return "ok: the old 5-prompt cache loads whole (the interrupted save left nothing behind)"


@probe(1, "a PairCache directory whose cache.json was edited",
       "tests/unit/test_capture.py::test_interrupted_or_tampered_cache_never_loads_as_whole")
def paircache_tampered(ctx: Ctx):
    from shiftlens.capture import PairCache

    pair = ctx.pair()
    d = pair.run_with_cache(prompts(2), ["blocks.0.hook_resid_post"], progress=False).save(
        ctx.tmp("cache") / "c")
    f = d / "cache.json"
    f.write_text(f.read_text().replace("blocks.0", "blocks.1", 1))
    return PairCache.load(d)


@probe(5, "load a result from a directory that does not exist",
       "tests/unit/test_result.py::test_save_refuses_what_it_cannot_write_and_what_it_did_not_write")
def result_missing_dir(ctx: Ctx):
    import shiftlens

    return shiftlens.load(ctx.tmp("missing") / "nothing-here")


@probe(5, "load a result whose manifest.json is not JSON",
       "tests/unit/test_result.py::test_damaged_results_are_refused_naming_the_problem")
def result_bad_manifest_json(ctx: Ctx):
    import shiftlens

    d = _saved(ctx)
    (d / "manifest.json").write_text("{not json")
    return shiftlens.load(d)


# ============================================================================ 2. checkpoints
MISSING = "model.layers.0.mlp.down_proj.weight"


@probe(2, f"load_bridge on a checkpoint without `{MISSING}`",
       "tests/unit/test_bridge.py::test_deleted_tensor_is_refused_by_name")
def checkpoint_missing_tensor(ctx: Ctx):
    from shiftlens.pair import load_bridge

    return load_bridge(ctx.edited_checkpoint("missing", lambda sd: sd.pop(MISSING)))


@probe(2, "ModelPair.from_pretrained with that checkpoint as base",
       "tests/unit/test_bridge.py::test_deleted_tensor_is_refused_by_name")
def pair_missing_tensor(ctx: Ctx):
    from shiftlens import ModelPair

    return ModelPair.from_pretrained(ctx.edited_checkpoint("missing", lambda sd: sd.pop(MISSING)),
                                     ctx.dirs()[1])


@probe(2, "CLI `shiftlens concepts DIR --layer 0` on that checkpoint",
       "tests/unit/test_bridge.py::test_deleted_tensor_is_refused_by_name", expect="exit 2")
def cli_concepts_missing_tensor(ctx: Ctx):
    return cli("concepts", str(ctx.edited_checkpoint("missing", lambda sd: sd.pop(MISSING))),
               "--layer", "0")


@probe(2, "load_bridge on a checkpoint with an unexpected extra tensor",
       "tests/unit/test_bridge.py::test_unexpected_tensor_is_refused_by_name")
def checkpoint_unexpected_tensor(ctx: Ctx):
    import torch

    from shiftlens.pair import load_bridge

    def add(sd):
        sd["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(4, 4)

    return load_bridge(ctx.edited_checkpoint("extra", add))


@probe(2, "a cached GGUF conversion whose model.safetensors is truncated (verify_hf_dir)",
       "tests/unit/test_checkpoints.py::"
       "test_truncated_cached_conversion_without_manifest_is_caught")
def gguf_cache_truncated(ctx: Ctx):
    from shiftlens import checkpoints as ck

    d = ctx.tmp("gguf") / "conv"
    shutil.copytree(ctx.dirs()[0], d)
    (d / ck.META_FILE).write_text(json.dumps({"source": "tiny.gguf"}))
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    return ck.verify_hf_dir(d)


@probe(5, "load_bridge on a truncated model.safetensors",
       "tests/unit/test_bridge.py::test_truncated_safetensors_is_refused_naming_file_and_tensors")
def checkpoint_truncated(ctx: Ctx):
    from shiftlens.pair import load_bridge

    d = ctx.tmp("cut") / "model"
    shutil.copytree(ctx.dirs()[0], d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-5000])
    return load_bridge(d)


@probe(5, "load_bridge on a checkpoint with a wrongly shaped tensor",
       "tests/unit/test_bridge.py::test_wrongly_shaped_tensor_is_refused_by_name_and_shapes")
def checkpoint_wrong_shape(ctx: Ctx):
    from shiftlens.pair import load_bridge

    def reshape(sd):
        sd[MISSING] = sd[MISSING][:, :-1].contiguous()

    return load_bridge(ctx.edited_checkpoint("shape", reshape))


# ======================================================================= 3. non-finite weights
@probe(3, "one NaN in a k_proj of the checkpoint file, loaded with load_bridge",
       "tests/unit/test_bridge.py::test_non_finite_weight_is_refused_by_name")
def checkpoint_nan_weight(ctx: Ctx):
    from shiftlens.pair import load_bridge

    def poison(sd):
        sd["model.layers.1.self_attn.k_proj.weight"][3, 5] = float("nan")

    return load_bridge(ctx.edited_checkpoint("nan", poison))


@probe(3, "lens residual: `similarity` with one NaN in the tuned layer-1 down_proj (in memory)",
       "tests/unit/test_residual_nonfinite.py::"
       "test_one_nan_in_a_tuned_weight_is_an_error_naming_model_prompt_layer")
def nan_residual_similarity(ctx: Ctx):
    from shiftlens.residual import similarity

    return similarity(ctx.poisoned(), prompts(), progress=False)


@probe(3, "lens residual: `output_shift` with the same NaN",
       "tests/unit/test_residual_nonfinite.py::"
       "test_one_nan_in_a_tuned_weight_is_an_error_naming_model_prompt_layer")
def nan_residual_output_shift(ctx: Ctx):
    from shiftlens.residual import output_shift

    return output_shift(ctx.poisoned(), prompts(), progress=False)


@probe(3, "lens attention: `instruction_attention` with a NaN in the tuned layer-0 down_proj",
       "tests/unit/test_attention_nonfinite.py::"
       "test_nan_in_a_tuned_down_proj_is_named_never_averaged")
def nan_attention(ctx: Ctx):
    from shiftlens.lenses.attention import instruction_attention

    return instruction_attention(ctx.poisoned(layer=0), prompts(4), progress=False)


@probe(3, "lens ffn: `concept_shift` with the NaN in the tuned layer-1 down_proj",
       "tests/unit/test_ffn_reliability.py::"
       "test_a_non_finite_w_out_is_an_error_naming_role_model_layer_and_weight")
def nan_ffn_concept_shift(ctx: Ctx):
    from shiftlens import ffn
    from shiftlens.vocab import default_vocab

    pair = ctx.poisoned()
    return ffn.concept_shift(pair, k=4, top_words=10, vocab=default_vocab(pair.tokenizer, 200),
                             progress=False)


@probe(3, "lens ffn: `rotation` with the same NaN (was a raw LinAlgError)",
       "tests/unit/test_ffn_reliability.py::"
       "test_a_non_finite_w_out_is_an_error_naming_role_model_layer_and_weight")
def nan_ffn_rotation(ctx: Ctx):
    from shiftlens import ffn
    from shiftlens.vocab import default_vocab

    pair = ctx.poisoned()
    return ffn.rotation(pair, 4, vocab=default_vocab(pair.tokenizer, 200), progress=False)


@probe(3, "lens attribution: `instruction_sensitivity` with the same NaN",
       "tests/unit/test_attribution_reliability.py::"
       "test_nan_weight_is_named_by_every_pair_function")
def nan_attribution(ctx: Ctx):
    return sensitivity(ctx.poisoned(), 2)


@probe(3, "lens activation_difference: `activation_difference` with the same NaN",
       "tests/unit/test_reliability_probes.py::test_probe_gets_what_it_documents[nan_activation_difference]", expect="error")
def nan_activation_difference(ctx: Ctx):
    from shiftlens.lenses.activation_difference import activation_difference

    return activation_difference(ctx.poisoned(), [p.text for p in prompts(3)], n_positions=3,
                                 patch_scales=(1.0,), n_boot=20, steer_strengths=(0.0, 1.0),
                                 max_new_tokens=4, n_tokens=20, vocabulary=[5, 6, 7],
                                 progress=False)


@probe(3, "lens weight_delta: `weight_delta(base_dir, tuned_dir)`, one NaN in the tuned "
          "checkpoint file's layer-1 down_proj",
       "tests/unit/test_reliability_probes.py::test_probe_gets_what_it_documents[nan_weight_delta_files]")
def nan_weight_delta_files(ctx: Ctx):
    from shiftlens.lenses.weight_delta import weight_delta

    def poison(sd):
        sd["model.layers.1.mlp.down_proj.weight"][3, 5] = float("nan")

    return weight_delta(ctx.dirs()[0], ctx.edited_checkpoint("nan", poison), r=2, n_tokens=5,
                        progress=False)


@probe(3, "lens weight_delta: `weight_delta(pair, from_files=False)` with the in-memory NaN",
       "tests/unit/test_reliability_probes.py::test_probe_gets_what_it_documents[nan_weight_delta_memory]")
def nan_weight_delta_memory(ctx: Ctx):
    from shiftlens.lenses.weight_delta import weight_delta

    return weight_delta(ctx.poisoned(), r=2, n_tokens=5, from_files=False, progress=False)


@probe(3, "lens amplification: `amplification` with the same NaN",
       "tests/unit/test_reliability_probes.py::test_probe_gets_what_it_documents[nan_amplification]")
def nan_amplification(ctx: Ctx) -> str:
    from shiftlens.lenses.amplification import amplification

    res = amplification(ctx.poisoned(), prompts(2), alphas=(0.0, 1.0, 3.0), max_new_tokens=4,
                        progress=False)
    ids = sorted({t for ts in res.to_frame()["token_ids"] for t in str(ts).split()})
    return (f"ok: AmplificationResult over {len(res.to_frame())} responses, every response token "
            f"id in {{{', '.join(ids)}}}, no warning")


@probe(3, "lens crosscoder: `crosscoder_diff` at layer 1 with the same NaN",
       "tests/unit/test_reliability_probes.py::test_probe_gets_what_it_documents[nan_crosscoder]",
       expect="error")
def nan_crosscoder(ctx: Ctx):
    from shiftlens.lenses.crosscoder import CrosscoderConfig, crosscoder_diff

    cfg = CrosscoderConfig(n_latents=32, k=4, steps=20, batch_size=32, warmup_steps=5, lr=1e-2,
                           dead_steps=10, checkpoint_every=0, log_every=10, norm_rows=256,
                           threshold_batches=2)
    return crosscoder_diff(ctx.poisoned(layer=0), [p.text for p in prompts(4)], 1, config=cfg,
                           progress=False, n_contexts=3, n_tokens=5, n_changed=3)


# ============================================================================= 4. save_prompts
@probe(4, "`save_prompts` over a file of 5 prompts, the 6th record not JSON-serialisable "
          "(the file is kept)",
       "tests/unit/test_prompts.py::test_save_prompts_keeps_the_old_file_on_failure")
def save_prompts_failing_record(ctx: Ctx):
    from shiftlens import InstructionPrompt
    from shiftlens.prompts import save_prompts

    f = ctx.tmp("save") / "p.jsonl"
    five = prompts(5)
    save_prompts(five, f)
    before = f.read_bytes()
    try:
        save_prompts([*five, InstructionPrompt("x y", id="bad", meta={"t": object()})], f)
    finally:
        if f.read_bytes() != before:
            raise AssertionError("save_prompts changed the existing file")


# ============================================================================== 5. bad inputs
JSONL_TEST = "tests/unit/test_prompts.py::test_bad_jsonl_records_name_file_line_and_field"


def _jsonl_probe(name: str, line: str, text: str, test: str = JSONL_TEST) -> None:
    def fn(ctx: Ctx):
        from shiftlens.prompts import load_prompts

        return load_prompts(write_jsonl(ctx, line))

    fn.__name__ = name
    probe(5, text, test)(fn)


_jsonl_probe("jsonl_null", "null", "JSONL record `null`")
_jsonl_probe("jsonl_list", "[1, 2]", "JSONL record `[1,2]`")
_jsonl_probe("jsonl_string", '"hi"', 'JSONL record `"hi"`')
_jsonl_probe("jsonl_instruction_int", '{"id": "q", "text": "x y", "instruction": 3}',
             '`"instruction": 3`')
_jsonl_probe("jsonl_meta_list", '{"id": "q", "text": "x y", "meta": [1, 2]}', '`"meta": [1,2]`')
_jsonl_probe("jsonl_reference_int", '{"id": "q", "text": "x y", "reference": 5}',
             '`"reference": 5`')
_jsonl_probe("jsonl_lone_surrogate", '{"id": "q", "text": "x \\ud800 y"}',
             "a lone surrogate (`\\ud800`) in the text")
_jsonl_probe("jsonl_meta_overwrite",
             '{"id": "q", "text": "x y", "source": "a", "meta": {"source": "b"}}',
             "a top-level key that would overwrite `meta.source`")


@probe(5, '`"id": 0` next to `"id": "0"` (was read as `\'\'` and escaped the duplicate check)',
       "tests/unit/test_prompts.py::test_integer_id_stays_distinct")
def jsonl_int_id_duplicate(ctx: Ctx):
    from shiftlens.prompts import load_prompts

    f = ctx.tmp("ids") / "p.jsonl"
    f.write_text('{"id": 0, "text": "x y"}\n{"id": "0", "text": "x z"}\n')
    return load_prompts(f)


@probe(5, "a directory given to load_prompts",
       "tests/unit/test_prompts.py::test_prompt_path_is_a_directory_or_not_utf8")
def prompts_directory(ctx: Ctx):
    from shiftlens.prompts import load_prompts

    return load_prompts(ctx.tmp("dir"))


@probe(5, "a Latin-1 (non-UTF-8) file given to load_prompts",
       "tests/unit/test_prompts.py::test_prompt_path_is_a_directory_or_not_utf8")
def prompts_latin1(ctx: Ctx):
    from shiftlens.prompts import load_prompts

    return load_prompts(write_jsonl(ctx, raw=b'{"text": "caf\xe9"}\n'))


@probe(5, "offsets `(True, 2)` as an instruction span",
       "tests/unit/test_prompts.py::test_bool_offsets_are_not_ints")
def prompt_bool_offsets(ctx: Ctx):
    from shiftlens import InstructionPrompt

    return InstructionPrompt("abc", instruction=[(True, 2)], id="b")


CLI_TEST = "tests/unit/test_cli_errors.py::test_bad_input_exit_2_one_line_nothing_written"


@probe(5, "CLI `--prompts` naming a directory", CLI_TEST, expect="exit 2")
def cli_prompts_directory(ctx: Ctx):
    d = ctx.tmp("cli")
    (d / "a_dir").mkdir()
    return cli("report", "toy:base", "toy:tuned", "--prompts", str(d / "a_dir"),
               "--out", str(d / "out"))


@probe(5, "CLI `--prompts` naming a non-UTF-8 file", CLI_TEST, expect="exit 2")
def cli_prompts_latin1(ctx: Ctx):
    d = ctx.tmp("cli")
    (d / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    return cli("report", "toy:base", "toy:tuned", "--prompts", str(d / "latin1.jsonl"),
               "--out", str(d / "out"))


@probe(5, "CLI `--out` inside a directory without write permission",
       "tests/unit/test_cli_errors.py::test_unwritable_out_is_refused_before_loading",
       expect="exit 2")
def cli_unwritable_out(ctx: Ctx):
    ro = ctx.tmp("ro")
    real = os.access
    if os.geteuid() == 0:  # root may write anywhere: simulate the permission the check reads
        os.access = lambda p, mode, **kw: False if Path(p) == ro else real(p, mode, **kw)
    else:
        ro.chmod(0o500)
    try:
        return cli("demo", "--out", str(ro / "report"))
    finally:
        os.access = real
        ro.chmod(0o700)


@probe(5, 'CLI `--lenses ""` (ran every lens)', CLI_TEST, expect="exit 2")
def cli_empty_lenses(ctx: Ctx):
    return cli("demo", "--lenses", "", "--out", str(ctx.tmp("cli") / "out"))


@probe(5, "CLI `--device tpu`", CLI_TEST, expect="exit 2")
def cli_device_tpu(ctx: Ctx):
    return cli("demo", "--device", "tpu", "--out", str(ctx.tmp("cli") / "out"))


@probe(5, '`ModelPair.from_pretrained(..., dtype="float32")` (a dtype by name)',
       "tests/unit/test_pair.py::test_dtype_by_name_and_bad_dtype_device", expect="ok")
def dtype_by_name(ctx: Ctx) -> str:
    from shiftlens import ModelPair

    pair = ModelPair.from_pretrained(*ctx.dirs(), dtype="float32")
    return f"ok: loaded, cfg.dtype {pair.base.cfg.dtype}"


@probe(5, '`ModelPair.from_pretrained(..., device="tpu")`',
       "tests/unit/test_pair.py::test_dtype_by_name_and_bad_dtype_device")
def device_tpu(ctx: Ctx):
    from shiftlens import ModelPair

    return ModelPair.from_pretrained(*ctx.dirs(), device="tpu")


def _attr_probe(name: str, text: str, **kw: Any) -> None:
    def fn(ctx: Ctx):
        from shiftlens import attribution as A
        from shiftlens.pair import load_bridge

        return A.attribute(load_bridge(ctx.dirs()[0]), prompts(1)[0], **kw)

    fn.__name__ = name
    probe(5, text, "tests/unit/test_attribution_reliability.py::"
                   "test_attribute_refuses_bad_arguments_by_name")(fn)


_attr_probe("attribute_huge_token", "`attribute(m, p, [10**6])` (was an IndexError)",
            response=[10**6])


def _float_ids():
    import torch

    return torch.tensor([3.5, 4.0])


@probe(5, "a float tensor as response ids (was accepted)",
       "tests/unit/test_attribution_reliability.py::"
       "test_attribute_refuses_bad_arguments_by_name")
def attribute_float_ids(ctx: Ctx):
    from shiftlens import attribution as A
    from shiftlens.pair import load_bridge

    return A.attribute(load_bridge(ctx.dirs()[0]), prompts(1)[0], response=_float_ids())


_attr_probe("attribute_max_new_tokens_0", "`attribute(..., max_new_tokens=0)` (an error with a "
            "false cause)", max_new_tokens=0)


@probe(5, "`similarity(pair, prompts, n_boot=0)`",
       "tests/unit/test_residual_nonfinite.py::"
       "test_bad_arguments_name_the_argument_and_value")
def similarity_n_boot_0(ctx: Ctx):
    from shiftlens.residual import similarity

    return similarity(ctx.pair(), prompts(), n_boot=0, progress=False)


@probe(5, '`pair.run_with_cache("hello")` (capture of a bare string)',
       "tests/unit/test_pair.py::test_run_with_cache_refuses_text")
def capture_string(ctx: Ctx):
    return ctx.pair().run_with_cache("hello")


@probe(5, "`word_pairs(model, layer=True, ...)`",
       "tests/unit/test_attention_nonfinite.py::test_every_bad_argument_is_a_named_error")
def word_pairs_layer_true(ctx: Ctx):
    from shiftlens.lenses.attention import word_pairs
    from shiftlens.vocab import default_vocab

    pair = ctx.pair()
    return word_pairs(pair.tuned, True, 0, default_vocab(pair.tokenizer, 200))


@probe(5, "`rotation(pair, 4, n_moved=-1)` (was accepted)",
       "tests/unit/test_ffn_reliability.py::test_bad_arguments_name_the_argument_and_value")
def rotation_n_moved_negative(ctx: Ctx):
    from shiftlens import ffn
    from shiftlens.vocab import default_vocab

    pair = ctx.pair()
    return ffn.rotation(pair, 4, n_moved=-1, vocab=default_vocab(pair.tokenizer, 200),
                        progress=False)


# ------------------------------------------------------------------------------------ running
def _trim(text: str, ctx: Ctx) -> str:
    line = next((ln for ln in str(text).strip().splitlines() if ln.strip()), "")
    line = line.replace(str(ctx.root), "<tmp>").replace(str(ROOT), ".")
    line = re.sub(r"(<tmp>/)?\b\d{3}-(?=[a-z])", "<tmp>/", line)
    line = re.sub(r"\s+", " ", line)
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


def run_probe(p: Probe, ctx: Ctx) -> dict[str, Any]:
    """Run one probe; returns its record: ``kind`` is ``error`` (a ShiftlensError), ``exit 2``
    (or another ``exit N``), ``ok``, or the class name of any other exception."""
    import warnings

    from shiftlens import ShiftlensError

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = p.fn(ctx)
    except ShiftlensError as e:
        kind, outcome = "error", f"{type(e).__name__}: {_trim(str(e), ctx)}"
    except Exception as e:  # noqa: BLE001 - the point: anything else is recorded as a finding
        kind, outcome = type(e).__name__, f"{type(e).__name__}: {_trim(str(e), ctx)}"
    else:
        if isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], int):
            rc, err = got
            kind, outcome = f"exit {rc}", f"exit {rc}: {_trim(err, ctx)}"
        elif isinstance(got, str) and got.startswith("ok:"):
            kind, outcome = "ok", _trim(got, ctx)
        else:
            kind, outcome = "ok", _trim(f"ok: {describe(got)}", ctx)
    return {"name": p.name, "point": p.point, "probe": p.text, "expect": p.expect, "kind": kind,
            "outcome": outcome, "open": p.open, "test": p.test,
            "seconds": round(time.perf_counter() - t0, 2)}


def render_table(records: list[dict[str, Any]]) -> str:
    """The markdown table of docs/reliability.md, from the JSON records."""
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    rows = ["| # | point | probe | what it gets now | covered by |",
            "|---|---|---|---|---|"]
    for i, r in enumerate(records, 1):
        test = r["test"] if r["test"].startswith("(") else f"`{r['test']}`"
        outcome = r["outcome"] if not r["open"] else f"**open**: {r['outcome']} (should be: {r['open']})"
        rows.append(f"| {i} | {r['point']} | {cell(r['probe'])} | {cell(outcome)} | "
                    f"{cell(test)} |")
    return "\n".join(rows)


def doc_section(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    bad = [r for r in records if r["kind"] not in ("error", "exit 2", "ok")]
    n_open = sum(bool(r["open"]) for r in records)
    lines = [BEGIN, "",
             f"{len(records)} probes, {sum(r['kind'] == 'error' for r in records)} ShiftlensErrors, "
             f"{sum(r['kind'] == 'exit 2' for r in records)} CLI exit 2, "
             f"{sum(r['kind'] == 'ok' for r in records)} valid results, "
             f"{len(bad)} other exceptions; {n_open} marked **open** (a known finding, not fixed "
             f"yet). Generated by `tools/reliability_probes.py` in {meta['seconds']} s "
             f"on {meta['cpus']} CPU core(s).", "",
             render_table(records), "", END]
    return "\n".join(lines)


def write_doc(records: list[dict[str, Any]], meta: dict[str, Any], path: Path = DOC_PATH) -> None:
    text = path.read_text(encoding="utf-8")
    i, j = text.index(BEGIN), text.index(END) + len(END)
    path.write_text(text[:i] + doc_section(records, meta) + text[j:], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(1)
    ctx = Ctx()
    t0 = time.perf_counter()
    records = []
    try:
        for p in PROBES:
            r = run_probe(p, ctx)
            records.append(r)
            print(f"[{r['seconds']:6.2f}s] {r['point']} {p.name}: {r['outcome']}", flush=True)
    finally:
        ctx.close()
    meta = {"seconds": round(time.perf_counter() - t0, 1), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "torch": torch.__version__}
    JSON_PATH.parent.mkdir(parents=True, exist_ok=True)
    JSON_PATH.write_text(json.dumps({"meta": meta, "probes": records}, indent=1,
                                    ensure_ascii=False) + "\n", encoding="utf-8")
    write_doc(records, meta)
    bad = [r for r in records if r["kind"] != r["expect"] and not r["open"]]
    print(f"{len(records)} probes in {meta['seconds']} s; wrote {JSON_PATH.relative_to(ROOT)} "
          f"and the table of {DOC_PATH.relative_to(ROOT)}")
    for r in bad:
        print(f"UNEXPECTED: {r['name']}: {r['outcome']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
