"""A tiny decoder for Wan2.1 latents, of the TAEHV kind, streamed with a fixed-size state.

TAEHV (madebyollin/taehv, MIT; `taew2_1.pth` for Wan2.1) is a small distilled stand-in
for the Wan VAE's decoder: 2-D convs per frame, with time entering only through
`MemBlock`s (each sees its own input at the previous frame) and `TGrow`s (a 1x1 conv
that makes `stride` frames of each). Its published decoder, which this file implements
(../shared/research/wan-causal-family.md §5):

    z -> tanh(z / 3) * 3 -> conv3x3(16, 256), ReLU
      -> 3 stages, channels 256 -> 128 -> 64 -> 64, time strides 1, 2, 2:
         3 MemBlocks, 2x nearest upsample, TGrow, conv3x3 (no bias)
      -> ReLU, conv3x3(64, 3) -> RGB in [0, 1] (clamped)
    MemBlock(x_t) = ReLU(x_t + f([x_t, x_{t-1}])), f = conv3x3, ReLU, conv3x3, ReLU, conv3x3
    (x_{-1} = 0); TGrow's output channels [s*C, (s+1)*C) are frame t*stride + s.

Streaming. A MemBlock needs only its previous input frame: `TAEState.past` keeps one
(B, C, H', W') tensor per MemBlock, so chunk-by-chunk decoding equals decoding the whole
clip and the state never grows (9 tensors). Upstream decodes a whole clip and drops the
first `time_stride - 1` = 3 frames (`frames_to_trim`, the alignment with the Wan VAE,
whose first latent frame is one picture): `decode_step` drops them from the stream's
first chunk. So a first chunk of K latent frames gives 1 + 4(K-1) frames and every later
one 4K, as the Wan VAE does (model/wan/vae.py). At 480x832 the state holds 64 MiB per
stream in fp16, next to 9.8M decoder parameters (the encoder, in the same file, is
dropped). `latents_per_pass` (default None: the whole chunk at once) bounds the
activation memory.

Convention (taew2_1). Input: the DiT's latents as they are, NORMALISED ((mu - mean) / std, the
Wan VAE's statistics), (B, K, 16, h, w), i.e. NTCHW; no scale or shift is applied.
Sources: the taehv README ("TAEHV does not use any latent scales / shifts (TAEHV
encodes / decodes exactly what diffusion models use)"); its TAEW2.1 diffusers demo sets
the pipeline's latents_mean to 0 and latents_std to 1 so the DiT's latents reach TAEHV
untouched; Self-Forcing's demo.py feeds its generator's `denoised_pred` straight to
`TAEHV.decode_video`; StreamDiffusionV2's `models/wan/taehv_wrapper.py` passes the
latent without the mean / std its Wan VAE wrapper applies. Output: upstream's [0, 1]
frames mapped to [-1, 1] (x * 2 - 1, as both demos do), (B, n, 3, 8h, 8w).
LightTAE (lightx2v's `lighttaew2_1.pth`, the same layout, distilled from taew2_1) decodes
the Wan VAE's own latents instead: Scope's `TAEWrapper(use_lighttae=True)` and ComfyUI
(`process_latent_out` before it) apply z * std + mean first. A config with
`latents_mean` / `latents_std` does the same; `load_tae` sets them for files named
lighttae* (the keys and shapes cannot tell the two apart).
(Self-Forcing and StreamDiffusionV2 re-decode the last 3 latents with each chunk instead
of keeping MemBlock state; that approximates the whole-clip decode, this equals it.)

Names. The module's own (`conv_in`, `stages.S.mem.J.conv.{0,2,4}`, `stages.S.grow`,
`stages.S.conv`, `conv_out`); `load_tae` reads the published flat layout
(`decoder.N...`, an nn.Sequential's indices) and converts it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.errors import CheckpointError
from model.wan.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TAEConfig:
    """The decoder's architecture: `channels[s]` is stage s's width, the last entry the
    head's; one time stride per stage. taew2_1's by default."""

    latent_channels: int = 16
    channels: tuple[int, ...] = (256, 128, 64, 64)
    time_strides: tuple[int, ...] = (1, 2, 2)
    mem_blocks: int = 3  # per stage
    space_upscale: bool = True  # 2x per stage (8x in all)
    # None: decode the DiT's normalised latents as they are (taew2_1); else z * std + mean first (LightTAE)
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.time_strides) != len(self.channels) - 1:
            raise ValueError(f"time_strides needs {len(self.channels) - 1} entries (one per stage), "
                             f"got {len(self.time_strides)}")
        stats = (self.latents_mean, self.latents_std)
        if any(s is not None for s in stats) and not all(s is not None and len(s) == self.latent_channels
                                                         for s in stats):
            raise ValueError(f"latents_mean and latents_std go together, {self.latent_channels} entries each")

    @property
    def time_stride(self) -> int:
        return math.prod(self.time_strides)

    @property
    def frames_to_trim(self) -> int:
        """Frames dropped at the stream's start (upstream's alignment with the Wan VAE)."""
        return self.time_stride - 1

    def frames_out(self, k: int, first: bool) -> int:
        return self.time_stride * k - (self.frames_to_trim if first else 0)


PRESETS = {
    "taew2_1": TAEConfig(),
    "lighttaew2_1": TAEConfig(latents_mean=WAN21_LATENTS_MEAN, latents_std=WAN21_LATENTS_STD),
    "debug": TAEConfig(channels=(16, 8, 8, 8)),
}


@dataclass
class TAEState:
    """A stream's decoding state: each MemBlock's input at the last frame, by its `slot`,
    (B, C, H', W'); None until the stream's first chunk."""

    past: list[Tensor | None]
    frames: int = 0  # latent frames decoded so far

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.past if t is not None)


