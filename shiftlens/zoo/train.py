"""Train the embedded pair: pre-train a small Llama on the toy grammar (base), instruction-tune a copy.

Run ``python -m shiftlens.zoo.train`` to rebuild ``shiftlens/zoo/pair/`` from scratch (seeded,
offline, CPU, about ten minutes on two cores). :func:`train_pair` does the same into any directory
with any :class:`TrainConfig`; the tests use a tiny config to check determinism.

Phases:

1. data: ``n_sentences`` grammar sentences (corpus) and ``examples_per_task`` instruction
   examples per task from the *training* split of word combinations (:func:`grammar.is_held_out`).
2. tokenizer: byte-level BPE trained on corpus + instruction text, wrapped as
   ``PreTrainedTokenizerFast`` with ``<bos>``/``<eos>``/``<pad>``; it prepends ``<bos>``.
3. base: ``LlamaForCausalLM`` (grouped-query attention, untied embeddings) trained on packed corpus
   sequences (each starts with ``<bos>`` at a sentence boundary).
4. tuned: a copy of base fine-tuned on the instruction examples, loss on response tokens (and the
   final ``<eos>``) only; every ``corpus_every``-th step is a corpus batch instead.
5. both saved with ``save_pretrained`` (safetensors) plus the tokenizer; ``manifest.json`` records
   seed, data sizes, config, steps, wall times, final losses, then :mod:`shiftlens.zoo.evaluate`
   adds the evaluation.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from shiftlens.zoo import grammar

__all__ = ["TrainConfig", "build_tokenizer", "train_pair", "pack_texts", "finetune_lm", "main"]

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of the training run; stored verbatim in the manifest.

    Example:
        >>> TrainConfig().d_model
        128
        >>> TrainConfig.tiny().pretrain_steps < TrainConfig().pretrain_steps
        True
    """

    seed: int = 0
    # data
    n_sentences: int = 60_000
    examples_per_task: int = 5_000
    # tokenizer / model
    vocab_size: int = 1024
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 384
    seq_len: int = 64
    # pre-training
    pretrain_steps: int = 600
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    # instruction tuning
    sft_steps: int = 2000
    sft_batch: int = 48
    sft_lr: float = 2e-3
    corpus_every: int = 4
    # shared
    warmup: int = 40
    weight_decay: float = 0.01
    threads: int = 1
    save_dtype: str = "float32"

    @classmethod
    def tiny(cls, **overrides: Any) -> TrainConfig:
        """A seconds-long configuration for tests (same code path, tiny sizes)."""
        base = dict(
            n_sentences=400,
            examples_per_task=40,
            vocab_size=400,
            d_model=32,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            d_mlp=64,
            seq_len=32,
            pretrain_steps=12,
            pretrain_batch=8,
            sft_steps=12,
            sft_batch=8,
            warmup=2,
        )
        base.update(overrides)
        return cls(**base)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_tokenizer(texts: list[str], vocab_size: int):
    """Train a byte-level BPE tokenizer and wrap it as ``PreTrainedTokenizerFast``.

    The tokenizer prepends ``<bos>`` (like Llama's), has ``<eos>`` and ``<pad>`` and splits before
    spaces (GPT-2 pre-tokenizer), so tokenizing ``prompt`` and ``" " + answer`` separately and
    concatenating equals tokenizing the joined text.

    Args:
        texts: training text (corpus sentences and instruction examples).
        vocab_size: BPE vocabulary size including the 256 byte tokens and 3 specials.

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.

    Example:
        >>> tok = build_tokenizer(["the cat sleeps."] * 50, 300)
        >>> tok.convert_ids_to_tokens(tok("the cat").input_ids)[0]
        '<bos>'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )
    return fast


def _model_config(cfg: TrainConfig, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.d_model // cfg.n_heads,
        max_position_embeddings=max(128, cfg.seq_len * 2),
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
        attention_bias=False,
        mlp_bias=False,
    )


def _pack_corpus(sentences: list[str], tokenizer, seq_len: int) -> Tensor:
    """Pack sentences into ``<bos>``-initial rows of exactly ``seq_len`` tokens."""
    ids = tokenizer([" " + s for s in sentences], add_special_tokens=False).input_ids
    first = tokenizer(
        sentences, add_special_tokens=False
    ).input_ids  # sentence at row start: no space
    rows: list[list[int]] = []
    cur: list[int] = []
    for i in range(len(sentences)):
        if not cur:
            cur = [tokenizer.bos_token_id] + first[i]
        else:
            cur = cur + ids[i]
        if len(cur) >= seq_len:
            rows.append(cur[:seq_len])
            cur = []
    return torch.tensor(rows, dtype=torch.long)


def _sft_tensors(examples: list[grammar.Example], tokenizer) -> tuple[Tensor, Tensor]:
    """Right-padded input ids and labels (-100 except on response tokens + EOS)."""
    p_ids = tokenizer([e.prompt for e in examples]).input_ids  # with <bos>
    r_ids = tokenizer([e.response for e in examples], add_special_tokens=False).input_ids
    n = max(len(p) + len(r) + 1 for p, r in zip(p_ids, r_ids))
    inp = torch.full((len(examples), n), tokenizer.pad_token_id, dtype=torch.long)
    lab = torch.full((len(examples), n), -100, dtype=torch.long)
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        seq = p + r + [tokenizer.eos_token_id]
        inp[i, : len(seq)] = torch.tensor(seq)
        lab[i, len(p) : len(seq)] = torch.tensor(r + [tokenizer.eos_token_id])
    return inp, lab


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        prog = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

    return f


def _lm_loss(model, ids: Tensor, labels: Tensor | None = None) -> Tensor:
    from torch.nn import functional as F

    attn = (ids != model.config.pad_token_id).long()
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    target = (ids if labels is None else labels)[:, 1:].clone()
    if labels is None:
        target[attn[:, 1:] == 0] = -100
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100
    )


def _optimizer(model, lr: float, cfg: TrainConfig, total: int):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup, total))
    return opt, sched


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, flush=True)


def _save(model, tokenizer, path: Path, dtype: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    m = model if dtype == "float32" else copy.deepcopy(model).to(getattr(torch, dtype))
    m.config.torch_dtype = None
    m.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def train_pair(
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    evaluate: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the toy pair: data, tokenizer, base pre-training, instruction tuning, manifest.

    Deterministic: the same config on the same machine/thread count gives bit-identical weights.

    Args:
        out_dir: directory to write ``base/``, ``tuned/`` and ``manifest.json`` into.
        config: the run's knobs (default: the shipped pair's).
        evaluate: also run :func:`shiftlens.zoo.evaluate.evaluate_dirs` and store its numbers.
        progress: print progress lines.

    Returns:
        The manifest dictionary (also written to ``out_dir/manifest.json``).

    Example:
        >>> import tempfile
        >>> m = train_pair(tempfile.mkdtemp(), TrainConfig.tiny(), evaluate=False, progress=False)
        >>> sorted(m["phases"])
        ['data', 'pretrain', 'sft', 'tokenizer']
    """
    from transformers import LlamaForCausalLM

    cfg = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    t_start, c_start = time.perf_counter(), time.process_time()
    phases: dict[str, dict[str, Any]] = {}

    # 1. data -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    rng = random.Random(cfg.seed)
    sentences = grammar.corpus_sentences(cfg.n_sentences, rng)
    examples = [
        grammar.make_example(task, rng, held_out=False)
        for task in grammar.TASK_NAMES
        for _ in range(cfg.examples_per_task)
    ]
    rng.shuffle(examples)
    phases["data"] = {"wall_s": round(time.perf_counter() - t0, 2)}

    # 2. tokenizer --------------------------------------------------------------------------
    t0 = time.perf_counter()
    tokenizer = build_tokenizer(
        sentences + [e.prompt + e.response for e in examples], cfg.vocab_size
    )
    phases["tokenizer"] = {
        "wall_s": round(time.perf_counter() - t0, 2),
        "vocab_size": len(tokenizer),
    }

    corpus = _pack_corpus(sentences, tokenizer, cfg.seq_len)
    sft_inp, sft_lab = _sft_tensors(examples, tokenizer)
    data_info = {
        "corpus_sentences": len(sentences),
        "corpus_tokens": int(corpus.numel()),
        "corpus_rows": int(corpus.shape[0]),
        "sft_examples": len(examples),
        "sft_examples_per_task": {t: cfg.examples_per_task for t in grammar.TASK_NAMES},
        "sft_tokens": int((sft_inp != tokenizer.pad_token_id).sum()),
        "sft_response_tokens": int((sft_lab != -100).sum()),
    }

    # 3. base -------------------------------------------------------------------------------
    t0, c0 = time.perf_counter(), time.process_time()
    _seed_all(cfg.seed)
    model = LlamaForCausalLM(_model_config(cfg, tokenizer))
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt, sched = _optimizer(model, cfg.pretrain_lr, cfg, cfg.pretrain_steps)
    losses: list[float] = []
    for step in range(cfg.pretrain_steps):
        idx = torch.randint(0, corpus.shape[0], (cfg.pretrain_batch,), generator=gen)
        loss = _lm_loss(model, corpus[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.pretrain_steps - 1:
            _log(
                progress,
                f"pretrain {step:5d}/{cfg.pretrain_steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - t0:.0f}s)",
            )
    tail = losses[-max(1, len(losses) // 20) :]
    phases["pretrain"] = {
        "steps": cfg.pretrain_steps,
        "batch": cfg.pretrain_batch,
        "tokens_seen": cfg.pretrain_steps * cfg.pretrain_batch * cfg.seq_len,
        "final_loss": round(sum(tail) / len(tail), 4),
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
    }
    model.eval()
    _save(model, tokenizer, out / "base", cfg.save_dtype)

    # 4. tuned ------------------------------------------------------------------------------
    t0, c0 = time.perf_counter(), time.process_time()
    _seed_all(cfg.seed + 2)
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    opt, sched = _optimizer(model, cfg.sft_lr, cfg, cfg.sft_steps)
    sft_losses: list[float] = []
    lm_losses: list[float] = []
    for step in range(cfg.sft_steps):
        if cfg.corpus_every and step % cfg.corpus_every == cfg.corpus_every - 1:
            idx = torch.randint(0, corpus.shape[0], (cfg.pretrain_batch,), generator=gen)
            loss = _lm_loss(model, corpus[idx])
            lm_losses.append(loss.item())
        else:
            idx = torch.randint(0, sft_inp.shape[0], (cfg.sft_batch,), generator=gen)
            inp, lab = sft_inp[idx], sft_lab[idx]
            width = int((inp != tokenizer.pad_token_id).sum(1).max())
            loss = _lm_loss(model, inp[:, :width], lab[:, :width])
            sft_losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.sft_steps - 1:
            _log(
                progress,
                f"sft {step:5d}/{cfg.sft_steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - t0:.0f}s)",
            )
    tail = sft_losses[-max(1, len(sft_losses) // 20) :]
    ltail = lm_losses[-max(1, len(lm_losses) // 20) :] or [float("nan")]
    phases["sft"] = {
        "steps": cfg.sft_steps,
        "sft_steps": len(sft_losses),
        "corpus_steps": len(lm_losses),
        "batch": cfg.sft_batch,
        "final_response_loss": round(sum(tail) / len(tail), 4),
        "final_corpus_loss": round(sum(ltail) / len(ltail), 4),
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
    }
    model.eval()
    _save(model, tokenizer, out / "tuned", cfg.save_dtype)

    mc = model.config
    manifest: dict[str, Any] = {
        "name": "shiftlens toy pair",
        "seed": cfg.seed,
        "config": asdict(cfg),
        "model": {
            "architecture": "LlamaForCausalLM",
            "vocab_size": mc.vocab_size,
            "d_model": mc.hidden_size,
            "n_layers": mc.num_hidden_layers,
            "n_heads": mc.num_attention_heads,
            "n_kv_heads": mc.num_key_value_heads,
            "d_head": mc.head_dim,
            "d_mlp": mc.intermediate_size,
            "tied_embeddings": bool(mc.tie_word_embeddings),
            "n_params": sum(p.numel() for p in model.parameters()),
            "stored_dtype": cfg.save_dtype,
        },
        "data": data_info,
        "template": "Instruction: {instruction}\\nInput: {words}\\nResponse: {answer}<eos>",
        "tasks": {t.name: list(t.phrasings) for t in grammar.TASKS},
        "phases": phases,
        "train_wall_s": round(time.perf_counter() - t_start, 1),
        "train_cpu_s": round(time.process_time() - c_start, 1),
        "load_average_at_end": _loadavg(),
        "timing_note": (
            "wall_s is elapsed time and includes waiting for other processes on a shared CPU; "
            "cpu_s (and train_cpu_s) is this process's own CPU time, about the wall time of an "
            "otherwise idle machine with `threads` threads"
        ),
        "torch": torch.__version__,
        "threads": cfg.threads,
    }
    _write_manifest(out, manifest)
    if evaluate:
        from shiftlens.zoo.evaluate import evaluate_dirs, update_manifest

        result = evaluate_dirs(out / "base", out / "tuned", progress=progress)
        update_manifest(out / "manifest.json", result)
        manifest = json.loads((out / "manifest.json").read_text())
    return manifest


def pack_texts(
    texts: Sequence[str], tokenizer: Any, seq_len: int, *, sep: str = " "
) -> Int[Tensor, "rows seq_len"]:
    """Pack texts into ``<bos>``-initial rows of exactly ``seq_len`` tokens, joined by ``sep``.

    The same packing as the pre-training corpus of :func:`train_pair` (which uses ``sep=" "``):
    a row starts with ``<bos>`` and a text without separator, every further text is preceded by
    ``sep``, and the row is cut at ``seq_len`` tokens (the cut-off remainder is dropped, the next
    row starts with the next text). Texts are tokenized one by one; because the pre-tokenizer
    splits before a space or a newline, a row equals the tokenization of the joined text.

    Args:
        texts: the documents (for the corpus: sentences).
        tokenizer: the pair's tokenizer (its ``bos_token_id`` starts every row).
        seq_len: tokens per row.
        sep: text put between consecutive texts of a row (``"\\n"`` for line-based formats).

    Returns:
        ``[rows, seq_len]`` token ids; texts that do not fill a last row are dropped.

    Example:
        >>> from shiftlens.zoo import pair_dirs
        >>> from transformers import AutoTokenizer
        >>> tok = AutoTokenizer.from_pretrained(pair_dirs()[0])
        >>> rows = pack_texts(["the cat sleeps."] * 10, tok, 8)
        >>> rows.shape[1], tok.decode(rows[0])
        (8, '<bos>the cat sleeps. the cat sleeps')
    """
    first = tokenizer(list(texts), add_special_tokens=False).input_ids
    later = tokenizer([sep + t for t in texts], add_special_tokens=False).input_ids
    rows: list[list[int]] = []
    cur: list[int] = []
    for i in range(len(first)):
        cur = [tokenizer.bos_token_id] + first[i] if not cur else cur + later[i]
        if len(cur) >= seq_len:
            rows.append(cur[:seq_len])
            cur = []
    if not rows:
        return torch.zeros((0, seq_len), dtype=torch.long)
    return torch.tensor(rows, dtype=torch.long)


def finetune_lm(
    model: Any,
    rows: Int[Tensor, "rows seq"],
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    warmup: int = 20,
    weight_decay: float = 0.01,
    threads: int = 1,
    progress: bool = False,
    label: str = "finetune",
) -> dict[str, Any]:
    """Continue training a causal LM on packed rows with the zoo's optimizer, schedule and loss.

    The pre-training loop of :func:`train_pair` as a function: AdamW (betas 0.9/0.98, weight
    decay on matrices only), linear warm-up then cosine decay to 10% of ``lr``, gradient norm
    clipped at 1, next-token loss on every position. Each step draws ``batch`` rows uniformly
    with replacement from a ``torch.Generator`` seeded with ``seed + 1`` (after
    ``torch.manual_seed(seed)``), so the same model, rows and arguments on the same machine and
    thread count give bit-identical weights. The model is trained in place and left in eval mode.

    Args:
        model: a Hugging Face causal LM (e.g. ``LlamaForCausalLM``), updated in place.
        rows: ``[rows, seq]`` token ids from :func:`pack_texts`.
        steps: optimizer steps.
        batch: rows per step.
        lr: peak learning rate.
        seed: seeds the torch RNG and the row sampler.
        warmup: linear warm-up steps.
        weight_decay: AdamW weight decay (matrices only).
        threads: ``torch.set_num_threads`` for the run (determinism depends on it).
        progress: print a line every 100 steps.
        label: name used in the progress lines.

    Returns:
        ``{"steps", "batch", "lr", "tokens_seen", "final_loss", "first_loss", "wall_s",
        "cpu_s"}``; ``final_loss`` is the mean of the last 5% of step losses.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> m = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, pad_token_id=0))
        >>> rows = torch.randint(0, 50, (8, 12), generator=torch.Generator().manual_seed(0))
        >>> rec = finetune_lm(m, rows, steps=3, batch=4, lr=1e-3, seed=0, warmup=1)
        >>> rec["steps"], rec["tokens_seen"]
        (3, 144)
    """
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"finetune_lm needs a non-empty [rows, seq] tensor, got {tuple(rows.shape)}")
    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = TrainConfig(warmup=warmup, weight_decay=weight_decay)
    _seed_all(seed)
    model.train()
    gen = torch.Generator().manual_seed(seed + 1)
    opt, sched = _optimizer(model, lr, cfg, steps)
    losses: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, rows.shape[0], (batch,), generator=gen)
        loss = _lm_loss(model, rows[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            _log(
                progress,
                f"{label} {step:5d}/{steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - t0:.0f}s)",
            )
    model.eval()
    tail = losses[-max(1, len(losses) // 20) :] or [float("nan")]
    return {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "tokens_seen": steps * batch * int(rows.shape[1]),
        "first_loss": round(losses[0], 4) if losses else float("nan"),
        "final_loss": round(sum(tail) / len(tail), 4),
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
    }


def _loadavg() -> list[float] | None:
    """1/5/15-minute load average (other processes sharing the CPU inflate wall times)."""
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m shiftlens.zoo.train [--out DIR] [--tiny] [--no-eval]``.

    Example:
        >>> main(["--tiny", "--out", "/tmp/toy"])  # doctest: +SKIP
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "pair"), help="output directory")
    ap.add_argument("--tiny", action="store_true", help="seconds-long smoke configuration")
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="override TrainConfig fields"
    )
    args = ap.parse_args(argv)
    overrides: dict[str, Any] = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        typ = type(getattr(TrainConfig(), k))
        overrides[k] = typ(v)
    cfg = TrainConfig.tiny(**overrides) if args.tiny else TrainConfig(**overrides)
    m = train_pair(args.out, cfg, evaluate=not args.no_eval)
    print(json.dumps({k: m[k] for k in ("phases", "train_wall_s")}, indent=2))


if __name__ == "__main__":
    main()
