"""Stage 2: causal diffusion training of the DiT on world clips (`livereel train dit`).

Flow matching on VAE latents of world clips, through the training path: the whole clip
under the block-causal mask with the sink / pooled memory / window that streaming sees
(clips of `max_frames`, so every relative position streaming uses is trained).

- Per-chunk noise levels (diffusion forcing): each clip draws a share of "context"
  chunks, nearly clean (t < 0.08, the noised context that makes the model tolerate its
  own imperfect past), the rest at the sampler's timesteps.
- Prompt switches train the re-cache regime: the clip is captioned with the prompt in
  force at its end, and frames before the switch are context only (no loss).
- Text and camera-motion dropout (10% each) so classifier-free guidance works.
- The warped prior (`DiTConfig.warp_prior`) comes from the clean clip, lightly noised,
  as streaming gives it the clean last frame of the chunk before; in pixel space
  (`prior_space`, model/prior.py) it is made once for the whole pool (priors.npz).
- The text encoder is made to carry every attribute a caption names (`--text-aux`):
  one linear head per attribute on its pooled embedding, their cross-entropy on the
  parser's labels beside the flow-matching loss, after a short text-only warm-up
  (`--text-warmup`). Trained only through a DiT that never drew the object, the
  encoder had no use for the colour and shape words (a linear probe read them at
  chance), and the DiT could not learn to draw what its text did not carry.
- With `DiTConfig.object_hint` (`--object-hint`) the prior has one more channel: a disk
  where the world's object is, on each clip's first chunk (none on 15% of clips).
- EMA weights, resumable state every 100 steps, loss CSV + PNG, and every
  `--sample-every` steps a free rollout with the KV cache: an MP4 in samples/ and a
  camera probe (commanded vs measured pan, px/frame) in probe.csv.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from model import world
from model.camera import CameraCond
from model.checkpoint import LiveReel, build_model, save_model
from model.config import get_config
from model.generate import decode_batch, flow_schedule, start_from_prior, step_batch
from model.ops import gaussian_blur
from model.prior import decode_frame, first_chunk_hint, object_disk, frame_pictures, warped_prior, with_object_hint
from model.sampling import Sampling
from model.train.common import RUNS, ClipPool, LossLog, cosine_lr, load_state, save_state
from model.train.vae import load_trained_vae
from model.vae import from_uint8

log = logging.getLogger(__name__)

PRIOR_LR_SCALE = 5.0
# the critic (`--adv`) learns at CRITIC_LR_SCALE x the rate: at the DiT's fine-tuning rate
# its spectrally normalised layers took hundreds of steps to score anything apart
CRITIC_LR_SCALE = 10.0
PROBE_PROMPTS = ("a red ball bouncing over the desert by day",
                 "a blue cube drifting across a snowfield at night in the rain")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", help="model preset")
    p.add_argument("--run", type=Path, default=RUNS / "dit", help="run folder (state, logs, samples)")
    p.add_argument("--vae", type=Path, default=RUNS / "vae" / "result",
                   help="the trained VAE: a stage-1 result folder (vae.safetensors + vae.json) or a "
                        "model checkpoint folder (e.g. checkpoints/default)")
    p.add_argument("--steps", type=int, default=4000, help="total optimizer steps")
    p.add_argument("--batch", type=int, default=8, help="clips per step")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--pool", type=int, default=600, help="world clips rendered and encoded")
    p.add_argument("--pool-frames", type=int, default=24, help="frames per pooled clip")
    p.add_argument("--sample-every", type=int, default=500,
                   help="steps between rollout samples (0: none, also not at the end; the eval is the check)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run")
    p.add_argument("--init-from", type=Path, default=None, metavar="RUN",
                   help="start a new run from another run's latest weights (model and EMA), or from a "
                        "model checkpoint folder (e.g. checkpoints/default); parameters the source "
                        "lacks keep their initialisation (e.g. a zero-initialised new input); fresh "
                        "optimizer and schedule")
    p.add_argument("--rollout-share", type=float, default=0.0,
                   help="share of steps trained on the model's own rollouts (0-1): the first chunks of "
                        "each clip are generated by the model as streaming makes them (KV cache, "
                        "the clip's camera and prompt), and the next chunk starts from its warped "
                        "prior as the sampler starts it; the targets stay the world's frames")
    p.add_argument("--object-start", choices=("random", "fixed"), default="random",
                   help="where the world's object is at a training clip's first frame: random (anywhere on its "
                        "path) or fixed (one place per motion: the first chunk from noise learns where to draw it)")
    p.add_argument("--object-weight", type=float, default=0.0,
                   help="extra loss weight on the latent pixels around the world's object (0: none; "
                        "e.g. 10 gives the object, ~2%% of the picture, ~20%% of the loss)")
    p.add_argument("--first-chunk-weight", type=float, default=1.0,
                   help="loss weight of each clip's first chunk (no context, no prior: the regime of a "
                        "stream's first chunk, the only one where the prompt alone must draw the "
                        "picture) against 1 for the others")
    p.add_argument("--switch-weight", type=float, default=1.0,
                   help="loss weight of the first chunk after a clip's prompt switch (the chunk that must "
                        "draw the new prompt while its warped prior still shows the old one: streaming "
                        "kept the old object's colour there) against 1 for the others")
    p.add_argument("--object-fade", type=float, default=0.0, metavar="P",
                   help="share of clips whose warm chunks' prior shows the object faded (blended by a random "
                        "amount toward the prior's mean around it) while the target keeps it: streaming's "
                        "priors carry the model's own, fainter object, and one that was only ever trained "
                        "on crisp objects let a faint one fade out over a few chunks (0: off)")
    p.add_argument("--prior-detail", type=float, default=0.0, metavar="P",
                   help="share of clips whose warm chunks' prior has its fine detail (the latent minus its "
                        "3x3 mean) scaled by a random gain in [0.5, 3] while the target keeps the world's: "
                        "a model that copies the prior's detail and sharpens it a little feeds its own "
                        "sharpened picture back as the next prior, and a meadow grew into stripes within "
                        "~30 frames (0: off)")
    p.add_argument("--prior-blur", type=float, default=0.0, metavar="P",
                   help="share of clips whose warm chunks' prior is blurred (a Gaussian in latent space, "
                        "sigma drawn in [0.5, 2] cells) while the target keeps the world's: streaming's priors "
                        "are the model's own soft pictures, and the shipped model, trained on the world's sharp "
                        "ones, moved a soft prior by about half a slow pan (0.48 of 1 px/frame read; 0.83 with "
                        "the world's picture as the prior) (0: off)")
    p.add_argument("--width", type=_width, default=None, metavar="DIM/HEADS",
                   help="the DiT's width and heads (default: the preset's; the head size must stay the "
                        "preset's); --init-from a narrower run grows it (`widened`: the wide network starts "
                        "as the narrow one)")
    p.add_argument("--switch-share", type=float, default=0.3,
                   help="share of the pool's clips whose prompt changes mid-clip (1-3 attributes; a new "
                        "run's pool only: a run keeps the pool it made)")
    p.add_argument("--prior-picture", choices=("decoded", "shown"), default="decoded",
                   help="which picture of the last frame the warped prior moves (DiTConfig.prior_picture): "
                        "decoded (the frame decoded alone) or shown (the streaming decode's, what the viewer "
                        "saw: a decode less per streamed chunk); the pool's priors are made the same way")
    p.add_argument("--object-hint", action="store_true",
                   help="train (or go on training) a DiT whose warped prior has the object-hint channel "
                        "(DiTConfig.object_hint): a disk where the object is, on each clip's first chunk; "
                        "from a checkpoint without it (--init-from), the new input starts at zero")
    p.add_argument("--hint-shape", action="store_true",
                   help="the object hint is the silhouette of the clip's shape (DiTConfig.hint_shape; a disk "
                        "on a fifth of the clips, as streaming gives a prompt that names no shape); needs "
                        "--object-hint")
    p.add_argument("--first-chunks", type=int, default=0, metavar="N",
                   help="N more clips a step trained on their first chunk alone, from high noise (t in "
                        "[0.55, 1]) with the object hint: where a stream's first chunk decides the object "
                        "(needs --object-hint; 0: off)")
    p.add_argument("--text-aux", type=float, default=0.0, metavar="W",
                   help="weight of the text encoder's auxiliary loss: attribute heads on its pooled "
                        "embedding, cross-entropy on the parser's labels of each caption (0: none; e.g. 0.1)")
    p.add_argument("--text-warmup", type=int, default=0, metavar="N",
                   help="a new run first trains the text encoder alone for N steps on the auxiliary "
                        "loss (64 fresh training captions a step; needs --text-aux)")
    p.add_argument("--adv", type=float, default=0.0, metavar="W",
                   help="weight of an adversarial loss against the blur (0: off): a latent critic "
                        "(`LatentCritic`, conditioned on the prompt) is trained beside the DiT to tell the "
                        "world's frames from the DiT's one-step predictions of them (x0 = x_t - t v) at noise "
                        "levels up to --adv-max-t, where the sampler's outputs are made; the DiT gets W times "
                        "its hinge loss beside the flow-matching loss (ramped in over the first 100 steps). "
                        "The flow-matching loss alone makes the mean over what the frame could show: a blur")
    p.add_argument("--adv-max-t", type=float, default=0.8, metavar="T",
                   help="the highest noise level whose predictions the critic judges (default 0.8)")
    p.add_argument("--guide", type=float, default=0.0, metavar="W",
                   help="weight of a guidance-distillation loss (0: off): a frozen copy of the starting "
                        "weights (--init-from; or --teacher's) evaluates every captioned clip with and without its prompt, "
                        "and the DiT's own prediction is also pulled towards that pair's classifier-free "
                        "guided one at --guide-scale; beside the flow-matching loss the model learns "
                        "guidance (1 + W S) / (1 + W) of its start, at no cost when it streams")
    p.add_argument("--guide-scale", type=float, default=3.0, metavar="S",
                   help="the guidance scale of the --guide loss's targets (default 3)")
    p.add_argument("--teacher", type=Path, default=None, metavar="DIR",
                   help="the --guide loss's frozen teacher: a run or a model checkpoint folder (default: "
                        "the starting weights, --init-from); e.g. go on training a guidance-distilled run "
                        "against the weights it was distilled from")
    p.add_argument("--soft-priors", type=float, default=0.0, metavar="P",
                   help="share of clips whose warm chunks' prior is warped from their picture blurred in "
                        "pixel space (a Gaussian of --soft-sigma px, before the warp and the encode) while the "
                        "target keeps the world's: the pictures a stream keeps are the model's own, as soft "
                        "as sigma ~1 px (4%% of the world's sharpness), and a DiT trained on sharp priors "
                        "copies their softness: it lets a slow pan lag and an object's shape wear (a second "
                        "prior set, made once per run)")
    p.add_argument("--soft-sigma", type=float, nargs=2, default=(0.6, 1.5), metavar=("LO", "HI"),
                   help="the --soft-priors blur's range in px, one sigma per clip (default 0.6 1.5)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", default="cpu",
                   help="where the DiT trains: cpu, cuda or cuda:N (the pool is made on the CPU)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    p.add_argument("--seed", type=int, default=0, help="data order seed")
    p.add_argument("--minutes", type=float, default=None, metavar="M",
                   help="stop after M minutes of optimizer steps in this call (the state saved, the "
                        "result written; --resume goes on along the same --steps schedule): a run "
                        "sized to a lent machine's time")
    p.add_argument("--out", type=Path, default=None,
                   help="also save the final model here (e.g. checkpoints/default)")
    p.add_argument("--export", type=Path, default=None, metavar="DIR",
                   help="only write the EMA model of the run's latest state to DIR, then exit")


class LatentPool:
    """World clips as normalised VAE latents plus camera (token units) and captions."""

    def __init__(self, clips: ClipPool, model: LiveReel, path: Path):
        cfg = model.config
        if path.exists():
            self.latents = torch.from_numpy(np.load(path)["latents"]).float()
        else:
            out = []
            with torch.no_grad():
                for frames in tqdm(clips.frames, desc="encoding clips", unit="clip"):
                    z = model.vae.encode(from_uint8(torch.from_numpy(frames))[None])
                    out.append(model.vae.to_dit(z)[0].half())
            self.latents = torch.stack(out).float()
            np.savez(path, latents=self.latents.half().numpy())
        unit = np.array([cfg.pixels_per_token, cfg.pixels_per_token, 1.0], np.float32)
        self.camera = torch.from_numpy(clips.camera / unit)
        self.velocity = torch.from_numpy(clips.velocity / unit)
        self.captions = clips.captions
        self.objects = torch.from_numpy(clips.objects)  # (N, F, 3) centre x, y and radius, view px
        self.priors: torch.Tensor | None = None
        self.soft_priors: torch.Tensor | None = None

    def build_priors(self, model: LiveReel, path: Path, blur: tuple[float, float] | None = None,
                     seed: int = 0) -> torch.Tensor:
        """Pixel-space priors (model/prior.py) of every frame j as the source of the next
        `chunk_frames` frames: (clips, F - 1, K, C + 1, h, w), so a crop starting anywhere
        finds each chunk's prior (its source: the frame before the chunk), its picture as
        `DiTConfig.prior_picture` says (the frame decoded alone, or the whole clip's
        streaming decode: what a stream shows). Made once into `path`, loaded from it after.
        With `blur` (lo, hi): each clip's pictures blurred first by a Gaussian of sigma drawn
        in [lo, hi] px (from `seed`): the `soft_priors` of `--soft-priors`."""
        if path.exists():
            return torch.from_numpy(np.load(path)["priors"])
        d = model.config.dit
        K, F_ = d.chunk_frames, self.latents.shape[1]
        src = torch.arange(F_ - 1)
        dst = (src[:, None] + 1 + torch.arange(K)).clamp(max=F_ - 1)  # targets past the end: unused
        sigmas = np.random.default_rng(seed).uniform(*blur, len(self.latents)) if blur else None
        out = []
        with torch.no_grad():
            for i, (lat, pos) in enumerate(tqdm(zip(self.latents, self.camera), total=len(self.latents),
                                                desc="soft pixel priors" if blur else "pixel priors", unit="clip")):
                pictures = frame_pictures(model.vae, lat[None], d.prior_picture)[0]
                if sigmas is not None:
                    pictures = gaussian_blur(pictures, torch.full((len(pictures),), float(sigmas[i])),
                                             mode="replicate")
                out.append(warped_prior(model.vae, pictures[src], pos[src], torch.ones(F_ - 1), pos[dst],
                                        d.grid).half())
        priors = torch.stack(out)
        np.savez(path, priors=priors.numpy())
        return priors

    def batch(self, rng: np.random.Generator, batch: int, frames: int, chunk_frames: int,
              soft_share: float = 0.0):
        """A batch of crops: latents, camera, final captions, the mask of frames under the
        final caption, the warm chunks' priors (a `soft_share` of the clips from
        `soft_priors`; no draw at 0: the same data order) and the object's track."""
        n, F_ = self.latents.shape[:2]
        idx = rng.integers(n, size=batch)
        start = rng.integers(F_ - frames + 1, size=batch)
        sl = [slice(s, s + frames) for s in start]
        x = torch.stack([self.latents[i, s] for i, s in zip(idx, sl)])
        pos = torch.stack([self.camera[i, s] for i, s in zip(idx, sl)])
        vel = torch.stack([self.velocity[i, s] for i, s in zip(idx, sl)])
        objects = torch.stack([self.objects[i, s] for i, s in zip(idx, sl)])
        prompts, mask = [], torch.ones(batch, frames)
        for b, (i, s) in enumerate(zip(idx, start)):
            caps = self.captions[i][s:s + frames]
            prompts.append(caps[-1])
            mask[b] = torch.tensor([c == caps[-1] for c in caps], dtype=torch.float32)
        prior = None
        if self.priors is not None:  # chunk c >= 1 of a crop at s: source frame s + c*K - 1
            K = chunk_frames
            prior = torch.zeros(batch, frames, *self.priors.shape[3:])
            soft = (rng.random(batch) < soft_share if soft_share > 0 and self.soft_priors is not None
                    else np.zeros(batch, bool))
            for b, (i, s) in enumerate(zip(idx, start)):
                source = self.soft_priors if soft[b] else self.priors
                for c in range(1, frames // K):
                    prior[b, c * K:(c + 1) * K] = source[i, s + c * K - 1].float()
        return x, CameraCond(pos, vel), prompts, mask, prior, objects


def object_weights(objects: torch.Tensor, latent_size: int, downsample: int, weight: float) -> torch.Tensor:
    """Per-latent-pixel loss weights (B, F, 1, h, w): 1, plus `weight` on the latent pixels
    whose centre lies within 1.3 radii of the object's centre (objects (B, F, 3) in view
    px). The object covers ~2% of the picture; unweighted, the loss barely sees it."""
    centres = (torch.arange(latent_size, dtype=torch.float32, device=objects.device) + 0.5) * downsample
    dy = centres[:, None] - objects[..., 1, None, None]  # (B, F, h, 1)
    dx = centres[None, :] - objects[..., 0, None, None]  # (B, F, 1, w)
    inside = (dx**2 + dy**2) <= (1.3 * objects[..., 2, None, None]) ** 2
    return (1 + weight * inside.float())[:, :, None]


def object_weighted_mse(v: torch.Tensor, target: torch.Tensor, objects: torch.Tensor, latent_size: int,
                        downsample: int, weight: float) -> torch.Tensor:
    """Per-frame mean squared error (B, F) of velocities v against target (B, F, C, h, w),
    weighted `object_weights` toward the object."""
    w = object_weights(objects, latent_size, downsample, weight)
    return (F.mse_loss(v, target, reduction="none").mean(2, keepdim=True) * w).sum((2, 3, 4)) / w.sum((2, 3, 4))


def switch_weights(mask: torch.Tensor, frames_after: int, weight: float) -> torch.Tensor:
    """Loss weights (B, F): `weight` on the first `frames_after` frames under a clip's final
    caption where an earlier one came before (`mask` (B, F) is 0 before the switch, 1
    after), 1 elsewhere."""
    first = mask.argmax(1, keepdim=True)  # the first frame under the final caption
    f = torch.arange(mask.shape[1], device=mask.device)[None]
    near = (f >= first) & (f < first + frames_after) & (mask[:, :1] == 0)
    return torch.where(near, torch.full_like(mask, weight), torch.ones_like(mask))


def fade_objects(z: torch.Tensor, cover: torch.Tensor, objects: torch.Tensor, downsample: int,
                 amount: torch.Tensor) -> torch.Tensor:
    """Priors z (B, F, C, h, w) with the object faded: within 1.25 radii (+ half a latent
    pixel) of where the object is in each frame (`objects` (B, F, 3), view px), blended by
    `amount` (B,) in [0, 1] toward the mean of the prior's covered pixels outside that disk
    (1: the object gone, a flat patch of the surroundings' colour). `cover` (B, F, 1, h, w)
    is the prior's coverage. The target keeps its object: the model learns to draw it back."""
    obj = objects / downsample
    disk = object_disk(obj[..., 0], obj[..., 1], 1.25 * obj[..., 2] + 0.5, z.shape[-1])[:, :, None]
    outside = (1 - disk) * cover
    mean = (z * outside).sum((3, 4), keepdim=True) / outside.sum((3, 4), keepdim=True).clamp(min=1)
    a = amount.to(z.dtype)[:, None, None, None, None] * disk * cover
    return z + a * (mean - z)


def scale_detail(z: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Latents z (B, F, C, h, w) with their fine detail, z minus its 3x3 mean (edges
    repeated), scaled by `gain` (B,): 1 leaves z as it is, 0 leaves the 3x3 mean, 2 doubles
    the detail."""
    flat = z.flatten(0, 2)[:, None]
    mean = F.avg_pool2d(F.pad(flat, (1, 1, 1, 1), mode="replicate"), 3, 1).view_as(z)
    return mean + gain.to(z.dtype)[:, None, None, None, None] * (z - mean)


def first_chunk_loss(model: LiveReel, pool: "LatentPool", rng: np.random.Generator, trng: torch.Generator,
                     n: int, object_weight: float, device: torch.device) -> torch.Tensor:
    """The loss of `n` clips' first chunks alone (no context, no prior: a stream's first
    chunk) from high noise, t in [0.55, 1], with the object hint (the clip's shape with
    `DiTConfig.hint_shape`): where the object's shape is decided, a small share of the
    whole-clip batch's loss."""
    cfg, d = model.config, model.config.dit
    K = d.chunk_frames
    x0, cam, prompts, mask, prior, objects = pool.batch(rng, n, K, K)
    x0, mask, objects = x0.to(device), mask.to(device), objects.to(device)
    shapes = [world.parse_prompt(p).get("shape") for p in prompts] if d.hint_shape else None
    prior = with_object_hint(prior.to(device), first_chunk_hint(objects, d.latent_size, cfg.vae.downsample, K,
                                                                 shapes=shapes))
    t = (0.55 + 0.45 * torch.rand(n, 1, generator=trng)).expand(n, K).to(device)
    noise = torch.randn(x0.shape, generator=trng).to(device)
    tt = t[:, :, None, None, None]
    xt, target = (1 - tt) * x0 + tt * noise, noise - x0
    v = model.dit(xt, t, model.text.encode(prompts), CameraCond(cam.pos.to(device), cam.motion.to(device)),
                  prior=prior).float()
    per_frame = object_weighted_mse(v, target, objects, d.latent_size, cfg.vae.downsample, object_weight)
    return (per_frame * mask).sum() / mask.sum().clamp(min=1)


def guidance_loss(teacher: torch.nn.ModuleDict, v: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                  prompts: list[str], cam: CameraCond, prior: torch.Tensor, objects: torch.Tensor,
                  mask: torch.Tensor, scale: float, object_weight: float, cfg) -> torch.Tensor:
    """The `--guide` loss: the DiT's prediction `v` (B, F, C, h, w) against the frozen
    `teacher`'s classifier-free guided one at `scale`, u + scale (c - u) from its
    evaluations with (c) and without (u) each clip's prompt on the same inputs; the
    object-weighted MSE over the frames of `mask` (B, F), on the clips with a prompt only
    (the others are the unconditional branch, which this loss leaves to the flow matching)."""
    named = [i for i, p in enumerate(prompts) if p]
    if not named:
        return v.new_zeros(())
    n = len(named)
    two = lambda x: x[named].repeat(2, *[1] * (x.dim() - 1))  # noqa: E731  (conditional, unconditional)
    with torch.no_grad():
        text = teacher["text"].encode([prompts[i] for i in named] + [""] * n)
        out = teacher["dit"](two(xt), two(t), text, CameraCond(two(cam.pos), two(cam.motion)), prior=two(prior)).float()
        target = out[n:] + scale * (out[:n] - out[n:])
    per_frame = object_weighted_mse(v[named], target, objects[named], cfg.dit.latent_size, cfg.vae.downsample,
                                    object_weight)
    w = mask[named]
    return (per_frame * w).sum() / w.sum().clamp(min=1e-6)


def sample_t(rng: torch.Generator, batch: int, chunks: int, shift: float = 5.0) -> torch.Tensor:
    """Per-chunk timesteps: a per-clip share of nearly clean context chunks, the rest
    spread like the sampler's shifted schedule."""
    share = torch.rand(batch, 1, generator=rng)
    is_ctx = torch.rand(batch, chunks, generator=rng) < share
    u = torch.rand(batch, chunks, generator=rng)
    noisy = shift * u / (1 + (shift - 1) * u)
    ctx = 0.08 * torch.rand(batch, chunks, generator=rng)
    return torch.where(is_ctx, ctx, noisy)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


@torch.no_grad()
def rollout_probe(model: LiveReel, path: Path, seconds: float = 3.0, pan: float = 0.5) -> dict:
    """A free rollout with the KV cache and the shipped sampler (`Sampling()`): pan right,
    then down; MP4 + measured camera."""
    from model.eval import measure_shift
    from model.sample import write_mp4

    cfg = model.config
    gen = Sampling().generator(model, seed=123)
    n = int(seconds * cfg.fps / cfg.frames_per_chunk)
    frames, commanded = [], []
    for prompt, direction in zip(PROBE_PROMPTS, ((pan, 0.0), (0.0, pan))):
        gen.set_prompt(prompt)
        gen.set_camera(pan=direction)
        for _ in range(n):
            frames.extend(gen.next_frames())
            commanded.extend([np.array(direction) * cfg.image_size / cfg.fps] * cfg.frames_per_chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(frames, path, cfg.fps)
    measured = np.array([measure_shift(a, b) for a, b in zip(frames[:-1], frames[1:])])
    want = np.array(commanded[1:])
    skip = cfg.frames_per_chunk * 2  # after each switch the model needs a moment
    keep = np.ones(len(want), bool)
    keep[:skip] = False
    keep[len(want) // 2: len(want) // 2 + skip] = False
    err = np.abs(measured - want)[keep]
    axis = np.argmax(np.abs(want[keep]), axis=1)
    sign_ok = np.sign(measured[keep][np.arange(len(axis)), axis]) == np.sign(want[keep][np.arange(len(axis)), axis])
    return {"camera_err_px": float(err.mean()), "direction_ok": float(sign_ok.mean()),
            "std": float(np.std(np.stack(frames).astype(np.float32)))}


def binding_probe(model: LiveReel) -> dict:
    """The eval's teacher-forced prompt binding (`model.eval.prompt_binding`) at t = 1:
    the object's colour drawn from the caption by a first chunk alone, and with context
    the share following a changed colour word against the share copying the picture."""
    from model.eval import load_classifier, prompt_binding

    b = prompt_binding(model, load_classifier(), ts=(1.0,))
    return {"colour_first_chunk": b["first_chunk"]["1"]["prompt"],
            "colour_changed_word": b["context"]["1"]["changed"], "colour_copied": b["context"]["1"]["copied"]}


@torch.no_grad()
def rollout_context(model: LiveReel, cam: CameraCond, prompts: list[str], chunks: int, seed: int,
                    sampling: Sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `chunks` chunks of each clip as streaming makes them (the model's own
    rollout: KV cache, the clip's camera path and prompt, `sampling`), with the warped
    prior each was made from, and the warped prior of the chunk after them. Returns
    latents (B, chunks * K, C, h, w) and priors (B, (chunks + 1) * K, C + 1, h, w)."""
    d = model.config.dit
    K, B = d.chunk_frames, len(prompts)
    gens = []
    for b in range(B):
        g = sampling.generator(model, seed=seed + b)
        g.set_prompt(prompts[b])
        g.follow_path(cam.pos[b], cam.motion[b])
        gens.append(g)
    made, priors = [], []
    for _ in range(chunks):
        chunk = step_batch(gens)
        if model.prior_from_shown:  # the next chunk warps the picture shown: decode, as streaming does
            decode_batch(gens, chunk)
        made.append(torch.cat(chunk))  # (B, K, C, h, w)
        priors.append(torch.cat([g.cache.prior[::g.cfg_batch] for g in gens]))  # what it was made from
    latents = torch.cat(made, 1)
    nxt = slice(chunks * K, (chunks + 1) * K)
    last = (torch.cat([g.cache.shown[-1][1] for g in gens]) if model.prior_from_shown
            else decode_frame(model.vae, latents[:, -1]))
    nxt_prior = warped_prior(model.vae, last, cam.pos[:, chunks * K - 1], torch.ones(B), cam.pos[:, nxt], d.grid)
    priors.append(with_object_hint(nxt_prior) if d.object_hint else nxt_prior)
    return latents, torch.cat(priors, 1)


def rollout_batch(model: LiveReel, x0: torch.Tensor, cam: CameraCond, prompts: list[str],
                  t: torch.Tensor, noise: torch.Tensor, prior: torch.Tensor, chunks: int, seed: int,
                  sampling: Sampling) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training clip whose first `chunks` chunks are the model's own (`rollout_context`)
    and whose next chunk starts as the sampler starts it: its warped prior (from the
    generated frame) noised to the warm level s, with the target velocity that lands on the
    world's frame in one Euler step, (x_s - x0) / s. The generated chunks keep the priors
    they were made from; later chunks are teacher-forced. Returns the model input x_t,
    the target velocity, t and the priors (all (B, F, ...)); the inputs are not changed."""
    K = model.config.dit.chunk_frames
    made, made_priors = rollout_context(model, cam, prompts, chunks, seed, sampling)
    ctx, k = slice(0, chunks * K), slice(chunks * K, (chunks + 1) * K)
    prior_k = made_priors[:, k]
    x0 = x0.clone()
    x0[:, ctx] = made
    t = t.clone()
    t[:, k] = s = flow_schedule(sampling.steps)[sampling.warm_start]
    tt = t[:, :, None, None, None]
    xt = (1 - tt) * x0 + tt * noise
    xt[:, k] = start_from_prior(prior_k, noise[:, k], s)
    target = noise - x0
    target[:, k] = (xt[:, k] - x0[:, k]) / s
    prior = prior.clone()
    prior[:, :(chunks + 1) * K] = made_priors
    return xt, target, t, prior


class TextHeads(nn.Module):
    """One linear classifier per attribute (`world.ATTRIBUTES`) on the pooled text
    embedding: the auxiliary loss that makes the encoder carry every word it is given."""

    def __init__(self, dim: int):
        super().__init__()
        self.heads = nn.ModuleDict({a: nn.Linear(dim, len(world.VOCAB[a])) for a in world.ATTRIBUTES})

    def loss(self, pooled: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Mean over attributes of the cross-entropy against the parser's labels (the
        attributes each prompt names; empty prompts and unnamed attributes are skipped)."""
        labels = [world.parse_prompt(p) for p in prompts]
        terms = []
        for a, head in self.heads.items():
            rows = [i for i, lab in enumerate(labels) if a in lab]
            if rows:
                y = torch.tensor([world.VOCAB[a].index(labels[i][a]) for i in rows], device=pooled.device)
                terms.append(F.cross_entropy(head(pooled[rows]), y))
        return torch.stack(terms).mean() if terms else pooled.sum() * 0.0


class LatentCritic(nn.Module):
    """The adversarial stage's discriminator (`--adv`): a small spectrally normalised
    conv net on one latent frame (C, h, w) that scores 4x4 patches of it (h/2 x w/2
    logits), plus a projection on the prompt (the pooled text embedding against its
    pooled features, as a projection discriminator): it tells the world's frames from
    the DiT's one-step predictions of them, and a frame that does not show its prompt
    from one that does. Latent space only: no decode per step."""

    def __init__(self, channels: int, text_dim: int, width: int = 96):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.body = nn.Sequential(
            sn(nn.Conv2d(channels, width, 3, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * width, 2 * width, 3, padding=1)), nn.LeakyReLU(0.2))
        self.patch = sn(nn.Conv2d(2 * width, 1, 1))
        self.text = sn(nn.Linear(text_dim, 2 * width))

    def forward(self, z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Logits (N, h/2 * w/2) for latent frames z (N, C, h, w) under pooled texts (N, D)."""
        h = self.body(z)
        proj = (self.text(text) * h.mean((2, 3))).sum(1, keepdim=True)
        return self.patch(h).flatten(1) + proj


def adversarial_losses(critic: LatentCritic, real: torch.Tensor, fake: torch.Tensor,
                       text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinge losses (critic, generator) on real and predicted latent frames (N, C, h, w)
    under their pooled texts (N, D). The critic's loss sees `fake` detached and the
    generator's does not reach the critic's weights: one backward of their sum trains
    each on its own loss."""
    text = text.detach()
    d_loss = F.relu(1 - critic(real, text)).mean() + F.relu(1 + critic(fake.detach(), text)).mean()
    critic.requires_grad_(False)
    try:
        g_loss = -critic(fake, text).mean()
    finally:
        critic.requires_grad_(True)
    return d_loss, g_loss


def warm_up_text(model: LiveReel, heads: TextHeads, steps: int, seed: int) -> None:
    """The text encoder trained alone on the auxiliary loss, on fresh training captions."""
    rng = np.random.default_rng([seed, 77])
    opt = torch.optim.AdamW(list(model.text.parameters()) + list(heads.parameters()), lr=1e-3)
    bar = tqdm(range(steps), desc="text warm-up")
    for _ in bar:
        caps = [world.training_caption(world.sample_scene(rng), rng) for _ in range(64)]
        loss = heads.loss(model.text.encode(caps).pooled, caps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(aux=f"{loss.item():.3f}")


def _width(text: str) -> tuple[int, int]:
    try:
        dim, heads = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DIM/HEADS, e.g. 256/4 (got {text!r})") from None
    if not (0 < heads <= dim <= 4096 and dim % heads == 0):
        raise argparse.ArgumentTypeError(f"DIM/HEADS needs 0 < HEADS <= DIM <= 4096, DIM a multiple of HEADS "
                                         f"(got {text})")
    return dim, heads


def model_config(args: argparse.Namespace):
    """The preset, with the width, the object hint and the prior's picture as asked."""
    cfg = get_config(args.preset)
    dit = dataclasses.replace(cfg.dit, prior_picture=args.prior_picture)
    if args.width is not None:
        dim, heads = args.width
        if dim // heads != dit.head_dim:
            raise SystemExit(f"--width {dim}/{heads}: heads of {dim // heads} channels, the preset's are "
                             f"{dit.head_dim} (grow the heads' count with the width)")
        dit = dataclasses.replace(dit, dim=dim, heads=heads)
    if args.object_hint:
        dit = dataclasses.replace(dit, object_hint=True, hint_shape=args.hint_shape)
    return dataclasses.replace(cfg, dit=dit)


def train(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    cfg = model_config(args)
    model = build_model(cfg)
    load_trained_vae(model.vae, args.vae)
    model.vae.eval().requires_grad_(False)
    d = cfg.dit
    frames = d.max_frames
    run: Path = args.run
    run.mkdir(parents=True, exist_ok=True)
    if args.guide > 0 and not (d.warp_prior and d.prior_space == "pixel"):
        raise SystemExit("--guide needs a model whose chunks start from a pixel-space warped prior "
                         "(DiTConfig.warp_prior with prior_space 'pixel')")
    clips = ClipPool(args.pool, args.pool_frames, cfg.image_size, cfg.fps, run / "pool.npz",
                     seed_offset=2_000_000, object_start=args.object_start, switch_share=args.switch_share)
    pool = LatentPool(clips, model, run / "latents.npz")
    del clips
    if d.warp_prior and d.prior_space == "pixel":
        name = "priors.npz" if d.prior_picture == "decoded" else f"priors-{d.prior_picture}.npz"
        pool.priors = pool.build_priors(model, run / name)
        if args.soft_priors > 0:  # a run keeps the soft set it made (its sigmas are in its name)
            lo, hi = args.soft_sigma
            pool.soft_priors = pool.build_priors(model, run / f"{name[:-4]}-soft-{lo:g}-{hi:g}.npz",
                                                 blur=(lo, hi), seed=args.seed)
    elif args.rollout_share > 0:
        raise SystemExit("--rollout-share needs a model whose chunks start from a pixel-space warped prior "
                         "(DiTConfig.warp_prior with prior_space 'pixel')")
    device = torch.device(args.device)
    model.to(device)  # batches are drawn (and noise made) on the CPU, then moved: the same run on any device

    trainable = torch.nn.ModuleDict({"text": model.text, "dit": model.dit}).train()
    ema = copy.deepcopy(trainable).eval().requires_grad_(False)
    # the warped-prior input learns at PRIOR_LR_SCALE x the rate: it starts at zero
    named = list(trainable.named_parameters())
    prior = [p for n, p in named if "prior_embed" in n]
    decay_params = [p for n, p in named if p.dim() >= 2 and "prior_embed" not in n]
    other = [p for n, p in named if p.dim() < 2 and "prior_embed" not in n]
    groups = [{"params": decay_params, "weight_decay": 0.01, "lr_scale": 1.0},
              {"params": other, "weight_decay": 0.0, "lr_scale": 1.0}]
    if prior:
        groups.append({"params": prior, "weight_decay": 0.0, "lr_scale": PRIOR_LR_SCALE})
    heads = TextHeads(cfg.text.dim).to(device) if args.text_aux > 0 else None
    if heads is not None:
        groups.append({"params": list(heads.parameters()), "weight_decay": 0.0, "lr_scale": 1.0})
    critic = LatentCritic(d.latent_channels, cfg.text.dim).to(device) if args.adv > 0 else None
    if critic is not None:
        groups.append({"params": list(critic.parameters()), "weight_decay": 0.0, "lr_scale": CRITIC_LR_SCALE})
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99))
    modules = {"model": trainable, "ema": ema, **({"heads": heads} if heads is not None else {}),
               **({"critic": critic} if critic is not None else {})}
    start, hours_before = 0, 0.0
    origin = str(args.init_from) if args.init_from else None  # what the run started from, kept on resume
    teacher_from = str(args.teacher) if args.teacher else None  # --guide's teacher, kept on resume
    if args.resume and (run / "state.json").exists():
        saved = json.loads((run / "state.json").read_text())
        for flag, key, now in (("--object-hint", "object_hint", args.object_hint),
                               ("--hint-shape", "hint_shape", args.hint_shape),
                               ("--text-aux", "text_aux", heads is not None),
                               ("--adv", "adv", critic is not None)):
            if key in saved and bool(saved[key]) != now:  # the networks (or the optimizer's groups) would differ
                raise SystemExit(f"{run} was trained {'with' if saved.get(key) else 'without'} {flag}: "
                                 f"resume it {'with' if saved.get(key) else 'without'} it")
        for flag, key, default, now in (("--prior-picture", "prior_picture", "decoded", args.prior_picture),
                                        ("--switch-share", "switch_share", 0.3, args.switch_share),
                                        ("--width", "width", None, list(args.width) if args.width else None)):
            if saved.get(key, default) != now:  # the pool (its priors, its clips) was made with the run's
                raise SystemExit(f"{run} was trained with {flag} {saved.get(key, default)}: resume it with that")
        meta = load_state(run, modules, opt)
        start, hours_before, origin = meta["step"], meta.get("hours", 0.0), meta.get("init_from")
        saved_teacher = meta.get("teacher")
        if args.teacher is not None and str(args.teacher) != saved_teacher:
            raise SystemExit(f"{run} was trained with --teacher {saved_teacher}: resume it without --teacher "
                             "(the run's is kept), or start another --run")
        teacher_from = saved_teacher
        log.info("resumed %s at step %d", run, start)
    elif (run / "state.json").exists():
        raise SystemExit(f"{run} already holds a run: pass --resume, or another --run")
    else:
        if args.init_from is not None:
            init_from(args.init_from, trainable, ema)
        if args.text_warmup > 0:
            warm_up_text(model, heads, args.text_warmup, args.seed)
            ema["text"].load_state_dict(trainable["text"].state_dict())
    teacher = None
    if args.guide > 0:  # the starting weights, frozen: their guided predictions are the --guide targets
        source = teacher_from or origin
        if source is None:
            raise SystemExit("--guide needs --init-from or --teacher: its targets are those weights' guided "
                             "predictions")
        teacher = copy.deepcopy(trainable).eval().requires_grad_(False)
        init_from(Path(source), copy.deepcopy(teacher), teacher)  # the source's EMA (its exported model)
    (run / "vae.json").write_text(json.dumps({"source": str(args.vae), "latent_shift": cfg.vae.latent_shift,
                                              "latent_scale": cfg.vae.latent_scale}))

    rng = np.random.default_rng(args.seed + start)
    trng = torch.Generator().manual_seed(args.seed + start)
    losses = LossLog(run, ["loss", "lr", "warm_loss", "text_aux", "adv_g", "adv_d"])
    probe_csv = run / "probe.csv"
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="train dit")
    t0 = time.time()
    n_chunks = frames // d.chunk_frames
    sampling = Sampling()  # the rollouts: the shipped sampler
    warm_losses: list[float] = []  # the generated chunk's loss, rollout steps since the last log row
    chunk_weight = torch.ones(1, frames, device=device)
    chunk_weight[:, :d.chunk_frames] = args.first_chunk_weight
    for step in bar:
        x0, cam, prompts, mask, prior, objects = pool.batch(rng, args.batch, frames, d.chunk_frames,
                                                            args.soft_priors)
        x0, mask, objects = x0.to(device), mask.to(device), objects.to(device)
        after_switch = switch_weights(mask, d.chunk_frames, args.switch_weight)
        cam = CameraCond(cam.pos.to(device), cam.motion.to(device))
        # the shape each clip's hint draws (DiTConfig.hint_shape): the caption's; a disk on a fifth
        shapes = ([world.parse_prompt(p).get("shape") if r >= 0.2 else None
                   for p, r in zip(prompts, rng.random(args.batch))] if d.hint_shape else None)
        drop_text = rng.random(args.batch) < 0.1
        prompts = ["" if drop else p for p, drop in zip(prompts, drop_text)]
        path = cam
        drop_cam = torch.from_numpy(rng.random(args.batch) < 0.1)[:, None, None].to(device)
        cam = CameraCond(cam.pos, torch.where(drop_cam, torch.zeros_like(cam.motion), cam.motion))
        t = sample_t(trng, args.batch, n_chunks).repeat_interleave(d.chunk_frames, 1).to(device)
        noise = torch.randn(x0.shape, generator=trng).to(device)
        # priors from the clean clip, lightly noised like context (streaming warps the clean
        # last frame of the chunk before; never this chunk's own frames)
        s = 0.08 * torch.rand(args.batch, 1, 1, 1, 1, generator=trng).to(device)
        rollout = args.rollout_share > 0 and rng.random() < args.rollout_share  # no draw at 0: same data order
        if prior is not None:  # pixel space: made once per pool; noise where the old view covers
            z, cover = prior[:, :, :d.latent_channels].to(device), prior[:, :, -1:].to(device)
            if args.object_fade > 0:  # some clips' priors show a fainter object than the target
                fade = torch.from_numpy(rng.random(args.batch) < args.object_fade).float()
                amount = fade * torch.from_numpy(rng.random(args.batch)).float()
                z = fade_objects(z, cover, objects, cfg.vae.downsample, amount.to(device))
            if args.prior_detail > 0:  # some clips' priors carry too much or too little fine detail
                scaled = torch.from_numpy(rng.random(args.batch) < args.prior_detail)
                gain = torch.where(scaled, torch.from_numpy(rng.uniform(0.5, 3.0, args.batch)), 1.0).float()
                z = scale_detail(z, gain.to(device))
            if args.prior_blur > 0:  # some clips' priors as soft as the model's own pictures
                blurred = torch.from_numpy(rng.random(args.batch) < args.prior_blur)
                sigma = torch.where(blurred, torch.from_numpy(rng.uniform(0.5, 2.0, args.batch)), 0.0).float()
                z = gaussian_blur(z.flatten(1, 2), sigma.to(device), mode="replicate").view_as(z)
            z = ((1 - s) * z + s * torch.randn(z.shape, generator=trng).to(device)) * cover
            prior = torch.cat((z, cover), 2)
            if d.object_hint:  # where the object is, on the first chunk; none on 15% of clips
                keep = torch.from_numpy(rng.random(args.batch) >= 0.15).to(device)
                prior = with_object_hint(prior, first_chunk_hint(objects, d.latent_size, cfg.vae.downsample,
                                                                 d.chunk_frames, keep, shapes))
        if rollout:  # the first chunks are the model's own; the next starts as the sampler starts it
            k = int(rng.integers(1, n_chunks))
            ctx = slice(0, k * d.chunk_frames)
            t[:, ctx] = 0.08 * torch.rand(args.batch, 1, generator=trng).to(device)
            mask[:, ctx] = 0
            trainable.eval()
            xt, target, t, prior = rollout_batch(model, x0, path, prompts, t, noise, prior, k,
                                                 seed=int(rng.integers(2**31)), sampling=sampling)
            trainable.train()
        else:
            tt = t[:, :, None, None, None]
            xt, target = (1 - tt) * x0 + tt * noise, noise - x0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            text = model.text.encode(prompts)
            if prior is None:  # latent space: warped inside the DiT
                prior_source = (1 - s) * x0 + s * torch.randn(x0.shape, generator=trng).to(device)
                v = model.dit(xt, t, text, cam, prior_source=prior_source)
            else:
                v = model.dit(xt, t, text, cam, prior=prior)
        v = v.float()
        per_frame = object_weighted_mse(v, target, objects, d.latent_size, cfg.vae.downsample, args.object_weight)
        mask = mask * chunk_weight * after_switch
        loss = (per_frame * mask).sum() / mask.sum()
        if args.first_chunks:
            loss = loss + first_chunk_loss(model, pool, rng, trng, args.first_chunks, args.object_weight, device)
        if teacher is not None:
            loss = loss + args.guide * guidance_loss(teacher, v, xt, t, prompts, cam, prior, objects, mask,
                                                     args.guide_scale, args.object_weight, model.config)
        aux = None
        if heads is not None:
            named = [i for i, p in enumerate(prompts) if p]
            aux = heads.loss(text.pooled[named].float(), [prompts[i] for i in named])
            loss = loss + args.text_aux * aux
        adv, adv_term = None, 0.0
        if critic is not None:  # the one-step predictions where the sampler makes its outputs, against the world's
            tt = t[:, :, None, None, None]
            judged = ((mask > 0) & (t >= 0.08) & (t <= args.adv_max_t)).nonzero(as_tuple=True)
            if len(judged[0]):
                x0_hat = (xt - tt * v)[judged]
                d_loss, g_loss = adversarial_losses(critic, x0[judged], x0_hat, text.pooled[judged[0]].float())
                adv = (g_loss, d_loss)
                adv_term = args.adv * min(1.0, (step + 1) / 100) * g_loss + d_loss
        if rollout:
            k_frames = slice(k * d.chunk_frames, (k + 1) * d.chunk_frames)
            if mask[:, k_frames].sum() > 0:
                warm_losses.append(float((per_frame.detach()[:, k_frames] * mask[:, k_frames]).sum()
                                         / mask[:, k_frames].sum()))
        lr = cosine_lr(step, args.steps, args.lr, warmup=200)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        opt.zero_grad(set_to_none=True)
        (loss + adv_term).backward()
        torch.nn.utils.clip_grad_norm_(trainable.parameters(), 1.0)
        opt.step()
        update_ema(ema, trainable, min(0.999, (1 + step) / (10 + step)))
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 10 == 0:
            losses.add(step, loss=loss.item(), lr=lr,
                       warm_loss=float(np.mean(warm_losses)) if warm_losses else float("nan"),
                       text_aux=aux.item() if aux is not None else float("nan"),
                       adv_g=adv[0].item() if adv is not None else float("nan"),
                       adv_d=adv[1].item() if adv is not None else float("nan"))
            warm_losses = []
        done = step + 1 == args.steps
        out_of_time = args.minutes is not None and time.time() - t0 >= 60 * args.minutes
        if (step + 1) % 100 == 0 or done or out_of_time:
            save_state(run, modules, opt, step + 1,
                       {"hours": hours_before + (time.time() - t0) / 3600,
                        "init_from": origin, "teacher": teacher_from,
                        "object_hint": args.object_hint, "hint_shape": args.hint_shape,
                        "text_aux": heads is not None,
                        "adv": critic is not None,
                        "prior_picture": args.prior_picture, "switch_share": args.switch_share,
                        "width": list(args.width) if args.width else None})
            losses.plot()
            rate = (time.time() - t0) / (step + 1 - start)
            log.info("step %d/%d loss %.4f, %.2f s/step, %.1f h to go", step + 1, args.steps, loss.item(),
                     rate, rate * (args.steps - step - 1) / 3600)
        if args.sample_every and ((step + 1) % args.sample_every == 0 or done):
            current = ema_model(model, ema)
            probe = {**rollout_probe(current, run / "samples" / f"step{step + 1:06d}.mp4"), **binding_probe(current)}
            row = {"step": step + 1, **{k: f"{v:.4f}" for k, v in probe.items()}}
            # a run resumed from older code keeps its file's columns (newer figures left out)
            header = None
            if probe_csv.exists():
                with probe_csv.open(newline="") as f:
                    header = next(csv.reader(f), None)
            with probe_csv.open("a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=header or list(row), extrasaction="ignore")
                if header is None:
                    w.writeheader()
                w.writerow(row)
            log.info("step %d probe %s", step + 1, probe)
        if out_of_time and not done:
            log.info("--minutes %g: stopped at step %d of %d (--resume goes on)", args.minutes, step + 1,
                     args.steps)
            break
    final = ema_model(model, ema)
    out = save_model(final, run / "result")
    if args.out is not None:
        save_model(final, args.out)
    return out


def init_from(source: Path, trainable: torch.nn.Module, ema: torch.nn.Module) -> None:
    """Weights of another run's latest state (its model and its EMA), or of a model
    checkpoint folder (its text encoder and DiT, for both); only parameters the source
    lacks may be missing (they keep their initialisation), and nothing may be left over.
    A source whose prior input is narrower (no object hint) gets zero columns for the
    new channel: the model starts exactly as the source."""
    from safetensors.torch import load_file

    if (source / "state.safetensors").exists():
        tensors = load_file(source / "state.safetensors")
        prefixes = {"model": "model.", "ema": "ema."}
        where = f"step {json.loads((source / 'state.json').read_text())['step']}"
    elif (source / "model.safetensors").exists():
        tensors = load_file(source / "model.safetensors")
        prefixes = {"model": "", "ema": ""}
        where = "its checkpoint"
    else:
        raise SystemExit(f"--init-from: no run state or model checkpoint in {source}")
    for name, module in (("model", trainable), ("ema", ema)):
        prefix = prefixes[name]
        sd = {k[len(prefix):]: v for k, v in tensors.items()
              if k.startswith(prefix) and not k[len(prefix):].startswith("vae.")}
        expected = module.state_dict()
        for k, v in sd.items():  # a prior input the source lacks (the object hint): new columns at zero
            want = expected.get(k)
            if (k.endswith("prior_embed.weight") and want is not None and v.dim() == 2
                    and v.shape[1] < want.shape[1]):
                sd[k] = torch.cat((v, v.new_zeros(v.shape[0], want.shape[1] - v.shape[1])), 1)
                if name == "model":
                    log.info("--init-from: %s gets %d zero columns (%s inputs -> %s)", k,
                             want.shape[1] - v.shape[1], v.shape[1], want.shape[1])
        grown = widened(sd, expected)  # after the new columns; the same noise for both: the EMA starts as the model
        if name == "model" and grown is not sd:
            narrow, wide = (next(v.shape[0] for k, v in d.items() if k.endswith("patch_embed.weight"))
                            for d in (sd, grown))
            log.info("--init-from: the DiT grown from width %d to %d (each unit copied %dx, noise 0.01)",
                     narrow, wide, wide // narrow)
        sd = grown
        wrong = [k for k, v in sd.items() if k in expected and v.shape != expected[k].shape]
        if wrong or not set(sd) & set(expected):
            raise SystemExit(f"--init-from {source}: not this preset's network ("
                             + (f"shapes differ: {wrong[:3]})" if wrong else "no tensor matches)"))
        result = module.load_state_dict(sd, strict=False)
        if result.unexpected_keys:
            raise SystemExit(f"--init-from {source}: tensors this model does not have: "
                             f"{result.unexpected_keys[:5]}")
        if result.missing_keys:
            log.info("--init-from: new parameters keep their initialisation: %s", result.missing_keys)
    log.info("initialised from %s at %s", source, where)


def widened(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], noise: float = 0.01,
            seed: int = 0) -> dict[str, torch.Tensor]:
    """A narrower DiT's state `sd` grown to the widths of `expected` (another `--width`, the
    same head size and depth) so that the wide network starts computing what the narrow one
    did (function-preserving growth, as Net2Net): every axis of width D (or g x D: the
    qkv, the MLP's hidden units, the adaLN chunks) becomes m copies of itself within each
    group, so the residual stream is the narrow one's tiled m times (LayerNorm keeps tiled
    vectors tiled), new heads repeat old ones, and each weight reading a widened axis
    (a Linear's input) is divided by m, so its sum over the copies is the narrow sum.
    Identical copies would get identical updates for ever: widened weights get Gaussian
    noise of `noise` times their own spread, a small change of the output (tested)."""
    key = "dit.patch_embed.weight" if "dit.patch_embed.weight" in sd else "patch_embed.weight"
    if key not in sd or key not in expected or sd[key].shape == expected[key].shape:
        return sd
    narrow, wide = sd[key].shape[0], expected[key].shape[0]
    if wide % narrow:
        raise SystemExit(f"--init-from: a width-{narrow} DiT grows only to a multiple of {narrow} (not {wide})")
    m = wide // narrow
    gen = torch.Generator().manual_seed(20261206 + seed)
    out = {}
    for k, v in sd.items():
        want = expected.get(k)
        if want is None or want.shape == v.shape or want.dim() != v.dim():
            out[k] = v
            continue
        w = v
        for axis, (a, b) in enumerate(zip(v.shape, want.shape)):
            if a == b:
                continue
            if b != m * a or a % narrow:
                raise SystemExit(f"--init-from: cannot grow {k} {tuple(v.shape)} to {tuple(want.shape)}")
            g = a // narrow  # groups of the narrow width along this axis
            shape = w.shape
            w = w.unflatten(axis, (g, 1, narrow)).repeat_interleave(m, axis + 1).flatten(axis, axis + 2)
            if axis == 1:  # a Linear's input: the copies share what one column read
                w = w / m
            assert w.shape[axis] == m * shape[axis]
        if w.dim() == 2 and noise > 0:
            w = w + torch.randn(w.shape, generator=gen) * (noise * float(v.std()))
        out[k] = w.contiguous()
    return out


def ema_model(model: LiveReel, ema: torch.nn.ModuleDict) -> LiveReel:
    """The model with the EMA text encoder and DiT (a copy; training goes on)."""
    m = LiveReel(model.config)
    m.load_state_dict(model.state_dict())
    m.text.load_state_dict(ema["text"].state_dict())
    m.dit.load_state_dict(ema["dit"].state_dict())
    return m.eval()


def export(args: argparse.Namespace) -> Path:
    """The EMA model of the run's latest saved state, as a checkpoint folder."""
    from safetensors.torch import load_file

    if not (args.run / "state.json").exists():
        raise SystemExit(f"no run state in {args.run}")
    saved = json.loads((args.run / "state.json").read_text())
    if args.width is None and saved.get("width"):  # the run's width unless told
        args = argparse.Namespace(**{**vars(args), "width": tuple(saved["width"])})
    # the network the run trained: its prior's hint channel and picture (flags or not)
    args = argparse.Namespace(**{**vars(args), "object_hint": bool(saved.get("object_hint", args.object_hint)),
                                 "hint_shape": bool(saved.get("hint_shape", args.hint_shape)),
                                 "prior_picture": saved.get("prior_picture", args.prior_picture)})
    cfg = model_config(args)
    model = build_model(cfg)
    load_trained_vae(model.vae, args.vae)
    tensors = load_file(args.run / "state.safetensors")
    ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    model.text.load_state_dict({k[len("text."):]: v for k, v in ema.items() if k.startswith("text.")})
    model.dit.load_state_dict({k[len("dit."):]: v for k, v in ema.items() if k.startswith("dit.")})
    step = json.loads((args.run / "state.json").read_text())["step"]
    log.info("exporting the EMA model of %s at step %d", args.run, step)
    return save_model(model.eval(), args.export)


def main(args: argparse.Namespace) -> int:
    if not 0.0 <= args.rollout_share <= 1.0:
        raise SystemExit(f"--rollout-share must be in [0, 1] (got {args.rollout_share})")
    if not (0.0 <= args.object_weight <= 1000.0):
        raise SystemExit(f"--object-weight must be in [0, 1000] (got {args.object_weight})")
    if not 0.0 <= args.object_fade <= 1.0:
        raise SystemExit(f"--object-fade must be in [0, 1] (got {args.object_fade})")
    if not 0.0 <= args.prior_detail <= 1.0:
        raise SystemExit(f"--prior-detail must be in [0, 1] (got {args.prior_detail})")
    if not 0.0 <= args.prior_blur <= 1.0:
        raise SystemExit(f"--prior-blur must be in [0, 1] (got {args.prior_blur})")
    if not (0.0 < args.first_chunk_weight <= 1000.0):
        raise SystemExit(f"--first-chunk-weight must be in (0, 1000] (got {args.first_chunk_weight})")
    if not (0.0 < args.switch_weight <= 1000.0):
        raise SystemExit(f"--switch-weight must be in (0, 1000] (got {args.switch_weight})")
    if args.sample_every < 0:
        raise SystemExit(f"--sample-every must be >= 0 (got {args.sample_every})")
    if args.minutes is not None and not args.minutes > 0:
        raise SystemExit(f"--minutes must be positive (got {args.minutes})")
    if not 0.0 <= args.switch_share <= 1.0:
        raise SystemExit(f"--switch-share must be in [0, 1] (got {args.switch_share})")
    if not 0.0 <= args.adv <= 100.0:
        raise SystemExit(f"--adv must be in [0, 100] (got {args.adv})")
    if not 0.08 < args.adv_max_t <= 1.0:
        raise SystemExit(f"--adv-max-t must be in (0.08, 1] (got {args.adv_max_t})")
    if not 0.0 <= args.guide <= 100.0:
        raise SystemExit(f"--guide must be in [0, 100] (got {args.guide})")
    if not 1.0 <= args.guide_scale <= 20.0:
        raise SystemExit(f"--guide-scale must be in [1, 20] (got {args.guide_scale})")
    if args.teacher is not None and args.guide <= 0:
        raise SystemExit("--teacher is the --guide loss's: pass --guide W too")
    if not 0.0 <= args.soft_priors <= 1.0:
        raise SystemExit(f"--soft-priors must be in [0, 1] (got {args.soft_priors})")
    lo, hi = args.soft_sigma
    if not 0.0 < lo <= hi <= 8.0:
        raise SystemExit(f"--soft-sigma needs 0 < LO <= HI <= 8 px (got {lo:g} {hi:g})")
    if not 0.0 <= args.text_aux <= 100.0:
        raise SystemExit(f"--text-aux must be in [0, 100] (got {args.text_aux})")
    if args.text_warmup < 0 or (args.text_warmup > 0 and args.text_aux <= 0):
        raise SystemExit("--text-warmup needs a positive --text-aux (the warm-up trains on that loss)"
                         if args.text_warmup > 0 else f"--text-warmup must be >= 0 (got {args.text_warmup})")
    if args.first_chunks and not args.object_hint:
        raise SystemExit("--first-chunks needs --object-hint (they are trained with it)")
    if not 0 <= args.first_chunks <= 1024:
        raise SystemExit(f"--first-chunks must be in [0, 1024] (got {args.first_chunks})")
    if args.hint_shape and not args.object_hint:
        raise SystemExit("--hint-shape needs --object-hint (it shapes that hint)")
    if args.object_hint:
        d = get_config(args.preset).dit
        if not (d.warp_prior and d.prior_space == "pixel"):
            raise SystemExit(f"--object-hint needs a preset whose DiT has a pixel-space warped prior "
                             f"({args.preset!r} has none)")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise SystemExit(f"--device must be cpu, cuda or cuda:N (got {args.device!r})")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: this torch has no CUDA device")
    if args.bf16 and device.type != "cuda":
        raise SystemExit("--bf16 needs --device cuda (bfloat16 is slower than fp32 on this CPU)")
    if args.rollout_share > 0 and device.type != "cpu":
        raise SystemExit("--rollout-share runs on the CPU only (the rollouts use the streaming generator)")
    out = export(args) if args.export is not None else train(args)
    print(f"wrote {out}")
    return 0
