"""Wan2.1 DiT checkpoints, in any upstream layout, read into one naming.

Layouts read (../shared/research/wan-causal-family.md §1.3, §4, §10.1):
  - training pickles `.pt`/`.pth`/`.bin`/`.ckpt`: Self-Forcing and Rolling Forcing
    ({generator_ema, generator, critic}), CausVid, LongLive's base and StreamDiffusionV2
    ({generator}); keys `model.blocks.0...`, with `_fsdp_wrapped_module.` inside some;
  - one `.safetensors` file: Krea (`model.` prefix), ComfyUI (`model.diffusion_model.`),
    Wan / ComfyUI repackaged files (no prefix), or diffusers-named;
  - sharded weights: a `*.safetensors.index.json` (or `.bin.index.json`) and its shards;
  - a diffusers folder (a pipeline's `transformer/`, or the transformer folder itself:
    config.json + diffusion_pytorch_model*.safetensors) and a Wan base folder
    (config.json with `num_heads` + diffusion_pytorch_model.safetensors);
  - LongLive's LoRA (`lora.pt`): PEFT keys, merged into the weights at load.

Nothing in a file is executed: pickles go through `torch.load(weights_only=True)`, which
refuses any global that is not a tensor type; safetensors holds no code. With
`device="meta"` only shapes and dtypes are read (safetensors headers, the pickle's
records), so describing a 5.7 GB file takes no time and no memory.

The one naming is Wan's own (`WanModel`, model/wan/dit.py):
  patch_embedding.{weight,bias}                   (dim, in_ch, 1, 2, 2)
  text_embedding.{0,2}, time_embedding.{0,2}      Linear (dim, text_dim | freq_dim), (dim, dim)
  time_projection.1                               Linear (6 * dim, dim)
  blocks.N.{self_attn,cross_attn}.{q,k,v,o}        Linear (dim, dim)
  blocks.N.{self_attn,cross_attn}.norm_{q,k}.weight  (dim,) RMSNorm across heads
  blocks.N.norm3.{weight,bias}                    cross-attention LayerNorm (cross_attn_norm)
  blocks.N.ffn.{0,2}                              Linear (ffn_dim, dim), (dim, ffn_dim)
  blocks.N.modulation                             (1, 6, dim)
  head.head, head.modulation                      Linear (out_ch * 4, dim), (1, 2, dim)
diffusers' names map onto these (`_DIFFUSERS_TOP`, `_DIFFUSERS_BLOCK`), its norm2 being
Wan's norm3 (the FFN's LayerNorm has no weights in either).

`load_wan` then permutes, head by head, the rows of each block's self-attention q and k
(weight, bias) and norm_q / norm_k weights into livereel's half-split RoPE layout
(`ROPE_PERMUTED`, model/wan/rope.py); cross-attention is left as stored.

API:
  read_tensors(path, device) -> the file's top-level dict (nested for training pickles)
  unwrap(obj) -> the generator's flat dict of tensors
  normalise(state) -> the same tensors in the one naming
  infer_config(state, config_json, heads) -> WanConfig, every tensor checked against it
  expected_shapes(cfg), n_params(cfg)
  merge_lora(state, lora, alpha) -> state with W += (alpha / r) * B @ A
  load_wan(path, lora, device, heads) -> (WanConfig, state), q/k permuted
  recognise(path) -> "wan" | None;  describe(path, heads) -> WanInfo (layout, size, params)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from model.errors import CheckpointError
from model.wan.config import SIZES, WanConfig
from model.wan.rope import to_half_split

log = logging.getLogger(__name__)

HEAD_DIM = 128  # every released Wan2.1 model; the head count is not in the shapes
PICKLES = (".pt", ".pth", ".bin", ".ckpt")
NESTED = ("generator_ema", "generator", "model", "state_dict")  # preferred first
PREFIXES = ("module.", "model.diffusion_model.", "diffusion_model.", "base_model.model.", "model.")
INSIDE = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")  # wrappers, anywhere
ROPE_PERMUTED = ("self_attn.q.weight", "self_attn.q.bias", "self_attn.k.weight", "self_attn.k.bias",
                 "self_attn.norm_q.weight", "self_attn.norm_k.weight")  # under blocks.N.

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
           "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class WanCheckpointError(CheckpointError):
    """A Wan checkpoint that cannot be loaded; the message names what is missing,
    unknown or mis-shaped."""


@contextlib.contextmanager
def _about(path: Path | str) -> Iterator[None]:
    """Prefix errors raised inside with the file they are about (once)."""
    try:
        yield
    except WanCheckpointError as e:
        if str(e).startswith(str(path)):
            raise
        raise WanCheckpointError(f"{path}: {e}") from None


def _names(keys, n: int = 5) -> str:
    keys = list(keys)
    return f"{keys[:n]}{' ...' if len(keys) > n else ''}"


def _natural(key: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split("."))


# --------------------------------------------------------------------------- reading


def _index_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WanCheckpointError(f"{index}: unreadable shard index ({e!r})") from None
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [s.name for s in shards if not s.exists()]
    if missing:
        raise WanCheckpointError(f"{index}: missing shards {_names(missing)}")
    return shards


def weight_files(path: Path) -> list[Path] | None:
    """The files holding a checkpoint's DiT, or None when `path` holds none we read."""
    if path.is_dir():
        if (path / "transformer").is_dir():  # a diffusers pipeline folder
            path = path / "transformer"
        for pattern in ("*.safetensors.index.json", "*.bin.index.json"):
            indexes = sorted(path.glob(pattern))
            if len(indexes) == 1:
                return _index_shards(indexes[0])
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if (path / name).is_file():
                return [path / name]
        single = sorted(path.glob("*.safetensors"))
        return single if len(single) == 1 else None
    if path.name.endswith(".index.json"):
        return _index_shards(path)
    if path.suffix in (".safetensors", *PICKLES):
        return [path]
    return None


