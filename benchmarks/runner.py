"""Benchmark: the runner (shiftlens.runner) - throughput per executor, peak memory per placement.

One JSON line per measurement, each with its ratio against the reference measured in the same
run (machines are noisy: compare ratios):

1. ``runner.memory``: peak resident-set growth of the attribution lens run by the in-process
   executor on a random-weight Llama pair (d_model 768, 8 layers, d_mlp 3072; about 300 MB per
   model in float32, built in a temporary directory): ``one-at-a-time`` (the runner loads base,
   computes its records, frees it, loads tuned) against ``both-resident`` (the same runner on a
   loaded ModelPair). Each mode runs in a fresh process, after a warm-up load of the embedded
   pair (imports and lazily loaded modelling code are outside the measurement); the peak is
   the kernel's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` after the
   warm-up; sampled every 2 ms where that is not allowed), glibc told to return large blocks to
   the OS. Ratio: one-at-a-time / both-resident (ideal: 0.5 plus the activations).
2. ``runner.throughput``: prompts per second of the attribution lens on the embedded toy pair
   (``--prompts`` held-out prompts, greedy responses of at most 8 tokens), wall time from
   nothing loaded to every record on disk: the in-process function ``instruction_sensitivity``
   (the pair loaded first, timed with it: the reference), the runner in process (one model at
   a time, every record written and read back), and Ray with 1 and 2 workers (a local cluster
   of ``--ray-cpus`` CPUs started before timing; actor start-up, model loading and compute
   timed). Ratio: prompts/s over the reference's. ``steady_prompts_per_s``: from the first
   record written to the last (start-up excluded, the switch to the tuned model included).

Run: ``python benchmarks/runner.py [--prompts 12] [--threads 1] [--skip-ray] [--skip-memory]``.

``--results docs/results/bench-runner.json`` also writes what docs/scale.md quotes (through
``tools/regen_docs.py``'s ``write_results``): every line under ``measured`` (``memory.<mode>``,
``throughput.<executor>_<workers>``), the throughput table as the block ``table``, the settings
and the machine it ran on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # freed weights go back to the OS
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "131072")
    os.execv(sys.executable, [sys.executable, *sys.argv])

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

BIG = dict(d_model=768, n_layers=8, n_heads=12, d_mlp=3072)
PARAMS = {"max_new_tokens": 8}


def build_pair(root: Path) -> tuple[Path, Path]:
    """A random-weight Llama (tokenizer from shiftlens.testing) and a perturbed copy."""
    import transformers as tf

    from shiftlens.testing import build_tokenizer, perturbed_copy

    base = root / "base"
    tok = build_tokenizer(base, "sentencepiece")
    cfg = tf.LlamaConfig(
        vocab_size=len(tok), hidden_size=BIG["d_model"], intermediate_size=BIG["d_mlp"],
        num_hidden_layers=BIG["n_layers"], num_attention_heads=BIG["n_heads"],
        num_key_value_heads=BIG["n_heads"] // 4, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).save_pretrained(base)
    return base, perturbed_copy(base, root / "tuned", scale=0.05, seed=1)


# ============================================================================ memory (child)
def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def child_memory(args: argparse.Namespace) -> None:
    """One placement in this fresh process; prints a JSON line."""
    import gc

    from shiftlens import ModelPair
    from shiftlens.pair import load_bridge
    from shiftlens.prompts import default_prompts
    from shiftlens.runner import run_lens
    from shiftlens.zoo import pair_dirs

    torch.set_num_threads(args.threads)
    warm = load_bridge(pair_dirs()[0])  # imports and lazily loaded code outside the measurement
    warm(torch.tensor([[1, 2, 3]]))
    del warm
    gc.collect()
    base_rss = _status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
        peak_src = "VmHWM"
    except OSError:
        peak_src = "sampled"
    peak = [base_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _status("VmRSS"))
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    prompts = default_prompts()[:2]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.child == "both-resident":
            models = ModelPair.from_pretrained(args.base, args.tuned)
        else:
            models = (args.base, args.tuned)
        run_lens("attribution", models, prompts, Path(tmp) / "run",
                 params={"max_new_tokens": 4}, progress=False)
    seconds = time.perf_counter() - t0
    stop.set()
    th.join()
    hwm = _status("VmHWM") if peak_src == "VmHWM" else peak[0]
    n_bytes = sum(f.stat().st_size for f in Path(args.base).glob("*.safetensors"))
    print(json.dumps({"mode": args.child, "peak_growth_bytes": max(hwm, peak[0]) - base_rss,
                      "model_bytes": n_bytes, "peak_source": peak_src,
                      "seconds": round(seconds, 2)}))


def memory(args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        base, tuned = build_pair(Path(tmp))
        out = {}
        for mode in ("both-resident", "one-at-a-time"):
            r = subprocess.run([sys.executable, __file__, "--child", mode, "--base", str(base),
                                "--tuned", str(tuned), "--threads", str(args.threads)],
                               capture_output=True, text=True, check=True)
            out[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    ref = out["both-resident"]["peak_growth_bytes"]
    lines = []
    for r in out.values():
        lines.append({"bench": "runner.memory", **r,
                      "peak_growth_mb": round(r["peak_growth_bytes"] / 1e6, 1),
                      "ratio_vs_both_resident": round(r["peak_growth_bytes"] / ref, 3),
                      "model": BIG})
        print(json.dumps(lines[-1]), flush=True)
    return lines


# ============================================================================ throughput
def throughput(args: argparse.Namespace) -> list[dict]:
    import shutil

    from shiftlens.lenses.attribution import instruction_sensitivity
    from shiftlens.runner import load_run, run_lens
    from shiftlens.zoo import pair_dirs, toy_pair, toy_prompts

    prompts = toy_prompts(args.prompts)
    dirs = pair_dirs()
    toy_pair()  # warm: imports and lazily loaded modelling code outside every timing
    lines = []

    t0 = time.perf_counter()
    ref = instruction_sensitivity(toy_pair(), prompts, progress=False, **PARAMS)
    lines.append({"executor": "function (both resident)", "workers": 1,
                  "seconds": time.perf_counter() - t0})
    runs = [("inprocess", 1)] + ([] if args.skip_ray else [("ray", 1), ("ray", 2)])
    if not args.skip_ray:
        import ray

        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    try:
        for executor, workers in runs:
            tmp = Path(tempfile.mkdtemp(prefix="shiftlens-runner-bench-"))
            t0 = time.perf_counter()
            run_lens("attribution", dirs, prompts, tmp / "run", params=PARAMS,
                     executor=executor, workers=workers, progress=False)
            seconds = time.perf_counter() - t0
            same = load_run(tmp / "run").equals(ref)
            stamps = sorted(f.stat().st_mtime for f in (tmp / "run" / "records").rglob("*.*"))
            shutil.rmtree(tmp)
            # after start-up (actors, first model load): records written per second / 2 roles
            steady = (len(stamps) - 1) / 2 / max(stamps[-1] - stamps[0], 1e-9)
            lines.append({"executor": executor, "workers": workers, "seconds": seconds,
                          "equals_function": same, "steady_prompts_per_s": round(steady, 3)})
    finally:
        if not args.skip_ray:
            ray.shutdown()
    ref_rate = len(prompts) / lines[0]["seconds"]
    out = []
    for line in lines:
        rate = len(prompts) / line["seconds"]
        out.append({"bench": "runner.throughput", **line,
                    "seconds": round(line["seconds"], 2), "prompts": len(prompts),
                    "prompts_per_s": round(rate, 3),
                    "ratio_vs_function": round(rate / ref_rate, 3),
                    "threads": args.threads, "cpus": os.cpu_count()})
        print(json.dumps(out[-1]), flush=True)
    return out


#: The throughput table's first column, per (executor, workers).
ROW_NAMES = {
    ("function (both resident)", 1): "`instruction_sensitivity` (both models resident, no files)",
    ("inprocess", 1): "runner, in process (one model at a time, every record written and read "
                      "back)",
    ("ray", 1): "runner, Ray, 1 worker",
    ("ray", 2): "runner, Ray, 2 workers",
}


def throughput_table(lines: list[dict]) -> str:
    """The throughput table of docs/scale.md."""
    rows = ["| executor | prompts/s | vs the function | prompts/s after start-up |",
            "| --- | ---: | ---: | ---: |"]
    for ln in lines:
        steady = f"{ln['steady_prompts_per_s']:.2f}" if "steady_prompts_per_s" in ln else ""
        rows.append(f"| {ROW_NAMES.get((ln['executor'], ln['workers']), ln['executor'])} "
                    f"| {ln['prompts_per_s']:.2f} | {ln['ratio_vs_function']:.2f} | {steady} |")
    return "\n".join(rows)


def write_results(path: Path, args: argparse.Namespace, mem: list[dict],
                  thr: list[dict]) -> None:
    """docs/results/bench-runner.json: every line under ``measured``, the table as a block."""
    spec = importlib.util.spec_from_file_location(
        "regen_docs", Path(__file__).resolve().parents[1] / "tools" / "regen_docs.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    measured: dict = {"machine": regen.machine_note(),
                      "settings": {"prompts": args.prompts, "threads": args.threads,
                                   "ray_cpus": args.ray_cpus, **PARAMS}}
    for ln in mem:
        measured.setdefault("memory", {})[ln["mode"].replace("-", "_")] = {
            k: v for k, v in ln.items() if k not in ("bench", "mode")}
        measured["memory"][ln["mode"].replace("-", "_")]["model_mb"] = ln["model_bytes"] / 1e6
    for ln in thr:
        key = {"function (both resident)": "function"}.get(ln["executor"], ln["executor"])
        measured.setdefault("throughput", {})[f"{key}_{ln['workers']}"] = {
            k: v for k, v in ln.items() if k not in ("bench", "executor")}
    opts = " ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in ("prompts", "threads")
                    if getattr(args, k) != {"prompts": 12, "threads": 1}[k])
    opts += "".join(f" --{k.replace('_', '-')}" for k in ("skip_ray", "skip_memory",
                                                           "skip_throughput") if getattr(args, k))
    opts = opts.strip()
    cmd = f"python benchmarks/runner.py {opts + ' ' if opts else ''}--results {path.as_posix()}"
    regen.write_results(path, generated_by=cmd, measured=measured,
                        blocks={"table": throughput_table(thr)} if thr else {})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--results", type=Path, default=None, metavar="PATH",
                   help="also write the docs' results file (docs/results/bench-runner.json)")
    p.add_argument("--child", choices=("both-resident", "one-at-a-time"), help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--tuned", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child_memory(args)
    torch.set_num_threads(args.threads)
    mem = [] if args.skip_memory else memory(args)
    thr = [] if args.skip_throughput else throughput(args)
    if args.results is not None:
        write_results(args.results, args, mem, thr)


if __name__ == "__main__":
    main()
