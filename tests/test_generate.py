"""The Generator: seeded, controllable, deterministic."""

import numpy as np
import pytest
import torch

from model.generate import Generator, flow_schedule, step_batch


def run(model, seed, chunks=6, switch_at=3, steps=2):
    gen = Generator(model, seed=seed, steps=steps)
    gen.set_prompt("a yellow triangle drifting over the ocean")
    out = []
    for i in range(chunks):
        if i == switch_at:
            gen.set_prompt("a white star in a snowy forest", transition=0)
            gen.set_camera(pan=(-0.5, 0.0), zoom=0.2)
        out.append(gen.step())
    return torch.cat(out, dim=1)


@torch.no_grad()
def test_same_seed_same_controls_same_latents(debug_model):
    a, b = run(debug_model, 11), run(debug_model, 11)
    assert torch.equal(a, b)
    c = run(debug_model, 12)
    assert not torch.allclose(a, c)


@torch.no_grad()
def test_reset_restarts_the_stream(debug_model):
    gen = Generator(debug_model, seed=1, steps=1)
    gen.set_prompt("a red ball")
    first = [gen.step() for _ in range(3)]
    gen.reset(1)
    again = [gen.step() for _ in range(3)]
    assert gen.applied == [] and gen.chunk_index == 3
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@torch.no_grad()
def test_controls_apply_at_next_chunk_and_are_reported(debug_model):
    gen = Generator(debug_model, seed=0, steps=1)
    gen.step()
    gen.set_prompt("a blue cube", transition=2)
    gen.set_camera(pan=(1.0, 0.0))
    gen.step()
    what = {e["what"]: e for e in gen.applied}
    K = debug_model.config.frames_per_chunk
    assert what["prompt"]["frame"] == K and what["prompt"]["text"] == "a blue cube"
    assert what["camera"]["pan"] == [1.0, 0.0]
    assert gen.prompt == "a blue cube"
    x0 = gen.camera[0]
    gen.step()
    assert gen.camera[0] > x0  # panning right moves the camera right
    assert gen.applied == []


@torch.no_grad()
def test_smooth_transition_differs_from_recache_and_ends_on_new_prompt(debug_model):
    def roll(transition):
        gen = Generator(debug_model, seed=2, steps=1)
        gen.set_prompt("a red ball over grass")
        for _ in range(2):
            gen.step()
        gen.set_prompt("a blue cube in the desert", transition=transition)
        return [gen.step() for _ in range(4)], gen

    hard, _ = roll(0)
    smooth, gen = roll(3)
    assert not torch.allclose(hard[0], smooth[0])
    assert gen._transition is None  # finished after 3 chunks


@torch.no_grad()
def test_guidance_batches_cond_and_uncond(debug_model):
    gen = Generator(debug_model, seed=0, steps=1, guidance=3.0)
    gen.set_prompt("a red ball")
    x = gen.step()
    assert x.shape[0] == 1 and gen.cache.k.shape[1] == 2
    plain = Generator(debug_model, seed=0, steps=1)
    plain.set_prompt("a red ball")
    assert not torch.allclose(x, plain.step())


def test_next_frames_are_uint8_images(debug_model):
    cfg = debug_model.config
    frames = Generator(debug_model, seed=0, steps=1).next_frames()
    assert frames.dtype == np.uint8
    assert frames.shape == (cfg.frames_per_chunk, cfg.image_size, cfg.image_size, 3)


def test_schedule_matches_self_forcing_timesteps():
    assert flow_schedule(4) == pytest.approx([1.0, 0.9375, 0.8333, 0.625, 0.0], abs=1e-3)
    with pytest.raises(ValueError, match="steps"):
        Generator.__init__(object.__new__(Generator), None, steps=0)


