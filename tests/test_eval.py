"""Control-fidelity metrics, the shipped attribute classifier, and `livereel eval`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model import eval as ev
from model import world
from model.world import Scene

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def classifier():
    return ev.load_classifier()


def _texture(biome: str = "forest") -> np.ndarray:
    return (world.biome_texture(biome) * 255).astype(np.float64)


# ------------------------------------------------------------------ camera


@pytest.mark.parametrize("d", [(5, -3), (0, 0), (-2, 4)])
def test_measure_shift_integer(d):
    tex = _texture()
    a = tex[100:228, 100:228]
    b = tex[100 + d[1] : 228 + d[1], 100 + d[0] : 228 + d[0]]  # b(x) = a(x + d)
    dx, dy = ev.measure_shift(a.astype(np.uint8), b.astype(np.uint8))
    assert abs(dx - d[0]) < 0.1 and abs(dy - d[1]) < 0.1


SUBPIXEL = 0.25
"""px: the measure cleans thin features (falling weather) first, which bends sub-pixel
shifts on clean textures by up to 0.2 px (0.1 without), and halves its error on the world."""


@pytest.mark.parametrize("d", [(1.3, -0.6), (-2.5, 0.25)])
def test_measure_shift_subpixel_fourier(d):
    g = _texture("grassland").mean(-1)
    ky, kx = np.fft.fftfreq(g.shape[0])[:, None], np.fft.fftfreq(g.shape[1])[None, :]
    shifted = np.fft.ifft2(np.fft.fft2(g) * np.exp(2j * np.pi * (kx * d[0] + ky * d[1]))).real  # g(x + d)
    dx, dy = ev.measure_shift(g[150:278, 150:278], shifted[150:278, 150:278])
    assert abs(dx - d[0]) < SUBPIXEL and abs(dy - d[1]) < SUBPIXEL


@pytest.mark.parametrize("biome", world.BIOMES)
def test_measure_shift_subpixel_world_camera(biome):
    cams = np.array([[200.0, 300.0, 0.0], [202.3, 298.6, 0.0]])
    a, b = (world.render_background(biome, cams).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    dx, dy = ev.measure_shift(a, b)
    assert abs(dx - 2.3) < SUBPIXEL and abs(dy + 1.4) < SUBPIXEL


def test_measure_shift_with_object_in_view():
    scene = Scene("city", "day", "clear", "star", "red", "orbiting")
    frames = world.WorldStream(scene, seed=3).render(4, (3.0, -2.0, 0.0))
    for f in range(1, 4):
        dx, dy = ev.measure_shift(frames[f - 1], frames[f])
        assert abs(dx - 3.0) < 0.2 and abs(dy + 2.0) < 0.2


def test_measure_zoom_direction_and_size():
    scene = Scene("forest", "day", "clear", "ball", "blue", "drifting")
    stream = world.WorldStream(scene, seed=1)
    zin = stream.render(5, (0.0, 0.0, 0.03))
    zout = stream.render(5, (0.0, 0.0, -0.03))
    assert ev.measure_zoom(zin[0], zin[4]) == pytest.approx(0.12, abs=0.02)
    assert ev.measure_zoom(zout[0], zout[4]) == pytest.approx(-0.12, abs=0.02)


def test_camera_error_on_ground_truth():
    gen = ev.WorldGenerator(seed=2, size=128, fps=16, frames_per_chunk=8)
    frames, cmds = [], []
    for pan, zoom in (((0.0, 0.0), 0.0), ((0.25, 0.0), 0.0), ((0.0, -0.5), 0.0), ((0.0, 0.0), 0.32)):
        gen.set_camera(pan=pan, zoom=zoom)
        frames.append(gen.next_frames())
        cmds += [(pan[0] * 8, pan[1] * 8, zoom / 16)] * 8
    out = ev.camera_error(np.concatenate(frames), np.array(cmds))
    assert out["pan_frames"] == 16 and out["zoom_frames"] == 1  # disjoint 4-frame pairs inside the zoom
    assert out["pan_direction_accuracy"] == 1.0 and out["zoom_direction_accuracy"] == 1.0
    assert out["pan_error_px"] < 0.3 and out["still_error_px"] < 0.3
    assert out["pan_speed_ratio"] == pytest.approx(1.0, abs=0.1)


# ------------------------------------------------------------------ prompts and switches


def _labels(**cols):
    return {a: np.array(v, dtype=object) for a, v in cols.items()}


def test_prompt_adherence_counts_named_attributes_only():
    labels = _labels(colour=["red", "red", "blue", "red"], shape=["ball", "cube", "ball", "ball"],
                     biome=["ocean"] * 4)
    out = ev.prompt_adherence(labels, "a red ball")
    assert out["per_attribute"] == {"colour": 0.75, "shape": 0.75}
    assert out["all"] == 0.5 and out["mean"] == 0.75
    assert out["misread"] == {"colour": {"as": "blue", "share": 0.25}, "shape": {"as": "cube", "share": 0.25}}
    per_frame = ev.prompt_adherence(labels, ["a red ball", "a red cube", "a blue ball", "ocean"])
    assert per_frame["all"] == 1.0 and per_frame["misread"] == {}
    cubes = ev.prompt_adherence(_labels(shape=["cube", "cube", "star", "ball"]), "a red ball")
    assert cubes["misread"]["shape"] == {"as": "cube", "share": 0.5}
    assert ev.adherence_cell(0.25, cubes["misread"]["shape"]) == "25.0% (misread most as cube: 50.0%)"
    assert ev.adherence_cell(1.0, None) == "100.0%"


def test_switch_latency_constructed():
    labels = _labels(colour=["red"] * 10 + ["blue", "red"] + ["blue"] * 8, shape=["ball"] * 20)
    # switch commanded at frame 7; blue flickers at 10, holds from 12
    assert ev.switch_latency(labels, 7, "a blue ball", "a red ball") == 5
    assert ev.switch_latency(labels, 7, "a blue ball", "a red ball", stable=1) == 3
    assert ev.switch_latency(labels, 12, "a blue ball") == 0
    assert ev.switch_latency(labels, 7, "a green ball", "a red ball") is None


def test_switch_latency_on_world_frames(classifier):
    a = Scene("desert", "day", "clear", "cube", "red", "drifting")
    b = Scene("ocean", "day", "clear", "cube", "blue", "drifting")
    stream = world.WorldStream(a, seed=4)
    frames = [stream.render(15)]  # the switch is commanded at 12; the new scene appears at 15
    stream.set_scene(b)
    frames.append(stream.render(10))
    frames = np.concatenate(frames)
    labels = ev.classify(frames, classifier)
    assert ev.switch_latency(labels, 12, "a blue cube over the ocean", "a red cube in the desert") == 3
    assert ev.transition_smoothness(frames, 15) > 3  # a hard cut


def test_transition_smoothness_of_a_crossfade():
    a = np.full((30, 16, 16, 3), 40, np.uint8)
    ramp = np.linspace(40, 200, 30)[:, None, None, None]
    assert ev.transition_smoothness(np.broadcast_to(ramp, a.shape).astype(np.uint8), 15) < 1.5


def test_bad_frames():
    frames = world.WorldStream(Scene("forest", "night", "rain", "ball", "red", "bouncing"), seed=0).render(4)
    assert ev.bad_frames(frames)["black"] == 0 and ev.bad_frames(frames)["noise"] == 0
    rng = np.random.default_rng(0)
    frames[1] = 0
    frames[2] = rng.integers(0, 256, frames[2].shape)
    out = ev.bad_frames(frames)
    assert out["black_frames"] == [1] and out["noise_frames"] == [2]


# ------------------------------------------------------------------ revisit, flicker, drift


def test_revisit_identical_and_different():
    frames = world.WorldStream(Scene("city", "day", "clear", "ball", "red", "bouncing"), seed=0).render(2)
    same = ev.revisit_consistency(frames[:1], frames[:1])
    assert same["psnr"] == float("inf") and same["ssim"] == pytest.approx(1.0)
    other = world.WorldStream(Scene("city", "day", "clear", "ball", "red", "bouncing"), seed=9).render(1)
    diff = ev.revisit_consistency(frames[:1], other)
    assert diff["psnr"] < 20 and diff["ssim"] < 0.5


def test_ground_truth_revisit_is_exact_but_for_the_object():
    stream = world.WorldStream(Scene("grassland", "day", "clear", "star", "white", "drifting"), seed=3)
    first = stream.render(4)
    stream.render(32, (4.0, 0.0, 0.0))
    stream.render(32, (-4.0, 0.0, 0.0))
    back = stream.render(4)
    out = ev.revisit_consistency(first, back)
    assert out["psnr_trimmed"] > 40 and out["ssim"] > 0.75  # the object is a tenth of the view


def test_flicker():
    still = np.repeat(world.WorldStream(Scene("desert", "day", "clear", "ball", "red", "drifting")).render(1), 6, 0)
    assert ev.flicker(still) == 0.0
    frames = still.copy()
    frames[3] = frames[3] // 2
    mask = np.array([False, True, True, False, False, True])  # pairs (0,1), (1,2), (4,5)
    assert ev.flicker(frames, mask) == 0.0
    assert ev.flicker(frames) > 0


def test_drift_curves_and_sharpness():
    frames = world.WorldStream(Scene("city", "sunset", "clear", "cube", "yellow", "orbiting")).render(40)
    labels = _labels(biome=["city"] * 40, colour=["yellow"] * 20 + ["red"] * 20)
    out = ev.drift_curves(frames, labels, "a yellow cube in the city", fps=10, window_s=2.0)
    assert len(out["windows"]) == 2
    assert out["adherence_first"] == 1.0 and out["adherence_last"] == 0.0
    assert out["sharpness_ratio_last_first"] == pytest.approx(1.0, abs=0.2)
    blurred = torch.nn.functional.avg_pool2d(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), 3, 1, 1)
    blurred = blurred.permute(0, 2, 3, 1).numpy().astype(np.uint8)
    assert ev.sharpness(blurred).mean() < 0.5 * ev.sharpness(frames).mean()


def test_attribute_trends_separate_a_decline_from_scatter():
    """A steady decline shows as the line's change; windows that only scatter about a level
    (first high, last low) show a change near 0 and their spread."""
    falling = [{"start_s": 60.0 * i, "per_attribute": {"weather": 1.0 - 0.05 * i}} for i in range(10)]
    out = ev.attribute_trends(falling)["weather"]
    assert out["change"] == pytest.approx(-0.45) and out["spread"] == pytest.approx(0.0, abs=1e-9)
    level = [0.75, 0.6, 0.7, 0.55, 0.7, 0.6, 0.72, 0.58, 0.7, 0.56]  # first 75%, last 56%
    scatter = [{"start_s": 60.0 * i, "per_attribute": {"weather": v}} for i, v in enumerate(level)]
    out = ev.attribute_trends(scatter)["weather"]
    assert abs(out["change"]) < 0.1 < level[0] - level[-1]
    assert 0.04 < out["spread"] < 0.1
    two = ev.attribute_trends(falling[:2])["weather"]
    assert math.isnan(two["change"]) and math.isnan(two["spread"])


def test_sharpness_against_the_ground_truth_per_camera_state():
    """The model's sharpness over the world's on the same frames: 1 for the same frames,
    under 1 for blurred ones, split into still and panning frames by the commands."""
    frames = world.WorldStream(Scene("city", "day", "clear", "cube", "red", "drifting")).render(8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1).permute(0, 2, 3, 1).numpy().astype(np.uint8)
    blurred[:4] = frames[:4]  # still frames sharp, panning frames blurred
    cmd = np.zeros((8, 3))
    cmd[4:, 0] = 2.0
    run = ev.Run("control-0", "control", "p", [])

    def rec(f):
        return ev.Recording(run, f, ["p"] * 8, cmd, [], [0])

    truth = ev.sharpness_summary([rec(frames)])
    assert truth["all"] == pytest.approx(ev.sharpness(frames).mean())
    same = ev.sharpness_against(ev.sharpness_summary([rec(frames)]), truth)
    assert same == pytest.approx({"all": 1.0, "still": 1.0, "panning": 1.0})
    ratio = ev.sharpness_against(ev.sharpness_summary([rec(blurred)]), truth)
    assert ratio["still"] == pytest.approx(1.0) and ratio["panning"] < 0.5
    assert ratio["panning"] < ratio["all"] < 1.0
    no_pan = ev.sharpness_summary([ev.Recording(run, frames, ["p"] * 8, np.zeros((8, 3)), [], [0])])
    assert np.isnan(no_pan["panning"]) and no_pan["still"] == pytest.approx(truth["all"])


def test_streak_index_sees_blur_along_the_pan():
    """Frames smeared along the pan lose their gradients along it: the index rises for a
    blur along the commanded pan and falls for one across it; still or zooming frames
    are not counted."""
    frames = world.WorldStream(Scene("forest", "day", "clear", "cube", "red", "drifting")).render(6)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    along_x = torch.nn.functional.avg_pool2d(x, (1, 7), 1, (0, 3)).permute(0, 2, 3, 1).numpy().astype(np.uint8)
    along_y = torch.nn.functional.avg_pool2d(x, (7, 1), 1, (3, 0)).permute(0, 2, 3, 1).numpy().astype(np.uint8)
    right = np.tile([2.0, 0.0, 0.0], (6, 1))
    sharp, smeared, crossed = (ev.streak_index(f, right) for f in (frames, along_x, along_y))
    assert smeared > 2 * sharp and crossed < 0.5 * sharp
    down = np.tile([0.0, -3.0, 0.0], (6, 1))  # a vertical pan: the roles swap
    assert ev.streak_index(along_y, down) > 2 * ev.streak_index(frames, down)
    assert np.isnan(ev.streak_index(frames, np.zeros((6, 3))))  # no pan, no figure
    assert np.isnan(ev.streak_index(frames, np.tile([1.0, 0.0, 0.02], (6, 1))))  # a zoom is not a pan


def test_sticking_sees_fine_detail_that_stays_on_the_screen_while_panning():
    """Texture that moves with the pan averages out over a window; a pattern fixed on the
    screen (what a VAE decoder draws on blurred latents) survives it."""
    base = world.WorldStream(Scene("forest", "day", "clear", "cube", "red", "drifting")).render(1)[0]
    moving = np.stack([np.roll(base, -3 * i, axis=1) for i in range(32)])
    yy, xx = np.mgrid[:base.shape[0], :base.shape[1]]
    overlay = (40 * ((xx // 2 + yy // 2) % 2))[..., None]  # a fine checker, fixed on the screen
    stuck = np.clip(moving.astype(np.float64) * 0.3 + overlay, 0, 255).astype(np.uint8)
    right = np.tile([3.0, 0.0, 0.0], (32, 1))
    assert ev.sticking(moving, right) < 0.4 < 0.8 < ev.sticking(stuck, right)
    assert ev.sticking(stuck[:1].repeat(32, 0), right) > 0.99  # nothing moved: all of it stays
    assert np.isnan(ev.sticking(moving, np.zeros((32, 3))))  # no pan, no figure
    assert np.isnan(ev.sticking(moving[:10], right[:10]))  # shorter than a window


# ------------------------------------------------------------------ classifier


def test_classifier_is_small_and_safetensors():
    d = ev.DEFAULT_CLASSIFIER_DIR
    assert (d / "classifier.safetensors").stat().st_size < 2_000_000
    cfg = json.loads((d / "config.json").read_text())
    assert set(cfg["vocab"]) == set(ev.CLASSIFIED)


def test_classifier_accuracy_on_held_out_ground_truth(classifier):
    # render_clip seeds 5000..5149: clips training never rendered (it trains on random_frames)
    acc = ev.classifier_accuracy(classifier, range(5000, 5150), frames_per_clip=3)
    for a in ("biome", "time", "weather", "colour"):
        assert acc[a] >= 0.98, acc
    assert acc["shape"] >= 0.9, acc


# ------------------------------------------------------------------ scenario and CLI


def test_prompt_file_and_scenario(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# comment\na red ball over the sea\n\na blue cube at night -> a green star in the rain\n")
    chains = ev.read_prompt_file(f)
    assert chains == [["a red ball over the sea"], ["a blue cube at night", "a green star in the rain"]]
    runs = ev.build_scenario(0, 0.5, fps=16, frames_per_chunk=12, chains=chains)
    assert [r.kind for r in runs] == ["control", "control", "revisit", "drift"]
    assert all(s.frames % 12 == 0 for r in runs for s in r.segments)
    assert sum(s.frames for s in runs[-1].segments) == pytest.approx(0.5 * 60 * 16, abs=24)
    for r in runs:  # every zoom is undone, so pans run at zoom 0
        assert sum(s.zoom * s.frames for s in r.segments) == pytest.approx(0.0)
    assert world.parse_prompt(runs[2].prompt)["weather"] == "clear"
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(ValueError):
        ev.read_prompt_file(tmp_path / "empty.txt")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "streamer.cli", "eval", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_ground_truth_writes_every_field(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball bouncing over snow at night -> a yellow ball in the desert by day\n")
    out = tmp_path / "out.json"
    res = _cli("--ground-truth", "--prompts", str(prompts), "--minutes", "0.1", "--json", str(out),
               "--plots", str(tmp_path / "plots"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "adherence: all attributes" in res.stdout
    # the drift run's prompt (the first of the chain) renders, every attribute, throughout
    row = next(line for line in res.stdout.splitlines() if line.startswith("drift: per attribute first/last"))
    assert "biome 100.0%/100.0%" in row and "colour 100.0%/100.0%" in row, row
    doc = json.loads(out.read_text())
    assert set(doc) == {"scenario", "classifier", "ground_truth"}
    gt = doc["ground_truth"]
    for key in ("adherence", "switch", "bad_frames", "camera", "revisit", "flicker", "drift", "series"):
        assert key in gt
    assert gt["adherence"]["all"] >= 0.95
    # the scene holds while panning; the world's own streak index is near 1 (isotropic textures)
    assert gt["adherence_still"]["all"] >= 0.95 and gt["adherence_panning"]["all"] >= 0.95
    assert 0.5 < gt["streak"] < 2.0
    assert gt["sticking"] < 0.5  # the world's texture moves with its camera
    assert "streak while panning" in res.stdout and "adherence still / panning" in res.stdout
    assert gt["switch"]["count"] == 1 and gt["switch"]["followed"] == 1
    assert gt["switch"]["latency_frames_max"] <= 1
    assert gt["bad_frames"]["black"] == 0 and gt["bad_frames"]["noise"] == 0
    # the measure's own error on the world (the object, a quarter of the view since v2, and
    # falling weather move on their own): about 0.5 px/frame with thin features cleaned first
    assert gt["camera"]["pan_error_px"] < 1.0 and gt["camera"]["pan_direction_accuracy"] >= 0.9
    assert gt["camera"]["zoom_direction_accuracy"] >= 0.95
    assert gt["revisit"]["psnr_trimmed"] == "inf" or gt["revisit"]["psnr_trimmed"] > 30  # JSON has no inf
    assert set(gt["drift"]) >= {"windows", "adherence_first", "adherence_last", "sharpness_ratio_last_first"}
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["adherence.png", "camera.png", "drift.png"]


def test_cli_scores_a_model_with_and_without_memory(tmp_path):
    """A checkpoint's scores (debug preset: the figures mean nothing, the fields must be
    there), including the revisit with the memory bank switched off."""
    out = tmp_path / "out.json"
    res = _cli("--checkpoint", "debug", "--minutes", "0.1", "--json", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "revisit PSNR / SSIM, memory off" in res.stdout
    model = json.loads(out.read_text())["model"]
    for key in ("adherence", "switch", "camera", "revisit", "revisit_memory_off", "drift", "vae_ceiling",
                "prompt_binding", "sharpness", "sharpness_vs_ground_truth"):
        assert key in model
    assert set(model["sharpness_vs_ground_truth"]) == {"all", "still", "panning", "vae"}
    assert all(v > 0 for v in model["sharpness_vs_ground_truth"].values())
    assert "sharpness against ground truth" in res.stdout
    assert set(model["revisit_memory_off"]) == {"psnr", "psnr_trimmed", "ssim"}
    assert set(model["prompt_binding"]) == {"context", "first_chunk"}
    assert "object colour from the prompt, teacher-forced, first chunk, t=1" in res.stdout


class _Lossless(torch.nn.Module):
    """An autoencoder that keeps every pixel, or (`blank`) one that keeps none."""

    def __init__(self, blank: bool = False):
        super().__init__()
        self.blank = blank

    def encode(self, x):
        return torch.zeros_like(x) if self.blank else x

    def decode(self, z):
        return z


def test_vae_ceiling_is_the_classifiers_accuracy_through_the_autoencoder(classifier):
    seeds = range(1_000_000, 1_000_003)
    lossless = ev.vae_ceiling(_Lossless(), classifier, seeds, frames_per_clip=4)
    assert lossless == ev.classifier_accuracy(classifier, seeds, frames_per_clip=4)
    assert lossless["colour"] >= 0.9
    blank = ev.vae_ceiling(_Lossless(blank=True), classifier, seeds, frames_per_clip=4)
    assert blank["colour"] < 0.5 and blank["biome"] < 0.5
    # the sharpness the autoencoder keeps: all of it, or none (a flat picture)
    assert ev.vae_sharpness(_Lossless(), seeds=seeds, frames_per_clip=4) == pytest.approx(1.0)
    assert ev.vae_sharpness(_Lossless(blank=True), seeds=seeds, frames_per_clip=4) < 0.01


def test_cli_rejects_bad_input(tmp_path):
    res = _cli("--ground-truth", "--minutes", "0", cwd=tmp_path)
    assert res.returncode != 0 and "--minutes" in res.stderr
    res = _cli("--ground-truth", "--prompts", str(tmp_path / "missing.txt"), cwd=tmp_path)
    assert res.returncode != 0 and "prompts" in res.stderr
    res = _cli("--ground-truth", "--classifier", str(tmp_path), cwd=tmp_path)
    assert res.returncode != 0 and "classifier" in res.stderr


def test_the_paraphrase_file_words_the_held_out_scenes_otherwise():
    """examples/paraphrase_prompts.txt names exactly the default held-out scenes, in
    sentences no training caption template makes: the eval's wording comparison."""
    path = Path(__file__).resolve().parent.parent / "examples" / "paraphrase_prompts.txt"
    grammar, free = ev.held_out_prompts(0), ev.read_prompt_file(path)
    assert [len(c) for c in free] == [len(c) for c in grammar]
    for a, b in zip(grammar, free):
        for p, q in zip(a, b):
            assert ev.world.parse_prompt(q) == ev.world.parse_prompt(p) and q != p, q


