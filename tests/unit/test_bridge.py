"""shiftlens.bridge: loading refuses broken weights; placement; the module graph.

Truths: a checkpoint edited here (a tensor deleted or added, a file cut short, one weight set to
NaN or infinity) must be refused naming what was done to it, while every intact test
architecture (GPT-2 with tied embeddings, Llama with GQA and tied embeddings, Qwen2, Gemma 2, the
embedded pair) loads; a CPU+disk offloaded pair must give exactly the activations, logits,
attribution and weights of a plain load; a 70B Llama placed on an empty model must use exactly
the parameter bytes its shapes imply.
"""

from __future__ import annotations

import ast
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from shiftlens import ModelPair, ShiftlensError, ShiftlensWarning
from shiftlens.bridge import (
    DEVICE_MAP_PRESETS,
    check_device_map,
    check_finite_weights,
    device_of,
    load_bridge,
    materialized,
    model_name,
    named_weights,
    parse_device_map,
    plan_device_map,
)

ROOT = Path(__file__).resolve().parents[2]

#: A CPU+disk map of the embedded pair (4-layer Llama): embedding, odd layers, final norm and
#: unembedding on disk, even layers on the CPU.
TOY_OFFLOAD = {
    "model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
    "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "disk",
    "model.rotary_emb": "cpu", "lm_head": "disk",
}


def _edited_copy(src: Path, dst: Path, edit) -> Path:
    """Copy a model directory, rewriting model.safetensors with ``edit(state_dict)``."""
    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    edit(sd)
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