@torch.no_grad()
def test_warm_start_begins_from_the_prior_except_after_a_switch(debug_model):
    """warm_start skips the first steps by starting from the warped previous frame: the
    first chunk (no previous frame) and a chunk right after a prompt switch are made from
    noise as without it; other chunks differ."""
    cold, warm = (Generator(debug_model, seed=4, steps=3, warm_start=w) for w in (0, 2))
    for g in (cold, warm):
        g.set_prompt("a red ball bouncing over snow")
        g.set_camera(pan=(0.4, 0.0))
    assert torch.equal(cold.step(), warm.step())  # chunk 0: nothing to start from
    for g in (cold, warm):
        g.set_prompt("a purple cube in the city at night")
    assert torch.equal(cold.step(), warm.step())  # a switch: the prior shows the old prompt
    assert not torch.allclose(cold.step(), warm.step())
    with pytest.raises(ValueError, match="warm_start"):
        Generator(debug_model, steps=2, warm_start=2)


@torch.no_grad()
def test_anchor_takes_its_share_of_the_warped_prior_where_it_covers(debug_model):
    """A warm-started chunk's result moves toward its warped prior by the anchor's share
    where the prior covers the view, and stays the network's where the camera uncovered
    new ground; chunks from noise (the first, after a switch) and chunks with the camera
    still or zooming are not anchored."""
    from model.generate import anchor_to_prior

    x = torch.zeros(1, 2, 3, 4, 4)
    prior = torch.cat((torch.ones(1, 2, 3, 4, 4), torch.zeros(1, 2, 1, 4, 4)), 2)
    prior[:, :, 3, :, :2] = 1  # the old view covers the left half
    out = anchor_to_prior(x, prior, 0.25)
    assert torch.allclose(out[..., :2], torch.full_like(out[..., :2], 0.25)) and (out[..., 2:] == 0).all()

    def stream(anchor, camera=True):
        g = Generator(debug_model, seed=4, steps=3, warm_start=2, anchor=anchor)
        g.set_prompt("a red ball bouncing over snow")
        if camera:
            g.set_camera(pan=(0.4, 0.0))
        return g

    free, half, full = stream(0.0), stream(0.5), stream(1.0)
    first = [g.step() for g in (free, half, full)]
    assert torch.equal(first[0], first[1]) and torch.equal(first[0], first[2])  # chunk 0: from noise
    chunks = [g.step() for g in (free, half, full)]  # warm: the prior made from each one's chunk 0
    prior = full.cache.prior
    C = chunks[0].shape[2]
    cover = prior[:, :, C:C + 1] > 0.5
    assert cover.any() and not cover.all()  # a pan: part of the view is new
    z = prior[:, :, :C]
    assert torch.allclose(chunks[2][cover.expand_as(z)], z[cover.expand_as(z)], atol=1e-5)
    assert torch.allclose(chunks[1], anchor_to_prior(chunks[0], prior, 0.5), atol=1e-5)
    still = [stream(a, camera=False) for a in (0.0, 1.0)]  # the camera still: nothing anchored
    for _ in range(3):
        a, b = (g.step() for g in still)
        assert torch.equal(a, b)
    for g in still:  # nor a zoom (its prior is the picture resampled)
        g.set_camera(zoom=0.5)
    for _ in range(2):
        a, b = (g.step() for g in still)
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="anchor"):
        Generator(debug_model, steps=2, warm_start=1, anchor=1.5)


def test_extend_covered_repeats_the_edge_of_the_covered_rectangle():
    from model.generate import extend_covered

    z = torch.arange(2 * 4 * 5, dtype=torch.float32).view(1, 2, 4, 5)  # (F=1, C=2, h=4, w=5)
    cover = torch.zeros(1, 1, 4, 5)
    cover[..., 1:, :3] = 1  # the camera moved right and up: new ground on the right and at the top
    out = extend_covered(z, cover)
    assert torch.equal(out[..., 1:, :3], z[..., 1:, :3])  # covered: unchanged
    assert torch.equal(out[..., 1:, 3], z[..., 1:, 2]) and torch.equal(out[..., 1:, 4], z[..., 1:, 2])
    assert torch.equal(out[..., 0, :], out[..., 1, :])  # the top row repeats the first covered row
    assert torch.equal(extend_covered(z, torch.zeros_like(cover)), torch.zeros_like(z))  # nothing to extend


