"""The causal rollout of one stream: KV cache + controls + `step()`.

Per chunk (DESIGN §1): seeded noise for K latent frames, `steps` flow-matching Euler
steps that read the cache, one context pass at t = `context_t` that writes the chunk's
clean K/V, then `cache.commit()`. Controls are staged by `set_*` and take effect at the
next chunk boundary; `applied` says what took effect and at which frame.

The context pass of a chunk runs late, fused with the first evaluation of the next
chunk (`cache.kv.FusedBatch`: one evaluation of twice the rows instead of two, each row
attending to exactly what it would alone), so a warm-started chunk costs one network
evaluation. Until then the chunk is `unwritten`; `flush()` writes it at once (a prompt
switch does, before its re-cache; `fuse=False` does after every chunk).

`step_batch` makes one chunk for each of several streams with one batched network
evaluation per step (the streams keep their own caches, controls and seeds, and get
the same chunks as alone); `decode_batch` decodes them together. A chunk's `decode`
touches only the VAE state, so it may run on another thread while the next `step`
runs (decode of chunk n overlapped with the DiT on chunk n+1).

The Generator knows a model only through a small protocol (`StreamModel`), which each
family implements in its own files (livereel's `model.checkpoint.LiveReel`, Wan's
`model.wan.model.WanModel`); the KV cache takes its layout from the model
(`cache_layout()`). The sampler is flow matching over `sigmas`: Euler steps on the
velocity (livereel's), or, with `renoise`, the x0 prediction re-noised with fresh
noise to the next level (the Self-Forcing family's).

Every step records `timings`: wall and thread-CPU seconds of its phases (controls, with
any re-cache; prepare: the warped prior and the cache's read; denoise; context; decode),
for the benchmarks and the server's stats.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from cache.kv import CacheBatch, CacheLayout, FusedBatch, KVCache, ReadView
from model.camera import CameraCond, integrate, velocity_per_frame
from model.conditioning import TextCond
from model.ops import to_uint8

log = logging.getLogger(__name__)

REBASE_AT = 1e4  # world units; positions are re-based past this to keep float32 exact


class StreamModel(Protocol):
    """What the Generator, the KV cache and the server know of a model family (an
    nn.Module: its parameters' device and dtype are the stream's).

    `config` has `name`, `fps`, `frame_size` (height, width) and `frames_per_chunk`
    (video frames a chunk decodes to);
    `warp_prior`: chunks may start from the last frame warped to the new camera
    (`warm_start`); `camera`: camera motion conditions the model. Latents are
    (B, K, C, h, w) in the model's own scale; text is a `TextCond`."""

    config: Any
    warp_prior: bool
    camera: bool
    closed_vocabulary: bool
    """The model knows the procedural world's words only (model/world.py `vocabulary`,
    `explain_prompt`): the page, the demo and --help say which words it understood."""

    def cache_layout(self) -> CacheLayout: ...

    def redraws_object(self, old: str, new: str) -> bool:
        """Whether a prompt switch from `old` to `new` (no transition) starts the next chunk
        without its warped prior, as a stream's first chunk: the model draws the new
        object instead of copying the old one from the prior."""

    def encode_prompt(self, prompts: list[str]) -> TextCond:
        """Prompts -> text conditioning with its cross-attention K/V (`kv`) computed."""

    def text_kv(self, text: TextCond) -> Tensor:
        """The cross-attention K/V of a (blended) text, (depth, 2, B, H, L, Dh)."""

    def begin_chunk(self, cache, camera: CameraCond, first_frame: int | None = None, rows: int = 1) -> None:
        """Prepare the cache's read (positions, RoPE) for the next chunk, once per chunk;
        `rows` cache rows per stream (2 with guidance)."""

    def evaluate(self, x: Tensor, t: Tensor, text: TextCond, camera: CameraCond, ctx, kv_only: bool = False,
                 context_rows: int = 0) -> Tensor | None:
        """One network evaluation of chunks x at per-frame noise levels t (B, K) against
        `ctx` (a KVCache after `begin_chunk`, a CacheBatch or a FusedBatch): the velocity,
        or None with `kv_only` (a context pass); the first `context_rows` rows are context
        passes whose velocity is not returned."""

    def generator(self, sampling: Any, seed: int = 0, memory: bool = True) -> "Generator":
        """A Generator sampling this model under `model.sampling.Sampling` settings."""

    def sampling_record(self, sampling: Any) -> dict:
        """How its streams are sampled (steps, warm_start, guidance, and any recipe), as
        session logs record it so that replay makes the same frames."""

    def memory_plan(self) -> dict[str, int]:
        """Bytes of what a server holds: weights per part, and per stream the KV cache (and
        any decoder state), for the log at start."""

    def init_decode_state(self) -> Any: ...

    def decode(self, latents: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Latents of a chunk -> RGB in [-1, 1] (B, n, 3, H, W) and the next streaming state.
        A model may also have `decode_pictures(latents, state) -> (frames, picture, state)`,
        the picture of the last frame its stream keeps (a warped prior's source, the spatial
        memory) where that is not the last frame shown (livereel's display decoder)."""


def flow_schedule(steps: int, shift: float = 5.0) -> list[float]:
    """Timesteps from 1 (noise) to 0, shifted towards noise: with 4 steps and shift 5,
    [1, 0.9375, 0.833, 0.625, 0], the schedule of the Self-Forcing family."""
    ts = [1 - i / steps for i in range(steps + 1)]
    return [shift * t / (1 + (shift - 1) * t) for t in ts]


def chunk_seed(seed: int, chunk: int) -> int:
    return (seed * 1_000_003 + chunk * 7919 + 17) % (2**63 - 1)


class Unwritten(NamedTuple):
    """A chunk made whose clean K/V are not in the cache yet: its latents (1, K, C, h, w),
    and the text and camera it was made with (not guidance-batched)."""

    x: Tensor
    text: TextCond
    cam: CameraCond


class Generator:
    def __init__(self, model: StreamModel, seed: int = 0, steps: int = 4, guidance: float = 1.0,
                 context_t: float = 0.0, shift: float = 5.0, memory: bool = True,
                 autocast: torch.dtype | None = None, warm_start: int = 0, fuse: bool = True,
                 sigmas: Sequence[float] | None = None, renoise: bool = False, switch: str = "recache",
                 keep_sink: bool = False, blend_chunks: int = 4, anchor: float = 0.0,
                 rewrite: bool = False):
        """`sigmas`: the noise levels from 1 down to 0 (default: `steps` levels of
        `flow_schedule` at `shift`); `renoise`: the Self-Forcing family's sampler (see the
        module docstring). `switch`: what a prompt change without a transition does:
        "recache" (the kept chunks' K/V recomputed under the new prompt; `keep_sink`
        keeps the sink's, as LongLive), "cut" (only the text changes) or "blend" (the
        text blended over `blend_chunks` chunks, as Krea). `anchor`: the share of a
        warm-started chunk's result taken from its warped prior where the prior covers the
        view (`anchor_to_prior`; 0: the network's alone). `rewrite`: a closed-vocabulary
        model's prompts reworded in its caption grammar before encoding
        (`model.world.grammar_prompt`)."""
        if sigmas is None and steps < 1:
            raise ValueError(f"steps must be >= 1 (got {steps})")
        sigmas = list(flow_schedule(steps, shift) if sigmas is None else sigmas)
        steps = len(sigmas) - 1
        if steps < 1 or sigmas[-1] != 0 or any(a <= b for a, b in zip(sigmas, sigmas[1:])):
            raise ValueError(f"need >= 1 step and noise levels falling to 0 (got steps {steps}, sigmas {sigmas})")
        if not 0 <= warm_start < steps:
            raise ValueError(f"warm_start must be in [0, steps) (got {warm_start} with {steps} steps)")
        if not 0.0 <= anchor <= 1.0:
            raise ValueError(f"anchor must be in [0, 1] (got {anchor})")
        if switch not in ("recache", "cut", "blend") or blend_chunks < 1:
            raise ValueError(f"switch must be 'recache', 'cut' or 'blend' and blend_chunks >= 1 "
                             f"(got {switch!r}, {blend_chunks})")
        self.model = model
        self.config = model.config
        self.layout = model.cache_layout()
        self.steps, self.guidance, self.context_t = steps, guidance, context_t
        # Steps skipped by starting from the warped prior, noised to the level where the
        # schedule then starts (where the prior covers the view; noise where it does not).
        # Not after a prompt switch or a reset: the prior shows the old prompt or nothing.
        self.warm_start = warm_start if model.warp_prior else 0
        self.anchor = float(anchor)
        self.rewrite = bool(rewrite) and getattr(model, "closed_vocabulary", False)
        self.autocast = autocast  # e.g. torch.bfloat16 on CUDA: the DiT's matmuls in bf16, the state in fp32
        self.fuse = fuse  # a chunk's context pass fused with the next chunk's first evaluation
        self.sigmas, self.renoise = sigmas, renoise
        self.switch, self.keep_sink, self.blend_chunks = switch, keep_sink, blend_chunks
        weight = next(model.parameters())
        self.device = weight.device
        self.cfg_batch = 2 if guidance != 1.0 else 1  # conditional, unconditional
        # the cache in the network's dtype (bf16 on GPU); the sampler's latents stay fp32
        self.cache = KVCache(self.layout, self.cfg_batch, self.device, dtype=weight.dtype, memory=memory)
        self._null = self._encode("")
        self.prompt = ""
        self._text = self._null
        self._transition: tuple[TextCond, TextCond, int, int] | None = None
        self.pan, self.zoom = (0.0, 0.0), 0.0
        self._path: tuple[Tensor, Tensor] | None = None  # follow_path
        self._pending: dict = {}
        self.applied: list[dict] = []
        self.timings: dict[str, Span] = {}  # the last chunk's phases (see the module docstring)
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

    def follow_path(self, pos: Tensor, motion: Tensor) -> None:
        """Drive the camera along a given path instead of integrating velocities: per-frame
        positions and motions (F, 3) in world token units, chunk i taking frames
        [i*K, (i+1)*K) counted from the stream's start (the training rollouts follow a
        world clip's true camera). Past the path's end the camera stops there. Set it before
        the first chunk (a path is not re-based as the stream goes); `set_camera` has no
        effect while it is followed."""
        if pos.shape != motion.shape or pos.dim() != 2 or pos.shape[1] != 3 or len(pos) == 0:
            raise ValueError(f"a camera path is (F >= 1, 3) positions and motions (got {tuple(pos.shape)}, "
                             f"{tuple(motion.shape)})")
        self._path = (pos.to(self.device, torch.float32), motion.to(self.device, torch.float32))

    # ------------------------------------------------------------------ state
    @property
    def frame_index(self) -> int:
        return self.chunk_index * self.config.frames_per_chunk

    def _start(self, seed: int) -> None:
        self.seed = seed
        self.chunk_index = 0
        self.camera = (0.0, 0.0, 0.0)  # x, y, zoom (world token units, log2)
        self.cache.reset()
        self.unwritten: Unwritten | None = None  # the last chunk, until its context pass
        # per kept slot: clean latents, camera, and the cache's last frame before it (its prior's source)
        self._kept: dict[tuple[str, int], tuple[Tensor, CameraCond, tuple]] = {}
        self._vae_state = self.model.init_decode_state()

    def _encode(self, prompt: str) -> TextCond:
        if self.rewrite:
            from model.world import grammar_prompt

            prompt = grammar_prompt(prompt)
        return self.model.encode_prompt([prompt])

    def take_controls(self) -> dict:
        """The controls staged so far (cleared): what `apply_controls` applies."""
        staged, self._pending = self._pending, {}
        return staged

    def _recaches(self, staged: dict) -> bool:
        """Whether applying `staged` re-caches the kept chunks (a prompt switch without a
        transition, past the first chunk): the cache must hold every chunk first."""
        return ("prompt" in staged and "reset" not in staged and staged["prompt"][1] == 0
                and self.chunk_index > 0 and self.switch == "recache")

    def apply_controls(self, pending: dict | None = None) -> None:
        """Apply the staged controls (or `pending`, from `take_controls`) now; step() does
        this first; a prompt switch re-caches here. Fills `applied`."""
        pending = self.take_controls() if pending is None else pending
        if self._recaches(pending):
            self.flush()
        if "reset" in pending:
            self._start(pending["reset"])
            self.applied.append({"what": "reset", "seed": self.seed, "frame": 0})
        if "camera" in pending:
            self.pan, self.zoom = pending["camera"]
            self.applied.append({"what": "camera", "pan": list(self.pan), "zoom": self.zoom,
                                 "frame": self.frame_index})
        if "prompt" in pending:
            text, transition = pending["prompt"]
            if transition == 0 and self.switch == "blend":
                transition = self.blend_chunks
            new = self._encode(text)
            redraw = False
            if transition > 0 and self.chunk_index > 0:
                self._transition = (self._text, new, transition, 0)
            else:
                self._transition = None
                self._text = new
                if self.chunk_index > 0 and self.switch == "recache":
                    self._recache()
                    # the next chunk's prior would carry the old object into it (it copies
                    # it): that chunk starts as a stream's first, the K/V context kept
                    redraw = self.model.redraws_object(self.prompt, text)
                    if redraw:
                        self.cache.frame_valid.zero_()
            self.prompt = self.cache.prompt = text
            self.cache.forget_places()  # they show the old prompt
            self.applied.append({"what": "prompt", "text": text, "transition": transition,
                                 "frame": self.frame_index, **({"redraw": True} if redraw else {})})

    def _chunk_text(self) -> TextCond:
        """The text for this chunk, advancing a smooth transition by one chunk."""
        if self._transition is None:
            return self._text
        old, new, n, i = self._transition
        text = old.lerp(new, (i + 1) / n)
        text.kv = self.model.text_kv(text)
        self._transition = None if i + 1 >= n else (old, new, n, i + 1)
        self._text = new if self._transition is None else text
        return text

    def _advance_camera(self) -> CameraCond:
        if self._path is not None:
            return self._path_camera()
        step = velocity_per_frame(self.pan, self.zoom, self.camera[2], self.layout.grid[1], self.config.fps)
        pos, motion = integrate(self.camera, step, self.layout.chunk_frames)
        self.camera = pos[-1]
        if max(abs(self.camera[0]), abs(self.camera[1])) > REBASE_AT:
            self._rebase()
        return CameraCond(torch.tensor([pos], device=self.device),
                          torch.tensor([motion], device=self.device))

    def _path_camera(self) -> CameraCond:
        """This chunk's frames of the `follow_path` path (held still past its end)."""
        K = self.layout.chunk_frames
        path_pos, path_motion = self._path
        frames = torch.arange(self.chunk_index * K, (self.chunk_index + 1) * K, device=self.device)
        idx = frames.clamp(max=len(path_pos) - 1)
        pos = path_pos[idx]
        motion = torch.where((frames < len(path_pos))[:, None], path_motion[idx], 0.0)
        self.camera = tuple(float(v) for v in pos[-1])
        return CameraCond(pos[None], motion[None])

    def _rebase(self) -> None:
        """Move the world origin to the camera; attention only sees relative positions."""
        x, y, z = self.camera
        offset = torch.tensor([[x, y]], device=self.device)
        self.cache.rebase(offset.expand(self.cfg_batch, -1))
        for key, (lat, cam, (frame, frame_pos, valid)) in self._kept.items():
            pos = cam.pos.clone()
            pos[..., :2] -= offset[:, None]
            frame_pos = frame_pos.clone()
            frame_pos[:, :2] -= offset
            self._kept[key] = (lat, CameraCond(pos, cam.motion), (frame, frame_pos, valid))
        self.camera = (0.0, 0.0, z)

    # ------------------------------------------------------------------ network calls
    def _batch_cam(self, cam: CameraCond) -> CameraCond:
        """With guidance, both halves see the same camera: guidance is on the prompt."""
        if self.cfg_batch == 1:
            return cam
        return CameraCond(cam.pos.repeat(2, 1, 1), cam.motion.repeat(2, 1, 1))

    def _batch_text(self, text: TextCond) -> TextCond:
        return text if self.cfg_batch == 1 else TextCond.cat([text, self._null])

    def _begin_chunk(self, cam: CameraCond, first_frame: int | None = None) -> None:
        """The cache's read (and the model's warped prior, where it has one) for camera `cam`."""
        self.model.begin_chunk(self.cache, self._batch_cam(cam), first_frame, rows=self.cfg_batch)

    def _context_pass(self, x: Tensor, text: TextCond, cam: CameraCond, first_frame: int | None = None,
                      begin: bool = True) -> None:
        """One evaluation at t = context_t over the clean chunk: writes its K/V. `begin`:
        prepare the cache's read for it first (False: the read it was made with is current)."""
        if begin:
            self._begin_chunk(cam, first_frame)
        _evaluate(self.model, x, self.context_t, self._batch_text(text), self._batch_cam(cam), self.cache,
                  self.cfg_batch, kv_only=True, autocast=self.autocast)

    def flush(self) -> None:
        """Write the last chunk's clean K/V into the cache now, with a context pass of its
        own (`step` otherwise fuses that pass with the next chunk's first evaluation)."""
        if self.unwritten is None:
            return
        u = self.unwritten
        self._context_pass(u.x, u.text, u.cam, begin=False)
        self._commit()

    def _commit(self) -> tuple[str, int]:
        """Move the unwritten chunk into the cache (its last frame becomes the next prior's
        source) and keep its latents for re-caching. Its K/V are what the cache's chunk slot
        holds: the context pass's after `flush`, placeholders that a `FusedBatch` overwrites
        otherwise."""
        u, n = self.unwritten, self.cfg_batch
        self.unwritten = None
        before = self.cache.frame_state()
        self.cache.write_frame(u.x[:, -1].repeat_interleave(n, 0), u.cam.pos[:, -1].repeat_interleave(n, 0))
        slot = self.cache.commit()
        self._kept[slot] = (u.x, u.cam, before)
        return slot

    def _recache(self) -> None:
        """Recompute the K/V of the kept chunks (sink, window) under the new prompt, in
        stream order, each seeing the context that precedes it (DESIGN §3)."""
        latest = self.cache.frame_state()
        for slot in self.cache.kept_chunks():
            if self.keep_sink and slot[0] == "sink":
                continue
            x, cam, before = self._kept[slot]
            self.cache.load_frame_state(before)  # the prior it was made with
            self._context_pass(x, self._text, cam, self.cache.first_frame(*slot))
            self.cache.commit(slot)
        self.cache.load_frame_state(latest)

    def _noise(self, step: int = 0) -> Tensor:
        """The chunk's starting noise (step 0), or the fresh noise `renoise` adds after step
        `step`; seeded by the stream's seed, the chunk and the step."""
        g = torch.Generator().manual_seed(chunk_seed(self.seed, self.chunk_index) + step)
        shape = (1, self.layout.chunk_frames, *self.layout.latent)
        return torch.randn(shape, generator=g).to(self.device)

    # ------------------------------------------------------------------ the rollout
    def _begin(self, staged: dict) -> tuple[Tensor, TextCond, CameraCond]:
        """Applies the `staged` controls, then the text and camera of the next chunk;
        prepares the cache's read. Returns the chunk's noise and its (guidance-batched)
        text and camera."""
        self.applied = []
        self.apply_controls(staged)
        self._warm = self.chunk_index > 0 and not any(a["what"] in ("prompt", "reset") for a in self.applied)
        self._text_now = self._chunk_text()
        cam = self._advance_camera()
        self._cam = cam
        clock = _Clock()
        self._begin_chunk(cam)
        self._prepare = clock.lap()
        return self._noise(), self._batch_text(self._text_now), self._batch_cam(cam)

    @torch.no_grad()
    def step(self) -> Tensor:
        """Generate one chunk; returns its clean latents (1, K, C, h, w) in DiT scale."""
        return step_batch([self])[0]

    @torch.no_grad()
    def decode(self, latents: Tensor) -> np.ndarray:
        """Latents of one chunk -> uint8 frames (K, H, W, 3), streaming the VAE state."""
        return decode_batch([self], [latents])[0]

    def next_frames(self) -> np.ndarray:
        return self.decode(self.step())

    def batch_key(self) -> tuple:
        """Streams with equal keys can share one batched step (`next_frames_batch`)."""
        return (id(self.model), tuple(self.sigmas), self.guidance, self.context_t, self.autocast,
                self.warm_start, self.renoise, self.anchor)


# ---------------------------------------------------------------------- several streams


class Span(NamedTuple):
    """Seconds a phase took: wall clock and CPU time of the thread that ran it (the
    latter barely moves when other processes share the cores)."""

    wall: float
    cpu: float


class _Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()

    def lap(self) -> Span:
        wall, cpu = time.perf_counter(), time.thread_time()
        span = Span(wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return span


def _evaluate(model: StreamModel, x: Tensor, t: float | Tensor, text: TextCond, cam: CameraCond, cache,
              cfg_batch: int, kv_only: bool = False, autocast: torch.dtype | None = None,
              context: int = 0) -> Tensor | None:
    """One network evaluation of a batch of chunks x (S, K, C, h, w) at time t (or one
    per chunk, (S,)); with guidance each chunk is evaluated twice (conditional,
    unconditional), side by side. `kv_only` for a context pass: only the cache writes
    matter; `context`: the first chunks are context passes (their velocity is not
    returned). `autocast`: the dtype of the evaluation's matmuls (None: the model's own);
    returns x's dtype."""
    xb = x if cfg_batch == 1 else x.repeat_interleave(cfg_batch, dim=0)
    if isinstance(t, Tensor):
        tt = t.to(x.device, x.dtype).repeat_interleave(cfg_batch)[:, None].expand(xb.shape[:2])
    else:
        tt = torch.full(xb.shape[:2], t, device=x.device)
    with torch.autocast(x.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        v = model.evaluate(xb, tt, text, cam, cache, kv_only=kv_only, context_rows=context * cfg_batch)
    return None if v is None else v.to(x.dtype)


@torch.no_grad()
def step_batch(gens: list[Generator]) -> list[Tensor]:
    """One chunk for each of several streams, with one batched evaluation per step.

    Each stream applies its own staged controls (a prompt switch re-caches that stream
    alone), keeps its own cache, seed and camera, and gets the chunk it would get alone
    (to float tolerance). The streams must share the model and the sampler settings.
    The previous chunks' context passes ride along in the first evaluation (`FusedBatch`).
    Returns each stream's clean latents (1, K, C, h, w).
    """
    lead = gens[0]
    for g in gens[1:]:
        if g.batch_key() != lead.batch_key():
            raise ValueError("a batched step needs streams of one model with the same steps, shift, "
                             "guidance, context_t, autocast, warm_start and anchor")
    clock = _Clock()
    staged = [g.take_controls() for g in gens]
    for g, s in zip(gens, staged):
        if g._recaches(s):
            g.flush()
    flushed = clock.lap()
    views: dict[int, tuple[ReadView, Unwritten, tuple[str, int]]] = {}  # the read, chunk and slot of each
    for g, s in zip(gens, staged):
        if g.unwritten is not None and "reset" not in s:  # a reset empties the cache anyway
            view = g.cache.read_view()
            views[id(g)] = (view, g.unwritten, g._commit())
    begun = [g._begin(s) for g, s in zip(gens, staged)]
    lap = clock.lap()
    prepare = Span(sum(g._prepare.wall for g in gens), sum(g._prepare.cpu for g in gens))
    controls = Span(lap.wall - prepare.wall, lap.cpu - prepare.cpu)
    # Streams starting from their warped prior skip the first steps; a stream that just
    # switched prompt starts from noise: each group shares one schedule.
    starts = [lead.warm_start if g._warm else 0 for g in gens]
    out: list[Tensor] = [None] * len(gens)  # type: ignore[list-item]
    for k in sorted(set(starts)):
        idx = [i for i, s in enumerate(starts) if s == k]
        group = [gens[i] for i in idx]
        for i, xi in zip(idx, _denoise(group, [begun[i] for i in idx], k, views)):
            out[i] = xi
    denoise = clock.lap()
    for g, xi in zip(gens, out):
        g.unwritten = Unwritten(xi, g._text_now, g._cam)
        g.chunk_index += 1
        if not g.fuse:
            g.flush()
    context = clock.lap()
    context = Span(context.wall + flushed.wall, context.cpu + flushed.cpu)
    for g in gens:
        g.timings = {"controls": controls, "prepare": prepare, "denoise": denoise, "context": context}
    return out


def extend_covered(z: Tensor, cover: Tensor) -> Tensor:
    """z (..., C, h, w) with its covered part `cover` (..., 1, h, w) (a rectangle: the old
    view seen from the new camera) carried to the uncovered border by repeating its edge
    pixels, the start of a warm-started chunk there: pure noise at the warm start's level
    is far off what the model was trained on and leaves a band of noise at the edge the
    camera moves towards. With nothing covered, zeros (the prior's own)."""
    lead, (h, w) = z.shape[:-3], z.shape[-2:]
    flat_z, flat_c = z.reshape(-1, *z.shape[-3:]), cover.reshape(-1, h, w) > 0
    out = torch.zeros_like(flat_z)
    for i, (zi, ci) in enumerate(zip(flat_z, flat_c)):
        rows, cols = ci.any(1).nonzero(), ci.any(0).nonzero()
        if len(rows) == 0:
            continue
        ys = torch.arange(h, device=z.device).clamp(int(rows[0]), int(rows[-1]))
        xs = torch.arange(w, device=z.device).clamp(int(cols[0]), int(cols[-1]))
        out[i] = zi[:, ys][:, :, xs]
    return out.view(*lead, *z.shape[-3:])


def start_from_prior(prior: Tensor, noise: Tensor, s: float | Tensor) -> Tensor:
    """A warm-started chunk's start: its warped prior (B, K, C + 1 (+ hint), h, w), the
    latent picture extended past what it covers (`extend_covered`), noised to level `s`
    with `noise` (B, K, C, h, w)."""
    C = noise.shape[2]
    return (1 - s) * extend_covered(prior[:, :, :C], prior[:, :, C:C + 1]) + s * noise


def anchor_to_prior(x: Tensor, prior: Tensor, share: float | Tensor) -> Tensor:
    """A warm-started chunk's clean latents x (B, K, C, h, w) moved by `share` (a number,
    or (B, 1, 1, 1, 1)) toward its warped prior (B, K, C + 1 (+ hint), h, w) where the
    prior covers the view. The camera's move is exact in the prior (the last frame shown,
    warped); the network, trained with a mean-squared error, keeps part of the picture's
    detail where it was on the screen (a held pan measured 0.5-0.6 of its speed). Half
    the prior keeps the move (0.8-0.9 of it on the eval) and leaves the network the rest:
    the object's own motion, the weather, and the border the camera uncovers, which it
    draws alone. The sampler anchors only chunks whose camera pans: with the camera
    still, the prior is the last frame as it was, and holding half of it held a switched
    object's old colour (a red -> blue switch streamed 31% blue in the browser check,
    100% unanchored); a zoom's prior is the picture resampled, and holding half of it
    lost the biome on zooming frames (eval seed 2: 85% -> 61%)."""
    C = x.shape[2]
    cover = prior[:, :, C:C + 1]
    return x + share * cover * (prior[:, :, :C] - x)


def _cat_text(texts: list[TextCond]) -> TextCond:
    return texts[0] if len(texts) == 1 else TextCond.cat(texts)


def _cat_cam(cams: list[CameraCond]) -> CameraCond:
    if len(cams) == 1:
        return cams[0]
    return CameraCond(torch.cat([c.pos for c in cams]), torch.cat([c.motion for c in cams]))


def _denoise(gens: list[Generator], begun: list[tuple[Tensor, TextCond, CameraCond]], k: int,
             views: dict[int, tuple[ReadView, Unwritten, tuple[str, int]]]) -> list[Tensor]:
    """The denoising steps of one group of streams sharing a schedule that starts at step
    `k` (k > 0: from each stream's warped prior, noised to that level). The first
    evaluation also makes the context pass of each stream's last chunk (`views`: its read,
    the chunk, and the slot it was committed to)."""
    lead, n = gens[0], gens[0].cfg_batch
    x = torch.cat([b[0] for b in begun])
    text, cam = _cat_text([b[1] for b in begun]), _cat_cam([b[2] for b in begun])
    if k:
        prior = torch.cat([g.cache.prior[::n] for g in gens])  # (S, K, C + 1 (+ hint), h, w)
        x = start_from_prior(prior, x, lead.sigmas[k])
    deferred = [(g, *views[id(g)]) for g in gens if id(g) in views]
    cache = None  # the caches' own read, once the deferred K/V are in it
    for i, (t, t_next) in enumerate(zip(lead.sigmas[k:-1], lead.sigmas[k + 1:])):
        if i == 0 and deferred:
            ctx = FusedBatch([(g.cache, view, slot) for g, view, _, slot in deferred], [g.cache for g in gens])
            us = [u for _, _, u, _ in deferred]
            tt = torch.tensor([lead.context_t] * len(us) + [t] * len(gens))
            v = _evaluate(lead.model, torch.cat([u.x for u in us] + [x]), tt,
                          _cat_text([g._batch_text(u.text) for (g, _, u, _) in deferred] + [text]),
                          _cat_cam([g._batch_cam(u.cam) for (g, _, u, _) in deferred] + [cam]), ctx, n,
                          autocast=lead.autocast, context=len(us))
        else:
            if cache is None:
                cache = lead.cache if len(gens) == 1 else CacheBatch([g.cache for g in gens])
            v = _evaluate(lead.model, x, t, text, cam, cache, n, autocast=lead.autocast)
        if n > 1:
            cond, uncond = v.view(len(gens), n, *v.shape[1:]).unbind(1)
            v = uncond + lead.guidance * (cond - uncond)
        if lead.renoise and t_next > 0:  # x0, re-noised to the next level with fresh noise
            noise = torch.cat([g._noise(i + 1) for g in gens])
            x = (1 - t_next) * (x - t * v) + t_next * noise
        else:
            x = x + (t_next - t) * v
    if k and lead.anchor > 0:  # streams whose camera pans (and does not zoom) this chunk
        moving = torch.tensor([float(bool(g._cam.motion[..., :2].abs().amax() > 0)
                                     and not bool(g._cam.motion[..., 2].abs().amax() > 0)) for g in gens],
                              device=x.device)
        if bool(moving.any()):
            x = anchor_to_prior(x, prior, lead.anchor * moving.view(-1, 1, 1, 1, 1))
    return list(x.split(1))


@torch.no_grad()
def decode_batch(gens: list[Generator], latents: list[Tensor]) -> list[np.ndarray]:
    """Decode one chunk of each stream in one VAE call, streaming each one's VAE state;
    returns uint8 frames (K, H, W, 3) per stream. A decoder whose state is not a list of
    per-layer tensors (the Wan decoders', whose first chunk decodes differently) decodes
    each stream in its own call."""
    clock = _Clock()
    model = gens[0].model
    if len(gens) > 1 and not all(isinstance(g._vae_state, list) for g in gens):
        out = [decode_batch([g], [x])[0] for g, x in zip(gens, latents)]
        span = clock.lap()
        for g in gens:
            g.timings = {**g.timings, "decode": span}
        return out
    if len(gens) == 1:
        state = gens[0]._vae_state
    else:  # a stream at its first chunk has no state yet: zeros, as the decoder assumes
        state = []
        for parts in zip(*(g._vae_state for g in gens)):
            like = next((p for p in parts if p is not None), None)
            state.append(None if like is None else
                         torch.cat([torch.zeros_like(like) if p is None else p for p in parts]))
    if hasattr(model, "decode_pictures"):  # the picture kept may be another decoder's than the one shown
        frames, pictures, state = model.decode_pictures(torch.cat(latents), state)
    else:
        frames, state = model.decode(torch.cat(latents), state)
        pictures = frames[:, -1]
    shown, places = getattr(model, "prior_from_shown", False), getattr(model, "remembers_places", False)
    if shown or places:
        for i, (g, x) in enumerate(zip(gens, latents)):
            picture = pictures[i:i + 1].clamp(-1, 1)
            if shown:  # the next chunk's prior warps the picture shown
                g.cache.show(x[:, -1].clone(), picture)
            if places:  # the spatial memory (with the memory on)
                g.cache.remember(picture, g._cam.pos[:, -1])
    frames = to_uint8(frames)
    if frames.is_cuda:  # through pinned host memory: one DMA copy, not a pageable staging copy
        host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
        frames = host.copy_(frames, non_blocking=True)
        torch.cuda.current_stream().synchronize()
    frames = frames.cpu().numpy()
    span = clock.lap()
    for i, g in enumerate(gens):
        g._vae_state = state if len(gens) == 1 else [None if s is None else s[i:i + 1] for s in state]
        g.timings = {**g.timings, "decode": span}
    return list(frames)


def next_frames_batch(gens: list[Generator]) -> list[np.ndarray]:
    """`next_frames` of several streams with equal `batch_key`s: one batched chunk and one
    batched decode; each stream gets the frames it would get alone."""
    return decode_batch(gens, step_batch(gens))