# --------------------------------------------------------------------------- modules


def conv3x3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


class MemBlock(nn.Module):
    """y_t = ReLU(x_t + f([x_t, x_{t-1}])), x_{-1} from the state (zeros at the start)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Sequential(conv3x3(2 * c, c), nn.ReLU(), conv3x3(c, c), nn.ReLU(), conv3x3(c, c))
        self.slot = -1  # set by TAEDecoder

    def forward(self, x: Tensor, past: list[Tensor | None]) -> Tensor:
        """x (B, T, C, H, W) -> (B, T, C, H, W)."""
        prev = past[self.slot]
        prev = x.new_zeros(x[:, :1].shape) if prev is None else prev[:, None]
        before = torch.cat((prev, x[:, :-1]), dim=1)  # x_{t-1} for each t
        past[self.slot] = x[:, -1].clone()
        h = self.conv(torch.cat((x, before), dim=2).flatten(0, 1))
        return F.relu(x + h.view(x.shape))


class Stage(nn.Module):
    """MemBlocks at `cin` channels, 2x nearest upsample, TGrow (each frame -> `stride`
    frames), conv3x3 to `cout`."""

    def __init__(self, cin: int, cout: int, blocks: int, stride: int, space_upscale: bool):
        super().__init__()
        self.mem = nn.ModuleList([MemBlock(cin) for _ in range(blocks)])
        self.grow = nn.Conv2d(cin, cin * stride, 1, bias=False)
        self.conv = conv3x3(cin, cout, bias=False)
        self.stride = stride
        self.scale = 2 if space_upscale else 1

    def forward(self, x: Tensor, past: list[Tensor | None]) -> Tensor:
        for block in self.mem:
            x = block(x, past)
        b, t, c = x.shape[:3]
        y = x.flatten(0, 1)
        if self.scale > 1:
            y = F.interpolate(y, scale_factor=self.scale, mode="nearest")
        y = self.grow(y)  # (B*T, stride*C, H, W): channel slice s is frame t*stride + s
        y = self.conv(y.reshape(b * t * self.stride, c, *y.shape[2:]))
        return y.view(b, t * self.stride, *y.shape[1:])


class TAEDecoder(nn.Module):
    """The decoder protocol WanModel streams with: `init_state()` and
    `decode_step(latents, state) -> (frames, state)` (see the module docstring)."""

    def __init__(self, cfg: TAEConfig = TAEConfig()):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.conv_in = conv3x3(cfg.latent_channels, c[0])
        self.stages = nn.ModuleList([Stage(c[s], c[s + 1], cfg.mem_blocks, cfg.time_strides[s], cfg.space_upscale)
                                     for s in range(len(c) - 1)])
        self.conv_out = conv3x3(c[-1], 3)
        blocks = [m for m in self.modules() if isinstance(m, MemBlock)]
        for i, block in enumerate(blocks):
            block.slot = i
        self.n_slots = len(blocks)
        self.denormalise = cfg.latents_mean is not None
        mean, std = cfg.latents_mean or (0.0,) * cfg.latent_channels, cfg.latents_std or (1.0,) * cfg.latent_channels
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)
        self.latents_per_pass: int | None = None  # latent frames per network pass; None: the whole chunk

    def init_state(self) -> TAEState:
        return TAEState(past=[None] * self.n_slots)

    def forward(self, z: Tensor, past: list[Tensor | None]) -> Tensor:
        """Latents as the network reads them (B, T, C, h, w) -> raw frames (B, T * time_stride,
        3, 8h, 8w), ~[0, 1], none trimmed."""
        b, t = z.shape[:2]
        x = torch.tanh(z / 3) * 3  # upstream's soft clamp of the latents to (-3, 3)
        x = F.relu(self.conv_in(x.flatten(0, 1)))
        x = x.view(b, t, *x.shape[1:])
        for stage in self.stages:
            x = stage(x, past)
        y = self.conv_out(F.relu(x.flatten(0, 1)))
        return y.view(b, x.shape[1], *y.shape[1:])

    def decode_step(self, latents: Tensor, state: TAEState | None) -> tuple[Tensor, TAEState]:
        """Normalised latents (B, K, 16, h, w) -> frames (B, n, 3, 8h, 8w) in [-1, 1] and the
        state (updated in place): n = 1 + 4(K-1) for the stream's first chunk, 4K after."""
        if state is None:
            state = self.init_state()
        z = latents
        if self.denormalise:  # LightTAE: the Wan VAE's latents
            z = z.float() * self.std.float().view(-1, 1, 1) + self.mean.float().view(-1, 1, 1)
        z = z.to(self.conv_in.weight.dtype)
        out = []
        for part in z.split(self.latents_per_pass or z.shape[1], dim=1):
            out.append(self(part, state.past))
        frames = torch.cat(out, dim=1)
        if state.frames == 0:
            frames = frames[:, self.cfg.frames_to_trim:]
        state.frames += z.shape[1]
        return frames.clamp(0.0, 1.0) * 2 - 1, state

    def decode(self, latents: Tensor) -> Tensor:
        """A whole clip from a fresh state."""
        return self.decode_step(latents, self.init_state())[0]


