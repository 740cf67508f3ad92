"""Model configuration: one dataclass per network, named presets in a plain dict.

Every derived size (tokens per frame, cache capacity, the largest temporal position)
is a property computed from these fields, so no other file repeats it as a literal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from model.errors import check_field as _check

if TYPE_CHECKING:
    from cache.kv import CacheLayout


# --------------------------------------------------------------------------- VAE


@dataclass
class VAEConfig:
    """Causal video autoencoder: per-frame 2-D convolutions plus causal temporal mixing."""

    image_channels: int = 3
    latent_channels: int = 16
    enc_channels: tuple[int, ...] = (32, 64, 128)  # widths at H/2, H/4, H/8 (one per 2x down)
    dec_channels: tuple[int, ...] = (96, 48, 24)  # widths at H/8, H/4, H/2, coarse first
    latent_scale: float = 1.0  # latents are (z - latent_shift) * latent_scale for the DiT
    latent_shift: float = 0.0
    # a second decoder draws the frames shown (`livereel train decoder` sharpens it); the
    # first still draws the picture the stream keeps (the next chunk's warped prior, the
    # spatial memory), as the DiT was trained on
    display_decoder: bool = False

    def __post_init__(self) -> None:
        self.enc_channels = tuple(self.enc_channels)
        self.dec_channels = tuple(self.dec_channels)
        for name in ("image_channels", "latent_channels"):
            _check(getattr(self, name) > 0, "VAEConfig", name, "must be positive", getattr(self, name))
        _check(len(self.enc_channels) > 0 and min(self.enc_channels) > 0, "VAEConfig",
               "enc_channels", "must be non-empty and positive", self.enc_channels)
        _check(len(self.dec_channels) == len(self.enc_channels), "VAEConfig", "dec_channels",
               f"must have {len(self.enc_channels)} entries like enc_channels", self.dec_channels)
        _check(min(self.dec_channels) > 0, "VAEConfig", "dec_channels", "must be positive",
               self.dec_channels)
        _check(self.latent_scale > 0, "VAEConfig", "latent_scale", "must be positive",
               self.latent_scale)

    @property
    def downsample(self) -> int:
        return 2 ** len(self.enc_channels)


# --------------------------------------------------------------------------- text


@dataclass
class TextConfig:
    """Built-in text encoder: hashed word tokens, a small transformer, trained with the DiT."""

    vocab_size: int = 4096  # hash buckets; words are hashed, so any prompt encodes
    max_tokens: int = 16
    dim: int = 128
    depth: int = 2
    heads: int = 4

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_tokens", "dim", "heads"):
            _check(getattr(self, name) > 0, "TextConfig", name, "must be positive", getattr(self, name))
        _check(self.depth >= 0, "TextConfig", "depth", "must be >= 0", self.depth)
        _check(self.dim % self.heads == 0, "TextConfig", "heads", f"must divide dim={self.dim}",
               self.heads)


# --------------------------------------------------------------------------- DiT


@dataclass
class DiTConfig:
    """The causal DiT and the layout of its context: sink | memory | window | chunk.

    Sizes in frames are latent frames. A chunk is `chunk_frames` latent frames; the
    sink keeps the first `sink_frames`, the window the most recent `window_frames`,
    and the memory bank `memory_frames` worth of evicted frames, pooled
    `memory_pool` x `memory_pool` per frame.
    """

    latent_channels: int = 16
    latent_size: int = 16  # latent grid side (H == W)
    patch: int = 2
    dim: int = 128
    depth: int = 6
    heads: int = 2
    mlp_ratio: float = 4.0
    text_dim: int = 128
    chunk_frames: int = 2
    sink_frames: int = 2
    window_frames: int = 4
    memory_frames: int = 4
    memory_pool: int = 2
    rope_time_dims: int = 16  # per head; the rest is split evenly between world y and x
    rope_time_theta: float = 100.0
    rope_space_theta: float = 100.0
    camera_scale: float = 8.0  # per-frame motion (tokens/frame) is multiplied by this before its MLP
    warp_prior: bool = True  # input: the previous frame warped by the camera motion (model/prior.py)
    prior_space: str = "pixel"  # where the prior is warped: "latent" or "pixel" (decode, warp, encode)
    # in pixel space, the picture warped: "decoded" (the frame decoded alone: one more decode a
    # chunk) or "shown" (the streaming decode's, the picture the viewer saw: no second
    # decode); a model streams with the one it was trained with (model/prior.py)
    prior_picture: str = "decoded"
    # input: one more prior channel, a soft disk where the object should be drawn on a chunk
    # that starts from nothing (a stream's first chunk): the prompt says what, this says where
    object_hint: bool = False
    # the hint is the silhouette of the shape the prompt names (a disk where it names none):
    # the prompt's shape word alone did not change what the DiT drew
    hint_shape: bool = False

    def __post_init__(self) -> None:
        c = "DiTConfig"
        for name in ("latent_channels", "latent_size", "patch", "dim", "depth", "heads",
                     "text_dim", "chunk_frames", "window_frames", "memory_pool"):
            _check(getattr(self, name) > 0, c, name, "must be positive", getattr(self, name))
        for name in ("sink_frames", "memory_frames"):
            _check(getattr(self, name) >= 0, c, name, "must be >= 0", getattr(self, name))
        _check(self.mlp_ratio > 0, c, "mlp_ratio", "must be positive", self.mlp_ratio)
        _check(self.prior_space in ("latent", "pixel"), c, "prior_space", "must be 'latent' or 'pixel'",
               self.prior_space)
        _check(self.prior_picture in ("decoded", "shown"), c, "prior_picture", "must be 'decoded' or 'shown'",
               self.prior_picture)
        _check(not self.object_hint or (self.warp_prior and self.prior_space == "pixel"), c, "object_hint",
               "needs warp_prior with prior_space 'pixel' (the hint is a channel of the warped prior)",
               self.object_hint)
        _check(not self.hint_shape or self.object_hint, c, "hint_shape", "needs object_hint (it shapes that hint)",
               self.hint_shape)
        _check(self.latent_size % self.patch == 0, c, "patch",
               f"must divide latent_size={self.latent_size}", self.patch)
        _check(self.dim % self.heads == 0, c, "heads", f"must divide dim={self.dim}", self.heads)
        _check(self.window_frames >= self.chunk_frames, c, "window_frames",
               f"must be at least one chunk (chunk_frames={self.chunk_frames})", self.window_frames)
        for name in ("sink_frames", "window_frames", "memory_frames"):
            _check(getattr(self, name) % self.chunk_frames == 0, c, name,
                   f"must be a multiple of chunk_frames={self.chunk_frames}", getattr(self, name))
        _check(self.grid % self.memory_pool == 0, c, "memory_pool",
               f"must divide the token grid side {self.grid}", self.memory_pool)
        _check(self.head_dim % 2 == 0, c, "heads", "must leave an even head dim", self.heads)
        _check(self.rope_time_dims % 2 == 0 and 0 <= self.rope_time_dims < self.head_dim, c,
               "rope_time_dims", f"must be even and below head_dim={self.head_dim}",
               self.rope_time_dims)
        _check((self.head_dim - self.rope_time_dims) % 4 == 0, c, "rope_time_dims",
               "must leave a multiple of 4 dims for world y and x", self.rope_time_dims)

    # derived sizes -----------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def grid(self) -> int:  # tokens per side of a latent frame
        return self.latent_size // self.patch

    @property
    def prior_channels(self) -> int:
        """Channels of the warped prior input: the latent, its coverage, and the object hint."""
        return self.latent_channels + 1 + int(self.object_hint)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid**2

    @property
    def tokens_per_chunk(self) -> int:
        return self.chunk_frames * self.tokens_per_frame

    @property
    def memory_tokens_per_frame(self) -> int:
        return (self.grid // self.memory_pool) ** 2

    @property
    def sink_chunks(self) -> int:
        return self.sink_frames // self.chunk_frames

    @property
    def window_chunks(self) -> int:
        return self.window_frames // self.chunk_frames

    @property
    def memory_chunks(self) -> int:
        return self.memory_frames // self.chunk_frames

    @property
    def context_frames(self) -> int:
        """Frames a chunk can see before itself: sink + memory + window."""
        return self.sink_frames + self.memory_frames + self.window_frames

    @property
    def max_frames(self) -> int:
        """Temporal positions run 0..max_frames-1, however long the stream."""
        return self.context_frames + self.chunk_frames

    def cache_layout(self) -> "CacheLayout":
        """The KV cache's layout for this DiT (cache/kv.py): positions by slot, no cap."""
        from cache.kv import CacheLayout

        return CacheLayout(depth=self.depth, heads=self.heads, head_dim=self.head_dim,
                           chunk_frames=self.chunk_frames, grid=(self.grid, self.grid),
                           sink_frames=self.sink_frames, window_frames=self.window_frames,
                           latent=(self.latent_channels, self.latent_size, self.latent_size),
                           memory_frames=self.memory_frames, memory_pool=self.memory_pool,
                           positions="slot")

    @property
    def cache_tokens(self) -> int:
        """Token slots of the KV cache: sink, memory, window, and the chunk in flight."""
        return ((self.sink_frames + self.window_frames + self.chunk_frames) * self.tokens_per_frame
                + self.memory_frames * self.memory_tokens_per_frame)


