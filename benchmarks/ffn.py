"""Benchmark lens 3 (feed-forward concepts) on a random-weight model of realistic size.

Model: ``--layers`` (24) layers of W_out ``[d_mlp=4096, d_model=1024]``, an unembedding
``[1024, 50000]`` and a 50,000-word vocabulary (each word 1-3 random tokens). The weights are
built as tensors in this script and the tensor-level functions are called
(:func:`shiftlens.lenses.ffn.core.pca`, :func:`normalized_word_vectors`, :func:`top_words`): booting a
TransformerBridge of that size would only add the load time.

One JSON line per measurement, with ratios against the reference measured in the same run:

* ``pca_solver``: one layer, each solver against ``torch.linalg.svd`` (float64), with its
  accuracy (largest principal angle to the exact subspace, explained-variance error);
* ``concept_words``: one layer's ``k`` components x all words in one matmul + top-k, against
  a per-component loop (matrix-vector product + top-k per component), results checked equal;
* ``all_layers``: every layer, components + concept words, total seconds; the loop's total is
  measured on ``--naive-layers`` layers and scaled per layer (it is the slow part).
* ``report_cache``: what the report runs, ``concept_shift`` (k) then ``rotation`` (64), on a
  pair of in-memory weight sources of this size over ``--cache-layers`` layers, with one shared
  :class:`~shiftlens.lenses.ffn.subspaces.ComponentCache` against without (each layer's PCA computed
  twice); the results are checked equal. The annotator is a constant one, so the time is the
  lens's own.

Usage::

    python benchmarks/ffn.py            # 24 layers, k=300 (the paper's cut)
    python benchmarks/ffn.py --quick    # 3 layers, smaller comparisons (well under a minute)
    python benchmarks/ffn.py --quick --results docs/results/bench-ffn.json
                                        # also the results file docs/ffn.md quotes (times and
                                        # ratios, the table, where it ran)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from shiftlens.lenses.ffn.annotators import Annotation
from shiftlens.lenses.ffn.compare import concept_shift, rotation
from shiftlens.lenses.ffn.core import normalized_word_vectors, pca, top_words
from shiftlens.lenses.ffn.subspaces import ComponentCache, principal_angles
from shiftlens.weights import WordVocab

ROOT = Path(__file__).resolve().parents[1]
#: Every record emitted in this run, for ``--results``.
RECORDS: list[dict] = []


def emit(**rec) -> None:
    RECORDS.append(rec)
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in rec.items()}),
          flush=True)


def timed(fn, repeat: int = 1):
    best, out = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def random_vocab(n_words: int, d_vocab: int, seed: int) -> WordVocab:
    rng = random.Random(seed)
    ids = [[rng.randrange(d_vocab) for _ in range(rng.choice((1, 1, 2, 3)))] for _ in range(n_words)]
    return WordVocab([f"w{i}" for i in range(n_words)], ids, [])


def layer_weight(layer: int, d_mlp: int, d_model: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + layer)
    # a mildly decaying column scale, so the spectrum is not perfectly flat
    scale = torch.linspace(1.5, 0.5, d_model) / math.sqrt(d_model)
    return (torch.randn(d_mlp, d_model, generator=g) * scale).to(device)


class ArraySource:
    """A weight source held in memory (``shiftlens.weights.WeightSource``): W_out per layer and
    W_U as tensors, no model."""

    def __init__(self, name: str, w_out: list[torch.Tensor], W_U: torch.Tensor) -> None:
        from types import SimpleNamespace

        self.w_out, self.W_U = w_out, W_U
        self.cfg = SimpleNamespace(n_layers=len(w_out), d_model=W_U.shape[0],
                                   d_mlp=w_out[0].shape[0], d_vocab=W_U.shape[1], n_heads=1,
                                   model_name=name, device="cpu")
        self.tokenizer = None

    def mlp_out(self, layer: int, *, fold_norm: bool = True) -> torch.Tensor:
        return self.w_out[layer]

    def unembedding(self, *, fold_norm: bool = True) -> torch.Tensor:
        return self.W_U

    def embedding(self) -> torch.Tensor:
        return self.W_U.T

    def qk_weights(self, layer: int, *, fold_norm: bool = True):
        raise NotImplementedError


class ConstantAnnotator:
    """Every concept 'none'/syntax: the benchmark times the lens, not an annotator."""

    seeds = (0,)
    name = "constant"

    def __repr__(self) -> str:
        return "ConstantAnnotator()"

    def annotate(self, words, *, seed=0):
        return Annotation("none", "syntax")


def loop_concept_words(comps: torch.Tensor, dirs: torch.Tensor, n: int):
    scores, idx = [], []
    for c in range(comps.shape[0]):
        s = dirs @ comps[c]
        i = s.abs().topk(n).indices
        scores.append(s[i])
        idx.append(i)
    return torch.stack(scores), torch.stack(idx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 layers, fewer comparisons")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--d-mlp", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=300)
    ap.add_argument("--top-words", type=int, default=50)
    ap.add_argument("--naive-layers", type=int, default=None)
    ap.add_argument("--cache-layers", type=int, default=None,
                    help="layers of the report_cache measurement (default 4; --quick 1)")
    ap.add_argument("--only", choices=["report_cache"], default=None,
                    help="run this measurement only")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--results", type=Path, default=None, metavar="PATH",
                    help="also write a docs results file (tools/regen_docs.py's format): the "
                         "records as measured entries, the Markdown table, where it ran")
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_layers = args.layers or (3 if args.quick else 24)
    naive_layers = args.naive_layers or (1 if args.quick else 2)
    dev = torch.device(args.device)
    d, n, V, k, t = args.d_model, args.d_mlp, args.vocab, args.k, args.top_words
    emit(bench="config", n_layers=n_layers, d_model=d, d_mlp=n, d_vocab=V, n_words=V, k=k,
         top_words=t, device=str(dev), threads=torch.get_num_threads(), quick=args.quick)

    # ---- word directions (once per model)
    g = torch.Generator().manual_seed(0)
    W_U = (torch.randn(d, V, generator=g) / math.sqrt(d)).to(dev)
    vocab = random_vocab(V, V, seed=0)
    if args.only != "report_cache":
        tensor_level(args, dev, W_U, vocab, n_layers, naive_layers)
    report_cache(args, dev, W_U, vocab)
    if args.results is not None:
        write_results_file(args.results, time.perf_counter() - t_start)


def _regen_docs():
    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools" / "regen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def results_table(recs: dict) -> str:
    """The Markdown table docs/ffn.md shows, from this run's records."""
    rows = ["| measurement | result |", "|---|---|"]
    cfg = recs["config"]
    svd = recs["pca_solver"]["svd"]
    k = cfg["k"]
    for key, r in recs["pca_solver"].items():
        if key == "svd":
            continue
        evr = (f"explained-variance ratios within {r['evr_max_rel_err']:.1g} (relative)"
               if r["evr_max_rel_err"] > 0 else "the same explained-variance ratios")
        rows.append(f"| PCA solver, one layer, k={r['k']} | `{r['method']}` {r['seconds']:.1f} s "
                    f"vs `svd` {svd['seconds']:.1f} s: **{r['ratio_vs_svd']:.1f}x**; largest "
                    f"angle to the exact subspace {r['max_angle_deg']:.2g} deg, {evr} |")
    cw = recs["concept_words"]
    rows.append(f"| concept words, one layer ({k} components x {cw['n_words']:,} words, top "
                f"{cw['top_words']}) | one matmul + topk {cw['vectorized_s']:.2f} s vs "
                f"per-component loop {cw['loop_s']:.1f} s: **{cw['ratio']:.1f}x**, "
                f"{'same' if cw['same_result'] else 'different'} words |")
    al = recs["all_layers"]
    rows.append(f"| all {al['n_layers']} layers, components + concept words | "
                f"**{al['total_s']:.1f} s** (components {al['components_s']:.1f} s, words "
                f"{al['concept_words_s']:.1f} s) vs an estimated {al['naive_total_s_est']:.1f} s "
                f"with the per-component word loop (loop measured on "
                f"{al['loop_measured_layers']} layer(s)): **{al['ratio']:.2f}x** overall, "
                f"**{al['words_ratio']:.1f}x** on the word step |")
    rc = recs["report_cache"]
    rows.append(f"| the report's two analyses (`concept_shift` k={rc['concept_k']}, `rotation` "
                f"k={rc['rotation_k']}), {rc['n_layers']} layer(s), with one `ComponentCache` | "
                f"{rc['with_cache_s']:.1f} s vs {rc['without_cache_s']:.1f} s without: "
                f"**{rc['ratio']:.2f}x**; PCAs computed {rc['pca_computed_with']} vs "
                f"{rc['pca_computed_without']}, {'same' if rc['same_result'] else 'different'} "
                f"results |")
    return "\n".join(rows) + "\n"


