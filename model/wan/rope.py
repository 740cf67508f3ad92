"""Wan's 3-D RoPE in livereel's channel layout.

Wan rotates adjacent channel pairs (2j, 2j+1) of a head as complex numbers; livereel's
`apply_rope` (and its KV cache) rotates half-split pairs (j, j + head_dim/2). Permuting
each head's q and k output channels once, at load, so that Wan's channel 2j lands on j
and 2j+1 on j + head_dim/2 (`half_split_order`) makes the two the same rotation: q.k is
unchanged when q and k share the permutation, and the RMSNorm over all heads before RoPE
does not care about channel order (its weight is permuted with the channels). v and the
output projection are untouched.

Pair j rotates at Wan's frequency for pair j: the first `t/2` pairs with time, the next
`h/2` with the token's row, the last `w/2` with its column (`WanConfig.rope_dims`), each
band at theta^(-2i/band). Angles and their cos/sin are computed in float64, as upstream.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.wan.config import WanConfig


def half_split_order(head_dim: int) -> list[int]:
    """new channel c takes old channel order[c]: even channels first, then odd."""
    return list(range(0, head_dim, 2)) + list(range(1, head_dim, 2))


def to_half_split(t: Tensor, heads: int) -> Tensor:
    """Permute the rows (dim 0) of a q/k projection's weight or bias, or of its RMSNorm
    weight, (heads * head_dim, ...) head by head into the half-split layout."""
    n = t.shape[0]
    order = torch.tensor(half_split_order(n // heads))
    return t.reshape(heads, n // heads, *t.shape[1:])[:, order].reshape(t.shape)


def from_half_split(t: Tensor, heads: int) -> Tensor:
    """The inverse of `to_half_split` (to write weights back in Wan's layout)."""
    n = t.shape[0]
    inverse = torch.argsort(torch.tensor(half_split_order(n // heads)))
    return t.reshape(heads, n // heads, *t.shape[1:])[:, inverse].reshape(t.shape)


class WanRoPE(nn.Module):
    """`tables(time, space)`: cos, sin (B, N, head_dim) for half-split pairs, the same in
    both halves, from time (B, N) and space (B, N, 2) = (row, column) positions."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.dims, self.theta = cfg.rope_dims, cfg.rope_theta  # no buffers: a dtype cast must not touch them

    def _band(self, n: int, device: torch.device) -> Tensor:
        return self.theta ** (-torch.arange(0, n, 2, dtype=torch.float64, device=device) / n)

    def tables(self, time: Tensor, space: Tensor) -> tuple[Tensor, Tensor]:
        (t, h, w), dev = self.dims, time.device
        time, space = time.double(), space.double()
        angles = torch.cat((time[..., None] * self._band(t, dev), space[..., 0:1] * self._band(h, dev),
                            space[..., 1:2] * self._band(w, dev)), dim=-1)  # (B, N, head_dim / 2)
        cos, sin = angles.cos().float(), angles.sin().float()
        return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
