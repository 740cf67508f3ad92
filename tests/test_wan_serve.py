"""A Wan checkpoint folder (a tiny synthetic one, tests/wan_folder.py) through the whole
product: loaded by `load_model`, described by `livereel inspect`, served over WebRTC to
an aiortc client (hello, a prompt switch by re-cache, the camera refused as the page
says), its recorded session replayed to the very frames that were streamed, and a
timeline exported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytest_asyncio
import torch
from fakes import Played, clients, real_server, started, until  # noqa: F401 (fixtures)

pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")

from model.sampling import Sampling  # noqa: E402
from wan_folder import SETTINGS, make_wan_folder  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_wan_folder(tmp_path_factory.mktemp("wan") / "tiny-wan")


@pytest.fixture(scope="module")
def wan_model(folder):
    from model import load_model

    return load_model(folder)


def test_the_folder_loads_with_its_settings(wan_model, folder, capsys):
    from model.wan.model import WanModel
    from streamer.cli import main

    assert isinstance(wan_model, WanModel)
    cfg = wan_model.config
    assert cfg.frame_size == (SETTINGS["height"], SETTINGS["width"]) and cfg.recipe.name == "longlive"
    assert (cfg.dit.heads, cfg.name) == (2, str(folder))
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "Wan checkpoint folder" in out and "nothing more: it streams" in out and "longlive (livereel.json)" in out


def test_a_folder_without_its_vae_says_what_it_lacks(folder, tmp_path):
    from model import CheckpointError, load_model

    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("self_forcing_dmd.pt", "livereel.json", "tokenizer", "text_encoder"):
        (partial / name).symlink_to(folder / name)
    with pytest.raises(CheckpointError, match="lacks the Wan VAE: Wan2.1_VAE.pth"):
        load_model(partial)


@torch.no_grad()
def test_a_switch_changes_the_frames_after_it_and_not_before(wan_model):
    """Streams are deterministic: the same seed with and without a switch at chunk 2 make the
    same frames before it and different ones from it on."""
    def frames(switch: bool) -> list[np.ndarray]:
        gen = Sampling().generator(wan_model, seed=3)
        gen.set_prompt("a cat sleeps on a warm windowsill")
        out = []
        for i in range(4):
            if switch and i == 2:
                gen.set_prompt("waves crash against dark rocks under a grey sky")
            out.append(gen.next_frames())
        return out

    a, b = frames(False), frames(True)
    assert a[0].shape == (12, SETTINGS["height"], SETTINGS["width"], 3)
    assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2]))
    assert all(np.abs(x.astype(int) - y).mean() > 1.0 for x, y in zip(a[2:], b[2:]))


@pytest_asyncio.fixture
async def server(wan_model, started, tmp_path):  # noqa: F811
    server = real_server(wan_model, Sampling(), max_sessions=2, record_dir=tmp_path)
    server.port = await started(server)
    return server


@pytest.mark.asyncio
async def test_served_hello_switch_camera_and_replay_equal_to_live(server, clients, wan_model, tmp_path,  # noqa: F811
                                                                     monkeypatch):
    from streamer.export import render
    from streamer.replay import load_log

    recorder = Played(monkeypatch)
    played = recorder.frames
    c = await clients(server.port).open(prompt="a red fox runs across the snowy field at dawn", seed=7)
    hello = c.seen[0]
    assert (hello["size"], hello["width"]) == (SETTINGS["height"], SETTINGS["width"])
    assert hello["camera"] is False and "no camera input" in hello["camera_note"]
    assert "vocabulary" not in hello and "words" not in hello  # umT5 reads any wording: no hint
    await recorder.new_frames(14)
    assert (c.frames[-1].height, c.frames[-1].width) == (SETTINGS["height"], SETTINGS["width"])
    c.send({"type": "prompt", "text": "the camera pans over a quiet harbour with boats"})
    assert "words" not in await c.expect("applied", what="prompt")
    await recorder.new_frames(14)
    await c.close()
    await until(lambda: (tmp_path / f"{c.session}.jsonl").exists(), "the session log")

    header, events = load_log(tmp_path / f"{c.session}.jsonl")
    assert header["recipe"]["name"] == "longlive" and header["width"] == SETTINGS["width"]
    gen = Sampling(header["steps"], header["warm_start"], header["guidance"]).generator(wan_model, header["seed"])
    replayed = list(render(gen, events, max(played) + 1))
    assert len(played) >= 24
    for index, frame in played.items():
        assert np.array_equal(replayed[index], frame), f"frame {index} differs"


def test_export_and_replay_commands_on_the_folder(folder, tmp_path):
    import av

    from streamer.cli import main

    timeline = {"seed": 2, "duration": 2.0, "events": [
        {"at": 0, "prompt": "a cat sleeps on a warm windowsill"},
        {"at": 1.0, "prompt": "a blue cube drifting over the desert at night"}]}
    (tmp_path / "t.json").write_text(json.dumps(timeline))
    assert main(["export", str(tmp_path / "t.json"), "-o", str(tmp_path / "out.mp4"), "--checkpoint", str(folder),
                 "--decoder", "tae"]) == 0
    with av.open(str(tmp_path / "out.mp4")) as f:
        stream = f.streams.video[0]
        n = sum(1 for _ in f.decode(stream))
        assert (stream.height, stream.width, n) == (SETTINGS["height"], SETTINGS["width"], 32)