def write_results_file(path: Path, seconds: float) -> None:
    """``--results``: this run's records as a docs results file."""
    regen = _regen_docs()
    recs: dict = {}
    for r in RECORDS:
        r = {k: v for k, v in r.items() if k != "bench"} | {"bench": r["bench"]}
        if r["bench"] == "pca_solver":
            key = "svd" if r["method"] == "svd" else f"{r['method']}_k{r['k']}"
            recs.setdefault("pca_solver", {})[key] = r
        else:
            recs[r["bench"]] = r
    measured = {name: ({k: {kk: vv for kk, vv in v.items() if kk != "bench"}
                        for k, v in rec.items()} if name == "pca_solver"
                       else {k: v for k, v in rec.items() if k != "bench"})
                for name, rec in recs.items()}
    measured["machine"] = regen.machine_note()
    measured["seconds"] = seconds
    cmd = " ".join(["python", "benchmarks/ffn.py", *sys.argv[1:]])
    regen.write_results(path, generated_by=cmd, measured=measured,
                        blocks={"table": results_table(recs)})
    print(f"wrote {path}", file=sys.stderr)


def tensor_level(args, dev, W_U, vocab, n_layers, naive_layers) -> None:
    """The tensor-level measurements: solvers, concept words, all layers."""
    d, n, V, k, t = args.d_model, args.d_mlp, args.vocab, args.k, args.top_words
    sec, dirs = timed(lambda: normalized_word_vectors(W_U, vocab))
    emit(bench="word_directions", seconds=sec, n_words=len(vocab))

    # ---- PCA solvers on one layer, against full SVD (float64)
    W0 = layer_weight(0, n, d, dev)
    t_svd, ref = timed(lambda: pca(W0, k, method="svd"))
    emit(bench="pca_solver", method="svd", k=k, seconds=t_svd, ratio_vs_svd=1.0,
         max_angle_deg=0.0, evr_max_rel_err=0.0)
    for method, kk in (("gram", k), ("lowrank", k), ("lowrank", 50)):
        if args.quick and (method, kk) == ("lowrank", k):
            continue
        kk = min(kk, k)
        # the full SVD costs the same for every k: its first kk rows are the exact reference
        ref_v, ref_r = ref.components[:kk], ref.explained_variance_ratio[:kk]
        sec, got = timed(lambda m=method, kk=kk: pca(W0, kk, method=m))
        ang = float(torch.rad2deg(principal_angles(got.components.double().cpu(),
                                                   ref_v.double().cpu())).max())
        rel = float(((got.explained_variance_ratio - ref_r).abs() / ref_r).max())
        emit(bench="pca_solver", method=method, k=kk, seconds=sec, ratio_vs_svd=t_svd / sec,
             max_angle_deg=ang, evr_max_rel_err=rel)

    # ---- concept words on one layer: one matmul vs a per-component loop
    comps = pca(W0, k).components
    t_vec, (s_vec, i_vec) = timed(lambda: top_words(comps, dirs, t), repeat=2)
    t_loop, (s_loop, i_loop) = timed(lambda: loop_concept_words(comps, dirs, t))
    same = bool(torch.equal(i_vec, i_loop)) or bool(torch.allclose(s_vec.abs(), s_loop.abs(), atol=1e-5))
    emit(bench="concept_words", k=k, top_words=t, n_words=V, vectorized_s=t_vec, loop_s=t_loop,
         ratio=t_loop / t_vec, same_result=same)

    # ---- all layers: components + concept words
    t_pca = t_words = 0.0
    for layer in range(n_layers):
        W = layer_weight(layer, n, d, dev)
        sec, pc = timed(lambda W=W: pca(W, k))
        t_pca += sec
        sec, _ = timed(lambda pc=pc: top_words(pc.components, dirs, t))
        t_words += sec
    t_naive_words = 0.0
    for layer in range(naive_layers):
        W = layer_weight(layer, n, d, dev)
        pc = pca(W, k)
        sec, _ = timed(lambda pc=pc: loop_concept_words(pc.components, dirs, t))
        t_naive_words += sec
    naive_words_total = t_naive_words / naive_layers * n_layers
    total = t_pca + t_words
    naive_total = t_pca + naive_words_total
    emit(bench="all_layers", n_layers=n_layers, k=k, components_s=t_pca, concept_words_s=t_words,
         total_s=total, loop_concept_words_s_est=naive_words_total,
         loop_measured_layers=naive_layers, naive_total_s_est=naive_total,
         ratio=naive_total / total, words_ratio=naive_words_total / t_words)


