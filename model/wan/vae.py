"""The Wan2.1 VAE's decoder, streamed chunk by chunk with a fixed-size state.

The decoder half of Wan2.1's causal 3-D VAE (../shared/research/wan-causal-family.md §5;
Wan's `wan/modules/vae.py`, diffusers' `AutoencoderKLWan`): a 1x1x1 post-quant conv,
conv_in, a middle (residual, single-head spatial attention, residual), four up stages of
residual blocks, each but the last ending in a 2x spatial upsample (`upsample2d`) or a
2x spatial and 2x temporal one (`upsample3d`), and an RMS-norm / SiLU / conv head.
Temporal upsampling is [T, T, F] (the encoder's [F, T, T] reversed): 4x in time, 8x in
space.

Streaming. Every 3-D conv is causal: output frame t sees input frames t-2..t. Each such
conv keeps its last two input frames (`WanVAEState.past`, zeros at the stream's start),
so decoding a stream chunk by chunk gives the same frames as decoding it whole, with
a state whose size never grows. `upsample3d`'s time conv doubles every frame but the
stream's first, which it passes through alone (upstream's "Rep" cache entry): so a
stream's first latent frame decodes to 1 frame and each later one to 4. A first chunk
of K latent frames gives 1 + 4(K-1) frames, every later chunk 4K. The state is 32
tensors; at 480x832 (60x104 latents) it holds 1.8 GiB per stream in fp16 (3.5 GiB in
fp32), next to 73.3M decoder parameters. `latents_per_pass` (default 1, as upstream)
bounds the activation memory: latent frames per network pass, None for the whole chunk.

Latents. `decode_step` takes the DiT's latents, (B, K, 16, h, w), NORMALISED as the DiT
sees them: z = (mu - mean) / std with Wan2.1's 16 per-channel constants (below, equal to
diffusers' `AutoencoderKLWan` config `latents_mean` / `latents_std`). It decodes
z * std + mean, and returns frames (B, n, 3, 8h, 8w) in [-1, 1] (clamped).

Names. The module's parameter names are Wan's own (`Wan2.1_VAE.pth`): `conv2` is the
post-quant conv, `decoder.conv1` conv_in, `decoder.middle.{0,1,2}`,
`decoder.upsamples.N` (residual blocks and resamples in one flat list),
`decoder.head.{0,2}`; a residual block's `residual.{0,2,3,6}` are norm1, conv1, norm2,
conv2. `load_wan_vae` reads that file or a diffusers `vae/` folder (converted at load).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.errors import CheckpointError

log = logging.getLogger(__name__)

# Wan2.1's latent statistics (Wan's WanVAE, diffusers AutoencoderKLWan `latents_mean` / `latents_std`)
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class WanVAEConfig:
    """The decoder's architecture (Wan's `dim`, `z_dim`, `dim_mult`, `num_res_blocks`,
    `temperal_downsample` reversed) and the latent statistics it denormalises with."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_upsample: tuple[bool, ...] = (True, True, False)  # per up stage but the last
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    def __post_init__(self) -> None:
        if len(self.temporal_upsample) != len(self.dim_mult) - 1:
            raise ValueError(f"temporal_upsample needs {len(self.dim_mult) - 1} entries (one per up stage "
                             f"but the last), got {len(self.temporal_upsample)}")
        if not len(self.latents_mean) == len(self.latents_std) == self.z_dim:
            raise ValueError(f"latents_mean and latents_std need z_dim = {self.z_dim} entries, got "
                             f"{len(self.latents_mean)} and {len(self.latents_std)}")

    @property
    def dims(self) -> list[int]:
        """Channels: the middle's, then each up stage's output."""
        return [self.base_dim * m for m in (self.dim_mult[-1], *reversed(self.dim_mult))]

    @property
    def time_stride(self) -> int:
        return 2 ** sum(self.temporal_upsample)

    @property
    def space_stride(self) -> int:
        return 2 ** len(self.temporal_upsample)

    def frames_out(self, k: int, first: bool) -> int:
        """Frames that `k` latent frames decode to (the stream's first chunk, or a later one)."""
        return 1 + self.time_stride * (k - 1) if first else self.time_stride * k


PRESETS = {
    "wan2.1": WanVAEConfig(),
    "debug": WanVAEConfig(base_dim=3, dim_mult=(1, 1, 1, 1), num_res_blocks=1),  # diffusers' test size
}