def test_cli_refuses_bad_output_paths_before_any_work(tmp_path, monkeypatch, capsys):
    """--json OUT, --plots DIR and --train-classifier DIR: one line naming the flag, exit 2,
    before the classifier or a model loads."""
    import argparse

    import model

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output paths were checked")

    monkeypatch.setattr(model, "load_model", no_work)
    monkeypatch.setattr(ev, "load_classifier", no_work)
    monkeypatch.setattr(ev, "train_classifier", no_work)
    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    a_file = tmp_path / "a.txt"
    a_file.write_text("")
    for argv, flag in [(["--json", str(tmp_path / "missing" / "out.json")], "--json"),
                       (["--json", str(tmp_path)], "--json"),
                       (["--plots", str(a_file)], "--plots"),
                       (["--plots", str(a_file / "plots")], "--plots"),
                       (["--plots", "/proc/livereel-plots"], "--plots"),  # refused even for root
                       (["--train-classifier", str(a_file / "classifier")], "--train-classifier")]:
        assert ev.main(parser.parse_args(["--checkpoint", "debug", *argv])) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"livereel eval: error: {flag} ") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # nothing made


def test_check_folder_accepts_a_folder_to_be_made(tmp_path):
    from model.sample import check_folder, check_output

    assert check_folder(tmp_path / "new" / "plots", "--plots") == tmp_path / "new" / "plots"
    assert check_folder(tmp_path, "--plots") == tmp_path
    assert check_output(tmp_path / "out.json", "--json") == tmp_path / "out.json"
    assert not list(tmp_path.iterdir())  # the checks leave nothing
    with pytest.raises(ValueError, match="--json /proc/x.json: cannot write in /proc"):
        check_output("/proc/x.json", "--json")  # (permission bits say yes to root there)
    assert list(tmp_path.iterdir()) == []  # the check made nothing that stays


