"""Control-fidelity metrics on the procedural world, and `livereel eval`.

Sections: the attribute classifier (the judge of prompt adherence, trained on
ground-truth world frames), the metrics (pure functions of frames and of what produced
them), the scenario (prompts, switches, camera programs, a pan away and back, a long
drift run) played on either the world's own stream or a model's Generator, and the CLI.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from model import world
from model.engine_choice import add_engine_argument, apply_engine
from model.ops import gaussian_blur
from model.sampling import Sampling, add_sampling_arguments, sampling_from_args

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------
# Attribute classifier
# ---------------------------------------------------------------------------------

CLASSIFIED = ("biome", "time", "weather", "shape", "colour")  # motion needs more than a frame
DEFAULT_CLASSIFIER_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "classifier"
TRAIN_SEED_OFFSET = 10_000_000  # training frames come from default_rng([this, seed]); no clip seed


@dataclass
class ClassifierConfig:
    input_size: int = 64  # the scene is judged at this size; the object's crop at twice it
    widths: tuple[int, ...] = (32, 48, 64, 96)
    vocab: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {a: world.VOCAB[a] for a in CLASSIFIED}
    )


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class AttributeClassifier(nn.Module):
    """A small CNN with one head per attribute, and a second look at the object.

    Input: uint8-range RGB (B, 3, 2S, 2S), S = config.input_size. The scene is judged at
    S (an average-pooled copy); a location head finds the object on the S/8 map, and a
    crop around it at full input resolution decides the shape, which a 64-px view
    leaves at a dozen pixels. Output: {attribute: logits (B, n_values)} and "where"."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        stages = [_conv(3, w[0], 2)]  # (B, w0, S/2, S/2)
        for cin, cout in zip(w[:-1], w[1:]):
            stages.append(_conv(cin, cout, 2))  # halves the resolution each time
        stages[-1] = nn.Sequential(stages[-1], _conv(w[-1], w[-1], 1))
        self.stages = nn.ModuleList(stages)
        self.where = nn.Conv2d(w[2], 1, 1)  # object location logits on the S/8 map
        self.crop = nn.Sequential(_conv(3, w[0], 1), _conv(w[0], w[1], 2), _conv(w[1], w[2], 2), _conv(w[2], w[2], 2))
        pooled = w[1] + w[2] + 2 * w[-1]
        self.heads = nn.ModuleDict({
            a: nn.Linear(pooled + (2 * w[2] if a == "shape" else 0), len(v)) for a, v in config.vocab.items()
        })

    def forward(self, x: torch.Tensor, centre: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x: (B, 3, 2S, 2S); centre: the object's (x, y) in [0, 1] (training), else found.
        Returns {attribute: logits (B, n)} and "where": location logits (B, (S/8)^2)."""
        big = (x / 255.0 - 0.5) / 0.25
        h = F.avg_pool2d(big, 2)  # (B, 3, S, S)
        feats = []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        where = self.where(feats[2]).flatten(1)  # (B, n*n), n = S/8
        attn = where.softmax(1)
        obj = torch.einsum("bn,bcn->bc", attn, feats[2].flatten(2))  # the object's features
        if centre is None:  # expected cell centre under the location distribution
            n = feats[2].shape[-1]
            c = (torch.arange(n, dtype=x.dtype) + 0.5) / n
            gy, gx = torch.meshgrid(c, c, indexing="ij")
            centre = torch.stack([attn @ gx.flatten(), attn @ gy.flatten()], 1)
        crop = self._crop(big, centre)  # (B, 3, K, K) at full input resolution
        c = self.crop(crop)
        crop_feats = torch.cat([c.mean((2, 3)), c.amax((2, 3))], 1)
        # light and texture: mean of the last map; the small object: attention-pooled
        # features, and maxima of a finer map (S/4) and of the last one
        pooled = torch.cat([feats[1].amax((2, 3)), obj, h.mean((2, 3)), h.amax((2, 3))], dim=1)
        out = {a: head(torch.cat([pooled, crop_feats], 1) if a == "shape" else pooled)
               for a, head in self.heads.items()}
        out["where"] = where
        return out

    def _crop(self, img: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """Crops of 3/8 of the view (the object and a margin) around centre (B, 2)."""
        k = 3 * img.shape[-1] // 8
        t = (torch.arange(k, dtype=img.dtype) + 0.5) / img.shape[-1] - k / (2 * img.shape[-1])  # offsets in [0,1] units
        gx = (centre[:, 0, None] + t[None]) * 2 - 1  # (B, K)
        gy = (centre[:, 1, None] + t[None]) * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1)  # (B, K, K, 2)
        return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _to_input(frames: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, H, W, 3) frames -> float (B, 3, size, size), area-resized."""
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float()
    if x.shape[-1] != size or x.shape[-2] != size:
        if x.shape[-1] % size == 0 and x.shape[-2] % size == 0:
            x = F.adaptive_avg_pool2d(x, size)
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def load_classifier(path: str | Path = DEFAULT_CLASSIFIER_DIR) -> AttributeClassifier:
    """The classifier stored in `path` (config.json + classifier.safetensors), in eval mode."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, weights = path / "config.json", path / "classifier.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no classifier in {path} (need config.json and classifier.safetensors)")
    raw = json.loads(cfg_file.read_text())
    config = ClassifierConfig(
        input_size=int(raw["input_size"]),
        widths=tuple(raw["widths"]),
        vocab={a: tuple(v) for a, v in raw["vocab"].items()},
    )
    model = AttributeClassifier(config)
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


@torch.no_grad()
def classify(frames: np.ndarray, classifier: AttributeClassifier, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per-frame predicted attribute values: {attribute: array of value names (F,)}."""
    out: dict[str, list[np.ndarray]] = {a: [] for a in classifier.config.vocab}
    for i in range(0, len(frames), batch_size):
        logits = classifier(_to_input(frames[i : i + batch_size], 2 * classifier.config.input_size))
        for a in out:
            out[a].append(logits[a].argmax(1).numpy())
    return {
        a: np.array(classifier.config.vocab[a], dtype=object)[np.concatenate(v)] if v else np.array([], object)
        for a, v in out.items()
    }


def degrade(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Training augmentation: the softness and noise of generated frames.

    x: (B, 3, H, W) in 0..255. Random Gaussian blur (sigma up to 2 px), down-up
    resampling by 2 or 4, noise, and a small gain jitter (small: time of day is a
    brightness cue)."""
    b, _, s, _ = x.shape
    u = torch.rand(b, 6, generator=gen)
    sigma = torch.where(u[:, 0] < 0.7, u[:, 1] * 2.0 * strength, torch.zeros(b))
    x = gaussian_blur(x, sigma)
    down = u[:, 2] < 0.25
    if down.any():
        f = 4 if float(u[0, 3]) < 0.3 else 2
        small = F.interpolate(x[down], scale_factor=1 / f, mode="bilinear", antialias=True)
        x[down] = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)
    gain = 1 + 0.04 * (torch.rand(b, 3, 1, 1, generator=gen) - 0.5) * strength
    noise = torch.randn(x.shape, generator=gen) * (u[:, 4] * 12 * strength)[:, None, None, None]
    return (x * gain + noise).clamp(0, 255)


def random_frames(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """n independent world frames (random scene, camera position and zoom, time in the
    stream), their labels {attribute: value index (n,)} and the object centres (n, 2) in
    view coordinates [0, 1]: the classifier's training data."""
    scenes = [world.sample_scene(rng) for _ in range(n)]
    s = size / world.REF_SIZE
    zoom = np.where(rng.random(n) < 0.6, 0.0, rng.uniform(-0.8, 1.2, n))
    cams = np.stack([rng.uniform(0, world.TILE * s, n), rng.uniform(0, world.TILE * s, n), zoom], 1)
    order = np.argsort([world.BIOMES.index(sc.biome) for sc in scenes], kind="stable")  # one texture pass per biome
    scenes = [scenes[i] for i in order]
    t = rng.integers(0, 100_000, n)
    motion = world.MotionParams.sample(rng)
    fps = 16
    frames = world.render_frames(scenes, cams, t, motion, size, fps)
    labels = {a: np.array([world.VOCAB[a].index(getattr(sc, a)) for sc in scenes]) for a in CLASSIFIED}
    centres = np.array([world.object_position(sc.motion, motion, np.array([ti / fps]))
                        for sc, ti in zip(scenes, t)])[:, :, 0]
    return frames, labels, centres


def _clip_frames(seeds: Sequence[int], frames_per_clip: int, size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Frames of the clips `seeds` (as `render_clip` makes them) and their labels."""
    frames, labels = [], {a: [] for a in CLASSIFIED}
    for seed in seeds:
        clip = world.render_clip(int(seed), n_frames=frames_per_clip, size=size)
        frames.append(clip.frames)
        for a in CLASSIFIED:
            labels[a] += [world.VOCAB[a].index(getattr(sc, a)) for sc in clip.scenes]
    return np.concatenate(frames), {a: np.array(v) for a, v in labels.items()}


def classifier_accuracy(
    classifier: AttributeClassifier,
    seeds: Sequence[int],
    frames_per_clip: int = 4,
    size: int = world.REF_SIZE,
    blur_sigma: float = 0.0,
    noise: float = 0.0,
) -> dict[str, float]:
    """Accuracy per attribute on frames of the clips `seeds`, optionally blurred (sigma px
    at the rendered size) and noised (std in 0..255)."""
    frames, labels = _clip_frames(seeds, frames_per_clip, size)
    if blur_sigma or noise:
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        x = gaussian_blur(x, torch.full((len(x),), float(blur_sigma)))
        x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        frames = (x.clamp(0, 255) + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pred = classify(frames, classifier)
    acc = {}
    for a in CLASSIFIED:
        truth = np.array(world.VOCAB[a], dtype=object)[labels[a]]
        acc[a] = float(np.mean(pred[a] == truth))
    return acc


def train_classifier(
    out_dir: str | Path,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    config: ClassifierConfig | None = None,
    eval_clips: int = 300,
    progress: bool = True,
) -> dict:
    """Train the attribute classifier on ground-truth world frames (blur + noise
    augmented) and write config.json + classifier.safetensors to out_dir.

    Training frames are independent random world frames (`random_frames`, views of 64
    and 128 px); the accuracy written to config.json is measured on frames of clips
    `render_clip(seed)` for seeds [0, eval_clips), which training never renders.
    Returns the written config (with accuracies)."""
    from safetensors.torch import save_file

    config = config or ClassifierConfig()
    torch.manual_seed(seed)
    model = AttributeClassifier(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([TRAIN_SEED_OFFSET, seed])
    t0, cpu0 = time.time(), time.process_time()
    bar = tqdm(range(steps), desc="classifier", disable=not progress)
    for step in bar:
        frames, labels, centres = random_frames(rng, batch_size, 128 if rng.random() < 0.5 else 64)
        x = degrade(_to_input(frames, 2 * config.input_size), gen)
        jitter = torch.randn(len(centres), 2, generator=gen) * 0.02  # the location head is not exact
        logits = model(x, torch.from_numpy(centres).float() + jitter)
        loss = sum(F.cross_entropy(logits[a], torch.from_numpy(labels[a])) for a in config.vocab)
        cells = config.input_size // 8
        cell = np.clip((centres * cells).astype(np.int64), 0, cells - 1)
        loss = loss + 0.5 * F.cross_entropy(logits["where"], torch.from_numpy(cell[:, 1] * cells + cell[:, 0]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds, train_cpu = time.time() - t0, time.process_time() - cpu0
    model.eval()
    held_out = range(eval_clips)
    acc = {
        "ground_truth_128": classifier_accuracy(model, held_out, size=128),
        "ground_truth_64": classifier_accuracy(model, held_out, size=64),
        "blurred_128_sigma2_noise4": classifier_accuracy(model, held_out, size=128, blur_sigma=2.0, noise=4.0),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "classifier.safetensors"))
    raw = {
        "input_size": config.input_size,
        "widths": list(config.widths),
        "vocab": {a: list(v) for a, v in config.vocab.items()},
        "train": {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "seconds": round(train_seconds, 1),
            "cpu_seconds": round(train_cpu, 1),
            "threads": torch.get_num_threads(),
            "train_frames": f"random_frames(default_rng([{TRAIN_SEED_OFFSET}, {seed}]))",
            "held_out": f"render_clip(seed) for seeds [0, {eval_clips})",
        },
        "accuracy": acc,
    }
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    return raw


# ---------------------------------------------------------------------------------
# Metrics: pure functions of frames (uint8 (F, H, W, 3)) and what produced them
# ---------------------------------------------------------------------------------


CEILING_SEEDS = range(1_000_000, 1_000_040)  # world clips no training or eval stream renders


@torch.no_grad()
def vae_ceiling(vae, classifier: AttributeClassifier, seeds: Sequence[int] = CEILING_SEEDS,
                frames_per_clip: int = 16, size: int = world.REF_SIZE,
                roundtrip: tuple | None = None) -> dict[str, float]:
    """Classifier accuracy per attribute on world clips passed through the VAE (encode,
    decode): what the DiT could reach at best through this autoencoder. When the model's
    adherence to an attribute is far below it, the DiT is what misses it, not the VAE.
    `roundtrip`: `vae_roundtrip`'s result, where it was made already."""
    _, recon, labels = roundtrip or vae_roundtrip(vae, seeds, frames_per_clip, size)
    pred = classify(recon, classifier)
    return {a: float(np.mean(pred[a] == np.array(world.VOCAB[a], dtype=object)[labels[a]])) for a in CLASSIFIED}


@torch.no_grad()
def vae_roundtrip(vae, seeds: Sequence[int] = CEILING_SEEDS, frames_per_clip: int = 16,
                  size: int = world.REF_SIZE) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """World clips of `seeds` (F, H, W, 3) uint8, the same through the VAE (encode, decode),
    and their labels."""
    from model.vae import from_uint8, to_uint8

    frames, labels = _clip_frames(seeds, frames_per_clip, size)
    clips = from_uint8(torch.from_numpy(frames)).view(len(seeds), frames_per_clip, 3, size, size)
    recon = np.concatenate([to_uint8(vae.decode(vae.encode(clip[None])))[0].numpy() for clip in clips])
    return frames, recon, labels


def vae_sharpness(vae, seeds: Sequence[int] = CEILING_SEEDS, frames_per_clip: int = 16,
                  size: int = world.REF_SIZE, roundtrip: tuple | None = None) -> float:
    """Sharpness (`sharpness`, mean over frames) of world clips through the VAE over that
    of the clips themselves: the most of the world's detail a model decoded by this
    autoencoder can show. `roundtrip` as for `vae_ceiling`."""
    frames, recon, _ = roundtrip or vae_roundtrip(vae, seeds, frames_per_clip, size)
    return float(sharpness(recon).mean() / max(sharpness(frames).mean(), 1e-9))


BINDING_SEEDS = range(1_000_100, 1_000_116)  # world clips no training or eval stream renders
BINDING_TS = (0.6, 0.8, 1.0)


@torch.no_grad()
def prompt_binding(model, classifier: AttributeClassifier, seeds: Sequence[int] = BINDING_SEEDS,
                   ts: Sequence[float] = BINDING_TS) -> dict:
    """Teacher-forced: does the DiT take the object's colour from the prompt, or copy it?

    On world clips (still camera) the last chunk is noised to t, the chunks before it
    clean (context, as streaming keeps them); the DiT's one-step prediction of the clean
    chunk (x - t v) is decoded and its object's colour classified, under the clip's own
    caption and under the same caption with only the colour changed. Per t, for the
    whole clip ("context") and for its first chunk alone ("first_chunk": no context, no
    prior, the regime of a stream's first chunk and of a switch without a re-cache):
    `prompt`: share of frames in the caption's colour; `changed`: in the changed colour
    under the changed caption (the prompt obeyed); `copied`: in the picture's colour
    under it (the context copied). A model that binds the prompt keeps `changed` near
    `prompt`; one that copies shows `copied` instead, and draws no object from noise
    (`first_chunk` at t = 1). The training path's forward, so livereel models only."""
    from dataclasses import replace

    from model.camera import CameraCond
    from model.prior import clip_pixel_prior, first_chunk_hint, with_object_hint
    from model.vae import from_uint8, to_uint8

    cfg, d = model.config, model.config.dit
    dev = next(model.parameters()).device  # a training run's model may sit on CUDA
    colours = world.VOCAB["colour"]
    unit = torch.tensor([cfg.pixels_per_token, cfg.pixels_per_token, 1.0])
    gen = torch.Generator().manual_seed(0)
    counts = {(part, t): np.zeros(4) for part in ("context", "first_chunk") for t in ts}  # prompt, changed, copied, n
    for i, seed in enumerate(seeds):
        clip = world.render_clip(seed, n_frames=d.max_frames, size=cfg.image_size, fps=cfg.fps, switch=False,
                                 camera="still")
        scene = clip.scenes[0]
        other = replace(scene, colour=colours[(colours.index(scene.colour) + 1 + i % (len(colours) - 1))
                                              % len(colours)])
        captions = [world.caption(sc, np.random.default_rng([seed, 5]), template=0) for sc in (scene, other)]
        text = model.text.encode(captions)
        x0 = model.vae.to_dit(model.vae.encode(from_uint8(torch.from_numpy(clip.frames).to(dev))[None]))
        cam = CameraCond((torch.from_numpy(clip.camera)[None] / unit).to(dev),
                         (torch.from_numpy(clip.velocity)[None] / unit).to(dev))
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        for part, n in (("context", d.max_frames), ("first_chunk", d.chunk_frames)):
            x, c = x0[:, :n], CameraCond(cam.pos[:, :n], cam.motion[:, :n])
            prior = (clip_pixel_prior(model.vae, x, c, d.chunk_frames, d.grid, d.prior_picture)
                     if d.warp_prior else None)
            if d.object_hint:  # where the world's object is, on the first chunk (as training gives it)
                objects = torch.from_numpy(clip.objects[None, :n]).to(dev)
                prior = with_object_hint(prior, first_chunk_hint(objects, d.latent_size, cfg.vae.downsample,
                                                                 d.chunk_frames,
                                                                 shapes=[scene.shape] if d.hint_shape else None))
            for t in ts:
                tt = torch.zeros(1, n, device=dev)
                tt[:, -d.chunk_frames:] = t
                xt = (1 - tt[..., None, None, None]) * x + tt[..., None, None, None] * noise[:, :n]
                both = lambda z: z.expand(2, *z.shape[1:])  # noqa: E731 (true and changed caption)
                v = model.dit(both(xt), both(tt), text, CameraCond(both(c.pos), both(c.motion)),
                              prior=None if prior is None else both(prior))
                pred = (both(xt) - both(tt)[..., None, None, None] * v)[:, -d.chunk_frames:]
                frames = to_uint8(model.vae.decode(model.vae.from_dit(pred))).cpu().numpy()  # (2, K, H, W, 3)
                got = classify(frames.reshape(-1, *frames.shape[2:]), classifier)["colour"].reshape(2, -1)
                counts[part, t] += [(got[0] == scene.colour).sum(), (got[1] == other.colour).sum(),
                                    (got[1] == scene.colour).sum(), got.shape[1]]
    return {part: {f"{t:g}": {k: float(v / counts[part, t][3]) for k, v in
                              zip(("prompt", "changed", "copied"), counts[part, t][:3])} for t in ts}
            for part in ("context", "first_chunk")}


def _gray(frames: np.ndarray) -> np.ndarray:
    """Luma in 0..255, float64 (..., H, W)."""
    f = np.asarray(frames, np.float64)
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


def _per_frame_prompts(prompts: str | Sequence[str], n: int) -> list[str]:
    if isinstance(prompts, str):
        return [prompts] * n
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} frames")
    return list(prompts)


def attribute_matches(labels: dict[str, np.ndarray], prompts: str | Sequence[str]) -> dict[str, np.ndarray]:
    """Per classified attribute, per frame: 1.0 where the predicted value equals the one
    the frame's prompt names, 0.0 where it differs, nan where the prompt names none."""
    n = len(next(iter(labels.values())))
    per_frame = _per_frame_prompts(prompts, n)
    parsed = {p: world.parse_prompt(p) for p in dict.fromkeys(per_frame)}
    out = {}
    for a, pred in labels.items():
        want = np.array([parsed[p].get(a) for p in per_frame], dtype=object)
        named = want != None  # noqa: E711 (elementwise)
        out[a] = np.where(named, (pred == want).astype(np.float64), np.nan)
    return out


def prompt_adherence(labels: dict[str, np.ndarray], prompts: str | Sequence[str]) -> dict:
    """Share of frames whose classified attributes match the prompt in force.

    labels: `classify(frames, classifier)`; prompts: one prompt or one per frame.
    Returns per-attribute shares (over frames whose prompt names the attribute), `all`
    (share of frames where every named attribute matches), `mean` (of the attributes) and
    `misread` (per attribute, the value most often read in its place and its share of the
    frames that name the attribute: a model that draws one object for every shape word
    shows it here)."""
    m = attribute_matches(labels, prompts)
    per = {a: float(np.nanmean(v)) for a, v in m.items() if np.isfinite(v).any()}
    misread = {}
    for a, v in m.items():
        wrong = np.asarray(labels[a], dtype=object)[v == 0.0]
        if len(wrong):
            values, counts = np.unique(wrong.astype(str), return_counts=True)
            misread[a] = {"as": str(values[counts.argmax()]), "share": float(counts.max() / np.isfinite(v).sum())}
    stacked = np.stack(list(m.values()), 1)  # (F, A)
    any_named = np.isfinite(stacked).any(1)
    all_ok = np.all(np.where(np.isfinite(stacked), stacked, 1.0) == 1.0, axis=1)
    return {
        "per_attribute": per,
        "all": float(all_ok[any_named].mean()) if any_named.any() else float("nan"),
        "mean": float(np.mean(list(per.values()))) if per else float("nan"),
        "misread": misread,
    }


def switch_latency(labels: dict[str, np.ndarray], switch_frame: int, new_prompt: str,
                   old_prompt: str | None = None, stable: int = 3) -> int | None:
    """Frames from a prompt switch until the classifier follows the new prompt for
    `stable` consecutive frames; None if it never does.

    The attributes checked are those the new prompt names and the classifier judges,
    less those the old prompt already named with the same value (if any are left)."""
    new = {a: v for a, v in world.parse_prompt(new_prompt).items() if a in labels}
    old = world.parse_prompt(old_prompt) if old_prompt else {}
    changed = {a: v for a, v in new.items() if old.get(a) != v} or new
    if not changed:
        return None
    ok = np.ones(len(next(iter(labels.values()))), bool)
    for a, v in changed.items():
        ok &= labels[a] == v
    run = 0
    for f in range(switch_frame, len(ok)):
        run = run + 1 if ok[f] else 0
        if run == stable:
            return f - stable + 1 - switch_frame
    return None


def frame_differences(frames: np.ndarray) -> np.ndarray:
    """Mean absolute difference (0..255) between consecutive frames, (F-1,)."""
    f = np.asarray(frames, np.int16)
    return np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))