@torch.no_grad()
def test_follow_path_drives_the_camera_along_a_given_path(debug_model):
    K = debug_model.config.dit.chunk_frames
    pos = torch.tensor([[0.5 * f, -0.25 * f, 0.0] for f in range(1, 2 * K + 1)])
    motion = torch.tensor([[0.5, -0.25, 0.0]] * (2 * K))
    gen = Generator(debug_model, seed=0, steps=1)
    gen.set_camera(pan=(1.0, 1.0))  # ignored while a path is followed
    gen.follow_path(pos, motion)
    cams = []
    for _ in range(3):
        gen.step()
        cams.append(gen._cam)
    assert torch.equal(cams[0].pos[0], pos[:K]) and torch.equal(cams[1].pos[0], pos[K:])
    assert torch.equal(cams[0].motion[0], motion[:K])
    # past the path's end the camera holds its last position, still
    assert torch.equal(cams[2].pos[0], pos[-1:].expand(K, 3)) and not cams[2].motion.any()
    assert gen.camera == tuple(float(v) for v in pos[-1])
    with pytest.raises(ValueError, match="positions and motions"):
        gen.follow_path(pos, motion[:, :2])


def _script(gens, chunks=20):
    """A stream's controls over `chunks` chunks: a pan, a prompt switch (re-cache), a
    smooth transition, a reset; long enough for the window to evict into the memory."""
    outs = [[] for _ in gens]
    for i in range(chunks):
        for j, g in enumerate(gens):
            if i == 0:
                g.set_prompt("a yellow triangle drifting over the ocean")
                g.set_camera(pan=(0.4 + 0.1 * j, -0.1))
            if i == 5 + j:
                g.set_prompt("a white star in a snowy forest")
            if i == 8:
                g.set_prompt("a red ball over the desert at night", transition=2)
            if i == 10 and j == 0:
                g.reset(7)
        for j, x in enumerate(step_batch(gens)):
            outs[j].append(x)
    return [torch.cat(o, 1) for o in outs]