# --------------------------------------------------------------------------- whole model


@dataclass
class ModelConfig:
    name: str = "default"
    image_size: int = 128
    fps: int = 16
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    # A random model whose frames span the colour range and follow the prompt strongly
    # (the debug preset, so tests can see a prompt change), instead of the training init.
    visible_init: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.vae, dict):
            self.vae = VAEConfig(**self.vae)
        if isinstance(self.text, dict):
            self.text = TextConfig(**self.text)
        if isinstance(self.dit, dict):
            self.dit = DiTConfig(**self.dit)
        _check(self.fps > 0, "ModelConfig", "fps", "must be positive", self.fps)
        _check(self.image_size > 0 and self.image_size % self.vae.downsample == 0, "ModelConfig",
               "image_size", f"must be a positive multiple of the VAE downsample {self.vae.downsample}",
               self.image_size)
        _check(self.image_size // self.vae.downsample == self.dit.latent_size, "ModelConfig",
               "dit.latent_size", f"must equal image_size / {self.vae.downsample} = "
               f"{self.image_size // self.vae.downsample}", self.dit.latent_size)
        _check(self.vae.latent_channels == self.dit.latent_channels, "ModelConfig",
               "dit.latent_channels", f"must equal vae.latent_channels={self.vae.latent_channels}",
               self.dit.latent_channels)
        _check(self.text.dim == self.dit.text_dim, "ModelConfig", "dit.text_dim",
               f"must equal text.dim={self.text.dim}", self.dit.text_dim)

    @property
    def frames_per_chunk(self) -> int:
        """Video frames one Generator.step() yields (the VAE has no temporal compression)."""
        return self.dit.chunk_frames

    @property
    def frame_size(self) -> tuple[int, int]:
        """A video frame's (height, width) in pixels."""
        return self.image_size, self.image_size

    @property
    def pixels_per_token(self) -> int:
        """Width in view pixels of one DiT token at zoom 0: the unit of world positions."""
        return self.vae.downsample * self.dit.patch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"ModelConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