def transition_smoothness(frames: np.ndarray, switch_frame: int, radius: int = 8) -> float:
    """The largest consecutive-frame difference within `radius` frames of a switch,
    over the median difference elsewhere (1 = no jump; a hard cut is far above 1)."""
    d = frame_differences(frames)  # d[i]: frame i -> i+1
    lo, hi = max(switch_frame - radius, 0), min(switch_frame + radius, len(d))
    near = d[lo:hi]
    rest = np.concatenate([d[:lo], d[hi:]])
    if len(near) == 0:
        return float("nan")
    base = float(np.median(rest if len(rest) else d))
    return float(near.max() / max(base, 1e-6))


def bad_frames(frames: np.ndarray, black_level: float = 10.0, noise_corr: float = 0.2) -> dict:
    """Black frames (mean and spread of luma near 0) and noise frames (neighbouring
    pixels uncorrelated, where world and sound generated frames are smooth)."""
    g = _gray(frames)
    mean, std = g.mean((1, 2)), g.std((1, 2))
    c = g - mean[:, None, None]
    corr = (c[:, :, 1:] * c[:, :, :-1]).mean((1, 2)) / np.maximum(c.var((1, 2)), 1e-6)
    black = np.nonzero((mean < black_level) & (std < black_level / 2))[0]
    noise = np.nonzero((corr < noise_corr) & (std >= black_level / 2))[0]
    return {"black": int(len(black)), "noise": int(len(noise)), "frames": len(frames),
            "black_frames": black.tolist(), "noise_frames": noise.tolist()}


