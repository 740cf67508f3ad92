"""A Wan model through livereel's engine (the Generator, the KV cache, the fused
context pass): chunks equal a sampler written here on top of diffusers'
`WanTransformer3DModel` over the whole history under the streaming mask; prompt
switches by re-cache, cut and blend; batched streams equal streams alone."""

import zlib

import pytest
import torch

pytest.importorskip("diffusers")

from model.generate import chunk_seed, step_batch  # noqa: E402
from model.wan.config import Recipe  # noqa: E402
from model.wan.model import WanModel, WanStreamConfig, wan_generator  # noqa: E402
from tests.test_wan_dit import C, H, L, TEXT_DIM, W, pair, reference, rel_err, streaming_mask  # noqa: E402,F401

TOL = 1e-4


def encoder(prompts):
    """A stand-in for umT5 (a test of the engine, not of the encoder): fixed random
    features per prompt, fewer tokens than the DiT's 512 so the padding is exercised."""
    out = []
    for p in prompts:
        g = torch.Generator().manual_seed(zlib.crc32(p.encode()))
        out.append(torch.randn(1, L - 3, TEXT_DIM, generator=g))
    return torch.cat(out)


def wan(ours, **recipe):
    r = Recipe("test", **{"chunk_frames": 3, "window_frames": 6, "sink_frames": 0, **recipe})
    model = WanModel(WanStreamConfig(ours.cfg, r, height=H * 8, width=W * 8), text_encoder=encoder).eval()
    model.dit.load_state_dict(ours.state_dict())
    return model


def padded(prompt, length=L):
    t = torch.zeros(1, length, TEXT_DIM)
    t[:, : L - 3] = encoder([prompt])
    return t


def reference_rollout(ref, recipe, prompts, seed=0, text_len=L):
    """Chunk i under prompts[i]: Self-Forcing's sampler (x0 predicted, re-noised with fresh
    noise to the next level, the Generator's seeds) with each evaluation a diffusers
    forward over [clean history at t = 0 | the chunk], the whole history under the
    chunk's prompt (what a re-cache makes of it), masked as the cache sees it."""
    sig, K = recipe.sigmas, recipe.chunk_frames
    hist = torch.zeros(1, 0, C, H, W)
    out = []
    for i, prompt in enumerate(prompts):
        base = chunk_seed(seed, i)
        x = torch.randn(1, K, C, H, W, generator=torch.Generator().manual_seed(base))
        F_ = hist.shape[1] + K
        mask = streaming_mask(F_, K, recipe.sink_frames, recipe.window_frames)
        for s, (t, t_next) in enumerate(zip(sig[:-1], sig[1:])):
            tt = torch.cat((torch.zeros(1, hist.shape[1]), torch.full((1, K), t)), 1)
            v = reference(ref, torch.cat((hist, x), 1), tt, padded(prompt, text_len), mask)[:, -K:]
            x0 = x - t * v
            if t_next > 0:
                noise = torch.randn(1, K, C, H, W, generator=torch.Generator().manual_seed(base + s + 1))
                x = (1 - t_next) * x0 + t_next * noise
            else:
                x = x0
        out.append(x)
        hist = torch.cat((hist, x), 1)
    return out


@torch.no_grad()
def test_generator_streams_a_wan_model_as_the_reference_sampler(pair):
    ref, ours = pair
    model = wan(ours)
    gen = wan_generator(model, seed=0)
    gen.set_prompt("a cat")
    got = [gen.step() for _ in range(3)]
    want = reference_rollout(ref, model.config.recipe, ["a cat"] * 3)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == (1, 3, C, H, W)
        assert rel_err(a, b) <= TOL, f"chunk {i}"


@torch.no_grad()
def test_prompt_switch_recaches_the_window_under_the_new_prompt(pair):
    ref, ours = pair
    model = wan(ours)
    gen = wan_generator(model, seed=3)
    gen.set_prompt("a cat")
    got = [gen.step() for _ in range(2)]
    gen.set_prompt("a dog")
    got += [gen.step() for _ in range(2)]
    assert [a["what"] for a in gen.applied] == []  # nothing staged for the last chunk
    want = reference_rollout(ref, model.config.recipe, ["a cat"] * 2 + ["a dog"] * 2, seed=3)
    for i, (a, b) in enumerate(zip(got, want)):
        assert rel_err(a, b) <= TOL, f"chunk {i}"


