"""The Wan2.1 family: the DiT's architecture, named sizes, and each system's recipe.

Architecture (`WanConfig`) is what the weights fix; it is inferred from a checkpoint's
tensor shapes (model/wan/loader.py), except the head count, which Wan2.1 keeps at head
dim 128 unless a config file says otherwise. A recipe (`Recipe`) is what the weights do
not say: the denoising timesteps, the chunk, the attention window and sink, the
temporal position mode, the prompt-switch policy and the frame rate of one system
(Self-Forcing, CausVid, LongLive, ...), from its released inference configs
(../shared/research/wan-causal-family.md §3, §4).

Torch-free, like model/sampling.py, so that flags can be checked before torch loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from model.errors import check_field as _check


# --------------------------------------------------------------------------- the DiT


@dataclass
class WanConfig:
    """Wan2.1-T2V's DiT (names as in Wan's own `WanModel`)."""

    dim: int = 1536
    ffn_dim: int = 8960
    depth: int = 30
    heads: int = 12
    in_channels: int = 16
    out_channels: int = 16
    patch: tuple[int, int, int] = (1, 2, 2)  # (time, height, width)
    freq_dim: int = 256  # sinusoidal timestep features
    text_dim: int = 4096  # umT5-XXL's width
    text_len: int = 512  # prompts are zero-padded to this many tokens
    cross_attn_norm: bool = True  # the affine LayerNorm before cross-attention (`norm3`)
    eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_max_frames: int = 1024  # upstream's RoPE table: absolute positions stop here

    def __post_init__(self) -> None:
        c = "WanConfig"
        self.patch = tuple(self.patch)
        for name in ("dim", "ffn_dim", "depth", "heads", "in_channels", "out_channels", "freq_dim",
                     "text_dim", "text_len", "rope_max_frames"):
            _check(getattr(self, name) > 0, c, name, "must be positive", getattr(self, name))
        _check(len(self.patch) == 3 and min(self.patch) > 0, c, "patch", "must be 3 positive sizes",
               self.patch)
        _check(self.patch[0] == 1, c, "patch", "must have time size 1 (chunks are whole latent frames)",
               self.patch)
        _check(self.dim % self.heads == 0, c, "heads", f"must divide dim={self.dim}", self.heads)
        _check(self.head_dim % 2 == 0 and self.head_dim >= 6, c, "heads",
               "must leave an even head dim of at least 6", self.heads)
        _check(self.freq_dim % 2 == 0, c, "freq_dim", "must be even", self.freq_dim)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Channels of a head rotated by time, height, width: Wan's split, 44/42/42 at 128."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WanConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"WanConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


SIZES: dict[str, WanConfig] = {
    "1.3B": WanConfig(),
    "14B": WanConfig(dim=5120, ffn_dim=13824, depth=40, heads=40),
}


# --------------------------------------------------------------------------- recipes


def warped_sigmas(steps: tuple[float, ...], shift: float) -> tuple[float, ...]:
    """The noise levels a warped step list denoises at: each configured step (out of
    1000) picks its entry of the shifted 1000-entry table, as Self-Forcing's
    `warp_denoising_step` does; [1000, 750, 500, 250] at shift 5 -> 1, 0.9375, 0.833, 0.625."""
    out = []
    for t in steps:
        s = 1 - (1000 - round(t)) / 1000  # linspace(1, 0, 1001)[1000 - t]
        out.append(shift * s / (1 + (shift - 1) * s))
    return tuple(out)


@dataclass(frozen=True)
class Recipe:
    """How one system streams a Wan model. Frames are latent frames.

    `steps`: the denoising timesteps as its config lists them (out of 1000), `warp`:
    whether they index the shifted table (`warped_sigmas`) or are the noise levels
    themselves. The sampler predicts x0 at each level and re-noises it with fresh noise
    to the next one; after the last, a context pass at `context_t` writes the chunk's
    K/V. The attention sees `sink_frames` (the stream's first frames, kept), the last
    `window_frames` before the chunk, and the chunk. `positions`: "absolute" (the frame's
    index in the stream, as upstream trained; capped at the RoPE table's end) or "slot"
    (rank among the visible frames, no cap: LongLive's infinite mode). `switch`: what a
    prompt change does by default ("recache": the window's K/V recomputed under the new
    prompt, LongLive; "cut": only the text changes; "blend": the text embedding is
    interpolated over `blend_chunks`, Krea)."""

    name: str
    steps: tuple[float, ...] = (1000, 750, 500, 250)
    warp: bool = True
    shift: float = 5.0
    chunk_frames: int = 3
    window_frames: int = 18
    sink_frames: int = 0
    positions: str = "absolute"
    context_t: float = 0.0
    switch: str = "recache"
    blend_chunks: int = 4
    fps: int = 16
    note: str = ""

    def __post_init__(self) -> None:
        c = "Recipe"
        object.__setattr__(self, "steps", tuple(float(s) for s in self.steps))
        _check(len(self.steps) > 0 and all(0 < s <= 1000 for s in self.steps), c, "steps",
               "must be timesteps in (0, 1000]", self.steps)
        _check(list(self.steps) == sorted(self.steps, reverse=True), c, "steps", "must decrease",
               self.steps)
        _check(self.shift > 0, c, "shift", "must be positive", self.shift)
        for name in ("chunk_frames", "window_frames", "fps", "blend_chunks"):
            _check(getattr(self, name) > 0, c, name, "must be positive", getattr(self, name))
        _check(self.sink_frames >= 0, c, "sink_frames", "must be >= 0", self.sink_frames)
        for name in ("sink_frames", "window_frames"):
            _check(getattr(self, name) % self.chunk_frames == 0, c, name,
                   f"must be a multiple of chunk_frames={self.chunk_frames}", getattr(self, name))
        _check(self.positions in ("absolute", "slot"), c, "positions", "must be 'absolute' or 'slot'",
               self.positions)
        _check(self.switch in ("recache", "cut", "blend"), c, "switch", "must be 'recache', 'cut' or 'blend'",
               self.switch)
        _check(0 <= self.context_t < 1, c, "context_t", "must be in [0, 1)", self.context_t)

    @property
    def sigmas(self) -> tuple[float, ...]:
        """Noise levels in (0, 1] the chunk is denoised at, then 0."""
        levels = warped_sigmas(self.steps, self.shift) if self.warp else tuple(s / 1000 for s in self.steps)
        return (*levels, 0.0)

    def replace(self, **changes) -> "Recipe":
        """This recipe with some fields changed (flags), validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    # Self-Forcing (configs/self_forcing_dmd.yaml): 21-frame global cache, no sink, absolute
    # positions; trained for 81 video frames, streamed here with a rolling window
    Recipe("self-forcing", window_frames=18, sink_frames=0, positions="absolute"),
    # CausVid (configs/wan_causal_dmd.yaml): three levels, not warped, shift 8
    Recipe("causvid", steps=(1000, 757, 522), warp=False, shift=8.0, window_frames=18,
           positions="absolute"),
    Recipe("causvid-4step", shift=8.0, window_frames=18, positions="absolute"),
    # LongLive 1.0: local_attn_size 12 (sink 3 + 6 + the chunk), re-cache on a switch
    Recipe("longlive", window_frames=6, sink_frames=3, positions="absolute"),
    # LongLive's infinite mode: un-roped cache, positions by slot, no length cap
    Recipe("longlive-infinity", window_frames=6, sink_frames=3, positions="slot"),
    # Krea Realtime 14B: steps listed as levels; prompt changes blend over 4 chunks. Krea
    # rebuilds its 3-frame context every chunk (re-encoding the first frame); here the
    # context is the last chunk's cached K/V, at bounded positions
    Recipe("krea", steps=(1000, 937, 833, 625), warp=False, window_frames=3, sink_frames=0,
           positions="slot", switch="blend", note="context = the last chunk's K/V, not re-encoded"),
    # StreamDiffusionV2 (text-to-video use): chunks of one latent frame, 6 cached, sink 3
    Recipe("streamdiffusionv2", steps=(700, 500, 400, 200), warp=False, shift=8.0, chunk_frames=1,
           window_frames=3, sink_frames=3, positions="absolute"),
)}
DEFAULT_RECIPE = "self-forcing"
RECIPE_FILE = "livereel.json"  # a Wan folder's own settings (model/wan/folder.py)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]


# --------------------------------------------------------------------------- flags


def add_recipe_arguments(parser) -> None:
    """--recipe and the flags that override one of its fields, as every command that runs a
    Wan model takes them."""
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                        help=f"the sampling recipe of a Wan checkpoint (default {DEFAULT_RECIPE})")
    parser.add_argument("--positions", choices=("absolute", "slot"), default=None,
                        help="temporal positions: absolute (as trained, capped at the RoPE table) or slot "
                             "(by cache slot, no cap; default: the recipe's)")
    parser.add_argument("--window", type=int, default=None, metavar="FRAMES",
                        help="latent frames of the attention window before a chunk (default: the recipe's)")
    parser.add_argument("--sink", type=int, default=None, metavar="FRAMES",
                        help="latent frames kept from the stream's start (default: the recipe's)")
    parser.add_argument("--switch", choices=("recache", "cut", "blend"), default=None,
                        help="what a prompt change does (default: the recipe's)")