def _upsampled_correlation(r: np.ndarray, centre: np.ndarray, up: int, half: float) -> np.ndarray:
    """Inverse DFT of r (H, W) on a fine grid (step 1/up, +-half px) around `centre`
    (matrix DFT, as in Guizar-Sicairos et al. 2008)."""
    h, w = r.shape
    offs = np.arange(-half, half + 1e-9, 1.0 / up)
    ky, kx = np.fft.fftfreq(h), np.fft.fftfreq(w)
    ey = np.exp(2j * np.pi * (centre[0] + offs)[:, None] * ky[None, :])  # (n, H)
    ex = np.exp(2j * np.pi * (centre[1] + offs)[:, None] * kx[None, :])  # (n, W)
    return (ey @ r @ ex.T).real


def _cross_power(ga: np.ndarray, gb: np.ndarray, lowpass: float) -> np.ndarray:
    """Windowed, whitened cross-power spectrum of two lumas, weighted towards low
    frequencies (Gaussian, `lowpass` cycles/px): whitening alone lets the sharp edges
    of a small object outvote the background; the weight also steadies subpixel peaks."""
    h, w = ga.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    fa = np.fft.fft2((ga - ga.mean()) * win)
    fb = np.fft.fft2((gb - gb.mean()) * win)
    r = fa * np.conj(fb)  # peaks at +d for b(x) = a(x + d)
    r /= np.abs(r) + 1e-9
    ky, kx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    return r * np.exp(-(kx**2 + ky**2) / (2 * lowpass**2))


def _peak(r: np.ndarray, max_shift: float) -> np.ndarray | None:
    """Integer (dy, dx) of the highest local maximum of the correlation strictly inside
    +-max_shift; None if there is none. A local maximum, not the window's maximum: the
    tail of a faster motion (falling rain) rises towards the window's edge."""
    corr = np.fft.fftshift(np.fft.ifft2(r).real)
    c = np.array(corr.shape) // 2
    m = int(max_shift)
    sub = corr[c[0] - m - 1 : c[0] + m + 2, c[1] - m - 1 : c[1] + m + 2]
    inner = sub[1:-1, 1:-1]
    neighbours = np.max(np.stack([sub[1 + dy : sub.shape[0] - 1 + dy, 1 + dx : sub.shape[1] - 1 + dx]
                                  for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]), axis=0)
    local = np.where(inner >= neighbours, inner, -np.inf)
    local[[0, -1], :] = -np.inf
    local[:, [0, -1]] = -np.inf
    if not np.isfinite(local).any():
        return None
    py, px = np.unravel_index(np.argmax(local), local.shape)
    return np.array([py - m, px - m], np.float64)


def _refine(r: np.ndarray, peak: np.ndarray, upsample: int) -> np.ndarray:
    """The correlation maximum within 1.5 px of `peak`, to 1/upsample px: a coarse pass
    at 1/4 px, then a fine one around its best."""
    best = np.asarray(peak, np.float64)
    for step, half in ((0.25, 1.5), (1.0 / upsample, 0.3)):
        fine = _upsampled_correlation(r, best, int(round(1 / step)), half)
        iy, ix = np.unravel_index(np.argmax(fine), fine.shape)
        offs = np.arange(-half, half + 1e-9, step)
        best = best + [offs[iy], offs[ix]]
    return best


def _thin_removed(g: np.ndarray, size: int = 5) -> np.ndarray:
    """A grey image without its features thinner than `size` px, bright or dark (a grey
    opening, then a closing)."""
    return ndimage.grey_closing(ndimage.grey_opening(g, size=(size, size)), size=(size, size))


