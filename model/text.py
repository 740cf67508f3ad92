"""Text conditioning behind one small interface.

The built-in encoder hashes words into buckets (so any prompt encodes, with no vocabulary
file) and runs a small transformer trained with the DiT. It returns per-token features
for cross-attention, their mask and a pooled vector for the adaLN modulation.
"""

from __future__ import annotations

import re
import zlib

import torch
from torch import Tensor, nn

from model.conditioning import TextCond
from model.config import TextConfig

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(prompts: list[str], cfg: TextConfig) -> tuple[Tensor, Tensor]:
    """Prompts -> ids (B, max_tokens) and mask (B, max_tokens). Token 0 is a BOS that is
    always present, so even the empty prompt attends to something."""
    ids = torch.zeros(len(prompts), cfg.max_tokens, dtype=torch.long)
    mask = torch.zeros(len(prompts), cfg.max_tokens, dtype=torch.bool)
    for b, prompt in enumerate(prompts):
        words = _WORD.findall(prompt.lower())[: cfg.max_tokens - 1]
        ids[b, 1: len(words) + 1] = torch.tensor(
            [1 + zlib.crc32(w.encode()) % (cfg.vocab_size - 1) for w in words], dtype=torch.long)
        mask[b, : len(words) + 1] = True
    return ids, mask


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos = nn.Parameter(torch.zeros(cfg.max_tokens, cfg.dim))
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 4 * cfg.dim, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, ids: Tensor, mask: Tensor) -> TextCond:
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~mask)
        x = self.norm(x) * mask[..., None]
        pooled = x.sum(1) / mask.sum(1, keepdim=True)
        return TextCond(x, mask, pooled)

    def encode(self, prompts: list[str]) -> TextCond:
        ids, mask = tokenize(prompts, self.cfg)
        device = self.pos.device
        return self(ids.to(device), mask.to(device))

