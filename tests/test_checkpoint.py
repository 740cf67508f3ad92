import json

import pytest
import torch
from safetensors.torch import save_file

from model import CheckpointError, load_model, save_model


def test_round_trip(tmp_path, debug_model):
    path = save_model(debug_model, tmp_path / "ck")
    loaded = load_model(path)
    for (k, a), (_, b) in zip(debug_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert loaded.config == debug_model.config


def test_bad_checkpoints_name_the_problem(tmp_path, debug_model):
    path = save_model(debug_model, tmp_path / "ck")
    state = {k: v.clone() for k, v in debug_model.state_dict().items()}
    name = "dit.blocks.0.attn.qkv.weight"
    state[name] = torch.zeros(3, 3)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=name):
        load_model(path)
    (path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(path)
    (path / "model.safetensors").unlink()
    torch.save({}, path / "model.pt")
    with pytest.raises(CheckpointError, match="pickled"):
        load_model(path)
    with pytest.raises(CheckpointError, match="pickled"):
        load_model(path / "model.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(tmp_path / "nowhere")


def test_truncated_and_wrong_config(tmp_path, debug_model):
    path = save_model(debug_model, tmp_path / "ck")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_model(path)
    save_model(debug_model, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["dit"]["depth"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing tensors"):
        load_model(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="bad config"):
        load_model(path)


def test_debug_preset_is_deterministic():
    a, b = load_model("debug"), load_model("debug")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
