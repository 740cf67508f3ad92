"""The whole model (text encoder + DiT + VAE) and its checkpoints.

A livereel checkpoint is a folder: `config.json` (ModelConfig) and `model.safetensors`.
Loading checks every tensor's name and shape against the config and never unpickles
anything. Any other path is recognised by its keys and shapes: a Wan2.1 DiT in one of
its upstream layouts (model/wan/loader.py) is named, with what it needs to stream.
Names: "debug" is the tiny random-init preset; "default" (or any other name) is the
folder of that name under checkpoints/; anything else is a path.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from typing import TYPE_CHECKING

from cache.kv import CacheLayout
from model.camera import CameraCond, warp_frame
from model.conditioning import TextCond
from model.errors import CheckpointError
from model.config import ModelConfig, get_config
from model.dit import DiT
from model.prior import object_disk, pixel_prior, warped_prior, with_object_hint
from model.text import TextEncoder
from model.vae import VAE

if TYPE_CHECKING:
    from model.generate import Generator
    from model.sampling import Sampling

log = logging.getLogger(__name__)

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


class LiveReel(nn.Module):
    """livereel's own model family, behind the model protocol the Generator, the KV cache
    and the server use (model/generate.py `StreamModel`): the built-in text encoder, the
    camera-conditioned DiT with its warped prior, and the causal VAE."""

    camera = True  # camera motion and world positions condition the DiT
    closed_vocabulary = True  # trained on the world's captions: it knows the world's words only

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.text = TextEncoder(config.text)
        self.dit = DiT(config.dit)
        self.vae = VAE(config.vae)

    @property
    def warp_prior(self) -> bool:
        return self.config.dit.warp_prior

    def cache_layout(self) -> CacheLayout:
        return self.config.dit.cache_layout()

    def redraws_object(self, old: str, new: str) -> bool:
        """With the object hint, a switch that changes the object's colour or shape: its
        chunk takes no warped prior and the hint at the view's centre, as a stream's first
        chunk (the prior otherwise carries the old object into it; teacher-forced, a
        changed colour word was followed 6% with the prior, 50% without)."""
        if not self.config.dit.object_hint:
            return False
        from model.world import parse_prompt

        a, b = parse_prompt(old), parse_prompt(new)
        return any(a.get(k) != b.get(k) for k in ("colour", "shape"))

    def encode_prompt(self, prompts: list[str]) -> TextCond:
        text = self.text.encode(prompts)
        text.kv = self.dit.text_kv(text)
        return text

    def text_kv(self, text: TextCond) -> torch.Tensor:
        return self.dit.text_kv(text)

    def begin_chunk(self, cache, camera: CameraCond, first_frame: int | None = None, rows: int = 1) -> None:
        """The cache's read and the chunk's warped prior (model/prior.py) for `camera`;
        `rows` per stream (2 with guidance) hold the same frame: it is warped once."""
        d = self.config.dit
        prior = None
        if d.warp_prior and d.prior_space == "pixel":
            valid = cache.frame_valid[::rows]
            if bool(valid.any()):
                frame, frame_pos, pos = cache.frame[::rows], cache.frame_pos[::rows], camera.pos[::rows]
                picture = cache.shown_picture(frame) if d.prior_picture == "shown" else None
                prior = (self.pixel_prior(self.vae, frame, frame_pos, valid, pos, d.grid) if picture is None else
                         self.warped_prior(self.vae, picture, frame_pos, valid, pos, d.grid))
                if cache.places and prior.shape[0] == 1 and not bool(prior[:, :, -1].all()):
                    prior = self.remembered(cache.places, prior, valid, pos)
            else:  # nothing before (a stream's first chunk, a reset): the warp would cover nothing
                prior = cache.frame.new_zeros(valid.shape[0], camera.pos.shape[1], d.latent_channels + 1,
                                              *cache.frame.shape[-2:])
            if d.object_hint:  # a stream's first chunk (nothing to warp): draw the object at the centre
                prior = with_object_hint(prior, None if bool(valid.all()) else
                                         self.centre_hint(valid, prior.shape[1], cache.prompt))
            prior = prior.repeat_interleave(rows, 0)
        self.dit.begin_chunk(cache, camera, first_frame, prior=prior)

    def remembered(self, places: list[tuple[torch.Tensor, torch.Tensor]], prior: torch.Tensor,
                   valid: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """A stream's warped prior (1, F, C + 1, h, w) with the ground its camera `pos`
        (1, F, 3) uncovered filled from the spatial memory (`KVCache.remember`): the place
        that covers most of it, warped as the prior is (one more encode, on chunks where a
        place covers new ground); the rest stays uncovered, for the network to draw."""
        d = self.config.dit
        cover = prior[:, :, -1:]
        n = len(places)  # every place's cover of the new ground in one warp, newest first
        where = torch.cat([place for _, place in reversed(places)])  # (P, 3)
        seen = warp_frame(prior.new_zeros(n, 1, *prior.shape[-2:]), where, valid.expand(n),
                          pos.expand(n, -1, -1), d.grid)[:, :, -1:] > 0.999
        gain = ((1 - cover) * seen).sum((1, 2, 3, 4))
        i = int(gain.argmax())  # the first of equal gains: the latest view
        if not bool(gain[i] > 0):
            return prior
        picture, place = places[n - 1 - i]
        filled = self.warped_prior(self.vae, picture, place, valid, pos, d.grid)
        fill = (1 - cover) * filled[:, :, -1:]
        return torch.cat((prior[:, :, :-1] + fill * filled[:, :, :-1], cover + fill), 2)

    @property
    def remembers_places(self) -> bool:
        """Its priors fill uncovered ground from the spatial memory (`remembered`): a
        pixel-space warped prior (the Generator keeps the pictures, `KVCache.remember`)."""
        d = self.config.dit
        return d.warp_prior and d.prior_space == "pixel"

    def centre_hint(self, valid: torch.Tensor, frames: int, prompt: str = "") -> torch.Tensor:
        """The object hint (B, frames, h, w) of streams whose prior is `valid` (B,): a disk
        of the world's typical object size at the view's centre where nothing came before
        (valid 0), none elsewhere; with `DiTConfig.hint_shape`, the silhouette of the shape
        `prompt` names (at that shape's size) where it names one."""
        from model.world import object_coverage, parse_prompt, shape_radius, typical_object_radius

        d, down, size = self.config.dit, self.config.vae.downsample, self.config.image_size
        shape = parse_prompt(prompt).get("shape") if d.hint_shape else None
        if shape is not None:
            hint = object_coverage(shape, size / 2.0, size / 2.0, shape_radius(shape, size), d.latent_size, down)
            hint = hint.to(valid.device, valid.dtype)
        else:
            centre = torch.tensor(d.latent_size / 2.0, device=valid.device)
            radius = torch.tensor(typical_object_radius(size) / down, device=valid.device)
            hint = object_disk(centre, centre, radius, d.latent_size).to(valid.dtype)
        return (hint * (1 - valid)[:, None, None, None]).expand(-1, frames, -1, -1)

    # model/prior.py; an engine (model/engine.py) replaces the one the model streams with
    pixel_prior = staticmethod(pixel_prior)
    warped_prior = staticmethod(warped_prior)

    @property
    def prior_from_shown(self) -> bool:
        """Chunks warp the picture shown of the frame before them (`DiTConfig.prior_picture`):
        the Generator keeps the decode's pictures for it (`KVCache.show`)."""
        d = self.config.dit
        return d.warp_prior and d.prior_space == "pixel" and d.prior_picture == "shown"

    def evaluate(self, x: torch.Tensor, t: torch.Tensor, text: TextCond, camera: CameraCond, ctx,
                 kv_only: bool = False, context_rows: int = 0) -> torch.Tensor | None:
        return self.dit(x, t, text, camera, ctx, kv_only=kv_only, context_rows=context_rows)

    def generator(self, sampling: Sampling, seed: int = 0, memory: bool = True) -> Generator:
        """A Generator sampling this model as `sampling` says (steps, warm start, guidance,
        anchor, prompt rewrite)."""
        from model.generate import Generator

        return Generator(self, seed=seed, steps=sampling.steps, warm_start=sampling.warm_start,
                         guidance=float(sampling.guidance), memory=memory, anchor=sampling.anchor,
                         rewrite=sampling.rewrite)

    def sampling_record(self, sampling: Sampling) -> dict:
        """How its streams are sampled, as session logs record it (replay reads it back)."""
        return sampling.to_dict()

    def memory_plan(self) -> dict[str, int]:
        size = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
        element = next(self.parameters()).element_size()
        return {"text encoder": size(self.text), "DiT": size(self.dit), "VAE": size(self.vae),
                "KV cache per stream": self.cache_layout().nbytes(1, element)}

    def init_decode_state(self):
        return self.vae.init_shown_state()

    def decode(self, latents: torch.Tensor, state):
        """Latents in DiT scale (B, K, C, h, w) -> RGB in [-1, 1] (B, K, 3, H, W) shown and
        the VAE's next streaming state."""
        frames, _, state = self.decode_pictures(latents, state)
        return frames, state

    def decode_pictures(self, latents: torch.Tensor, state):
        """`decode`, plus the picture of the last frame the stream keeps (B, 3, H, W) (its
        next prior warps it, its spatial memory holds it): the first decoder's, which the
        DiT learned on, where a display decoder draws the frames shown (`VAE.decode_shown`)."""
        return self.vae.decode_shown(self.vae.from_dit(latents), state)


def build_model(config: ModelConfig, seed: int = 0) -> LiveReel:
    """A randomly initialised model, the same for the same seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LiveReel(config)
        if config.visible_init:
            visible_init(model)
        return model


@torch.no_grad()
def visible_init(model: LiveReel) -> None:
    """Re-initialise an untrained model so that its frames are visible: unit-gain decoder
    convolutions (a default-initialised decoder squashes everything to mid grey) and a
    strong conditioning path (so the picture is mostly a function of the prompt)."""
    dec = model.vae.decoder
    for m in dec.modules():
        if isinstance(m, nn.Conv2d) and m is not dec.mix.conv:
            nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
            nn.init.normal_(m.bias, std=0.3)
    dit = model.dit
    for m in [b.ada for b in dit.blocks] + [dit.final.ada, dit.final.linear, dit.text_pool]:
        nn.init.normal_(m.weight, std=1.0)
    if dit.prior_embed is not None:  # non-zero, so that tests see the warped-prior path work
        nn.init.normal_(dit.prior_embed.weight, std=0.05)


def resolve(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    named = CHECKPOINTS / str(name_or_path)
    if "/" not in str(name_or_path) and named.is_dir():
        return named
    return p


def load_model(name_or_path: str | Path = "default", device: str | torch.device = "cpu", wan=None):
    """livereel's own model (a preset name, a named folder under checkpoints/, a path), or
    a Wan checkpoint folder (model/wan/folder.py) loaded with `wan` (WanOptions: recipe,
    decoder, resolution; None: the folder's own settings)."""
    if str(name_or_path) == "debug":
        return build_model(get_config("debug")).to(device).eval()
    path = resolve(name_or_path)
    if not path.exists():
        hint = (" Train it with `livereel train` (see README), or use `--checkpoint debug`."
                if str(name_or_path) == "default" else "")
        raise CheckpointError(f"no checkpoint at {path}.{hint}")
    for recognises, load in FAMILIES.values():
        if recognises(path):
            return load(path, device, wan)
    _other_family(path)


def _livereel_folder(path: Path) -> Path | None:
    """The folder of a livereel checkpoint (`path` itself, or its model.safetensors or config.json)."""
    folder = path.parent if path.is_file() and path.name in ("model.safetensors", "config.json") else path
    return folder if (folder / "model.safetensors").is_file() else None


def _load_livereel(path: Path, device: str | torch.device, wan=None) -> LiveReel:
    path = _livereel_folder(path)
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    try:
        config = ModelConfig.from_dict(json.loads(cfg_file.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing config.json") from None
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: bad config: {e}") from None
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: unreadable safetensors file: {e}") from None
    model = LiveReel(config)
    check_state(model, state, weights)
    model.load_state_dict(state, strict=True)
    log.info("loaded %s (%s, %.1fM parameters)", path, config.name, n_params(model) / 1e6)
    return model.to(device).eval()


def _wan_folder(path: Path) -> bool:
    from model.wan.folder import is_wan_folder

    return is_wan_folder(path)


def _load_wan(path: Path, device: str | torch.device, wan=None):
    """A Wan checkpoint folder; where it runs is WanOptions.device (CUDA where there is one)."""
    from model.wan.folder import WanOptions, load_wan_folder

    return load_wan_folder(path, wan or WanOptions())


# family -> (is this path one of its checkpoints?, load it (path, device, Wan options));
# each family's code is imported only when its checkpoint is loaded
FAMILIES = {
    "livereel": (lambda path: _livereel_folder(path) is not None, _load_livereel),
    "wan": (_wan_folder, _load_wan),
}


def _other_family(path: Path) -> None:
    """Raise a CheckpointError that says what a checkpoint of another family is, and what
    it needs: a Wan2.1 DiT (any upstream layout) is recognised from its keys and shapes."""
    from model.wan.loader import describe, recognise

    try:
        family, refused = recognise(path), None
    except CheckpointError as e:  # unreadable as a Wan DiT (truncated, a pickle with code, ...)
        family, refused = None, e
    if family == "wan":
        info = describe(path)
        raise CheckpointError(
            f"{path}: a Wan2.1 DiT ({info.layout}, {info.size}, {info.params / 1e9:.2f}B parameters). "
            "Streaming it needs the Wan VAE and the umT5-XXL text encoder beside it: put them in one "
            "folder and give the folder (README, 'Model families': a checkpoint folder; `livereel inspect` says what "
            "a folder lacks)")
    files = [path] if path.is_file() else list(path.iterdir())
    pickled = [f.name for f in files if f.suffix in PICKLE_SUFFIXES]
    if path.is_dir() and (path / "config.json").is_file():  # a livereel folder without its weights
        extra = f" (found {pickled}: pickled checkpoints are never loaded)" if pickled else ""
        raise CheckpointError(f"{path}: missing model.safetensors{extra}")
    if pickled:
        why = f"; as Wan2.1 weights it was refused too: {refused}" if refused else ""
        raise CheckpointError(f"{path}: pickled checkpoints are never loaded as livereel models (their weights "
                              f"are safetensors){why}")
    if refused is not None:
        raise refused
    raise CheckpointError(f"{path}: not a checkpoint of a known family (a livereel folder with config.json "
                          "and model.safetensors, or a Wan2.1 DiT in one of its upstream layouts)")


def check_state(model: nn.Module, state: dict[str, torch.Tensor], where: Path | str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f"{where}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        raise CheckpointError(f"{where}: unexpected tensors {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''}")
    for name, t in expected.items():
        if state[name].shape != t.shape:
            raise CheckpointError(f"{where}: tensor {name} has shape {tuple(state[name].shape)}, "
                                  f"the config needs {tuple(t.shape)}")
        if not torch.isfinite(state[name]).all():
            raise CheckpointError(f"{where}: tensor {name} holds NaN or inf")


def save_model(model: LiveReel, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path / "model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(path / "model.safetensors")
    return path


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
