"""model/wan/loader.py: every upstream layout of a Wan2.1 DiT loads to the same tensors.

The oracle is diffusers: a tiny seeded `WanTransformer3DModel` gives the weights in
diffusers naming; a rename written here (and checked against diffusers' own
`convert_wan_transformer_to_diffusers`) gives Wan's naming; each layout is written from
that and must load to it, with the self-attention q/k rows permuted as written here.
"""

import json
import re

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

from model.checkpoint import CheckpointError
from model.wan.config import SIZES, WanConfig
from model.wan.loader import (WanCheckpointError, describe, infer_config, load_wan, merge_lora, n_params,
                              normalise, recognise)
from payload import Payload  # noqa: E402

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
            out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            rope_max_seq_len=32)
TINY_CFG = WanConfig(dim=24, ffn_dim=32, depth=2, heads=2, in_channels=4, out_channels=4, freq_dim=16,
                     text_dim=16)

# diffusers -> Wan, as regex substitutions (written independently of the loader's tables)
RENAME = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.to_q\.", ".q."), (r"\.to_k\.", ".k."), (r"\.to_v\.", ".v."), (r"\.to_out\.0\.", ".o."),
    (r"\.norm2\.", ".norm3."),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
]


def to_original(diffusers_state: dict) -> dict:
    out = {}
    for k, v in diffusers_state.items():
        for pattern, repl in RENAME:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def half_split(t: torch.Tensor, heads: int) -> torch.Tensor:
    hd = t.shape[0] // heads
    perm = torch.cat((torch.arange(0, hd, 2), torch.arange(1, hd, 2)))
    return t.reshape(heads, hd, *t.shape[1:])[:, perm].reshape(t.shape)


def permuted(original: dict, heads: int) -> dict:
    pattern = re.compile(r"blocks\.\d+\.self_attn\.(q|k|norm_q|norm_k)\.(weight|bias)")
    return {k: half_split(v, heads) if pattern.fullmatch(k) else v for k, v in original.items()}


def tiny_diffusers(seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**TINY)
    with torch.no_grad():  # diffusers zero-inits nothing we need, but make every tensor distinct
        for p in model.parameters():
            p.normal_()
    return model


@pytest.fixture(scope="module")
def model() -> WanTransformer3DModel:
    return tiny_diffusers()


@pytest.fixture(scope="module")
def original(model) -> dict:
    return {k: v.clone() for k, v in to_original(model.state_dict()).items()}


@pytest.fixture(scope="module")
def expected(original) -> dict:
    return permuted(original, heads=2)


def test_rename_is_diffusers_own_inverse(model, original):
    back = convert_wan_transformer_to_diffusers(dict(original))
    ours = model.state_dict()
    assert set(back) == set(ours)
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    assert "blocks.0.norm3.weight" in original and "blocks.0.modulation" in original


# --------------------------------------------------------------------------- layouts


def _fsdp(key: str) -> str:
    return "model._fsdp_wrapped_module." + re.sub(r"^(blocks\.\d+\.)", r"\1_fsdp_wrapped_module.", key)