class _Identity(torch.nn.Module):
    """A 'VAE' whose latents are the pixels themselves."""

    def encode(self, x):
        return x

    decode = to_dit = from_dit = encode


class _FakeDiT:
    """A DiT whose one-step prediction of the noised last chunk is known: `copy` draws the
    last context frame (a blank picture without context), `bind` renders the caption's
    scene (the world's own picture of the prompt, wherever the context says otherwise)."""

    def __init__(self, mode: str, size: int, chunk: int):
        self.mode, self.size, self.chunk = mode, size, chunk

    def __call__(self, xt, t, text, cam, prior=None):
        K = self.chunk
        if self.mode == "copy":
            src = xt[:, -K - 1 : -K] if xt.shape[1] > K else torch.zeros_like(xt[:, :1])
            target = src.expand(-1, K, -1, -1, -1)
        else:
            motion = world.MotionParams.sample(np.random.default_rng(3))
            base = Scene("forest", "day", "clear", "ball", "red", "drifting")
            frames = [world.render_frames([world.scene_from_prompt(c, base)] * K, np.zeros((K, 3)), np.arange(K),
                                          motion, self.size) for c in text]
            target = torch.from_numpy(np.stack(frames)).movedim(-1, -3).float() / 127.5 - 1
        v = torch.zeros_like(xt)
        tl = t[:, -K:, None, None, None]
        v[:, -K:] = (xt[:, -K:] - target) / tl
        return v


