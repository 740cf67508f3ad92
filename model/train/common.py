"""What every training stage shares: a clip pool, resumable run state, loss logs."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

log = logging.getLogger(__name__)

RUNS = Path(os.environ.get("LIVEREEL_RUNS", Path.home() / ".cache" / "livereel" / "runs"))


class ClipPool:
    """World clips rendered once and kept in memory (uint8), cached on disk as .npz, so a
    resumed run does not render again. Seeds are disjoint from the eval's held-out ones."""

    def __init__(self, n_clips: int, n_frames: int, size: int, fps: int, path: Path,
                 seed_offset: int = 1_000_000, object_start: str = "random",
                 switch_share: float = 0.3):
        """`object_start`, `switch_share`: as `world.render_clip` (a cached pool is reused as it is: a
        run's pool is made once, with the run's settings)."""
        from model.world import render_clip

        self.path = path
        if path.exists():
            data = np.load(path, allow_pickle=False)
            if (data["frames"].shape[:2] == (n_clips, n_frames) and data["frames"].shape[2] == size
                    and "objects" in data):
                self._set(data)
                return
        frames, camera, velocity, captions, objects = [], [], [], [], []
        for i in tqdm(range(n_clips), desc="rendering world clips", unit="clip"):
            clip = render_clip(seed_offset + i, n_frames=n_frames, size=size, fps=fps, object_start=object_start,
                               switch_share=switch_share)
            frames.append(clip.frames)
            camera.append(clip.camera)
            velocity.append(clip.velocity)
            captions.append(json.dumps([clip.prompt_at(f) for f in range(n_frames)]))
            objects.append(clip.objects)
        data = dict(frames=np.stack(frames), camera=np.stack(camera), velocity=np.stack(velocity),
                    captions=np.array(captions), objects=np.stack(objects))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path.with_suffix(".tmp.npz"), **data)
        path.with_suffix(".tmp.npz").replace(path)
        self._set(data)

    def _set(self, data) -> None:
        self.frames = data["frames"]  # (N, F, H, W, 3) uint8
        self.camera = data["camera"]  # (N, F, 3) world px, log2 zoom
        self.velocity = data["velocity"]
        self.objects = data["objects"]  # (N, F, 3) the object's centre x, y and radius, view px
        self.captions = [json.loads(c) for c in data["captions"]]  # per clip, per frame

    def __len__(self) -> int:
        return len(self.frames)


def save_state(run: Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
               step: int, extra: dict | None = None) -> None:
    """Weights and optimizer moments as safetensors, the rest as JSON; atomic."""
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous()
               for name, m in modules.items() for k, v in m.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{i}.{k}"] = v.detach().cpu().contiguous().reshape(v.shape)
    run.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(run / "state.tmp.safetensors"))
    meta = {"step": step, **(extra or {})}
    (run / "state.tmp.json").write_text(json.dumps(meta))
    (run / "state.tmp.safetensors").replace(run / "state.safetensors")
    (run / "state.tmp.json").replace(run / "state.json")


def under(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The tensors saved under module `name` ("name.*"), named as the module names them."""
    prefix = f"{name}."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_state(run: Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer) -> dict:
    tensors = load_file(run / "state.safetensors")
    meta = json.loads((run / "state.json").read_text())
    for name, m in modules.items():
        m.load_state_dict(under(tensors, name))
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)
    return meta


class LossLog:
    """Appends rows to run/loss.csv and redraws run/loss.png."""

    def __init__(self, run: Path, fields: list[str]):
        self.path, self.fields = run / "loss.csv", ["step"] + fields
        rows: list[dict[str, str]] = []
        if self.path.exists():  # a resumed run: keep its rows, under these fields
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames == self.fields:
                    return
                rows = list(reader)
        run.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.fields)
            w.writerows([r.get(k) or "nan" for k in self.fields] for r in rows)

    def add(self, step: int, **values: float) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([step] + [f"{values[k]:.6g}" for k in self.fields[1:]])

    def plot(self) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = list(csv.DictReader(self.path.open()))
        out = self.path.with_suffix(".png")
        if not rows:
            return out
        fig, axes = plt.subplots(1, len(self.fields) - 1, figsize=(4 * (len(self.fields) - 1), 3))
        axes = np.atleast_1d(axes)
        steps = [int(r["step"]) for r in rows]
        for ax, k in zip(axes, self.fields[1:]):
            ax.plot(steps, [float(r[k]) for r in rows], lw=0.8)
            ax.set_title(k)
            ax.set_xlabel("step")
            if all(float(r[k]) > 0 for r in rows):
                ax.set_yscale("log")
        fig.tight_layout()
        fig.savefig(out, dpi=90)
        plt.close(fig)
        return out


def cosine_lr(step: int, total: int, peak: float, warmup: int = 100, floor: float = 0.05) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))