def write_layout(name: str, tmp, model, original) -> tuple:
    """(path to load, heads to pass, a word the layout description holds)."""
    pre = lambda prefix: {prefix + k: v.clone() for k, v in original.items()}  # noqa: E731
    if name == "self-forcing":
        other = {k: torch.zeros_like(v) for k, v in pre("model.").items()}
        torch.save({"generator_ema": pre("model."), "generator": other,
                    "critic": {"model.blocks.0.x.weight": torch.ones(3)}}, tmp / "self_forcing_dmd.pt")
        return tmp / "self_forcing_dmd.pt", 2, "generator_ema"
    if name == "causvid":
        torch.save({"generator": pre("model.")}, tmp / "model.pt")
        return tmp / "model.pt", 2, "(generator)"
    if name == "rolling":
        torch.save({"generator_ema": {_fsdp(k): v.clone() for k, v in original.items()}},
                   tmp / "rolling_forcing_dmd.pt")
        return tmp / "rolling_forcing_dmd.pt", 2, "FSDP"
    if name == "compiled-ddp":
        torch.save(pre("module._orig_mod."), tmp / "plain.pth")
        return tmp / "plain.pth", 2, "plain .pth"
    if name == "krea":
        save_file(pre("model."), str(tmp / "krea-realtime-video.safetensors"))
        return tmp / "krea-realtime-video.safetensors", 2, "Krea"
    if name == "comfyui":
        save_file(pre("model.diffusion_model."), str(tmp / "wan_comfy.safetensors"))
        return tmp / "wan_comfy.safetensors", 2, "ComfyUI"
    if name == "diffusers-pipeline":
        model.save_pretrained(tmp / "pipe" / "transformer")
        return tmp / "pipe", None, "diffusers folder"
    if name == "diffusers-sharded":
        model.save_pretrained(tmp / "tr", max_shard_size="20KB")
        assert len(list((tmp / "tr").glob("*.safetensors"))) > 1
        return tmp / "tr", None, "shards"
    if name == "sharded-index":
        keys = sorted(original)
        shards = {"a.safetensors": keys[::2], "b.safetensors": keys[1::2]}
        for file, ks in shards.items():
            save_file({k: original[k].clone() for k in ks}, str(tmp / file))
        index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index))
        return tmp / "model.safetensors.index.json", 2, "sharded"
    if name == "wan-base":
        (tmp / "base").mkdir()
        save_file(pre(""), str(tmp / "base" / "diffusion_pytorch_model.safetensors"))
        (tmp / "base" / "config.json").write_text(json.dumps(
            {"_class_name": "WanModel", "dim": 24, "num_heads": 2, "num_layers": 2, "ffn_dim": 32,
             "in_dim": 4, "out_dim": 4, "eps": 1e-6, "text_len": 512, "model_type": "t2v"}))
        return tmp / "base", None, "Wan base folder"
    raise AssertionError(name)


LAYOUTS = ["self-forcing", "causvid", "rolling", "compiled-ddp", "krea", "comfyui", "diffusers-pipeline",
           "diffusers-sharded", "sharded-index", "wan-base"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_to_the_same_tensors(layout, tmp_path, model, original, expected):
    path, heads, word = write_layout(layout, tmp_path, model, original)
    cfg, state = load_wan(path, heads=heads)
    assert cfg == TINY_CFG
    assert set(state) == set(expected)
    for k, v in expected.items():
        assert torch.equal(state[k], v), k
    assert not torch.equal(state["blocks.0.self_attn.q.weight"], original["blocks.0.self_attn.q.weight"])
    assert torch.equal(state["blocks.0.cross_attn.q.weight"], original["blocks.0.cross_attn.q.weight"])

    assert recognise(path) == "wan"
    info = describe(path, heads)
    assert word in info.layout
    assert info.config == TINY_CFG and info.size == "custom"
    assert info.params == sum(p.numel() for p in model.parameters())
    if layout == "self-forcing":
        assert info.ignored == ["critic", "generator"]


def test_meta_loading_reads_no_data(tmp_path, model, original):
    path, _, _ = write_layout("krea", tmp_path, model, original)
    cfg, state = load_wan(path, heads=2, device="meta")
    assert cfg == TINY_CFG and all(t.is_meta for t in state.values())


# --------------------------------------------------------------------------- real sizes


@pytest.mark.parametrize("size,heads,ffn,layers,params", [
    ("1.3B", 12, 8960, 30, 1_418_996_800), ("14B", 40, 13824, 40, 14_288_491_584)])
def test_real_sizes_from_meta_shapes(size, heads, ffn, layers, params):
    with torch.device("meta"):  # diffusers' own module: real shapes, no memory
        big = WanTransformer3DModel(num_attention_heads=heads, attention_head_dim=128, ffn_dim=ffn,
                                    num_layers=layers)
    n = sum(p.numel() for p in big.parameters())
    assert n == params
    for state in (big.state_dict(), {"model." + k: v for k, v in to_original(big.state_dict()).items()}):
        cfg = infer_config(normalise(state))
        assert cfg == SIZES[size]
        assert n_params(cfg) == n
    if size == "1.3B":  # the research note: ode_init.pt is 5.68 GB in fp32, i.e. 1.42B
        assert abs(n * 4 / 1e9 - 5.68) < 0.01


def test_heads_from_config_json_or_given(tmp_path, model, original):
    path, _, _ = write_layout("wan-base", tmp_path, model, original)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "num_heads": 4}))
    cfg, state = load_wan(path)
    assert cfg.heads == 4
    assert torch.equal(state["blocks.1.self_attn.k.bias"], half_split(original["blocks.1.self_attn.k.bias"], 4))
    assert load_wan(path, heads=2)[0].heads == 2
    path, _, _ = write_layout("krea", tmp_path, model, original)
    with pytest.raises(WanCheckpointError, match="head count"):
        load_wan(path)


