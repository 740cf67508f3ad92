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


@torch.no_grad()
def test_a_display_decoder_anchored_to_the_world_moves_its_detail_with_the_camera():
    """Latents of a view panning a fraction of a cell a frame: decoded anchored
    (`decode_shown` with the offsets), each frame is the first one moved by the camera
    (what a decoder draws is fixed to the world); decoded as they are, its own detail stays
    on the screen's cell grid and they are not."""
    import dataclasses

    from model.config import get_config
    from model.checkpoint import build_model
    from model.ops import fourier_shift

    cfg = get_config("debug")
    model = build_model(dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, display_decoder=True))).eval()
    vae = model.vae
    torch.manual_seed(0)
    c, h = cfg.vae.latent_channels, 16  # a view of 16 x 16 cells (128 px): its middle is far from the edges
    world = torch.nn.functional.avg_pool2d(torch.randn(1, c, 3 * h, 3 * h), 3, 1, 1)
    speed = 0.3  # cells a frame
    offsets = torch.zeros(1, 6, 2)
    offsets[0, :, 0] = speed * torch.arange(6)
    z = torch.stack([fourier_shift(world, o[None])[..., h:2 * h, h:2 * h] for o in offsets[0]], 1)  # from offset f
    anchored = vae.decode_shown(z, vae.init_shown_state(), offsets % 1.0)[0][0]
    plain = vae.display(z, [None])[0][0]
    down, m = cfg.vae.downsample, 32

    def error(frames):
        moved = fourier_shift(frames[:1].expand(5, -1, -1, -1), down * offsets[0, 1:])
        return float((moved - frames[1:])[..., m:-m, m:-m].abs().mean() / frames.abs().mean())

    # what is left anchored: the picture's content above what a shift of a fraction of a pixel keeps (0.10 here)
    assert error(anchored) < 0.2 and error(plain) > 5 * error(anchored)