@dataclass
class WanVAEState:
    """A stream's decoding state: each causal conv's last two input frames, by its
    `slot`, (B, C, 2, H', W'), None until the stream's first chunk (zeros). Its size is
    fixed once the first chunk is decoded."""

    past: list[Tensor | None]
    frames: int = 0  # latent frames decoded so far

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.past if t is not None)


# --------------------------------------------------------------------------- leaf modules


class CausalConv3d(nn.Conv3d):
    """A 3-D conv causal in time (kernel kt: frame t sees t-kt+1..t), 'same' in space.
    The frames before a call's first come from the state slot `slot`, which the call
    then overwrites with its own last kt-1 input frames."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int]):
        super().__init__(cin, cout, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2))
        self.slot = -1  # set by the Decoder, which numbers its causal convs

    def forward(self, x: Tensor, past: list[Tensor | None]) -> Tensor:
        """x (B, C, T, H, W) -> (B, C', T, H, W); T may be 0 (the state is still primed)."""
        n = self.kernel_size[0] - 1
        prev = past[self.slot]
        if prev is None:  # the stream's start: zero padding
            prev = x.new_zeros(x.shape[0], x.shape[1], n, *x.shape[3:])
        x = torch.cat((prev, x), dim=2)  # (B, C, n + T, H, W)
        past[self.slot] = x[:, :, -n:].clone()
        if x.shape[2] == n:
            return x.new_empty(x.shape[0], self.out_channels, 0, *x.shape[3:])
        return super().forward(x)


class RMSNorm(nn.Module):
    """Wan's RMS_norm: unit L2 norm over channels (dim 1), times sqrt(C) and gamma.
    `gamma` is (C, 1, 1, 1) for video (B, C, T, H, W), (C, 1, 1) for frames (B, C, H, W)."""

    def __init__(self, dim: int, video: bool = True):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * (3 if video else 2)))
        self.scale = dim ** 0.5

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x.float(), dim=1).to(x.dtype) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))), a 1x1x1 conv shortcut where channels change.
    `residual` is Wan's nn.Sequential(norm, SiLU, conv, norm, SiLU, Dropout, conv); its
    indices are kept for the checkpoint's names."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.residual = nn.ModuleList([RMSNorm(cin), nn.SiLU(), CausalConv3d(cin, cout, (3, 3, 3)),
                                       RMSNorm(cout), nn.SiLU(), nn.Identity(), CausalConv3d(cout, cout, (3, 3, 3))])
        self.shortcut = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, past: list[Tensor | None]) -> Tensor:
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        h = conv1(F.silu(norm1(x)), past)
        h = conv2(F.silu(norm2(h)), past)
        return self.shortcut(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention within each frame (over its H*W positions), residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, video=False)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(y)).flatten(2).transpose(1, 2)  # (B*T, H*W, 3C)
        q, k, v = qkv[:, None].chunk(3, dim=-1)  # (B*T, 1, H*W, C) each: one head
        y = F.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2).reshape(b * t, c, h, w)
        return x + self.proj(y).view(b, t, c, h, w).transpose(1, 2)


