"""Stage 3: a display decoder sharpened on the DiT's own rollouts (`livereel train decoder`).

The DiT's latents are soft: trained on flow matching, it predicts the mean of what
could be there, and the decoder, trained on the world's sharp latents, draws that mean
as it is (the model card's sharpness row: 2-5% of the world's at full resolution). This
stage fine-tunes a copy of the decoder (or the checkpoint's display decoder, when it
has one), so that what it draws from the DiT's latents looks like the world at the
detail the latents do not fix. It draws the frames shown only (`VAEConfig.display_decoder`):
the picture a stream keeps (the next chunk's warped prior, the spatial memory) is still
the first decoder's, which the DiT learned on; with the sharpened decoder in that loop
too, a 10-minute stream lost its object (the DiT reads detail it never saw in its priors).
The DiT, the encoder, the first decoder and every stream's cache stay as they were.

- Rollouts: streams of the checkpoint under the shipped sampler (`Sampling()`) on random
  world captions, with pans at the eval's speeds, still spells, zooms and prompt
  switches; their latents (DiT scale), the camera commanded, and the first decoder's
  pictures of them, made once per run (rollouts.npz).
- The decoder's loss, per window of consecutive frames (the decoder's temporal state
  warmed on the frames before, as a stream carries it):
  - `--rec` x L1 to the world's frames, decoding the world's own latents (it stays a
    decoder of the encoder's latents);
  - `--keep` x L1 between its picture of a rollout and the first decoder's, both
    average-pooled by `--keep-scale` (the layout and the colours stay; what it adds is
    finer than that);
  - `--adv` x the hinge loss of a critic on pairs of consecutive frames (so detail that
    flickers from frame to frame reads as fake), told the prompt's attributes as a
    projection discriminator (so rain is drawn under a rainy prompt, not under a clear
    one);
  - `--motion` x L1 between the detail it adds to a frame (its picture less the first
    decoder's) and the detail it added to the frame before, moved by the camera's shift
    between them (measured on the first decoder's pictures, whose pans the eval reads at
    ~0.85 of the commanded speed; a Fourier shift, exact below a pixel). Without it the
    added detail snaps to the latent grid under a sub-token pan (8 px per token): it
    stays on the screen a frame, then jumps, and the eval reads the pan slower.
- The critic tells the world's frame pairs from the decoder's pictures of rollouts.
- Resumable state every 100 steps, loss CSV + PNG, and a probe every `--probe-every`
  steps: the sharpness (variance of the Laplacian, as the eval) of held-out rollouts
  decoded whole, over the world's, and the pan speed the eval's estimator reads on its
  pictures over that on the first decoder's (probe.csv, probe.png), and a strip of frames.
- `--init RUN` starts the decoder and the critic from another run's latest state.
- `--export DIR` writes the checkpoint with the run's decoder as its display decoder.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from model import world
from model.checkpoint import LiveReel, load_model, save_model
from model.eval import PAN_SPEEDS_PX, ZOOM_PER_FRAME, measure_shift, sharpness
from model.sampling import Sampling
from model.train.common import RUNS, ClipPool, LossLog, cosine_lr, load_state, save_state, under
from model.vae import from_uint8, to_uint8

log = logging.getLogger(__name__)

WARM_FRAMES = 2  # frames decoded (no grad) before a window, to warm the decoder's state
PROBE_CLIPS = 4  # rollouts held out for the probe


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="default", help="the model whose decoder to sharpen (name or folder)")
    p.add_argument("--run", type=Path, default=RUNS / "decoder", help="run folder (state, logs, rollouts)")
    p.add_argument("--rollouts", type=int, default=60, help="streams of the checkpoint rolled out for training")
    p.add_argument("--rollout-frames", type=int, default=64, help="frames per rollout")
    p.add_argument("--pool", type=int, default=160, help="world clips rendered for the critic and --rec")
    p.add_argument("--pool-frames", type=int, default=16, help="frames per world clip")
    p.add_argument("--steps", type=int, default=2000, help="total optimizer steps")
    p.add_argument("--batch", type=int, default=4, help="windows per step (of rollouts, and of world clips)")
    p.add_argument("--window", type=int, default=4, help="consecutive frames per window")
    p.add_argument("--lr", type=float, default=1e-4, help="the decoder's peak learning rate")
    p.add_argument("--critic-lr", type=float, default=2e-4, help="the critic's learning rate")
    p.add_argument("--adv", type=float, default=0.05, help="weight of the adversarial loss")
    p.add_argument("--adv-world", type=float, default=0.0,
                   help="weight of the adversarial loss on the world's own latents decoded (paired with --rec)")
    p.add_argument("--keep", type=float, default=1.0, help="weight of the pooled L1 to the first decoder's pictures")
    p.add_argument("--keep-scale", type=int, default=4, help="average-pooling factor of --keep")
    p.add_argument("--rec", type=float, default=1.0, help="weight of the L1 reconstruction of world clips")
    p.add_argument("--motion", type=float, default=0.0,
                   help="weight of the L1 between the added detail of a frame and that of the frame before, "
                        "moved by the camera's shift")
    p.add_argument("--init", type=Path, default=None,
                   help="start the decoder and the critic from this run's latest state (a new run)")
    p.add_argument("--adv-start", type=int, default=100, help="steps the critic learns alone first")
    p.add_argument("--probe-every", type=int, default=200, help="steps between probes (0: none)")
    p.add_argument("--minutes", type=float, default=None, help="stop (resumably) after this many minutes")
    p.add_argument("--resume", action="store_true", help="continue the run in --run")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="data order and rollout seed")
    p.add_argument("--export", type=Path, default=None,
                   help="write the run's latest decoder into a copy of --checkpoint at this folder, then exit")


# ---------------------------------------------------------------------------- rollouts
def rollout_plan(rng: np.random.Generator, frames: int, fps: int, segment: int = 16) -> list[dict]:
    """Controls per segment of `segment` frames: a prompt (a new one on a switch), a pan
    at the eval's speeds on one axis (55%), a zoom at the eval's rate (10%), or neither."""
    scene = world.sample_scene(rng)
    plan = []
    for s in range(math.ceil(frames / segment)):
        if s > 0 and rng.random() < 0.35:
            scene = world.change_scene(scene, rng, int(rng.integers(1, 3)))
        u = rng.random()
        pan, zoom = (0.0, 0.0), 0.0
        if u < 0.55:
            v = float(rng.choice(PAN_SPEEDS_PX)) * float(rng.choice([-1, 1])) * fps / world.REF_SIZE
            pan = (v, 0.0) if rng.random() < 0.5 else (0.0, v)
        elif u < 0.65:
            zoom = ZOOM_PER_FRAME * fps * float(rng.choice([-1, 1]))
        plan.append({"prompt": world.caption(scene, rng), "pan": pan, "zoom": zoom,
                     "frames": min(segment, frames - s * segment)})
    return plan


def plan_commands(plan: list[dict], fps: int) -> np.ndarray:
    """A `rollout_plan`'s camera per frame (F, 3): [dx, dy] in view px/frame at the
    reference size, zoom in log2/frame."""
    rows = []
    for seg in plan:
        px = [world.pan_to_px_per_frame(v, world.REF_SIZE, fps) for v in seg["pan"]]
        rows += [[px[0], px[1], seg["zoom"] / fps]] * seg["frames"]
    return np.array(rows, np.float32)


class Rollouts:
    """The checkpoint's streams under the shipped sampler: latents (N, F, C, h, w) in DiT
    scale (float16), the frames shown (N, F, H, W, 3) uint8, the prompt of each frame and
    the camera commanded (N, F, 3) as `plan_commands`; made once, cached on disk as .npz."""

    def __init__(self, model: LiveReel, n: int, frames: int, seed: int, path: Path):
        self.path = path
        self.fps, self.seed = model.config.fps, seed
        if path.exists():
            data = np.load(path, allow_pickle=False)
            if data["latents"].shape[:2] == (n, frames):
                self._set(data)
                return
        k = model.config.dit.chunk_frames
        if frames % k:
            raise SystemExit(f"--rollout-frames must be a multiple of the chunk ({k} frames); got {frames}")
        latents, shown, prompts, commanded = [], [], [], []
        rng = np.random.default_rng([seed, 31])
        with torch.no_grad():
            for i in tqdm(range(n), desc="rolling out the checkpoint", unit="stream"):
                gen = Sampling().generator(model, seed=seed * 100_000 + i)
                zs, ps = [], []
                plan = rollout_plan(rng, frames, model.config.fps)
                commanded.append(plan_commands(plan, model.config.fps))
                for seg in plan:
                    gen.set_prompt(seg["prompt"])
                    gen.set_camera(seg["pan"], seg["zoom"])
                    for _ in range(seg["frames"] // k):
                        z = gen.step()
                        gen.decode(z)  # the stream keeps the picture of it
                        zs.append(z[0].to(torch.float16).numpy())
                        ps += [seg["prompt"]] * k
                latents.append(np.concatenate(zs))
                z = model.vae.from_dit(torch.from_numpy(latents[-1].astype(np.float32))[None])
                shown.append(to_uint8(model.vae.decoder(z, [None])[0][0]).numpy())  # the first decoder's
                prompts.append(json.dumps(ps))
        data = dict(latents=np.stack(latents), frames=np.stack(shown), prompts=np.array(prompts),
                    commanded=np.stack(commanded))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path.with_suffix(".tmp.npz"), **data)
        path.with_suffix(".tmp.npz").replace(path)
        self._set(data)

    def _set(self, data) -> None:
        self.latents = data["latents"]
        self.frames = data["frames"]
        self.prompts = [json.loads(p) for p in data["prompts"]]
        self.commanded = data["commanded"] if "commanded" in data else self._replayed()

    def _replayed(self) -> np.ndarray:
        """The commands of rollouts cached before they were stored: their plans drawn again
        (the plan's draws are its own generator's), checked against the stored prompts."""
        rng = np.random.default_rng([self.seed, 31])
        n, frames = self.latents.shape[:2]
        out = []
        for i in range(n):
            plan = rollout_plan(rng, frames, self.fps)
            if [seg["prompt"] for seg in plan for _ in range(seg["frames"])] != self.prompts[i]:
                raise SystemExit(f"{self.path}: its plans cannot be drawn again (another --seed, or another "
                                 "world): remove it to roll out again")
            out.append(plan_commands(plan, self.fps))
        return np.stack(out)

    def __len__(self) -> int:
        return len(self.latents)

    def shifts(self, path: Path) -> np.ndarray:
        """(N, F, 2): the camera's shift (dx, dy) from frame f-1 to f of each rollout, as the
        eval's `measure_shift` reads it on the first decoder's pictures; 0 where the camera
        was held still, nan at frame 0, under a zoom, or where the estimator finds no peak.
        Cached on disk as .npy."""
        if path.exists():
            out = np.load(path, allow_pickle=False)
            if out.shape == (*self.latents.shape[:2], 2):
                return out
        n, frames = self.latents.shape[:2]
        out = np.full((n, frames, 2), np.nan, np.float32)
        for i in tqdm(range(n), desc="measuring the rollouts' pans", unit="stream"):
            for f in range(1, frames):
                cmd = self.commanded[i, f]
                if cmd[2] != 0:
                    continue
                out[i, f] = (0.0, 0.0) if not cmd[:2].any() else measure_shift(self.frames[i, f - 1], self.frames[i, f])
        np.save(path, out)
        return out


# ---------------------------------------------------------------------------- the critic
ATTRS = tuple(world.ATTRIBUTES)


def attribute_ids(prompt: str) -> list[int]:
    """Per attribute, the index of the value `prompt` names (len(values) where it names none)."""
    named = world.parse_prompt(prompt)
    return [world.VOCAB[a].index(named[a]) if a in named else len(world.VOCAB[a]) for a in ATTRS]


class PairCritic(nn.Module):
    """Scores pairs of consecutive frames (N, 6, H, W) in [-1, 1]: spectrally normalised
    strided convolutions to an H/8 map of patch logits, plus a projection of its pooled
    features on the prompt's attributes (one embedding per attribute value; "unnamed"
    is a value of its own)."""

    def __init__(self, width: int = 32):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        w = width
        self.body = nn.Sequential(
            sn(nn.Conv2d(6, w, 3, 1, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * w, 4 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(4 * w, 4 * w, 4, 2, 1)), nn.LeakyReLU(0.2))
        self.patch = sn(nn.Conv2d(4 * w, 1, 1))
        self.embed = nn.ModuleList([nn.Embedding(len(world.VOCAB[a]) + 1, 4 * w) for a in ATTRS])
        for e in self.embed:
            nn.init.normal_(e.weight, std=0.02)

    def forward(self, pairs: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        """Logits (N, (H/8)^2) for `pairs` (N, 6, H, W) under attribute ids (N, len(ATTRS))."""
        h = self.body(pairs)
        pooled = h.mean((2, 3))
        proj = sum((e(attrs[:, i]) * pooled).sum(1, keepdim=True) for i, e in enumerate(self.embed))
        return self.patch(h).flatten(1) + proj


def frame_pairs(x: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) -> the T-1 pairs of consecutive frames of each, (B*(T-1), 6, H, W)."""
    return torch.cat((x[:, :-1], x[:, 1:]), 2).flatten(0, 1)


