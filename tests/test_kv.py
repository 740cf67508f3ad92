"""The KV cache: bounded, constant memory, positions within range, exact re-cache."""

import pytest
import torch

from cache.kv import KVCache
from cache.memory import MemoryBank, pool_tokens
from model.generate import Generator
from model.prior import clip_pixel_prior


def tensor_bytes(*objs) -> int:
    seen, total = set(), 0
    for obj in objs:
        for v in vars(obj).values():
            items = v.values() if isinstance(v, dict) else [v]
            for item in items:
                for t in (item if isinstance(item, tuple) else (item,)):
                    if isinstance(t, torch.Tensor) and id(t) not in seen:
                        seen.add(id(t))
                        total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def test_ten_thousand_chunks_constant_memory_bounded_positions(debug_model):
    gen = Generator(debug_model, seed=3, steps=1)
    gen.set_prompt("a green star orbiting in the forest")
    gen.set_camera(pan=(0.7, -0.2), zoom=0.1)
    d = debug_model.config.dit
    for i in range(10_000):
        x = gen.step()
        if i == 9:
            bytes_10 = gen.cache.allocated_bytes()
            state_10 = tensor_bytes(gen, gen.cache)
            kept_10 = len(gen._kept)
    assert torch.isfinite(x).all()
    assert gen.cache.allocated_bytes() == bytes_10
    assert tensor_bytes(gen, gen.cache) == state_10
    assert len(gen._kept) == kept_10 == d.sink_chunks + d.window_chunks
    assert gen.cache.max_time_position <= d.max_frames - 1
    assert gen.cache.max_time_position == d.max_frames - 1  # and the full layout was used
    gen.flush()  # the last chunk's K/V (its context pass otherwise waits for the next chunk)
    assert gen.cache.bank.written == 10_000 - d.sink_chunks - d.window_chunks


@torch.no_grad()
def test_recache_equals_fresh_forward_under_new_prompt(debug_model):
    """After a prompt switch the kept chunks' K/V equal a fresh block-causal forward over
    the kept latents under the new prompt."""
    m = debug_model
    d = m.config.dit
    gen = Generator(m, seed=5, steps=2)
    gen.set_prompt("a red ball bouncing over snow")
    gen.set_camera(pan=(0.5, 0.25))
    n = d.sink_chunks + d.window_chunks  # every chunk still kept, none in memory yet
    for _ in range(n):
        gen.step()
    old_k = gen.cache.k.clone()
    gen.set_prompt("a purple cube in the city at night")
    gen.apply_controls()
    slots = gen.cache.kept_chunks()
    assert len(slots) == n
    x = torch.cat([gen._kept[s][0] for s in slots], dim=1)
    pos = torch.cat([gen._kept[s][1].pos for s in slots], dim=1)
    motion = torch.cat([gen._kept[s][1].motion for s in slots], dim=1)
    from model.camera import CameraCond

    cam = CameraCond(pos, motion)
    text = m.text.encode(["a purple cube in the city at night"])
    ctx = m.dit.clip_context(cam, keep_kv=True)
    assert d.prior_space == "pixel"  # the re-cache must restore each chunk's pixel-space prior
    prior = clip_pixel_prior(m.vae, x, cam, d.chunk_frames, d.grid)
    m.dit(x, torch.zeros(x.shape[:2]), text, cam, ctx, prior=prior)
    T = d.tokens_per_chunk
    for layer, (k, v) in enumerate(ctx.kv):
        for c, (region, index) in enumerate(slots):
            sl = gen.cache.regions[region].token_slice(index)
            ck, cv = gen.cache.k[layer, :, :, sl], gen.cache.v[layer, :, :, sl]
            rk, rv = k[:, :, c * T:(c + 1) * T], v[:, :, c * T:(c + 1) * T]
            assert ((ck - rk).norm() / rk.norm()).item() <= 1e-4
            assert ((cv - rv).norm() / rv.norm()).item() <= 1e-4
    assert not torch.allclose(old_k, gen.cache.k)  # the prompt did change them


def test_memory_bank_ring_and_pooling():
    bank = MemoryBank(2)
    slots = []
    for _ in range(5):
        slots.append(bank.next_slot())
        bank.advance()
    assert slots == [0, 1, 0, 1, 0] and bank.filled == 2
    assert MemoryBank(0).next_slot() is None
    # 1 frame, 4x4 grid, pool 2: the mean of each 2x2 block
    x = torch.arange(16.0).view(1, 16, 1)
    pooled = pool_tokens(x, frames=1, grid=4, pool=2)
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_cache_layout_and_reset(debug_model):
    d = debug_model.config.dit
    cache = KVCache(d)
    assert cache.n_tokens == d.cache_tokens
    assert cache.k.shape == (d.depth, 1, d.heads, d.cache_tokens, d.head_dim)
    assert [r.name for r in cache.regions.values()] == ["sink", "memory", "window", "current"]
    cache.chunks_written = 3
    cache.frame_ids[0] = 7
    cache.reset()
    assert cache.chunks_written == 0 and set(cache.frame_ids) == {-1}


