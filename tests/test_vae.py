import torch

from model.config import get_config
from model.checkpoint import build_model


@torch.no_grad()
def test_streaming_equals_whole_clip():
    """encode_step / decode_step chunk by chunk == whole-clip encode / decode."""
    cfg = get_config("debug")
    vae = build_model(cfg).vae
    for m in (vae.encoder.mix, vae.decoder.mix):  # make the temporal path non-trivial
        torch.nn.init.normal_(m.conv.weight, std=0.3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 10, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 10, cfg.vae.latent_channels, cfg.dit.latent_size, cfg.dit.latent_size)
    state, parts = vae.init_state(), []
    for s in (slice(0, 2), slice(2, 3), slice(3, 7), slice(7, 10)):
        zz, state = vae.encode_step(x[:, s], state)
        parts.append(zz)
    assert torch.allclose(torch.cat(parts, 1), z, atol=1e-5)
    y = vae.decode(z)
    state, parts = vae.init_state(), []
    for s in (slice(0, 4), slice(4, 6), slice(6, 10)):
        yy, state = vae.decode_step(z[:, s], state)
        parts.append(yy)
    assert torch.allclose(torch.cat(parts, 1), y, atol=1e-5)
    # causal: changing a later frame does not change earlier outputs
    x2 = x.clone()
    x2[:, 6] = 0
    assert torch.allclose(vae.encode(x2)[:, :6], z[:, :6], atol=1e-6)
    assert not torch.allclose(vae.encode(x2)[:, 6:], z[:, 6:])
