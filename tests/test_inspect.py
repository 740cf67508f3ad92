"""`livereel inspect`: livereel folders and every Wan layout described from shapes;
bad files are one line on stderr and status 2."""

import json
import math

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors import safe_open

from model.checkpoint import CHECKPOINTS
from model.wan.config import RECIPES
from streamer.cli import main
from test_wan_loader import Payload, lora_for, tiny_diffusers, to_original, write_layout


@pytest.fixture(scope="module")
def model():
    return tiny_diffusers()


@pytest.fixture(scope="module")
def original(model):
    return {k: v.clone() for k, v in to_original(model.state_dict()).items()}


def run(capsys, *argv):
    rc = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(capsys, *argv, match):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("livereel inspect: ") and "Traceback" not in err
    assert match in err, err


def test_livereel_folder(capsys):
    with safe_open(str(CHECKPOINTS / "default" / "model.safetensors"), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    rc, out, _ = run(capsys, "default")
    assert rc == 0
    assert "family    livereel" in out and "config    default" in out and f"{params:,}" in out
    rc, out, _ = run(capsys, CHECKPOINTS / "default" / "model.safetensors", "--json")
    report = json.loads(out)
    assert rc == 0 and report["family"] == "livereel" and report["config_name"] == "default"
    assert report["params"] == params


@pytest.mark.parametrize("layout", ["self-forcing", "rolling", "krea", "comfyui", "diffusers-pipeline",
                                    "diffusers-sharded", "wan-base"])
def test_wan_layouts(layout, capsys, tmp_path, model, original):
    path, heads, word = write_layout(layout, tmp_path, model, original)
    heads_flag = ["--heads", heads] if heads else []
    rc, out, err = run(capsys, path, *heads_flag)
    assert rc == 0, err
    assert "family    wan" in out and word in out and "size      custom" in out
    # a DiT alone: what else a folder needs to stream it
    assert "to stream it, a folder" in out and "Wan2.1_VAE.pth" in out and "models_t5_umt5-xxl-enc-bf16.pth" in out
    assert all(name in out for name in RECIPES)
    rc, out, _ = run(capsys, path, "--json", *heads_flag)
    report = json.loads(out)
    assert rc == 0 and report["family"] == "wan" and word in report["layout"]
    assert report["params"] == sum(p.numel() for p in model.parameters())
    assert report["config"]["dim"] == 24 and report["config"]["heads"] == 2
    assert set(report["recipes"]) == set(RECIPES)
    assert report["recipes"]["longlive"]["sink"] == 3 and report["recipes"]["krea"]["switch"] == "blend"


@pytest.mark.parametrize("name,heads,ffn,layers,size,recipe", [
    ("self_forcing_dmd.pt", 12, 8960, 30, "1.3B", "self-forcing"),
    ("longlive_base.pt", 12, 8960, 30, "1.3B", "longlive"),
    ("krea-realtime-video-14b.pt", 40, 13824, 40, "14B", "krea")])
def test_real_sizes_without_their_data(name, heads, ffn, layers, size, recipe, capsys, tmp_path):
    with torch.device("meta"):
        big = WanTransformer3DModel(num_attention_heads=heads, attention_head_dim=128, ffn_dim=ffn,
                                    num_layers=layers)
    state = {"model." + k: v for k, v in to_original(big.state_dict()).items()}
    torch.save({"generator_ema": state}, tmp_path / name)  # shapes only: a few kB
    rc, out, err = run(capsys, tmp_path / name, "--json")
    report = json.loads(out)
    assert rc == 0, err
    assert report["size"] == size and report["recipe"] == recipe and report["heads_from"] == "dim / 128"
    assert report["params"] == sum(p.numel() for p in big.parameters())
    assert any("--lora" in n for n in report["needs"]) == (recipe == "longlive")
    rc, out, _ = run(capsys, tmp_path / name)
    assert f"size      {size}" in out and "generator_ema" in out


def test_lora(capsys, tmp_path, original):
    torch.save({"generator": {"model." + k: v for k, v in original.items()}}, tmp_path / "longlive_base.pt")
    lora = {"base_model.model." + k: v for k, v in lora_for(original).items()}
    torch.save({"generator_lora": lora}, tmp_path / "lora.pt")
    rc, out, err = run(capsys, tmp_path / "longlive_base.pt", "--heads", 2, "--lora", tmp_path / "lora.pt")
    assert rc == 0, err
    assert "rank 3, 20 targets" in out and "pass it with --lora" not in out
    lora["base_model.model.blocks.7.ffn.0.lora_A.weight"] = torch.zeros(3, 24)
    lora["base_model.model.blocks.7.ffn.0.lora_B.weight"] = torch.zeros(32, 3)
    torch.save({"generator_lora": lora}, tmp_path / "lora.pt")
    assert_refused(capsys, tmp_path / "longlive_base.pt", "--heads", 2, "--lora", tmp_path / "lora.pt",
                   match="blocks.7.ffn.0.weight")


def test_bad_files(capsys, tmp_path, model, original):
    for layout in ("krea", "causvid"):
        path, _, _ = write_layout(layout, tmp_path, model, original)
        path.write_bytes(path.read_bytes()[:1000])
        assert_refused(capsys, path, "--heads", 2, match="unreadable")

    marker = tmp_path / "executed"
    torch.save({"generator": {**original, "x": Payload(marker)}}, tmp_path / "evil.pt")
    assert_refused(capsys, tmp_path / "evil.pt", match="refused")
    assert not marker.exists()

    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    assert_refused(capsys, tmp_path / "other.pt", match="unknown checkpoint family")
    (tmp_path / "notes.txt").write_text("hello")
    assert_refused(capsys, tmp_path / "notes.txt", match="unknown checkpoint family")
    assert_refused(capsys, tmp_path / "nowhere.pt", match="no such file")

    bad = {**original, "blocks.0.ffn.2.weight": torch.zeros(24, 31)}
    torch.save({"generator": bad}, tmp_path / "bad.pt")
    assert_refused(capsys, tmp_path / "bad.pt", "--heads", 2, match="blocks.0.ffn.2.weight (24, 31)")
    path, _, _ = write_layout("krea", tmp_path, model, original)
    assert_refused(capsys, path, match="head count")
