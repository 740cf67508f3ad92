"""The causal DiT: one network evaluation over a clip (training) or a chunk (streaming).

    x (B, F, C, h, w) latents -> patchify -> (B, F*T, D) tokens, T = (h/p) * (w/p)
    blocks: self-attention (3-D RoPE, reads the context) + cross-attention (text) + MLP,
            each modulated per frame by adaLN from timestep + camera motion + pooled text
    -> (B, F, C, h, w) flow-matching velocity (noise - data)

Self-attention reads its context through three verbs, `write`, `current_rope` and
`read`, implemented by `ClipContext` (the training path: the whole clip under the
block-causal mask, with the same sink / memory / window that streaming sees) and by
`cache.kv.KVCache` (the streaming path: one chunk against the cache).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from cache.memory import pool_tokens
from model.camera import CameraCond, token_positions, warp_frame
from model.config import DiTConfig
from model.ops import apply_rope, attention, attention_backend  # noqa: F401 (re-exported)
from model.rope import RoPE3D
from model.text import TextCond

# --------------------------------------------------------------------------- helpers


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return torch.addcmul(shift, x, 1 + scale)  # x * (1 + scale) + shift, one pass over x


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """t (...,) in [0, 1] -> sinusoidal features (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    args = (t[..., None] * 1000.0) * freqs
    return torch.cat((args.cos(), args.sin()), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class ClipContext:
    """Self-attention context of the training path: a whole clip of `n_chunks` chunks.

    Chunk i sees chunk j (full tokens) when j == i, or j < i and j is in the sink or the
    window; and chunk j pooled when it would sit in the memory bank at chunk i. Time
    positions are frame indices, which equal streaming's slot order while the clip fits
    in `max_frames`. Optionally collects each layer's pre-RoPE K/V (`keep_kv`).
    """

    def __init__(self, cfg: DiTConfig, rope: RoPE3D, world: Tensor, center: Tensor, n_frames: int,
                 keep_kv: bool = False):
        K, T, g, p = cfg.chunk_frames, cfg.tokens_per_frame, cfg.grid, cfg.memory_pool
        self.cfg, n = cfg, n_frames // K
        B, device = world.shape[0], world.device
        time = torch.arange(n_frames, device=device, dtype=world.dtype).repeat_interleave(T)
        rel = world - center[:, None]
        cos, sin = rope.tables(time.expand(B, -1), rel)
        self.cos, self.sin = cos[:, None], sin[:, None]  # (B, 1, N, Dh)

        i = torch.arange(n, device=device)[:, None]
        j = torch.arange(n, device=device)[None, :]
        S, W, M = cfg.sink_chunks, cfg.window_chunks, cfg.memory_chunks
        full = (j <= i) & ((j < S) | (j >= i - W))
        pooled = (j >= S) & (j < i - W) & (j >= i - W - M)
        self.use_memory = bool(M > 0 and n > S + W + 1)
        full = full.repeat_interleave(K * T, 0).repeat_interleave(K * T, 1)
        if self.use_memory:
            Tm = cfg.memory_tokens_per_frame
            pooled = pooled.repeat_interleave(K * T, 0).repeat_interleave(K * Tm, 1)
            full = torch.cat((full, pooled), dim=1)
            ptime = torch.arange(n_frames, device=device, dtype=world.dtype).repeat_interleave(Tm)
            prel = pool_tokens(rel, n_frames, g, p)
            pcos, psin = rope.tables(ptime.expand(B, -1), prel)
            self.pcos, self.psin = pcos[:, None], psin[:, None]
        self.mask = full  # (N, N [+ N_pooled])
        self.n_frames = n_frames
        self.kv: list[tuple[Tensor, Tensor]] | None = [] if keep_kv else None
        self._k = self._v = None

    def write(self, layer: int, k: Tensor, v: Tensor) -> None:
        if self.kv is not None:
            self.kv.append((k, v))
        keys, values = apply_rope(k, self.cos, self.sin), v
        if self.use_memory:
            cfg = self.cfg
            pk = pool_tokens(k, self.n_frames, cfg.grid, cfg.memory_pool)
            pv = pool_tokens(v, self.n_frames, cfg.grid, cfg.memory_pool)
            keys = torch.cat((keys, apply_rope(pk, self.pcos, self.psin)), dim=2)
            values = torch.cat((values, pv), dim=2)
        self._k, self._v = keys, values

    def current_rope(self) -> tuple[Tensor, Tensor]:
        return self.cos, self.sin

    def read(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        return self._k, self._v, self.mask


# --------------------------------------------------------------------------- leaf modules


class SelfAttention(nn.Module):
    def __init__(self, cfg: DiTConfig, layer: int):
        super().__init__()
        self.layer, self.heads = layer, cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.q_norm = RMSNorm(cfg.head_dim)
        self.k_norm = RMSNorm(cfg.head_dim)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, N, D) -> q, k (normalised, before RoPE), v: each (B, H, N, Dh)."""
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, -1)
        # q and k normalised in one call: (B, N, 2, H, Dh), each with its own weight
        weight = torch.stack((self.q_norm.weight, self.k_norm.weight))[:, None]
        qk = F.rms_norm(qkv[:, :, :2], (qkv.shape[-1],), None, self.q_norm.eps) * weight
        q, k = qk.permute(2, 0, 3, 1, 4)  # (B, H, N, Dh)
        return q, k, qkv[:, :, 2].transpose(1, 2)

    def output(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, cos: Tensor,
               sin: Tensor) -> Tensor:
        """Attention of q (B, H, N, Dh), rotated by (cos, sin), to the context's keys and
        values; -> (B, N, D)."""
        B, H, N, Dh = q.shape
        out = attention(apply_rope(q, cos, sin), keys, values, mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, H * Dh))


class CrossAttention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.kv = nn.Linear(cfg.text_dim, 2 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.q_norm = RMSNorm(cfg.head_dim)
        self.k_norm = RMSNorm(cfg.head_dim)

    def text_kv(self, tokens: Tensor) -> Tensor:
        """tokens (B, L, text_dim) -> (2, B, H, L, Dh); computed once per prompt."""
        B, L, _ = tokens.shape
        k, v = self.kv(tokens).view(B, L, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return torch.stack((self.k_norm(k), v))

    def forward(self, x: Tensor, kv: Tensor, bias: Tensor) -> Tensor:
        """x (B, N, D); kv (2, B, H, L, Dh) from `text_kv`; bias (B, 1, 1, L): 0 or -inf."""
        B, N, D = x.shape
        q = self.q_norm(self.q(x).view(B, N, self.heads, -1).transpose(1, 2))
        out = attention(q, kv[0], kv[1], bias)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact GELU: 3.5x faster than tanh on CPU


# --------------------------------------------------------------------------- block


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig, layer: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(cfg, layer)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.cross = CrossAttention(cfg)
        self.norm3 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(cfg.dim, int(cfg.dim * cfg.mlp_ratio))
        self.ada = nn.Linear(cfg.dim, 6 * cfg.dim)

    def forward(self, x: Tensor, c: Tensor, ctx, text_kv: Tensor, text_bias: Tensor, skip: int = 0) -> Tensor:
        """x (B, F, T, D), c (B, F, D): modulation is per frame, broadcast over its tokens.
        Two pure halves around the context's verbs (`write`, `read`), so that each half can be
        compiled (model/compile.py) while the cache stays plain Python. `skip`: the first rows
        only write their K/V (context passes); the output has the other B - skip rows."""
        q, k, v, mods = self.project(x, c)
        ctx.write(self.attn.layer, k, v)
        keys, values, mask = ctx.read(self.attn.layer)
        cos, sin = ctx.current_rope()
        if skip:
            x, q, keys, values, cos, sin = (t[skip:] for t in (x, q, keys, values, cos, sin))
            mods = tuple(m[skip:] for m in mods)
            mask = mask if mask is None or mask.shape[0] == 1 else mask[skip:]
            text_kv, text_bias = text_kv[:, skip:], text_bias[skip:]
        return self.attend(x, mods, q, keys, values, mask, cos, sin, text_kv, text_bias)

    def project(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        """The first half: q, k, v (B, H, N, Dh) of the modulated x, and the six modulations
        (B, F, 1, D): shift, scale, gate of the attention, then of the MLP."""
        B, Fr, T, D = x.shape
        mods = self.ada(F.silu(c))[:, :, None].chunk(6, dim=-1)  # 6 x (B, F, 1, D)
        q, k, v = self.attn.project(modulate(self.norm1(x), mods[0], mods[1]).view(B, Fr * T, D))
        return q, k, v, mods

    def attend(self, x: Tensor, mods: tuple[Tensor, ...], q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None,
               cos: Tensor, sin: Tensor, text_kv: Tensor, text_bias: Tensor) -> Tensor:
        """The second half: self-attention to the context, cross-attention to the text, MLP."""
        B, Fr, T, D = x.shape
        _, _, gate_a, shift_m, scale_m, gate_m = mods
        h = self.attn.output(q, keys, values, mask, cos, sin)
        x = torch.addcmul(x, gate_a, h.view(B, Fr, T, D))  # x + gate * h
        x = x + self.cross(self.norm2(x).view(B, Fr * T, D), text_kv, text_bias).view(B, Fr, T, D)
        return torch.addcmul(x, gate_m, self.mlp(modulate(self.norm3(x), shift_m, scale_m)))

    def write_kv(self, x: Tensor, c: Tensor, ctx) -> None:
        """Only the K/V this block writes to the context (what a context pass needs of the
        last block: the rest of its output feeds nothing that is kept)."""
        _, k, v, _ = self.project(x, c)
        ctx.write(self.attn.layer, k, v)


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.linear = nn.Linear(cfg.dim, cfg.latent_channels * cfg.patch**2)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(F.silu(c))[:, :, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


# --------------------------------------------------------------------------- the model


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        self.patch_embed = nn.Linear(cfg.latent_channels * cfg.patch**2, D)
        # the warped previous frame and its coverage mask (zero-initialised: a model starts,
        # or a run resumed from one without it goes on, as if it were not there)
        self.prior_embed = nn.Linear(cfg.prior_channels * cfg.patch**2, D) if cfg.warp_prior else None
        self.t_embed = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))
        self.cam_embed = nn.Sequential(nn.Linear(3, D), nn.SiLU(), nn.Linear(D, D))
        self.text_pool = nn.Linear(cfg.text_dim, D)
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.depth)])
        self.final = FinalLayer(cfg)
        self.rope = RoPE3D(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # adaLN-Zero: every block starts as the identity
        zero = [b.ada for b in self.blocks] + [self.final.ada, self.final.linear]
        for m in zero + ([self.prior_embed] if self.prior_embed is not None else []):
            nn.init.zeros_(m.weight)

    # -- conditioning --------------------------------------------------------
    def text_kv(self, text: TextCond) -> Tensor:
        """Cross-attention K/V for every layer: (depth, 2, B, H, L, Dh)."""
        return torch.stack([b.cross.text_kv(text.tokens) for b in self.blocks])

    def condition(self, t: Tensor, text: TextCond, camera: CameraCond) -> Tensor:
        """Per-frame modulation input (B, F, D) from timestep, camera motion and pooled text."""
        c = self.t_embed(timestep_embedding(t, 256))
        c = c + self.cam_embed(camera.motion * self.cfg.camera_scale)
        return c + self.text_pool(text.pooled)[:, None]

    # -- patches -------------------------------------------------------------
    def patchify(self, x: Tensor) -> Tensor:
        p = self.cfg.patch
        return rearrange(x, "b f c (h p) (w q) -> b f (h w) (c p q)", p=p, q=p)

    def unpatchify(self, x: Tensor) -> Tensor:
        p, g = self.cfg.patch, self.cfg.grid
        return rearrange(x, "b f (h w) (c p q) -> b f c (h p) (w q)", h=g, w=g, p=p, q=p)

    # -- contexts ------------------------------------------------------------
    def clip_context(self, camera: CameraCond, keep_kv: bool = False) -> ClipContext:
        """The training path's context for a whole clip (`keep_kv` collects each layer's K/V)."""
        world = token_positions(camera.pos, self.cfg.grid)
        return ClipContext(self.cfg, self.rope, world, camera.pos[:, -1, :2], camera.pos.shape[1],
                           keep_kv)

    def begin_chunk(self, cache, camera: CameraCond, first_frame: int | None = None,
                    prior: Tensor | None = None) -> None:
        """Prepare `cache` for the chunk whose per-frame camera is `camera` (once per chunk):
        its read, and the chunk's warped prior: `prior` (B, K, prior_channels, h, w) where the caller
        made it (pixel space, model/prior.py), else the cache's last frame warped in latent space."""
        world = token_positions(camera.pos, self.cfg.grid)
        cache.begin_chunk(world, camera.pos[:, -1, :2], self.rope.tables, first_frame)
        if self.prior_embed is not None:
            cache.prior = prior if prior is not None else warp_frame(
                cache.frame, cache.frame_pos, cache.frame_valid, camera.pos, self.cfg.grid)

    def clip_prior(self, x: Tensor, camera: CameraCond) -> Tensor:
        """The training path's warped priors (B, F, C + 1, h, w): every chunk's from the last
        frame of the chunk before it in `x` (as the cache keeps it; none for the first)."""
        B, Fr = x.shape[:2]
        K = self.cfg.chunk_frames
        last = torch.cat((torch.zeros_like(x[:, :1]), x[:, K - 1:-1:K]), 1)  # (B, n, C, h, w)
        last_pos = torch.cat((camera.pos[:, :1], camera.pos[:, K - 1:-1:K]), 1)  # (B, n, 3)
        valid = (torch.arange(Fr // K, device=x.device) > 0).to(x.dtype).expand(B, -1)
        pos = camera.pos.view(B, Fr // K, K, 3)
        out = warp_frame(last.flatten(0, 1), last_pos.flatten(0, 1), valid.flatten(), pos.flatten(0, 1),
                         self.cfg.grid)  # (B*n, K, C+1, h, w)
        return out.view(B, Fr, *out.shape[2:])

    # -- one network evaluation ---------------------------------------------
    def forward(self, x: Tensor, t: Tensor, text: TextCond, camera: CameraCond, cache=None,
                kv_only: bool = False, prior_source: Tensor | None = None,
                prior: Tensor | None = None, context_rows: int = 0) -> Tensor | None:
        """x (B, F, C, h, w); t (B, F) in [0, 1] per frame (1 = noise); returns the velocity.

        cache=None: training path over the whole clip (F a multiple of chunk_frames);
        a `ClipContext` from `clip_context()` does the same and can keep the K/V.
        cache=KVCache (after `begin_chunk`): one chunk attending to the cache.
        kv_only: only write every layer's K/V to the context and return None (a context
        pass: the last block stops after its K/V, the final layer is skipped).
        context_rows: the first rows are context passes in the same evaluation (a
        `FusedBatch`): their last block stops after its K/V, and the velocity returned is
        that of the other rows only.
        prior_source: the training path's frames to warp into the priors (default: x); the
        clean clip there, since streaming warps the clean last frame of the chunk before.
        prior: the training path's priors (B, F, prior_channels, h, w) made by the caller (pixel space,
        `model.prior.clip_pixel_prior`); overrides `prior_source`.
        """
        if cache is None:
            cache = self.clip_context(camera)
        kv = text.kv if text.kv is not None else self.text_kv(text)
        # the text mask as an additive bias, once for all layers: (B, 1, 1, L)
        bias = torch.zeros(text.mask.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill_(~text.mask, float("-inf"))[:, None, None]
        c = self.condition(t, text, camera)
        h = self.patch_embed(self.patchify(x))  # (B, F, T, D)
        if self.prior_embed is not None:
            if isinstance(cache, ClipContext):
                if prior is None:
                    prior = self.clip_prior(x if prior_source is None else prior_source, camera)
            else:  # set by begin_chunk; the chunk's last frame is the next chunk's source
                prior = cache.prior
                cache.write_frame(x[:, -1], camera.pos[:, -1])
            h = h + self.prior_embed(self.patchify(prior))
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if kv_only and i == last:
                block.write_kv(h, c, cache)
                return None
            h = block(h, c, cache, kv[i], bias, skip=context_rows if i == last else 0)
        return self.unpatchify(self.final(h, c[context_rows:]))