def measure_shift(a: np.ndarray, b: np.ndarray, max_shift: float | None = None,
                  upsample: int = 20, lowpass: float = 0.12) -> tuple[float, float]:
    """Camera motion (dx, dy) in view px from frame a to frame b (b's content is a's
    moved by -d: b(x) = a(x + d)), by phase correlation. Frames: (H, W, 3) or (H, W).

    Robust to what moves on its own (the object in view, falling weather): both frames are
    first cleaned of thin features by a grey opening and closing (5 px: rain streaks and
    snowflakes, which fall across the view; on the world's ground truth this took the pan
    error from 1.23 to 0.54 px/frame and the direction from 88% to 94%, for sub-pixel
    shifts off by up to 0.2 px on clean textures, 0.1 before); a first estimate
    is the median over 3x3 overlapping half-size tiles of each tile's highest
    correlation peak within +-max_shift (default 7% of the width); then the pixels that
    do not follow it (worst quarter of the residual, widened) are masked out in both
    frames and the whole frame refines it to 1/upsample px. (nan, nan) if no tile has a
    peak in the window."""
    ga = _thin_removed(_gray(a) if np.ndim(a) == 3 else np.asarray(a, np.float64))
    gb = _thin_removed(_gray(b) if np.ndim(b) == 3 else np.asarray(b, np.float64))
    h, w = ga.shape
    max_shift = max(3.0, 0.07 * w) if max_shift is None else max_shift
    th, tw = h // 2, w // 2
    votes = []
    for y in range(0, h - th + 1, th // 2):
        for x in range(0, w - tw + 1, tw // 2):
            r = _cross_power(ga[y : y + th, x : x + tw], gb[y : y + th, x : x + tw], lowpass)
            p = _peak(r, min(max_shift, th // 2 - 1))
            if p is not None:  # to 1/4 px
                fine = _upsampled_correlation(r, p, 4, 1.0)
                iy, ix = np.unravel_index(np.argmax(fine), fine.shape)
                votes.append(p + (np.array([iy, ix]) - 4) / 4.0)
    if not votes:
        return float("nan"), float("nan")
    d = np.median(np.array(votes), axis=0)  # (dy, dx)
    # mask what does not move with the background, in each frame's own coordinates
    aligned = ndimage.shift(gb, d, order=1, mode="nearest")  # aligned(x) = b(x - d) ~ a(x)
    residual = ndimage.uniform_filter(np.abs(ga - aligned), 3)
    keep_a = ndimage.minimum_filter((residual <= np.quantile(residual, 0.75)).astype(np.float64), 5)
    keep_a = ndimage.gaussian_filter(keep_a, 2.0)  # soft edges: a hard one would pull to whole pixels
    keep_b = ndimage.shift(keep_a, -d, order=3, mode="nearest")  # keep_b(x) = keep_a(x + d)
    ma = (ga - (ga * keep_a).sum() / max(keep_a.sum(), 1)) * keep_a
    mb = (gb - (gb * keep_b).sum() / max(keep_b.sum(), 1)) * keep_b
    r = _cross_power(ma, mb, lowpass)
    d = _refine(r, np.round(d), upsample)
    return float(d[1]), float(d[0])


def measure_zoom(a: np.ndarray, b: np.ndarray, max_log2: float = 0.2, n: int = 41) -> float:
    """log2 of the zoom from frame a to frame b (> 0: b is magnified, the camera zoomed
    in), by a search over centred scalings of a compared with b (normalized correlation
    on the central region), refined by a parabola through the best three."""
    ga = torch.from_numpy(_gray(a) if np.ndim(a) == 3 else np.asarray(a, np.float64)).float()
    gb = torch.from_numpy(_gray(b) if np.ndim(b) == 3 else np.asarray(b, np.float64)).float()
    h, w = ga.shape
    zs = np.linspace(-max_log2, max_log2, n)
    s = torch.from_numpy(2.0 ** -zs).float()  # b(x) = a(c + (x - c) / 2^z)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None] * s[:, None, None, None]  # (n, H, W, 2)
    warped = F.grid_sample(ga[None, None].expand(n, 1, h, w), grid, mode="bilinear", align_corners=False)[:, 0]
    m = (slice(h // 6, h - h // 6), slice(w // 6, w - w // 6))  # the zoomed-out view stays inside a
    wa = warped[:, m[0], m[1]].reshape(n, -1)
    wb = gb[m].reshape(1, -1)
    wa = wa - wa.mean(1, keepdim=True)
    wb = wb - wb.mean(1, keepdim=True)
    ncc = (wa * wb).sum(1) / (wa.norm(dim=1) * wb.norm(dim=1) + 1e-6)
    i = int(ncc.argmax())
    if 0 < i < n - 1:
        y0, y1, y2 = (float(ncc[j]) for j in (i - 1, i, i + 1))
        den = y0 - 2 * y1 + y2
        frac = 0.5 * (y0 - y2) / den if den < 0 else 0.0
        return float(zs[i] + frac * (zs[1] - zs[0]))
    return float(zs[i])


def camera_error(frames: np.ndarray, commanded: np.ndarray, zoom_gap: int = 4) -> dict:
    """Measured camera motion against the commanded one.

    commanded: (F, 3), row f the motion from frame f-1 to f: [dx, dy] in view px/frame,
    dzoom in log2/frame. Pan frames: commanded pan and no zoom; still frames: neither.
    Zoom is measured between frames `zoom_gap` apart inside constant-zoom stretches."""
    commanded = np.asarray(commanded, np.float64)
    n = len(frames)
    measured = np.full((n, 3), np.nan)
    for f in range(1, n):
        if commanded[f, 2] == 0:
            measured[f, :2] = measure_shift(frames[f - 1], frames[f])
    zoom_frames = [f for f in range(zoom_gap, n, zoom_gap)  # disjoint pairs inside one zoom command
                   if commanded[f, 2] != 0 and np.all(commanded[f - zoom_gap + 1 : f + 1, 2] == commanded[f, 2])]
    for f in zoom_frames:
        measured[f, 2] = measure_zoom(frames[f - zoom_gap], frames[f]) / zoom_gap
    f_idx = np.arange(n)
    pan = (f_idx > 0) & (np.abs(commanded[:, :2]).sum(1) > 0) & (commanded[:, 2] == 0)
    still = (f_idx > 0) & (np.abs(commanded).sum(1) == 0)
    err = np.linalg.norm(measured[:, :2] - commanded[:, :2], axis=1)
    speed = np.linalg.norm(commanded[:, :2], axis=1)
    unit = commanded[:, :2] / np.maximum(speed, 1e-9)[:, None]
    along = (measured[:, :2] * unit).sum(1)
    zoom = np.array(zoom_frames, dtype=int)

    def mean(x: np.ndarray) -> float:
        return float(np.mean(x)) if len(x) else float("nan")

    return {
        "pan_error_px": mean(err[pan]),
        "still_error_px": mean(err[still]),
        "error_px": mean(err[pan | still]),
        "pan_direction_accuracy": mean(along[pan] > 0),
        "pan_speed_ratio": float(along[pan].sum() / speed[pan].sum()) if pan.any() else float("nan"),
        "zoom_direction_accuracy": mean(np.sign(measured[zoom, 2]) == np.sign(commanded[zoom, 2])),
        "zoom_error_log2": mean(np.abs(measured[zoom, 2] - commanded[zoom, 2])),
        "pan_frames": int(pan.sum()),
        "still_frames": int(still.sum()),
        "zoom_frames": int(len(zoom)),
        "measured": measured,
    }


def sharpness(frames: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of luma per frame (higher = sharper), (F,)."""
    g = _gray(frames)
    lap = g[:, 1:-1, :-2] + g[:, 1:-1, 2:] + g[:, :-2, 1:-1] + g[:, 2:, 1:-1] - 4 * g[:, 1:-1, 1:-1]
    return lap.var((1, 2))


def sharpness_summary(recordings: list["Recording"]) -> dict[str, float]:
    """Mean `sharpness` over the frames of `recordings`: all of them, those with the camera
    held still, and those under a pan (nan where there are none)."""
    sharp = np.concatenate([sharpness(r.frames) for r in recordings])
    cmd = np.concatenate([r.commanded for r in recordings])
    out = {"all": float(sharp.mean())}
    for name, sel in (("still", np.all(cmd == 0, axis=1)), ("panning", panning(cmd))):
        out[name] = float(sharp[sel].mean()) if sel.any() else float("nan")
    return out


def sharpness_against(model: dict[str, float], truth: dict[str, float]) -> dict[str, float]:
    """The model's `sharpness_summary` over the ground truth's on the same scenario."""
    return {k: model[k] / truth[k] if truth.get(k, 0) > 0 else float("nan") for k in model}


def panning(commanded: np.ndarray) -> np.ndarray:
    """Frames (F,) under a pan command and no zoom, from `commanded` (F, 3)."""
    return (np.abs(commanded[:, :2]).max(1) > 0) & (commanded[:, 2] == 0)


def streak_index(frames: np.ndarray, commanded: np.ndarray) -> float:
    """Directional blur while panning: per panning frame (a pan command, no zoom), the
    luma gradient energy across the pan over that along it, geometric mean over the
    frames (nan without any). A picture smeared along the motion (the blur of an
    MSE-trained model that cannot tell where texture moved) loses its gradients along the
    pan: the index rises above the ground truth's on the same scenario."""
    pan = panning(commanded)
    if not pan.any():
        return float("nan")
    g = _gray(frames[pan])
    ex = (np.diff(g, axis=2) ** 2).mean((1, 2))  # along x
    ey = (np.diff(g, axis=1) ** 2).mean((1, 2))  # along y
    horizontal = np.abs(commanded[pan, 0]) >= np.abs(commanded[pan, 1])
    along, across = np.where(horizontal, ex, ey), np.where(horizontal, ey, ex)
    return float(np.exp(np.mean(np.log((across + 1e-6) / (along + 1e-6)))))


def sticking(frames: np.ndarray, commanded: np.ndarray, window: int = 16, cutoff: float = 0.15) -> float:
    """Fine detail that stays on the screen while the camera pans: over each `window`
    consecutive panning frames (a pan command, no zoom), the fine detail (luma above
    `cutoff` cycles per pixel) of the frames' mean over that of each frame; the mean over
    the windows (nan without any). Detail that moves with the camera averages out (the
    world's ground truth: ~0.2); detail fixed on the screen survives the mean (1). A VAE
    decoder draws a faint pattern of its own on the latent grid, which detailed latents
    hide (the VAE's reconstruction of a pan: as the ground truth) and blurred ones leave
    alone (flat latents: 0.93): a DiT whose latents lose detail shows a picture whose
    texture stays put while its shapes move."""
    pan = panning(commanded)
    g = _gray(frames)
    H, W = g.shape[1:]
    fine = np.hypot(*np.meshgrid(np.fft.fftfreq(W), np.fft.fftfreq(H))) >= cutoff
    ratios, run = [], 0
    for f in range(len(g)):
        run = run + 1 if pan[f] else 0
        if run == window:
            hp = np.fft.ifft2(np.fft.fft2(g[f - window + 1:f + 1]) * fine).real
            ratios.append(np.abs(hp.mean(0)).mean() / max(np.abs(hp).mean(), 1e-9))
            run = 0
    return float(np.mean(ratios)) if ratios else float("nan")


def drift_curves(frames: np.ndarray, labels: dict[str, np.ndarray], prompts: str | Sequence[str],
                 fps: int, window_s: float = 60.0) -> dict:
    """Adherence, sharpness and colour statistics per window of `window_s` seconds."""
    n = len(frames)
    per = max(1, int(round(window_s * fps)))
    matches = attribute_matches(labels, prompts)
    sharp = sharpness(frames)
    f = np.asarray(frames, np.float64)
    windows = []
    for start in range(0, n, per):
        sl = slice(start, min(start + per, n))
        stacked = np.stack([m[sl] for m in matches.values()], 1)
        ok = np.all(np.where(np.isfinite(stacked), stacked, 1.0) == 1.0, axis=1)
        windows.append({
            "start_s": start / fps,
            "adherence": float(ok.mean()),
            "per_attribute": {a: float(np.nanmean(m[sl])) for a, m in matches.items() if np.isfinite(m[sl]).any()},
            "sharpness": float(sharp[sl].mean()),
            "colour_mean": [float(x) for x in f[sl].mean((0, 1, 2))],
            "colour_std": [float(x) for x in f[sl].std((1, 2)).mean(0)],
        })
    first, last = windows[0], windows[-1]
    return {
        "window_s": window_s,
        "windows": windows,
        "trend": attribute_trends(windows),
        "adherence_first": first["adherence"],
        "adherence_last": last["adherence"],
        "sharpness_ratio_last_first": last["sharpness"] / max(first["sharpness"], 1e-9),
        "colour_mean_shift": float(np.abs(np.subtract(last["colour_mean"], first["colour_mean"])).max()),
    }


def attribute_trends(windows: list[dict]) -> dict[str, dict[str, float]]:
    """Per attribute over a drift run's windows (`drift_curves`): `change`, the least-squares
    line's rise from the first window's start to the last's (a share, like adherence: the
    drift a first/last comparison would show without the windows' own scatter), and
    `spread`, the windows' standard deviation about that line; NaN with fewer than 3
    windows, where a line says nothing a first/last comparison does not."""
    out: dict[str, dict[str, float]] = {}
    for a in windows[0].get("per_attribute", {}):
        pts = [(w["start_s"], w["per_attribute"][a]) for w in windows if a in w.get("per_attribute", {})]
        if len(pts) < 3:
            out[a] = {"change": float("nan"), "spread": float("nan")}
            continue
        t, y = np.array(pts).T
        slope, icept = np.polyfit(t, y, 1)
        out[a] = {"change": float(slope * (t[-1] - t[0])),
                  "spread": float(np.std(y - (slope * t + icept)))}
    return out


def psnr(a: np.ndarray, b: np.ndarray, trim: float = 0.0) -> float:
    """PSNR in dB (inf for identical frames). `trim`: leave out that share of pixels with
    the largest error (a moving object, say) before averaging."""
    err = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    err = err.mean(-1).ravel() if err.ndim == 3 else err.ravel()
    if trim > 0:
        err = np.sort(err)[: int(math.ceil(len(err) * (1 - trim)))]
    mse = float(err.mean())
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM of the lumas, uniform window (Wang et al. 2004 constants)."""
    x = torch.from_numpy(_gray(a))[None, None]
    y = torch.from_numpy(_gray(b))[None, None]

    def box(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, window, stride=1)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = box(x), box(y)
    vx, vy, cxy = box(x * x) - mx * mx, box(y * y) - my * my, box(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def revisit_consistency(first: np.ndarray, revisited: np.ndarray, trim: float = 0.2) -> dict:
    """The view after panning away and back vs the first view, frame by frame (F, H, W, 3)
    each: mean PSNR (dB), PSNR with the `trim` worst pixels left out (the object in view
    moves on while the camera is away, the world should not: where it was and where it
    is, up to about 2 x 9% of the picture), and SSIM."""
    first, revisited = np.asarray(first), np.asarray(revisited)
    if first.ndim == 3:
        first, revisited = first[None], revisited[None]
    p = [psnr(a, b) for a, b in zip(first, revisited)]
    pt = [psnr(a, b, trim) for a, b in zip(first, revisited)]
    s = [ssim(a, b) for a, b in zip(first, revisited)]
    return {"psnr": float(np.mean(p)), "psnr_trimmed": float(np.mean(pt)), "ssim": float(np.mean(s))}


def flicker(frames: np.ndarray, static: np.ndarray | None = None) -> float:
    """Mean absolute difference (0..255) of consecutive frames over the pairs (f-1, f)
    with static[f] True (a still camera, no switch); all pairs if static is None."""
    d = frame_differences(frames)
    if static is not None:
        d = d[np.asarray(static, bool)[1:]]
    return float(d.mean()) if len(d) else float("nan")


# ---------------------------------------------------------------------------------
# Scenario: what is streamed, identically for the world and for a model
# ---------------------------------------------------------------------------------


@dataclass
class Segment:
    """Frames streamed under one control setting; pan in view widths/s (x right, y down)
    and zoom in log2/s, as `Generator.set_camera` takes them."""

    frames: int
    pan: tuple[float, float] = (0.0, 0.0)
    zoom: float = 0.0
    prompt: str | None = None  # switch to this prompt at the segment's first frame


@dataclass
class Run:
    """One stream from a fresh generator: `kind` is "control", "revisit" or "drift"."""

    name: str
    kind: str
    prompt: str
    segments: list[Segment]


@dataclass
class Recording:
    """What a run produced: frames and, per frame, the prompt and camera command in force."""

    run: Run
    frames: np.ndarray  # (F, H, W, 3) uint8
    prompts: list[str]
    commanded: np.ndarray  # (F, 3): [dx, dy] view px/frame, dzoom log2/frame
    switches: list[tuple[int, str, str]]  # (frame, old prompt, new prompt)
    segment_starts: list[int]


PAN_SPEEDS_PX = (1.0, 2.0, 3.0, 4.0)  # px/frame at the reference view size
ZOOM_PER_FRAME = 0.02  # log2/frame


def read_prompt_file(path: str | Path) -> list[list[str]]:
    """Prompt chains from a file: one prompt per line, or `a -> b -> c` for switches
    within one stream. Blank lines and lines starting with # are skipped."""
    chains = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        chain = [p.strip() for p in line.split("->")]
        if any(not p for p in chain):
            raise ValueError(f"{path}:{i}: empty prompt in {line!r}")
        chains.append(chain)
    if not chains:
        raise ValueError(f"{path}: no prompts")
    return chains


def colour_switches(make_generator: Callable[[], object], classifier: AttributeClassifier, seed: int,
                    n: int = 6, before: int = 4, after: int = 24) -> dict:
    """Streamed (as a viewer steers): does a switch of only the object's colour recolour
    it? Per held-out scene (an rng no training clip or other eval run uses), a still
    stream of its caption for `before` chunks, then the same caption with another colour
    for `after` chunks. `drawn_before`: frames before the switch in the first colour (the
    object drawn at all); `new` / `old`: frames after the switch's first chunk in the new
    / the first colour; `followed`: switches whose new colour holds 3 frames in a row."""
    rng = np.random.default_rng([seed, 515151])
    colours = world.VOCAB["colour"]
    drawn, new, old, followed = [], [], [], 0
    for _ in range(n):
        scene = world.sample_scene(rng)
        other = replace(scene, colour=colours[(colours.index(scene.colour) + int(rng.integers(1, len(colours))))
                                                          % len(colours)])
        template = int(rng.integers(len(world.CAPTION_TEMPLATES)))
        a, b = (world.caption(sc, np.random.default_rng([seed, 7]), template=template) for sc in (scene, other))
        gen = make_generator()
        gen.set_prompt(a)
        first = np.concatenate([gen.next_frames() for _ in range(before)])
        gen.set_prompt(b)
        chunks = [gen.next_frames() for _ in range(after)]
        got_before = classify(first, classifier)["colour"]
        got_all = classify(np.concatenate(chunks), classifier)["colour"]
        got = got_all[len(chunks[0]):]  # after the switch's first chunk
        drawn.append(np.mean(got_before == scene.colour))
        new.append(np.mean(got == other.colour))
        old.append(np.mean(got == scene.colour))
        run = 0
        for c in got_all:
            run = run + 1 if c == other.colour else 0
            if run == 3:
                followed += 1
                break
    return {"count": n, "followed": followed, "drawn_before": float(np.mean(drawn)), "new": float(np.mean(new)),
            "old": float(np.mean(old))}


def held_out_prompts(seed: int, n_chains: int = 3, chain_length: int = 3) -> list[list[str]]:
    """Chains of captions of random scenes, each prompt changing 1-3 attributes of the
    one before (as training switches do), from an rng no training clip uses."""
    rng = np.random.default_rng([seed, 424242])
    chains = []
    for _ in range(n_chains):
        scene = world.sample_scene(rng)
        chain = [world.caption(scene, rng)]
        for _ in range(chain_length - 1):
            scene = world.change_scene(scene, rng, int(rng.integers(1, 4)))
            chain.append(world.caption(scene, rng))
        chains.append(chain)
    return chains


def build_scenario(seed: int, minutes: float, fps: int, frames_per_chunk: int,
                   chains: list[list[str]] | None = None) -> list[Run]:
    """The runs of one evaluation: a control run per prompt chain (per prompt: still, two
    pans on different axes at 1-4 px/frame, a zoom in and out), a revisit run (pan one
    view width away and back) and a drift run of `minutes`. Segments last about a second,
    rounded up to whole chunks, so both streams change controls at chunk boundaries."""
    rng = np.random.default_rng([seed, 99])
    chains = chains or held_out_prompts(seed)
    seg = frames_per_chunk * math.ceil(fps / frames_per_chunk)

    def pan(px: float, axis: int) -> tuple[float, float]:
        v = px * fps / world.REF_SIZE  # view widths/s
        return (v, 0.0) if axis == 0 else (0.0, v)

    runs = []
    for c, chain in enumerate(chains):
        segments = []
        for p, prompt in enumerate(chain):
            axis = int(rng.integers(2))
            sign = [float(rng.choice([-1, 1])) for _ in range(2)]
            speeds = rng.choice(PAN_SPEEDS_PX, size=2)
            z = ZOOM_PER_FRAME * fps * float(rng.choice([-1, 1]))
            segments += [
                Segment(seg, prompt=prompt if p > 0 else None),
                Segment(seg, pan=pan(sign[0] * speeds[0], axis)),
                Segment(seg, pan=pan(sign[1] * speeds[1], 1 - axis)),
                Segment(seg, zoom=z),
                Segment(seg, zoom=-z),
            ]
        runs.append(Run(f"control-{c}", "control", chain[0], segments))

    # weather animates in view space: under a clear sky the revisit is about the world
    scene = world.scene_from_prompt(chains[0][0], world.sample_scene(rng))
    if scene.weather == "clear" and "weather" in world.parse_prompt(chains[0][0]):
        revisit_prompt = chains[0][0]
    else:
        revisit_prompt = world.caption(world.Scene(**{**scene.attributes(), "weather": "clear"}), rng)
    away = math.ceil(world.REF_SIZE / (4 * seg))  # segments at 4 px/frame to go one view width
    runs.append(Run("revisit", "revisit", revisit_prompt, [
        Segment(seg),
        Segment(away * seg, pan=pan(4.0, 0)),
        Segment(seg),
        Segment(away * seg, pan=pan(-4.0, 0)),
        Segment(seg),
    ]))

    drift_prompt = chains[min(1, len(chains) - 1)][0]
    total = max(seg, int(round(minutes * 60 * fps / seg)) * seg)
    moves = [(1.0, 0), (0.0, 0), (1.0, 1), (-1.0, 0), (0.0, 0), (-1.0, 1)]
    segments, k = [], 0
    while sum(s.frames for s in segments) < total:
        px, axis = moves[k % len(moves)]
        segments.append(Segment(min(4 * seg, total - sum(s.frames for s in segments)), pan=pan(px, axis)))
        k += 1
    runs.append(Run("drift", "drift", drift_prompt, segments))
    return runs


class WorldGenerator:
    """The world's own stream behind the Generator's interface (`set_prompt`,
    `set_camera`, `next_frames`, `frame_index`): the ground truth of the eval.

    Attributes a prompt leaves unnamed keep their previous values (at first, those of a
    random scene from `seed`). Pans are view widths/s, as for the model."""

    def __init__(self, seed: int = 0, size: int = world.REF_SIZE, fps: int = 16, frames_per_chunk: int = 4) -> None:
        rng = np.random.default_rng([seed, 5])
        self.stream = world.WorldStream(world.sample_scene(rng), seed=seed, size=size, fps=fps)
        self.size, self.fps, self.frames_per_chunk = size, fps, frames_per_chunk
        self._pan, self._zoom = (0.0, 0.0), 0.0
        self._prompt: str | None = None

    @property
    def frame_index(self) -> int:
        return self.stream.frame_index

    def set_prompt(self, text: str, transition: int = 0) -> None:
        self._prompt = text  # staged: applied at the next chunk, as the model does

    def set_camera(self, pan: tuple[float, float] = (0.0, 0.0), zoom: float = 0.0) -> None:
        self._pan, self._zoom = (float(pan[0]), float(pan[1])), float(zoom)

    def next_frames(self) -> np.ndarray:
        if self._prompt is not None:
            self.stream.set_scene(world.scene_from_prompt(self._prompt, self.stream.scene))
            self._prompt = None
        k = 2.0 ** -self.stream.camera[2]  # view px -> world px at the current zoom
        dx = world.pan_to_px_per_frame(self._pan[0], self.size, self.fps) * k
        dy = world.pan_to_px_per_frame(self._pan[1], self.size, self.fps) * k
        return self.stream.render(self.frames_per_chunk, (dx, dy, self._zoom / self.fps))


def play(run: Run, gen, size: int, fps: int, bar: tqdm | None = None) -> Recording:
    """Stream `run` on `gen` (a Generator or WorldGenerator), chunk by chunk, recording the
    controls in force for every frame."""
    frames: list[np.ndarray] = []
    prompts: list[str] = []
    commanded: list[tuple[float, float, float]] = []
    switches, starts = [], []
    prompt = run.prompt
    gen.set_prompt(prompt, transition=0)
    done = 0
    for seg in run.segments:
        starts.append(done)
        if seg.prompt is not None and seg.prompt != prompt:
            gen.set_prompt(seg.prompt, transition=0)
            switches.append((done, prompt, seg.prompt))
            prompt = seg.prompt
        gen.set_camera(pan=seg.pan, zoom=seg.zoom)
        cmd = (world.pan_to_px_per_frame(seg.pan[0], size, fps),
               world.pan_to_px_per_frame(seg.pan[1], size, fps), seg.zoom / fps)
        target = starts[-1] + seg.frames
        while done < target:
            chunk = np.asarray(gen.next_frames())
            frames.append(chunk)
            prompts += [prompt] * len(chunk)
            commanded += [cmd] * len(chunk)
            done += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return Recording(run, np.concatenate(frames), prompts, np.array(commanded), switches, starts)


# ---------------------------------------------------------------------------------
# Scoring a set of recordings
# ---------------------------------------------------------------------------------


def _finite_mean(xs: Sequence[float | None]) -> float:
    v = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def revisit_of(recordings: list[Recording]) -> dict | None:
    """The revisit run's first still segment against its last (same camera position)."""
    for r in recordings:
        if r.run.kind == "revisit":
            n = r.run.segments[0].frames
            a = r.frames[r.segment_starts[0] : r.segment_starts[0] + n]
            b = r.frames[r.segment_starts[-1] : r.segment_starts[-1] + n]
            return revisit_consistency(a, b)
    return None


def score(recordings: list[Recording], classifier: AttributeClassifier, fps: int) -> dict:
    """Every metric over the runs of one stream source (world or model)."""
    labels = {id(r): classify(r.frames, classifier) for r in recordings}
    control = [r for r in recordings if r.run.kind == "control"]
    out: dict = {}

    # prompt adherence over the control runs
    lab = {a: np.concatenate([labels[id(r)][a] for r in control]) for a in CLASSIFIED}
    out["adherence"] = prompt_adherence(lab, [p for r in control for p in r.prompts])

    # the same, the frames of the camera held still against the frames of a pan (the
    # scene should hold while panning)
    cmd = np.concatenate([r.commanded for r in control])
    prompts = [p for r in control for p in r.prompts]
    for name, sel in (("still", np.all(cmd == 0, axis=1)),
                      ("panning", panning(cmd))):
        if sel.any():
            out[f"adherence_{name}"] = prompt_adherence({a: v[sel] for a, v in lab.items()},
                                                        [p for p, keep in zip(prompts, sel) if keep])
    out["sharpness"] = sharpness_summary(control)
    out["streak"] = streak_index(np.concatenate([r.frames for r in control]), cmd)
    out["sticking"] = _finite_mean([sticking(r.frames, r.commanded) for r in control])

    # switches
    per_switch = []
    for r in control:
        for frame, old, new in r.switches:
            per_switch.append({
                "run": r.run.name,
                "frame": frame,
                "from": old,
                "to": new,
                "latency_frames": switch_latency(labels[id(r)], frame, new, old),
                "smoothness": transition_smoothness(r.frames, frame),
            })
    lat = [s["latency_frames"] for s in per_switch]
    followed = [x for x in lat if x is not None]
    out["switch"] = {
        "count": len(per_switch),
        "followed": len(followed),
        "latency_frames_mean": _finite_mean(followed),
        "latency_frames_median": float(np.median(followed)) if followed else float("nan"),
        "latency_frames_max": float(max(followed)) if followed else float("nan"),
        "smoothness_mean": _finite_mean([s["smoothness"] for s in per_switch]),
        "smoothness_max": float(np.nanmax([s["smoothness"] for s in per_switch])) if per_switch else float("nan"),
        "per_switch": per_switch,
    }
    bad = [bad_frames(r.frames) for r in recordings]
    out["bad_frames"] = {"black": sum(b["black"] for b in bad), "noise": sum(b["noise"] for b in bad),
                         "frames": sum(b["frames"] for b in bad)}

    # camera, over the control runs
    cams = [camera_error(r.frames, r.commanded) for r in control]

    def pooled(key: str, count: str) -> float:
        w = np.array([c[count] for c in cams], float)
        v = np.array([c[key] for c in cams], float)
        ok = np.isfinite(v) & (w > 0)
        return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")

    out["camera"] = {
        "pan_error_px": pooled("pan_error_px", "pan_frames"),
        "still_error_px": pooled("still_error_px", "still_frames"),
        "pan_direction_accuracy": pooled("pan_direction_accuracy", "pan_frames"),
        "pan_speed_ratio": pooled("pan_speed_ratio", "pan_frames"),
        "zoom_direction_accuracy": pooled("zoom_direction_accuracy", "zoom_frames"),
        "zoom_error_log2": pooled("zoom_error_log2", "zoom_frames"),
        "pan_frames": int(sum(c["pan_frames"] for c in cams)),
        "zoom_frames": int(sum(c["zoom_frames"] for c in cams)),
    }

    revisit = revisit_of(recordings)
    if revisit is not None:
        out["revisit"] = revisit

    # flicker: still camera, no switch, both frames of the pair
    diffs = []
    for r in recordings:
        still = np.all(r.commanded == 0, axis=1)
        pair = np.zeros(len(r.frames), bool)
        pair[1:] = still[1:] & still[:-1]
        for f, _, _ in r.switches:
            pair[f] = False
        if pair.any():
            diffs.append(frame_differences(r.frames)[pair[1:]])
    out["flicker"] = float(np.concatenate(diffs).mean()) if diffs else float("nan")

    # drift
    for r in recordings:
        if r.run.kind == "drift":
            duration = len(r.frames) / fps
            window = 60.0 if duration >= 120 else 10.0
            out["drift"] = drift_curves(r.frames, labels[id(r)], r.prompts, fps, window)
            out["drift"]["minutes"] = duration / 60
    out["series"] = {
        "control_matches": {a: [None if not np.isfinite(x) else int(x) for x in v]
                            for a, v in attribute_matches(lab, [p for r in control for p in r.prompts]).items()},
        "camera_commanded": np.concatenate([r.commanded for r in control]).round(4).tolist(),
        "camera_measured": [[None if not np.isfinite(x) else round(float(x), 4) for x in row]
                            for c in cams for row in c["measured"]],
        "switch_frames": [s["frame"] + sum(len(r.frames) for r in control[: [c.run.name for c in control].index(s["run"])])
                          for s in per_switch],
    }
    return out


# ---------------------------------------------------------------------------------
# Report: table, plots
# ---------------------------------------------------------------------------------


def _fmt(x, kind: str = "f") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-" if x is None or np.isnan(x) else ("inf" if x > 0 else "-inf")
    if kind == "%":
        return f"{100 * x:.1f}%"
    if kind == "d":
        return f"{int(x)}"
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"


def adherence_cell(share: float, misread: dict | None) -> str:
    """An attribute's adherence, and what it was most often read as instead."""
    return _fmt(share, "%") + (f" (misread most as {misread['as']}: {_fmt(misread['share'], '%')})" if misread else "")


def table_rows(result: dict) -> list[tuple[str, str]]:
    """(metric, value) rows of one source's results, for the printed table."""
    rows = [("adherence: all attributes", _fmt(result["adherence"]["all"], "%"))]
    misread = result["adherence"].get("misread", {})
    for a, v in result["adherence"]["per_attribute"].items():
        rows.append((f"adherence: {a}", adherence_cell(v, misread.get(a))))
    sw = result["switch"]
    if "adherence_still" in result and "adherence_panning" in result:
        rows.append(("adherence still / panning (all attributes)",
                     f"{_fmt(result['adherence_still']['all'], '%')} / {_fmt(result['adherence_panning']['all'], '%')}"))
        rows.append(("adherence still / panning, mean of attributes",
                     f"{_fmt(result['adherence_still']['mean'], '%')} / {_fmt(result['adherence_panning']['mean'], '%')}"))
    rows += [
        ("switches followed", f"{sw['followed']}/{sw['count']}"),
        ("switch latency, frames (mean/max)", f"{_fmt(sw['latency_frames_mean'])}/{_fmt(sw['latency_frames_max'])}"),
        ("switch jump (max diff / median)", _fmt(sw["smoothness_mean"])),
        ("black / noise frames", f"{result['bad_frames']['black']}/{result['bad_frames']['noise']} "
                                 f"of {result['bad_frames']['frames']}"),
    ]
    cam = result["camera"]
    rows += [
        ("camera pan error, px/frame", _fmt(cam["pan_error_px"])),
        ("camera still error, px/frame", _fmt(cam["still_error_px"])),
        ("pan direction accuracy", _fmt(cam["pan_direction_accuracy"], "%")),
        ("pan speed, measured/commanded", _fmt(cam["pan_speed_ratio"])),
        *([("sharpness against ground truth: all / still / panning; through the VAE alone",
            f"{_fmt(sg['all'], '%')} / {_fmt(sg['still'], '%')} / {_fmt(sg['panning'], '%')}; "
            f"{_fmt(sg.get('vae'), '%')}")] if (sg := result.get("sharpness_vs_ground_truth")) else []),
        ("streak while panning (gradient energy across / along)", _fmt(result.get("streak"))),
        ("fine detail fixed on screen while panning (0 moves, 1 static)", _fmt(result.get("sticking"))),
        ("zoom direction accuracy", _fmt(cam["zoom_direction_accuracy"], "%")),
        ("zoom error, log2/frame", _fmt(cam["zoom_error_log2"])),
    ]
    rv = result.get("revisit", {})
    rows += [
        ("revisit PSNR, dB", _fmt(rv.get("psnr"))),
        ("revisit PSNR 95% of pixels, dB", _fmt(rv.get("psnr_trimmed"))),
        ("revisit SSIM", _fmt(rv.get("ssim"))),
        *([("revisit PSNR / SSIM, memory off", f"{_fmt(off.get('psnr'))} / {_fmt(off.get('ssim'))}")]
          if (off := result.get("revisit_memory_off")) is not None else []),
        ("flicker (still camera), 0..255", _fmt(result["flicker"])),
    ]
    if "vae_ceiling" in result:
        rows.append(("adherence through the VAE alone (ceiling)",
                     " ".join(f"{a} {_fmt(v, '%')}" for a, v in result["vae_ceiling"].items())))
    if (cs := result.get("colour_switch")) is not None:
        rows.append(("colour-only switches streamed: followed; after: new / old colour; before: drawn",
                     f"{cs['followed']}/{cs['count']}; {_fmt(cs['new'], '%')} / {_fmt(cs['old'], '%')}; "
                     f"{_fmt(cs['drawn_before'], '%')}"))
    for part, label in (("context", "after context"), ("first_chunk", "first chunk")):
        for t, b in result.get("prompt_binding", {}).get(part, {}).items():
            rows.append((f"object colour from the prompt, teacher-forced, {label}, t={t}: "
                         "caption / changed word / copied",
                         f"{_fmt(b['prompt'], '%')} / {_fmt(b['changed'], '%')} / {_fmt(b['copied'], '%')}"))
    dr = result.get("drift", {})
    if dr:
        rows += [
            (f"drift: adherence first/last {dr['window_s']:.0f} s",
             f"{_fmt(dr['adherence_first'], '%')}/{_fmt(dr['adherence_last'], '%')}"),
            *([(f"drift: per attribute first/last {dr['window_s']:.0f} s",
                " ".join(f"{a} {_fmt(v, '%')}/{_fmt(dr['windows'][-1]['per_attribute'].get(a), '%')}"
                         for a, v in dr["windows"][0]["per_attribute"].items()))]
              if dr.get("windows") and "per_attribute" in dr["windows"][0] else []),
            *([(f"drift: per attribute, the fitted line's change over the run (points); windows' spread",
                " ".join(f"{a} {v['change'] * 100:+.1f}; {v['spread'] * 100:.1f}" for a, v in dr["trend"].items()))]
              if dr.get("trend") and any(math.isfinite(v["change"]) for v in dr["trend"].values()) else []),
            ("drift: sharpness last/first", _fmt(dr["sharpness_ratio_last_first"])),
            ("drift: colour mean shift, 0..255", _fmt(dr["colour_mean_shift"])),
        ]
    return rows


def format_table(results: dict[str, dict]) -> str:
    cols = list(results)
    rows = {name: dict(table_rows(r)) for name, r in results.items()}
    keys = [k for k, _ in table_rows(results[cols[0]])]
    w0 = max(len(k) for k in keys) + 2
    widths = [max(len(c), max(len(rows[c].get(k, "")) for k in keys)) + 2 for c in cols]
    lines = ["metric".ljust(w0) + "".join(c.replace("_", " ").rjust(w) for c, w in zip(cols, widths))]
    lines.append("-" * len(lines[0]))
    for k in keys:
        lines.append(k.ljust(w0) + "".join(rows[c].get(k, "-").rjust(w) for c, w in zip(cols, widths)))
    return "\n".join(lines)


def write_plots(results: dict[str, dict], out_dir: str | Path, fps: int) -> list[Path]:
    """PNGs: adherence over time, camera commanded vs measured, drift curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 3 * len(results)), squeeze=False)
    for ax, (name, r) in zip(axes[:, 0], results.items()):
        k = max(1, fps)
        for a, m in r["series"]["control_matches"].items():
            v = np.array([np.nan if x is None else x for x in m], float)
            if np.isfinite(v).any():
                smooth = np.convolve(np.nan_to_num(v, nan=0.0), np.ones(k) / k, mode="same")
                ax.plot(np.arange(len(v)) / fps, smooth, label=a)
        for f in r["series"]["switch_frames"]:
            ax.axvline(f / fps, color="k", lw=0.6, ls="--")
        ax.set(title=f"{name}: prompt adherence (1 s mean; dashed: switches)", xlabel="s", ylim=(-0.05, 1.05))
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths.append(out / "adherence.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 3 * len(results)), squeeze=False)
    for row, (name, r) in zip(axes, results.items()):
        cmd = np.array(r["series"]["camera_commanded"], float)
        meas = np.array([[np.nan if x is None else x for x in m] for m in r["series"]["camera_measured"]], float)
        t = np.arange(len(cmd)) / fps
        for i, (ax, axis) in enumerate(zip(row, ("dx", "dy"))):
            ax.plot(t, cmd[:, i], label="commanded", lw=1.5)
            ax.plot(t, meas[:, i], label="measured", lw=0.8)
            ax.set(title=f"{name}: camera {axis} (view px/frame)", xlabel="s")
            ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "camera.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
    for name, r in results.items():
        w = r.get("drift", {}).get("windows", [])
        if not w:
            continue
        t = [x["start_s"] / 60 for x in w]
        axes[0].plot(t, [x["adherence"] for x in w], marker="o", label=f"{name}: all named")
        for a in w[0].get("per_attribute", {}):  # each named attribute on its own
            ys = [x["per_attribute"].get(a) for x in w]
            if all(y is not None and np.isfinite(y) for y in ys):
                axes[0].plot(t, ys, ls=":", marker=".", label=f"{name}: {a}")
        axes[1].plot(t, [x["sharpness"] for x in w], marker="o", label=name)
        for c, col in enumerate("rgb"):
            axes[2].plot(t, [x["colour_mean"][c] for x in w], color=col, ls="-" if name == "ground_truth" else "--",
                         label=f"{name} {col}")
    for ax, title in zip(axes, ("adherence", "sharpness (var. of Laplacian)", "colour mean")):
        ax.set(title=f"drift: {title}", xlabel="minutes")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "drift.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else (None if np.isnan(x) else ("inf" if x > 0 else "-inf"))
    if isinstance(x, np.integer):
        return int(x)
    return x


# ---------------------------------------------------------------------------------
# CLI: `livereel eval`
# ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ground-truth", action="store_true",
                        help="score the world's own stream (the sanity reference); with --checkpoint, "
                             "score both on the same scenario")
    parser.add_argument("--checkpoint", metavar="PATH_OR_NAME", default=None,
                        help="model to score: a preset name ('default', 'debug') or a checkpoint path "
                             "(default: 'default', unless only --ground-truth is given)")
    parser.add_argument("--prompts", metavar="FILE", type=Path, default=None,
                        help="prompts, one per line, or 'a -> b' for a switch within one stream "
                             "(default: held-out prompts drawn from --seed)")
    parser.add_argument("--minutes", metavar="M", type=float, default=1.0,
                        help="length of the drift run in minutes (default: 1)")
    parser.add_argument("--seed", metavar="S", type=int, default=0,
                        help="seed of the scenario and of the streams (default: 0)")
    add_sampling_arguments(parser)
    add_engine_argument(parser)
    parser.add_argument("--json", metavar="OUT", type=Path, default=None,
                        help="write every figure as JSON to this file")
    parser.add_argument("--plots", metavar="DIR", type=Path, default=None,
                        help="write PNG plots (adherence over time, camera, drift) to this folder")
    parser.add_argument("--classifier", metavar="DIR", type=Path, default=DEFAULT_CLASSIFIER_DIR,
                        help="attribute classifier folder (default: the shipped checkpoints/classifier)")
    parser.add_argument("--train-classifier", metavar="DIR", type=Path, default=None,
                        help="retrain the attribute classifier into this folder and exit")


def _error(msg: str) -> int:
    print(f"livereel eval: error: {msg}", file=sys.stderr)
    return 2


def _model_source(checkpoint: str, seed: int, sampling: Sampling, engine: str = "eager"):
    """(model, make_generator, size, fps, frames_per_chunk) for a model checkpoint run by
    `engine`; make_generator(memory=False) switches the memory bank off."""
    from model import load_model

    model = apply_engine(load_model(checkpoint), engine)
    cfg = model.config

    def make(memory: bool = True):
        return sampling.generator(model, seed=seed, memory=memory)

    return model, make, cfg.image_size, cfg.fps, cfg.frames_per_chunk


def main(args: argparse.Namespace) -> int:
    from model.sample import check_folder, check_output

    try:  # output paths first: a bad one is refused before minutes of work
        if args.train_classifier is not None:
            check_folder(args.train_classifier, "--train-classifier")
        if args.json is not None:
            check_output(args.json, "--json")
        if args.plots is not None:
            check_folder(args.plots, "--plots")
    except ValueError as e:
        return _error(str(e))
    if args.train_classifier is not None:
        torch.set_num_threads(1)
        cfg = train_classifier(args.train_classifier)
        print(json.dumps(cfg["accuracy"], indent=2))
        return 0
    if args.minutes <= 0:
        return _error(f"--minutes must be > 0, got {args.minutes}")
    try:
        sampling = sampling_from_args(args)
    except ValueError as e:
        return _error(str(e))
    chains = None
    if args.prompts is not None:
        try:
            chains = read_prompt_file(args.prompts)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            return _error(f"cannot read prompts: {e}")
        for chain in chains:
            for p in chain:
                if not set(world.parse_prompt(p)) & set(CLASSIFIED):
                    log.warning("prompt %r names no attribute the classifier judges; it counts for nothing", p)
    try:
        classifier = load_classifier(args.classifier)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        return _error(f"cannot load the classifier: {e}")
    checkpoint = args.checkpoint if args.checkpoint is not None else (None if args.ground_truth else "default")

    sources: dict[str, Callable[[], object]] = {}
    size, fps, chunk = world.REF_SIZE, 16, 16
    if checkpoint is not None:
        from model.engine import EngineError

        try:
            model, make, size, fps, chunk = _model_source(checkpoint, args.seed, sampling, args.engine)
        except (ImportError, OSError, ValueError, KeyError, EngineError) as e:
            return _error(f"cannot load model {checkpoint!r}: {e}")
    if args.ground_truth:
        sources["ground_truth"] = lambda: WorldGenerator(args.seed, size, fps, chunk)
    if checkpoint is not None:
        sources["model"] = make

    runs = build_scenario(args.seed, args.minutes, fps, chunk, chains)
    total = sum(s.frames for r in runs for s in r.segments)
    results = {}
    for name, make_gen in sources.items():
        with tqdm(total=total, desc=name.replace("_", " "), unit="frame") as bar:
            recs = [play(run, make_gen(), size, fps, bar) for run in runs]
        results[name] = score(recs, classifier, fps)
    if checkpoint is not None:  # the memory module's worth: the revisit again without it
        revisit = [r for r in runs if r.kind == "revisit"]
        with tqdm(total=sum(s.frames for r in revisit for s in r.segments), desc="revisit, memory off",
                  unit="frame") as bar:
            recs = [play(run, make(memory=False), size, fps, bar) for run in revisit]
        results["model"]["revisit_memory_off"] = revisit_of(recs)
        roundtrip = vae_roundtrip(model.vae, size=size)
        results["model"]["vae_ceiling"] = vae_ceiling(model.vae, classifier, roundtrip=roundtrip)
        # sharpness against the world's own frames on the same control runs
        if "ground_truth" in results:
            truth = results["ground_truth"]["sharpness"]
        else:
            control = [r for r in runs if r.kind == "control"]
            truth = sharpness_summary([play(run, WorldGenerator(args.seed, size, fps, chunk), size, fps)
                                       for run in control])
        results["model"]["sharpness_vs_ground_truth"] = {
            **sharpness_against(results["model"]["sharpness"], truth),
            "vae": vae_sharpness(model.vae, roundtrip=roundtrip)}
        from model.checkpoint import LiveReel

        if isinstance(model, LiveReel):
            results["model"]["prompt_binding"] = prompt_binding(model, classifier)
            results["model"]["colour_switch"] = colour_switches(make, classifier, args.seed)

    print(format_table(results))
    if args.plots is not None:
        for p in write_plots(results, args.plots, fps):
            print(f"wrote {p}")
    if args.json is not None:
        doc = {
            "scenario": {
                "seed": args.seed, "minutes": args.minutes, "size": size, "fps": fps,
                "frames_per_chunk": chunk, **sampling.to_dict(),
                "checkpoint": checkpoint,
                "runs": [{"name": r.name, "kind": r.kind, "prompt": r.prompt,
                          "segments": [vars(s) for s in r.segments]} for r in runs],
            },
            "classifier": json.loads((Path(args.classifier) / "config.json").read_text()).get("accuracy"),
            **results,
        }
        args.json.write_text(json.dumps(_json_safe(doc), indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