def _read_safetensors(path: Path, device: str) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu" if device == "meta" else device) as f:
            if device != "meta":
                return {k: f.get_tensor(k) for k in f.keys()}
            out = {}
            for k in f.keys():
                s = f.get_slice(k)
                if s.get_dtype() not in _DTYPES:
                    raise WanCheckpointError(f"{path}: tensor {k} has unsupported dtype {s.get_dtype()}")
                out[k] = torch.empty(s.get_shape(), dtype=_DTYPES[s.get_dtype()], device="meta")
            return out
    except (SafetensorError, OSError) as e:
        raise WanCheckpointError(f"{path}: unreadable safetensors file ({e})") from None


def _read_pickle(path: Path, device: str) -> dict:
    """torch.load with weights_only: tensors and containers, no other global is built."""
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it was not written with
            warnings.simplefilter("ignore", UserWarning)
            try:
                obj = torch.load(path, map_location=device, weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                obj = torch.load(path, map_location=device, weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        code = [ln for ln in lines if "GLOBAL" in ln or "global" in ln.lower()]
        after = [lines[i + 1] for i, ln in enumerate(lines[:-1]) if ln.endswith("WeightsUnpickler error:")]
        why = code[0] if code else after[0] if after else lines[-1] if lines else repr(e)
        raise WanCheckpointError(f"{path}: refused: not a plain pickle of tensors, it may hold code ({why}); "
                                 "nothing was executed") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as e:
        first = str(e).splitlines()[0] if str(e) else repr(e)
        raise WanCheckpointError(f"{path}: unreadable torch file, truncated or corrupt ({first})") from None
    if not isinstance(obj, Mapping):
        raise WanCheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    return dict(obj)


def read_tensors(path: str | Path, device: str = "cpu") -> dict:
    """The file's (or folder's, or shards') top-level dict: tensors, or for a training
    pickle, dicts of them by role (`unwrap` picks one). `device="meta"` reads shapes only."""
    path = Path(path)
    if not path.exists():
        raise WanCheckpointError(f"{path}: no such file or folder")
    files = weight_files(path)
    if files is None:
        raise WanCheckpointError(
            f"{path}: no DiT weights here (expected a .safetensors, .pt/.pth/.bin/.ckpt or *.index.json "
            f"file, or a folder with diffusion_pytorch_model*.safetensors or a transformer/ subfolder)")
    out: dict = {}
    for f in files:
        out.update(_read_safetensors(f, device) if f.suffix == ".safetensors" else _read_pickle(f, device))
    return out


def read_config_json(path: str | Path) -> dict | None:
    """The DiT's config.json (Wan's `WanModel` or diffusers' `WanTransformer3DModel`)
    from a folder, the folder of an index or weights file, or a pipeline's transformer/."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if (folder / "transformer").is_dir():
        folder = folder / "transformer"
    file = folder / "config.json"
    if not file.is_file():
        return None
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise WanCheckpointError(f"{file}: unreadable config ({e})") from None
    wan_like = isinstance(cfg, dict) and (cfg.get("_class_name") in ("WanModel", "WanTransformer3DModel")
                                          or "num_heads" in cfg or "num_attention_heads" in cfg)
    return cfg if wan_like else None  # someone else's config.json (livereel's, a VAE's)


# --------------------------------------------------------------------------- naming


def _picked(obj: Mapping) -> str | None:
    return next((k for k in NESTED if isinstance(obj.get(k), Mapping)), None)


def unwrap(obj: Mapping) -> dict[str, Tensor]:
    """The generator's flat dict: `generator_ema`, else `generator`, else `model` (else
    `state_dict`), else the dict itself; critic*, *_lora and non-tensor entries dropped."""
    key = _picked(obj)
    inner = obj[key] if key else obj
    return {k: v for k, v in inner.items() if isinstance(v, Tensor)
            and not k.split(".")[0].startswith("critic") and not k.split(".")[0].endswith("_lora")}


def strip(key: str) -> str:
    """A key without wrapper names (FSDP, torch.compile) and training / ComfyUI / PEFT prefixes."""
    for s in INSIDE:
        key = key.replace(s, "")
    while True:
        p = next((p for p in PREFIXES if key.startswith(p)), None)
        if p is None:
            return key
        key = key[len(p):]


_INTERNAL = re.compile(r"""
    patch_embedding\.(weight|bias)
  | (text|time)_embedding\.[02]\.(weight|bias)
  | time_projection\.1\.(weight|bias)
  | blocks\.\d+\.(self_attn|cross_attn)\.([qkvo]\.(weight|bias)|norm_[qk]\.weight)
  | blocks\.\d+\.(norm3|ffn\.0|ffn\.2)\.(weight|bias)
  | blocks\.\d+\.modulation
  | head\.head\.(weight|bias)
  | head\.modulation""", re.X)

# diffusers name (prefix) -> Wan's. Top level, then inside blocks.N.
_DIFFUSERS_TOP = {
    "condition_embedder.time_embedder.linear_1.": "time_embedding.0.",
    "condition_embedder.time_embedder.linear_2.": "time_embedding.2.",
    "condition_embedder.text_embedder.linear_1.": "text_embedding.0.",
    "condition_embedder.text_embedder.linear_2.": "text_embedding.2.",
    "condition_embedder.time_proj.": "time_projection.1.",
    "proj_out.": "head.head.",
    "scale_shift_table": "head.modulation",
    "patch_embedding.": "patch_embedding.",
}
_DIFFUSERS_BLOCK = {
    **{f"attn{i}.{d}.": f"{w}.{o}." for i, w in ((1, "self_attn"), (2, "cross_attn"))
       for d, o in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o"),
                    ("norm_q", "norm_q"), ("norm_k", "norm_k"))},
    "norm2.": "norm3.",  # the cross-attention LayerNorm: swapped names
    "ffn.net.0.proj.": "ffn.0.",
    "ffn.net.2.": "ffn.2.",
    "scale_shift_table": "modulation",
}
_DIFFUSERS_HINT = re.compile(r"condition_embedder\.|proj_out\.|scale_shift_table|blocks\.\d+\.attn[12]\.")
_I2V_HINT = re.compile(r"k_img|v_img|norm_k_img|img_emb\.|add_k_proj|add_v_proj|norm_added_k|image_embedder")
_BLOCK = re.compile(r"(blocks\.\d+\.)(.*)")


def _rename(key: str, table: dict[str, str]) -> str | None:
    p = next((p for p in table if key.startswith(p)), None)
    return None if p is None else table[p] + key[len(p):]


def _from_diffusers(key: str) -> str | None:
    m = _BLOCK.fullmatch(key)
    rest = _rename(m[2], _DIFFUSERS_BLOCK) if m else _rename(key, _DIFFUSERS_TOP)
    new = None if rest is None else (m[1] + rest if m else rest)
    return new if new and _INTERNAL.fullmatch(new) else None


def is_diffusers(keys) -> bool:
    return any(_DIFFUSERS_HINT.match(k) for k in keys)


def normalise(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors under Wan's names; prefixes stripped, diffusers names mapped. Unknown
    keys (up to 5 named) and image-to-video models are errors."""
    stripped = {strip(k): k for k in state}
    if len(stripped) < len(state):
        twice = next(k for k in stripped if sum(strip(o) == k for o in state) > 1)
        raise WanCheckpointError(f"two tensors are named {twice} once prefixes are stripped: "
                                 f"{sorted(o for o in state if strip(o) == twice)}")
    i2v = [k for k in stripped if _I2V_HINT.search(k)]
    if i2v:
        raise WanCheckpointError(f"image-to-video Wan (image keys such as {i2v[0]}): not supported yet")
    diffusers = is_diffusers(stripped)
    out, unknown = {}, []
    for key, old in stripped.items():
        new = _from_diffusers(key) if diffusers else (key if _INTERNAL.fullmatch(key) else None)
        if new is None:
            unknown.append(old)
        elif new in out:
            raise WanCheckpointError(f"two tensors map to {new} (one is {old})")
        else:
            out[new] = state[old]
    if unknown:
        hint = ""
        if all(".lora_" in k for k in unknown):
            hint = " (a LoRA file: pass it with its base model as --lora)"
        naming = "diffusers" if diffusers else "Wan"
        raise WanCheckpointError(f"{len(unknown)} tensors unknown to a Wan2.1 DiT ({naming} naming): "
                                 f"{_names(sorted(unknown, key=_natural))}{hint}")
    return out


# --------------------------------------------------------------------------- config


def expected_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Wan DiT with this config, under Wan's names (the DiT module's
    state_dict keys; RoPE tables are not weights)."""
    d, f = cfg.dim, cfg.ffn_dim
    s: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, cfg.in_channels, *cfg.patch), "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, cfg.text_dim), "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d), "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, cfg.freq_dim), "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d), "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d), "time_projection.1.bias": (6 * d,),
    }
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        for attn in ("self_attn", "cross_attn"):
            for p in "qkvo":
                s[f"{b}{attn}.{p}.weight"], s[f"{b}{attn}.{p}.bias"] = (d, d), (d,)
            s[f"{b}{attn}.norm_q.weight"] = s[f"{b}{attn}.norm_k.weight"] = (d,)
        if cfg.cross_attn_norm:
            s[f"{b}norm3.weight"] = s[f"{b}norm3.bias"] = (d,)
        s[f"{b}ffn.0.weight"], s[f"{b}ffn.0.bias"] = (f, d), (f,)
        s[f"{b}ffn.2.weight"], s[f"{b}ffn.2.bias"] = (d, f), (d,)
        s[f"{b}modulation"] = (1, 6, d)
    s["head.head.weight"] = (cfg.out_channels * math.prod(cfg.patch), d)
    s["head.head.bias"] = (cfg.out_channels * math.prod(cfg.patch),)
    s["head.modulation"] = (1, 2, d)
    return s


def n_params(cfg: WanConfig) -> int:
    return sum(math.prod(shape) for shape in expected_shapes(cfg).values())


def _heads(dim: int, config_json: dict | None) -> tuple[int, str]:
    c = config_json or {}
    if "num_heads" in c:
        return int(c["num_heads"]), "config.json"
    if "num_attention_heads" in c:
        heads, head_dim = int(c["num_attention_heads"]), int(c.get("attention_head_dim", HEAD_DIM))
        if heads * head_dim != dim:
            raise WanCheckpointError(f"config.json: num_attention_heads {heads} x attention_head_dim "
                                     f"{head_dim} != the weights' dim {dim}")
        return heads, "config.json"
    if dim % HEAD_DIM:
        raise WanCheckpointError(f"cannot tell the head count: dim {dim} is not a multiple of Wan's head "
                                 f"dim {HEAD_DIM} and there is no config.json (give the heads, e.g. --heads)")
    return dim // HEAD_DIM, f"dim / {HEAD_DIM}"


def check_shapes(state: Mapping[str, Tensor], cfg: WanConfig) -> None:
    """Every tensor the config needs is there with its shape, and nothing else."""
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(state), key=_natural)
    extra = sorted(set(state) - set(want), key=_natural)
    wrong = [f"{k} {tuple(state[k].shape)} (needs {want[k]})" for k in sorted(want, key=_natural)
             if k in state and tuple(state[k].shape) != want[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors {_names(missing)}")
    if wrong:
        more = " ..." if len(wrong) > 5 else ""
        problems.append(f"{len(wrong)} mis-shaped tensors: {'; '.join(wrong[:5])}{more}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors {_names(extra)}")
    if problems:
        raise WanCheckpointError(f"does not match the inferred {_summary(cfg)}: {'; '.join(problems)}")


def _summary(cfg: WanConfig) -> str:
    return f"config (dim {cfg.dim}, depth {cfg.depth}, heads {cfg.heads}, ffn {cfg.ffn_dim})"


def infer_config(state: Mapping[str, Tensor], config_json: dict | None = None,
                 heads: int | None = None) -> WanConfig:
    """The architecture from the tensors' shapes (meta tensors do), the head count from
    `heads`, else config.json, else dim / 128; then every tensor is checked against it."""
    need = ["patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
            "blocks.0.ffn.0.weight", "head.head.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise WanCheckpointError(f"missing tensors {missing}: cannot infer the architecture")
    pe = tuple(state["patch_embedding.weight"].shape)
    if len(pe) != 5:
        raise WanCheckpointError(f"patch_embedding.weight has shape {pe}, needs (dim, in_ch, t, h, w)")
    dim, patch = pe[0], pe[2:]
    head_rows = state["head.head.weight"].shape[0]
    if head_rows % math.prod(patch):
        raise WanCheckpointError(f"head.head.weight has {head_rows} rows, not a multiple of the patch {patch}")
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    c = config_json or {}
    for name, got in (("dim", dim), ("num_layers", depth)):  # a config.json that disagrees
        if name in c and int(c[name]) != got:
            raise WanCheckpointError(f"config.json says {name} {c[name]}, the weights have {got}")
    kwargs = dict(
        dim=dim, in_channels=pe[1], patch=patch, out_channels=head_rows // math.prod(patch), depth=depth,
        ffn_dim=state["blocks.0.ffn.0.weight"].shape[0],
        text_dim=state["text_embedding.0.weight"].shape[1],
        freq_dim=state["time_embedding.0.weight"].shape[1],
        cross_attn_norm="blocks.0.norm3.weight" in state,
        heads=heads or _heads(dim, config_json)[0],
    )
    for name in ("eps", "text_len"):
        if name in c:
            kwargs[name] = c[name]
    try:
        cfg = WanConfig(**kwargs)
    except (ValueError, TypeError) as e:
        raise WanCheckpointError(f"not a valid Wan config: {e}") from None
    check_shapes(state, cfg)
    return cfg


def size_name(cfg: WanConfig) -> str:
    return next((name for name, c in SIZES.items() if c == cfg), "custom")


# --------------------------------------------------------------------------- LoRA

_LORA_KEY = re.compile(r"(?P<target>.+)\.lora_(?P<ab>[AB])(\.default)?\.weight")


def merge_lora(state: Mapping[str, Tensor], lora: Mapping, alpha: float | None = None
               ) -> dict[str, Tensor]:
    """`state` (Wan's names, before the RoPE permutation) with each LoRA pair merged:
    W += (alpha / r) * B @ A, r = A's rows; alpha = r (scale 1, LongLive's alpha = r =
    256) unless given. PEFT keys `...{q,k,v,o,ffn.0,ffn.2}.lora_{A,B}.weight`, with or
    without `base_model.model.` / `model.`, nested under `generator_lora` or not. Computed
    in float32, stored back in W's dtype."""
    if isinstance(lora.get("generator_lora"), Mapping):
        lora = lora["generator_lora"]
    keys = {strip(k): k for k, v in lora.items() if isinstance(v, Tensor)}
    diffusers = is_diffusers(keys)
    pairs: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, old in keys.items():
        m = _LORA_KEY.fullmatch(key)
        target = m and (_from_diffusers(m["target"] + ".weight") if diffusers else m["target"] + ".weight")
        if not target:
            unknown.append(old)
            continue
        pairs.setdefault(target, {})[m["ab"]] = lora[old]
    if unknown:
        raise WanCheckpointError(f"{len(unknown)} tensors that are not LoRA lora_A/lora_B weights: "
                                 f"{_names(sorted(unknown, key=_natural))}")
    if not pairs:
        raise WanCheckpointError("no LoRA tensors (lora_A / lora_B weights) in the LoRA file")
    absent = sorted((t for t in pairs if t not in state or state[t].dim() != 2), key=_natural)
    if absent:
        raise WanCheckpointError(f"{len(absent)} LoRA targets absent from the base model: {_names(absent)}")
    out = dict(state)
    for target, ab in sorted(pairs.items(), key=lambda kv: _natural(kv[0])):
        if set(ab) != {"A", "B"}:
            raise WanCheckpointError(f"LoRA target {target} has lora_{''.join(ab)} without its pair")
        w, a, b = state[target], ab["A"], ab["B"]
        r = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != r or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise WanCheckpointError(f"LoRA for {target}: A {tuple(a.shape)} and B {tuple(b.shape)} do not "
                                     f"fit the weight {tuple(w.shape)}")
        scale = (r if alpha is None else alpha) / r
        out[target] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    return out


