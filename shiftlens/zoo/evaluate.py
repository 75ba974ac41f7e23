"""Evaluate the toy pair: instruction-following accuracy per task and held-out LM loss.

``python -m shiftlens.zoo.evaluate`` loads the shipped directories, decodes greedily on the
held-out prompts of :func:`shiftlens.zoo.toy_prompts` and prints a table; ``--write`` stores the
numbers in ``manifest.json`` under ``"evaluation"``.

Metrics:

* ``exact``: the greedy continuation up to ``<eos>`` (or ``max_new_tokens``) equals the reference
  exactly (the headline number).
* ``prefix``: the first tokens of the continuation equal the reference tokens (the model may go
  on after them; the base model never learned to stop, so this is its fairer score).
* ``lm_loss``: mean token cross-entropy (nats) on held-out grammar sentences
  (:func:`shiftlens.zoo.heldout.heldout_sentences`, excluding every training sentence), each
  read as ``<bos> sentence``; every token after ``<bos>`` counts.

Decoding groups prompts of equal token length into batches, so no padding is ever used and the
batched result equals one-at-a-time decoding.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from shiftlens.generate import greedy_batch
from shiftlens.pair import ModelPair
from shiftlens.prompts import InstructionPrompt
from shiftlens.zoo import grammar
from shiftlens.zoo.heldout import heldout_sentences, toy_prompts

__all__ = [
    "generate",
    "task_accuracy",
    "lm_loss",
    "evaluate_models",
    "evaluate_dirs",
    "evaluate_pair",
    "format_table",
    "format_markdown",
    "update_manifest",
    "main",
]

MAX_NEW_TOKENS = 12
N_LM_SENTENCES = 1000


def _hf(model: Any) -> Any:
    """The Hugging Face model behind a TransformerBridge (or the model itself)."""
    return getattr(model, "original_model", model)


@torch.no_grad()
def generate(
    model: Any, tokenizer: Any, texts: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS
) -> list[list[int]]:
    """Greedy continuations (token ids, without the final ``<eos>``) of each prompt text.

    Args:
        model: a Hugging Face causal LM or a TransformerBridge wrapping one.
        tokenizer: the pair's tokenizer (prepends ``<bos>``).
        texts: prompt texts.
        max_new_tokens: decoding stops at ``<eos>`` or after this many tokens.

    Returns:
        One list of generated token ids per text, in input order.

    Example:
        >>> from shiftlens.zoo import pair_dirs  # doctest: +SKIP
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer  # doctest: +SKIP
        >>> _, tuned = pair_dirs()  # doctest: +SKIP
        >>> tok = AutoTokenizer.from_pretrained(tuned)  # doctest: +SKIP
        >>> m = AutoModelForCausalLM.from_pretrained(tuned)  # doctest: +SKIP
        >>> ids = generate(m, tok, ["Instruction: count the words.\\nInput: red cat\\nResponse:"])  # doctest: +SKIP
        >>> tok.decode(ids[0])  # doctest: +SKIP
        ' two'
    """
    eos = tokenizer.eos_token_id
    enc = tokenizer(list(texts)).input_ids
    gens = greedy_batch(
        model, [torch.tensor(ids, dtype=torch.long) for ids in enc], max_new_tokens,
        stop_ids=[] if eos is None else [eos], batch_size=64,
    )
    return [g.tokens.tolist() for g in gens]


def task_accuracy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[InstructionPrompt],
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> dict[str, Any]:
    """Exact-match and prefix accuracy of greedy decoding, per task and overall.

    Args:
        model: a Hugging Face causal LM or a TransformerBridge wrapping one.
        tokenizer: the pair's tokenizer.
        prompts: prompts with ``reference`` and ``category`` (e.g. :func:`toy_prompts`).
        max_new_tokens: decoding limit.

    Returns:
        ``{"exact": {task: acc, ..., "overall": acc}, "prefix": {...}, "n": {task: count},
        "outputs": {prompt id: decoded continuation}}``.

    Example:
        >>> acc = task_accuracy(model, tok, toy_prompts(14))  # doctest: +SKIP
        >>> acc["exact"]["overall"]  # doctest: +SKIP
        1.0
    """
    gens = generate(model, tokenizer, [p.text for p in prompts], max_new_tokens)
    exact: dict[str, list[bool]] = defaultdict(list)
    prefix: dict[str, list[bool]] = defaultdict(list)
    outputs: dict[str, str] = {}
    for p, g in zip(prompts, gens):
        ref = tokenizer(p.reference, add_special_tokens=False).input_ids
        task = p.category or "?"
        exact[task].append(g == ref)
        prefix[task].append(g[: len(ref)] == ref)
        outputs[p.id] = tokenizer.decode(g)
    res: dict[str, Any] = {"exact": {}, "prefix": {}, "n": {}}
    order = [t for t in grammar.TASK_NAMES if t in exact] + [
        t for t in exact if t not in grammar.TASK_NAMES
    ]
    for t in order:
        res["exact"][t] = round(sum(exact[t]) / len(exact[t]), 4)
        res["prefix"][t] = round(sum(prefix[t]) / len(prefix[t]), 4)
        res["n"][t] = len(exact[t])
    allx = [v for t in order for v in exact[t]]
    allp = [v for t in order for v in prefix[t]]
    res["exact"]["overall"] = round(sum(allx) / max(1, len(allx)), 4)
    res["prefix"]["overall"] = round(sum(allp) / max(1, len(allp)), 4)
    res["outputs"] = outputs
    return res


@torch.no_grad()
def lm_loss(model: Any, tokenizer: Any, sentences: Sequence[str], batch_size: int = 128) -> float:
    """Mean token cross-entropy (nats) of ``<bos> sentence`` over all predicted tokens.

    Example:
        >>> lm_loss(model, tok, heldout_sentences(100))  # doctest: +SKIP
        0.93
    """
    hf = _hf(model)
    total, count = 0.0, 0
    for b in range(0, len(sentences), batch_size):
        enc = tokenizer(list(sentences[b : b + batch_size]), padding=True, return_tensors="pt")
        ids, mask = enc.input_ids.to(hf.device), enc.attention_mask.to(hf.device)
        if tokenizer.padding_side != "right":
            raise ValueError("lm_loss expects right padding")
        logits = hf(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += loss.item()
        count += int((target != -100).sum())
    return total / count


def _training_sentences(manifest: dict[str, Any] | None) -> list[str]:
    if not manifest:
        return []
    cfg = manifest.get("config", {})
    return grammar.corpus_sentences(int(cfg["n_sentences"]), random.Random(int(cfg["seed"])))


def evaluate_models(
    base: Any,
    tuned: Any,
    tokenizer: Any,
    prompts: Sequence[InstructionPrompt] | None = None,
    sentences: Sequence[str] | None = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy and LM loss of both models.

    Args:
        base, tuned: Hugging Face causal LMs or TransformerBridges.
        tokenizer: the shared tokenizer.
        prompts: default :func:`toy_prompts()`.
        sentences: default :func:`heldout_sentences` (1000, excluding the shipped training corpus).
        progress: print one line per model.

    Returns:
        ``{"prompts": n, "base": {...}, "tuned": {...}}`` with ``exact``/``prefix`` accuracies,
        ``lm_loss`` and ``outputs`` per model, plus ``lm_loss_ratio`` (tuned / base).

    Example:
        >>> pair = toy_pair()  # doctest: +SKIP
        >>> evaluate_models(pair.base, pair.tuned, pair.tokenizer)["tuned"]["exact"]["overall"]  # doctest: +SKIP
        0.99
    """
    prompts = list(prompts) if prompts is not None else toy_prompts()
    if sentences is None:
        sentences = heldout_sentences(
            N_LM_SENTENCES, exclude=_training_sentences(_shipped_manifest())
        )
    res: dict[str, Any] = {
        "prompts": len(prompts),
        "lm_sentences": len(sentences),
        "max_new_tokens": MAX_NEW_TOKENS,
    }
    for name, model in (("base", base), ("tuned", tuned)):
        _hf(model).eval()
        r = task_accuracy(model, tokenizer, prompts)
        r["lm_loss"] = round(lm_loss(model, tokenizer, sentences), 4)
        res[name] = r
        if progress:
            print(
                f"{name}: exact {r['exact']['overall']:.3f} lm_loss {r['lm_loss']:.4f}", flush=True
            )
    res["lm_loss_ratio"] = round(res["tuned"]["lm_loss"] / res["base"]["lm_loss"], 4)
    return res


