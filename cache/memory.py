"""Long-term memory: chunks evicted from the window are pooled, not forgotten.

An evicted chunk's keys, values and world positions are average-pooled
`pool` x `pool` per frame (FramePack-style compression of older history), so the
bank holds `memory_frames` frames at a quarter of the tokens each. The bank is a
ring: when full, the oldest compressed chunk makes room. Its place in time is kept
by frame id, and positions are assigned by slot order at read time (cache/kv.py).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor
import torch.nn.functional as F


def pool_tokens(x: Tensor, frames: int, grid: int | tuple[int, int], pool: int) -> Tensor:
    """Average-pool tokens laid out frame-major on a grid of (rows, cols) (an int: square).

    x: (..., frames * rows * cols, D) -> (..., frames * (rows // pool) * (cols // pool), D)
    """
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    lead = x.shape[:-2]
    x = x.reshape(-1, frames, rows, cols, x.shape[-1])
    x = rearrange(x, "n f h w d -> (n f) d h w")
    x = F.avg_pool2d(x, pool)
    x = rearrange(x, "(n f) d h w -> n (f h w) d", f=frames)
    return x.reshape(*lead, x.shape[-2], x.shape[-1])


class MemoryBank:
    """Where the next evicted chunk goes: a FIFO ring over `chunks` compressed slots."""

    def __init__(self, chunks: int):
        self.chunks = chunks
        self.written = 0  # chunks ever compressed into the bank

    def next_slot(self) -> int | None:
        """The slot the next evicted chunk overwrites, or None when there is no bank."""
        if self.chunks == 0:
            return None
        return self.written % self.chunks

    def advance(self) -> None:
        self.written += 1

    @property
    def filled(self) -> int:
        return min(self.written, self.chunks)

    def reset(self) -> None:
        self.written = 0


@torch.no_grad()
def compress_chunk(k: Tensor, v: Tensor, pos: Tensor, frames: int, grid: int | tuple[int, int], pool: int
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Pool one chunk's K/V (L, B, H, T, Dh) and world positions (B, T, 2)."""
    return (pool_tokens(k, frames, grid, pool), pool_tokens(v, frames, grid, pool),
            pool_tokens(pos, frames, grid, pool))
