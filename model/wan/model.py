"""A Wan2.1 causal model behind livereel's engine: the DiT, a recipe, a resolution, and
the text encoder and decoder it streams with.

`WanModel` implements the model protocol the Generator, the KV cache and the server
use (model/generate.py, `StreamModel`): a cache layout, `encode_prompt` / `text_kv`,
`begin_chunk`, `evaluate`, and a streaming `decode`. The text encoder (umT5-XXL) and the
decoders (the Wan VAE, a tiny decoder) are given to it: until they are (issue 16), a
Wan model generates latents, and `decode` says what it is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from cache.kv import CacheLayout
from model.conditioning import TextCond
from model.generate import Generator
from model.wan.config import Recipe, WanConfig, get_recipe, DEFAULT_RECIPE
from model.wan.dit import WanDiT

VAE_STRIDE = (4, 8, 8)  # Wan2.1 VAE: time, height, width
TextEncoder = Callable[[list[str]], Tensor]  # prompts -> (B, L <= text_len, text_dim)


@dataclass
class WanStreamConfig:
    """What a streamed Wan model is: its DiT, its recipe and the picture size in pixels."""

    dit: WanConfig = field(default_factory=WanConfig)
    recipe: Recipe = field(default_factory=lambda: get_recipe(DEFAULT_RECIPE))
    height: int = 480
    width: int = 832
    name: str = "wan"

    def __post_init__(self) -> None:
        _, sh, sw = VAE_STRIDE
        _, ph, pw = self.dit.patch
        if self.height % (sh * ph) or self.width % (sw * pw) or self.height <= 0 or self.width <= 0:
            raise ValueError(f"height and width must be positive multiples of {sh * ph} "
                             f"(got {self.height}x{self.width})")

    @property
    def fps(self) -> int:
        return self.recipe.fps

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def latent(self) -> tuple[int, int, int]:
        """A latent frame: (channels, rows, columns)."""
        return self.dit.in_channels, self.height // VAE_STRIDE[1], self.width // VAE_STRIDE[2]

    @property
    def frames_per_chunk(self) -> int:
        """Video frames a chunk decodes to: four per latent frame. (The Wan VAE decodes a
        stream's first latent frame to one frame; `WanModel.decode` shows it four times,
        so that every chunk is as long and the stream's clock stays even.)"""
        return VAE_STRIDE[0] * self.recipe.chunk_frames

    def cache_layout(self) -> CacheLayout:
        d, r = self.dit, self.recipe
        _, rows, cols = self.latent
        return CacheLayout(depth=d.depth, heads=d.heads, head_dim=d.head_dim, chunk_frames=r.chunk_frames,
                           grid=(rows // d.patch[1], cols // d.patch[2]), sink_frames=r.sink_frames,
                           window_frames=r.window_frames, latent=self.latent, positions=r.positions,
                           max_positions=d.rope_max_frames if r.positions == "absolute" else None)

    def to_dict(self) -> dict:
        return {"name": self.name, "family": "wan", "dit": self.dit.to_dict(), "recipe": self.recipe.to_dict(),
                "height": self.height, "width": self.width}


class WanModel(nn.Module):
    """The Wan family's implementation of the model protocol (see the module docstring)."""

    warp_prior = False  # no warped-prior input: every chunk starts from noise
    camera = False  # text-to-video: no camera conditioning
    camera_note = "Wan2.1 text-to-video models take no camera input"
    closed_vocabulary = False  # a real text encoder (umT5): any wording; no vocabulary hint

    def __init__(self, config: WanStreamConfig, text_encoder: TextEncoder | None = None, decoder=None):
        super().__init__()
        self.config = config
        self.dit = WanDiT(config.dit)
        self.text_encoder = text_encoder
        self.decoder = decoder

    def cache_layout(self) -> CacheLayout:
        return self.config.cache_layout()

    # -- text ----------------------------------------------------------------
    def encode_prompt(self, prompts: list[str]) -> TextCond:
        if self.text_encoder is None:
            raise RuntimeError("this Wan model has no text encoder: umT5-XXL support comes with issue 16")
        d = self.config.dit
        feats = self.text_encoder(prompts)
        if feats.dim() != 3 or feats.shape[0] != len(prompts) or feats.shape[2] != d.text_dim:
            raise ValueError(f"the text encoder returned {tuple(feats.shape)}; the DiT reads "
                             f"({len(prompts)}, <= {d.text_len}, {d.text_dim})")
        device, dtype = self.dit.head.modulation.device, self.dit.head.modulation.dtype
        tokens = torch.zeros(len(prompts), d.text_len, d.text_dim, device=device, dtype=dtype)
        n = min(feats.shape[1], d.text_len)
        tokens[:, :n] = feats[:, :n].to(device, dtype)  # zero padding, as upstream
        text = TextCond(tokens, torch.ones(len(prompts), d.text_len, dtype=torch.bool, device=device),
                        tokens.new_zeros(len(prompts), 0))
        text.kv = self.text_kv(text)
        return text

    def redraws_object(self, old: str, new: str) -> bool:
        return False  # no warped prior to leave out

    def text_kv(self, text: TextCond) -> Tensor:
        return self.dit.text_kv(text.tokens)

    # -- one chunk -----------------------------------------------------------
    def begin_chunk(self, cache, camera, first_frame: int | None = None, rows: int = 1) -> None:
        """The cache's read for the next chunk (the camera is not an input of Wan models)."""
        _, h, w = self.config.latent
        self.dit.begin_chunk(cache, self.config.recipe.chunk_frames, h, w, first_frame)

    def evaluate(self, x: Tensor, t: Tensor, text: TextCond, camera, ctx, kv_only: bool = False,
                 context_rows: int = 0) -> Tensor | None:
        """The network in its own dtype (bf16 on GPU) on the sampler's fp32 latents."""
        dtype = self.dit.head.modulation.dtype
        return self.dit(x.to(dtype), t, text.kv, ctx, kv_only=kv_only, context_rows=context_rows)

    # -- sampling ------------------------------------------------------------
    def generator(self, sampling, seed: int = 0, memory: bool = True) -> Generator:
        """Its recipe fixes the steps; `sampling` gives the guidance."""
        return wan_generator(self, seed=seed, guidance=float(sampling.guidance))

    def sampling_record(self, sampling) -> dict:
        r = self.config.recipe
        return {"steps": len(r.steps), "warm_start": 0, "guidance": float(sampling.guidance),
                "recipe": r.to_dict()}

    def memory_plan(self) -> dict[str, int]:
        size = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
        plan = {"DiT": size(self.dit),
                "KV cache per stream": self.cache_layout().nbytes(1, self.dit.head.modulation.element_size())}
        if self.decoder is not None:
            plan["decoder"] = size(self.decoder)
        if self.text_encoder is not None and hasattr(self.text_encoder, "memory_bytes"):
            text = self.text_encoder.memory_bytes()
            plan["text encoder (host)"] = text["host"]
            plan["text encoder (device)"] = text["device"]
        return plan

    # -- decoding ------------------------------------------------------------
    def init_decode_state(self):
        return None if self.decoder is None else self.decoder.init_state()

    def decode(self, latents: Tensor, state):
        """Latents (B, K, C, h, w) -> RGB in [-1, 1] (B, 4K, 3, H, W) and the decoder's
        next state; a stream's first chunk decodes to 4K - 3 frames, its first frame shown
        four times (see `WanStreamConfig.frames_per_chunk`)."""
        if self.decoder is None:
            raise RuntimeError("this Wan model has no decoder: give it the Wan VAE or the tiny decoder")
        dtype = next(self.decoder.parameters()).dtype
        frames, state = self.decoder.decode_step(latents.to(dtype), state)
        frames = frames.float()
        short = self.config.frames_per_chunk - frames.shape[1]
        if short > 0:
            frames = torch.cat((frames[:, :1].expand(-1, short, -1, -1, -1), frames), dim=1)
        return frames, state


def load_wan_model(path, recipe: Recipe | None = None, lora=None, heads: int | None = None,
                   height: int = 480, width: int = 832,
                   text_encoder: TextEncoder | None = None, decoder=None, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> WanModel:
    """A Wan checkpoint in any upstream layout (model/wan/loader.py) as a WanModel sampled
    by `recipe` (default: Self-Forcing's) at `height` x `width` pixels; `heads` where
    neither a config.json nor head dim 128 gives them. Built on the meta device and given
    the loaded tensors, so the weights are in memory once."""
    from model.wan.loader import load_wan

    cfg, state = load_wan(path, lora=lora, heads=heads)
    config = WanStreamConfig(cfg, recipe or get_recipe(DEFAULT_RECIPE), height, width)
    with torch.device("meta"):
        model = WanModel(config, text_encoder, decoder)
    model.dit.load_state_dict({k: v.to(device, dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


def wan_generator(model: WanModel, seed: int = 0, guidance: float = 1.0, autocast: torch.dtype | None = None,
                  fuse: bool = True) -> Generator:
    """A Generator that samples `model` as its recipe says: the recipe's noise levels with
    the x0 re-noising sampler, its context noise, and its prompt-switch policy (LongLive's
    re-cache keeps the sink)."""
    r = model.config.recipe
    return Generator(model, seed=seed, guidance=guidance, context_t=r.context_t, autocast=autocast, fuse=fuse, sigmas=r.sigmas, renoise=True, switch=r.switch,
                     keep_sink=r.sink_frames > 0, blend_chunks=r.blend_chunks)

