"""Wan2.1's DiT, causal and chunk-wise: one network evaluation over a chunk against a
KV cache read, or over a whole clip under the streaming mask.

    x (B, F, C, H, W) latents -> Conv3d patches (1, 2, 2) -> (B, F, T, D), T = H/2 * W/2
    per frame: t -> sinusoid (cos | sin, float64) -> time_embedding -> e (B, F, D)
                 -> time_projection -> e0 (B, F, 6, D): shift, scale, gate of self-attention,
                    then of the FFN (+ each block's `modulation`)
    blocks: self-attention (RMSNorm q/k across heads, 3-D RoPE, reads the context)
            + cross-attention to 512 zero-padded text tokens (no mask; K/V once per prompt)
            + GELU-tanh FFN
    head: LayerNorm modulated by e + head.modulation -> Linear -> (B, F, C, H, W), the
          flow velocity (noise - data)

Parameter names are Wan's own (`blocks.N.self_attn.q`, ...), so its checkpoints load by
name; the self-attention q/k channels are in livereel's half-split RoPE layout, which
model/wan/loader.py permutes them into at load (model/wan/rope.py says why that is the
same model). Self-attention reads its context through the KV cache's verbs (`write`,
`read`, `current_rope`), like livereel's own DiT, so the same cache, Generator and
server run it. There is no camera input: Wan models are text-to-video.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.ops import apply_rope, attention
from model.wan.config import WanConfig
from model.wan.rope import WanRoPE

# --------------------------------------------------------------------------- helpers


def sinusoid(t: Tensor, dim: int) -> Tensor:
    """Timesteps (...,) out of 1000 -> (..., dim) features, cos half first, in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t.double()[..., None] * freqs
    return torch.cat((args.cos(), args.sin()), dim=-1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return torch.addcmul(shift, x, 1 + scale)  # x * (1 + scale) + shift


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class ClipMaskContext:
    """The context of a whole clip: every frame attends to the frames the streaming cache
    would show it (its chunk, the sink, the last `window_frames` before its chunk), at
    absolute positions 0..F-1. The slow, obvious reference the cached path equals in
    "absolute" mode (and in "slot" mode while no sink leaves a gap)."""

    def __init__(self, cos: Tensor, sin: Tensor, mask: Tensor):
        self.cos, self.sin, self.mask = cos, sin, mask
        self._kv: tuple[Tensor, Tensor] | None = None

    def write(self, layer: int, k: Tensor, v: Tensor) -> None:
        self._kv = (apply_rope(k, self.cos, self.sin), v)

    def read(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        return (*self._kv, self.mask)

    def current_rope(self) -> tuple[Tensor, Tensor]:
        return self.cos, self.sin


def streaming_mask(frames: int, tokens_per_frame: int, chunk: int, sink: int, window: int | None,
                   device: torch.device | None = None) -> Tensor:
    """(N, N) bool: token i sees token j when j's chunk is i's, or an earlier chunk in the
    sink or among the `window` frames before i's chunk (None: all earlier frames)."""
    c = torch.arange(frames, device=device) // chunk  # chunk of each frame
    fi, fj = torch.arange(frames, device=device)[:, None], torch.arange(frames, device=device)[None, :]
    ci, cj = c[:, None], c[None, :]
    earlier = cj < ci
    in_window = torch.ones_like(earlier) if window is None else fj >= ci * chunk - window
    see = (cj == ci) | (earlier & ((fj < sink) | in_window))
    return see.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


# --------------------------------------------------------------------------- leaf modules


class SelfAttention(nn.Module):
    def __init__(self, cfg: WanConfig, layer: int):
        super().__init__()
        self.layer, self.heads = layer, cfg.heads
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)  # across all heads, as Wan
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, N, D) -> q, k (normalised, before RoPE), v: each (B, H, N, Dh)."""
        B, N, _ = x.shape
        heads = lambda t: t.view(B, N, self.heads, -1).transpose(1, 2)  # noqa: E731
        return heads(self.norm_q(self.q(x))), heads(self.norm_k(self.k(x))), heads(self.v(x))

    def output(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, cos: Tensor,
               sin: Tensor) -> Tensor:
        B, H, N, Dh = q.shape
        out = attention(apply_rope(q, cos, sin), keys, values, mask)
        return self.o(out.transpose(1, 2).reshape(B, N, H * Dh))


class CrossAttention(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.heads = cfg.heads
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)

    def text_kv(self, context: Tensor) -> Tensor:
        """context (B, L, D) -> (2, B, H, L, Dh); once per prompt."""
        B, L, _ = context.shape
        k = self.norm_k(self.k(context)).view(B, L, self.heads, -1).transpose(1, 2)
        v = self.v(context).view(B, L, self.heads, -1).transpose(1, 2)
        return torch.stack((k, v))

    def forward(self, x: Tensor, kv: Tensor) -> Tensor:
        B, N, D = x.shape
        q = self.norm_q(self.q(x)).view(B, N, self.heads, -1).transpose(1, 2)
        return self.o(attention(q, kv[0], kv[1]).transpose(1, 2).reshape(B, N, D))


# --------------------------------------------------------------------------- block


class Block(nn.Module):
    def __init__(self, cfg: WanConfig, layer: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg, layer)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: Tensor, e0: Tensor, ctx, text_kv: Tensor, skip: int = 0) -> Tensor:
        """x (B, F, T, D), e0 (B, F, 6, D). Two halves around the context's verbs, as
        model/dit.py's Block; `skip`: the first rows only write their K/V."""
        q, k, v, mods = self.project(x, e0)
        ctx.write(self.self_attn.layer, k, v)
        keys, values, mask = ctx.read(self.self_attn.layer)
        cos, sin = ctx.current_rope()
        if skip:
            x, q, keys, values, cos, sin = (t[skip:] for t in (x, q, keys, values, cos, sin))
            mods = tuple(m[skip:] for m in mods)
            mask = mask if mask is None or mask.dim() < 4 or mask.shape[0] == 1 else mask[skip:]
            text_kv = text_kv[:, skip:]
        return self.attend(x, mods, q, keys, values, mask, cos, sin, text_kv)

    def project(self, x: Tensor, e0: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        B, Fr, T, D = x.shape
        mods = (self.modulation + e0).unsqueeze(2).unbind(3)  # 6 x (B, F, 1, D)
        q, k, v = self.self_attn.project(modulate(self.norm1(x), mods[0], mods[1]).view(B, Fr * T, D))
        return q, k, v, mods

    def attend(self, x: Tensor, mods: tuple[Tensor, ...], q: Tensor, keys: Tensor, values: Tensor,
               mask: Tensor | None, cos: Tensor, sin: Tensor, text_kv: Tensor) -> Tensor:
        B, Fr, T, D = x.shape
        _, _, gate, c_shift, c_scale, c_gate = mods
        h = self.self_attn.output(q, keys, values, mask, cos, sin)
        x = torch.addcmul(x, gate, h.view(B, Fr, T, D))
        x = x + self.cross_attn(self.norm3(x).view(B, Fr * T, D), text_kv).view(B, Fr, T, D)
        return torch.addcmul(x, c_gate, self.ffn(modulate(self.norm2(x), c_shift, c_scale)))

    def write_kv(self, x: Tensor, e0: Tensor, ctx) -> None:
        _, k, v, _ = self.project(x, e0)
        ctx.write(self.self_attn.layer, k, v)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_channels * math.prod(cfg.patch))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        shift, scale = (self.modulation + e[:, :, None]).unsqueeze(2).unbind(3)  # (B, F, 1, D)
        return self.head(modulate(self.norm(x), shift, scale))


