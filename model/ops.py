"""Operations every model family shares with the KV cache: rotary embedding in the
half-split layout and attention with its backend choice. Family-neutral, so that the
cache (cache/kv.py) and each family's network (model/dit.py, model/wan/) use the same
kernels without importing one another."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from flash_attn import flash_attn_func

    HAS_FLASH_ATTN = True
except ImportError:
    flash_attn_func = None
    HAS_FLASH_ATTN = False


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor | None = None) -> Tensor:
    """x * cos + (-x2, x1) * sin for x = (x1, x2) (..., N, Dh) split in halves; cos/sin
    broadcastable to x and the same in both halves of the last dim (as the families'
    `tables` make them). Three ops instead of six (no rotated copy of x); `out` (x's
    shape) receives the result in place, e.g. a slot of the KV cache."""
    h = x.shape[-1] // 2
    if out is None and (torch.compiler.is_exporting() or torch.compiler.is_compiling()):
        # a graph's form: in-place writes to halves become scatters there
        return x * cos + torch.cat((-x[..., h:], x[..., :h]), -1) * sin
    out = torch.mul(x, cos, out=out) if out is not None else x * cos
    s = sin[..., :h]
    out[..., :h].addcmul_(x[..., h:], s, value=-1)
    out[..., h:].addcmul_(x[..., :h], s)
    return out


def attention_backend(q: Tensor, k: Tensor, mask: Tensor | None) -> str:
    """flash-attn where it is installed and the tensors suit it (CUDA, fp16/bf16, no mask);
    on CPU for long contexts without gradients, two batched matmuls around a softmax
    ("bmm": MKL's GEMMs beat SDPA's CPU flash kernel 1.6x on a streamed chunk's
    128 x 592 x 64 heads; 3% of a default chunk, A/B in one process on 2 cores);
    PyTorch's scaled_dot_product_attention otherwise."""
    if HAS_FLASH_ATTN and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and mask is None:
        return "flash"
    if q.device.type == "cpu" and k.shape[-2] >= 128 and not torch.is_grad_enabled():
        return "bmm"
    return "sdpa"


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """q (B, H, Nq, Dh), k/v (B, H, Nk, Dh), mask broadcastable to (B, H, Nq, Nk): True =
    attend, or an additive float bias."""
    backend = attention_backend(q, k, mask)
    if backend == "flash":
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if backend == "bmm":
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # (B, H, Nq, Nk)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        return torch.matmul(scores.softmax(-1), v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] frames (..., 3, H, W) -> uint8 (..., H, W, 3)."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1)


def from_uint8(x: Tensor) -> Tensor:
    """uint8 (..., H, W, 3) -> float [-1, 1] (..., 3, H, W)."""
    return x.movedim(-1, -3).float() / 127.5 - 1.0


def gaussian_blur(x: Tensor, sigma: Tensor, mode: str = "reflect") -> Tensor:
    """Blur each image of x (B, C, H, W) by its own sigma (B,) in px (separable, radius 3
    sigma, edges padded by `mode`: "reflect" needs the radius under the size); sigma 0 is
    identity."""
    radius = int(math.ceil(3 * float(sigma.max()))) if len(sigma) else 0
    if radius == 0:
        return x
    k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    w = torch.exp(-0.5 * (k[None] / sigma.to(x.dtype).clamp(min=1e-3)[:, None]) ** 2)  # (B, K)
    w = w / w.sum(1, keepdim=True)
    b, c, h, wd = x.shape
    xp = F.pad(x.reshape(1, b * c, h, wd), (radius, radius, radius, radius), mode=mode)
    wk = w.repeat_interleave(c, 0)  # (B*C, K)
    xp = F.conv2d(xp, wk[:, None, None, :], groups=b * c)
    xp = F.conv2d(xp, wk[:, None, :, None], groups=b * c)
    return xp.reshape(b, c, h, wd)
