"""`livereel train decoder`: the decoder sharpened on the checkpoint's own rollouts, on the
debug preset: it trains, probes, resumes and exports a checkpoint whose DiT, text
encoder and VAE encoder are the ones it started from."""

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model import world
from model.checkpoint import load_model, save_model
from model.train.decoder import (WARM_FRAMES, PairCritic, attribute_ids, decode_window, frame_pairs,
                                 rollout_plan)
from streamer.cli import main as cli


def decoder_args(run, ckpt, steps, *extra):
    return ["train", "decoder", "--checkpoint", str(ckpt), "--run", str(run), "--rollouts", "2",
            "--rollout-frames", "8", "--pool", "3", "--pool-frames", "8", "--steps", str(steps),
            "--batch", "2", "--window", "3", "--adv-start", "1", "--probe-every", "2", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return save_model(load_model("debug"), tmp_path_factory.mktemp("ckpt") / "start")


def test_decoder_trains_probes_resumes_and_exports(start, tmp_path):
    run = tmp_path / "run"
    assert cli(decoder_args(run, start, 2)) == 0
    assert json.loads((run / "state.json").read_text())["step"] == 2
    rows = list(csv.DictReader((run / "probe.csv").open()))
    assert [r["step"] for r in rows] == ["2"]
    assert float(rows[0]["vs_world"]) > 0 and float(rows[0]["first_vs_world"]) > 0
    assert (run / "strip-000002.png").stat().st_size > 0 and (run / "probe.png").is_file()
    with pytest.raises(SystemExit, match="--resume"):
        cli(decoder_args(run, start, 4))
    assert cli(decoder_args(run, start, 4, "--resume", "--adv-world", "0.05")) == 0  # the paired loss too
    assert json.loads((run / "state.json").read_text())["step"] == 4
    assert [r["step"] for r in csv.DictReader((run / "probe.csv").open())] == ["2", "4"]

    with pytest.raises(SystemExit, match="--checkpoint"):  # onto another model than the one it learned on
        cli(decoder_args(run, "debug", 4, "--export", str(tmp_path / "wrong")))
    assert not (tmp_path / "wrong").exists()
    out = tmp_path / "sharpened"
    assert cli(decoder_args(run, start, 4, "--export", str(out))) == 0
    before, after = load_model(start), load_model(out)
    trained = {k[len("decoder."):]: v for k, v in load_file(run / "state.safetensors").items()
               if k.startswith("decoder.")}
    for k, v in after.vae.decoder.state_dict().items():
        assert torch.equal(v, trained[k]), k
    changed = [k for k, v in before.vae.decoder.state_dict().items() if not torch.equal(v, trained[k])]
    assert changed, "four steps changed nothing in the decoder"
    for part in ("dit", "text"):
        for k, v in getattr(before, part).state_dict().items():
            assert torch.equal(v, getattr(after, part).state_dict()[k]), (part, k)
    for k, v in before.vae.encoder.state_dict().items():
        assert torch.equal(v, after.vae.encoder.state_dict()[k]), k


@pytest.mark.parametrize("flags, message", [
    (["--window", "9"], "--window"),
    (["--adv", "-1"], "--adv"),
    (["--adv-world", "101"], "--adv-world"),
    (["--keep-scale", "0"], "--keep-scale"),
    (["--minutes", "0"], "--minutes"),
])
def test_flags_are_checked_before_any_work(start, tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        cli(decoder_args(tmp_path / "run", start, 2, *flags))
    assert not (tmp_path / "run").exists()


def test_export_without_a_run_says_so(start, tmp_path):
    with pytest.raises(SystemExit, match="no run state"):
        cli(decoder_args(tmp_path / "none", start, 2, "--export", str(tmp_path / "out")))


def test_decode_window_carries_the_state_of_the_frames_before():
    model = load_model("debug")
    d = model.config.dit
    z = torch.randn(1, WARM_FRAMES + 3, d.latent_channels, d.latent_size, d.latent_size)
    whole = model.vae.decoder(z, [None])[0]
    assert torch.allclose(decode_window(model.vae.decoder, z), whole[:, WARM_FRAMES:], atol=1e-5)
    with torch.no_grad():  # the debug decoder's temporal mix starts as the identity: give it a say
        model.vae.decoder.mix.conv.weight.normal_(std=0.1)
    whole = model.vae.decoder(z, [None])[0]
    cold = model.vae.decoder(z[:, WARM_FRAMES:], [None])[0]
    assert torch.allclose(decode_window(model.vae.decoder, z), whole[:, WARM_FRAMES:], atol=1e-5)
    assert not torch.allclose(cold[:, 0], whole[:, WARM_FRAMES], atol=1e-3)


def test_attribute_ids_name_each_value_and_unnamed_ones():
    ids = attribute_ids("a red ball bouncing over a meadow by day under clear skies")
    named = world.parse_prompt("a red ball bouncing over a meadow by day under clear skies")
    for a, i in zip(world.ATTRIBUTES, ids):
        assert i == (world.VOCAB[a].index(named[a]) if a in named else len(world.VOCAB[a]))
    assert attribute_ids("") == [len(world.VOCAB[a]) for a in world.ATTRIBUTES]


def test_critic_scores_pairs_and_reads_the_attributes():
    critic = PairCritic(width=8)
    x = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    pairs = frame_pairs(x)
    assert pairs.shape == (4, 6, 32, 32)
    assert torch.equal(pairs[0, 3:], x[0, 1]) and torch.equal(pairs[1, :3], x[0, 1])
    a = torch.tensor([attribute_ids("a red ball over the desert by day")] * 4)
    b = torch.tensor([attribute_ids("a blue cube over the ocean at night in the rain")] * 4)
    with torch.no_grad():
        for e in critic.embed:
            e.weight.normal_()
        sa, sb = critic(pairs, a), critic(pairs, b)
    assert sa.shape == (4, 16)
    assert not torch.allclose(sa, sb)


def test_rollout_plan_pans_zooms_and_switches_at_the_evals_speeds():
    rng = np.random.default_rng(0)
    plans = [rollout_plan(rng, 64, 16) for _ in range(30)]
    segs = [s for p in plans for s in p]
    assert all(sum(s["frames"] for s in p) == 64 for p in plans)
    speeds = {round(abs(v) * world.REF_SIZE / 16, 6) for s in segs for v in s["pan"] if v}
    assert speeds <= {1.0, 2.0, 3.0, 4.0} and len(speeds) > 1
    assert any(s["zoom"] for s in segs) and any(s["pan"] == (0.0, 0.0) and not s["zoom"] for s in segs)
    assert any(len({s["prompt"] for s in p}) > 1 for p in plans)
    for s in segs:  # every attribute named, so the critic is told the whole scene
        assert set(world.parse_prompt(s["prompt"])) == set(world.ATTRIBUTES)
