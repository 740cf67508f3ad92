"""The training stages run end to end on the debug preset: VAE, then DiT (with its rollout
probe), resume, --init-from and --export to a loadable checkpoint."""

import csv
import json
import math

import pytest
import torch

from model.camera import CameraCond
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
    assert all(0 <= float(rows[0][k]) <= 1 for k in ("colour_first_chunk", "colour_changed_word", "colour_copied"))
    assert (run / "samples" / "step000002.mp4").stat().st_size > 0
    with pytest.raises(SystemExit, match="--resume"):
        cli(dit_args(run, vae_run, 4))
    old = ["step", "camera_err_px", "direction_ok", "std"]  # a probe.csv from before the binding figures
    (run / "probe.csv").write_text(",".join(old) + "\n" + ",".join(rows[0][k] for k in old) + "\n")
    assert cli(dit_args(run, vae_run, 4) + ["--resume"]) == 0
    rows = list(csv.DictReader((run / "probe.csv").open()))
    assert [r["step"] for r in rows] == ["2", "4"] and all(list(r) == old and None not in r.values() for r in rows)
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


def test_rollout_share_trains_on_the_models_own_chunks(vae_run, tmp_path):
    run = tmp_path / "rollout"
    assert cli(dit_args(run, vae_run, 2) + ["--rollout-share", "1"]) == 0
    rows = list(csv.DictReader((run / "loss.csv").open()))
    assert rows and math.isfinite(float(rows[0]["warm_loss"]))
    with pytest.raises(SystemExit, match="rollout-share"):
        cli(dit_args(tmp_path / "bad", vae_run, 2) + ["--rollout-share", "1.5"])


def test_init_from_and_vae_from_a_model_checkpoint(vae_run, tmp_path):
    first, ckpt, second = tmp_path / "first", tmp_path / "ckpt", tmp_path / "second"
    assert cli(dit_args(first, vae_run, 2)) == 0
    assert cli(dit_args(first, vae_run, 2) + ["--export", str(ckpt)]) == 0
    # the checkpoint folder serves as the VAE and as the starting weights
    args = dit_args(second, ckpt, 1) + ["--init-from", str(ckpt), "--lr", "0"]
    assert cli(args) == 0
    a, b = load_model(ckpt), load_model(second / "result")
    for name, tensor in a.state_dict().items():  # lr 0: the EMA stays the checkpoint's weights
        assert torch.allclose(tensor, b.state_dict()[name]), name


