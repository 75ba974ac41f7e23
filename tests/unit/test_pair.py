"""ModelPair: loading, iteration, compatibility checks, weight processing."""

from __future__ import annotations

import warnings

import pytest
import torch

from shiftlens import ModelPair, ShiftlensError, ShiftlensWarning
from shiftlens.pair import load_bridge
from shiftlens.testing import perturbed_copy, tiny_model_dir


def test_pair_basics(pair, arch):
    assert [r for r, _ in pair] == ["base", "tuned"]
    assert dict(pair)["tuned"] is pair.tuned
    assert pair.cfg.n_layers == 2 and pair.cfg.d_model == 32
    assert pair.tokenizer is pair.base.tokenizer
    assert pair.processing == "raw"
    assert pair.prepend_bos == (arch != "qwen2")
    assert "base" in pair.names["base"] and "tuned" in pair.names["tuned"]
    assert not pair.identical_weights()
    # raw weights: bridge logits equal the plain HF model's
    toks = torch.tensor([[pair.tokenizer.bos_token_id, 10, 11, 12]])
    with torch.no_grad():
        ours = pair.tuned(toks)
        hf = pair.tuned.original_model(toks).logits
    torch.testing.assert_close(ours, hf)


def test_from_models_and_not_a_bridge(tiny_dirs):
    b, t = tiny_dirs("llama")
    mb, mt = load_bridge(b), load_bridge(t)
    pair = ModelPair.from_models(mb, mt, names=("B", "T"))
    assert pair.names == {"base": "B", "tuned": "T"}
    with pytest.raises(ShiftlensError, match="tuned model is a .*Llama.*not a .*TransformerBridge"):
        ModelPair.from_models(mb, mt.original_model)
    with pytest.raises(ShiftlensError, match="base model is a builtins.str"):
        ModelPair.from_models("gpt2", mt)


def test_identical_weights_warns(tiny_dirs):
    b, _ = tiny_dirs("gpt2")
    with pytest.warns(ShiftlensWarning, match="identical weights"):
        ModelPair.from_pretrained(b, b)


def test_shape_mismatch_names_both(tiny_dirs, tmp_path):
    b, _ = tiny_dirs("llama")
    other = tiny_model_dir("llama", tmp_path / "deep", n_layers=3)
    with pytest.raises(ShiftlensError, match=r"base '.*base' vs tuned '.*deep'.*n_layers 2 != 3"):
        ModelPair.from_pretrained(b, other)
    wide = tiny_model_dir("llama", tmp_path / "wide", d_model=48)
    with pytest.raises(ShiftlensError, match="d_model 32 != 48"):
        ModelPair.from_pretrained(b, wide)


def test_tokenizer_mismatch(tiny_dirs, tmp_path):
    b, _ = tiny_dirs("llama")  # sentencepiece-style tokenizer
    other = tiny_model_dir("llama", tmp_path / "bl", tokenizer="bytelevel")
    with pytest.raises(ShiftlensError, match="incompatible tokenizers.*vocabularies differ"):
        ModelPair.from_pretrained(b, other)


def test_tokenizer_same_vocab_different_tokenization(tiny_dirs, tmp_path):
    """Same vocabulary, different merges: caught by the probe strings."""
    import json

    b, _ = tiny_dirs("gpt2")
    t = perturbed_copy(b, tmp_path / "t")
    tj = json.loads((t / "tokenizer.json").read_text())
    tj["model"]["merges"] = tj["model"]["merges"][: len(tj["model"]["merges"]) // 2]
    (t / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ShiftlensError, match="tokenize .* differently"):
        ModelPair.from_pretrained(b, t)


def test_bad_processing_and_missing_dir(tiny_dirs, tmp_path):
    b, t = tiny_dirs("gpt2")
    with pytest.raises(ShiftlensError, match="processing must be"):
        ModelPair.from_pretrained(b, t, processing="folded")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShiftlensError, match="not a Hugging Face model directory"):
        ModelPair.from_pretrained(tmp_path / "empty", t)


