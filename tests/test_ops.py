"""Shared kernels (model/ops.py): the attention backend choice and the bmm path."""

import torch
import torch.nn.functional as F

from model.ops import attention_backend


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def test_attention_backend_selection(monkeypatch):
    import model.ops as ops

    q, k_short, k_long = torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 16, 8), torch.zeros(1, 1, 256, 8)
    assert attention_backend(q, k_short, None) == "sdpa"  # CPU, short context: SDPA
    with torch.no_grad():
        assert attention_backend(q, k_long, None) == "bmm"  # CPU inference, long context
    assert attention_backend(q, k_long, None) == "sdpa"  # training keeps SDPA's backward
    monkeypatch.setattr(ops, "HAS_FLASH_ATTN", True)
    assert attention_backend(q, k_short, None) == "sdpa"  # installed, but CPU fp32 tensors

    class FakeCuda:
        is_cuda = True
        dtype = torch.bfloat16
        device = torch.device("cuda")

    assert attention_backend(FakeCuda(), k_long, None) == "flash"
    assert attention_backend(FakeCuda(), k_long, torch.ones(1, dtype=torch.bool)) == "sdpa"  # masks: SDPA
    monkeypatch.setattr(ops, "HAS_FLASH_ATTN", False)
    assert attention_backend(FakeCuda(), k_long, None) == "sdpa"


@torch.no_grad()
def test_bmm_attention_equals_sdpa():
    from model.ops import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 24, 16, generator=g) for _ in range(3))
    k, v = k.repeat(1, 1, 8, 1), v.repeat(1, 1, 8, 1)  # 192 keys: the bmm path
    mask = torch.rand(1, 1, 24, 192, generator=g) > 0.3
    bias = torch.zeros(2, 1, 1, 192).masked_fill_(torch.rand(2, 1, 1, 192, generator=g) > 0.5, float("-inf"))
    for m in (None, mask, bias):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        assert rel_err(attention(q, k, v, m), want) <= 1e-5
