"""Camera state and motion -> conditioning.

The camera is (x, y, zoom): x right, y down, in world units of one DiT token at zoom 0
(`ModelConfig.pixels_per_token` view pixels), zoom in log2 (positive zooms in, so the
view covers 2**-zoom as much world). Viewers command velocities: pan in view widths per
second, zoom in log2 per second, each in [-1, 1].

The DiT sees the camera three ways: every token's world position (its spatial RoPE),
the per-frame motion (dx, dy, dzoom) in its modulation, and (`DiTConfig.warp_prior`) the
last frame before the chunk warped to where the camera now looks (`warp_frame`): a
motion-compensated prior that the model refines, as video codecs predict from the
previous frame, so following a pan is a copy rather than something to infer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class CameraCond:
    """Per-frame camera of a clip or chunk: pos (B, F, 3) = (x, y, zoom), motion (B, F, 3)."""

    pos: Tensor
    motion: Tensor

    def frames(self, s: slice) -> "CameraCond":
        return CameraCond(self.pos[:, s], self.motion[:, s])

    def repeat(self, n: int) -> "CameraCond":
        return CameraCond(self.pos.repeat_interleave(n, 0), self.motion.repeat_interleave(n, 0))


def token_positions(pos: Tensor, grid: int) -> Tensor:
    """World (x, y) of every token: pos (B, F, 3) -> (B, F * grid * grid, 2), frame-major,
    row-major inside a frame (the patchify order)."""
    offs = torch.arange(grid, device=pos.device, dtype=pos.dtype) + 0.5 - grid / 2
    oy, ox = torch.meshgrid(offs, offs, indexing="ij")
    off = torch.stack((ox, oy), -1).reshape(1, 1, grid * grid, 2)  # (1, 1, T, 2)
    scale = torch.exp2(-pos[..., 2:3])[:, :, None]  # (B, F, 1, 1)
    world = pos[:, :, None, :2] + off * scale
    return world.reshape(pos.shape[0], -1, 2)


def velocity_per_frame(pan: tuple[float, float], zoom: float, zoom_now: float, grid: int,
                       fps: int) -> tuple[float, float, float]:
    """Commanded velocities -> per-frame (dx, dy, dzoom) in world token units.
    A view is `grid` tokens wide at zoom 0 and `grid * 2**-zoom` at zoom `zoom_now`."""
    width = grid * 2.0 ** (-zoom_now)
    return pan[0] * width / fps, pan[1] * width / fps, zoom / fps


def integrate(start: tuple[float, float, float], step: tuple[float, float, float], frames: int,
              zoom_range: tuple[float, float] = (-1.0, 2.0)) -> tuple[list[tuple[float, float, float]],
                                                                      list[tuple[float, float, float]]]:
    """Advance the camera `frames` frames by a constant per-frame step. Zoom is clamped to
    `zoom_range` (the range the model was trained on). Returns positions and motions."""
    x, y, z = start
    pos, motion = [], []
    for _ in range(frames):
        nz = min(max(z + step[2], zoom_range[0]), zoom_range[1])
        d = (step[0], step[1], nz - z)
        x, y, z = x + d[0], y + d[1], nz
        pos.append((x, y, z))
        motion.append(d)
    return pos, motion


def warp_frame(frame: Tensor, frame_pos: Tensor, valid: Tensor, pos: Tensor, grid: int) -> Tensor:
    """The latent frame `frame` (B, C, h, w), seen from camera `frame_pos` (B, 3), as seen
    from each camera of `pos` (B, F, 3): (B, F, C + 1, h, w), the last channel 1 where
    the view was covered by `frame` (0 where the camera uncovered new ground, or where
    `valid` (B,) is 0: no previous frame). Bilinear; positions in token units, as `pos`.

    A view pixel u (normalised to [-1, 1] across the view) shows world point
    xy + u * (grid / 2) * 2**-zoom; the same point sat at
    u' = u * 2**(zoom_prev - zoom) + (xy - xy_prev) * 2**zoom_prev / (grid / 2) in the
    previous view: one affine map per frame."""
    B, Fr = pos.shape[:2]
    prev = frame_pos[:, None]  # (B, 1, 3)
    scale = torch.exp2(prev[..., 2] - pos[..., 2])  # (B, F)
    shift = (pos[..., :2] - prev[..., :2]) * torch.exp2(prev[..., 2:3]) / (grid / 2)  # (B, F, 2)
    src = torch.cat((frame, torch.ones_like(frame[:, :1])), 1) * valid[:, None, None, None]
    src = src[:, None].expand(B, Fr, *src.shape[1:]).flatten(0, 1)  # (B*F, C+1, h, w)
    # F.affine_grid's sampling grid for the map (scale, 0, shift_x; 0, scale, shift_y), made
    # directly: the view's pixel centres (as affine_grid places them), scaled and shifted
    # (a general 2x3 product costs an engine a reduction per pixel)
    h, w = src.shape[-2:]
    xs = torch.linspace(-1, 1, w, device=src.device, dtype=src.dtype) * ((w - 1) / w)
    ys = torch.linspace(-1, 1, h, device=src.device, dtype=src.dtype) * ((h - 1) / h)
    scale, shift = scale.reshape(-1, 1, 1), shift.reshape(-1, 1, 1, 2)
    where = torch.stack(((scale * xs[None, None, :]).expand(-1, h, w), (scale * ys[None, :, None]).expand(-1, h, w)),
                        -1) + shift  # (B*F, h, w, 2)
    out = F.grid_sample(src, where, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(B, Fr, *out.shape[1:])