# --------------------------------------------------------------------------- loading


def published_names(cfg: TAEConfig) -> dict[str, str]:
    """Our tensor names -> the published layout's (TAEHV's decoder nn.Sequential:
    0 clamp, 1 conv, 2 ReLU, then per stage the MemBlocks, upsample, TGrow, conv, then
    ReLU and the last conv)."""
    out = {"conv_in.weight": "decoder.1.weight", "conv_in.bias": "decoder.1.bias"}
    n = cfg.mem_blocks + 3  # layers per stage
    for s in range(len(cfg.channels) - 1):
        start = 3 + s * n
        for j in range(cfg.mem_blocks):
            for i in (0, 2, 4):
                for p in ("weight", "bias"):
                    out[f"stages.{s}.mem.{j}.conv.{i}.{p}"] = f"decoder.{start + j}.conv.{i}.{p}"
        out[f"stages.{s}.grow.weight"] = f"decoder.{start + cfg.mem_blocks + 1}.conv.weight"
        out[f"stages.{s}.conv.weight"] = f"decoder.{start + cfg.mem_blocks + 2}.weight"
    last = 3 + (len(cfg.channels) - 1) * n + 1
    out["conv_out.weight"], out["conv_out.bias"] = f"decoder.{last}.weight", f"decoder.{last}.bias"
    return out


