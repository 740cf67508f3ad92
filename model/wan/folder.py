"""A Wan checkpoint folder: the parts a user assembles from the upstream downloads.

    my-model/
      <the DiT>             self_forcing_dmd.pt | model.pt | longlive_base.pt |
                            krea-realtime-video-14b.safetensors | transformer/ (diffusers) | ...
      lora.pt               LongLive's LoRA (optional; merged at load)
      Wan2.1_VAE.pth        the VAE (or vae/, diffusers)
      taew2_1.pth           the tiny decoder (optional; --decoder tae)
      models_t5_umt5-xxl-enc-bf16.pth   the text encoder (or text_encoder/, transformers)
      google/umt5-xxl/      its tokenizer (or tokenizer/)
      livereel.json         optional: {"recipe": "longlive", "height": 480, "width": 832,
                            "heads": 12, and any recipe field to override}

`find_parts` says which parts a folder has and which are missing (`livereel inspect`
prints it); `load_wan_folder` builds the WanModel the server streams.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.errors import CheckpointError
from model.wan.config import RECIPE_FILE, WanOptions

VAE_NAMES = ("Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors", "vae")
TAE_NAMES = ("taew2_1.pth", "taew2_1.safetensors", "lighttaew2_1.pth", "tae")
TEXT_NAMES = ("models_t5_umt5-xxl-enc-bf16.pth", "umt5-xxl-enc-bf16.safetensors",
              "umt5-xxl-enc-fp8_e4m3fn.safetensors", "text_encoder")
TOKENIZER_NAMES = ("google/umt5-xxl", "tokenizer", "umt5-xxl")
LORA_NAMES = ("lora.pt", "lora.safetensors")
NOT_DIT = set(VAE_NAMES + TAE_NAMES + TEXT_NAMES + LORA_NAMES) | {"critic.pt"}
DIT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".ckpt")


@dataclass
class WanParts:
    """The files of a Wan folder (None: not there)."""

    folder: Path
    dit: Path | None = None
    vae: Path | None = None
    tae: Path | None = None
    text: Path | None = None
    tokenizer: Path | None = None
    lora: Path | None = None
    settings: dict = field(default_factory=dict)  # livereel.json

    def missing(self, decoder: str = "wan") -> list[str]:
        """What the folder lacks to stream, in words a user can act on."""
        need = []
        if self.dit is None:
            need.append("the DiT weights (e.g. self_forcing_dmd.pt, or a diffusers transformer/ folder)")
        if decoder == "wan" and self.vae is None:
            need.append("the Wan VAE: Wan2.1_VAE.pth (from Wan-AI/Wan2.1-T2V-1.3B), or a diffusers vae/ folder")
        if decoder == "tae" and self.tae is None:
            need.append("the tiny decoder: taew2_1.pth (madebyollin/taehv)")
        if self.text is None:
            need.append("the text encoder: models_t5_umt5-xxl-enc-bf16.pth (from Wan-AI/Wan2.1-T2V-1.3B), "
                        "or a transformers text_encoder/ folder")
        if self.tokenizer is None:
            need.append("the umT5 tokenizer: a google/umt5-xxl/ (or tokenizer/) folder")
        return need


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).exists()), None)


def find_parts(folder: str | Path) -> WanParts:
    """The parts of a Wan checkpoint folder; CheckpointError for a bad livereel.json or
    more than one candidate DiT."""
    from model.wan.loader import recognise

    folder = Path(folder)
    parts = WanParts(folder, vae=_first(folder, VAE_NAMES), tae=_first(folder, TAE_NAMES),
                     text=_first(folder, TEXT_NAMES), tokenizer=_first(folder, TOKENIZER_NAMES),
                     lora=_first(folder, LORA_NAMES))
    if (folder / RECIPE_FILE).is_file():
        try:
            parts.settings = json.loads((folder / RECIPE_FILE).read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder / RECIPE_FILE}: not JSON ({e})") from None
        if not isinstance(parts.settings, dict):
            raise CheckpointError(f"{folder / RECIPE_FILE}: must be a JSON object")
    if (folder / "transformer").is_dir():
        parts.dit = folder / "transformer"
        return parts
    candidates = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in DIT_SUFFIXES
                  and p.name not in NOT_DIT]
    dits = [p for p in candidates if recognise(p) == "wan"]
    if len(dits) > 1:
        raise CheckpointError(f"{folder}: more than one DiT ({', '.join(p.name for p in dits)}); keep one")
    parts.dit = dits[0] if dits else None
    return parts


def is_wan_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / n).exists() for n in VAE_NAMES + TAE_NAMES + TEXT_NAMES)


# --------------------------------------------------------------------------- loading


def load_wan_folder(folder: str | Path, options: WanOptions = WanOptions(), device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None):
    """The WanModel of a checkpoint folder, with its text encoder and decoder; on
    `device` (default: the options', where "auto" is CUDA when there is a GPU) in `dtype`
    (default: bf16 on CUDA, fp32 on the CPU)."""
    from model.wan.model import load_wan_model
    from model.wan.tae import load_tae
    from model.wan.text import load_umt5
    from model.wan.vae import load_wan_vae

    if device is None:
        device = options.device if options.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    parts = find_parts(folder)
    missing = parts.missing(options.decoder)
    if missing:
        raise CheckpointError(f"{parts.folder}: cannot stream this Wan folder; it lacks "
                              + "; ".join(missing))
    s = parts.settings
    try:
        recipe = options.resolve_recipe(s)
    except ValueError as e:
        raise CheckpointError(f"{parts.folder}: {e}") from None
    height = options.height or int(s.get("height", 480))
    width = options.width or int(s.get("width", 832))
    decoder = (load_wan_vae(parts.vae, device=device, dtype=dtype) if options.decoder == "wan"
               else load_tae(parts.tae, device=device, dtype=dtype))
    text = load_umt5(parts.text, tokenizer=parts.tokenizer, device=options.text_device, offload=options.offload)
    model = load_wan_model(parts.dit, recipe, lora=parts.lora, heads=s.get("heads"), height=height, width=width,
                           text_encoder=text, decoder=decoder, dtype=dtype, device=device)
    model.config.name = str(parts.folder)
    return model
