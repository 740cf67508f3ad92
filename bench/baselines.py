"""The same streams made the naive ways, to show what the cache design buys.

- `NoCacheStream`: no KV cache. Every denoising evaluation runs the training path
  (`model.dit(x, t, text, camera)`, block-causal mask with the same sink / memory /
  window) over the clean latents of every chunk the new chunk sees, plus the noisy
  chunk; no context pass, since nothing is kept. Its cost stops growing once the
  context is full (the window bounds it), but every step recomputes that context.
- `GrowingCache`: a KV cache with no window and no memory bank: every past frame is
  kept, keys rotated once at their absolute position (the usual layout of the
  Self-Forcing family without eviction). Attention and memory grow with the stream.

Both take their noise, text and camera from a `Generator`, so they do the same work
as ours on the same inputs; their timing does not depend on the values, so a history
of any length can be filled in directly (`prefill`) instead of generated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.camera import CameraCond
from model.config import DiTConfig
from model.generate import Generator, Span, _Clock, start_from_prior
from model.prior import pixel_prior, with_object_hint
from model.rope import apply_rope
from model.sampling import Sampling
from model.text import TextCond


class NoCacheStream:
    """Chunks without a cache: the context recomputed at every denoising step."""

    def __init__(self, gen: Generator):
        self.gen = gen
        d = gen.config.dit
        self.context_chunks = d.sink_chunks + d.memory_chunks + d.window_chunks
        self.history: list[tuple[Tensor, CameraCond, Tensor | None]] = []  # clean chunks made, their priors
        # the last chunk's phases, as Generator.timings: "prepare" (controls, noise, the warped
        # prior: the same VAE work as ours) and "dit" (the network evaluations)
        self.timings: dict[str, Span] = {}

    def prefill(self, chunks: int) -> None:
        """Pretend `chunks` chunks were made (random latents, a still camera)."""
        d, g = self.gen.config.dit, torch.Generator().manual_seed(0)
        K = d.chunk_frames
        x = torch.randn(1, K, d.latent_channels, d.latent_size, d.latent_size, generator=g)
        cam = CameraCond(torch.zeros(1, K, 3), torch.zeros(1, K, 3))
        prior = torch.zeros(1, K, d.prior_channels, d.latent_size, d.latent_size)
        self.history = [(x, cam, prior)] * min(chunks, self.context_chunks + 1)  # only the visible ones matter
        self.gen.apply_controls()  # at chunk 0: no re-cache
        self.gen.chunk_index = chunks

    def _visible(self) -> list[tuple[Tensor, CameraCond, Tensor | None]]:
        """The chunks the next one sees: the sink, then the memory and window chunks."""
        d = self.gen.config.dit
        S = d.sink_chunks
        if len(self.history) <= self.context_chunks:
            return self.history
        return self.history[:S] + self.history[len(self.history) - (d.memory_chunks + d.window_chunks):]

    @torch.no_grad()
    def step(self) -> Tensor:
        gen = self.gen
        clock = _Clock()
        gen.applied = []
        gen.apply_controls()
        text: TextCond = gen._chunk_text()
        cam = gen._advance_camera()
        x = gen._noise()
        ctx = self._visible()
        d = gen.config.dit
        K = d.chunk_frames
        clean = [c[0] for c in ctx]
        cams = CameraCond(torch.cat([c[1].pos for c in ctx] + [cam.pos], 1),
                          torch.cat([c[1].motion for c in ctx] + [cam.motion], 1))
        prior = None
        if d.warp_prior and d.prior_space == "pixel":  # each chunk's, made once, as streaming does
            last = self.history[-1] if self.history else None
            frame = last[0][:, -1] if last else torch.zeros_like(x[:, 0])
            frame_pos = last[1].pos[:, -1] if last else torch.zeros(1, 3)
            valid = torch.full((1,), float(last is not None))
            mine = pixel_prior(gen.model.vae, frame, frame_pos, valid, cam.pos, d.grid)
            if d.object_hint:
                mine = with_object_hint(mine, gen.model.centre_hint(valid, K, gen.prompt))
            prior = torch.cat([c[2] for c in ctx] + [mine], 1)
        n_ctx = len(ctx) * K
        n = gen.cfg_batch  # with guidance: the clip again under the empty prompt, side by side
        texts, cams_b = gen._batch_text(text), gen._batch_cam(cams)
        prior_b = None if prior is None else prior.repeat(n, 1, 1, 1, 1)
        k = 0  # as Generator.warm_start: from the prior, unless first or just switched
        if prior is not None and gen.warm_start and gen.chunk_index > 0 and not any(
                a["what"] in ("prompt", "reset") for a in gen.applied):
            k = gen.warm_start
            x = start_from_prior(mine, x, gen.sigmas[k])
        prepare = clock.lap()
        for t, t_next in zip(gen.sigmas[k:-1], gen.sigmas[k + 1:]):
            clip = torch.cat(clean + [x], dim=1).repeat(n, 1, 1, 1, 1)
            tt = torch.cat((torch.zeros(n, n_ctx), torch.full((n, K), t)), dim=1)
            v = gen.model.dit(clip, tt, texts, cams_b, prior=prior_b)[:, -K:]
            if n > 1:
                cond, uncond = v.chunk(2)
                v = uncond + gen.guidance * (cond - uncond)
            x = x + (t_next - t) * v
        self.timings = {"prepare": prepare, "dit": clock.lap()}
        self.history.append((x, cam, None if prior is None else prior[:, -K:]))
        if len(self.history) > self.context_chunks + 1:  # keep what `_visible` can still pick
            del self.history[gen.config.dit.sink_chunks]
        gen.chunk_index += 1
        return x


class GrowingCache:
    """A KV cache that keeps every frame (no window, no memory): the cost it avoids.

    The verbs of `cache.kv.KVCache` (what `DiT.forward` and `Generator` call), with
    rotated keys stored at absolute positions (frame index, world coordinates) in a
    buffer that doubles when full.
    """

    def __init__(self, cfg: DiTConfig, batch: int = 1, chunks: int = 16):
        self.cfg = cfg
        self.T = cfg.tokens_per_chunk
        self.batch = batch
        self.n = 0  # tokens kept
        self.chunks_written = 0
        self.mask = None
        latent = (batch, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        self.frame, self.frame_pos = torch.zeros(latent), torch.zeros(batch, 3)  # as KVCache keeps them
        self.frame_valid = torch.zeros(batch)
        self._pending = (torch.zeros(latent), torch.zeros(batch, 3))
        self.prior: Tensor | None = None
        self._alloc(chunks)

    def _alloc(self, chunks: int) -> None:
        cfg = self.cfg
        shape = (cfg.depth, self.batch, cfg.heads, (chunks + 1) * self.T, cfg.head_dim)
        k, v = torch.zeros(shape), torch.zeros(shape)
        if self.n:
            k[:, :, :, : self.n] = self.k[:, :, :, : self.n]
            v[:, :, :, : self.n] = self.v[:, :, :, : self.n]
        self.k, self.v = k, v

    def prefill(self, chunks: int) -> None:
        """Pretend `chunks` chunks were kept (zero K/V: the cost does not depend on values)."""
        if (chunks + 1) * self.T > self.k.shape[3]:
            self._alloc(chunks)
        self.n, self.chunks_written = chunks * self.T, chunks

    def begin_chunk(self, cur_pos: Tensor, center: Tensor, rope_tables, first_frame: int | None = None) -> None:
        K = self.cfg.chunk_frames
        first = self.chunks_written * K if first_frame is None else first_frame
        time = torch.arange(first, first + K, dtype=cur_pos.dtype).repeat_interleave(self.T // K)
        cos, sin = rope_tables(time.expand(cur_pos.shape[0], -1), cur_pos)
        self.cos, self.sin = cos[:, None], sin[:, None]

    def write(self, layer: int, k: Tensor, v: Tensor) -> None:
        cur = slice(self.n, self.n + self.T)
        self.k[layer, :, :, cur] = apply_rope(k, self.cos, self.sin)
        self.v[layer, :, :, cur] = v

    def write_frame(self, frame: Tensor, pos: Tensor) -> None:
        self._pending[0].copy_(frame)
        self._pending[1].copy_(pos)

    def frame_state(self) -> None:
        return None  # never re-cached

    def read(self, layer: int) -> tuple[Tensor, Tensor, None]:
        end = self.n + self.T
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end], None

    def current_rope(self) -> tuple[Tensor, Tensor]:
        return self.cos, self.sin

    def commit(self, dest=None) -> tuple[str, int]:
        self.n += self.T
        self.chunks_written += 1
        self.frame.copy_(self._pending[0])
        self.frame_pos.copy_(self._pending[1])
        self.frame_valid.fill_(1.0)
        if self.n + self.T > self.k.shape[3]:
            self._alloc(2 * self.chunks_written)
        return ("window", self.chunks_written - 1)

    def reset(self) -> None:
        self.n = self.chunks_written = 0
        self.frame_valid.zero_()

    def rebase(self, offset: Tensor) -> None:
        pass  # positions are absolute here

    # the spatial memory (`KVCache.remember`): none here; this baseline times the
    # attention over a context that grows, with the same prior as the bounded cache's
    # wherever the camera does not revisit ground
    places: list = []

    def remember(self, picture: Tensor, pos: Tensor) -> None:
        pass

    def forget_places(self) -> None:
        pass

    def allocated_bytes(self) -> int:
        return (self.k.numel() + self.v.numel()) * self.k.element_size()


def growing_generator(model, seed: int, sampling: Sampling) -> Generator:
    """A Generator whose cache keeps everything (and whose kept latents are not stored)."""
    gen = sampling.generator(model, seed=seed)
    gen.cache = GrowingCache(model.config.dit, gen.cfg_batch)
    gen.fuse = False  # each chunk's context pass on its own, against this cache's read
    gen._kept = _Discard()
    return gen


class _Discard(dict):
    """The Generator keeps chunks' latents for re-caching; the growing cache never re-caches."""

    def __setitem__(self, key, value) -> None:
        pass