@torch.no_grad()
def test_rollout_context_is_what_streaming_makes(debug_model):
    from model.camera import CameraCond
    from model.sampling import Sampling
    from model.train.dit import rollout_context

    d = debug_model.config.dit
    K, chunks = d.chunk_frames, 3
    frames = (chunks + 1) * K
    pos = torch.stack([torch.tensor([[0.3 * f * (b + 1), 0.1 * f, 0.0] for f in range(frames)]) for b in range(2)])
    cam = CameraCond(pos, torch.diff(pos, dim=1, prepend=pos[:, :1]))
    prompts = ["a red ball over the desert", "a blue cube in the city at night"]
    sampling = Sampling(steps=4, warm_start=3, guidance=1.5)
    latents, priors = rollout_context(debug_model, cam, prompts, chunks, seed=5, sampling=sampling)
    assert priors.shape[1] == frames
    for b in range(2):  # each clip alone, as a stream following its path
        gen = sampling.generator(debug_model, seed=5 + b)  # the same sampler (its anchor too)
        gen.set_prompt(prompts[b])
        gen.follow_path(cam.pos[b], cam.motion[b])
        for i in range(chunks + 1):
            chunk = slice(i * K, (i + 1) * K)
            if i < chunks:
                assert torch.allclose(latents[b, chunk], gen.step()[0], rtol=1e-4, atol=1e-4)
            else:
                gen.flush()  # the last chunk in the cache, then the next chunk's read: its warped prior
                gen._begin(gen.take_controls())
            # the prior each chunk was made from (gen.cache.prior: this chunk's, both guidance rows)
            assert torch.allclose(priors[b, chunk], gen.cache.prior[0], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_rollout_batch_starts_the_next_chunk_as_the_sampler_does(debug_model):
    from model.camera import CameraCond
    from model.generate import flow_schedule
    from model.sampling import Sampling
    from model.train.dit import rollout_batch, rollout_context

    d = debug_model.config.dit
    K, F, B, chunks = d.chunk_frames, d.max_frames, 2, 2
    g = torch.Generator().manual_seed(0)
    shape = (B, F, d.latent_channels, d.latent_size, d.latent_size)
    x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    prior = torch.randn(B, F, d.latent_channels + 1, d.latent_size, d.latent_size, generator=g)
    t = torch.rand(B, F, generator=g)
    pos = torch.stack([torch.tensor([[0.2 * f * (b + 1), 0.0, 0.0] for f in range(F)]) for b in range(B)])
    cam = CameraCond(pos, torch.diff(pos, dim=1, prepend=pos[:, :1]))
    prompts = ["a red ball over the desert", "a white star in the city"]
    inputs = [x.clone() for x in (x0, t, noise, prior)]
    sampling = Sampling()
    xt, target, t_out, prior_out = rollout_batch(debug_model, x0, cam, prompts, t, noise, prior, chunks, 3, sampling)
    made, made_priors = rollout_context(debug_model, cam, prompts, chunks, 3, sampling)

    assert all(torch.equal(a, b) for a, b in zip(inputs, (x0, t, noise, prior)))  # inputs untouched
    ctx, k, later = slice(0, chunks * K), slice(chunks * K, (chunks + 1) * K), slice((chunks + 1) * K, F)
    s = flow_schedule(sampling.steps)[sampling.warm_start]
    tt = t[:, :, None, None, None]
    # the generated context, noised like context; the next chunk at the warm level, where one
    # Euler step lands on the world's frame; the rest teacher-forced
    assert torch.allclose(xt[:, ctx], (1 - tt[:, ctx]) * made + tt[:, ctx] * noise[:, ctx], atol=1e-5)
    assert torch.all(t_out[:, k] == s) and torch.equal(t_out[:, later], t[:, later])
    assert torch.allclose(xt[:, k] - s * target[:, k], x0[:, k], atol=1e-4)
    assert torch.allclose(xt[:, later], (1 - tt[:, later]) * x0[:, later] + tt[:, later] * noise[:, later])
    assert torch.equal(target[:, later], noise[:, later] - x0[:, later])
    # every generated chunk keeps the prior it was made from; the next one its generated one
    assert torch.allclose(prior_out[:, :(chunks + 1) * K], made_priors)
    assert torch.equal(prior_out[:, later], prior[:, later])


def test_object_weights_cover_the_object_and_the_flag_trains(vae_run, tmp_path):
    from model.train.dit import object_weights

    objects = torch.tensor([[[44.0, 47.0, 11.0], [100.0, 20.0, 6.0]]])  # (B, F, 3) view px
    w = object_weights(objects, latent_size=16, downsample=8, weight=5.0)
    assert w.shape == (1, 2, 1, 16, 16) and set(w.unique().tolist()) == {1.0, 6.0}
    ys, xs = torch.nonzero(w[0, 0, 0] > 1, as_tuple=True)
    centres = (torch.stack((xs, ys), 1).float() + 0.5) * 8
    assert ((centres - objects[0, 0, :2]).norm(dim=1) <= 1.3 * 11).all()  # only near the object
    assert (w[0, 0, 0, 5, 5] == 6.0) and (w[0, 0, 0, 12, 12] == 1.0)
    assert torch.equal(object_weights(objects, 16, 8, 0.0), torch.ones(1, 2, 1, 16, 16))  # off: plain mean
    run = tmp_path / "objects"
    assert cli(dit_args(run, vae_run, 2) + ["--object-weight", "5", "--first-chunk-weight", "4"]) == 0
    with pytest.raises(SystemExit, match="object-weight"):
        cli(dit_args(tmp_path / "bad", vae_run, 2) + ["--object-weight", "-1"])
    with pytest.raises(SystemExit, match="first-chunk-weight"):
        cli(dit_args(tmp_path / "bad", vae_run, 2) + ["--first-chunk-weight", "0"])


def test_object_fade_blends_the_object_toward_its_surroundings_and_the_flag_trains(vae_run, tmp_path):
    from model.train.dit import fade_objects

    g = torch.Generator().manual_seed(0)
    z = 0.1 * torch.randn(3, 2, 4, 16, 16, generator=g)
    z[:, :, :, 4:8, 4:8] += 3.0  # an object at (6, 6) latent px = (48, 48) view px, radius 2 latent px
    cover = torch.ones(3, 2, 1, 16, 16)
    objects = torch.tensor([48.0, 48.0, 16.0]).expand(3, 2, 3)
    out = fade_objects(z, cover, objects, downsample=8, amount=torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(out[0], z[0])  # amount 0: untouched
    assert torch.equal(out[:, :, :, 12:, 12:], z[:, :, :, 12:, 12:])  # far from the object: untouched
    inside = (slice(None), slice(None), slice(4, 8), slice(4, 8))
    assert abs(float(out[2][inside].mean())) < 0.3 < 1.4 < float(out[1][inside].mean()) < 1.6  # gone; half
    uncovered = torch.zeros_like(cover)  # where the old view did not cover, nothing is blended
    assert torch.equal(fade_objects(z, uncovered, objects, 8, torch.ones(3)), z)
    run = tmp_path / "fade"
    assert cli(dit_args(run, vae_run, 2) + ["--object-fade", "0.5"]) == 0
    with pytest.raises(SystemExit, match="object-fade"):
        cli(dit_args(tmp_path / "bad", vae_run, 2) + ["--object-fade", "2"])


def test_switch_weights_mark_the_chunk_after_a_prompt_switch(vae_run, tmp_path):
    """--switch-weight: the first chunk under a clip's final caption weighs W where an
    earlier caption came before it (a switch mid-chunk included), 1 elsewhere and on clips
    with one caption throughout."""
    from model.train.dit import switch_weights

    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]]).float()
    w = switch_weights(mask, frames_after=2, weight=4.0)
    assert w.tolist() == [[1, 1, 1, 4, 4, 1, 1, 1], [1] * 8, [1, 1, 4, 4, 1, 1, 1, 1]]
    assert torch.equal(switch_weights(mask, 2, 1.0), torch.ones_like(mask))
    assert cli(dit_args(tmp_path / "switch", vae_run, 2) + ["--switch-weight", "4"]) == 0
    with pytest.raises(SystemExit, match="switch-weight"):
        cli(dit_args(tmp_path / "bad", vae_run, 2) + ["--switch-weight", "0"])