# ---------------------------------------------------------------------------- the motion loss
def fourier_shift(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) moved by d (N, 2) = (dx, dy) px as `measure_shift` reads a camera
    move: out(p) = x(p + d), by a phase ramp (band-limited, exact below a pixel; what
    leaves one side wraps in on the other, so a caller masks a border)."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, dtype=x.dtype, device=x.device).view(1, 1, h, 1)
    fx = torch.fft.rfftfreq(w, dtype=x.dtype, device=x.device).view(1, 1, 1, -1)
    phase = 2 * math.pi * (fx * d[:, 0].view(-1, 1, 1, 1) + fy * d[:, 1].view(-1, 1, 1, 1))
    return torch.fft.irfft2(torch.fft.rfft2(x) * torch.polar(torch.ones_like(phase), phase), s=(h, w))


def motion_loss(added: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """added (B, T, 3, H, W): what a decoder adds to the first one's pictures; shifts
    (B, T, 2): the camera's shift onto each frame from the one before (nan: no pair).
    Mean L1 between each frame's added detail and the frame before's moved by the shift,
    inside a border as wide as the largest shift (+1 px); 0 when no pair counts."""
    prev, nxt, d = added[:, :-1].flatten(0, 1), added[:, 1:].flatten(0, 1), shifts[:, 1:].flatten(0, 1)
    ok = torch.isfinite(d).all(1)
    if not bool(ok.any()):
        return added.sum() * 0.0
    prev, nxt, d = prev[ok], nxt[ok], d[ok]
    m = int(math.ceil(float(d.abs().max()))) + 1
    moved = fourier_shift(prev, d)
    return F.l1_loss(moved[..., m:-m, m:-m], nxt[..., m:-m, m:-m])


# ---------------------------------------------------------------------------- training
def decode_window(decoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Raw latents (B, WARM + T, C, h, w) -> frames of the last T (B, T, 3, H, W): the
    first WARM_FRAMES only warm the temporal state (no grad), as a stream's past does."""
    with torch.no_grad():
        _, state = decoder(z[:, :WARM_FRAMES], [None])
    return decoder(z[:, WARM_FRAMES:], state)[0]


def sharpness_probe(decoder: nn.Module, model: LiveReel, rollouts: Rollouts, world_sharp: float,
                    shifts: np.ndarray) -> dict:
    """Held-out rollouts decoded whole (streaming state): their sharpness (the eval's)
    over the world's, and over the first decoder's pictures of the same latents; and the
    pan speed the eval's estimator reads on them over that on the first decoder's (the
    shift along the first decoder's, summed over the panning frames)."""
    vae = model.vae
    ours, first, along, speed = [], [], 0.0, 0.0
    with torch.no_grad():
        for i in range(len(rollouts) - PROBE_CLIPS, len(rollouts)):
            z = vae.from_dit(torch.from_numpy(rollouts.latents[i:i + 1].astype(np.float32)))
            pics = to_uint8(decoder(z, [None])[0][0]).numpy()
            ours.append(sharpness(pics).mean())
            first.append(sharpness(rollouts.frames[i]).mean())
            for f in range(1, len(pics)):
                d = shifts[i, f]
                if np.isfinite(d).all() and np.abs(d).sum() > 0.5:
                    m = np.asarray(measure_shift(pics[f - 1], pics[f]))
                    if np.isfinite(m).all():
                        along += float(m @ d) / float(np.linalg.norm(d))
                        speed += float(np.linalg.norm(d))
    return {"vs_world": float(np.mean(ours) / world_sharp), "first_vs_world": float(np.mean(first) / world_sharp),
            "vs_first": float(np.mean(ours) / np.mean(first)),
            "pan_vs_first": along / speed if speed > 0 else float("nan")}


def probe_strip(decoder: nn.Module, model: LiveReel, rollouts: Rollouts, path: Path, frames: int = 6) -> Path:
    """The first decoder's pictures of a held-out rollout over this one's, as a PNG."""
    from PIL import Image

    i = len(rollouts) - PROBE_CLIPS
    z = model.vae.from_dit(torch.from_numpy(rollouts.latents[i:i + 1].astype(np.float32)))
    with torch.no_grad():
        ours = to_uint8(decoder(z, [None])[0][0]).numpy()
    pick = np.linspace(0, len(ours) - 1, frames).round().astype(int)
    top = np.concatenate(list(rollouts.frames[i][pick]), 1)
    bottom = np.concatenate(list(ours[pick]), 1)
    Image.fromarray(np.concatenate((top, bottom), 0)).save(path)
    return path


def train(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run: Path = args.run
    run.mkdir(parents=True, exist_ok=True)
    model = load_model(args.checkpoint).eval().requires_grad_(False)
    cfg = model.config
    rollouts = Rollouts(model, args.rollouts + PROBE_CLIPS, args.rollout_frames, args.seed, run / "rollouts.npz")
    clips = ClipPool(args.pool, args.pool_frames, cfg.image_size, cfg.fps, run / "world.npz",
                     seed_offset=3_000_000, switch_share=0.3)
    world_sharp = float(np.mean([sharpness(c).mean() for c in clips.frames[:32]]))
    shifts = rollouts.shifts(run / "shifts.npy")
    # the decoder trained: the display decoder, or a copy of the first one (which stays as it is)
    decoder = copy.deepcopy(model.vae.display if model.vae.display is not None else model.vae.decoder)
    decoder.train().requires_grad_(True)
    critic = PairCritic()
    opt_g = torch.optim.Adam(decoder.parameters(), lr=args.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, betas=(0.5, 0.9))
    start, hours_before = 0, 0.0
    if args.resume and (run / "state.json").exists():
        meta = load_state(run, {"decoder": decoder}, opt_g)
        load_state(run / "critic", {"critic": critic}, opt_d)
        start, hours_before = meta["step"], meta.get("hours", 0.0)
        log.info("resumed %s at step %d", run, start)
    elif (run / "state.json").exists():
        raise SystemExit(f"{run} already holds a run: pass --resume, or another --run")
    elif args.init is not None:  # weights only: the optimizers start afresh
        from safetensors.torch import load_file

        for part, module, folder in (("decoder", decoder, args.init), ("critic", critic, args.init / "critic")):
            module.load_state_dict(under(load_file(folder / "state.safetensors"), part))
        log.info("started from the decoder and critic of %s", args.init)
    (run / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))
    losses = LossLog(run, ["rec", "keep", "motion", "adv_g", "critic", "real_minus_fake"])
    probe_path = run / "probe.csv"
    rng = np.random.default_rng([args.seed, start])
    vae, w, ks = model.vae, args.window, args.keep_scale
    n_train = len(rollouts) - PROBE_CLIPS
    t0, deadline = time.time(), (time.time() + 60 * args.minutes if args.minutes else None)
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="decoder", unit="step")
    step = start
    for step in bar:
        for g in opt_g.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=50)
        # a batch of rollout windows and of world windows, each with WARM_FRAMES before
        ci = rng.integers(n_train, size=args.batch)
        fi = rng.integers(WARM_FRAMES, rollouts.latents.shape[1] - w + 1, size=args.batch)
        z_fake = torch.from_numpy(np.stack([rollouts.latents[c, f - WARM_FRAMES:f + w]
                                            for c, f in zip(ci, fi)]).astype(np.float32))
        z_fake = vae.from_dit(z_fake)
        first_pic = from_uint8(torch.from_numpy(np.stack([rollouts.frames[c, f:f + w] for c, f in zip(ci, fi)])))
        fake_attrs = torch.tensor([attribute_ids(rollouts.prompts[c][f + j])
                                   for c, f in zip(ci, fi) for j in range(1, w)])
        wi = rng.integers(len(clips), size=args.batch)
        wf = rng.integers(WARM_FRAMES, clips.frames.shape[1] - w + 1, size=args.batch)
        x_real = from_uint8(torch.from_numpy(np.stack([clips.frames[c, f - WARM_FRAMES:f + w]
                                                       for c, f in zip(wi, wf)])))
        real_attrs = torch.tensor([attribute_ids(clips.captions[c][f + j]) for c, f in zip(wi, wf) for j in range(1, w)])
        with torch.no_grad():
            z_real = vae.encode(x_real)
        x_real = x_real[:, WARM_FRAMES:]

        fake = decode_window(decoder, z_fake)  # (B, w, 3, H, W)
        x_rec = decode_window(decoder, z_real)
        rec = F.l1_loss(x_rec, x_real)
        keep = F.l1_loss(F.avg_pool2d(fake.flatten(0, 1), ks), F.avg_pool2d(first_pic.flatten(0, 1), ks))
        motion = torch.zeros(())
        if args.motion > 0:
            d = torch.from_numpy(np.stack([shifts[c, f:f + w] for c, f in zip(ci, fi)]))
            motion = motion_loss(fake - first_pic, d)
        # the critic: world pairs against the decoder's pairs (detached)
        d_real = critic(frame_pairs(x_real), real_attrs)
        d_fake = critic(frame_pairs(fake.detach()), fake_attrs)
        d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        if args.adv_world > 0:  # the world's latents decoded are fake too
            d_loss = d_loss + F.relu(1 + critic(frame_pairs(x_rec.detach()), real_attrs)).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # the decoder: the critic's hinge loss (its weights frozen) once it has had a head start
        adv, adv_world = (args.adv, args.adv_world) if step >= args.adv_start else (0.0, 0.0)
        g_adv = g_world = torch.zeros(())
        critic.requires_grad_(False)
        if adv > 0:
            g_adv = -critic(frame_pairs(fake), fake_attrs).mean()
        if adv_world > 0:
            g_world = -critic(frame_pairs(x_rec), real_attrs).mean()
        critic.requires_grad_(True)
        loss = args.rec * rec + args.keep * keep + args.motion * motion + adv * g_adv + adv_world * g_world
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt_g.step()
        if step % 10 == 0:  # the figures read back from the tensors every tenth step only
            figures = dict(rec=rec.item(), keep=keep.item(), motion=motion.item(), adv_g=g_adv.item(),
                           critic=d_loss.item(),
                           real_minus_fake=(d_real.mean() - d_fake.mean()).item())
            losses.add(step, **figures)
            bar.set_postfix({k: f"{v:.4f}" for k, v in figures.items()})
        done = step + 1
        last = done == args.steps or (deadline is not None and time.time() > deadline)
        if args.probe_every and (done % args.probe_every == 0 or last):
            decoder.eval()
            probe = sharpness_probe(decoder, model, rollouts, world_sharp, shifts)
            probe_strip(decoder, model, rollouts, run / f"strip-{done:06d}.png")
            decoder.train()
            new = not probe_path.exists()
            with probe_path.open("a", newline="") as f:
                wr = csv.writer(f)
                if new:
                    wr.writerow(["step", *probe])
                wr.writerow([done, *(f"{v:.4f}" for v in probe.values())])
            plot_probe(probe_path)
            log.info("step %d: sharpness %.1f%% of the world's (the first decoder's %.1f%%), pans read at "
                     "%.2f of the first decoder's", done, 100 * probe["vs_world"], 100 * probe["first_vs_world"],
                     probe["pan_vs_first"])
        if done % 100 == 0 or last:
            hours = hours_before + (time.time() - t0) / 3600
            save_state(run, {"decoder": decoder}, opt_g, done, {"hours": hours, "checkpoint": str(args.checkpoint)})
            save_state(run / "critic", {"critic": critic}, opt_d, done)
            losses.plot()
        if last:
            break
    bar.close()
    log.info("stopped at step %d of %d (%s)", step + 1, args.steps, run)
    return run


