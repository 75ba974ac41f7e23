"""Tiny random-weight models built in code, booted exactly like real checkpoints.

For tests, examples and benchmarks: a Hugging Face model of a real architecture (GPT-2, Llama
with grouped-query attention, Qwen2, Gemma 2) with a tokenizer trained by ``tokenizers`` on the
shipped prompt texts (byte-level BPE like GPT-2/Qwen, or a sentencepiece-style Metaspace BPE
like Llama/Gemma), saved to a directory and loaded through
``TransformerBridge.boot_transformers`` - the same path as a downloaded checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

import torch

from shiftlens.pair import ModelPair, load_bridge

__all__ = ["ARCHITECTURES", "build_tokenizer", "tiny_model_dir", "tiny_bridge", "tiny_pair", "perturbed_copy"]

ARCHITECTURES = ("gpt2", "llama", "qwen2", "gemma2")
TokenizerKind = Literal["bytelevel", "sentencepiece"]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _corpus() -> list[str]:
    from shiftlens.prompts import default_prompts

    texts = []
    for p in default_prompts():
        texts.append(p.text)
        if p.reference:
            texts.append(p.reference)
    return texts * 3


def build_tokenizer(
    path: str | Path, kind: TokenizerKind = "bytelevel", vocab_size: int = 512
) -> Any:
    """Train a small tokenizer on the shipped prompt texts and save it to ``path``.

    Args:
        path: Directory to save into (``save_pretrained``).
        kind: ``"bytelevel"`` (GPT-2/Qwen style) or ``"sentencepiece"`` (Metaspace BPE with an
            unknown token, Llama/Gemma style).
        vocab_size: Target vocabulary size.

    Returns:
        A ``PreTrainedTokenizerFast`` with BOS/EOS/PAD set and a small chat template.

    Example:
        >>> tok = build_tokenizer(tmp_path / "tok")  # doctest: +SKIP
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<bos>", "<eos>", "<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    if kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif kind == "sentencepiece":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=specials[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    return fast


def _hf_model(arch: str, vocab: int, seed: int, n_layers: int, d_model: int, n_ctx: int) -> Any:
    import transformers as tf

    ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)
    common = dict(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=n_ctx,
        tie_word_embeddings=False,
        **ids,
    )
    if arch == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=vocab, n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=n_ctx,
            n_inner=4 * d_model, **ids,
        )
        cls = tf.GPT2LMHeadModel
    elif arch == "llama":
        cfg, cls = tf.LlamaConfig(**common), tf.LlamaForCausalLM
    elif arch == "qwen2":
        cfg, cls = tf.Qwen2Config(**common), tf.Qwen2ForCausalLM
    elif arch == "gemma2":
        cfg = tf.Gemma2Config(head_dim=d_model // 4, **common)
        cls = tf.Gemma2ForCausalLM
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")
    torch.manual_seed(seed)
    model = cls(cfg)
    with torch.no_grad():  # RMSNorm weights start at 1 (or 0 for Gemma): randomise them
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tiny_model_dir(
    arch: str,
    path: str | Path,
    *,
    seed: int = 0,
    tokenizer: TokenizerKind | None = None,
    n_layers: int = 2,
    d_model: int = 32,
    n_ctx: int = 256,
) -> Path:
    """Build and save a tiny random-weight HF model + tokenizer in ``path``.

    Args:
        arch: One of :data:`ARCHITECTURES`.
        path: Output directory (created).
        seed: Weight seed.
        tokenizer: Tokenizer kind; default byte-level for GPT-2/Qwen2, sentencepiece-style for
            Llama/Gemma 2.
        n_layers, d_model, n_ctx: Model size (4 query heads, 2 KV heads where supported).

    Example:
        >>> d = tiny_model_dir("llama", tmp_path / "llama")  # doctest: +SKIP
    """
    path = Path(path)
    kind = tokenizer or ("bytelevel" if arch in ("gpt2", "qwen2") else "sentencepiece")
    tok = build_tokenizer(path, kind)
    model = _hf_model(arch, len(tok), seed, n_layers, d_model, n_ctx)
    model.save_pretrained(path)
    return path


def tiny_bridge(arch: str = "llama", path: str | Path | None = None, **kw: Any) -> Any:
    """Boot a tiny random model through ``TransformerBridge.boot_transformers``.

    Example:
        >>> model = tiny_bridge("gpt2")  # doctest: +SKIP
    """
    path = Path(path) if path else Path(tempfile.mkdtemp(prefix=f"shiftlens-{arch}-"))
    return load_bridge(tiny_model_dir(arch, path, **kw))


def perturbed_copy(src: str | Path, dst: str | Path, *, scale: float = 0.05, seed: int = 1) -> Path:
    """Copy a saved model directory adding Gaussian noise (relative ``scale``) to every weight.

    Example:
        >>> perturbed_copy(base_dir, tmp_path / "tuned")  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.std().clamp(min=1e-3) * torch.randn(p.shape, generator=g))
    dst = Path(dst)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def tiny_pair(
    arch: str = "llama",
    path: str | Path | None = None,
    *,
    seed: int = 0,
    scale: float = 0.05,
    **kw: Any,
) -> ModelPair:
    """A tiny base model and a perturbed copy as "tuned", loaded with ``from_pretrained``.

    Example:
        >>> pair = tiny_pair("qwen2")  # doctest: +SKIP
    """
    root = Path(path) if path else Path(tempfile.mkdtemp(prefix=f"shiftlens-pair-{arch}-"))
    base = tiny_model_dir(arch, root / "base", seed=seed, **kw)
    tuned = perturbed_copy(base, root / "tuned", scale=scale, seed=seed + 1)
    return ModelPair.from_pretrained(base, tuned)
