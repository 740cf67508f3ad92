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
from model.eval import measure_shift
from model.train.decoder import (WARM_FRAMES, PairCritic, Rollouts, attribute_ids, decode_window, fourier_shift,
                                 frame_pairs, motion_loss, rollout_plan)
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
    assert before.vae.display is None and after.config.vae.display_decoder
    trained = {k[len("decoder."):]: v for k, v in load_file(run / "state.safetensors").items()
               if k.startswith("decoder.")}
    for k, v in after.vae.display.state_dict().items():  # the trained decoder draws the frames shown
        assert torch.equal(v, trained[k]), k
    changed = [k for k, v in before.vae.decoder.state_dict().items() if not torch.equal(v, trained[k])]
    assert changed, "four steps changed nothing in the decoder"
    for part in ("dit", "text", "vae.encoder", "vae.decoder"):  # the first decoder stays: the stream keeps its picture
        for k, v in before.get_submodule(part).state_dict().items():
            assert torch.equal(v, after.get_submodule(part).state_dict()[k]), (part, k)

    from model.inspect import format_report, inspect

    shown = format_report(inspect(out, None, None))
    assert "display   a display decoder" in shown and "display" not in format_report(inspect(start, None, None))

    # a second run on the exported model sharpens its display decoder further, from where it is
    again = tmp_path / "again"
    assert cli(decoder_args(again, out, 2)) == 0
    assert cli(decoder_args(again, out, 2, "--export", str(tmp_path / "twice"))) == 0
    twice = load_model(tmp_path / "twice")
    for k, v in after.vae.decoder.state_dict().items():
        assert torch.equal(v, twice.vae.decoder.state_dict()[k]), k
    assert any(not torch.equal(v, twice.vae.display.state_dict()[k]) for k, v in after.vae.display.state_dict().items())


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


def test_fourier_shift_moves_as_the_eval_measures_a_camera_move():
    x = torch.randn(2, 3, 16, 16)
    moved = fourier_shift(x, torch.tensor([[1.0, 0.0], [0.0, -2.0]]))  # out(p) = x(p + d)
    assert torch.allclose(moved[0], torch.roll(x[0], -1, dims=-1), atol=1e-5)
    assert torch.allclose(moved[1], torch.roll(x[1], 2, dims=-2), atol=1e-5)
    rng = np.random.default_rng(0)
    picture = np.kron(rng.uniform(0, 255, (16, 16, 3)), np.ones((4, 4, 1))).astype(np.float32)  # blocky, 64 px
    t = torch.from_numpy(picture).permute(2, 0, 1)[None]
    b = fourier_shift(t, torch.tensor([[1.5, -0.75]]))[0].permute(1, 2, 0).numpy()
    assert np.allclose(measure_shift(picture, b), (1.5, -0.75), atol=0.15)


def test_motion_loss_asks_the_added_detail_to_move_with_the_camera():
    detail = torch.randn(1, 1, 3, 24, 24)
    d = torch.tensor([[[float("nan"), float("nan")], [1.5, 0.0], [1.5, 0.0]]])  # frame 0 has no pair
    step = fourier_shift(detail[:, 0], d[:, 1])
    following = torch.cat([detail, step[:, None], fourier_shift(step, d[:, 1])[:, None]], 1)
    assert float(motion_loss(following, d)) < 1e-5
    stuck = detail.expand(1, 3, 3, 24, 24)  # detail fixed on the screen under a pan
    assert float(motion_loss(stuck, d)) > 0.3
    assert float(motion_loss(stuck, torch.zeros(1, 3, 2))) < 1e-6  # the camera still: it may stay
    assert float(motion_loss(stuck, torch.full((1, 3, 2), float("nan")))) == 0.0  # no pair counts


def test_rollouts_cached_without_commands_replay_their_plans(tmp_path):
    """Rollouts cached before the commands were stored get them by drawing their plans
    again, checked against the prompts stored; a cache the plans do not match is refused."""
    model = load_model("debug")
    path = tmp_path / "rollouts.npz"
    made = Rollouts(model, 2, 8, seed=5, path=path)
    assert made.commanded.shape == (2, 8, 3)
    data = dict(np.load(path))
    stored = data.pop("commanded")
    np.savez(path, **data)
    assert np.array_equal(Rollouts(model, 2, 8, seed=5, path=path).commanded, stored)
    with pytest.raises(SystemExit, match="cannot be drawn again"):
        Rollouts(model, 2, 8, seed=6, path=path)
    shifts = made.shifts(tmp_path / "shifts.npy")
    assert shifts.shape == (2, 8, 2) and np.isnan(shifts[:, 0]).all()
    still = (made.commanded[:, 1:] == 0).all(-1)
    assert (shifts[:, 1:][still] == 0).all()