def plot_probe(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(path.open()))
    steps = [int(r["step"]) for r in rows]
    pans = "pan_vs_first" in rows[0]
    fig, axes = plt.subplots(1, 2 if pans else 1, figsize=(10 if pans else 5, 3), squeeze=False)
    ax = axes[0, 0]
    ax.plot(steps, [100 * float(r["vs_world"]) for r in rows], marker="o", label="this decoder")
    ax.plot(steps, [100 * float(r["first_vs_world"]) for r in rows], ls="--", label="the first decoder")
    ax.set_xlabel("step")
    ax.set_ylabel("sharpness, % of the world's")
    ax.legend()
    if pans:
        ax = axes[0, 1]
        ax.plot(steps, [float(r["pan_vs_first"]) for r in rows], marker="o")
        ax.axhline(1.0, ls="--", c="grey")
        ax.set_xlabel("step")
        ax.set_ylabel("pan speed read, over the first decoder's")
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def export(args: argparse.Namespace) -> Path:
    """The checkpoint with the run's latest decoder as its display decoder, as a checkpoint folder."""
    from safetensors.torch import load_file

    if not (args.run / "state.json").exists():
        raise SystemExit(f"no run state in {args.run}")
    trained_on = json.loads((args.run / "state.json").read_text()).get("checkpoint")
    if trained_on is not None and trained_on != str(args.checkpoint):  # its decoder belongs with that model
        raise SystemExit(f"{args.run} sharpened the decoder of {trained_on}: export it with --checkpoint {trained_on}")
    model = load_model(args.checkpoint).eval()
    tensors = load_file(args.run / "state.safetensors")
    cfg = model.config
    out = LiveReel(dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, display_decoder=True))).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("vae.display.")}
    state.update({"vae.display." + k: v for k, v in under(tensors, "decoder").items()})
    out.load_state_dict(state, strict=True)
    step = json.loads((args.run / "state.json").read_text())["step"]
    log.info("exporting %s with the decoder of %s at step %d as its display decoder", args.checkpoint, args.run,
             step)
    return save_model(out, args.export)


