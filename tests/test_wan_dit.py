"""The Wan DiT (model/wan/) against the reference implementation, diffusers'
`WanTransformer3DModel`, at a tiny random config in fp32 on CPU: one chunk, per-frame
timesteps, the cached chunk-by-chunk rollout against one full-sequence forward under
the streaming mask (a test attention processor supplies it), both position modes after
eviction, and RoPE against an independent float64 complex-number reference."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, WanTransformer3DModel  # noqa: E402

from cache.kv import KVCache, PositionLimitError  # noqa: E402
from model.ops import apply_rope  # noqa: E402
from model.wan.config import Recipe, WanConfig  # noqa: E402
from model.wan.dit import WanDiT  # noqa: E402
from model.wan.model import WanStreamConfig  # noqa: E402
from model.wan.rope import WanRoPE, from_half_split, to_half_split  # noqa: E402

HEADS, HEAD_DIM, C, TEXT_DIM, L = 2, 12, 4, 16, 8
H = W = 8  # latent frame: 4 x 4 tokens
TOL = 1e-4


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def diffusers_to_wan(sd: dict, heads: int) -> dict:
    """diffusers names -> Wan's, with the self-attention q/k in the half-split layout; a
    test-local rename (the loader's is checked against diffusers' own converter in
    test_wan_loader.py)."""
    top = {"condition_embedder.time_embedder.linear_1": "time_embedding.0",
           "condition_embedder.time_embedder.linear_2": "time_embedding.2",
           "condition_embedder.time_proj": "time_projection.1",
           "condition_embedder.text_embedder.linear_1": "text_embedding.0",
           "condition_embedder.text_embedder.linear_2": "text_embedding.2",
           "proj_out": "head.head", "scale_shift_table": "head.modulation",
           "patch_embedding": "patch_embedding"}
    block = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
             "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
             "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
             "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
             "norm2": "norm3", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2", "scale_shift_table": "modulation"}
    out = {}
    for key, t in sd.items():
        if key.startswith("blocks."):
            _, n, rest = key.split(".", 2)
            stem, leaf = rest.rsplit(".", 1) if rest != "scale_shift_table" else (rest, None)
            name = f"blocks.{n}.{block[stem]}" + (f".{leaf}" if leaf else "")
            if stem in ("attn1.to_q", "attn1.to_k", "attn1.norm_q", "attn1.norm_k"):
                t = to_half_split(t, heads)
        else:
            stem, leaf = key.rsplit(".", 1) if key != "scale_shift_table" else (key, None)
            name = top[stem] + (f".{leaf}" if leaf else "")
        out[name] = t
    return out


@pytest.fixture(scope="module")
def pair():
    """A seeded tiny diffusers Wan model and ours with the same weights."""
    torch.manual_seed(0)
    ref = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
                                in_channels=C, out_channels=C, text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32,
                                num_layers=2, cross_attn_norm=True, rope_max_seq_len=32).eval()
    cfg = WanConfig(dim=HEADS * HEAD_DIM, ffn_dim=32, depth=2, heads=HEADS, in_channels=C, out_channels=C,
                    freq_dim=16, text_dim=TEXT_DIM, text_len=L, rope_max_frames=32)
    ours = WanDiT(cfg).eval()
    ours.load_state_dict(diffusers_to_wan(ref.state_dict(), HEADS), strict=True)
    return ref, ours


class MaskedProcessor(WanAttnProcessor):
    """diffusers' attention processor with a mask on self-attention (it passes none)."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        mask = self.mask if encoder_hidden_states is None else None
        return super().__call__(attn, hidden_states, encoder_hidden_states, mask, rotary_emb)


