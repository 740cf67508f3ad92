"""What a network reads of a prompt, the same type for every model family: the
Generator batches (`cat`) and blends (`lerp`) prompts without knowing whose they are."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TextCond:
    """What a DiT reads of a prompt. `kv` holds per-layer cross-attention K/V
    (depth, 2, B, heads, tokens, head_dim) once computed, so a prompt costs one projection.
    A family without a pooled text vector (Wan) keeps `pooled` empty, (B, 0); one whose
    cross-attention has no mask keeps `mask` all True."""

    tokens: Tensor  # (B, L, text_dim)
    mask: Tensor  # (B, L) bool
    pooled: Tensor  # (B, text_dim)
    kv: Tensor | None = None

    def lerp(self, other: "TextCond", w: float) -> "TextCond":
        """(1 - w) * self + w * other, for smooth prompt transitions."""
        return TextCond(torch.lerp(self.tokens, other.tokens, w), self.mask | other.mask,
                        torch.lerp(self.pooled, other.pooled, w))

    def repeat(self, n: int) -> "TextCond":
        kv = None if self.kv is None else self.kv.repeat_interleave(n, dim=2)
        return TextCond(self.tokens.repeat_interleave(n, 0), self.mask.repeat_interleave(n, 0),
                        self.pooled.repeat_interleave(n, 0), kv)

    @staticmethod
    def cat(conds: list["TextCond"]) -> "TextCond":
        kv = None if any(c.kv is None for c in conds) else torch.cat([c.kv for c in conds], dim=2)
        return TextCond(torch.cat([c.tokens for c in conds]), torch.cat([c.mask for c in conds]),
                        torch.cat([c.pooled for c in conds]), kv)
