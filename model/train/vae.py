"""Stage 1: the causal VAE on world clips (`livereel train vae`).

Random crops of short clips for most steps (the network is convolutional), full frames
at the end; L1 + MSE reconstruction, a small latent penalty, and noise on the latents
now and then so the decoder tolerates the soft latents a diffusion model makes. At the
end the latent scale and shift for the DiT are measured and written into the config.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.checkpoint import build_model, check_state
from model.config import get_config
from model.train.common import RUNS, ClipPool, LossLog, cosine_lr, load_state, save_state
from model.vae import VAE, from_uint8
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", help="model preset whose VAE to train")
    p.add_argument("--run", type=Path, default=RUNS / "vae", help="run folder (state, logs, result)")
    p.add_argument("--steps", type=int, default=3000, help="total optimizer steps")
    p.add_argument("--batch", type=int, default=8, help="clips per step")
    p.add_argument("--frames", type=int, default=4, help="frames per training clip")
    p.add_argument("--crop", type=int, default=64, help="crop side for the first 80%% of steps")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--pool", type=int, default=400, help="world clips rendered for training")
    p.add_argument("--resume", action="store_true", help="continue the run in --run")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="data order seed")


def batch_from_pool(pool: ClipPool, rng: np.random.Generator, batch: int, frames: int,
                    crop: int) -> torch.Tensor:
    n, F_, H = pool.frames.shape[:3]
    out = np.empty((batch, frames, crop, crop, 3), np.uint8)
    for b in range(batch):
        i, f = rng.integers(n), rng.integers(F_ - frames + 1)
        y, x = rng.integers(H - crop + 1, size=2)
        out[b] = pool.frames[i, f:f + frames, y:y + crop, x:x + crop]
    return from_uint8(torch.from_numpy(out))


def train(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    cfg = get_config(args.preset)
    vae = build_model(cfg).vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    run: Path = args.run
    start = 0
    if args.resume and (run / "state.json").exists():
        start = load_state(run, {"vae": vae}, opt)["step"]
        log.info("resumed %s at step %d", run, start)
    elif (run / "state.json").exists():
        raise SystemExit(f"{run} already holds a run: pass --resume, or another --run")
    pool = ClipPool(args.pool, 16, cfg.image_size, cfg.fps, run / "pool.npz")
    rng = np.random.default_rng(args.seed + start)
    losses = LossLog(run, ["loss", "psnr"])
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="train vae")
    for step in bar:
        full = step >= int(0.8 * args.steps)
        crop = cfg.image_size if full else args.crop
        batch = args.batch // 2 if full else args.batch
        x = batch_from_pool(pool, rng, batch, args.frames, crop)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr)
        z = vae.encode(x)
        if rng.random() < 0.5:  # decoder robustness to soft latents
            z = z + 0.1 * z.detach().std() * torch.randn_like(z)
        y = vae.decode(z)
        mse = F.mse_loss(y, x)
        loss = F.l1_loss(y, x) + mse + 1e-4 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        psnr = 10 * torch.log10(4.0 / mse.detach()).item()  # range [-1, 1] -> peak 2
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr:.1f}")
        if step % 25 == 0:
            losses.add(step, loss=loss.item(), psnr=psnr)
        if (step + 1) % 250 == 0 or step + 1 == args.steps:
            save_state(run, {"vae": vae}, opt, step + 1)
            losses.plot()
    vae.eval()
    shift, scale = latent_stats(vae, pool)
    cfg.vae.latent_shift, cfg.vae.latent_scale = shift, scale
    out = run / "result"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(out / "vae.safetensors"))
    report = vae_report(vae, size=cfg.image_size, fps=cfg.fps)
    torch.set_num_threads(args.threads)
    (out / "vae.json").write_text(json.dumps({"latent_shift": shift, "latent_scale": scale,
                                              "preset": args.preset, "steps": args.steps,
                                              "held_out": report}, indent=2))
    log.info("VAE done: latent shift %.4f scale %.4f -> %s", shift, scale, out)
    print(json.dumps(report, indent=2))
    return out


@torch.no_grad()
def latent_stats(vae: VAE, pool: ClipPool, clips: int = 32) -> tuple[float, float]:
    x = from_uint8(torch.from_numpy(pool.frames[:clips, :8]))
    z = torch.cat([vae.encode(x[i:i + 4]) for i in range(0, len(x), 4)])  # the pool may hold fewer
    return float(z.mean()), float(1.0 / z.std())


@torch.no_grad()
def vae_report(vae: VAE, clips: int = 12, frames: int = 32, size: int = 128, fps: int = 16) -> dict:
    """Held-out clips (seeds never trained on): PSNR and SSIM of reconstructions, the motion
    gate (camera shift measured on the reconstruction vs the true one, px/frame), and the
    decode time per frame (one thread and two)."""
    from model.eval import measure_shift, psnr, ssim
    from model.vae import to_uint8
    from model.world import render_clip

    ps, ss, errs, moving = [], [], [], []
    for i in range(clips):
        clip = render_clip(9_000_000 + i, n_frames=frames, size=size, fps=fps)
        x = from_uint8(torch.from_numpy(clip.frames))[None]
        y = to_uint8(vae.decode(vae.encode(x))[0]).numpy()
        ps += [psnr(a, b) for a, b in zip(clip.frames, y)]
        ss += [ssim(a, b) for a, b in zip(clip.frames, y)]
        for f in range(1, frames):
            true = np.array(measure_shift(clip.frames[f - 1], clip.frames[f]))
            rec = np.array(measure_shift(y[f - 1], y[f]))
            if clip.velocity[f, 2] == 0 and np.abs(clip.velocity[f, :2]).sum() > 0:
                errs.append(np.abs(rec - clip.velocity[f, :2]).max())
                moving.append(np.abs(true - clip.velocity[f, :2]).max())
    z = vae.encode(from_uint8(torch.from_numpy(clip.frames))[None])
    timing = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        vae.decode_step(z[:, :2], vae.init_state())
        t0 = time.perf_counter()
        state = vae.init_state()
        for f in range(0, frames, 2):
            _, state = vae.decode_step(z[:, f:f + 2], state)
        timing[f"decode_ms_per_frame_{threads}t"] = 1000 * (time.perf_counter() - t0) / frames
    return {"psnr_db": float(np.mean(ps)), "ssim": float(np.mean(ss)),
            "motion_err_px": float(np.mean(errs)) if errs else float("nan"),
            "motion_err_px_on_ground_truth": float(np.mean(moving)) if moving else float("nan"),
            "motion_frames": len(errs), **timing}


def load_trained_vae(vae: VAE, result: Path) -> None:
    """Load trained VAE weights and latent normalisation into `vae` (and its config), from
    stage 1's result folder (vae.safetensors + vae.json) or from a model checkpoint folder
    (the `vae.*` tensors of model.safetensors, the statistics of config.json)."""
    if (result / "vae.safetensors").exists():
        state = load_file(result / "vae.safetensors")
        stats = json.loads((result / "vae.json").read_text())
    elif (result / "model.safetensors").exists():
        state = {k[len("vae."):]: v for k, v in load_file(result / "model.safetensors").items()
                 if k.startswith("vae.")}
        stats = json.loads((result / "config.json").read_text())["vae"]
    else:
        raise SystemExit(f"no trained VAE at {result}: run `livereel train vae` first, or pass a "
                         "checkpoint folder such as checkpoints/default")
    check_state(vae, state, result)
    vae.load_state_dict(state)
    vae.cfg.latent_shift, vae.cfg.latent_scale = stats["latent_shift"], stats["latent_scale"]


def main(args: argparse.Namespace) -> int:
    t0 = time.time()
    train(args)
    log.info("took %.1f min", (time.time() - t0) / 60)
    return 0