def _debug() -> ModelConfig:
    return ModelConfig(
        name="debug",
        image_size=32,
        fps=16,
        vae=VAEConfig(latent_channels=4, enc_channels=(8, 8, 8), dec_channels=(8, 8, 8)),
        text=TextConfig(vocab_size=256, max_tokens=8, dim=16, depth=1, heads=2),
        dit=DiTConfig(latent_channels=4, latent_size=4, patch=2, dim=32, depth=2, heads=2,
                      text_dim=16, chunk_frames=2, sink_frames=2, window_frames=4,
                      memory_frames=4, rope_time_dims=4),
        visible_init=True,
    )


def _v2() -> ModelConfig:
    """The v2 default model's shape: the DiT 1.5x wider (dim 192, 3 heads of 64), which
    the CPU engine streams at a real-time factor above 2 on 2 cores (README, CPU engine)."""
    base = ModelConfig()
    return dataclasses.replace(base, name="v2", dit=dataclasses.replace(base.dit, dim=192, heads=3))


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "debug": _debug,
    "default": ModelConfig,
    "v2": _v2,
}


def get_config(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def flops_per_token(cfg: DiTConfig, context_tokens: int, text_tokens: int, kv_only: bool = False) -> float:
    """Forward FLOPs of one DiT token (matmuls and attention, 2 per MAC), attending to
    `context_tokens` self-attention keys (its own chunk included) and `text_tokens` text
    keys. The per-frame modulation (timestep and camera MLPs, adaLN) is shared by a
    frame's tokens and counted here divided among them (the pooled text's projection, one
    per chunk, likewise). `kv_only`: a context pass, whose last block stops after its K/V
    projection and which skips the final layer."""
    d, h = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
    per_layer = 2 * (4 * d * d + 2 * d * h + 2 * d * d)  # qkv+out, mlp, cross q+out
    per_layer += 2 * 2 * d * (context_tokens + text_tokens)  # QK^T and AV
    embed = 2 * cfg.latent_channels * cfg.patch**2 * d  # patch in
    embed += 2 * cfg.prior_channels * cfg.patch**2 * d if cfg.warp_prior else 0  # the prior in
    full_layers, out = cfg.depth, 2 * cfg.latent_channels * cfg.patch**2 * d  # patch out
    ada_blocks, final_ada = cfg.depth * 6 * d * d, 2 * d * d
    if kv_only:
        full_layers, out, final_ada = cfg.depth - 1, 2 * 3 * d * d, 0  # the last block: its qkv only
    per_frame = 2 * (256 * d + d * d + 3 * d + d * d  # timestep and camera MLPs
                     + ada_blocks + final_ada)  # adaLN of the blocks and the final layer
    per_chunk = 2 * cfg.text_dim * d  # the pooled text's projection
    return (full_layers * per_layer + embed + out + per_frame / cfg.tokens_per_frame
            + per_chunk / cfg.tokens_per_chunk)


def flops_per_chunk(cfg: DiTConfig, steps: int, text_tokens: int, batch: int = 1) -> float:
    """Forward FLOPs of one streamed chunk: `steps` denoising evaluations and the context
    pass, each over the chunk's tokens against the whole cache (`batch` 2 with guidance)."""
    per_eval = cfg.tokens_per_chunk * flops_per_token(cfg, cfg.cache_tokens, text_tokens)
    context = cfg.tokens_per_chunk * flops_per_token(cfg, cfg.cache_tokens, text_tokens, kv_only=True)
    return (steps * per_eval + context) * batch