def main(args: argparse.Namespace) -> int:
    for name in ("rollouts", "rollout_frames", "pool", "steps", "batch", "keep_scale", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    if args.pool_frames < WARM_FRAMES + 2 or args.rollout_frames < WARM_FRAMES + 2:
        raise SystemExit(f"--pool-frames and --rollout-frames must be >= {WARM_FRAMES + 2}")
    if not 2 <= args.window <= min(args.pool_frames, args.rollout_frames) - WARM_FRAMES:
        raise SystemExit(f"--window must be in [2, frames - {WARM_FRAMES}] (got {args.window})")
    if args.init is not None and not (args.init / "state.safetensors").exists():
        raise SystemExit(f"--init: no run state in {args.init}")
    for name in ("adv", "adv_world", "keep", "rec", "motion"):
        if not 0.0 <= getattr(args, name) <= 100.0:
            raise SystemExit(f"--{name.replace('_', '-')} must be in [0, 100] (got {getattr(args, name)})")
    if not (args.lr > 0 and args.critic_lr > 0):
        raise SystemExit("--lr and --critic-lr must be positive")
    if args.minutes is not None and not args.minutes > 0:
        raise SystemExit(f"--minutes must be positive (got {args.minutes})")
    if args.probe_every < 0:
        raise SystemExit(f"--probe-every must be >= 0 (got {args.probe_every})")
    if args.export is not None:
        print(export(args))
        return 0
    train(args)
    return 0
