"""model/wan/tae.py: the TAEHV-kind tiny decoder, streamed, on the published layout.

There are no real weights here (taew2_1.pth is not vendored): a state dict of the
published layout (taehv.py's decoder nn.Sequential, its keys and shapes written out
below) is filled with seeded random values. The oracle is `reference`, a plain
whole-clip evaluation of that layout written here from the published architecture,
reading the published names directly.
"""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from model.checkpoint import CheckpointError
from model.wan.tae import PRESETS, TAEConfig, TAEDecoder, load_tae
from payload import Payload  # noqa: E402

WIDE = dict(widths=(256, 128, 64), last=64)  # taew2_1
SMALL = dict(widths=(16, 8, 8), last=8)


def published_layout(widths, last, latent=16, strides=(1, 2, 2)) -> dict[str, tuple[int, ...]]:
    """taehv.py's decoder: 0 clamp, 1 conv, 2 ReLU; per stage 3 MemBlocks (conv.0/2/4),
    upsample, TGrow (conv, no bias), conv (no bias); then ReLU and the RGB conv."""
    shapes = {"decoder.1.weight": (widths[0], latent, 3, 3), "decoder.1.bias": (widths[0],)}
    i = 3
    for s, c in enumerate(widths):
        for _ in range(3):
            shapes |= {f"decoder.{i}.conv.0.weight": (c, 2 * c, 3, 3), f"decoder.{i}.conv.0.bias": (c,),
                       f"decoder.{i}.conv.2.weight": (c, c, 3, 3), f"decoder.{i}.conv.2.bias": (c,),
                       f"decoder.{i}.conv.4.weight": (c, c, 3, 3), f"decoder.{i}.conv.4.bias": (c,)}
            i += 1
        i += 1  # the upsample
        shapes[f"decoder.{i}.conv.weight"] = (c * strides[s], c, 1, 1)
        shapes[f"decoder.{i + 1}.weight"] = (widths[s + 1] if s + 1 < len(widths) else last, c, 3, 3)
        i += 2
    shapes |= {f"decoder.{i + 1}.weight": (3, last, 3, 3), f"decoder.{i + 1}.bias": (3,)}
    return shapes


def random_state(shapes: dict, seed: int = 0, encoder: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 1
        out[k] = torch.randn(shape, generator=g) / fan_in ** 0.5 * (0.3 if len(shape) == 4 else 0.1)
    out["decoder.22.bias"] = out["decoder.22.bias"] + 0.5  # frames around mid-grey, few clamped
    if encoder:  # the file holds the encoder too; it is ignored
        out |= {"encoder.0.weight": torch.randn(64, 3, 3, 3), "encoder.0.bias": torch.zeros(64),
                "encoder.2.conv.weight": torch.randn(64, 128, 1, 1)}
    return out


def reference(sd: dict, z: torch.Tensor) -> torch.Tensor:
    """Whole-clip decode of normalised latents (B, T, 16, h, w) with the published
    layout's tensors -> frames in [0, 1] with the first 3 dropped, as upstream."""
    def conv(x, key, **kw):
        return F.conv2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"), **kw)

    b = z.shape[0]
    x = F.relu(conv((torch.tanh(z / 3) * 3).flatten(0, 1), "decoder.1", padding=1))
    i = 3
    for _ in range(3):
        for _ in range(3):  # MemBlocks: the previous frame's input, zeros before the first
            t = x.shape[0] // b
            prev = F.pad(x.view(b, t, *x.shape[1:]), (0, 0, 0, 0, 0, 0, 1, 0))[:, :t].flatten(0, 1)
            h = F.relu(conv(torch.cat([x, prev], 1), f"decoder.{i}.conv.0", padding=1))
            h = F.relu(conv(h, f"decoder.{i}.conv.2", padding=1))
            x = F.relu(conv(h, f"decoder.{i}.conv.4", padding=1) + x)
            i += 1
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        c = x.shape[1]
        x = conv(x, f"decoder.{i + 1}.conv").reshape(-1, c, *x.shape[2:])  # TGrow
        x = conv(x, f"decoder.{i + 2}", padding=1)
        i += 3
    x = conv(F.relu(x), f"decoder.{i + 1}", padding=1)
    return x.view(b, -1, *x.shape[1:])[:, 3:].clamp(0, 1)


def stream(dec: TAEDecoder, z: torch.Tensor, chunks: list[int]) -> list[torch.Tensor]:
    state, out, i = dec.init_state(), [], 0
    with torch.no_grad():
        for c in chunks:
            frames, state = dec.decode_step(z[:, i:i + c], state)
            out.append(frames)
            i += c
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    sd = random_state(published_layout(**SMALL))
    path = tmp_path_factory.mktemp("tae") / "tae_small.pth"
    torch.save(sd, path)
    return sd, path


def test_layout_is_taew2_1s():
    shapes = published_layout(**WIDE)
    assert shapes["decoder.7.conv.weight"] == (256, 256, 1, 1)  # stage 0 does not grow time
    assert shapes["decoder.13.conv.weight"] == (256, 128, 1, 1)
    assert shapes["decoder.19.conv.weight"] == (128, 64, 1, 1)
    assert shapes["decoder.20.weight"] == (64, 64, 3, 3)
    assert shapes["decoder.22.weight"] == (3, 64, 3, 3)
    assert 9.5e6 < sum(torch.Size(s).numel() for s in shapes.values()) < 10e6


def test_published_layout_loads_and_decodes(tmp_path):
    sd = random_state(published_layout(**WIDE))
    torch.save(sd, tmp_path / "taew2_1.pth")
    save_file(sd, tmp_path / "taew2_1.safetensors")
    dec = load_tae(tmp_path / "taew2_1.pth")
    assert dec.cfg == PRESETS["taew2_1"] == TAEConfig()
    z = torch.randn(2, 2, 16, 2, 3, generator=torch.Generator().manual_seed(1))
    frames = dec.decode(z)
    assert frames.shape == (2, 5, 3, 16, 24)
    assert frames.min() >= -1 and frames.max() <= 1
    assert (frames - (reference(sd, z) * 2 - 1)).abs().max() < 1e-5
    (tmp_path / "tae").mkdir()
    (tmp_path / "taew2_1.safetensors").rename(tmp_path / "tae" / "taew2_1.safetensors")
    for again in (load_tae(tmp_path / "tae" / "taew2_1.safetensors"), load_tae(tmp_path / "tae")):
        assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), dec.state_dict().values()))