def _shipped_manifest() -> dict[str, Any] | None:
    p = Path(__file__).parent / "pair" / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else None


def evaluate_dirs(
    base_dir: str | Path,
    tuned_dir: str | Path,
    *,
    prompts: Sequence[InstructionPrompt] | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> dict[str, Any]:
    """Load both Hugging Face directories (offline) and run :func:`evaluate_models`.

    The LM sentences exclude the training corpus recorded in the ``manifest.json`` next to the
    directories (if any).

    Example:
        >>> from shiftlens.zoo import pair_dirs
        >>> r = evaluate_dirs(*pair_dirs(), prompts=toy_prompts(7))  # doctest: +SKIP
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    base_dir, tuned_dir = Path(base_dir), Path(tuned_dir)
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=dtype)
    tuned = LlamaForCausalLM.from_pretrained(tuned_dir, dtype=dtype)
    mpath = base_dir.parent / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.exists() else None
    sentences = heldout_sentences(N_LM_SENTENCES, exclude=_training_sentences(manifest))
    return evaluate_models(base, tuned, tok, prompts, sentences, progress=progress)


def evaluate_pair(
    pair: ModelPair, prompts: Sequence[InstructionPrompt] | None = None
) -> dict[str, Any]:
    """:func:`evaluate_models` on a :class:`shiftlens.pair.ModelPair` (decodes its HF models).

    Example:
        >>> from shiftlens.zoo import toy_pair
        >>> evaluate_pair(toy_pair(), toy_prompts(7))["tuned"]["exact"]["overall"]  # doctest: +SKIP
        1.0
    """
    return evaluate_models(pair.base, pair.tuned, pair.tokenizer, prompts)


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of an evaluation result.

    Example:
        >>> print(format_table(result))  # doctest: +SKIP
    """
    tasks = [t for t in result["tuned"]["exact"] if t != "overall"] + ["overall"]
    lines = [
        f"{'task':<10} {'n':>4} {'base exact':>11} {'base prefix':>12} {'tuned exact':>12} {'tuned prefix':>13}"
    ]
    for t in tasks:
        n = result["tuned"]["n"].get(t, result["prompts"])
        lines.append(
            f"{t:<10} {n:>4} {result['base']['exact'][t]:>11.3f} {result['base']['prefix'][t]:>12.3f} "
            f"{result['tuned']['exact'][t]:>12.3f} {result['tuned']['prefix'][t]:>13.3f}"
        )
    lines.append(
        f"held-out LM loss (nats/token, {result['lm_sentences']} sentences): base {result['base']['lm_loss']:.4f}"
        f"  tuned {result['tuned']['lm_loss']:.4f}  ratio {result['lm_loss_ratio']:.3f}"
    )
    return "\n".join(lines)


def format_markdown(result: dict[str, Any]) -> str:
    """The evaluation as a Markdown table (used for ``docs/zoo.md``).

    Example:
        >>> from shiftlens.zoo import manifest
        >>> print(format_markdown(manifest()["evaluation"]))  # doctest: +SKIP
    """
    tasks = [t for t in result["tuned"]["exact"] if t != "overall"] + ["overall"]
    lines = [
        "| task | n | base exact | base prefix | tuned exact | tuned prefix |",
        "|---|---|---|---|---|---|",
    ]
    for t in tasks:
        n = result["tuned"]["n"].get(t, result["prompts"])
        b, u = result["base"], result["tuned"]
        lines.append(
            f"| {t} | {n} | {b['exact'][t]:.3f} | {b['prefix'][t]:.3f} | {u['exact'][t]:.3f} | {u['prefix'][t]:.3f} |"
        )
    return "\n".join(lines)


def update_manifest(path: str | Path, result: dict[str, Any]) -> None:
    """Store ``result`` (without the decoded outputs) as ``"evaluation"`` in a manifest file.

    Example:
        >>> update_manifest("shiftlens/zoo/pair/manifest.json", result)  # doctest: +SKIP
    """
    path = Path(path)
    manifest = json.loads(path.read_text())
    ev = {k: v for k, v in result.items() if k not in ("base", "tuned")}
    for name in ("base", "tuned"):
        ev[name] = {k: v for k, v in result[name].items() if k != "outputs"}
    ev["examples"] = {
        name: {pid: out for pid, out in list(result[name]["outputs"].items())[:7]}
        for name in ("base", "tuned")
    }
    manifest["evaluation"] = ev
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m shiftlens.zoo.evaluate [--dir DIR] [--write]``.

    Example:
        >>> main(["--markdown"])  # doctest: +SKIP
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(Path(__file__).parent / "pair"), help="pair directory")
    ap.add_argument("--write", action="store_true", help="write the numbers into manifest.json")
    ap.add_argument(
        "--markdown", action="store_true", help="print the manifest's numbers as Markdown and exit"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    d = Path(args.dir)
    if args.markdown:
        print(format_markdown(json.loads((d / "manifest.json").read_text())["evaluation"]))
        return
    result = evaluate_dirs(d / "base", d / "tuned")
    print(format_table(result))
    if args.write:
        update_manifest(d / "manifest.json", result)
        print(f"wrote {d / 'manifest.json'}")


if __name__ == "__main__":
    main()