@pytest.mark.parametrize("flags, message", [
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "--device must be"),
    (["--bf16"], "--bf16 needs --device cuda"),
])
def test_device_flags_are_checked_before_any_work(vae_run, tmp_path, flags, message):
    run = tmp_path / "dit"
    with pytest.raises(SystemExit, match=message):
        cli(dit_args(run, vae_run, 2) + flags)
    assert not run.exists()  # refused before the pool was made



def test_object_hint_and_text_aux_go_on_from_a_checkpoint_without_them(vae_run, tmp_path):
    first, ckpt, second = tmp_path / "first", tmp_path / "ckpt", tmp_path / "second"
    assert cli(dit_args(first, vae_run, 2)) == 0
    assert cli(dit_args(first, vae_run, 2) + ["--export", str(ckpt)]) == 0
    args = dit_args(second, ckpt, 1) + ["--init-from", str(ckpt), "--lr", "0", "--object-hint",
                                        "--text-aux", "0.1", "--text-warmup", "3"]
    assert cli(args) == 0
    a, b = load_model(ckpt), load_model(second / "result")
    assert not a.config.dit.object_hint and b.config.dit.object_hint
    old, new = a.dit.prior_embed.weight, b.dit.prior_embed.weight
    p2 = a.config.dit.patch ** 2
    assert new.shape == (old.shape[0], old.shape[1] + p2)
    assert torch.equal(new[:, :old.shape[1]], old) and torch.equal(new[:, old.shape[1]:], torch.zeros_like(new[:, :p2]))
    for name, tensor in a.dit.state_dict().items():  # lr 0: the DiT is the checkpoint's
        if name != "prior_embed.weight":
            assert torch.equal(tensor, b.dit.state_dict()[name]), name
    # the warm-up trained the text encoder alone
    assert any(not torch.equal(t, b.text.state_dict()[n]) for n, t in a.text.state_dict().items())
    rows = list(csv.DictReader((second / "loss.csv").open()))
    assert math.isfinite(float(rows[0]["text_aux"]))
    assert cli(dit_args(second, ckpt, 2) + ["--resume", "--object-hint", "--text-aux", "0.1"]) == 0  # heads resume
    assert json.loads((second / "state.json").read_text())["init_from"] == str(ckpt)  # kept across the resume
    exported = tmp_path / "exported"  # --export builds the run's network, the hint without the flag
    assert cli(dit_args(second, ckpt, 2) + ["--export", str(exported)]) == 0
    assert load_model(exported).config.dit.object_hint
    with pytest.raises(SystemExit, match="trained with --object-hint: resume it with it"):
        cli(dit_args(second, ckpt, 3) + ["--resume", "--text-aux", "0.1"])
    with pytest.raises(SystemExit, match="trained with --text-aux"):
        cli(dit_args(second, ckpt, 3) + ["--resume", "--object-hint"])
    with pytest.raises(SystemExit, match="text-warmup needs"):
        cli(dit_args(tmp_path / "bad", vae_run, 2) + ["--text-warmup", "5"])