# ---------------------------------------------------------------------------- module graph
def _imports(path: Path) -> set[str]:
    """Every shiftlens module imported anywhere in a file (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shiftlens"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("shiftlens")}
    return found


def test_no_import_cycles_through_bridge_pair_capture_checkpoints():
    src = ROOT / "shiftlens"
    bridge = _imports(src / "bridge.py")
    assert not bridge & {"shiftlens.pair", "shiftlens.capture", "shiftlens.weights"}, bridge
    assert bridge <= {"shiftlens.errors", "shiftlens.weightfiles", "shiftlens.checkpoints",
                      "shiftlens.devicemap"}
    assert _imports(src / "devicemap.py") <= {"shiftlens.errors"}
    ck = _imports(src / "checkpoints.py")
    assert not ck & {"shiftlens.pair", "shiftlens.bridge", "shiftlens.capture"}, ck
    assert _imports(src / "weightfiles.py") <= {"shiftlens.errors"}
    assert "shiftlens.pair" not in _imports(src / "weights.py")
    # the old names still import from where they were
    from shiftlens.checkpoints import load_packaged
    from shiftlens.pair import load_bridge as lb
    from shiftlens.pair import model_name as mn

    assert lb is load_bridge and mn is model_name and load_packaged.__module__ == "shiftlens.bridge"


# ---------------------------------------------------------------------------- broken weights
def test_intact_checkpoints_load_without_false_alarms(arch, tiny_dirs, tmp_path):
    """Tied weights (GPT-2 lm_head) and non-persistent buffers are not reported missing."""
    base, tuned = tiny_dirs(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShiftlensWarning)
        for d in (base, tuned):
            m = load_bridge(d)
            check_finite_weights(m)
    if arch == "gpt2":
        assert "lm_head.weight" not in load_file(base / "model.safetensors")


def test_tied_llama_and_the_embedded_pair_load(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from shiftlens.zoo import pair_dirs

    b, _ = pair_dirs()
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=818,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tied")
    AutoTokenizer.from_pretrained(b).save_pretrained(tmp_path / "tied")
    assert "lm_head.weight" not in load_file(tmp_path / "tied" / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShiftlensWarning)
        m = load_bridge(tmp_path / "tied")
        assert m.W_U.data_ptr() == m.W_E.data_ptr()
        pair = ModelPair.from_pretrained(*pair_dirs())
    assert not pair.identical_weights()


def test_deleted_tensor_is_refused_by_name(tiny_dirs, tmp_path):
    base, tuned = tiny_dirs("llama")
    name = "model.layers.0.mlp.down_proj.weight"
    broken = _edited_copy(base, tmp_path / "broken", lambda sd: sd.pop(name))
    with pytest.raises(ShiftlensError, match=rf"'{re.escape(str(broken))}'.*missing 1 tensor \['{name}'\]"):
        load_bridge(broken)
    with pytest.raises(ShiftlensError, match=rf"missing 1 tensor \['{name}'\]"):
        ModelPair.from_pretrained(broken, tuned)
    with pytest.warns(ShiftlensWarning, match=name):
        m = load_bridge(broken, strict=False)  # on request: loads, random down_proj
    assert m.cfg.n_layers == 2


def test_unexpected_tensor_is_refused_by_name(tiny_dirs, tmp_path):
    base, _ = tiny_dirs("qwen2")

    def add(sd):
        sd["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(4, 4)

    broken = _edited_copy(base, tmp_path / "extra", add)
    with pytest.raises(ShiftlensError, match=r"unexpected 1 tensor \['model.layers.0.mlp.extra_proj.weight'\]"):
        load_bridge(broken)


def test_wrongly_shaped_tensor_is_refused_by_name_and_shapes(tiny_dirs, tmp_path):
    base, _ = tiny_dirs("llama")
    name = "model.layers.0.mlp.down_proj.weight"
    want = list(load_file(Path(base) / "model.safetensors")[name].shape)

    def cut(sd):
        sd[name] = sd[name][:, :-1].contiguous()

    broken = _edited_copy(base, tmp_path / "shape", cut)
    with pytest.raises(ShiftlensError, match=rf"1 tensor of the wrong shape: {re.escape(name)} is "
                       rf"\[{want[0]}, {want[1] - 1}\] in the file, the model expects "
                       rf"\[{want[0]}, {want[1]}\]"):
        load_bridge(broken)


def test_truncated_safetensors_is_refused_naming_file_and_tensors(tiny_dirs, tmp_path):
    base, tuned = tiny_dirs("gemma2")
    broken = tmp_path / "cut"
    shutil.copytree(base, broken)
    f = broken / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-5000])
    with pytest.raises(ShiftlensError, match=r"model.safetensors' is truncated.*5000 missing.*tensors cut off: \['model"):
        load_bridge(broken)
    with pytest.raises(ShiftlensError, match="is truncated"):
        ModelPair.from_pretrained(tuned, broken)


@pytest.mark.parametrize("value,kind", [(float("nan"), "1 NaN, 0 inf"), (float("inf"), "0 NaN, 1 inf"),
                                        (float("-inf"), "0 NaN, 1 inf")])
def test_non_finite_weight_is_refused_by_name(tiny_dirs, tmp_path, value, kind):
    base, _ = tiny_dirs("llama")
    name = "model.layers.1.self_attn.k_proj.weight"

    def poison(sd):
        sd[name][3, 5] = value

    broken = _edited_copy(base, tmp_path / "nan", poison)
    with pytest.raises(ShiftlensError, match=rf"non-finite weights: '{name}' \[16, 32\]: 1 non-finite \({kind}\), first at index \[3, 5\]"):
        load_bridge(broken)
    m = load_bridge(broken, check_finite=False)  # on request
    with pytest.raises(ShiftlensError, match=name):
        check_finite_weights(m)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_check_has_no_false_alarms_and_finds_one_nan(dtype):
    big = torch.nn.Linear(4, 4).to(dtype)
    with torch.no_grad():
        big.weight.fill_(torch.finfo(dtype).max)  # finite values whose sum overflows
        big.bias.fill_(torch.finfo(dtype).min)
    check_finite_weights(big, name="big")
    with torch.no_grad():
        big.bias[2] = float("nan")
    with pytest.raises(ShiftlensError, match=r"'bias' \[4\]: 1 non-finite \(1 NaN"):
        check_finite_weights(big, name="big")


# ---------------------------------------------------------------------------- device maps
def test_check_device_map_accepts_what_tl_accepts_and_refuses_the_rest(unchecked):
    assert check_device_map({"": "cpu"}) == {"": "cpu"}
    assert check_device_map({"a": torch.device("cuda", 1), "b": "CUDA:0", "c": 2}) == \
        {"a": 1, "b": "cuda:0", "c": 2}
    assert check_device_map(TOY_OFFLOAD) == TOY_OFFLOAD
    for preset in DEVICE_MAP_PRESETS:
        assert check_device_map(preset) == preset
    with pytest.raises(ShiftlensError, match="mixes CPU/disk offload.*with GPU targets"):
        check_device_map({"model.layers.0": 0, "model.layers.1": "cpu"})
    with pytest.raises(ShiftlensError, match="mixes CPU/disk offload"):
        check_device_map({"model.layers.0": "cuda:0", "lm_head": "disk"})
    with pytest.raises(ShiftlensError, match=r"puts \['lm_head'\] on 'meta'"):
        check_device_map({"model": "cpu", "lm_head": "meta"})
    with pytest.raises(ShiftlensError, match="is not a device"):
        check_device_map({"model": "gpu"})
    with pytest.raises(ShiftlensError, match="GPU indices are >= 0"):
        check_device_map({"model": -1})
    with pytest.raises(ShiftlensError, match="not one of"):
        check_device_map("fastest")
    with pytest.raises(ShiftlensError, match="non-empty dict"):
        check_device_map({})
    with pytest.raises(ShiftlensError, match="not both"):
        check_device_map("auto", n_devices=2)


def test_parse_device_map(tmp_path):
    assert parse_device_map(" balanced ") == "balanced"
    assert parse_device_map('{"model": 0, "lm_head": "cuda:0"}') == {"model": 0, "lm_head": "cuda:0"}
    (tmp_path / "m.json").write_text('{"": "cpu"}')
    assert parse_device_map(f"@{tmp_path / 'm.json'}") == {"": "cpu"}
    with pytest.raises(ShiftlensError, match="neither one of"):
        parse_device_map("{model: 0}")
    with pytest.raises(ShiftlensError, match="expected a JSON object"):
        parse_device_map("[1, 2]")
    with pytest.raises(ShiftlensError, match="cannot read device map file"):
        parse_device_map(f"@{tmp_path / 'nope.json'}")
    with pytest.raises(ShiftlensError, match="mixes"):
        parse_device_map('{"model": 0, "lm_head": "disk"}')


def test_refused_placements_fail_before_loading(monkeypatch, unchecked):
    from transformer_lens.model_bridge import TransformerBridge

    from shiftlens.zoo import pair_dirs

    def boom(*a, **k):
        raise AssertionError("loading started")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", boom)
    b, t = pair_dirs()
    with pytest.raises(ShiftlensError, match="give device or device_map/n_devices, not both"):
        load_bridge(b, device="cpu", device_map={"": "cpu"})
    with pytest.raises(ShiftlensError, match="mixes CPU/disk"):
        load_bridge(b, device_map={"model": 0, "lm_head": "cpu"})
    with pytest.raises(ShiftlensError, match="not both"):
        load_bridge(b, device_map="auto", n_devices=2)
    with pytest.raises(ShiftlensError, match="compat.*CPU/disk device_map"):
        ModelPair.from_pretrained(b, t, device_map={"": "cpu"}, processing="compat")
    with pytest.raises(ShiftlensError, match=r"\(base, tuned\) pair"):
        ModelPair.from_pretrained(b, t, device_map=({"": "cpu"},))
    if torch.cuda.device_count() == 0:
        with pytest.raises(ShiftlensError, match="uses CUDA device 1 but torch sees 0"):
            load_bridge(b, device_map={"model": 1, "lm_head": 0})
        with pytest.raises(ShiftlensError, match="n_devices=2 needs"):
            load_bridge(b, n_devices=2)


def _toy_offloaded(tmp_path, device_map=TOY_OFFLOAD, **kw):
    from shiftlens.zoo import pair_dirs

    b, t = pair_dirs()
    return ModelPair.from_pretrained(b, t, device_map=device_map,
                                     offload_folder=tmp_path / "offload", **kw)


def test_cpu_disk_offload_equals_a_plain_load_exactly(toy, tmp_path):
    from shiftlens.zoo import toy_prompts

    off = _toy_offloaded(tmp_path)
    hf = off.base.original_model
    assert hf.hf_device_map == TOY_OFFLOAD
    assert hf.model.layers[1].mlp.down_proj.weight.device.type == "meta"  # really on disk
    assert hf.model.layers[0].mlp.down_proj.weight.device.type == "cpu"
    for m in (off.base, off.tuned):
        # TL records the offloaded embedding's device ("meta"); inputs go to the CPU
        assert m.cfg.device == "cpu" and device_of(m) == torch.device("cpu")
    prompts = toy_prompts(6)
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.3.mlp.hook_post",
             "blocks.3.hook_resid_post"]
    c_off = off.run_with_cache(prompts, names, progress=False)
    c_plain = toy.run_with_cache(prompts, names, progress=False)
    for role in ("base", "tuned"):
        for n in names:
            for a, b in zip(c_off[role, n], c_plain[role, n], strict=True):
                assert torch.equal(a, b), (role, n)
    toks = off.tokenize(prompts[0]).tokens[None]
    with torch.no_grad():
        for role in ("base", "tuned"):
            assert torch.equal(off.models[role](toks), toy.models[role](toks))
    assert not off.identical_weights()


def test_offloaded_weights_and_attribution_equal_a_plain_load(toy, tmp_path):
    from shiftlens.weights import embedding, mlp_out, qk_weights, unembedding
    from shiftlens.zoo import toy_prompts

    off = _toy_offloaded(tmp_path)
    for layer in range(4):  # layers 1 and 3 are on disk
        assert torch.equal(mlp_out(off.tuned, layer), mlp_out(toy.tuned, layer))
        for a, b in zip(qk_weights(off.tuned, layer), qk_weights(toy.tuned, layer)):
            assert torch.equal(a, b)
    assert torch.equal(unembedding(off.base), unembedding(toy.base))
    assert torch.equal(embedding(off.base), embedding(toy.base))
    with materialized(off.base.original_model.model.layers[1]):
        assert off.base.original_model.model.layers[1].mlp.down_proj.weight.device.type == "cpu"
    assert off.base.original_model.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    names = [n for n, _ in named_weights(off.base)]
    assert "model.layers.1.mlp.down_proj.weight" in names and len(names) == len(set(names))
    try:
        from shiftlens.attribution import attribute
    except ImportError:  # pragma: no cover - the lens moved
        pytest.skip("shiftlens.attribution.attribute not importable")
    p = toy_prompts(1)[0]
    a_off = attribute(off.tuned, p, response=p.reference, mode="reverse")
    a_plain = attribute(toy.tuned, p, response=p.reference, mode="reverse")
    assert torch.equal(a_off.matrix, a_plain.matrix) and torch.equal(a_off.probs, a_plain.probs)


def test_identical_offloaded_models_warn(tmp_path):
    from shiftlens.zoo import pair_dirs

    b, _ = pair_dirs()
    with pytest.warns(ShiftlensWarning, match="identical weights"):
        ModelPair.from_pretrained(b, b, device_map=(TOY_OFFLOAD, {"": "cpu"}),
                                  offload_folder=tmp_path)


def test_preset_map_is_resolved_on_an_empty_model_first(toy, tmp_path):
    """'sequential' with a 3 MB CPU budget spills layers to disk; still the same logits."""
    from shiftlens.zoo import pair_dirs

    b, _ = pair_dirs()
    plan = plan_device_map(b, max_memory={"cpu": 3_000_000, "disk": 10**12}, strategy="sequential")
    assert set(plan.device_map.values()) == {"cpu", "disk"}
    assert sum(plan.bytes_per_device.values()) == plan.parameter_bytes == 4 * 996_992
    m = load_bridge(b, device_map="sequential", max_memory={"cpu": 3_000_000, "disk": 10**12},
                    offload_folder=tmp_path)
    assert m.original_model.hf_device_map == plan.device_map
    toks = torch.tensor([[0, 17, 250, 31, 99, 5]])
    with torch.no_grad():
        assert torch.equal(m(toks), toy.base(toks))


def _llama70b():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                       max_position_embeddings=131072, tie_word_embeddings=False)


def _llama_params(c) -> int:
    """Parameter count of a Llama from its shapes (independent of any model object)."""
    d, f, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    dh = d // c.num_attention_heads
    attn = d * d + 2 * d * (c.num_key_value_heads * dh) + d * d
    return V * d * (1 if c.tie_word_embeddings else 2) + d + L * (attn + 3 * d * f + 2 * d)


def test_plan_70b_on_two_80gb_gpus_without_allocating():
    import resource

    cfg = _llama70b()
    assert _llama_params(cfg) == 70_553_706_496
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    plan = plan_device_map(cfg, max_memory={0: "80GiB", 1: "80GiB", "cpu": "64GiB"},
                           dtype=torch.bfloat16)
    grew_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    assert grew_kb < 500_000  # 141 GB of weights planned; well under 0.5 GB touched
    assert plan.n_parameters == _llama_params(cfg)
    assert plan.parameter_bytes == 2 * _llama_params(cfg) == sum(plan.bytes_per_device.values())
    assert set(plan.device_map.values()) == {0, 1} and plan.devices == ["0", "1"]
    assert all(b <= 80 * 2**30 for b in plan.bytes_per_device.values())
    assert check_device_map(plan.device_map) == plan.device_map  # what load_bridge accepts
    assert plan.device_map["model.embed_tokens"] == 0 and plan.device_map["lm_head"] == 1
    # float32 (282 GB) spills onto the CPU next to the GPUs: TL refuses that map
    with pytest.raises(ShiftlensError, match="mixes CPU/disk offload"):
        plan_device_map(cfg, max_memory={0: "80GiB", 1: "80GiB", "cpu": "400GiB"})
    spilled = plan_device_map(cfg, max_memory={0: "80GiB", 1: "80GiB", "cpu": "400GiB"},
                              check=False)
    assert "cpu" in spilled.bytes_per_device
    assert spilled.parameter_bytes == 4 * _llama_params(cfg)


def test_named_weights_same_sequence_whatever_the_placement(tiny_dirs, tmp_path):
    """GPT-2 with its tied embedding on disk: dispatching unties the meta parameters, yet the
    weights come out once each, in the plain load's order, with the plain load's values."""
    base, _ = tiny_dirs("gpt2")
    plain = load_bridge(base)
    off = load_bridge(base, device_map={"transformer.wte": "disk", "lm_head": "disk",
                                        "transformer.wpe": "cpu", "transformer.h": "disk",
                                        "transformer.ln_f": "cpu"}, offload_folder=tmp_path)
    a, b = list(named_weights(plain)), list(named_weights(off))
    assert [n for n, _ in a] == [n for n, _ in b]
    assert "transformer.wte.weight" in dict(a) and "lm_head.weight" not in dict(a)
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))
    with torch.no_grad():
        toks = torch.tensor([[0, 5, 9, 200, 31]])
        assert torch.equal(off(toks), plain(toks))