def lora_summary(lora: Mapping) -> dict:
    """Rank and target count of a LoRA file (shapes only)."""
    inner = lora["generator_lora"] if isinstance(lora.get("generator_lora"), Mapping) else lora
    a = [v for k, v in inner.items() if isinstance(v, Tensor) and ".lora_A" in k]
    return {"rank": int(a[0].shape[0]) if a else 0, "targets": len(a)}


# --------------------------------------------------------------------------- loading


def to_livereel_rope(state: dict[str, Tensor], cfg: WanConfig) -> dict[str, Tensor]:
    """Self-attention q/k rows (`ROPE_PERMUTED`) into the half-split RoPE layout."""
    out = dict(state)
    for i in range(cfg.depth):
        for name in ROPE_PERMUTED:
            key = f"blocks.{i}.{name}"
            out[key] = to_half_split(state[key], cfg.heads)
    return out


def load_wan(path: str | Path, lora: str | Path | None = None, device: str = "cpu",
             heads: int | None = None, lora_alpha: float | None = None
             ) -> tuple[WanConfig, dict[str, Tensor]]:
    """A Wan2.1 DiT checkpoint in any layout -> (config, state under Wan's names with the
    self-attention q/k permuted for livereel's RoPE). Tensors keep their stored dtype."""
    path = Path(path)
    with _about(path):
        state = normalise(unwrap(read_tensors(path, device)))
    if lora is not None:
        with _about(lora):
            state = merge_lora(state, read_tensors(lora, device), lora_alpha)
    with _about(path):
        cfg = infer_config(state, read_config_json(path), heads)
        if device != "meta":
            empty = [k for k, t in state.items() if t.is_meta]
            if empty:
                raise WanCheckpointError(f"tensors without data (saved from the meta device): "
                                         f"{_names(sorted(empty, key=_natural))}")
            bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
            if bad:
                raise WanCheckpointError(f"tensors holding NaN or inf: {_names(sorted(bad, key=_natural))}")
    log.info("loaded %s: Wan2.1 %s, %.2fB parameters", path, size_name(cfg), n_params(cfg) / 1e9)
    return cfg, to_livereel_rope(state, cfg)