def test_hint_shape_trains_resumes_and_exports(vae_run, tmp_path):
    """`--hint-shape`: the run's network has `DiTConfig.hint_shape`, which resume checks and
    export keeps; it shapes the object hint, so it needs `--object-hint`."""
    run, out = tmp_path / "shape", tmp_path / "exported"
    assert cli(dit_args(run, vae_run, 1) + ["--object-hint", "--hint-shape", "--first-chunks", "2"]) == 0
    assert load_model(run / "result").config.dit.hint_shape
    assert math.isfinite(float(list(csv.DictReader((run / "loss.csv").open()))[0]["loss"]))
    with pytest.raises(SystemExit, match="trained with --hint-shape"):
        cli(dit_args(run, vae_run, 2) + ["--resume", "--object-hint"])
    assert cli(dit_args(run, vae_run, 2) + ["--export", str(out)]) == 0
    assert load_model(out).config.dit.hint_shape
    with pytest.raises(SystemExit, match="--hint-shape needs --object-hint"):
        cli(dit_args(tmp_path / "bad", vae_run, 1) + ["--hint-shape"])
    with pytest.raises(SystemExit, match="--first-chunks needs --object-hint"):
        cli(dit_args(tmp_path / "bad", vae_run, 1) + ["--first-chunks", "2"])


def test_guidance_loss_targets_the_teachers_guided_prediction():
    """`--guide`'s loss is 0 for the teacher's own guided prediction at the scale and not
    for its conditional one (unless the scale is 1); clips without a prompt do not count."""
    from model.train.dit import guidance_loss

    model = load_model("debug")
    d = model.config.dit
    teacher = torch.nn.ModuleDict({"text": model.text, "dit": model.dit}).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a model whose prompt matters: the text's cross-attention outputs lifted
        for block in model.dit.blocks:
            block.cross.proj.weight.normal_(0, 0.2)
    B, Fr = 2, d.chunk_frames
    xt = torch.randn(B, Fr, d.latent_channels, d.latent_size, d.latent_size)
    t = torch.full((B, Fr), 0.7)
    cam = CameraCond(torch.zeros(B, Fr, 3), torch.zeros(B, Fr, 3))
    prior = torch.zeros(B, Fr, d.latent_channels + 1, d.latent_size, d.latent_size)
    objects = torch.zeros(B, Fr, 3)
    mask = torch.ones(B, Fr)
    prompts = ["a red ball over the desert by day", "a blue cube in the city at night"]
    with torch.no_grad():
        c = model.dit(xt, t, model.text.encode(prompts), cam, prior=prior)
        u = model.dit(xt, t, model.text.encode(["", ""]), cam, prior=prior)
    assert (c - u).abs().amax() > 1e-3  # the prompt changes the prediction
    args = (cam, prior, objects, mask)
    guided = u + 3.0 * (c - u)
    assert guidance_loss(teacher, guided, xt, t, prompts, *args, 3.0, 1.0, model.config) < 1e-8
    assert guidance_loss(teacher, c, xt, t, prompts, *args, 3.0, 1.0, model.config) > 1e-4
    assert guidance_loss(teacher, c, xt, t, prompts, *args, 1.0, 1.0, model.config) < 1e-8
    # the second clip has no prompt: only the first clip's frames count
    wrong_second = guided.clone()
    wrong_second[1] += 1.0
    assert guidance_loss(teacher, wrong_second, xt, t, [prompts[0], ""], *args, 3.0, 1.0, model.config) < 1e-8
    assert guidance_loss(teacher, c, xt, t, ["", ""], *args, 3.0, 1.0, model.config) == 0


def test_guide_trains_from_its_start_and_resumes(vae_run, tmp_path):
    """`--guide`: a run from a checkpoint learns towards its start's guided predictions; on
    resume the targets come from the same start (the run's `init_from`)."""
    first, ckpt, run = tmp_path / "first", tmp_path / "ckpt", tmp_path / "guided"
    assert cli(dit_args(first, vae_run, 1)) == 0
    assert cli(dit_args(first, vae_run, 1) + ["--export", str(ckpt)]) == 0
    assert cli(dit_args(run, ckpt, 1) + ["--init-from", str(ckpt), "--guide", "1", "--guide-scale", "3"]) == 0
    assert math.isfinite(float(list(csv.DictReader((run / "loss.csv").open()))[0]["loss"]))
    assert cli(dit_args(run, ckpt, 2) + ["--resume", "--guide", "1"]) == 0
    assert json.loads((run / "state.json").read_text())["step"] == 2
    with pytest.raises(SystemExit, match="--guide needs --init-from"):
        cli(dit_args(tmp_path / "bad", vae_run, 1) + ["--guide", "1"])
    with pytest.raises(SystemExit, match="--guide-scale must be in"):
        cli(dit_args(tmp_path / "bad2", vae_run, 1) + ["--init-from", str(ckpt), "--guide", "1", "--guide-scale", "0.5"])