def recipe_from_args(args) -> Recipe:
    """The recipe named by --recipe with the override flags applied; ValueError names the
    bad flag."""
    recipe = get_recipe(args.recipe or DEFAULT_RECIPE)
    changes = {field: value for field, value in (("positions", args.positions), ("window_frames", args.window),
                                                  ("sink_frames", args.sink), ("switch", args.switch))
               if value is not None}
    try:
        return recipe.replace(**changes) if changes else recipe
    except ValueError as e:
        raise ValueError(f"--recipe {recipe.name} with {changes}: {e}") from None


# --------------------------------------------------------------------------- loading options


@dataclass
class WanOptions:
    """How to load a Wan folder: the command's flags (None: the folder's livereel.json,
    then the defaults)."""

    recipe: str | Recipe | None = None  # a name, or a whole recipe (a session log's)
    overrides: dict = field(default_factory=dict)  # recipe fields from flags
    decoder: str = "wan"  # "wan" (the Wan VAE) or "tae" (the tiny decoder)
    height: int | None = None
    width: int | None = None
    text_device: str = "cpu"
    offload: bool = False
    device: str = "auto"  # "auto": CUDA in bf16 where there is a GPU, else the CPU in fp32

    def resolve_recipe(self, settings: dict) -> Recipe:
        """The recipe: --recipe, else livereel.json's, else Self-Forcing's; then the file's
        field overrides, then the flags'."""
        if isinstance(self.recipe, Recipe):
            return self.recipe.replace(**self.overrides)
        name = self.recipe or settings.get("recipe") or DEFAULT_RECIPE
        if name not in RECIPES:
            raise ValueError(f"{RECIPE_FILE}: unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
        known = {f.name for f in fields(Recipe)} - {"name"}
        from_file = {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items() if k in known}
        try:
            return get_recipe(name).replace(**from_file, **self.overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"recipe {name} with {from_file | self.overrides}: {e}") from None


def add_wan_arguments(parser) -> None:
    """The flags of a Wan checkpoint folder, for every command that loads a model."""
    group = parser.add_argument_group("Wan checkpoints (a folder: README, 'Model families')")
    add_recipe_arguments(group)
    group.add_argument("--decoder", choices=("wan", "tae"), default="wan",
                       help="decode with the Wan VAE or the tiny decoder taew2_1 (faster, softer)")
    group.add_argument("--resolution", default=None, metavar="HxW",
                       help="frame size in pixels, multiples of 16 (default: livereel.json's, else 480x832)")
    group.add_argument("--text-device", choices=("cpu", "cuda"), default="cpu",
                       help="where umT5 encodes prompts (each prompt once; cached)")
    group.add_argument("--offload", action="store_true",
                       help="keep umT5 in CPU memory and move it to the GPU only to encode")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where the DiT and decoder run: auto = CUDA in bf16 when there is a GPU, else CPU fp32")


def wan_options_from_args(args) -> WanOptions:
    """WanOptions from `add_wan_arguments`' flags; ValueError names a bad flag."""
    height = width = None
    if args.resolution is not None:
        try:
            height, width = (int(v) for v in args.resolution.lower().split("x"))
        except ValueError:
            raise ValueError(f"--resolution must be HxW, e.g. 480x832 (got {args.resolution!r})") from None
        if height <= 0 or width <= 0 or height % 16 or width % 16:
            raise ValueError(f"--resolution must be positive multiples of 16 (got {args.resolution!r})")
    overrides = {k: v for k, v in (("positions", args.positions), ("window_frames", args.window),
                                   ("sink_frames", args.sink), ("switch", args.switch)) if v is not None}
    return WanOptions(recipe=args.recipe, overrides=overrides, decoder=args.decoder, height=height,
                      width=width, text_device=args.text_device, offload=args.offload, device=args.device)