def test_memory_off_drops_evicted_chunks(debug_model):
    """With the memory bank switched off, evicted chunks leave no trace: the memory slots
    stay invisible, and the stream differs from one with memory once chunks are evicted."""
    d = debug_model.config.dit
    on, off = Generator(debug_model, seed=3, steps=1), Generator(debug_model, seed=3, steps=1, memory=False)
    n = d.sink_chunks + d.window_chunks + 2  # two evictions
    outs = [(on.step(), off.step()) for _ in range(n)]
    mem = off.cache.memory
    assert all(off.cache.frame_ids[f] == -1 for i in range(mem.chunks) for f in mem.frame_range(i))
    assert any(on.cache.frame_ids[f] >= 0 for f in on.cache.memory.frame_range(0))
    assert all(torch.equal(a, b) for a, b in outs[: d.sink_chunks + d.window_chunks + 1])  # same until then
    assert not torch.equal(*outs[-1])


@torch.no_grad()
def test_the_pictures_kept_for_a_shown_prior_are_counted_and_bounded(debug_model):
    """A model whose prior warps the picture shown keeps the latest pictures in its cache:
    allocated_bytes counts them (one latent frame and one picture each), and their number
    stops at the window's; with the memory on, the spatial memory's pictures too, up to
    PLACES."""
    import dataclasses

    from cache.kv import PLACES

    from model.checkpoint import LiveReel

    cfg = debug_model.config
    shown_cfg = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, prior_picture="shown"))
    shown_model = LiveReel(shown_cfg).eval()
    shown_model.load_state_dict(debug_model.state_dict())
    sizes = {}
    for name, model in (("decoded", debug_model), ("shown", shown_model)):
        gen = Generator(model, seed=3, steps=1, memory=False)  # the spatial memory: below
        gen.set_camera(pan=(0.5, 0.0))
        for i in range(30):
            gen.next_frames()
            if i == 9:
                at_10 = gen.cache.allocated_bytes()
        assert gen.cache.allocated_bytes() == at_10, name
        sizes[name] = at_10
    c, s = cfg.dit.latent_channels, cfg.image_size
    per_pair = 4 * (c * cfg.dit.latent_size ** 2 + 3 * s * s)
    keep = gen.cache._keep_shown
    assert len(gen.cache.shown) == keep > 0
    assert sizes["shown"] - sizes["decoded"] == keep * per_pair
    gen = Generator(shown_model, seed=3, steps=1)  # memory on: a new place every chunk at this pan
    gen.set_camera(pan=(4.0, 0.0))
    for i in range(PLACES + 20):
        gen.next_frames()
        if i == PLACES + 5:
            at_full = gen.cache.allocated_bytes()
    assert len(gen.cache.places) == PLACES
    assert gen.cache.allocated_bytes() == at_full


def test_spatial_memory_keeps_one_picture_per_spot(debug_model):
    """`remember` keeps the latest picture of each spot (a quarter of the view, a quarter
    octave of zoom), at most PLACES, none with the memory off; a rebase moves the places
    with the world, and a reset or `forget_places` empties them."""
    from cache.kv import PLACES

    layout = debug_model.cache_layout()
    view = max(layout.grid)  # tokens across the view at zoom 0
    cache = KVCache(layout)
    pic = lambda v: torch.full((1, 3, 4, 4), float(v))  # noqa: E731
    at = lambda x, z=0.0: torch.tensor([[x, 0.0, z]])  # noqa: E731
    cache.remember(pic(0), at(0.0))
    cache.remember(pic(1), at(0.05 * view))  # the same spot: replaces it
    cache.remember(pic(2), at(0.5 * view))  # half a view away: a new place
    cache.remember(pic(3), at(0.5 * view, z=1.0))  # zoomed in: a new place
    assert [float(p[0].mean()) for p in cache.places] == [1.0, 2.0, 3.0]
    cache.rebase(torch.tensor([[0.5 * view, 0.0]]))
    assert torch.allclose(cache.places[1][1], at(0.0))
    for i in range(PLACES + 5):
        cache.remember(pic(10 + i), at(i * view))
    assert len(cache.places) == PLACES and float(cache.places[-1][0].mean()) == 10 + PLACES + 4
    cache.forget_places()
    assert cache.places == []
    cache.remember(pic(0), at(0.0))
    cache.reset()
    assert cache.places == []
    off = KVCache(layout, memory=False)
    off.remember(pic(0), at(0.0))
    assert off.places == []