def test_text_heads_learn_the_parsers_labels():
    from model.train.dit import TextHeads, warm_up_text
    from model import world

    model = load_model("debug")
    torch.manual_seed(0)
    heads = TextHeads(model.config.text.dim)
    prompts = ["a red ball bouncing over the desert by day", "", "a blue cube at night"]
    loss = heads.loss(model.text.encode(prompts).pooled, prompts)
    assert loss.item() > 0 and loss.requires_grad
    # only the attributes a prompt names count: "" adds nothing, the partial prompt only its own
    only = heads.loss(model.text.encode(prompts[2:]).pooled, prompts[2:])
    assert set(world.parse_prompt(prompts[2])) == {"colour", "shape", "time"} and only.item() > 0
    before = heads.loss(model.text.encode(prompts).pooled, prompts).item()
    warm_up_text(model, heads, 30, seed=0)
    assert heads.loss(model.text.encode(prompts).pooled, prompts).item() < before


def test_widened_dit_starts_as_the_narrow_one():
    """--init-from a narrower run: the wide DiT computes what the narrow one did (exactly
    without the symmetry-breaking noise, closely with it), and trains."""
    import dataclasses

    from model.camera import CameraCond
    from model.checkpoint import build_model
    from model.config import get_config
    from model.train.dit import widened

    torch.manual_seed(0)
    cfg = get_config("debug")
    narrow = build_model(cfg).eval()
    for p in narrow.dit.parameters():  # adaLN-Zero starts blocks as the identity: make every weight count
        torch.nn.init.normal_(p, std=0.3)
    wide_cfg = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, dim=2 * cfg.dit.dim, heads=2 * cfg.dit.heads))
    wide = build_model(wide_cfg).eval()
    d = cfg.dit
    B, Fr = 2, 2 * d.chunk_frames
    x = torch.randn(B, Fr, d.latent_channels, d.latent_size, d.latent_size)
    t = torch.rand(B, Fr)
    prompts = ["a red ball over the ocean", "snow at night"]
    camera = CameraCond(torch.randn(B, Fr, 3), torch.randn(B, Fr, 3) * 0.1)
    prior = torch.randn(B, Fr, d.prior_channels, d.latent_size, d.latent_size)
    with torch.no_grad():
        ref = narrow.dit(x, t, narrow.encode_prompt(prompts), camera, prior=prior)
        for noise, tol in ((0.0, 1e-5), (0.01, 0.1)):
            wide.dit.load_state_dict(widened(narrow.dit.state_dict(), wide.dit.state_dict(), noise=noise))
            out = wide.dit(x, t, narrow.text.encode(prompts), camera, prior=prior)
            err = float((out - ref).abs().max() / ref.abs().max())
            assert err < tol, (noise, err)
            assert noise == 0 or err > 0  # the noise is there
    with pytest.raises(SystemExit, match="multiple"):
        odd = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, dim=3 * cfg.dit.dim // 2, heads=3))
        widened(narrow.dit.state_dict(), build_model(odd).dit.state_dict())


def test_width_flag_grows_a_run_and_keeps_its_width(vae_run, tmp_path):
    first, wide = tmp_path / "narrow", tmp_path / "wide"
    assert cli(dit_args(first, vae_run, 2)) == 0
    assert cli(dit_args(wide, vae_run, 2) + ["--init-from", str(first), "--width", "64/4"]) == 0
    assert json.loads((wide / "state.json").read_text())["width"] == [64, 4]
    with pytest.raises(SystemExit, match="--width"):  # a resume must keep the width
        cli(dit_args(wide, vae_run, 3) + ["--resume"])
    out = tmp_path / "exported"
    assert cli(dit_args(wide, vae_run, 2) + ["--export", str(out)]) == 0
    assert load_model(out).config.dit.dim == 64
    with pytest.raises(SystemExit):  # head size must stay the preset's
        cli(dit_args(tmp_path / "bad", vae_run, 2) + ["--width", "64/2"])


