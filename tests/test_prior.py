"""The warped prior in pixel space: a sub-latent-pixel pan moves the picture it decodes to."""

import numpy as np
import pytest
import torch

from model import load_model
from model.camera import warp_frame
from model.eval import measure_shift
from model.generate import Generator
from model.prior import clip_pixel_prior, pixel_prior, warped_prior
from model.sampling import Sampling
from model.vae import to_uint8
from model.world import render_background, typical_object_radius


@pytest.fixture(scope="module")
def shipped():
    return load_model("default")


def picture(vae, z):
    return to_uint8(vae.decode(vae.from_dit(z[:, None]))[0, 0]).numpy()


@torch.no_grad()
@pytest.mark.parametrize("pan_px", [2.0, 4.0])
def test_pixel_prior_moves_the_picture_by_the_pan(shipped, pan_px):
    """A pan of a quarter or half a latent pixel: the pixel-space prior decodes to the old
    picture moved as far as the world moved (phase correlation within 0.5 px); the latent
    warp of the same frame barely moves it, which is why the prior is made in pixel space."""
    m = shipped
    cfg = m.config
    cams = np.array([[400.0, 300.0, 0.0], [400.0 + pan_px, 300.0, 0.0]])
    frames = render_background("forest", cams, size=cfg.image_size)  # (2, 3, S, S) in [0, 1]
    truth = measure_shift(to_uint8(frames[0] * 2 - 1).numpy(), to_uint8(frames[1] * 2 - 1).numpy())
    z0 = m.vae.to_dit(m.vae.encode((frames[:1] * 2 - 1)[None]))[:, 0]  # (1, C, h, w)
    unit = cfg.pixels_per_token
    pos0 = torch.tensor(cams[:1] / [unit, unit, 1], dtype=torch.float32)
    pos1 = torch.tensor(cams[1:] / [unit, unit, 1], dtype=torch.float32)[None]
    before = picture(m.vae, z0)
    prior = pixel_prior(m.vae, z0, pos0, torch.ones(1), pos1, cfg.dit.grid)
    assert prior.shape == (1, 1, cfg.dit.latent_channels + 1, cfg.dit.latent_size, cfg.dit.latent_size)
    cover = prior[0, 0, -1]
    assert cover[:, :-1].min() == 1 and cover[:, -1].max() == 0  # new ground on the right only
    moved = measure_shift(before, picture(m.vae, prior[:, 0, :-1]))
    latent = warp_frame(z0, pos0, torch.ones(1), pos1, cfg.dit.grid)[:, 0, :-1]
    moved_latent = measure_shift(before, picture(m.vae, latent))
    assert abs(truth[0] - pan_px) < 0.5 and abs(truth[1]) < 0.5  # the measure's own sign
    assert abs(moved[0] - truth[0]) < 0.5 and abs(moved[1]) < 0.5
    assert abs(moved_latent[0]) < abs(moved[0]) - 0.5


@torch.no_grad()
def test_clip_priors_are_the_chunk_by_chunk_priors(debug_model):
    """The training path's clip priors equal the prior of each chunk made from the frame
    before it, and the first chunk has none."""
    m = debug_model
    d = m.config.dit
    K, n = d.chunk_frames, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, n * K, d.latent_channels, d.latent_size, d.latent_size, generator=g)
    from model.camera import CameraCond

    pos = (torch.randn(2, n * K, 3, generator=g) * torch.tensor([0.3, 0.3, 0.02])).cumsum(1)
    clip = clip_pixel_prior(m.vae, x, CameraCond(pos, torch.zeros_like(pos)), K, d.grid)
    assert clip.shape == (2, n * K, d.latent_channels + 1, d.latent_size, d.latent_size)
    assert clip[:, :K].abs().max() == 0
    for c in range(1, n):
        one = pixel_prior(m.vae, x[:, c * K - 1], pos[:, c * K - 1], torch.ones(2), pos[:, c * K:(c + 1) * K], d.grid)
        assert torch.allclose(clip[:, c * K:(c + 1) * K], one, atol=1e-5)


