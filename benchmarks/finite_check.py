"""What the non-finite weight check costs: ``check_finite_weights`` vs ``isfinite().all()`` and vs
loading the model it checks.

On the embedded pair's base model (plus a larger random Llama for a second size), prints one JSON
line per model with the best-of-N times and the ratios measured in the same run: check /
isfinite (the naive check it replaces), check / load (what the check adds to
``ModelPair.from_pretrained``, which runs it on both models).

    python benchmarks/finite_check.py [--repeat 20] [--results docs/results/bench-finite-check.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _best(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20, help="timed repeats of each check")
    ap.add_argument("--load-repeat", type=int, default=5, help="timed repeats of the load")
    ap.add_argument("--results", type=Path, default=None, help="write a docs results file")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from shiftlens.bridge import check_finite_weights
    from shiftlens.testing import tiny_bridge
    from shiftlens.zoo import pair_dirs, toy_pair

    torch.set_num_threads(1)

    def naive(model) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in model.parameters())

    rows = []
    base_dir, _ = pair_dirs()
    pair = toy_pair()
    from shiftlens.pair import ModelPair

    load = _best(lambda: ModelPair.from_pretrained(base_dir, base_dir, device="cpu"),
                 args.load_repeat) / 2  # one model's share of a pair load (checks included)
    models = {"toy-base": (pair.base, load),
              "random-llama-6L-d256": (tiny_bridge("llama", d_model=256, n_layers=6, seed=0), None)}
    for name, (model, load_s) in models.items():
        n = sum(p.numel() for p in model.parameters())
        t_check = _best(lambda m=model: check_finite_weights(m), args.repeat)
        t_naive = _best(lambda m=model: naive(m), args.repeat)
        row = {"model": name, "parameters": n, "check_ms": round(t_check * 1e3, 2),
               "isfinite_ms": round(t_naive * 1e3, 2),
               "isfinite_over_check": round(t_naive / t_check, 2)}
        if load_s is not None:
            row.update(load_ms=round(load_s * 1e3, 1), check_share_of_load=round(t_check / load_s, 4))
        rows.append(row)
        print(json.dumps(row))
    # one large matrix (a 7B model's W_out, 11008 x 4096 float32): the per-tensor pass alone
    from shiftlens.bridge import _nonfinite

    w = torch.randn(11008, 4096)
    t_one = _best(lambda: _nonfinite(w), max(3, args.repeat // 4))
    t_one_naive = _best(lambda: bool(torch.isfinite(w).all()), max(3, args.repeat // 4))
    row = {"model": "one-11008x4096-matrix", "parameters": w.numel(),
           "check_ms": round(t_one * 1e3, 2), "isfinite_ms": round(t_one_naive * 1e3, 2),
           "isfinite_over_check": round(t_one_naive / t_one, 2)}
    rows.append(row)
    print(json.dumps(row))
    if args.results is not None:
        spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools/regen_docs.py")
        regen = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(regen)
        cmd = f"python benchmarks/finite_check.py --results {args.results}"
        regen.write_results(args.results, generated_by=cmd,
                            measured={"machine": regen.machine_note(),
                                      **{r["model"]: r for r in rows}})


if __name__ == "__main__":
    main()