# --------------------------------------------------------------------------- the model


class WanDiT(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, D, kernel_size=cfg.patch, stride=cfg.patch)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, D), nn.GELU(approximate="tanh"),
                                            nn.Linear(D, D))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.depth)])
        self.head = Head(cfg)
        self.rope = WanRoPE(cfg)

    # -- conditioning --------------------------------------------------------
    def text_kv(self, text: Tensor) -> Tensor:
        """Text features (B, L, text_dim), zero-padded to `text_len` -> cross-attention K/V
        of every layer (depth, 2, B, H, L, Dh)."""
        context = self.text_embedding(text)
        return torch.stack([b.cross_attn.text_kv(context) for b in self.blocks])

    def condition(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """t (B, F) in [0, 1] -> e (B, F, D) for the head, e0 (B, F, 6, D) for the blocks."""
        e = self.time_embedding(sinusoid(t * 1000, self.cfg.freq_dim).to(self.head.modulation.dtype))
        e0 = self.time_projection(e).unflatten(-1, (6, -1))
        return e, e0

    # -- patches and positions ----------------------------------------------
    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token rows, columns of a latent frame of `height` x `width`."""
        _, ph, pw = self.cfg.patch
        return height // ph, width // pw

    def patchify(self, x: Tensor) -> Tensor:
        """(B, F, C, H, W) -> (B, F, T, D) through the patch convolution."""
        h = self.patch_embedding(x.transpose(1, 2))  # (B, D, F, h, w)
        return h.flatten(3).permute(0, 2, 3, 1)

    def unpatchify(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, F, T, ph * pw * C) -> (B, F, C, H, W); a token's channels are (ph, pw, C)."""
        (rows, cols), (_, ph, pw) = grid, self.cfg.patch
        B, Fr = x.shape[:2]
        x = x.view(B, Fr, rows, cols, ph, pw, -1).permute(0, 1, 6, 2, 4, 3, 5)
        return x.reshape(B, Fr, -1, rows * ph, cols * pw)

    @staticmethod
    def token_positions(grid: tuple[int, int], frames: int, batch: int, device=None) -> Tensor:
        """(row, column) of every token of `frames` frames: (B, F * T, 2), frame-major."""
        rows, cols = grid
        r, c = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device),
                              indexing="ij")
        pos = torch.stack((r, c), -1).reshape(1, rows * cols, 2).float()
        return pos.repeat(batch, frames, 1)

    # -- contexts ------------------------------------------------------------
    def clip_context(self, x: Tensor, chunk: int, sink: int = 0, window: int | None = None) -> ClipMaskContext:
        """The whole-clip reference context for x (B, F, C, H, W): absolute positions, the
        streaming mask of chunks of `chunk` frames with that sink and window."""
        B, Fr = x.shape[:2]
        grid = self.grid(*x.shape[-2:])
        space = self.token_positions(grid, Fr, B, x.device)
        time = torch.arange(Fr, device=x.device).repeat_interleave(grid[0] * grid[1]).expand(B, -1)
        cos, sin = self.rope.tables(time, space)
        mask = streaming_mask(Fr, grid[0] * grid[1], chunk, sink, window, x.device)
        return ClipMaskContext(cos[:, None].to(x.dtype), sin[:, None].to(x.dtype), mask)

    def begin_chunk(self, cache, frames: int, height: int, width: int, first_frame: int | None = None) -> None:
        """Prepare `cache`'s read for a chunk of `frames` latent frames of `height` x
        `width` (once per chunk): the plain token grid, no camera."""
        grid = self.grid(height, width)
        batch = cache.pos.shape[0]
        pos = self.token_positions(grid, frames, batch, cache.pos.device).to(cache.pos.dtype)
        cache.begin_chunk(pos, torch.zeros(batch, 2, device=pos.device, dtype=pos.dtype), self.rope.tables,
                          first_frame)

    # -- one network evaluation ---------------------------------------------
    def forward(self, x: Tensor, t: Tensor, text_kv: Tensor, ctx, kv_only: bool = False,
                context_rows: int = 0) -> Tensor | None:
        """x (B, F, C, H, W); t (B, F) in [0, 1] per frame (1 = noise); text_kv from
        `text_kv`; ctx: a KV cache after `begin_chunk` (or a batch of them), or a
        `clip_context`. Returns the velocity (B - context_rows, F, C, H, W), or None with
        `kv_only` (a context pass: only the K/V are written; the last block stops after
        them). `context_rows`: the first rows are context passes (cache.kv.FusedBatch)."""
        grid = self.grid(*x.shape[-2:])
        e, e0 = self.condition(t)
        h = self.patchify(x)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if kv_only and i == last:
                block.write_kv(h, e0, ctx)
                return None
            h = block(h, e0, ctx, text_kv[i], skip=context_rows if i == last else 0)
        return self.unpatchify(self.head(h, e[context_rows:]), grid)