@pytest.mark.parametrize("steps,warm_start,guidance", [(4, 3, 1.0), (2, 0, 1.0), (4, 3, 2.0)])
@torch.no_grad()
def test_fused_context_pass_makes_the_same_stream(debug_model, steps, warm_start, guidance):
    """A chunk's context pass fused with the next chunk's first evaluation (the default)
    makes the chunks, the cache and the kept latents of separate passes (`fuse=False`):
    alone and two streams batched, through eviction, switches, a transition and a reset."""
    def make(fuse, n):
        return [Generator(debug_model, seed=3 + j, steps=steps, warm_start=warm_start, guidance=guidance,
                          fuse=fuse) for j in range(n)]
    for n in (1, 2):
        fused, plain = make(True, n), make(False, n)
        for a, b in zip(_script(fused), _script(plain)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
        for f, p in zip(fused, plain):
            assert f.unwritten is not None and p.unwritten is None
            f.flush()
            assert f.cache.frame_ids == p.cache.frame_ids and f.cache.bank.written == p.cache.bank.written > 0
            for name in ("k", "v", "pos", "frame"):
                assert torch.allclose(getattr(f.cache, name), getattr(p.cache, name), rtol=1e-4, atol=1e-4), name
            assert f._kept.keys() == p._kept.keys()
            assert all(torch.allclose(f._kept[s][0], p._kept[s][0], rtol=1e-4, atol=1e-4) for s in f._kept)


def test_rewrite_encodes_the_prompt_reworded_in_the_caption_grammar(debug_model, monkeypatch):
    """With `rewrite` a closed-vocabulary model's generator encodes the prompt as
    `grammar_prompt` rewords it (the paraphrase and its grammar wording condition alike);
    without it, as typed; a model with an open vocabulary never rewrites."""
    from model.world import grammar_prompt

    typed = "it is raining at night in the dunes, and a white triangle floats around"
    assert grammar_prompt(typed) != typed
    as_typed, reworded = (debug_model.encode_prompt([p]).kv for p in (typed, grammar_prompt(typed)))
    assert not torch.allclose(as_typed, reworded)
    assert torch.equal(Generator(debug_model, steps=2, rewrite=True)._encode(typed).kv, reworded)
    assert torch.equal(Generator(debug_model, steps=2, rewrite=False)._encode(typed).kv, as_typed)
    monkeypatch.setattr(type(debug_model), "closed_vocabulary", False)  # as Wan's umT5 reads any wording
    assert not Generator(debug_model, steps=2, rewrite=True).rewrite


@torch.no_grad()
def test_a_display_decoder_draws_the_frames_shown_and_the_stream_keeps_the_first_decoders_picture():
    """`VAEConfig.display_decoder`: the stream's latents (its priors warp the picture kept)
    are the same as without one, batched or alone; the frames shown are the display
    decoder's, and the picture kept is the first decoder's of the last frame."""
    import dataclasses

    from model.checkpoint import LiveReel, load_model
    from model.generate import next_frames_batch
    from model.sampling import Sampling
    from model.vae import to_uint8

    base = load_model("debug")
    cfg = dataclasses.replace(base.config, dit=dataclasses.replace(base.config.dit, prior_picture="shown"),
                              vae=dataclasses.replace(base.config.vae, display_decoder=True))
    plain_cfg = dataclasses.replace(cfg, vae=base.config.vae)
    state = base.state_dict()
    plain = LiveReel(plain_cfg).eval()
    plain.load_state_dict(state)
    state.update({"vae.display." + k[len("vae.decoder."):]: v + 0.05 * torch.randn_like(v)
                  for k, v in state.items() if k.startswith("vae.decoder.")})
    shown = LiveReel(cfg).eval()
    shown.load_state_dict(state)

    def stream(model, n=2, chunks=4):
        gens = [Sampling().generator(model, seed=s) for s in range(n)]
        for g in gens:
            g.set_prompt("a red ball bouncing over the desert")
            g.set_camera(pan=(0.4, 0.0))
        latents, frames = [], []
        for _ in range(chunks):
            zs = step_batch(gens)
            latents.append(torch.cat(zs))
            from model.generate import decode_batch
            frames.append(np.stack(decode_batch(gens, zs)))
        return gens, torch.cat(latents, 1), np.concatenate(frames, 1)

    g_plain, z_plain, f_plain = stream(plain)
    g_shown, z_shown, f_shown = stream(shown)
    assert torch.allclose(z_plain, z_shown, atol=1e-5)  # the loop never sees the display decoder
    assert np.abs(f_plain.astype(int) - f_shown.astype(int)).max() > 8  # what is shown is another decoder's
    display = to_uint8(shown.vae.display(shown.vae.from_dit(z_shown), [None])[0]).numpy()
    assert np.abs(display.astype(int) - f_shown.astype(int)).max() <= 1
    for a, b in zip(g_plain, g_shown):
        assert torch.allclose(a.cache.shown[-1][1], b.cache.shown[-1][1], atol=1e-5)
    # one stream alone makes what it made in the batch
    alone = Sampling().generator(shown, seed=1)
    alone.set_prompt("a red ball bouncing over the desert")
    alone.set_camera(pan=(0.4, 0.0))
    got = np.concatenate([alone.next_frames() for _ in range(4)])
    assert np.abs(got.astype(int) - f_shown[1].astype(int)).max() <= 1
    assert next_frames_batch(g_shown)[0].shape == f_shown[0, :base.config.dit.chunk_frames].shape