class Resample(nn.Module):
    """2x nearest upsample and a 3x3 conv per frame, halving the channels; with
    `temporal` (Wan's upsample3d) first a causal time conv turning each frame into two,
    except the stream's first frame, which passes through alone."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                      nn.Conv2d(dim, dim // 2, 3, padding=1))
        self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1)) if temporal else None

    def forward(self, x: Tensor, past: list[Tensor | None], first: bool) -> Tensor:
        if self.time_conv is not None:
            head, rest = (x[:, :, :1], x[:, :, 1:]) if first else (x[:, :, :0], x)
            y = self.time_conv(rest, past)  # (B, 2C, T, H, W): channel halves are frames 2t, 2t+1
            b, c2, t, h, w = y.shape
            y = y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)
            x = torch.cat((head, y), dim=2)
        b, c, t, h, w = x.shape
        y = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, C/2, 2H, 2W)
        return y.view(b, t, *y.shape[1:]).transpose(1, 2)


# --------------------------------------------------------------------------- decoder


class Decoder(nn.Module):
    """Wan's Decoder3d: latents (B, z, T, h, w) -> pixels (B, 3, T', 8h, 8w), unclamped."""

    def __init__(self, cfg: WanVAEConfig):
        super().__init__()
        dims = cfg.dims
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], (3, 3, 3))
        self.middle = nn.ModuleList([ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                     ResidualBlock(dims[0], dims[0])])
        ups: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            cin = cin // 2 if i > 0 else cin  # the previous stage's Resample halved the channels
            for j in range(cfg.num_res_blocks + 1):
                ups.append(ResidualBlock(cin if j == 0 else cout, cout))
            if i < len(cfg.temporal_upsample):
                ups.append(Resample(cout, cfg.temporal_upsample[i]))
        self.upsamples = nn.ModuleList(ups)
        self.head = nn.ModuleList([RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, (3, 3, 3))])
        convs = [m for m in self.modules() if isinstance(m, CausalConv3d)]
        for i, conv in enumerate(convs):
            conv.slot = i
        self.n_slots = len(convs)  # 32 for Wan2.1

    def forward(self, z: Tensor, past: list[Tensor | None], first: bool) -> Tensor:
        x = self.conv1(z, past)
        res1, attn, res2 = self.middle
        x = res2(attn(res1(x, past)), past)
        for layer in self.upsamples:
            x = layer(x, past, first) if isinstance(layer, Resample) else layer(x, past)
        norm, _, conv = self.head
        return conv(F.silu(norm(x)), past)


class WanVAEDecoder(nn.Module):
    """The decoder protocol WanModel streams with: `init_state()` and
    `decode_step(latents, state) -> (frames, state)` (see the module docstring)."""

    def __init__(self, cfg: WanVAEConfig = WanVAEConfig()):
        super().__init__()
        self.cfg = cfg
        self.conv2 = nn.Conv3d(cfg.z_dim, cfg.z_dim, 1)  # Wan's name for the post-quant conv
        self.decoder = Decoder(cfg)
        self.register_buffer("mean", torch.tensor(cfg.latents_mean), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.latents_std), persistent=False)
        # Latent frames run through the network at once (None: the whole chunk): 1, upstream's
        # choice, keeps the peak activation memory at one latent frame's; more is faster.
        self.latents_per_pass: int | None = 1

    def init_state(self) -> WanVAEState:
        return WanVAEState(past=[None] * self.decoder.n_slots)

    def decode_step(self, latents: Tensor, state: WanVAEState | None) -> tuple[Tensor, WanVAEState]:
        """Normalised latents (B, K, z, h, w) -> frames (B, n, 3, 8h, 8w) in [-1, 1] and the
        state (updated in place): n = 1 + 4(K-1) for the stream's first chunk, 4K after."""
        if state is None:
            state = self.init_state()
        dtype = self.conv2.weight.dtype
        z = latents.transpose(1, 2).float()  # (B, z, K, h, w)
        z = z * self.std.float().view(-1, 1, 1, 1) + self.mean.float().view(-1, 1, 1, 1)
        x = self.conv2(z.to(dtype))
        out = []
        for part in x.split(self.latents_per_pass or x.shape[2], dim=2):
            out.append(self.decoder(part, state.past, first=state.frames == 0))
            state.frames += part.shape[2]
        return torch.cat(out, dim=2).clamp(-1.0, 1.0).transpose(1, 2).contiguous(), state

    def decode(self, latents: Tensor) -> Tensor:
        """A whole clip from a fresh state."""
        return self.decode_step(latents, self.init_state())[0]


# --------------------------------------------------------------------------- loading

_RES = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
        "conv_shortcut": "shortcut"}
_DIFFUSERS_HINT = re.compile(r"post_quant_conv\.|decoder\.(conv_in|mid_block|up_blocks|norm_out|conv_out)\.")
_UP = re.compile(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)\.(\w+)|upsamplers\.0)\.(.+)")
_MID_RES = re.compile(r"decoder\.mid_block\.resnets\.(\d+)\.(\w+)\.(.+)")
_ENCODER = re.compile(r"(encoder|quant_conv|conv1)\.")  # the encoder half, in either naming


def _names(keys, n: int = 5) -> str:
    keys = sorted(keys)
    return f"{keys[:n]}{' ...' if len(keys) > n else ''}"


