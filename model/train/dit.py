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
- EMA weights, resumable state every 100 steps, loss CSV + PNG, and every
  `--sample-every` steps a free rollout with the KV cache: an MP4 in samples/ and a
  camera probe (commanded vs measured pan, px/frame) in probe.csv.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.camera import CameraCond
from model.checkpoint import LiveReel, build_model, save_model
from model.config import get_config
from model.generate import Generator
from model.prior import pixel_prior
from model.train.common import RUNS, ClipPool, LossLog, cosine_lr, load_state, save_state
from model.train.vae import load_trained_vae
from model.vae import from_uint8

log = logging.getLogger(__name__)

PRIOR_LR_SCALE = 5.0
PROBE_PROMPTS = ("a red ball bouncing over the desert by day",
                 "a blue cube drifting across a snowfield at night in the rain")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", help="model preset")
    p.add_argument("--run", type=Path, default=RUNS / "dit", help="run folder (state, logs, samples)")
    p.add_argument("--vae", type=Path, default=RUNS / "vae" / "result",
                   help="stage-1 result folder (vae.safetensors + vae.json)")
    p.add_argument("--steps", type=int, default=4000, help="total optimizer steps")
    p.add_argument("--batch", type=int, default=8, help="clips per step")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--pool", type=int, default=600, help="world clips rendered and encoded")
    p.add_argument("--pool-frames", type=int, default=24, help="frames per pooled clip")
    p.add_argument("--sample-every", type=int, default=500, help="steps between rollout samples")
    p.add_argument("--resume", action="store_true", help="continue the run in --run")
    p.add_argument("--init-from", type=Path, default=None, metavar="RUN",
                   help="start a new run from another run's latest weights (model and EMA; parameters "
                        "it lacks keep their initialisation, e.g. a zero-initialised new input); "
                        "fresh optimizer and schedule")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="data order seed")
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
        self.priors: torch.Tensor | None = None

    def build_priors(self, model: LiveReel, path: Path) -> None:
        """Pixel-space priors (model/prior.py) of every frame j as the source of the next
        `chunk_frames` frames: (clips, F - 1, K, C + 1, h, w), so a crop starting anywhere
        finds each chunk's prior (its source: the frame before the chunk). Made once."""
        if path.exists():
            self.priors = torch.from_numpy(np.load(path)["priors"])
            return
        d = model.config.dit
        K, F_ = d.chunk_frames, self.latents.shape[1]
        src = torch.arange(F_ - 1)
        dst = (src[:, None] + 1 + torch.arange(K)).clamp(max=F_ - 1)  # targets past the end: unused
        out = []
        with torch.no_grad():
            for lat, pos in tqdm(zip(self.latents, self.camera), total=len(self.latents),
                                 desc="pixel priors", unit="clip"):
                out.append(pixel_prior(model.vae, lat[src], pos[src], torch.ones(F_ - 1), pos[dst], d.grid).half())
        self.priors = torch.stack(out)
        np.savez(path, priors=self.priors.numpy())

    def batch(self, rng: np.random.Generator, batch: int, frames: int, chunk_frames: int):
        n, F_ = self.latents.shape[:2]
        idx = rng.integers(n, size=batch)
        start = rng.integers(F_ - frames + 1, size=batch)
        sl = [slice(s, s + frames) for s in start]
        x = torch.stack([self.latents[i, s] for i, s in zip(idx, sl)])
        pos = torch.stack([self.camera[i, s] for i, s in zip(idx, sl)])
        vel = torch.stack([self.velocity[i, s] for i, s in zip(idx, sl)])
        prompts, mask = [], torch.ones(batch, frames)
        for b, (i, s) in enumerate(zip(idx, start)):
            caps = self.captions[i][s:s + frames]
            prompts.append(caps[-1])
            mask[b] = torch.tensor([c == caps[-1] for c in caps], dtype=torch.float32)
        prior = None
        if self.priors is not None:  # chunk c >= 1 of a crop at s: source frame s + c*K - 1
            K = chunk_frames
            prior = torch.zeros(batch, frames, *self.priors.shape[3:])
            for b, (i, s) in enumerate(zip(idx, start)):
                for c in range(1, frames // K):
                    prior[b, c * K:(c + 1) * K] = self.priors[i, s + c * K - 1].float()
        return x, CameraCond(pos, vel), prompts, mask, prior


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
    """A free rollout with the KV cache: pan right, then down; MP4 + measured camera."""
    from model.eval import measure_shift
    from model.sample import write_mp4

    cfg = model.config
    gen = Generator(model, seed=123, steps=4)
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


def train(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    cfg = get_config(args.preset)
    model = build_model(cfg)
    load_trained_vae(model.vae, args.vae)
    model.vae.eval().requires_grad_(False)
    d = cfg.dit
    frames = d.max_frames
    run: Path = args.run
    run.mkdir(parents=True, exist_ok=True)
    clips = ClipPool(args.pool, args.pool_frames, cfg.image_size, cfg.fps, run / "pool.npz",
                     seed_offset=2_000_000)
    pool = LatentPool(clips, model, run / "latents.npz")
    del clips
    if d.warp_prior and d.prior_space == "pixel":
        pool.build_priors(model, run / "priors.npz")

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
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99))
    start, hours_before = 0, 0.0
    if args.resume and (run / "state.json").exists():
        meta = load_state(run, {"model": trainable, "ema": ema}, opt)
        start, hours_before = meta["step"], meta.get("hours", 0.0)
        log.info("resumed %s at step %d", run, start)
    elif (run / "state.json").exists():
        raise SystemExit(f"{run} already holds a run: pass --resume, or another --run")
    elif args.init_from is not None:
        init_from(args.init_from, trainable, ema)
    (run / "vae.json").write_text((args.vae / "vae.json").read_text())

    rng = np.random.default_rng(args.seed + start)
    trng = torch.Generator().manual_seed(args.seed + start)
    losses = LossLog(run, ["loss", "lr"])
    probe_csv = run / "probe.csv"
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="train dit")
    t0 = time.time()
    for step in bar:
        x0, cam, prompts, mask, prior = pool.batch(rng, args.batch, frames, d.chunk_frames)
        drop_text = rng.random(args.batch) < 0.1
        prompts = ["" if drop else p for p, drop in zip(prompts, drop_text)]
        drop_cam = torch.from_numpy(rng.random(args.batch) < 0.1)[:, None, None]
        cam = CameraCond(cam.pos, torch.where(drop_cam, torch.zeros_like(cam.motion), cam.motion))
        t = sample_t(trng, args.batch, frames // d.chunk_frames).repeat_interleave(d.chunk_frames, 1)
        noise = torch.randn(x0.shape, generator=trng)
        tt = t[:, :, None, None, None]
        xt = (1 - tt) * x0 + tt * noise
        text = model.text.encode(prompts)
        # priors from the clean clip, lightly noised like context (streaming warps the clean
        # last frame of the chunk before; never this chunk's own frames)
        s = 0.08 * torch.rand(args.batch, 1, 1, 1, 1, generator=trng)
        if prior is None:  # latent space: warped inside the DiT
            prior_source = (1 - s) * x0 + s * torch.randn(x0.shape, generator=trng)
            v = model.dit(xt, t, text, cam, prior_source=prior_source)
        else:  # pixel space: made once per pool; noise where the old view covers
            z, cover = prior[:, :, :-1], prior[:, :, -1:]
            z = ((1 - s) * z + s * torch.randn(z.shape, generator=trng)) * cover
            v = model.dit(xt, t, text, cam, prior=torch.cat((z, cover), 2))
        per_frame = F.mse_loss(v, noise - x0, reduction="none").mean(dim=(2, 3, 4))
        loss = (per_frame * mask).sum() / mask.sum()
        lr = cosine_lr(step, args.steps, args.lr, warmup=200)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable.parameters(), 1.0)
        opt.step()
        update_ema(ema, trainable, min(0.999, (1 + step) / (10 + step)))
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 10 == 0:
            losses.add(step, loss=loss.item(), lr=lr)
        done = step + 1 == args.steps
        if (step + 1) % 100 == 0 or done:
            save_state(run, {"model": trainable, "ema": ema}, opt, step + 1,
                       {"hours": hours_before + (time.time() - t0) / 3600,
                        "init_from": str(args.init_from) if args.init_from else None})
            losses.plot()
        if (step + 1) % args.sample_every == 0 or done:
            probe = rollout_probe(ema_model(model, ema), run / "samples" / f"step{step + 1:06d}.mp4")
            new = not probe_csv.exists()
            with probe_csv.open("a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["step", *probe])
                w.writerow([step + 1, *(f"{v:.4f}" for v in probe.values())])
            log.info("step %d probe %s", step + 1, probe)
    final = ema_model(model, ema)
    out = save_model(final, run / "result")
    if args.out is not None:
        save_model(final, args.out)
    return out


def init_from(source: Path, trainable: torch.nn.Module, ema: torch.nn.Module) -> None:
    """Weights of another run's latest state; only parameters the source lacks may be
    missing (they keep their initialisation), and nothing may be left over."""
    from safetensors.torch import load_file

    if not (source / "state.safetensors").exists():
        raise SystemExit(f"--init-from: no run state in {source}")
    tensors = load_file(source / "state.safetensors")
    meta = json.loads((source / "state.json").read_text())
    for name, module in (("model", trainable), ("ema", ema)):
        prefix = f"{name}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        result = module.load_state_dict(sd, strict=False)
        if result.unexpected_keys:
            raise SystemExit(f"--init-from {source}: tensors this model does not have: "
                             f"{result.unexpected_keys[:5]}")
        if result.missing_keys:
            log.info("--init-from: new parameters keep their initialisation: %s", result.missing_keys)
    log.info("initialised from %s at step %d", source, meta["step"])


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
    cfg = get_config(args.preset)
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
    if not (args.vae / "vae.safetensors").exists():
        raise SystemExit(f"no trained VAE at {args.vae}: run `livereel train vae` first")
    out = export(args) if args.export is not None else train(args)
    print(f"wrote {out}")
    return 0
