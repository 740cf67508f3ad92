"""model/wan/vae.py: the Wan2.1 VAE decoder, streamed, against diffusers' AutoencoderKLWan.

The oracle is diffusers: a tiny seeded `AutoencoderKLWan` decodes a whole latent clip
(one-shot, its cache cleared per call); our decoder, given the same weights, streams the
clip in chunks and must give the same frames. Wan's original names (`Wan2.1_VAE.pth`)
come from a rename written here, checked against diffusers' own converter
(`convert_wan_vae_to_diffusers`) on a model shaped like the real one.
"""

import re

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import save_file

from model.checkpoint import CheckpointError
from model.wan.vae import (PRESETS, WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WanVAEConfig, WanVAEDecoder,
                           load_wan_vae)
from payload import Payload  # noqa: E402

TINY = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
# the real layout (channel doubling, 3 resnets per up block, the shortcut at upsamples.4) at a small width
SMALL = dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])


def diffusers_vae(seed: int = 0, **kwargs) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**kwargs).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):  # ones at init: make the norms' scales count
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return vae


# diffusers -> Wan's original names, written here independently of model/wan/vae.py
_RESNET = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
           "conv_shortcut": "shortcut"}


def to_wan(state: dict, resnets_per_up_block: int) -> dict:
    r = resnets_per_up_block

    def resnet_part(name: str) -> str:
        return re.sub(r"^(norm1|conv1|norm2|conv2|conv_shortcut)\.", lambda m: _RESNET[m[1]] + ".", name)

    def up(m: re.Match) -> str:
        block = int(m[1]) * (r + 1)
        if m[2] == "upsamplers.0":
            return f"decoder.upsamples.{block + r}.{m[4]}"
        return f"decoder.upsamples.{block + int(m[3])}.{resnet_part(m[4])}"

    out = {}
    for k, v in state.items():
        k = re.sub(r"^quant_conv\.", "conv1.", k)
        k = re.sub(r"^post_quant_conv\.", "conv2.", k)
        k = re.sub(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1.", k)
        k = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.head.0.", k)
        k = re.sub(r"^(encoder|decoder)\.conv_out\.", r"\1.head.2.", k)
        k = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.middle.1.", k)
        k = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)$",
                   lambda m: f"{m[1]}.middle.{2 * int(m[2])}.{resnet_part(m[3])}", k)
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.(.*)$",
                   lambda m: f"encoder.downsamples.{m[1]}.{resnet_part(m[2])}", k)
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.(upsamplers\.0|resnets\.(\d+))\.(.*)$", up, k)
        out[k] = v
    return out


def normalised(b: int, k: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, k, 16, h, w, generator=torch.Generator().manual_seed(seed))