@pytest.mark.parametrize("per_pass", [None, 1])
@pytest.mark.parametrize("chunks", [[1, 3, 3], [3, 3, 1], [2, 5]])
def test_streaming_equals_whole_clip(small, chunks, per_pass):
    sd, path = small
    dec = load_tae(path)
    assert dec.cfg == TAEConfig(channels=(16, 8, 8, 8)) == PRESETS["debug"]
    dec.latents_per_pass = per_pass
    z = torch.randn(2, sum(chunks), 16, 3, 2, generator=torch.Generator().manual_seed(2))
    out = stream(dec, z, chunks)
    assert [o.shape[1] for o in out] == [1 + 4 * (chunks[0] - 1)] + [4 * c for c in chunks[1:]]
    got = torch.cat(out, 1)
    whole = dec.decode(z)
    want = reference(sd, z) * 2 - 1
    assert got.shape == whole.shape == want.shape == (2, 1 + 4 * (sum(chunks) - 1), 3, 24, 16)
    assert (got - whole).abs().max() < 1e-5
    assert (got - want).abs().max() < 1e-5
    assert (got.abs() < 1).float().mean() > 0.5  # mostly not clamped


def test_state_size_is_fixed(small):
    dec = load_tae(small[1])
    state = dec.init_state()
    with torch.no_grad():
        for i in range(200):
            frames, state = dec.decode_step(torch.randn(1, 1, 16, 2, 2), state)
            assert frames.shape == (1, 1 if i == 0 else 4, 3, 16, 16)
            if i == 0:
                shapes = [tuple(t.shape) for t in state.past]
            assert [tuple(t.shape) for t in state.past] == shapes
            if i == 9:
                at_10 = state.nbytes()
    assert state.frames == 200 and len(state.past) == 9 and state.nbytes() == at_10 > 0


def test_lighttae_decodes_wan_vae_latents(small, tmp_path):
    """lighttaew2_1 (same layout) is given the DiT's normalised latents and decodes
    z * std + mean with Wan2.1's statistics; taew2_1 decodes them as they are."""
    from model.wan.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD

    sd, path = small
    torch.save(sd, tmp_path / "lighttaew2_1.pth")
    light, plain = load_tae(tmp_path / "lighttaew2_1.pth"), load_tae(path)
    assert light.cfg.latents_mean == WAN21_LATENTS_MEAN and plain.cfg.latents_mean is None
    assert load_tae(tmp_path / "lighttaew2_1.pth", denormalise=False).cfg == plain.cfg
    z = torch.randn(1, 3, 16, 2, 2, generator=torch.Generator().manual_seed(5))
    raw = z * torch.tensor(WAN21_LATENTS_STD).view(-1, 1, 1) + torch.tensor(WAN21_LATENTS_MEAN).view(-1, 1, 1)
    assert (light.decode(z) - plain.decode(raw)).abs().max() < 1e-5



def test_bad_files_raise(small, tmp_path):
    sd = small[0]

    def saved(name, state):
        torch.save(state, tmp_path / name)
        return tmp_path / name

    (tmp_path / "t.pth").write_bytes(small[1].read_bytes()[:4000])
    patch2 = {**sd, "decoder.22.weight": torch.zeros(12, 8, 3, 3), "decoder.22.bias": torch.zeros(12)}
    cases = {
        "truncated": (tmp_path / "t.pth", "truncated or corrupt"),
        "shape": (saved("s.pth", {**sd, "decoder.4.conv.2.weight": torch.zeros(16, 8, 3, 3)}), "wrong shape"),
        "missing": (saved("m.pth", {k: v for k, v in sd.items() if k != "decoder.14.weight"}), "missing"),
        "unknown": (saved("u.pth", {**sd, "decoder.4.skip.weight": torch.zeros(16, 16, 1, 1)}), "unknown"),
        "patch size": (saved("p.pth", patch2), "not RGB"),
        "not a tae": (saved("n.pth", {"conv_in.weight": torch.zeros(1)}), "not a TAEHV decoder"),
        "absent": (tmp_path / "absent.pth", "no such file"),
        "empty folder": (tmp_path / "folder", "must hold one weights file"),
    }
    (tmp_path / "folder").mkdir()
    for name, (path, msg) in cases.items():
        with pytest.raises(CheckpointError, match=msg):
            load_tae(path)

    marker = tmp_path / "payload_ran"
    evil = saved("evil.pth", {**sd, "decoder.1.weight": Payload(marker)})
    with pytest.raises(CheckpointError, match="refused"):
        load_tae(evil)
    assert not marker.exists()
