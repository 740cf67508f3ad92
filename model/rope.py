"""3-D rotary position embedding: time by slot order, space in world coordinates.

A head's dims are split in pairs (i, i + head_dim/2) that rotate together. The first
`rope_time_dims / 2` pairs rotate with the temporal position, the rest are split
evenly between world x and world y (in token units, re-centred on the current camera),
so that attention lines up content across frames when the camera pans or zooms.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.config import DiTConfig
from model.ops import apply_rope  # noqa: F401 (re-exported)


class RoPE3D(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        nt = cfg.rope_time_dims // 2
        ns = (cfg.head_dim - cfg.rope_time_dims) // 4
        freqs_t = cfg.rope_time_theta ** (-torch.arange(nt, dtype=torch.float64) / max(nt, 1))
        freqs_s = cfg.rope_space_theta ** (-torch.arange(ns, dtype=torch.float64) / max(ns, 1))
        self.register_buffer("freqs_t", freqs_t.float(), persistent=False)
        self.register_buffer("freqs_s", freqs_s.float(), persistent=False)

    def tables(self, time: Tensor, space: Tensor) -> tuple[Tensor, Tensor]:
        """time (B, N), space (B, N, 2) as world (x, y) -> cos, sin (B, N, head_dim)."""
        angles = torch.cat(
            (time[..., None] * self.freqs_t,
             space[..., 0:1] * self.freqs_s,
             space[..., 1:2] * self.freqs_s), dim=-1)  # (B, N, head_dim / 2)
        cos, sin = angles.cos(), angles.sin()
        return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