@torch.no_grad()
def test_object_hint_marks_a_streams_first_chunk_and_starts_as_the_model_without_it():
    """`DiTConfig.object_hint`: the first chunk's prior carries a disk at the view's centre,
    later chunks (a prior to warp) none, and after a reset the disk again. With the new
    input's columns at zero (as --init-from widens them) the stream is the old model's."""
    import dataclasses

    from model.checkpoint import LiveReel
    from model.prior import object_disk

    old = load_model("debug")
    cfg = old.config
    cfg = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, object_hint=True))
    new = LiveReel(cfg).eval()
    sd = old.state_dict()
    w = sd["dit.prior_embed.weight"]
    sd["dit.prior_embed.weight"] = torch.cat((w, torch.zeros(w.shape[0], cfg.dit.patch ** 2)), 1)
    new.load_state_dict(sd)
    streams = [m.generator(Sampling(), seed=3) for m in (old, new)]
    hints = []
    for i in range(4):
        if i == 3:
            for g in streams:
                g.reset(5)
        frames = [g.next_frames() for g in streams]
        np.testing.assert_array_equal(frames[0], frames[1])
        assert streams[0].cache.prior.shape[2] + 1 == streams[1].cache.prior.shape[2]
        hints.append(streams[1].cache.prior[:, :, -1])
    d = cfg.dit
    c = torch.tensor(d.latent_size / 2.0)
    r = torch.tensor(typical_object_radius(cfg.image_size) / cfg.vae.downsample)
    for f in range(d.chunk_frames):  # the world's typical object at the centre, on every frame
        torch.testing.assert_close(hints[0][0, f], object_disk(c, c, r, d.latent_size))
    assert hints[0].amax() > 0.5 and hints[0][0, 0, 0, 0] == 0
    assert torch.equal(hints[1], torch.zeros_like(hints[1])) and torch.equal(hints[2], torch.zeros_like(hints[2]))
    assert torch.equal(hints[3], hints[0])  # after a reset: a first chunk again
    disk = object_disk(torch.tensor(4.0), torch.tensor(3.0), torch.tensor(2.0), 8)  # 1 inside, 0 outside, a soft rim
    assert disk[2:4, 3:5].eq(1).all() and disk[0, 0] == 0 and disk[7, 7] == 0
    assert 0 < disk[1, 5] < 1 and disk.sum() == pytest.approx(torch.pi * 2.0**2, rel=0.1)