def reference(ref, x, t, text, mask=None):
    """diffusers over a whole clip x (B, F, C, H, W) at per-frame t (B, F) in [0, 1] with a
    self-attention mask (N, N); -> (B, F, C, H, W)."""
    ref.set_attn_processor(MaskedProcessor(mask))
    tokens = (H // 2) * (W // 2)
    ts = (t * 1000).repeat_interleave(tokens, dim=1)  # per token (the diffusers per-token path)
    out = ref(x.transpose(1, 2), ts, text, return_dict=False)[0]
    return out.transpose(1, 2)


def streaming_mask(frames, chunk, sink, window):
    from model.wan.dit import streaming_mask as mask

    return mask(frames, (H // 2) * (W // 2), chunk, sink, window)


def layout(ours, chunk=3, sink=0, window=6, positions="absolute"):
    recipe = Recipe("test", chunk_frames=chunk, sink_frames=sink, window_frames=window, positions=positions)
    return WanStreamConfig(ours.cfg, recipe, height=H * 8, width=W * 8).cache_layout()


def inputs(frames, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, frames, C, H, W, generator=g), torch.randn(1, L, TEXT_DIM, generator=g)


def rollout(ours, lay, clean, noisy, t, text):
    """Chunk by chunk through the KV cache: each chunk's denoising evaluation at its t
    (returned), then its context pass at t = 0 on the clean latents, then the commit."""
    K = lay.chunk_frames
    cache = KVCache(lay)
    kv = ours.text_kv(text)
    outs = []
    for i in range(clean.shape[1] // K):
        s = slice(i * K, (i + 1) * K)
        ours.begin_chunk(cache, K, H, W)
        outs.append(ours(noisy[:, s], t[:, s], kv, cache))
        ours(clean[:, s], torch.zeros_like(t[:, s]), kv, cache, kv_only=True)
        cache.commit()
    return outs, cache


@torch.no_grad()
def test_one_chunk_equals_diffusers(pair):
    ref, ours = pair
    x, text = inputs(3)
    t = torch.full((1, 3), 0.9375)
    cache = KVCache(layout(ours))
    ours.begin_chunk(cache, 3, H, W)
    got = ours(x, t, ours.text_kv(text), cache)
    want = reference(ref, x, t, text)
    assert got.shape == x.shape
    assert rel_err(got, want) <= TOL


@torch.no_grad()
def test_per_frame_timesteps_equal_diffusers_per_token_timesteps(pair):
    ref, ours = pair
    x, text = inputs(3, seed=2)
    t = torch.tensor([[0.0, 0.5, 0.97]])
    cache = KVCache(layout(ours))
    ours.begin_chunk(cache, 3, H, W)
    got = ours(x, t, ours.text_kv(text), cache)
    assert rel_err(got, reference(ref, x, t, text)) <= TOL
    # and the per-frame levels matter: the same chunk at one level differs
    cache2 = KVCache(layout(ours))
    ours.begin_chunk(cache2, 3, H, W)
    assert rel_err(ours(x, torch.full((1, 3), 0.5), ours.text_kv(text), cache2), got) > 1e-2


@torch.no_grad()
def test_cached_rollout_equals_one_block_causal_forward(pair):
    """Before any eviction: chunk i's output from the cache equals diffusers over the whole
    sequence [clean chunks < i at t = 0 | chunk i noisy at t] under the block-causal mask."""
    ref, ours = pair
    n, K = 3, 3
    clean, text = inputs(n * K, seed=3)
    noisy = torch.randn(clean.shape, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0.9, 0.6, 0.3]).repeat_interleave(K)[None]
    outs, _ = rollout(ours, layout(ours, window=6), clean, noisy, t, text)
    for i in range(n):
        F_ = (i + 1) * K
        x = torch.cat((clean[:, : i * K], noisy[:, i * K: F_]), 1)
        tt = torch.cat((torch.zeros(1, i * K), t[:, i * K: F_]), 1)
        want = reference(ref, x, tt, text, streaming_mask(F_, K, 0, None))[:, i * K:]
        assert rel_err(outs[i], want) <= TOL, f"chunk {i}"


@torch.no_grad()
@pytest.mark.parametrize("positions", ["absolute", "slot"])
def test_rolling_window_without_sink_equals_a_sliding_window_forward(pair, positions):
    """With eviction and no sink the visible frames stay contiguous: both position modes
    equal diffusers under the sliding-window mask at absolute positions."""
    ref, ours = pair
    n, K = 4, 3
    clean, text = inputs(n * K, seed=5)
    noisy = torch.randn(clean.shape, generator=torch.Generator().manual_seed(6))
    t = torch.full((1, n * K), 0.7)
    outs, cache = rollout(ours, layout(ours, window=3, positions=positions), clean, noisy, t, text)
    assert cache.chunks_written == n  # chunk 3 saw only chunk 2: chunks 0 and 1 were evicted
    for i in range(n):
        F_ = (i + 1) * K
        x = torch.cat((clean[:, : i * K], noisy[:, i * K: F_]), 1)
        tt = torch.cat((torch.zeros(1, i * K), t[:, i * K: F_]), 1)
        want = reference(ref, x, tt, text, streaming_mask(F_, K, 0, 3))[:, i * K:]
        assert rel_err(outs[i], want) <= TOL, f"chunk {i}"


@torch.no_grad()
def test_sink_in_absolute_mode_equals_the_sink_window_mask(pair):
    ref, ours = pair
    n, K = 4, 3
    clean, text = inputs(n * K, seed=7)
    noisy = torch.randn(clean.shape, generator=torch.Generator().manual_seed(8))
    t = torch.full((1, n * K), 0.8)
    outs, _ = rollout(ours, layout(ours, sink=3, window=3), clean, noisy, t, text)
    x = torch.cat((clean[:, :9], noisy[:, 9:]), 1)
    tt = torch.cat((torch.zeros(1, 9), t[:, 9:]), 1)
    want = reference(ref, x, tt, text, streaming_mask(12, K, 3, 3))[:, 9:]
    assert rel_err(outs[3], want) <= TOL  # chunk 3 sees [sink 0-2 | 6-8 | itself], a gap at 3-5


class KVProcessor(WanAttnProcessor):
    """An explicit per-chunk reference from diffusers' own modules: self-attention of the
    chunk against stored pre-RoPE K/V of the frames it sees, all rotated by diffusers'
    RoPE table at the positions given (the chunk's last); `store` keeps the chunk's own
    K/V (a context pass)."""

    def __init__(self, layer, state):
        super().__init__()
        self.layer, self.state = layer, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, None, None)
        st = self.state
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if st["store"] is not None:
            st["store"][self.layer] = (k, v)
        keys = torch.cat([c[self.layer][0] for c in st["context"]] + [k], 1)
        values = torch.cat([c[self.layer][1] for c in st["context"]] + [v], 1)
        cos, sin = st["rope"]  # (1, N_all, 1, Dh) for the visible frames' positions
        n = q.shape[1]
        q, keys = complex_rope(q, cos[:, -n:], sin[:, -n:]), complex_rope(keys, cos, sin)
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2),
                                                               values.transpose(1, 2)).transpose(1, 2)
        return attn.to_out[0](out.flatten(2, 3))