def infer_tae_config(state: Mapping[str, Tensor]) -> TAEConfig:
    """The architecture from a published-layout decoder's shapes: the MemBlocks per
    stage from their run of indices from 3, the stage count from where runs start, the
    widths from each stage's first MemBlock, the time strides from the TGrows' rows."""
    def mem(i: int) -> str:
        return f"decoder.{i}.conv.0.weight"

    if "decoder.1.weight" not in state or mem(3) not in state:
        raise CheckpointError("no decoder.1.weight / decoder.3.conv.0.weight: not a TAEHV decoder "
                              "(the 'super' variants are not supported)")
    blocks = next(j for j in range(3, 1000) if mem(j) not in state) - 3
    n = blocks + 3
    stages = next(s for s in range(1000) if mem(3 + s * n) not in state)
    widths = [state[mem(3 + s * n)].shape[0] for s in range(stages)]
    last = f"decoder.{3 + stages * n + 1}.weight"
    grows = [f"decoder.{3 + s * n + blocks + 1}.conv.weight" for s in range(stages)]
    absent = [k for k in (last, *grows) if k not in state]
    if absent:
        raise CheckpointError(f"missing tensors {absent}: not TAEHV's decoder layout")
    if state[last].shape[0] != 3:
        raise CheckpointError(f"{last} makes {state[last].shape[0]} channels, not RGB: a patch-size > 1 TAE "
                              f"(taew2_2, taehv1_5) is not supported")
    rows = [state[g].shape[0] for g in grows]
    if any(r < w or r % w for r, w in zip(rows, widths)):
        raise CheckpointError(f"TGrow rows {rows} are not multiples of the stage widths {widths}")
    strides = [r // w for r, w in zip(rows, widths)]
    cfg = TAEConfig(latent_channels=state["decoder.1.weight"].shape[1], channels=(*widths, state[last].shape[1]),
                    time_strides=tuple(strides), mem_blocks=blocks)
    check_shapes(state, cfg)
    return cfg


def check_shapes(state: Mapping[str, Tensor], cfg: TAEConfig) -> None:
    """The published-layout decoder tensors `cfg` needs, of their shapes, and no other."""
    with torch.device("meta"):
        want = {published_names(cfg)[k]: tuple(v.shape) for k, v in TAEDecoder(cfg).state_dict().items()}
    missing = sorted(k for k in want if k not in state)
    unknown = sorted(k for k in state if k not in want)
    wrong = [f"{k} {tuple(state[k].shape)} (expected {s})" for k, s in want.items()
             if k in state and tuple(state[k].shape) != s]
    for what, keys in (("missing", missing), ("unknown", unknown), ("of the wrong shape", wrong)):
        if keys:
            raise CheckpointError(f"{len(keys)} decoder tensors {what}: {keys[:5]}{' ...' if len(keys) > 5 else ''}")


def load_tae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             denormalise: bool | None = None) -> TAEDecoder:
    """A TAEHV checkpoint of the published layout (`taew2_1.pth`, a torch pickle read with
    weights_only, or its .safetensors) -> the streaming decoder. The encoder is dropped.
    A folder holding one such file is read as that file. `denormalise`: apply Wan2.1's
    z * std + mean before decoding (LightTAE); by default only for files named lighttae*."""
    from model.wan.loader import read_tensors  # the safe reader (weights_only pickles, safetensors)

    path = Path(path)
    if path.is_dir():
        inside = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
        if len(inside) != 1:
            raise CheckpointError(f"{path}: a TAE folder must hold one weights file, it holds "
                                  f"{[p.name for p in inside]}")
        path = inside[0]
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{path}: not a TAE weights file (.pth or .safetensors)")
    try:
        raw = read_tensors(path)
        state = {k: v for k, v in raw.items() if isinstance(v, Tensor) and not k.startswith("encoder.")}
        cfg = infer_tae_config(state)
        if denormalise is None:
            denormalise = path.name.lower().startswith("lighttae")
        if denormalise:
            cfg = replace(cfg, latents_mean=WAN21_LATENTS_MEAN, latents_std=WAN21_LATENTS_STD)
        bad = [k for k, t in state.items() if not torch.isfinite(t).all()]
        if bad:
            raise CheckpointError(f"tensors holding NaN or inf: {sorted(bad)[:5]}")
    except CheckpointError as e:
        raise CheckpointError(e.args[0] if str(e).startswith(str(path)) else f"{path}: {e}") from None
    names = published_names(cfg)
    with torch.device("meta"):
        model = TAEDecoder(cfg)
    model.load_state_dict({k: state[names[k]].to(device, dtype) for k in names}, strict=True, assign=True)
    model.mean = torch.tensor(cfg.latents_mean or (0.0,) * cfg.latent_channels, device=device, dtype=dtype)
    model.std = torch.tensor(cfg.latents_std or (1.0,) * cfg.latent_channels, device=device, dtype=dtype)
    model.requires_grad_(False)  # inference only: no autograd graph may chain chunks through the state
    log.info("loaded the TAE decoder from %s (%.1fM parameters, time strides %s, %s latents)", path,
             sum(t.numel() for t in model.parameters()) / 1e6, cfg.time_strides,
             "Wan VAE (denormalised)" if denormalise else "the DiT's normalised")
    return model.eval()