@torch.no_grad()
def test_switch_policies_cut_blend_and_the_kept_sink(pair):
    _, ours = pair

    def run(policy, **recipe):
        gen = wan_generator(wan(ours, switch=policy, **recipe), seed=5)
        gen.set_prompt("a cat")
        for _ in range(3):
            gen.step()
        gen.flush()
        before = gen.cache.k.clone()
        gen.set_prompt("a dog")
        after_chunk = gen.step()
        return gen, before, after_chunk

    cut, before, x_cut = run("cut")
    slots = {name: cut.cache.regions[name].token_slice(0) for name in ("window",)}
    # cut: the kept K/V are those of the old prompt; only the text changed
    assert torch.equal(cut.cache.k[:, :, :, slots["window"]], before[:, :, :, slots["window"]])
    recache, before_r, x_re = run("recache", sink_frames=3, window_frames=3)
    sink = recache.cache.sink.token_slice(0)
    assert torch.equal(recache.cache.k[:, :, :, sink], before_r[:, :, :, sink])  # LongLive: the sink is kept
    win = recache.cache.window.token_slice(0)
    assert not torch.allclose(recache.cache.k[:, :, :, win], before_r[:, :, :, win])  # the window is redone
    blend, _, x_blend = run("blend", blend_chunks=2)
    assert blend.applied[0]["transition"] == 2  # a plain switch blends over the recipe's chunks
    assert rel_err(x_blend, x_cut) > 1e-3 and rel_err(x_re, x_cut) > 1e-3


@torch.no_grad()
def test_batched_wan_streams_equal_streams_alone(pair):
    _, ours = pair
    model = wan(ours)
    alone = []
    for seed, prompt in ((1, "a cat"), (2, "a boat")):
        g = wan_generator(model, seed=seed)
        g.set_prompt(prompt)
        alone.append([g.step() for _ in range(3)])
    gens = [wan_generator(model, seed=s) for s in (1, 2)]
    gens[0].set_prompt("a cat")
    gens[1].set_prompt("a boat")
    together = [step_batch(gens) for _ in range(3)]
    for i in range(3):
        for j in range(2):
            assert rel_err(together[i][j], alone[j][i]) <= TOL


def test_a_wan_model_without_its_decoder_says_what_is_missing(pair):
    _, ours = pair
    gen = wan_generator(wan(ours), seed=0)
    with torch.no_grad():
        latents = gen.step()
    with pytest.raises(RuntimeError, match="no decoder"):
        gen.decode(latents)


@torch.no_grad()
def test_checkpoints_load_into_the_engine(pair, tmp_path):
    """A diffusers folder and a Self-Forcing .pt of the same weights load (the loader's
    naming and q/k permutation) into a WanModel whose chunks equal diffusers'."""
    from model.checkpoint import CheckpointError, load_model
    from model.wan.loader import ROPE_PERMUTED
    from model.wan.model import load_wan_model
    from model.wan.rope import from_half_split

    ref, ours = pair
    ref.save_pretrained(tmp_path / "diffusers")
    wan_named = {k: from_half_split(v, ours.cfg.heads) if k.split(".", 2)[-1] in ROPE_PERMUTED else v
                 for k, v in ours.state_dict().items()}
    torch.save({"generator_ema": {f"model.{k}": v for k, v in wan_named.items()}}, tmp_path / "sf.pt")
    recipe = Recipe("test", chunk_frames=3, window_frames=6)
    want = reference_rollout(ref, recipe, ["a cat"] * 2, text_len=512)  # Wan's padding: inferred configs keep it
    for path, heads in ((tmp_path / "diffusers", None), (tmp_path / "sf.pt", 2)):  # the .pt has no config.json
        model = load_wan_model(path, recipe, heads=heads, height=H * 8, width=W * 8, text_encoder=encoder)
        assert model.config.dit.heads == 2
        gen = wan_generator(model, seed=0)
        gen.set_prompt("a cat")
        for i in range(2):
            assert rel_err(gen.step(), want[i]) <= TOL, f"{path.name} chunk {i}"
    with pytest.raises(CheckpointError, match="Wan2.1 DiT .* needs the Wan VAE"):
        load_model(tmp_path / "diffusers")  # the serving path: says what else it needs
