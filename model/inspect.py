"""`livereel inspect PATH`: what a checkpoint holds and what else it needs to run.

Reads shapes only (safetensors headers, pickle records on the meta device), so a 30 GB
checkpoint is described at once and without memory. Families: livereel's own folders
(config.json + model.safetensors) and the Wan2.1 DiT in any upstream layout
(model/wan/loader.py). Anything else, or a file that cannot be read, is one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from safetensors import SafetensorError, safe_open

from model.checkpoint import CheckpointError, resolve
from model.config import ModelConfig
from model.wan.config import DEFAULT_RECIPE, RECIPES
from model.wan.folder import WanParts, find_parts, is_wan_folder
from model.wan.loader import describe, load_wan, lora_summary, read_tensors, recognise

PARTS = ("text", "dit", "vae")  # livereel's top-level modules

# a word in the file's path -> the recipe it suggests (the weights do not say)
RECIPE_HINTS = (("longlive", "longlive"), ("krea", "krea"), ("causvid", "causvid"),
                ("streamdiffusion", "streamdiffusionv2"), ("self_forcing", "self-forcing"),
                ("self-forcing", "self-forcing"))

WAN_NEEDS = (
    "to stream it, a folder with it and the other parts (README, 'Model families': a checkpoint folder): "
    + "; ".join(WanParts(Path(".")).missing()[1:]),
)


def _header_keys(weights: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({e})") from None


def _livereel_folder(path: Path) -> Path | None:
    """The folder when `path` is (or is the weights of) a livereel checkpoint folder."""
    folder = path if path.is_dir() else path.parent
    if not path.is_dir() and path.name != "model.safetensors":
        return None
    if not ((folder / "config.json").is_file() and (folder / "model.safetensors").is_file()):
        return None
    keys = _header_keys(folder / "model.safetensors")
    return folder if keys and all(k.split(".")[0] in PARTS for k in keys) else None


def livereel_report(folder: Path) -> dict:
    try:
        config = ModelConfig.from_dict(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: bad config ({e})") from None
    shapes = _header_keys(folder / "model.safetensors")
    parts = {p: sum(math.prod(s) for k, s in shapes.items() if k.split(".")[0] == p) for p in PARTS}
    return {"path": str(folder), "family": "livereel", "layout": "livereel folder (config.json + model.safetensors)",
            "config_name": config.name, "params": sum(parts.values()), "params_by_part": parts,
            "display_decoder": sum(math.prod(s) for k, s in shapes.items() if k.startswith("vae.display.")),
            "image_size": config.image_size, "fps": config.fps, "needs": []}


def suggest_recipe(path: Path) -> str:
    words = str(path).lower()
    return next((recipe for word, recipe in RECIPE_HINTS if word in words), DEFAULT_RECIPE)


def recipe_table() -> dict[str, dict]:
    return {name: {"steps": list(r.steps), "warp": r.warp, "shift": r.shift, "chunk": r.chunk_frames,
                   "window": r.window_frames, "sink": r.sink_frames, "positions": r.positions,
                   "switch": r.switch, "fps": r.fps} for name, r in RECIPES.items()}


def wan_report(path: Path, heads: int | None = None, lora: Path | None = None) -> dict:
    info = describe(path, heads)
    recipe = suggest_recipe(path)
    needs = list(WAN_NEEDS)
    lora_info = None
    if lora is not None:
        load_wan(path, lora=lora, device="meta", heads=heads)  # every target exists and fits
        lora_info = {"path": str(lora), **lora_summary(read_tensors(lora, "meta"))}
    elif recipe.startswith("longlive"):
        needs.append("LongLive's LoRA (lora.pt, rank 256): pass it with --lora; the base alone is not "
                     "the released model")
    return {"path": str(path), "family": "wan", **info.to_dict(), "recipe": recipe,
            "recipes": recipe_table(), "lora": lora_info, "needs": needs}


def wan_folder_report(folder: Path, heads: int | None = None, lora: Path | None = None) -> dict:
    """A Wan checkpoint folder: its DiT described, each part found or missing."""
    parts = find_parts(folder)
    found = {name: str(getattr(parts, name)) if getattr(parts, name) else None
             for name in ("dit", "lora", "vae", "tae", "text", "tokenizer")}
    if parts.dit is None:
        report = {"path": str(folder), "family": "wan", "layout": "Wan checkpoint folder, no DiT"}
    else:
        report = wan_report(parts.dit, heads or parts.settings.get("heads"), lora or parts.lora)
        report["layout"] = f"Wan checkpoint folder; DiT: {report['layout']}"
        if "recipe" in parts.settings:
            report.update(recipe=parts.settings["recipe"], recipe_from="livereel.json")
    report.update(path=str(folder), parts=found, settings=parts.settings,
                  needs=parts.missing("wan" if parts.vae or not parts.tae else "tae"))
    return report


def inspect(name_or_path: str | Path, heads: int | None = None, lora: Path | None = None) -> dict:
    """The report on one checkpoint; CheckpointError when it cannot be described."""
    path = resolve(name_or_path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if lora is not None and not Path(lora).exists():
        raise CheckpointError(f"{lora}: no such LoRA file")
    folder = _livereel_folder(path)
    if folder is not None:
        return livereel_report(folder)
    if is_wan_folder(path):
        return wan_folder_report(path, heads, lora)
    if recognise(path) == "wan":
        return wan_report(path, heads, lora)
    raise CheckpointError(f"{path}: unknown checkpoint family: neither a livereel folder (config.json + "
                          f"model.safetensors) nor a Wan2.1 DiT")


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def format_report(r: dict) -> str:
    lines = [f"path      {r['path']}", f"family    {r['family']}", f"layout    {r['layout']}"]
    if "parts" in r:
        lines += [f"parts     {name:<10} {where or '-'}" for name, where in r["parts"].items()]
        if r["settings"]:
            lines.append(f"settings  {json.dumps(r['settings'])} (livereel.json)")
    if r["family"] == "livereel":
        parts = ", ".join(f"{p} {_count(n)}" for p, n in r["params_by_part"].items())
        lines += [f"config    {r['config_name']} ({r['image_size']} px, {r['fps']} fps)",
                  f"params    {_count(r['params'])} ({r['params']:,}: {parts})"]
        if r["display_decoder"]:
            lines.append(f"display   a display decoder ({_count(r['display_decoder'])} of the VAE's) draws the frames "
                         "shown; the first decoder draws the picture the stream keeps")
        return "\n".join(lines)
    c = r["config"]
    dtypes = ", ".join(f"{d} {n / r['params']:.0%}" for d, n in r["dtypes"].items())
    lines += [
        f"size      {r['size']}",
        f"params    {_count(r['params'])} ({r['params']:,}; stored as {dtypes})",
        f"config    dim {c['dim']}, depth {c['depth']}, heads {c['heads']} (from {r['heads_from']}), "
        f"ffn {c['ffn_dim']}, in/out channels {c['in_channels']}/{c['out_channels']}, "
        f"patch {'x'.join(map(str, c['patch']))}, text dim {c['text_dim']}, freq dim {c['freq_dim']}, "
        f"cross-attn norm {'yes' if c['cross_attn_norm'] else 'no'}",
    ]
    if r["ignored"]:
        lines.append(f"ignored   {', '.join(r['ignored'])} (other entries of the training file)")
    if r["lora"]:
        lines.append(f"lora      {r['lora']['path']}: rank {r['lora']['rank']}, {r['lora']['targets']} targets")
    lines.append(f"recipe    {r['recipe']} ({r.get('recipe_from', 'suggested from the file name; the weights do not say')})")
    lines.append("recipes   name               steps                      chunk window sink positions switch   fps")
    for name, t in r["recipes"].items():
        steps = ",".join(f"{s:g}" for s in t["steps"]) + (" warped" if t["warp"] else "")
        lines.append(f"          {name:<18} {steps:<26} {t['chunk']:>5} {t['window']:>6} {t['sink']:>4} "
                     f"{t['positions']:<9} {t['switch']:<8} {t['fps']:>3}")
    lines.append("needs     " + ("\n          ".join(f"- {n}" for n in r["needs"]) or "nothing more: it streams"))
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="checkpoint: a file or folder in any Wan2.1 layout, a livereel folder, "
                                "or a name under checkpoints/ (e.g. default)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--heads", type=int, default=None,
                   help="attention heads, when neither a config.json nor dim / 128 gives them")
    p.add_argument("--lora", type=Path, default=None,
                   help="a LoRA file (LongLive's lora.pt) to check against the weights and describe")


def main(args: argparse.Namespace) -> int:
    try:
        report = inspect(args.path, args.heads, args.lora)
    except CheckpointError as e:
        print(f"livereel inspect: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