def report_cache(args, dev, W_U, vocab) -> None:
    """The report's two analyses: one shared PCA per layer and model, or two."""
    d, n, k, t = args.d_model, args.d_mlp, args.k, args.top_words
    n_cache = args.cache_layers or (1 if args.quick else 4)
    base_w = [layer_weight(layer, n, d, torch.device("cpu")) for layer in range(n_cache)]
    gt = torch.Generator().manual_seed(7)
    tuned_w = [w + 0.3 * w.std() * torch.randn(w.shape, generator=gt) for w in base_w]
    pair = (ArraySource("base", base_w, W_U.cpu()), ArraySource("tuned", tuned_w, W_U.cpu()))
    k_rot = min(64, k)

    annotator = ConstantAnnotator()

    def report(cache):
        cs = concept_shift(pair, annotator, k=k, top_words=t, vocab=vocab,
                           device=dev, progress=False, cache=cache)
        rot = rotation(pair, k_rot, vocab=vocab, device=dev, progress=False, cache=cache)
        return cs, rot

    t_plain, (cs0, rot0) = timed(lambda: report(None))
    cache = ComponentCache()
    t_cached, (cs1, rot1) = timed(lambda: report(cache))
    emit(bench="report_cache", n_layers=n_cache, concept_k=k, rotation_k=k_rot,
         without_cache_s=t_plain, with_cache_s=t_cached, ratio=t_plain / t_cached,
         pca_computed_without=4 * n_cache, pca_computed_with=cache.misses - 2,
         cache_hits=cache.hits, same_result=bool(cs0.equals(cs1) and rot0.equals(rot1)))


if __name__ == "__main__":
    main()
