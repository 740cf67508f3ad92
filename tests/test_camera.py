"""Camera conditioning: the warped prior lines the previous frame up with the new view."""

import torch

from model.camera import warp_frame

GRID = 8  # tokens across the view; latents are 2 x 2 per token (patch 2): 16 x 16


def frame(seed=0):
    return torch.randn(1, 4, 2 * GRID, 2 * GRID, generator=torch.Generator().manual_seed(seed))


def cam(x, y, z):
    return torch.tensor([[x, y, z]], dtype=torch.float32)


def test_still_camera_returns_the_frame_and_full_coverage():
    f = frame()
    out = warp_frame(f, cam(3.0, -1.0, 0.5), torch.ones(1), cam(3.0, -1.0, 0.5)[:, None], GRID)
    assert out.shape == (1, 1, 5, 2 * GRID, 2 * GRID)
    assert torch.allclose(out[0, 0, :4], f[0], atol=1e-5)
    assert torch.allclose(out[0, 0, 4], torch.ones(2 * GRID, 2 * GRID))


def test_pan_right_by_one_latent_pixel_moves_content_left():
    """Half a token (one latent pixel) to the right: what was at column j + 1 is now at
    column j, and the new rightmost column is uncovered."""
    f = frame(1)
    pos = torch.stack((cam(0.5, 0.0, 0.0), cam(0.0, 0.5, 0.0)), 1)  # frame 2: one latent px down
    out = warp_frame(f, cam(0.0, 0.0, 0.0), torch.ones(1), pos, GRID)
    assert torch.allclose(out[0, 0, :4, :, :-1], f[0, :, :, 1:], atol=1e-5)
    assert torch.allclose(out[0, 0, 4, :, -1], torch.zeros(2 * GRID))  # new ground
    assert torch.allclose(out[0, 0, 4, :, :-1], torch.ones(2 * GRID, 2 * GRID - 1))
    assert torch.allclose(out[0, 1, :4, :-1], f[0, :, 1:], atol=1e-5)  # down: rows move up


def test_zoom_in_magnifies_about_the_centre():
    """Zooming in by one octave shows the central half of the old view at twice the size:
    a ramp across the view (exact under bilinear sampling) becomes half as steep."""
    n = 2 * GRID
    ramp = (torch.arange(n) + 0.5) / n * 2 - 1  # pixel centres in normalised view units
    f = torch.stack((ramp.expand(n, n), ramp[:, None].expand(n, n)))[None]  # x and y ramps
    out = warp_frame(f, cam(0.0, 0.0, 0.0), torch.ones(1), cam(0.0, 0.0, 1.0)[:, None], GRID)
    assert torch.allclose(out[0, 0, :2], f[0] / 2, atol=1e-5)
    assert torch.allclose(out[0, 0, 2], torch.ones(n, n))  # all of it was seen before


def test_no_previous_frame_gives_an_empty_prior():
    out = warp_frame(frame(3), cam(0.0, 0.0, 0.0), torch.zeros(1), cam(0.2, 0.0, 0.0)[:, None], GRID)
    assert torch.count_nonzero(out) == 0