def recognise(path: str | Path) -> str | None:
    """"wan" when the file's (or folder's) keys look like a Wan2.1 DiT in any layout,
    None when they do not, or when there is no weights file to read. A file that cannot
    be read (truncated, a pickle with code) raises WanCheckpointError."""
    path = Path(path)
    if not path.exists() or weight_files(path) is None:
        return None
    keys = {strip(k) for k in unwrap(read_tensors(path, "meta"))}
    attn = any(k.endswith((".self_attn.q.weight", ".attn1.to_q.weight")) for k in keys)
    return "wan" if "patch_embedding.weight" in keys and attn else None


@dataclass
class WanInfo:
    """What a Wan checkpoint holds, read from shapes only."""

    layout: str  # the upstream layout it came from
    config: WanConfig
    heads_from: str  # "given", "config.json" or "dim / 128"
    size: str  # a SIZES name, or "custom"
    params: int
    dtypes: dict[str, int] = field(default_factory=dict)  # dtype -> parameters stored in it
    ignored: list[str] = field(default_factory=list)  # other entries of a training pickle

    def to_dict(self) -> dict:
        return {"layout": self.layout, "config": self.config.to_dict(), "heads_from": self.heads_from,
                "size": self.size, "params": self.params, "dtypes": self.dtypes, "ignored": self.ignored}


