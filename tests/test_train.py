"""The training stages run end to end on the debug preset: VAE, then DiT (with its rollout
probe), resume, --init-from and --export to a loadable checkpoint."""

import csv
import json

import pytest

from model.checkpoint import load_model
from streamer.cli import main as cli


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("vae")
    assert cli(["train", "vae", "--preset", "debug", "--run", str(run), "--steps", "3", "--batch", "2",
                "--frames", "4", "--crop", "32", "--pool", "4"]) == 0
    assert (run / "result" / "vae.safetensors").is_file()
    return run / "result"


def dit_args(run, vae, steps):
    return ["train", "dit", "--preset", "debug", "--run", str(run), "--vae", str(vae), "--steps", str(steps),
            "--batch", "2", "--pool", "4", "--pool-frames", "12", "--sample-every", "2"]


def test_dit_trains_resumes_and_exports(vae_run, tmp_path):
    run = tmp_path / "dit"
    assert cli(dit_args(run, vae_run, 2)) == 0
    assert json.loads((run / "state.json").read_text())["step"] == 2
    rows = list(csv.DictReader((run / "probe.csv").open()))
    assert [r["step"] for r in rows] == ["2"] and float(rows[0]["std"]) >= 0
    assert (run / "samples" / "step000002.mp4").stat().st_size > 0
    with pytest.raises(SystemExit, match="--resume"):
        cli(dit_args(run, vae_run, 4))
    assert cli(dit_args(run, vae_run, 4) + ["--resume"]) == 0
    meta = json.loads((run / "state.json").read_text())
    assert meta["step"] == 4 and meta["hours"] > 0
    out = tmp_path / "exported"
    assert cli(dit_args(run, vae_run, 4) + ["--export", str(out)]) == 0
    model = load_model(out)
    assert model.config.name == "debug"


def test_init_from_starts_a_new_run_from_another(vae_run, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli(dit_args(first, vae_run, 2)) == 0
    assert cli(dit_args(second, vae_run, 2) + ["--init-from", str(first)]) == 0
    assert json.loads((second / "state.json").read_text())["init_from"] == str(first)
    with pytest.raises(SystemExit, match="no run state"):
        cli(dit_args(tmp_path / "third", vae_run, 2) + ["--init-from", str(tmp_path / "missing")])