@pytest.mark.parametrize("arch_", ["llama", "gemma2"])
def test_compat_processing_matches_own_folding(tiny_dirs, arch_):
    """TL's fold_ln (compat mode) == our diag(gamma) folding of raw weights (RMSNorm models)."""
    from shiftlens.weights import is_processed, qk_weights, unembedding

    b, t = tiny_dirs(arch_)
    raw = ModelPair.from_pretrained(b, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp = ModelPair.from_pretrained(b, t, processing="compat")
    assert comp.processing == "compat" and is_processed(comp.base) and not is_processed(raw.base)
    for layer in range(2):
        q_raw, k_raw = qk_weights(raw.base, layer)
        q_c, k_c = qk_weights(comp.base, layer)
        torch.testing.assert_close(q_raw, q_c, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(k_raw, k_c, atol=1e-5, rtol=1e-4)
    # the unembedding is also centred in compat mode: compare up to the per-row mean
    u_raw, u_c = unembedding(raw.base), unembedding(comp.base)
    torch.testing.assert_close(u_raw - u_raw.mean(1, keepdim=True), u_c - u_c.mean(1, keepdim=True),
                               atol=1e-5, rtol=1e-4)


def test_from_pretrained_places_each_role(tiny_dirs, tmp_path, monkeypatch):
    """One map for both or a (base, tuned) pair; offload folders per role (same param names)."""
    import shiftlens.pair as pair_mod

    b, t = tiny_dirs("llama")
    calls = []
    real = pair_mod.load_bridge

    def spy(path, **kw):
        calls.append((str(path), kw))
        return real(path, device_map={"": "cpu"}, strict=kw["strict"],
                    check_finite=kw["check_finite"])

    monkeypatch.setattr(pair_mod, "load_bridge", spy)
    pair = ModelPair.from_pretrained(b, t, device_map=({"": "cpu"}, {"model": "cpu", "lm_head": "cpu"}),
                                     offload_folder=tmp_path / "off", max_memory={"cpu": "1GiB"})
    (pb, kb), (pt, kt) = calls
    assert (pb, pt) == (str(b), str(t))
    assert kb["device_map"] == {"": "cpu"} and kt["device_map"] == {"model": "cpu", "lm_head": "cpu"}
    assert kb["offload_folder"] == tmp_path / "off" / "base"
    assert kt["offload_folder"] == tmp_path / "off" / "tuned"
    assert kb["max_memory"] == kt["max_memory"] == {"cpu": "1GiB"} and kb["device"] is None
    assert pair.base.cfg.device == "cpu" and not pair.identical_weights()


def test_from_pretrained_default_device_is_cpu_and_checks_pass_through(tiny_dirs, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    b, t = tiny_dirs("gemma2")
    pair = ModelPair.from_pretrained(b, t)
    assert pair.base.cfg.device == "cpu" and not getattr(pair.base.original_model, "hf_device_map", None)
    broken = tmp_path / "t"
    shutil.copytree(t, broken)
    sd = load_file(broken / "model.safetensors")
    sd["model.norm.weight"][0] = float("nan")
    save_file(sd, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ShiftlensError, match=r"model '.*/t' has non-finite weights: 'model.norm.weight' \[32\]"):
        ModelPair.from_pretrained(b, broken)
    ModelPair.from_pretrained(b, broken, check_finite=False)  # on request


# ----------------------------------------------------------------------------- names (issue 15)
def test_short_names_from_references():
    from shiftlens.bridge import short_name, short_names

    assert short_name("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"  # hub id
    assert short_name("/data/models/llama-7b") == "llama-7b"
    assert short_name("/work/shiftlens/zoo/pair/base") == "pair/base"  # generic: parent added
    assert short_name("/runs/sft/checkpoint-500") == "sft/checkpoint-500"
    assert short_name("~/m/qwen2.5-0.5b-q8_0.gguf") == "qwen2.5-0.5b-q8_0.gguf"
    assert short_name("/hf/hub/models--meta-llama--Llama-3.2-1B/snapshots/" + "0" * 40) == \
        "meta-llama/Llama-3.2-1B"
    # a pair whose last components agree is told apart by its parents
    assert short_names("/runs/a/final", "/runs/b/final") == ("a/final", "b/final")
    assert short_names("/r/x/v1/model", "/r/y/v1/model") == ("x/v1/model", "y/v1/model")


def test_pair_names_are_short_and_sources_full(tiny_dirs):
    b, t = tiny_dirs("llama")
    pair = ModelPair.from_pretrained(b, t)
    assert pair.names == {"base": "llama/base", "tuned": "llama/tuned"}
    assert pair.sources == {"base": str(b.resolve()), "tuned": str(t.resolve())}
    assert "llama/base" in repr(pair) and str(b) not in repr(pair)
    named = ModelPair.from_pretrained(b, t, names=("Llama-base", "Llama-chat"))
    assert named.names == {"base": "Llama-base", "tuned": "Llama-chat"}
    assert named.sources == pair.sources


def test_bad_names_are_refused(tiny_dirs, unchecked):
    b, t = tiny_dirs("llama")
    for bad, msg in [(("a", "a"), "must differ"), (("a",), "pair of strings"),
                     ("ab", "pair of strings"), (("", "x"), "non-empty one-line")]:
        with pytest.raises(ShiftlensError, match=msg):
            ModelPair.from_pretrained(b, t, names=bad)


def test_toy_pair_names_and_provenance_in_results(toy):
    from shiftlens.result import make_meta

    assert toy.names == {"base": "pair/base", "tuned": "pair/tuned"}
    assert toy.sources["base"].endswith("shiftlens/zoo/pair/base")
    assert make_meta(toy)["models"] == toy.names


# ----------------------------------------------------------------------------- dtype, device (issue 14)
def test_dtype_by_name_and_bad_dtype_device(tiny_dirs, unchecked):
    b, t = tiny_dirs("llama")
    pair = ModelPair.from_pretrained(b, t, dtype="bfloat16")
    assert pair.base.cfg.dtype == torch.bfloat16
    assert next(pair.tuned.original_model.parameters()).dtype == torch.bfloat16
    assert load_bridge(b, dtype="torch.float16").cfg.dtype == torch.float16
    with pytest.raises(ShiftlensError, match=r"dtype 'float8' is not a weight dtype; use one of "
                                             r"float32, float16, bfloat16, float64"):
        ModelPair.from_pretrained(b, t, dtype="float8")
    with pytest.raises(ShiftlensError, match="not a floating-point weight dtype"):
        load_bridge(b, dtype=torch.int8)
    with pytest.raises(ShiftlensError, match=r"unknown device 'tpu'; use cpu, cuda, cuda:N or mps"):
        ModelPair.from_pretrained(b, t, device="tpu")
    with pytest.raises(ShiftlensError, match="unknown device 'tpu'"):
        load_bridge(b, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ShiftlensError, match="CUDA is not available"):
            load_bridge(b, device="cuda:0")


def test_toy_pair_dtype_name_and_bad_device(unchecked):
    from shiftlens.zoo import toy_pair

    assert toy_pair(dtype="float32").cfg.dtype == torch.float32
    with pytest.raises(ShiftlensError, match="unknown device 'tpu'"):
        toy_pair(device="tpu")


def test_run_with_cache_refuses_text(llama_pair, unchecked):
    from shiftlens import InstructionPrompt

    with pytest.raises(ShiftlensError, match=r"run_with_cache: prompts must be a list of "
                                             r"InstructionPrompt, got str \(wrap text in "
                                             r"shiftlens.InstructionPrompt\)"):
        llama_pair.run_with_cache("hello")
    with pytest.raises(ShiftlensError, match="run_with_cache: prompt 1 is a str"):
        llama_pair.run_with_cache([InstructionPrompt("hi"), "hello"])
    with pytest.raises(ShiftlensError, match="run_with_cache: no prompts given"):
        llama_pair.run_with_cache([])


def test_load_bridge_shows_no_loading_bars_and_restores_the_setting(tiny_dirs, capfd):
    from transformers.utils import logging as hf_logging

    b, _ = tiny_dirs("llama")
    capfd.readouterr()
    hf_logging.enable_progress_bar()
    try:
        load_bridge(b)
        assert hf_logging.is_progress_bar_enabled()  # the user's setting is back
    finally:
        hf_logging.enable_progress_bar()
    err = capfd.readouterr().err
    assert "Loading weights" not in err