def reference_decode(vae: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    """diffusers' one-shot decode of normalised (B, K, 16, h, w) latents -> (B, T, 3, H, W)."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        return vae.decode(z.transpose(1, 2) * std + mean).sample.transpose(1, 2)


def stream(dec: WanVAEDecoder, z: torch.Tensor, chunks: list[int]) -> list[torch.Tensor]:
    state, out, i = dec.init_state(), [], 0
    with torch.no_grad():
        for c in chunks:
            frames, state = dec.decode_step(z[:, i:i + c], state)
            out.append(frames)
            i += c
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def tiny():
    return diffusers_vae(**TINY)


@pytest.fixture(scope="module")
def tiny_pth(tiny, tmp_path_factory):
    """A synthetic `Wan2.1_VAE.pth` (Wan's names, encoder included) of the tiny model."""
    path = tmp_path_factory.mktemp("wan_vae") / "Wan2.1_VAE.pth"
    torch.save(to_wan(tiny.state_dict(), TINY["num_res_blocks"] + 1), path)
    return path


# --------------------------------------------------------------------------- constants, names


def test_latent_statistics_are_wan21s():
    cfg = AutoencoderKLWan(**TINY).config  # diffusers' defaults are Wan2.1's
    assert WAN21_LATENTS_MEAN == tuple(cfg.latents_mean)
    assert WAN21_LATENTS_STD == tuple(cfg.latents_std)
    assert PRESETS["wan2.1"] == WanVAEConfig()


def test_the_tests_rename_inverts_diffusers_converter():
    state = diffusers_vae(**SMALL).state_dict()
    wan = to_wan(state, SMALL["num_res_blocks"] + 1)
    assert "decoder.upsamples.4.shortcut.weight" in wan and "conv2.weight" in wan
    back = convert_wan_vae_to_diffusers(wan)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


# --------------------------------------------------------------------------- streaming == one-shot


@pytest.mark.parametrize("per_pass", [1, 3])
@pytest.mark.parametrize("chunks", [[1, 3, 3], [3, 3, 1]])
def test_streaming_equals_diffusers_whole_clip(tiny, tiny_pth, chunks, per_pass):
    z = normalised(2, sum(chunks), 4, 6)
    want = reference_decode(tiny, z)
    dec = load_wan_vae(tiny_pth)
    dec.latents_per_pass = per_pass
    out = stream(dec, z, chunks)
    assert [o.shape[1] for o in out] == [1 + 4 * (chunks[0] - 1)] + [4 * c for c in chunks[1:]]
    got = torch.cat(out, 1)
    assert got.shape == want.shape == (2, 1 + 4 * (sum(chunks) - 1), 3, 32, 48)
    assert rel(got, want) < 1e-4
    assert got.abs().max() <= 1 and (got.abs() < 1).float().mean() > 0.5  # clamped, not saturated


def test_streaming_equals_diffusers_real_layout(tmp_path):
    ref = diffusers_vae(seed=3, **SMALL)
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(to_wan(ref.state_dict(), SMALL["num_res_blocks"] + 1), path)
    dec = load_wan_vae(path)
    assert dec.cfg == WanVAEConfig(base_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2)
    z = normalised(1, 5, 2, 4, seed=4)
    got = torch.cat(stream(dec, z, [1, 2, 2]), 1)
    assert rel(got, reference_decode(ref, z)) < 1e-4


def test_state_size_is_fixed(tiny_pth):
    """A stream's state holds the same bytes at chunk 10 and at chunk 1,000 (chunks of 3
    latent frames, as the recipes stream), every slot the shape the first chunk gave it."""
    dec = load_wan_vae(tiny_pth)
    state = dec.init_state()
    with torch.no_grad():
        for i in range(1000):
            frames, state = dec.decode_step(normalised(1, 3, 2, 2, seed=i), state)
            assert frames.shape == (1, 9 if i == 0 else 12, 3, 16, 16)
            if i == 0:
                shapes = [tuple(t.shape) for t in state.past]  # every slot filled by the first chunk
            assert [tuple(t.shape) for t in state.past] == shapes
            if i == 9:
                at_10 = state.nbytes()
    # conv_in, 2 x 2 in the middle, 4 stages x 2 resnets x 2, 2 time convs, the head
    assert state.frames == 3 * 1000 and len(state.past) == 1 + 4 + 16 + 2 + 1
    assert state.nbytes() == at_10 > 0


# --------------------------------------------------------------------------- loading


def test_pth_and_diffusers_folder_load_identically(tiny, tiny_pth, tmp_path):
    tiny.save_pretrained(tmp_path / "pipe" / "vae")
    save_file({k: v.contiguous() for k, v in torch.load(tiny_pth, weights_only=True).items()},
              tmp_path / "wan_2.1_vae.safetensors")
    loaded = [load_wan_vae(p) for p in (tiny_pth, tmp_path / "pipe" / "vae", tmp_path / "pipe",
                                        tmp_path / "wan_2.1_vae.safetensors")]
    assert all(m.cfg == PRESETS["debug"] for m in loaded)
    ref = loaded[0].state_dict()
    assert not any(k.startswith("encoder.") for k in ref)
    for m in loaded[1:]:
        assert set(m.state_dict()) == set(ref)
        assert all(torch.equal(m.state_dict()[k], ref[k]) for k in ref)
    half = load_wan_vae(tiny_pth, dtype=torch.bfloat16)
    assert half.conv2.weight.dtype == torch.bfloat16 and half.mean.dtype == torch.bfloat16



def test_bad_files_raise(tiny_pth, tmp_path):
    good = torch.load(tiny_pth, weights_only=True)

    def saved(name, state):
        torch.save(state, tmp_path / name)
        return tmp_path / name

    cases = {
        "truncated": (tmp_path / "t.pth", "truncated or corrupt"),
        "shape": (saved("s.pth", {**good, "decoder.conv1.weight": torch.zeros(3, 16, 3, 3)}), "wrong shape"),
        "missing": (saved("m.pth", {k: v for k, v in good.items() if k != "decoder.head.0.gamma"}), "missing"),
        "unknown": (saved("u.pth", {**good, "decoder.extra.weight": torch.zeros(1)}), "unknown"),
        "no vae": (saved("n.pth", {"encoder.conv1.weight": torch.zeros(1)}), "missing tensors"),
        "nan": (saved("x.pth", {**good, "conv2.bias": torch.full((16,), float("nan"))}), "NaN"),
        "absent": (tmp_path / "absent.pth", "no such file"),
        "empty folder": (tmp_path / "folder", "no VAE weights"),
    }
    (tmp_path / "t.pth").write_bytes(tiny_pth.read_bytes()[:5000])
    (tmp_path / "folder").mkdir()
    for name, (path, msg) in cases.items():
        with pytest.raises(CheckpointError, match=msg):
            load_wan_vae(path)

    marker = tmp_path / "payload_ran"
    evil = saved("evil.pth", {**good, "conv2.weight": Payload(marker)})
    with pytest.raises(CheckpointError, match="refused"):
        load_wan_vae(evil)
    assert not marker.exists()