# --------------------------------------------------------------------------- LoRA


def lora_for(original: dict, rank: int = 3, seed: int = 1) -> dict:
    """PEFT keys for every Linear in every block, in Wan's naming without prefixes."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, w in original.items():
        if re.fullmatch(r"blocks\.\d+\.((self|cross)_attn\.[qkvo]|ffn\.[02])\.weight", k):
            target = k.removesuffix(".weight")
            out[f"{target}.lora_A.weight"] = torch.randn(rank, w.shape[1], generator=g)
            out[f"{target}.lora_B.weight"] = torch.randn(w.shape[0], rank, generator=g)
    return out


def merged(original: dict, lora: dict, scale: float) -> dict:
    out = dict(original)
    for k in lora:
        if k.endswith(".lora_A.weight"):
            target = k.removesuffix(".lora_A.weight")
            a, b = lora[k], lora[f"{target}.lora_B.weight"]
            out[f"{target}.weight"] = original[f"{target}.weight"] + scale * (b @ a)
    return out


@pytest.mark.parametrize("form", ["generator_lora", "raw-peft", "raw-model"])
def test_longlive_base_plus_lora(form, tmp_path, original):
    torch.save({"generator": {"model." + k: v.clone() for k, v in original.items()}}, tmp_path / "longlive_base.pt")
    lora = lora_for(original)
    peft = {"base_model.model." + k: v for k, v in lora.items()}
    payload = {"generator_lora": peft, "step": 3000} if form == "generator_lora" else (
        peft if form == "raw-peft" else {"model." + k: v for k, v in lora.items()})
    torch.save(payload, tmp_path / "lora.pt")
    cfg, state = load_wan(tmp_path / "longlive_base.pt", lora=tmp_path / "lora.pt", heads=2)
    want = permuted(merged(original, lora, 1.0), heads=2)
    assert set(state) == set(want)
    for k, v in want.items():
        assert torch.equal(state[k], v), k
    assert not torch.equal(state["blocks.1.ffn.2.weight"], original["blocks.1.ffn.2.weight"])

    _, scaled = load_wan(tmp_path / "longlive_base.pt", lora=tmp_path / "lora.pt", heads=2, lora_alpha=6.0)
    torch.testing.assert_close(scaled["blocks.0.cross_attn.v.weight"],
                               merged(original, lora, 2.0)["blocks.0.cross_attn.v.weight"])


def test_lora_target_absent_from_the_base(original):
    lora = lora_for(original)
    lora["base_model.model.blocks.5.self_attn.q.lora_A.weight"] = torch.zeros(3, 24)
    lora["base_model.model.blocks.5.self_attn.q.lora_B.weight"] = torch.zeros(24, 3)
    with pytest.raises(WanCheckpointError, match=r"absent from the base.*blocks\.5\.self_attn\.q\.weight"):
        merge_lora(original, lora)
    bad_rank = lora_for(original)
    bad_rank["blocks.0.ffn.0.lora_B.weight"] = torch.zeros(32, 4)
    with pytest.raises(WanCheckpointError, match="blocks.0.ffn.0.weight"):
        merge_lora(original, bad_rank)
    with pytest.raises(WanCheckpointError, match="not LoRA"):
        merge_lora(original, {"blocks.0.self_attn.q.weight": torch.zeros(24, 24)})


def test_a_lora_passed_as_the_base_says_so(tmp_path, original):
    torch.save(lora_for(original), tmp_path / "lora.pt")
    with pytest.raises(WanCheckpointError, match="LoRA file"):
        load_wan(tmp_path / "lora.pt", heads=2)


# --------------------------------------------------------------------------- errors


def test_truncated_files(tmp_path, model, original):
    for layout in ("krea", "causvid"):
        path, _, _ = write_layout(layout, tmp_path, model, original)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        for call in (lambda: load_wan(path, heads=2), lambda: describe(path, 2), lambda: recognise(path)):
            with pytest.raises(WanCheckpointError, match="unreadable") as e:
                call()
            assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_wrong_shape_and_missing_tensors_are_named(tmp_path, original):
    bad = dict(original)
    bad["blocks.1.self_attn.k.weight"] = torch.zeros(24, 25)
    del bad["blocks.1.cross_attn.norm_k.weight"]
    torch.save({"generator": bad}, tmp_path / "bad.pt")
    with pytest.raises(WanCheckpointError) as e:
        load_wan(tmp_path / "bad.pt", heads=2)
    msg = str(e.value)
    assert "blocks.1.self_attn.k.weight (24, 25) (needs (24, 24))" in msg
    assert "missing" in msg and "blocks.1.cross_attn.norm_k.weight" in msg
    assert isinstance(e.value, CheckpointError)


def test_unknown_keys_family_i2v_and_nan(tmp_path, original):
    torch.save({"encoder.layer.0.weight": torch.zeros(2), "decoder.bias": torch.zeros(2)}, tmp_path / "other.pt")
    assert recognise(tmp_path / "other.pt") is None
    with pytest.raises(WanCheckpointError, match="unknown.*decoder.bias"):
        load_wan(tmp_path / "other.pt", heads=2)
    assert recognise(tmp_path / "notes.txt") is None

    extra = {**original, "blocks.0.adapter.weight": torch.zeros(2)}
    with pytest.raises(WanCheckpointError, match=r"blocks\.0\.adapter\.weight"):
        normalise(extra)
    with pytest.raises(WanCheckpointError, match=r"two tensors are named head\.modulation"):
        normalise({**original, "model.head.modulation": original["head.modulation"]})
    i2v = {**original, "blocks.0.cross_attn.k_img.weight": torch.zeros(24, 24)}
    with pytest.raises(WanCheckpointError, match="image-to-video"):
        normalise(i2v)

    nan = dict(original)
    nan["head.head.bias"] = torch.full((16,), float("nan"))
    save_file(nan, str(tmp_path / "nan.safetensors"))
    with pytest.raises(WanCheckpointError, match="NaN.*head.head.bias"):
        load_wan(tmp_path / "nan.safetensors", heads=2)
    torch.save({k: v.to("meta") for k, v in original.items()}, tmp_path / "shapes_only.pt")
    with pytest.raises(WanCheckpointError, match="without data"):
        load_wan(tmp_path / "shapes_only.pt", heads=2)



def test_pickle_with_code_is_refused_and_never_run(tmp_path, original):
    marker = tmp_path / "executed"
    torch.save({"generator": {**original, "x": Payload(marker)}}, tmp_path / "evil.pt")
    for call in (lambda: load_wan(tmp_path / "evil.pt", heads=2), lambda: recognise(tmp_path / "evil.pt"),
                 lambda: load_wan(tmp_path / "evil.pt", heads=2, device="meta")):
        with pytest.raises(WanCheckpointError, match="refused.*nothing was executed"):
            call()
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # our own payload: proof that it is live
    assert marker.exists()
