"""The warped prior of a chunk: the last frame before it, moved to where the camera now looks.

`DiTConfig.prior_space` says how the frame is moved:
- "latent": a bilinear warp of the latent frame (`camera.warp_frame`). Cheap, but the
  VAE's latents are not shift-equivariant below a latent pixel (8 view pixels): a 4 px
  pan warped in latent space decodes to a picture that barely moves, so a model fed
  such priors learns to hold the picture still.
- "pixel": decode the frame, warp the RGB picture (exact to a fraction of a view pixel),
  encode it again. One K-frame encode per chunk; the model gets the moved picture and
  refines it, as a video codec predicts from the previous frame.

`DiTConfig.prior_picture` says which picture of the frame is warped (a model streams with
the one it was trained with):
- "decoded": the latent frame decoded alone, with no streaming state (`pixel_prior`):
  one more 1-frame decode a chunk.
- "shown": the picture the viewer was shown, the streaming decode's, which the Generator
  keeps (`KVCache.show`; `warped_prior`): no second decode (7% of a chunk at DiT width
  256 on 2 cores). The two pictures differ by the VAE's temporal mixing; v1, trained on
  "decoded", lost 1 dB of revisit PSNR when streamed with "shown". Where a picture was
  not kept (chunks made with no decode, an old snapshot) the frame is decoded alone.

With `DiTConfig.object_hint` the prior has one more channel (`object_hint`): a soft disk
where the object is to be drawn, on a chunk that starts from nothing (training: where the
world's object is, on each clip's first chunk; streaming: the view's centre, on a
stream's first chunk), zeros elsewhere. The prompt says what to draw; a first chunk from
noise had no place to put it and drew none. With `DiTConfig.hint_shape` the hint is the
silhouette of the shape the prompt names (the parser's; a disk where it names none): the
MSE-trained DiT drew one blob, read as a cube, for every shape word.

The DiT only sees the result (`DiT.begin_chunk(..., prior=)`, `DiT.forward(..., prior=)`);
the VAE work lives here, with the Generator and the trainer that call it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from model.camera import CameraCond, warp_frame
from model.vae import VAE


def decode_frame(vae: VAE, frame: Tensor) -> Tensor:
    """The latent frame `frame` (B, C, h, w, DiT scale) decoded alone, with no streaming
    state: the picture (B, 3, H, W) in [-1, 1]."""
    return vae.decode(vae.from_dit(frame[:, None]))[:, 0].clamp(-1, 1)


def warped_prior(vae: VAE, picture: Tensor, frame_pos: Tensor, valid: Tensor, pos: Tensor,
                 grid: int) -> Tensor:
    """The picture (B, 3, H, W) of the last frame, seen from camera `frame_pos` (B, 3), as
    seen from each camera of `pos` (B, F, 3), warped in pixel space and encoded:
    (B, F, C + 1, h, w), the last channel 1 where the whole latent pixel was covered by the
    old view (0 where the camera uncovered new ground, or everywhere where `valid` (B,) is
    0: then the whole prior is zeros)."""
    B, Fr = pos.shape[:2]
    warped = warp_frame(picture, frame_pos, valid, pos, grid)  # (B, F, 4, H, W)
    z = vae.to_dit(vae.encode(warped[:, :, :3]))  # (B, F, C, h, w)
    down = picture.shape[-1] // z.shape[-1]
    cover = F.avg_pool2d(warped[:, :, 3:].flatten(0, 1), down).view(B, Fr, 1, *z.shape[-2:])
    cover = (cover > 0.999).to(z.dtype)
    return torch.cat((z * cover, cover), 2)


def pixel_prior(vae: VAE, frame: Tensor, frame_pos: Tensor, valid: Tensor, pos: Tensor,
                grid: int) -> Tensor:
    """`warped_prior` of the latent frame `frame` (B, C, h, w, DiT scale) decoded alone
    (`decode_frame`): the training path's, and streaming's where the picture shown is not
    at hand (`LiveReel.begin_chunk`)."""
    return warped_prior(vae, decode_frame(vae, frame), frame_pos, valid, pos, grid)


def frame_pictures(vae: VAE, x: Tensor, picture: str = "decoded") -> Tensor:
    """The pictures (B, F, 3, H, W) in [-1, 1] of a whole clip x (B, F, C, h, w, DiT scale)
    that its priors warp (`DiTConfig.prior_picture`): each frame decoded alone
    (`decode_frame`), or what a stream shows, the streaming decode's (the whole-clip decode
    equals it)."""
    if picture == "shown":
        return vae.decode(vae.from_dit(x)).clamp(-1, 1)
    return decode_frame(vae, x.flatten(0, 1)).unflatten(0, x.shape[:2])


def clip_pixel_prior(vae: VAE, x: Tensor, camera: CameraCond, chunk_frames: int, grid: int,
                     picture: str = "decoded") -> Tensor:
    """The training path's pixel-space priors for a whole clip x (B, F, C, h, w): every
    chunk's from the last frame of the chunk before it (none for the first), as the cache
    keeps it while streaming, its picture as `picture` (`DiTConfig.prior_picture`) says.
    (B, F, C + 1, h, w); the slow reference for tests."""
    B, Fr = x.shape[:2]
    K = chunk_frames
    pictures = frame_pictures(vae, x, picture)
    last = torch.cat((torch.zeros_like(pictures[:, :1]), pictures[:, K - 1:-1:K]), 1)  # (B, n, 3, H, W)
    last_pos = torch.cat((camera.pos[:, :1], camera.pos[:, K - 1:-1:K]), 1)  # (B, n, 3)
    valid = (torch.arange(Fr // K, device=x.device) > 0).to(x.dtype).expand(B, -1)
    out = warped_prior(vae, last.flatten(0, 1), last_pos.flatten(0, 1), valid.flatten(),
                       camera.pos.reshape(B * (Fr // K), K, 3), grid)  # (B*n, K, C+1, h, w)
    return out.view(B, Fr, *out.shape[2:])


def object_disk(cx: Tensor, cy: Tensor, radius: Tensor, size: int) -> Tensor:
    """Soft disks (..., size, size) centred at (cx, cy) with `radius`, all (...) in latent
    pixels: 1 inside, falling to 0 over one latent pixel at the rim."""
    c = torch.arange(size, dtype=cx.dtype, device=cx.device) + 0.5
    dx = c[None, :] - cx[..., None, None]
    dy = c[:, None] - cy[..., None, None]
    return (radius[..., None, None] + 0.5 - (dx**2 + dy**2).sqrt()).clamp(0, 1)


def first_chunk_hint(objects: Tensor, latent_size: int, downsample: int, chunk_frames: int,
                     keep: Tensor | None = None, shapes: Sequence[str | None] | None = None) -> Tensor:
    """The object hint as training gives it, (B, F, h, w): a disk at the world's object
    (`objects` (B, F, 3): centre x, y and radius in view px) on the first chunk, where
    `keep` (B,) is true (all by default), zeros elsewhere (later chunks have a prior that
    carries the object). `shapes` (B,): where one is named, that shape's silhouette in
    place of the disk (`DiTConfig.hint_shape`; `world.object_coverage`)."""
    from model.world import object_coverage

    obj = objects[:, :chunk_frames] / downsample
    hint = torch.zeros(*objects.shape[:2], latent_size, latent_size, device=objects.device)
    hint[:, :chunk_frames] = object_disk(obj[..., 0], obj[..., 1], obj[..., 2], latent_size)
    for b, shape in enumerate(shapes or ()):
        if shape is not None:
            for f in range(chunk_frames):
                cx, cy, r = (float(v) for v in objects[b, f])
                hint[b, f] = object_coverage(shape, cx, cy, r, latent_size, downsample).to(hint.device)
    return hint if keep is None else hint * keep.to(hint.dtype)[:, None, None, None]


def with_object_hint(prior: Tensor, hint: Tensor | None = None) -> Tensor:
    """`prior` (B, F, C + 1, h, w) with the object hint appended as its last channel:
    `hint` (B, F, h, w), or zeros (no hint)."""
    if hint is None:
        return torch.cat((prior, torch.zeros_like(prior[:, :, :1])), 2)
    return torch.cat((prior, hint[:, :, None].to(prior.dtype)), 2)
