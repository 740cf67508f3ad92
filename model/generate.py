"""The causal rollout of one stream: KV cache + controls + `step()`.

Per chunk (DESIGN §1): seeded noise for K latent frames, `steps` flow-matching Euler
steps that read the cache, one context pass at t = `context_t` that writes the chunk's
clean K/V, then `cache.commit()`. Controls are staged by `set_*` and take effect at the
next chunk boundary; `applied` says what took effect and at which frame.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from cache.kv import KVCache
from model.camera import CameraCond, integrate, velocity_per_frame
from model.checkpoint import LiveReel
from model.text import TextCond
from model.vae import to_uint8

log = logging.getLogger(__name__)

REBASE_AT = 1e4  # world units; positions are re-based past this to keep float32 exact


def flow_schedule(steps: int, shift: float = 5.0) -> list[float]:
    """Timesteps from 1 (noise) to 0, shifted towards noise: with 4 steps and shift 5,
    [1, 0.9375, 0.833, 0.625, 0], the schedule of the Self-Forcing family."""
    ts = [1 - i / steps for i in range(steps + 1)]
    return [shift * t / (1 + (shift - 1) * t) for t in ts]


def chunk_seed(seed: int, chunk: int) -> int:
    return (seed * 1_000_003 + chunk * 7919 + 17) % (2**63 - 1)


class Generator:
    def __init__(self, model: LiveReel, seed: int = 0, steps: int = 4, guidance: float = 1.0,
                 context_t: float = 0.0, shift: float = 5.0):
        if steps < 1:
            raise ValueError(f"steps must be >= 1 (got {steps})")
        self.model = model
        self.config = model.config
        self.steps, self.guidance, self.context_t = steps, guidance, context_t
        self.sigmas = flow_schedule(steps, shift)
        self.device = next(model.parameters()).device
        self.cfg_batch = 2 if guidance != 1.0 else 1  # conditional, unconditional
        self.cache = KVCache(self.config.dit, self.cfg_batch, self.device)
        self._null = self._encode("")
        self.prompt = ""
        self._text = self._null
        self._transition: tuple[TextCond, TextCond, int, int] | None = None
        self.pan, self.zoom = (0.0, 0.0), 0.0
        self._pending: dict = {}
        self.applied: list[dict] = []
        self._start(seed)

    # ------------------------------------------------------------------ controls (staged)
    def set_prompt(self, text: str, transition: int = 0) -> None:
        """New prompt at the next chunk: KV re-cache (transition=0), or a smooth blend of the
        text embedding over `transition` chunks."""
        if transition < 0:
            raise ValueError(f"transition must be >= 0 chunks (got {transition})")
        self._pending["prompt"] = (text, int(transition))

    def set_camera(self, pan: tuple[float, float] = (0.0, 0.0), zoom: float = 0.0) -> None:
        """Camera velocities: pan (x, y) in view widths per second, zoom in log2 per second."""
        self._pending["camera"] = ((float(pan[0]), float(pan[1])), float(zoom))

    def reset(self, seed: int) -> None:
        """Restart the stream (empty cache, camera at the origin) with a new seed."""
        self._pending["reset"] = int(seed)

    # ------------------------------------------------------------------ state
    @property
    def frame_index(self) -> int:
        return self.chunk_index * self.config.frames_per_chunk

    def _start(self, seed: int) -> None:
        self.seed = seed
        self.chunk_index = 0
        self.camera = (0.0, 0.0, 0.0)  # x, y, zoom (world token units, log2)
        self.cache.reset()
        self._kept: dict[tuple[str, int], tuple[Tensor, CameraCond]] = {}
        self._vae_state = self.model.vae.init_state()

    def _encode(self, prompt: str) -> TextCond:
        text = self.model.text.encode([prompt])
        text.kv = self.model.dit.text_kv(text)
        return text

    def apply_controls(self) -> None:
        """Apply the staged controls now (step() does this first; a prompt switch re-caches
        here). Fills `applied`."""
        pending, self._pending = self._pending, {}
        if "reset" in pending:
            self._start(pending["reset"])
            self.applied.append({"what": "reset", "seed": self.seed, "frame": 0})
        if "camera" in pending:
            self.pan, self.zoom = pending["camera"]
            self.applied.append({"what": "camera", "pan": list(self.pan), "zoom": self.zoom,
                                 "frame": self.frame_index})
        if "prompt" in pending:
            text, transition = pending["prompt"]
            new = self._encode(text)
            if transition > 0 and self.chunk_index > 0:
                self._transition = (self._text, new, transition, 0)
            else:
                self._transition = None
                self._text = new
                if self.chunk_index > 0:
                    self._recache()
            self.prompt = text
            self.applied.append({"what": "prompt", "text": text, "transition": transition,
                                 "frame": self.frame_index})

    def _chunk_text(self) -> TextCond:
        """The text for this chunk, advancing a smooth transition by one chunk."""
        if self._transition is None:
            return self._text
        old, new, n, i = self._transition
        text = old.lerp(new, (i + 1) / n)
        text.kv = self.model.dit.text_kv(text)
        self._transition = None if i + 1 >= n else (old, new, n, i + 1)
        self._text = new if self._transition is None else text
        return text

    def _advance_camera(self) -> CameraCond:
        cfg = self.config
        step = velocity_per_frame(self.pan, self.zoom, self.camera[2], cfg.dit.grid, cfg.fps)
        pos, motion = integrate(self.camera, step, cfg.dit.chunk_frames)
        self.camera = pos[-1]
        if max(abs(self.camera[0]), abs(self.camera[1])) > REBASE_AT:
            self._rebase()
        return CameraCond(torch.tensor([pos], device=self.device),
                          torch.tensor([motion], device=self.device))

    def _rebase(self) -> None:
        """Move the world origin to the camera; attention only sees relative positions."""
        x, y, z = self.camera
        offset = torch.tensor([[x, y]], device=self.device)
        self.cache.rebase(offset.expand(self.cfg_batch, -1))
        for key, (lat, cam) in self._kept.items():
            pos = cam.pos.clone()
            pos[..., :2] -= offset[:, None]
            self._kept[key] = (lat, CameraCond(pos, cam.motion))
        self.camera = (0.0, 0.0, z)

    # ------------------------------------------------------------------ network calls
    def _batch_cam(self, cam: CameraCond) -> CameraCond:
        """With guidance, the unconditional half sees the same path without its motion."""
        if self.cfg_batch == 1:
            return cam
        return CameraCond(cam.pos.repeat(2, 1, 1), torch.cat((cam.motion, torch.zeros_like(cam.motion))))

    def _batch(self, x: Tensor, text: TextCond, cam: CameraCond) -> tuple[Tensor, TextCond, CameraCond]:
        if self.cfg_batch == 1:
            return x, text, cam
        return x.expand(2, *x.shape[1:]), TextCond.cat([text, self._null]), self._batch_cam(cam)

    def _velocity(self, x: Tensor, t: float, text: TextCond, cam: CameraCond) -> Tensor:
        xb, tb, cb = self._batch(x, text, cam)
        tt = torch.full(xb.shape[:2], t, device=self.device)
        v = self.model.dit(xb, tt, tb, cb, self.cache)
        if self.cfg_batch == 1:
            return v
        cond, uncond = v.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def _context_pass(self, x: Tensor, text: TextCond, cam: CameraCond, first_frame: int | None) -> None:
        """One evaluation at t = context_t over the clean chunk: writes its K/V."""
        self.model.dit.begin_chunk(self.cache, self._batch_cam(cam), first_frame)
        self._forward_context(x, text, cam)

    def _forward_context(self, x: Tensor, text: TextCond, cam: CameraCond) -> None:
        xb, tb, cb = self._batch(x, text, cam)
        tt = torch.full(xb.shape[:2], self.context_t, device=self.device)
        self.model.dit(xb, tt, tb, cb, self.cache)

    def _recache(self) -> None:
        """Recompute the K/V of the kept chunks (sink, window) under the new prompt, in
        stream order, each seeing the context that precedes it (DESIGN §3)."""
        for slot in self.cache.kept_chunks():
            x, cam = self._kept[slot]
            self._context_pass(x, self._text, cam, self.cache.first_frame(*slot))
            self.cache.commit(slot)

    def _noise(self) -> Tensor:
        d = self.config.dit
        g = torch.Generator().manual_seed(chunk_seed(self.seed, self.chunk_index))
        shape = (1, d.chunk_frames, d.latent_channels, d.latent_size, d.latent_size)
        return torch.randn(shape, generator=g).to(self.device)

    # ------------------------------------------------------------------ the rollout
    @torch.no_grad()
    def step(self) -> Tensor:
        """Generate one chunk; returns its clean latents (1, K, C, h, w) in DiT scale."""
        self.applied = []
        self.apply_controls()
        text = self._chunk_text()
        cam = self._advance_camera()
        self.model.dit.begin_chunk(self.cache, self._batch_cam(cam))
        x = self._noise()
        for t, t_next in zip(self.sigmas[:-1], self.sigmas[1:]):
            x = x + (t_next - t) * self._velocity(x, t, text, cam)
        self._forward_context(x, text, cam)
        slot = self.cache.commit()
        self._kept[slot] = (x, cam)
        self.chunk_index += 1
        return x

    @torch.no_grad()
    def decode(self, latents: Tensor) -> np.ndarray:
        """Latents of one chunk -> uint8 frames (K, H, W, 3), streaming the VAE state."""
        vae = self.model.vae
        frames, self._vae_state = vae.decode_step(vae.from_dit(latents), self._vae_state)
        return to_uint8(frames[0]).cpu().numpy()

    def next_frames(self) -> np.ndarray:
        return self.decode(self.step())
