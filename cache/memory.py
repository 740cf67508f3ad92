"""Long-term memory: chunks evicted from the window are pooled, not forgotten.

An evicted chunk's keys, values and world positions are average-pooled
`pool` x `pool` per frame (FramePack-style compression of older history), so the
bank holds `memory_frames` frames at a quarter of the tokens each. The bank is a
ring: when full, the oldest compressed chunk makes room. Its place in time is kept
by frame id, and positions are assigned by slot order at read time (cache/kv.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def pool_tokens(x: Tensor, frames: int, grid: int | tuple[int, int], pool: int) -> Tensor:
    """Average-pool tokens laid out frame-major on a grid of (rows, cols) (an int: square).

    x: (..., frames * rows * cols, D) -> (..., frames * (rows // pool) * (cols // pool), D)

    The window's `pool` x `pool` strided views summed in place: an evicted chunk's K/V are
    a strided slice of the cache, and this reads it as it is (avg_pool2d on the permuted
    copy cost 4x as much on the streaming path, beside the engine's threads).
    """
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    y = x.unflatten(-2, (frames, rows // pool, pool, cols // pool, pool))  # (..., f, r, i, c, j, D)
    out = y[..., 0, :, 0, :].clone()
    for i in range(pool):
        for j in range(pool):
            if i or j:
                out.add_(y[..., i, :, j, :])
    return out.div_(pool * pool).flatten(-4, -2)


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
