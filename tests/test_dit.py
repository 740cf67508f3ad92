"""The causal DiT: cached chunk-by-chunk rollout == slow, obvious references."""

import pytest
import torch
from einops import rearrange

from cache.kv import KVCache
from model.camera import CameraCond, token_positions, warp_frame
from model.rope import apply_rope


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def random_clip(cfg, n_chunks, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = cfg.dit
    n = n_chunks * d.chunk_frames
    x = torch.randn(1, n, d.latent_channels, d.latent_size, d.latent_size, generator=g)
    motion = torch.randn(1, n, 3, generator=g) * torch.tensor([0.3, 0.3, 0.02])
    pos = motion.cumsum(1)
    return x, CameraCond(pos, motion)


def chunk_of(tensor, i, K):
    return tensor[:, i * K:(i + 1) * K]


def cached_rollout(model, text, x, cam, t_noisy, noise):
    """For every chunk: the output of one noisy evaluation and of the context pass,
    chunk by chunk against the KV cache."""
    d = model.config.dit
    K = d.chunk_frames
    cache = KVCache(d)
    outs = []
    for i in range(x.shape[1] // K):
        c = cam.frames(slice(i * K, (i + 1) * K))
        model.dit.begin_chunk(cache, c)
        tt = torch.full((1, K), t_noisy)
        noisy = model.dit(chunk_of(noise, i, K), tt, text, c, cache)
        clean = model.dit(chunk_of(x, i, K), torch.zeros(1, K), text, c, cache)
        cache.commit()
        outs.append((noisy, clean))
    return outs, cache


@torch.no_grad()
def test_cached_rollout_equals_block_causal_forward(debug_model):
    """Up to max_frames (the whole layout filled: sink, pooled memory, window), the
    cached rollout equals the training path's block-causal forward over the clip."""
    m = debug_model
    d = m.config.dit
    K = d.chunk_frames
    n_chunks = d.max_frames // K
    x, cam = random_clip(m.config, n_chunks)
    noise = torch.randn_like(x)
    text = m.text.encode(["a red ball bouncing over snow at night"])
    outs, _ = cached_rollout(m, text, x, cam, 0.8, noise)
    assert n_chunks > d.sink_chunks + d.window_chunks + 1, "the test must reach the memory bank"
    for i in range(n_chunks):
        c = cam.frames(slice(0, (i + 1) * K))
        clip = torch.cat((x[:, : i * K], chunk_of(noise, i, K)), dim=1)
        t = torch.cat((torch.zeros(1, i * K), torch.full((1, K), 0.8)), dim=1)
        ref_noisy = m.dit(clip, t, text, c)[:, -K:]
        ref_clean = m.dit(x[:, : (i + 1) * K], torch.zeros(1, (i + 1) * K), text, c)[:, -K:]
        assert rel_err(outs[i][0], ref_noisy) <= 1e-4, f"chunk {i} noisy pass"
        assert rel_err(outs[i][1], ref_clean) <= 1e-4, f"chunk {i} context pass"


class ExplicitContext:
    """The slow, obvious reference: each chunk's context built explicitly from stored
    per-chunk K/V (sink, pooled memory, window), positions by order, no cache, no mask."""

    def __init__(self, dit, ctx_chunks, cur_cam):
        """ctx_chunks: list of (kind, per-layer list of (k, v), cam) in stream order."""
        self.dit, self.ctx, self.cur_cam = dit, ctx_chunks, cur_cam
        d = dit.cfg
        self.written = []
        times, worlds = [], []
        frame = 0
        for kind, _, c in ctx_chunks:
            w = token_positions(c.pos, d.grid)
            n_tok = w.shape[1] // c.pos.shape[1]
            if kind == "memory":
                w = pool_reference(w, c.pos.shape[1], d.grid, d.memory_pool)
                n_tok = w.shape[1] // c.pos.shape[1]
            for f in range(c.pos.shape[1]):
                times += [frame + f] * n_tok
            frame += c.pos.shape[1]
            worlds.append(w)
        cur_w = token_positions(cur_cam.pos, d.grid)
        for f in range(cur_cam.pos.shape[1]):
            times += [frame + f] * d.tokens_per_frame
        worlds.append(cur_w)
        center = cur_cam.pos[:, -1, :2]
        world = torch.cat(worlds, dim=1) - center[:, None]
        cos, sin = dit.rope.tables(torch.tensor(times, dtype=torch.float32)[None], world)
        self.cos, self.sin = cos[:, None], sin[:, None]
        self.n_cur = cur_w.shape[1]

    def write(self, layer, k, v):
        self.written.append((k, v))
        d = self.dit.cfg
        ks, vs = [], []
        for kind, kv, c in self.ctx:
            ck, cv = kv[layer]
            if kind == "memory":
                ck = pool_reference(ck, c.pos.shape[1], d.grid, d.memory_pool)
                cv = pool_reference(cv, c.pos.shape[1], d.grid, d.memory_pool)
            ks.append(ck)
            vs.append(cv)
        self.k = apply_rope(torch.cat(ks + [k], dim=2), self.cos, self.sin)
        self.v = torch.cat(vs + [v], dim=2)

    def write_frame(self, frame, pos):
        pass  # the reference is handed its prior (`prior`) directly

    def current_rope(self):
        return self.cos[:, :, -self.n_cur:], self.sin[:, :, -self.n_cur:]

    def read(self, layer):
        return self.k, self.v, None


def pool_reference(x, frames, grid, pool):
    """Average over pool x pool token blocks of each frame, written out longhand."""
    x = rearrange(x, "... (f h p w q) d -> ... f h w (p q) d", f=frames, h=grid // pool, p=pool,
                  w=grid // pool, q=pool)
    return rearrange(x.mean(-2), "... f h w d -> ... (f h w) d")


@torch.no_grad()
def test_cached_rollout_equals_explicit_reference_after_eviction(debug_model):
    """Long after the memory bank wraps around, each chunk still equals a forward whose
    context is rebuilt explicitly from the chunks the rule says it keeps."""
    m = debug_model
    d = m.config.dit
    K, S, W, M = d.chunk_frames, d.sink_chunks, d.window_chunks, d.memory_chunks
    n_chunks = (d.max_frames // K) + 5
    x, cam = random_clip(m.config, n_chunks, seed=1)
    noise = torch.randn_like(x)
    text = m.text.encode(["a blue cube drifting across the desert"])
    outs, _ = cached_rollout(m, text, x, cam, 0.6, noise)
    stored = []  # per chunk: per-layer (k, v) from the reference's own context pass
    for i in range(n_chunks):
        ctx = [("sink", stored[j], cam.frames(slice(j * K, (j + 1) * K))) for j in range(min(i, S))]
        ctx += [("memory", stored[j], cam.frames(slice(j * K, (j + 1) * K)))
                for j in range(max(S, i - W - M), i - W)]
        ctx += [("window", stored[j], cam.frames(slice(j * K, (j + 1) * K)))
                for j in range(max(S, i - W), i)]
        c = cam.frames(slice(i * K, (i + 1) * K))
        # the prior: the frame just before the chunk, warped to the chunk's cameras
        prev = i * K - 1 if i else 0
        prior = warp_frame(x[:, prev], cam.pos[:, prev], torch.full((1,), float(i > 0)), c.pos, d.grid)
        ref = ExplicitContext(m.dit, ctx, c)
        ref.prior = prior
        ref_noisy = m.dit(chunk_of(noise, i, K), torch.full((1, K), 0.6), text, c, ref)
        ref = ExplicitContext(m.dit, ctx, c)
        ref.prior = prior
        ref_clean = m.dit(chunk_of(x, i, K), torch.zeros(1, K), text, c, ref)
        stored.append(ref.written)
        assert rel_err(outs[i][0], ref_noisy) <= 1e-4, f"chunk {i} noisy pass"
        assert rel_err(outs[i][1], ref_clean) <= 1e-4, f"chunk {i} context pass"


@torch.no_grad()
def test_camera_positions_follow_pan_and_zoom():
    pos = torch.tensor([[[0.0, 0.0, 0.0], [1.5, -2.0, 0.0], [0.0, 0.0, 1.0]]])
    w = token_positions(pos, grid=4).view(1, 3, 16, 2)
    assert torch.allclose(w[0, 1] - w[0, 0], torch.tensor([1.5, -2.0]).expand(16, 2))
    assert torch.allclose(w[0, 2], w[0, 0] / 2)  # zoomed in 2x: half the world spacing
    assert torch.allclose(w[0, 0, 1] - w[0, 0, 0], torch.tensor([1.0, 0.0]))  # x along a row