def test_width_and_object_hint_together_from_a_checkpoint_without_the_hint(vae_run, tmp_path):
    """v1 (narrow, no hint) grown and given the hint channel in one step: the new columns
    first, then the growth, so the wide prior input reads the old channels as v1 did and
    the hint at (nearly) zero."""
    first, ckpt, wide = tmp_path / "first", tmp_path / "ckpt", tmp_path / "wide"
    assert cli(dit_args(first, vae_run, 2)) == 0
    assert cli(dit_args(first, vae_run, 2) + ["--export", str(ckpt)]) == 0
    assert cli(dit_args(wide, ckpt, 1) + ["--init-from", str(ckpt), "--lr", "0", "--width", "64/4",
                                          "--object-hint"]) == 0
    a, b = load_model(ckpt), load_model(wide / "result")
    assert b.config.dit.dim == 2 * a.config.dit.dim and b.config.dit.object_hint
    old, new = a.dit.prior_embed.weight.detach(), b.dit.prior_embed.weight.detach()
    assert new.shape == (2 * old.shape[0], old.shape[1] + a.config.dit.patch ** 2)
    # each width unit copied twice (with 1% noise): both copies read the old channels as v1 did
    for copy in (new[:old.shape[0], :old.shape[1]], new[old.shape[0]:, :old.shape[1]]):
        assert torch.allclose(copy, old, atol=0.05 * float(old.std()))
    assert new[:, old.shape[1]:].abs().max() < 0.05 * float(old.std())


def test_minutes_stops_a_run_early_and_resume_goes_on(vae_run, tmp_path):
    """--minutes sizes a call to a lent machine's time: the state and a result at the step
    reached, the same schedule on --resume."""
    run = tmp_path / "timed"
    assert cli(dit_args(run, vae_run, 6) + ["--minutes", "1e-6"]) == 0
    assert json.loads((run / "state.json").read_text())["step"] == 1  # out of time after the first step
    assert load_model(run / "result").config.name == "debug"
    assert not (run / "probe.csv").exists()  # the rollout probe is left for a step it is due at
    assert cli(dit_args(run, vae_run, 6) + ["--resume"]) == 0
    assert json.loads((run / "state.json").read_text())["step"] == 6
    with pytest.raises(SystemExit, match="--minutes"):
        cli(dit_args(tmp_path / "bad", vae_run, 2) + ["--minutes", "0"])