@torch.no_grad()
def test_a_switch_of_the_objects_colour_or_shape_redraws_it():
    """With the object hint, the chunk after a switch that changes the object's colour or
    shape takes no warped prior and the centre hint, as a stream's first chunk (its K/V
    context kept): the prior would carry the old object into it. Other switches (the
    weather) and a model without the hint keep the prior; replay makes the same frames."""
    import dataclasses

    from model.checkpoint import LiveReel

    cfg = load_model("debug").config
    cfg = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, object_hint=True))
    torch.manual_seed(0)
    model = LiveReel(cfg).eval()

    def stream(switches):
        g = model.generator(Sampling(), seed=3)
        g.set_prompt("a red ball over the meadow by day")
        out, priors, records = [g.next_frames()], [], []
        for text in switches:
            g.set_prompt(text)
            out.append(g.next_frames())
            priors.append(g.cache.prior.clone())
            records.append([a for a in g.applied if a["what"] == "prompt"][0])
        return np.concatenate(out), priors, records

    frames, priors, records = stream(["a blue ball over the meadow by day", "a blue cube over the meadow by day",
                                      "a blue cube over the meadow by day in the rain"])
    centre = model.centre_hint(torch.zeros(1), cfg.dit.chunk_frames)
    for prior in priors[:2]:  # colour, then shape: nothing warped, the object drawn at the centre
        assert torch.equal(prior[:, :, :-1], torch.zeros_like(prior[:, :, :-1]))
        torch.testing.assert_close(prior[:, :, -1], centre)
    assert priors[2][:, :, -2].amax() == 1 and torch.equal(priors[2][:, :, -1], torch.zeros_like(centre))
    assert [r.get("redraw", False) for r in records] == [True, True, False]
    assert model.redraws_object("a red ball", "a crimson ball") is False  # the same colour in other words
    np.testing.assert_array_equal(stream(["a blue ball over the meadow by day"])[0], frames[:2 * len(frames) // 4])
    assert not load_model("debug").redraws_object("a red ball", "a blue cube")  # no hint: the prior stays


def test_object_coverage_is_each_shapes_silhouette():
    """The world's silhouettes on the latent grid: a ball covers its area, a triangle stands
    apex up, and no two shapes' hints are alike."""
    from model import world
    r, hints = world.shape_radius("ball", 128), {}
    for shape in world.SHAPES:
        hints[shape] = world.object_coverage(shape, 64.0, 64.0, world.shape_radius(shape, 128), 16, 8)
        assert hints[shape].shape == (16, 16) and 0 <= hints[shape].min() and hints[shape].max() <= 1
    assert hints["ball"].sum().item() == pytest.approx(np.pi * r * r / 64, rel=0.05)
    tri = hints["triangle"]
    rows = tri.sum(1)[tri.sum(1) > 0.5]  # apex up: each row at least as wide as the one above
    assert len(rows) >= 4 and rows[0] < 0.5 * rows[-2] and (rows[1:-1].diff() > 0).all()
    names = list(hints)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (hints[a] - hints[b]).abs().sum() > 1.5, (a, b)
    with pytest.raises(ValueError, match="needs object_hint"):
        from model.config import DiTConfig

        DiTConfig(hint_shape=True)


@torch.no_grad()
def test_a_shape_hint_draws_the_shape_the_prompt_names():
    """`DiTConfig.hint_shape`: a stream's first chunk, and the chunk after a switch of the
    object, get the silhouette of the shape their prompt names at the view's centre (that
    shape's size); a prompt that names none gets the disk; a model without it, the disk."""
    import dataclasses

    from model import world
    from model.checkpoint import LiveReel

    cfg = load_model("debug").config
    cfg = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, object_hint=True, hint_shape=True))
    torch.manual_seed(0)
    model = LiveReel(cfg).eval()
    d, size = cfg.dit, cfg.image_size

    def silhouette(shape):
        return world.object_coverage(shape, size / 2, size / 2, world.shape_radius(shape, size), d.latent_size,
                                 cfg.vae.downsample)

    g = model.generator(Sampling(), seed=1)
    g.set_prompt("a red star over the meadow by day")
    g.next_frames()
    for f in range(d.chunk_frames):
        torch.testing.assert_close(g.cache.prior[0, f, -1], silhouette("star"))
    g.set_prompt("a red triangle over the meadow by day")
    g.next_frames()
    torch.testing.assert_close(g.cache.prior[0, 0, -1], silhouette("triangle"))
    g.set_prompt("a red triangle over the meadow by day in the rain")  # the same object: its prior, no hint
    g.next_frames()
    assert torch.equal(g.cache.prior[:, :, -1], torch.zeros_like(g.cache.prior[:, :, -1]))
    plain = dataclasses.replace(cfg, dit=dataclasses.replace(d, hint_shape=False))
    disk = LiveReel(plain).centre_hint(torch.zeros(1), 1, "a red star")
    torch.testing.assert_close(model.centre_hint(torch.zeros(1), 1, "something red over the sea"), disk)
    star = model.centre_hint(torch.zeros(1), 1, "a red star")
    torch.testing.assert_close(star[0, 0], silhouette("star"))
    assert (star - disk).abs().sum() > 0.2 * disk.sum()
    assert torch.equal(model.centre_hint(torch.ones(1), 1, "a red star"), torch.zeros_like(disk))


def shown_model(model):
    """`model` with `DiTConfig.prior_picture = "shown"` (same weights)."""
    import dataclasses

    from model.checkpoint import LiveReel

    cfg = dataclasses.replace(model.config, dit=dataclasses.replace(model.config.dit, prior_picture="shown"))
    out = LiveReel(cfg).eval()
    out.load_state_dict(model.state_dict())
    return out