def from_diffusers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A diffusers AutoencoderKLWan decoder's tensors under Wan's names (the encoder
    half already dropped). Up block i's resnet j is Wan's `upsamples.{i*(R+1)+j}` and its
    upsampler `upsamples.{i*(R+1)+R}`, R = resnets per block; unknown keys keep their name."""
    per_block = 1 + max((int(m[3]) for k in state if (m := _UP.fullmatch(k)) and m[3]), default=0)
    out = {}
    for key, t in state.items():
        new = key
        if key.startswith("post_quant_conv."):
            new = "conv2." + key.removeprefix("post_quant_conv.")
        elif key.startswith("decoder.conv_in."):
            new = "decoder.conv1." + key.removeprefix("decoder.conv_in.")
        elif key.startswith("decoder.norm_out."):
            new = "decoder.head.0." + key.removeprefix("decoder.norm_out.")
        elif key.startswith("decoder.conv_out."):
            new = "decoder.head.2." + key.removeprefix("decoder.conv_out.")
        elif key.startswith("decoder.mid_block.attentions.0."):
            new = "decoder.middle.1." + key.removeprefix("decoder.mid_block.attentions.0.")
        elif (m := _MID_RES.fullmatch(key)) and m[2] in _RES and m[1] in ("0", "1"):
            new = f"decoder.middle.{2 * int(m[1])}.{_RES[m[2]]}.{m[3]}"
        elif (m := _UP.fullmatch(key)) and (m[3] is None or m[4] in _RES):
            block = int(m[1]) * (per_block + 1)
            new = (f"decoder.upsamples.{block + per_block}.{m[5]}" if m[3] is None
                   else f"decoder.upsamples.{block + int(m[3])}.{_RES[m[4]]}.{m[5]}")
        out[new] = t
    return out


def infer_vae_config(state: Mapping[str, Tensor], latents_mean=None, latents_std=None) -> WanVAEConfig:
    """The decoder's architecture from its tensors' shapes (Wan's names): z from conv2,
    the stages from where `upsamples` holds resamples (with a time conv or not), the
    channels from each stage's first conv. The latent statistics are given, else Wan2.1's
    (for z = 16). Every tensor is then checked against it (`check_shapes`)."""
    need = ["conv2.weight", "decoder.conv1.weight", "decoder.head.2.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"missing tensors {missing}: not a Wan VAE decoder, or cannot infer its architecture")
    z = state["conv2.weight"].shape[0]
    index = {int(m[1]) for k in state if (m := re.match(r"decoder\.upsamples\.(\d+)\.", k))}
    resamples = sorted(i for i in index if f"decoder.upsamples.{i}.resample.1.weight" in state)
    if not resamples:
        raise CheckpointError("no decoder.upsamples.N.resample tensors: not a Wan VAE decoder's layout")
    gaps = sorted(set(range(max(index) + 1)) - index)
    if gaps:
        raise CheckpointError(f"tensors missing: no decoder.upsamples.N for N in {gaps} (of 0..{max(index)})")
    per_stage = resamples[0]  # residual blocks per stage = num_res_blocks + 1
    stages = len(resamples) + 1
    if per_stage < 1 or resamples != [s * (per_stage + 1) + per_stage for s in range(stages - 1)] \
            or max(index) + 1 != stages * (per_stage + 1) - 1:
        raise CheckpointError(f"decoder.upsamples has resamples at {resamples} of {max(index) + 1} blocks: "
                              f"the stages are not of equal length")
    firsts = [f"decoder.upsamples.{s * (per_stage + 1)}.residual.2.weight" for s in range(stages)]
    absent = [k for k in firsts if k not in state]
    if absent:
        raise CheckpointError(f"tensors missing: {absent}")
    outs = [state[k].shape[0] for k in firsts]
    base = outs[-1]
    mult = tuple(o // base for o in reversed(outs))
    if any(o % base for o in outs) or state["decoder.conv1.weight"].shape[0] != base * mult[-1]:
        raise CheckpointError(f"stage channels {outs} and conv1's {state['decoder.conv1.weight'].shape[0]} "
                              f"do not follow base_dim x dim_mult")
    if latents_mean is None and latents_std is None and z == len(WAN21_LATENTS_MEAN):
        latents_mean, latents_std = WAN21_LATENTS_MEAN, WAN21_LATENTS_STD
    if latents_mean is None or latents_std is None:
        hint = " (z 48: the Wan2.2 VAE, not supported)" if z == 48 else ""
        raise CheckpointError(f"latent channels {z}{hint}: no latent statistics known; "
                              f"pass latents_mean and latents_std")
    try:
        cfg = WanVAEConfig(base_dim=base, z_dim=z, dim_mult=mult, num_res_blocks=per_stage - 1,
                           temporal_upsample=tuple(f"decoder.upsamples.{i}.time_conv.weight" in state
                                                   for i in resamples),
                           latents_mean=tuple(float(v) for v in latents_mean),
                           latents_std=tuple(float(v) for v in latents_std))
    except ValueError as e:
        raise CheckpointError(f"not a valid Wan VAE config: {e}") from None
    check_shapes(state, cfg)
    return cfg


def expected_shapes(cfg: WanVAEConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in WanVAEDecoder(cfg).state_dict().items()}


def check_shapes(state: Mapping[str, Tensor], cfg: WanVAEConfig) -> None:
    """Every tensor the decoder needs, of its shape, and no other."""
    want = expected_shapes(cfg)
    missing = [k for k in want if k not in state]
    unknown = [k for k in state if k not in want]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {s})" for k, s in want.items()
             if k in state and tuple(state[k].shape) != s]
    if missing:
        raise CheckpointError(f"{len(missing)} tensors missing: {_names(missing)}")
    if unknown:
        raise CheckpointError(f"{len(unknown)} unknown tensors: {_names(unknown)}")
    if wrong:
        raise CheckpointError(f"{len(wrong)} tensors of the wrong shape: {_names(wrong, 3)}")


def _vae_file(path: Path) -> Path:
    """The weights file of a VAE path: the file itself, or a diffusers folder's (a pipeline's vae/)."""
    if path.is_dir():
        folder = path / "vae" if (path / "vae").is_dir() else path
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if (folder / name).is_file():
                return folder / name
        raise CheckpointError(f"{path}: no VAE weights here (expected diffusion_pytorch_model.safetensors, "
                              f"or a vae/ subfolder holding it)")
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
        raise CheckpointError(f"{path}: not a VAE weights file (.pth/.pt/.bin/.ckpt or .safetensors)")
    return path


def _config_json(file: Path) -> dict:
    cfg_file = file.parent / "config.json"
    if not cfg_file.is_file():
        return {}
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: unreadable config ({e})") from None
    return cfg if isinstance(cfg, dict) and cfg.get("_class_name", "AutoencoderKLWan") == "AutoencoderKLWan" else {}


def load_wan_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 latents_mean=None, latents_std=None) -> WanVAEDecoder:
    """`Wan2.1_VAE.pth` (Wan's names; a torch pickle read with weights_only), a
    safetensors file in Wan's names, or a diffusers AutoencoderKLWan folder (or a
    pipeline folder with vae/) -> the streaming decoder. The encoder half is dropped.
    Latent statistics: given, else the folder's config.json, else Wan2.1's."""
    from model.wan.loader import read_tensors  # the safe reader (weights_only pickles, safetensors)

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    file = _vae_file(path)
    conf = _config_json(file) if path.is_dir() else {}
    if conf.get("is_residual"):
        raise CheckpointError(f"{path}: a residual (Wan2.2) VAE, not supported")
    try:
        raw = read_tensors(file)
        if isinstance(raw.get("state_dict"), Mapping):
            raw = raw["state_dict"]
        state = {k: v for k, v in raw.items() if isinstance(v, Tensor)}
        dropped = [k for k in state if _ENCODER.match(k)]
        state = {k: v for k, v in state.items() if not _ENCODER.match(k)}
        if any(_DIFFUSERS_HINT.match(k) for k in state):
            state = from_diffusers(state)
        cfg = infer_vae_config(state, latents_mean if latents_mean is not None else conf.get("latents_mean"),
                               latents_std if latents_std is not None else conf.get("latents_std"))
        bad = [k for k, t in state.items() if not torch.isfinite(t).all()]
        if bad:
            raise CheckpointError(f"tensors holding NaN or inf: {_names(bad)}")
    except CheckpointError as e:
        raise CheckpointError(e.args[0] if str(e).startswith(str(file)) else f"{file}: {e}") from None
    with torch.device("meta"):
        model = WanVAEDecoder(cfg)
    model.load_state_dict({k: v.to(device, dtype) for k, v in state.items()}, strict=True, assign=True)
    model.mean = torch.tensor(cfg.latents_mean, device=device, dtype=dtype)
    model.std = torch.tensor(cfg.latents_std, device=device, dtype=dtype)
    model.requires_grad_(False)  # inference only: no autograd graph may chain chunks through the state
    log.info("loaded the Wan VAE decoder from %s (%d tensors, %.1fM parameters; %d encoder tensors ignored)",
             file, len(state), sum(t.numel() for t in state.values()) / 1e6, len(dropped))
    return model.eval()