def test_the_gpu_script_trains_and_its_parts_join_into_a_checkpoint(vae_run, tmp_path):
    """model/train/gpu.sh, the one call a lent GPU machine gets, run here on the CPU with
    the debug preset (its flags after the recipe's replace them): it trains, splits the
    weights into parts the device tool brings back, and --join makes them a checkpoint."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "model" / "train" / "gpu.sh"
    ckpt, out, joined = tmp_path / "ckpt", tmp_path / "out", tmp_path / "joined"
    assert cli(dit_args(tmp_path / "first", vae_run, 1)) == 0
    assert cli(dit_args(tmp_path / "first", vae_run, 1) + ["--export", str(ckpt)]) == 0
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "RUN": str(tmp_path / "run"), "THREADS": "1",
           "MINUTES": "5", "PYTHON": sys.executable}
    flags = ["--preset", "debug", "--vae", str(vae_run), "--init-from", str(ckpt), "--width", "64/4",
             "--pool", "4", "--pool-frames", "12", "--batch", "2", "--steps", "2", "--text-warmup", "1"]
    done = subprocess.run(["bash", str(script), *flags], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir())[:2] == ["config.json", "loss.csv"]
    assert json.loads((out / "state.json").read_text())["step"] == 2
    assert subprocess.run(["bash", str(script), "--join", str(out), str(joined)], timeout=60).returncode == 0
    model = load_model(joined)
    assert model.config.dit.dim == 64 and model.config.dit.object_hint


def test_prior_detail_scales_the_fine_detail_only_and_the_flag_trains(vae_run, tmp_path):
    from model.train.dit import scale_detail

    g = torch.Generator().manual_seed(0)
    smooth = torch.linspace(-1, 1, 16).expand(2, 3, 4, 16, 16).clone()  # a ramp: no detail inside
    z = smooth + 0.2 * torch.randn(2, 3, 4, 16, 16, generator=g)
    out = scale_detail(z, torch.tensor([1.0, 3.0]))
    assert torch.allclose(out[0], z[0], atol=1e-6)  # gain 1: as it was
    detail = lambda x: x - scale_detail(x, torch.zeros(2))  # gain 0: the 3x3 mean (the ramp below checks it)
    ratio = detail(out[1]).std() / detail(z[1]).std()
    assert 2.0 < float(ratio) < 3.5  # the detail grew about 3x (the 3x3 mean of the result moves a little)
    assert torch.allclose(scale_detail(smooth, torch.tensor([0.0, 3.0]))[:, :, :, 1:-1, 1:-1],
                          smooth[:, :, :, 1:-1, 1:-1], atol=1e-5)  # a ramp has no detail to scale
    assert abs(float(out[1].mean() - z[1].mean())) < 0.05  # the picture's level stays
    run = tmp_path / "detail"
    assert cli(dit_args(run, vae_run, 2) + ["--prior-detail", "0.5"]) == 0
    with pytest.raises(SystemExit, match="prior-detail"):
        cli(dit_args(tmp_path / "bad", vae_run, 2) + ["--prior-detail", "1.5"])


def test_prior_blur_softens_the_chosen_clips_only_and_the_flag_trains(vae_run, tmp_path):
    from model.ops import gaussian_blur

    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 8, 16, 16, generator=g)  # a clip's frames and channels as one image's channels
    out = gaussian_blur(z, torch.tensor([0.0, 1.0, 2.0]), mode="replicate")
    assert torch.equal(out[0], z[0])  # sigma 0: as it was
    rough = lambda x: (x[..., 1:, :] - x[..., :-1, :]).abs().mean()  # noqa: E731
    assert rough(out[2]) < rough(out[1]) < 0.5 * rough(z[1])  # softer with sigma
    small = torch.full((1, 1, 4, 4), 0.7)  # a radius above the size: edge copies, a level stays
    assert torch.allclose(gaussian_blur(small, torch.tensor([2.0]), mode="replicate"), small, atol=1e-6)
    ramp = torch.linspace(-1, 1, 16).expand(1, 1, 16, 16)
    assert torch.allclose(gaussian_blur(ramp, torch.tensor([1.0]), mode="replicate")[..., 4:-4], ramp[..., 4:-4],
                          atol=1e-5)
    assert cli(dit_args(tmp_path / "blur", vae_run, 2) + ["--prior-blur", "0.5"]) == 0
    with pytest.raises(SystemExit, match="prior-blur"):
        cli(dit_args(tmp_path / "bad", vae_run, 2) + ["--prior-blur", "-0.1"])


def test_adversarial_losses_train_each_side_on_its_own_loss():
    """One backward of the critic's and the generator's hinge losses: the critic's weights get
    only the critic's gradient (the generator's loss does not reach them), the prediction
    only the generator's; a few steps teach the critic to score real frames above blurred
    ones under their prompt."""
    from model.train.dit import LatentCritic, adversarial_losses

    g = torch.Generator().manual_seed(0)
    critic = LatentCritic(4, 8, width=16).eval()  # eval: the spectral norm's power iteration holds still
    real = torch.randn(16, 4, 8, 8, generator=g)
    text = torch.randn(16, 8, generator=g)
    fake = torch.nn.functional.avg_pool2d(real, 3, 1, 1).requires_grad_(True)  # the blur of the mean
    d_loss, g_loss = adversarial_losses(critic, real, fake, text)
    (d_loss + g_loss).backward()
    fake_grad = fake.grad.clone()
    critic_grads = [p.grad.clone() for p in critic.parameters()]
    fake.grad = None
    critic.zero_grad()
    d_loss2, _ = adversarial_losses(critic, real, fake, text)
    d_loss2.backward()  # the critic's own loss alone
    assert fake.grad is None  # the critic's loss sees the prediction detached
    assert all(torch.allclose(a, p.grad) for a, p in zip(critic_grads, critic.parameters()))
    assert fake_grad.abs().sum() > 0  # the generator's loss moves the prediction
    opt = torch.optim.Adam(critic.parameters(), lr=2e-3)
    critic.train()
    for _ in range(60):
        d_loss, _ = adversarial_losses(critic, real, fake.detach(), text)
        opt.zero_grad()
        d_loss.backward()
        opt.step()
    with torch.no_grad():
        assert critic(real, text).mean() > critic(fake, text).mean() + 0.5


def test_adv_flag_trains_resumes_and_is_checked(vae_run, tmp_path):
    run = tmp_path / "adv"
    assert cli(dit_args(run, vae_run, 2) + ["--adv", "0.3", "--sample-every", "0"]) == 0
    rows = list(csv.DictReader((run / "loss.csv").open()))
    assert rows and math.isfinite(float(rows[0]["adv_d"])) and math.isfinite(float(rows[0]["adv_g"]))
    assert json.loads((run / "state.json").read_text())["adv"] is True
    assert cli(dit_args(run, vae_run, 3) + ["--adv", "0.3", "--sample-every", "0", "--resume"]) == 0
    assert json.loads((run / "state.json").read_text())["step"] == 3
    with pytest.raises(SystemExit, match="--adv"):  # the critic's weights and moments are in the state
        cli(dit_args(run, vae_run, 4) + ["--sample-every", "0", "--resume"])
    with pytest.raises(SystemExit, match="adv-max-t"):
        cli(dit_args(tmp_path / "bad", vae_run, 2) + ["--adv", "0.3", "--adv-max-t", "0.05"])


def test_soft_priors_come_from_the_blurred_picture_for_the_chosen_share(vae_run, tmp_path):
    """`--soft-priors`: a second prior set warped from each clip's picture blurred in pixel
    space (the same coverage, other latents), and `LatentPool.batch` takes a clip's warm
    chunks from it for the asked share of clips; 0 draws nothing (the same data order)."""
    import numpy as np

    from model.train.dit import LatentPool

    run = tmp_path / "soft"
    assert cli(dit_args(run, vae_run, 2) + ["--soft-priors", "0.5", "--soft-sigma", "1", "2"]) == 0
    sharp = np.load(run / "priors.npz")["priors"].astype(np.float32)
    soft = np.load(run / "priors-soft-1-2.npz")["priors"].astype(np.float32)
    assert soft.shape == sharp.shape
    assert np.array_equal(soft[..., -1:, :, :], sharp[..., -1:, :, :])  # the same coverage
    covered = sharp[..., -1:, :, :] > 0
    diff = np.abs(soft[..., :-1, :, :] - sharp[..., :-1, :, :])
    assert float(diff[np.broadcast_to(covered, diff.shape)].mean()) > 1e-3  # other pictures where covered

    pool = LatentPool.__new__(LatentPool)  # the batch logic alone, on marked priors
    n, F_, K = 3, 8, 2
    pool.latents, pool.objects = torch.zeros(n, F_, 4, 4, 4), torch.zeros(n, F_, 3)
    pool.camera, pool.velocity = torch.zeros(n, F_, 3), torch.zeros(n, F_, 3)
    pool.captions = [["a"] * F_ for _ in range(n)]
    pool.priors, pool.soft_priors = torch.zeros(n, F_ - 1, K, 5, 4, 4), torch.ones(n, F_ - 1, K, 5, 4, 4)
    marks = lambda share: pool.batch(np.random.default_rng(0), 64, 6, K, share)[4][:, K:].mean((1, 2, 3, 4))  # noqa: E731
    assert set(marks(0.5).tolist()) == {0.0, 1.0} and 0.25 < float(marks(0.5).mean()) < 0.75
    assert float(marks(0.0).max()) == 0.0 and float(marks(1.0).min()) == 1.0
    with pytest.raises(SystemExit, match="--soft-priors must be in"):
        cli(dit_args(tmp_path / "bad", vae_run, 1) + ["--soft-priors", "2"])
    with pytest.raises(SystemExit, match="--soft-sigma needs"):
        cli(dit_args(tmp_path / "bad2", vae_run, 1) + ["--soft-priors", "0.5", "--soft-sigma", "2", "1"])


def test_teacher_flag_picks_the_guide_teacher_and_a_resume_keeps_it(vae_run, tmp_path):
    """`--teacher`: the --guide loss's frozen weights from another folder than the start
    (here with no --init-from at all); the run records it and a resume uses it again."""
    first, ckpt, run = tmp_path / "first", tmp_path / "ckpt", tmp_path / "taught"
    assert cli(dit_args(first, vae_run, 1)) == 0
    assert cli(dit_args(first, vae_run, 1) + ["--export", str(ckpt)]) == 0
    assert cli(dit_args(run, ckpt, 1) + ["--teacher", str(ckpt), "--guide", "1"]) == 0
    assert json.loads((run / "state.json").read_text())["teacher"] == str(ckpt)
    assert cli(dit_args(run, ckpt, 2) + ["--resume", "--guide", "1"]) == 0
    assert json.loads((run / "state.json").read_text())["teacher"] == str(ckpt)
    with pytest.raises(SystemExit, match="was trained with --teacher"):  # another teacher mid-run: refused
        cli(dit_args(run, ckpt, 3) + ["--resume", "--guide", "1", "--teacher", str(first)])
    with pytest.raises(SystemExit, match="--teacher is the --guide loss's"):
        cli(dit_args(tmp_path / "bad", vae_run, 1) + ["--teacher", str(ckpt)])
