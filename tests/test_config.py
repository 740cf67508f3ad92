import pytest
import torch

from model.config import DiTConfig, ModelConfig, TextConfig, VAEConfig, get_config, PRESETS


@pytest.mark.parametrize("kwargs, field", [
    (dict(window_frames=1), "window_frames"),
    (dict(window_frames=3), "window_frames"),  # not a multiple of the chunk
    (dict(depth=-1), "depth"),
    (dict(memory_frames=-2), "memory_frames"),
    (dict(heads=3), "heads"),  # 128 is not divisible by 3
    (dict(patch=3), "patch"),
    (dict(rope_time_dims=5), "rope_time_dims"),
])
def test_bad_dit_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"DiTConfig.{field}"):
        DiTConfig(**kwargs)


def test_bad_model_configs_name_the_field():
    with pytest.raises(ValueError, match="ModelConfig.dit.latent_size"):
        ModelConfig(image_size=64)
    with pytest.raises(ValueError, match="ModelConfig.fps"):
        ModelConfig(fps=0)
    with pytest.raises(ValueError, match="VAEConfig.dec_channels"):
        VAEConfig(dec_channels=(8, 8))
    with pytest.raises(ValueError, match="TextConfig.heads"):
        TextConfig(dim=10, heads=3)
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("huge")
    with pytest.raises(ValueError, match="unknown fields"):
        ModelConfig.from_dict({"nme": "x"})


def test_derived_sizes_come_from_the_config():
    for name in PRESETS:
        c = get_config(name)
        d = c.dit
        assert d.tokens_per_frame == (c.image_size // c.vae.downsample // d.patch) ** 2
        assert d.max_frames == d.sink_frames + d.memory_frames + d.window_frames + d.chunk_frames
        assert ModelConfig.from_dict(c.to_dict()) == c


@torch.no_grad()
def test_flop_count_matches_the_networks_matmuls(monkeypatch):
    """flops_per_token (the bench's efficiency numerator) against PyTorch's own count of
    one streamed evaluation and one context pass of the default architecture (random
    weights), every attention as two counted matmuls."""
    from torch.utils.flop_counter import FlopCounterMode

    import model.generate as generate
    import model.ops
    from model.checkpoint import build_model
    from model.config import flops_per_token, get_config

    monkeypatch.setattr(model.ops, "attention_backend", lambda q, k, mask: "bmm")
    cfg = get_config("default")
    gen = generate.Generator(build_model(cfg), seed=0, steps=4, warm_start=3)
    gen.set_prompt("a red ball bouncing over the desert")
    for _ in range(cfg.dit.max_frames // cfg.dit.chunk_frames):  # fill the cache: every slot visible
        gen.step()
    counted, evaluate = [], generate._evaluate

    def counting(*args, **kwargs):
        with FlopCounterMode(display=False) as counter:
            out = evaluate(*args, **kwargs)
        counted.append(counter.get_total_flops())
        return out

    monkeypatch.setattr(generate, "_evaluate", counting)
    d, text = cfg.dit, cfg.text.max_tokens
    full = d.tokens_per_chunk * flops_per_token(d, d.cache_tokens, text)
    context = d.tokens_per_chunk * flops_per_token(d, d.cache_tokens, text, kv_only=True)
    gen.step()  # warm-started, fused: the last chunk's context pass and this chunk's one evaluation
    assert counted == pytest.approx([full + context], rel=1e-9)
    counted.clear()
    gen.fuse = False
    gen.step()  # the last chunk's context pass still rides along; this chunk's follows at once
    gen.step()  # separate: one denoising evaluation, then the context pass
    expected = [full + context, context, full, context]
    assert counted == pytest.approx(expected, rel=1e-9)