_NESTED_LAYOUT = {
    "generator_ema": "Self-Forcing/Rolling Forcing .pt (generator_ema)",
    "generator": "Self-Forcing/CausVid/LongLive/StreamDiffusionV2 .pt (generator)",
    "model": "training .pt (model)",
    "state_dict": "training .pt (state_dict)",
}


def _layout(path: Path, files: list[Path], picked: str | None, keys: list[str]) -> str:
    diffusers = is_diffusers(strip(k) for k in keys)
    if path.is_dir():
        kind = "diffusers folder" if diffusers else "Wan base folder"
        layout = kind + (f", {len(files)} shards" if len(files) > 1 else "")
    elif len(files) > 1:
        layout = f"sharded {files[0].suffix[1:]}, {len(files)} shards" + (", diffusers naming" if diffusers else "")
    elif files[0].suffix == ".safetensors":
        if diffusers:
            layout = "diffusers safetensors file"
        elif any(k.startswith("model.diffusion_model.") for k in keys):
            layout = "ComfyUI single file (model.diffusion_model.)"
        elif any(k.startswith("model.") for k in keys):
            layout = "Krea safetensors (model.)"
        else:
            layout = "Wan-named safetensors (Wan / ComfyUI repackaged)"
    else:
        layout = _NESTED_LAYOUT.get(picked, f"plain {files[0].suffix} state dict")
        if diffusers:
            layout += ", diffusers naming"
    if any("_fsdp_wrapped_module." in k for k in keys):
        layout += ", FSDP-wrapped keys"
    return layout


def describe(path: str | Path, heads: int | None = None) -> WanInfo:
    """Layout, config, size and parameter count of a Wan checkpoint, from shapes only."""
    path = Path(path)
    with _about(path):
        files = weight_files(path)
        raw = read_tensors(path, "meta")
        picked = _picked(raw)
        flat = unwrap(raw)
        state = normalise(flat)
        config_json = read_config_json(path)
        cfg = infer_config(state, config_json, heads)
    dtypes: dict[str, int] = {}
    for t in state.values():
        name = str(t.dtype).removeprefix("torch.")
        dtypes[name] = dtypes.get(name, 0) + t.numel()
    ignored = sorted(k for k in raw if k != picked) if picked else []
    return WanInfo(layout=_layout(path, files, picked, list(flat)), config=cfg,
                   heads_from="given" if heads else _heads(cfg.dim, config_json)[1],
                   size=size_name(cfg), params=n_params(cfg), dtypes=dtypes, ignored=ignored)