def complex_rope(x, cos, sin):
    """Wan's rotation of adjacent pairs (2j, 2j+1) as complex numbers, in float64."""
    z = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())
    rot = torch.complex(cos[..., 0::2].double(), sin[..., 0::2].double())
    return torch.view_as_real(z * rot).flatten(-2).to(x.dtype)


@torch.no_grad()
def test_slot_positions_with_a_sink_equal_an_explicit_per_chunk_reference(pair):
    """LongLive's infinite mode: positions by rank among the visible frames (the sink at
    0..2, the window after it, the chunk last), the K/V of each frame as its own context
    pass made them; the reference rebuilds that chunk by chunk with diffusers' modules."""
    ref, ours = pair
    n, K = 5, 3
    clean, text = inputs(n * K, seed=9)
    noisy = torch.randn(clean.shape, generator=torch.Generator().manual_seed(10))
    t = torch.full((1, n * K), 0.75)
    outs, _ = rollout(ours, layout(ours, sink=3, window=3, positions="slot"), clean, noisy, t, text)

    state = {"context": [], "store": None, "rope": None}
    ref.set_attn_processor({name: KVProcessor(int(name.split(".")[1]), state)
                            for name in ref.attn_processors})
    stored = []  # per chunk: {layer: (k, v)} of its context pass
    tokens = (H // 2) * (W // 2)
    for i in range(n):
        seen = [j for j in range(i) if j == 0 or j >= i - 1]  # the sink chunk, the window's chunk
        frames = (len(seen) + 1) * K
        cos, sin = ref.rope(torch.zeros(1, C, frames, H, W))  # positions 0 .. frames-1: the ranks
        state["rope"], state["context"] = (cos, sin), [stored[j] for j in seen]
        s = slice(i * K, (i + 1) * K)
        state["store"] = None
        ts = (t[:, s] * 1000).repeat_interleave(tokens, 1)
        want = ref(noisy[:, s].transpose(1, 2), ts, text, return_dict=False)[0].transpose(1, 2)
        assert rel_err(outs[i], want) <= TOL, f"chunk {i}"
        state["store"] = {}
        ref(clean[:, s].transpose(1, 2), torch.zeros_like(ts), text, return_dict=False)
        stored.append(state["store"])
    ref.set_attn_processor(WanAttnProcessor())


def test_absolute_positions_stop_with_a_clear_error_at_the_table_end(pair):
    _, ours = pair
    lay = layout(ours, window=3)  # the tiny config's table: 32 frames
    cache = KVCache(lay)
    with torch.no_grad():
        for i in range(10):  # frames 0 .. 29
            ours.begin_chunk(cache, 3, H, W)
            cache.commit()
        ids_before = list(cache.frame_ids)
        with pytest.raises(PositionLimitError, match="absolute frame positions up to 32"):
            ours.begin_chunk(cache, 3, H, W)  # frames 30 .. 32: past the end
    assert cache.frame_ids == ids_before  # refused before touching the cache
    slot = KVCache(layout(ours, window=3, positions="slot"))
    with torch.no_grad():
        for i in range(40):  # slot positions: no cap
            ours.begin_chunk(slot, 3, H, W)
            slot.commit()
    assert slot.max_time_position == 5


def test_rope_equals_a_float64_complex_reference():
    cfg = WanConfig(dim=2 * 128, heads=2, depth=1, ffn_dim=8, text_dim=8)  # the real head dim: 44/42/42
    assert cfg.rope_dims == (44, 42, 42)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 60, 128, generator=g, dtype=torch.float64)  # Wan's channel layout
    f, r, c = torch.randint(0, 1024, (60,), generator=g), torch.randint(0, 60, (60,), generator=g), \
        torch.randint(0, 104, (60,), generator=g)
    # reference: complex pairs (2j, 2j+1), bands time | row | column at theta^(-2i/band)
    bands = [(44, f), (42, r), (42, c)]
    angles = torch.cat([pos[:, None].double() * 10000.0 ** (-torch.arange(0, n, 2, dtype=torch.float64) / n)
                        for n, pos in bands], dim=1)  # (60, 64)
    want = torch.view_as_real(torch.view_as_complex(q.unflatten(-1, (-1, 2)).contiguous())
                              * torch.polar(torch.ones_like(angles), angles)).flatten(-2)
    cos, sin = WanRoPE(cfg).tables(f[None].float(), torch.stack((r, c), -1)[None].float())
    ours_q = q.permute(3, 0, 1, 2)  # channels first, to permute them as the loader does
    got = apply_rope(to_half_split(ours_q, 1).permute(1, 2, 3, 0).float(), cos[:, None], sin[:, None])
    got = from_half_split(got.permute(3, 0, 1, 2), 1).permute(1, 2, 3, 0)
    assert rel_err(got.double(), want) <= 1e-6
    # logits do not depend on the channel order when q and k share it
    k = torch.randn(1, 2, 60, 128, generator=g)
    perm = lambda x: to_half_split(x.permute(3, 0, 1, 2), 1).permute(1, 2, 3, 0)  # noqa: E731
    assert torch.allclose(q.float() @ k.transpose(-1, -2), perm(q.float()) @ perm(k).transpose(-1, -2), atol=1e-4)


def test_module_names_and_shapes_are_what_the_loader_expects():
    from model.wan.loader import expected_shapes

    for cfg in (WanConfig(dim=24, heads=2, depth=2, ffn_dim=32, in_channels=4, out_channels=4, text_dim=16,
                          freq_dim=16), WanConfig(dim=24, heads=2, depth=1, ffn_dim=8, cross_attn_norm=False)):
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in WanDiT(cfg).state_dict().items()}
        assert shapes == {k: tuple(v) for k, v in expected_shapes(cfg).items()}
