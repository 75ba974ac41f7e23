"""Lens 1: how close shiftlens' attribution matrix is to the paper code's brute force, per
architecture, and the error a planted NaN produces. docs/attribution.md quotes it.

For each tiny random test architecture (``shiftlens.testing.tiny_model_dir``, seed 0: GPT-2,
Llama with grouped-query attention, Qwen2, Gemma 2) and one prompt, the matrix of
``attribute(mode="forward")`` and of ``mode="reverse"`` is compared with a brute force written
here: the Hugging Face model called with ``inputs_embeds``, full-vocabulary softmax (float64)
at every position, one backward pass per response token. Printed: max |difference| / max |a|,
in float32 and in float64; then the same in float64 with Llama's RMSNorm computing in float64
(Hugging Face's computes in float32 whatever the dtype). Last, a NaN planted in the tuned
model's layer-1 MLP down-projection of a tiny Llama pair, and the ``ShiftlensError`` it gives.

The differences are rounding, so they change with the machine: they are ``measured``.

Run: ``python benchmarks/attribution_agreement.py [--results FILE]`` (seconds).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _regen_docs():
    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools" / "regen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference_matrix(model, att) -> torch.Tensor:
    """The paper's method on the Hugging Face model itself (no shiftlens hooks)."""
    hf = model.original_model
    ids = att.tokens[None]
    e = hf.get_input_embeddings()(ids).detach().clone().requires_grad_(True)
    p = torch.softmax(hf(inputs_embeds=e).logits[0].double(), dim=-1)
    keep = att.input_positions
    out = []
    for m in range(att.n_output):
        t = att.n_prompt + m
        (grad,) = torch.autograd.grad(p[t - 1, att.tokens[t]], e, retain_graph=True)
        out.append((grad[0, keep].double() * e[0, keep].detach().double()).sum(-1))
    return torch.stack(out, 1)


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).abs().max() / ref.abs().max())


def exact_rmsnorm() -> None:
    """Llama's RMSNorm in its input dtype (float64 for a float64 model)."""
    import transformers.models.llama.modeling_llama as ml

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)
                                              + self.variance_epsilon))

    ml.LlamaRMSNorm.forward = forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=None, metavar="FILE")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from shiftlens import ShiftlensError
    from shiftlens import attribution as A
    from shiftlens.pair import ModelPair, load_bridge
    from shiftlens.prompts import InstructionPrompt
    from shiftlens.testing import ARCHITECTURES, perturbed_copy, tiny_model_dir

    prompt = InstructionPrompt("Sort the words: red cat dog\nResponse:",
                               instruction=["Sort the words:"], context=["red cat dog"],
                               id="sort-1", category="sort", reference=" cat dog red")
    measured: dict = {}
    with tempfile.TemporaryDirectory(prefix="shiftlens-agree-") as tmp:
        dirs = {a: tiny_model_dir(a, Path(tmp) / a, seed=0) for a in ARCHITECTURES}
        for arch in ARCHITECTURES:
            row = {}
            for name, dtype in (("f32", torch.float32), ("f64", torch.float64)):
                model = load_bridge(dirs[arch], dtype=dtype)
                fwd = A.attribute(model, prompt, max_new_tokens=5, mode="forward")
                rev = A.attribute(model, prompt, fwd.response_tokens, mode="reverse")
                ref = reference_matrix(model, fwd)
                row[f"forward_{name}"] = float(f"{rel(fwd.matrix, ref):.2g}")
                row[f"reverse_{name}"] = float(f"{rel(rev.matrix, ref):.2g}")
                row[f"forward_vs_reverse_{name}"] = float(f"{rel(fwd.matrix, rev.matrix.double()):.2g}")
            measured[arch] = row
            print(arch, row, file=sys.stderr, flush=True)
        exact_rmsnorm()
        model = load_bridge(dirs["llama"], dtype=torch.float64)
        fwd = A.attribute(model, prompt, max_new_tokens=5, mode="forward")
        rev = A.attribute(model, prompt, fwd.response_tokens, mode="reverse")
        measured["llama_exact_norm_f64_forward_vs_reverse"] = float(
            f"{rel(fwd.matrix, rev.matrix.double()):.2g}")

        # a planted NaN: the error names where the forward pass turns non-finite, and the weight
        root = Path(tmp) / "pair"
        base = tiny_model_dir("llama", root / "base", seed=0)
        tuned = perturbed_copy(base, root / "tuned", scale=0.05, seed=1)
        pair = ModelPair.from_pretrained(base, tuned)
        w = pair.tuned.original_model.model.layers[1].mlp.down_proj.weight
        with torch.no_grad():
            w[0, 0] = float("nan")
        try:
            A.attribute(pair.tuned, prompt, max_new_tokens=4)
            message = "(no error)"
        except ShiftlensError as e:
            message = str(e).replace(str(root), "pair")
    table = ["| model (tiny, float32) | forward vs brute force, max\\|Δ\\| / max\\|a\\| "
             "| reverse vs brute force | float64 model: forward vs brute force |",
             "|---|---|---|---|"]
    names = {"gpt2": "GPT-2", "llama": "Llama (GQA)", "qwen2": "Qwen2", "gemma2": "Gemma 2"}
    for arch in ARCHITECTURES:
        r = measured[arch]
        table.append(f"| {names.get(arch, arch)} | {r['forward_f32']:.2g} | {r['reverse_f32']:.2g} "
                     f"| {r['forward_f64']:.2g} |")
    nan_block = "```\n" + textwrap.fill(message, 100, break_long_words=True,
                                        break_on_hyphens=False) + "\n```"
    print("\n".join(table))
    print(nan_block)
    if args.results is not None:
        regen = _regen_docs()
        measured["machine"] = regen.machine_note()
        measured["torch"] = torch.__version__
        try:
            relp = args.results.resolve().relative_to(ROOT)
        except ValueError:
            relp = args.results
        regen.write_results(
            args.results, generated_by=f"python benchmarks/attribution_agreement.py --results {relp}",
            measured=measured, blocks={"table": "\n".join(table), "nan-error": nan_block})
        print(f"wrote {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
