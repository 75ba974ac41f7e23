"""What the one greedy decoding costs: cached + verified vs no cache, per model and length.

Prints one JSON line per measurement with the ratio against the uncached argmax loop measured in
the same run (machines are noisy: read the ratios). Rows:

* ``cached_verified`` - shiftlens.generate.greedy_batch (cache + the alias, then one
  teacher-forced verification pass): the default;
* ``cached_unverified`` - the cached loop alone (what verification adds is the difference);
* ``no_cache`` - shiftlens.generate.argmax_loop per prompt (the fallback / definition).

    python benchmarks/generate.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from shiftlens import generate as G


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer lengths and repeats")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from shiftlens.testing import tiny_bridge
    from shiftlens.zoo import toy_pair, toy_prompts

    pair = toy_pair()
    prompts = [pair.tokenize(p).tokens for p in toy_prompts(8)]
    models = {"toy-tuned (4L d128 Llama)": pair.tuned}
    big = tiny_bridge("llama", d_model=256, n_layers=6, seed=0)
    models["random Llama (6L d256)"] = big
    toks_big = [torch.randint(10, 500, (40,)) for _ in range(8)]
    lengths = (16, 64) if args.quick else (16, 64, 128)
    repeat = 2 if args.quick else 3
    for name, model in models.items():
        ps = prompts if model is pair.tuned else toks_big
        for n in lengths:
            t_nc = _time(lambda m=model, n=n, ps=ps: [G.argmax_loop(m, p, n, stop_ids=[]) for p in ps],
                         repeat)
            t_cv = _time(lambda m=model, n=n, ps=ps: G.greedy_batch(m, ps, n, stop_ids=[], batch_size=1),
                         repeat)
            t_cu = _time(lambda m=model, n=n, ps=ps: [G._cached_rows(m, [p], n, frozenset()) for p in ps],
                         repeat)
            for method, t in (("cached_verified", t_cv), ("cached_unverified", t_cu),
                              ("no_cache", t_nc)):
                print(json.dumps({
                    "bench": "generate", "model": name, "prompts": len(ps),
                    "prompt_tokens": int(ps[0].shape[0]), "new_tokens": n, "method": method,
                    "seconds": round(t, 4), "ratio_vs_no_cache": round(t / t_nc, 3),
                    "verification_overhead": round(t_cv / t_cu, 3),
                }), flush=True)


if __name__ == "__main__":
    main()