@torch.no_grad()
def test_streaming_warps_the_picture_it_showed(debug_model, monkeypatch):
    """With `prior_picture = "shown"` each chunk's prior warps the last frame as the viewer
    saw it (the streaming decode's picture, kept by `KVCache.show`): no frame is decoded
    twice, a prompt switch's re-cache included. A chunk made with no decode before it
    decodes the frame alone; so does every chunk of a "decoded" model, which keeps none."""
    import model.prior as prior

    alone = []
    real = prior.decode_frame
    monkeypatch.setattr(prior, "decode_frame", lambda vae, frame: alone.append(1) or real(vae, frame))
    m = shown_model(debug_model)
    d = m.config.dit
    gen = m.generator(Sampling(), seed=2)
    gen.set_camera(pan=(0.5, 0.25))
    for i in range(d.max_frames // d.chunk_frames + 2):
        if i == 4:
            gen.set_prompt("a blue cube drifting across the desert")
        frames = gen.next_frames()
        latent, picture = gen.cache.shown[-1]
        np.testing.assert_array_equal(to_uint8(picture[0]).numpy(), frames[-1])  # what the viewer got
    assert not alone and gen.cache.prior.abs().amax() > 0
    gen.step()  # its prior: the shown picture, warped to the chunk's camera
    want = warped_prior(m.vae, picture, gen.cache.frame_pos, gen.cache.frame_valid, gen._cam.pos, d.grid)
    torch.testing.assert_close(gen.cache.prior, want)
    assert not alone
    gen.step()  # no decode of the chunk before: the frame is decoded alone
    assert len(alone) == 1
    old = debug_model.generator(Sampling(), seed=2)
    for _ in range(3):
        old.next_frames()
    assert len(alone) == 1 + 2 and old.cache.shown == []  # from the second chunk on, one decode each


@torch.no_grad()
def test_the_shown_picture_is_the_streaming_decodes_and_training_makes_the_same_priors(shipped):
    """With the shipped VAE (its temporal mixing trained) the picture shown differs from
    the frame decoded alone, and a "shown" model's priors are made from the former:
    exactly the priors the training path makes of the same clip (`clip_pixel_prior`).
    A stream's first chunk has nothing to warp: its prior is zeros, as the warp's of an
    invalid frame. (A model with the object hint, as v2 is, has one more channel: the
    hint, a disk at the view's centre on the first chunk, zeros after it.)"""
    from model.camera import CameraCond

    m = shown_model(shipped)
    d = m.config.dit
    gen = m.generator(Sampling(), seed=1)
    gen.set_camera(pan=(0.25, 0.1))
    xs, pos, motion, priors = [], [], [], []
    for _ in range(4):
        x = gen.step()
        xs.append(x)
        pos.append(gen._cam.pos)
        motion.append(gen._cam.motion)
        priors.append(gen.cache.prior.clone())
        gen.decode(x)
    if d.object_hint:
        hints = [p[:, :, -1] for p in priors]
        assert hints[0].amax() == 1 and all(torch.equal(h, torch.zeros_like(h)) for h in hints[1:])
        priors = [p[:, :, :-1] for p in priors]
    assert torch.equal(priors[0], torch.zeros_like(priors[0]))
    x, cam = torch.cat(xs, 1), CameraCond(torch.cat(pos, 1), torch.cat(motion, 1))
    clip = clip_pixel_prior(m.vae, x, cam, d.chunk_frames, d.grid, picture="shown")
    torch.testing.assert_close(torch.cat(priors, 1), clip, atol=1e-4, rtol=1e-4)
    decoded = clip_pixel_prior(m.vae, x, cam, d.chunk_frames, d.grid)
    assert (decoded - clip).abs().amax() > 1e-3  # the two pictures differ: the test sees which one ran
    invalid = warped_prior(m.vae, torch.rand(1, 3, m.config.image_size, m.config.image_size), pos[0][:, 0],
                           torch.zeros(1), pos[0], d.grid)
    assert torch.equal(invalid, torch.zeros_like(invalid))


@torch.no_grad()
def test_a_revisited_view_is_filled_from_the_spatial_memory(debug_model):
    """Panning away and back: with the memory on, the prior of a chunk on the way back
    covers ground the last frame never showed (filled from a picture the viewer saw
    there); with it off, that ground is uncovered, for the network to draw. A prompt
    switch forgets the places (they show the old prompt)."""
    C = debug_model.config.dit.latent_channels

    def covers(memory: bool) -> list[float]:
        g = Generator(debug_model, seed=2, steps=2, warm_start=1, memory=memory)
        g.set_prompt("a green star orbiting in the forest")
        out = []
        for pan, chunks in (((0.0, 0.0), 2), ((1.0, 0.0), 8), ((-1.0, 0.0), 8)):
            g.set_camera(pan=pan)
            for _ in range(chunks):
                g.next_frames()
                out.append(float(g.cache.prior[:, :, C].mean()) if g.cache.prior is not None else 1.0)
        if memory:
            assert g.cache.places
            g.set_prompt("a purple cube in the city at night")
            g.next_frames()
            assert len(g.cache.places) == 1  # the new prompt's first picture only
        return out

    on, off = covers(True), covers(False)
    back = slice(10, 18)
    assert all(a >= b - 1e-6 for a, b in zip(on[back], off[back]))
    assert max(a - b for a, b in zip(on[back], off[back])) > 0.1
    assert on[:10] == pytest.approx(off[:10])  # going out, nothing was seen before