@pytest.mark.parametrize("mode", ["copy", "bind"])
def test_prompt_binding_tells_a_model_that_copies_from_one_that_reads_the_prompt(classifier, mode):
    import dataclasses
    from types import SimpleNamespace

    from model.config import ModelConfig

    cfg = ModelConfig()
    cfg = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, warp_prior=False))
    fake = SimpleNamespace(config=cfg, vae=_Identity(), text=SimpleNamespace(encode=list),
                           dit=_FakeDiT(mode, cfg.image_size, cfg.dit.chunk_frames),
                           parameters=lambda: iter([torch.zeros(1)]))  # on the CPU
    got = ev.prompt_binding(fake, classifier, seeds=range(1_000_100, 1_000_106), ts=(1.0,))
    ctx, first = got["context"]["1"], got["first_chunk"]["1"]
    if mode == "copy":  # the picture's colour whatever the caption says; nothing without context
        assert ctx["prompt"] >= 0.9 and ctx["copied"] >= 0.9 and ctx["changed"] <= 0.1
        assert first["prompt"] <= 0.5
    else:  # the caption's colour, changed or not, with context or without
        for b in (ctx, first):
            assert b["prompt"] >= 0.9 and b["changed"] >= 0.9 and b["copied"] <= 0.1


def test_colour_switches_on_the_world_are_followed(classifier):
    """The streamed colour switch measure: the world recolours its object at once, so
    every switch is followed, its frames show the new colour and none the old."""
    out = ev.colour_switches(lambda: ev.WorldGenerator(seed=4, size=128, fps=16, frames_per_chunk=4),
                             classifier, seed=0, n=3, before=2, after=4)
    assert out["count"] == 3 and out["followed"] == 3
    assert out["drawn_before"] > 0.8 and out["new"] > 0.8 and out["old"] < 0.1
