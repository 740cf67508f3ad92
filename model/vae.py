"""Causal video autoencoder: 8x spatial compression, no temporal compression.

Every frame goes through 2-D convolutions; frames talk to each other only through
`TemporalMix`, a causal temporal convolution (kernel 2 in time, 1x1 in space) whose
state is the previous frame's features. So `decode_step(z, state)` streams chunk by
chunk with a fixed-size state and equals the whole-clip decode, and the same for encode.
(Per-frame latents keep motion inside a chunk: the DESIGN §3 gate.)

Frames are float in [-1, 1], (B, T, 3, H, W); latents (B, T, C, H/8, W/8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import VAEConfig

State = list[Tensor | None]


class TemporalMix(nn.Module):
    """y_t = x_t + W [x_{t-1}; x_t], causal; starts as the identity."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * ch, ch, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor, prev: Tensor | None) -> tuple[Tensor, Tensor]:
        """x (B, T, C, H, W), prev (B, C, H, W) or None (zeros) -> (y, last frame as state)."""
        if prev is None:
            prev = torch.zeros_like(x[:, 0])
        shifted = torch.cat((prev[:, None], x[:, :-1]), dim=1)
        mixed = self.conv(torch.cat((shifted, x), dim=2).flatten(0, 1))
        return x + mixed.view_as(x), x[:, -1]


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def _frames(fn, x: Tensor) -> Tensor:
    """Apply a per-frame 2-D module to (B, T, C, H, W)."""
    y = fn(x.flatten(0, 1))
    return y.view(*x.shape[:2], *y.shape[1:])


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = (cfg.enc_channels[0],) + cfg.enc_channels
        self.conv_in = nn.Conv2d(cfg.image_channels, ch[0], 3, padding=1)
        self.down = nn.ModuleList([
            nn.Sequential(nn.Conv2d(ch[i], ch[i + 1], 3, stride=2, padding=1), nn.SiLU(),
                          nn.Conv2d(ch[i + 1], ch[i + 1], 3, padding=1))
            for i in range(len(cfg.enc_channels))])
        self.mid1 = ResBlock(ch[-1])
        self.mix = TemporalMix(ch[-1])
        self.mid2 = ResBlock(ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        def spatial(h: Tensor) -> Tensor:
            h = self.conv_in(h)
            for down in self.down:
                h = F.silu(down(h))
            return self.mid1(h)

        h = _frames(spatial, x)
        h, s0 = self.mix(h, state[0])
        return _frames(lambda y: self.conv_out(F.silu(self.mid2(y))), h), [s0]


class Up(nn.Module):
    def __init__(self, cin: int, cout: int, extra: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.extra = nn.Conv2d(cout, cout, 3, padding=1) if extra else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.silu(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))
        if self.extra is not None:
            x = x + F.silu(self.extra(x))
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = cfg.dec_channels + (cfg.dec_out_channels,)
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid = ResBlock(ch[0])
        self.mix = TemporalMix(ch[0])
        self.up = nn.ModuleList([Up(ch[i], ch[i + 1], extra=i < len(ch) - 2)
                                 for i in range(len(ch) - 1)])
        self.conv_out = nn.Conv2d(ch[-1], cfg.image_channels, 3, padding=1)

    def forward(self, z: Tensor, state: State) -> tuple[Tensor, State]:
        h = _frames(lambda y: self.mid(self.conv_in(y)), z)
        h, s0 = self.mix(h, state[0])

        def spatial(y: Tensor) -> Tensor:
            for up in self.up:
                y = up(y)
            return self.conv_out(y)

        return _frames(spatial, h), [s0]


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def init_state(self) -> State:
        return [None]

    def encode_step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Frames (B, T, 3, H, W) in [-1, 1] -> raw latents, carrying `state` across calls."""
        return self.encoder(x, state)

    def decode_step(self, z: Tensor, state: State) -> tuple[Tensor, State]:
        """Raw latents (B, T, C, h, w) -> frames in [-1, 1] (unclamped), carrying `state`."""
        return self.decoder(z, state)

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_step(x, self.init_state())[0]

    def decode(self, z: Tensor) -> Tensor:
        return self.decode_step(z, self.init_state())[0]

    # the DiT works on normalised latents
    def to_dit(self, z: Tensor) -> Tensor:
        return (z - self.cfg.latent_shift) * self.cfg.latent_scale

    def from_dit(self, z: Tensor) -> Tensor:
        return z / self.cfg.latent_scale + self.cfg.latent_shift


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] frames (..., 3, H, W) -> uint8 (..., H, W, 3)."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1)


def from_uint8(x: Tensor) -> Tensor:
    """uint8 (..., H, W, 3) -> float [-1, 1] (..., 3, H, W)."""
    return x.movedim(-1, -3).float() / 127.5 - 1.0
