"""umT5-XXL, Wan2.1's text encoder (encoder only), as WanModel's `text_encoder`.

The network is transformers' `UMT5EncoderModel`, used as a library; this file loads
weights into it, tokenizes and cleans prompts as Wan does, caches embeddings by prompt,
and places it on a device (../shared/research/wan-causal-family.md §6, §10.2 item 6).

Weights are read from any of:
  - Wan's own `models_t5_umt5-xxl-enc-bf16.pth` (a flat pickle, read with weights_only);
  - Wan-named safetensors, bf16 or fp8 (`umt5-xxl-enc-fp8_e4m3fn.safetensors`), cast up;
  - transformers' naming: a folder with config.json and model.safetensors (or shards and
    their index, or pytorch_model.bin), a diffusers pipeline's `text_encoder/`, or one
    file, ComfyUI's scaled fp8 included (`X.scale_weight` multiplies `X.weight`).
Nothing in a file is executed (model/wan/loader.py `read_tensors`).

Wan's names map onto transformers' once, at load (Wan-Video/Wan2.1 wan/modules/t5.py):
  token_embedding                      shared                    (vocab, dim)
  blocks.N.norm1                       encoder.block.N.layer.0.layer_norm
  blocks.N.attn.{q,k,v,o}              encoder.block.N.layer.0.SelfAttention.{q,k,v,o}
  blocks.N.pos_embedding.embedding     encoder.block.N.layer.0.SelfAttention.relative_attention_bias
                                       (buckets, heads): one table per layer (Wan's shared_pos=False)
  blocks.N.norm2                       encoder.block.N.layer.1.layer_norm
  blocks.N.ffn.gate.0 / fc1 / fc2      encoder.block.N.layer.1.DenseReluDense.wi_0 / wi_1 / wo
                                       fc2(fc1(x) * gelu_tanh(gate(x))) = wo(gelu_new(wi_0 x) * wi_1 x)
  norm                                 encoder.final_layer_norm
Both are T5 attention (no 1/sqrt(d) scale), RMS norms without bias, eps 1e-6, 32
bidirectional buckets up to distance 128. The architecture is read from the shapes.

Encoding follows Wan's `T5EncoderModel`: cleaned text ('whitespace': ftfy when
installed, HTML entities, runs of whitespace), at most 512 tokens with </s>, padded,
the encoder run under the attention mask, rows past a prompt's end set to zero.

API:
  UMT5_XXL, TEXT_LEN; TextConfig; expected_shapes(cfg), n_params(cfg)
  clean(text) -> str
  load_umt5(path, tokenizer=None, device="cpu", offload=False) -> UMT5Text
  UMT5Text(prompts) -> (B, L <= 512, dim); .encode(texts), .memory_bytes(), .clear_cache()
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from model.errors import CheckpointError
from model.wan.loader import PICKLES, read_tensors

try:
    import ftfy
except ImportError:  # optional: Wan repairs mojibake with it; typed prompts rarely need it
    ftfy = None

log = logging.getLogger(__name__)

TEXT_LEN = 512  # tokens per prompt, </s> included (Wan's text_len)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
CACHE_SIZE = 256  # prompts whose embeddings are kept


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TextConfig:
    """umT5's encoder (transformers' UMT5Config names in comments)."""

    vocab: int  # vocab_size
    dim: int  # d_model
    ffn_dim: int  # d_ff, gated GELU (tanh)
    layers: int  # num_layers
    heads: int  # num_heads
    head_dim: int  # d_kv
    buckets: int = 32  # relative_attention_num_buckets, half per direction
    max_distance: int = 128  # relative_attention_max_distance
    eps: float = 1e-6  # layer_norm_epsilon

    def __post_init__(self) -> None:
        for name in ("vocab", "dim", "ffn_dim", "layers", "heads", "head_dim", "buckets", "max_distance"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TextConfig.{name} must be positive (got {getattr(self, name)})")
        if self.buckets % 2:
            raise ValueError(f"TextConfig.buckets must be even: half per direction (got {self.buckets})")

    def hf(self) -> UMT5Config:
        return UMT5Config(vocab_size=self.vocab, d_model=self.dim, d_kv=self.head_dim, d_ff=self.ffn_dim,
                          num_layers=self.layers, num_heads=self.heads, relative_attention_num_buckets=self.buckets,
                          relative_attention_max_distance=self.max_distance, layer_norm_epsilon=self.eps,
                          feed_forward_proj="gated-gelu", dropout_rate=0.0)


UMT5_XXL = TextConfig(vocab=256384, dim=4096, ffn_dim=10240, layers=24, heads=64, head_dim=64)


def expected_shapes(cfg: TextConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the encoder under transformers' names (the embedding once)."""
    inner = cfg.heads * cfg.head_dim
    out = {"shared.weight": (cfg.vocab, cfg.dim)}
    for i in range(cfg.layers):
        a, f = f"encoder.block.{i}.layer.0.", f"encoder.block.{i}.layer.1."
        out |= {a + "layer_norm.weight": (cfg.dim,),
                **{f"{a}SelfAttention.{p}.weight": (inner, cfg.dim) for p in "qkv"},
                a + "SelfAttention.o.weight": (cfg.dim, inner),
                a + "SelfAttention.relative_attention_bias.weight": (cfg.buckets, cfg.heads),
                f + "layer_norm.weight": (cfg.dim,),
                f + "DenseReluDense.wi_0.weight": (cfg.ffn_dim, cfg.dim),
                f + "DenseReluDense.wi_1.weight": (cfg.ffn_dim, cfg.dim),
                f + "DenseReluDense.wo.weight": (cfg.dim, cfg.ffn_dim)}
    out["encoder.final_layer_norm.weight"] = (cfg.dim,)
    return out


def n_params(cfg: TextConfig) -> int:
    return sum(math.prod(s) for s in expected_shapes(cfg).values())


# --------------------------------------------------------------------------- naming

_HF = re.compile(r"""
    shared\.weight | encoder\.final_layer_norm\.weight
  | encoder\.block\.\d+\.layer\.0\.(layer_norm|SelfAttention\.([qkvo]|relative_attention_bias))\.weight
  | encoder\.block\.\d+\.layer\.1\.(layer_norm|DenseReluDense\.(wi_0|wi_1|wo))\.weight""", re.X)
_WAN_TOP = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_WAN_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    **{f"attn.{p}.weight": f"layer.0.SelfAttention.{p}.weight" for p in "qkvo"},
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # the GELU branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # the linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_WAN_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
EMBED_ALIAS = "encoder.embed_tokens.weight"  # transformers' tied copy of shared.weight
# Known, not needed: a seq2seq model's decoder and head, ComfyUI's fp8 marker, input
# scales and embedded tokenizer.
_UNUSED = re.compile(r"(decoder\.|lm_head\.).*|scaled_fp8|spiece_model|.*\.scale_input")
SCALE = ".scale_weight"  # ComfyUI scaled fp8: weight = fp8 * scale


def _natural(key: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split("."))


def _names(keys, n: int = 5) -> str:
    keys = sorted(keys, key=_natural)
    return f"{keys[:n]}{' ...' if len(keys) > n else ''}"


def _ours(key: str) -> str | None:
    """transformers' name of a file's key (Wan's or transformers'), or None if unknown."""
    if _HF.fullmatch(key):
        return key
    if key in _WAN_TOP:
        return _WAN_TOP[key]
    m = _WAN_BLOCK_KEY.fullmatch(key)
    if m and m[2] in _WAN_BLOCK:
        return f"encoder.block.{m[1]}.{_WAN_BLOCK[m[2]]}"
    return None


def rename(keys: Iterable[str]) -> dict[str, tuple[str, str | None]]:
    """transformers' name -> (the file's key, the key of its fp8 scale or None). A tied
    `encoder.embed_tokens.weight` stands for `shared.weight` when that is absent; unknown
    keys (up to 5 named) are an error."""
    keys = set(keys)
    scales = {k[: -len(SCALE)] + ".weight": k for k in keys if k.endswith(SCALE)}
    out: dict[str, tuple[str, str | None]] = {}
    unknown, unused = [], []
    for key in sorted(keys - set(scales.values()), key=_natural):
        if key == EMBED_ALIAS:
            new = None if "shared.weight" in keys else "shared.weight"
            if new is None:
                unused.append(key)
                continue
        else:
            new = _ours(key)
        if new is None:
            (unused if _UNUSED.fullmatch(key) else unknown).append(key)
        elif new in out:
            raise CheckpointError(f"two tensors map to {new}: {out[new][0]} and {key}")
        else:
            out[new] = (key, scales.pop(key, None))
    for weight, scale in scales.items():  # left: scales of unused weights, or without a weight
        (unused if weight in unused else unknown).append(scale)
    if unknown:
        raise CheckpointError(f"not umT5 encoder weights (Wan's or transformers' naming): {len(unknown)} "
                              f"unknown tensors {_names(unknown)}")
    if unused:
        log.info("umT5: ignoring %d tensors the encoder does not use, e.g. %s", len(unused), _names(unused, 3))
    return out


# --------------------------------------------------------------------------- reading


def weight_files(path: Path) -> list[Path]:
    """The files holding the encoder's weights (a file, a folder, a pipeline's text_encoder/)."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "text_encoder").is_dir():
            path = path / "text_encoder"
        indexes = sorted(path.glob("*.safetensors.index.json")) or sorted(path.glob("*.bin.index.json"))
        if len(indexes) == 1:
            return _shards(indexes[0])
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return [path / name]
        t5 = [p for p in sorted(path.iterdir()) if "t5" in p.name.lower() and p.suffix in (".safetensors", *PICKLES)]
        if len(t5) == 1:
            return t5
        raise CheckpointError(f"{path}: no umT5 weights here (expected model.safetensors, shards with their "
                              f"*.index.json, or one umT5 file such as models_t5_umt5-xxl-enc-bf16.pth)")
    if path.name.endswith(".index.json"):
        return _shards(path)
    if path.suffix in (".safetensors", *PICKLES):
        return [path]
    raise CheckpointError(f"{path}: not a weights file (.safetensors, .pth/.pt/.bin/.ckpt or *.index.json)")


def _shards(index: Path) -> list[Path]:
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: unreadable shard index ({e!r})") from None
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise CheckpointError(f"{index}: missing shards {missing[:5]}")
    return [index.parent / n for n in names]


def _flat(obj: Mapping, file: Path) -> dict[str, Tensor]:
    other = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if other:
        raise CheckpointError(f"{file}: not a flat dict of tensors (entries such as {other[:3]})")
    return dict(obj)


def read_shapes(files: list[Path]) -> dict[str, Tensor]:
    """Every tensor of the files on the meta device: names, shapes, dtypes, no data."""
    out: dict[str, Tensor] = {}
    for f in files:
        out.update(_flat(read_tensors(f, "meta"), f))
    return out


@contextmanager
def tensor_reader(files: list[Path]) -> Iterator[Callable[[str], Tensor]]:
    """A function key -> tensor on the CPU, reading one tensor at a time (safetensors
    handles stay open; pickles are memory-mapped)."""
    with ExitStack() as stack:
        getters: dict[str, Callable[[], Tensor]] = {}
        for f in files:
            if f.suffix == ".safetensors":
                try:
                    handle = stack.enter_context(safe_open(str(f), framework="pt", device="cpu"))
                except (SafetensorError, OSError) as e:
                    raise CheckpointError(f"{f}: unreadable safetensors file ({e})") from None
                getters.update({k: (lambda h=handle, k=k, f=f: _get(h, k, f)) for k in handle.keys()})
            else:
                getters.update({k: (lambda t=t: t) for k, t in _flat(read_tensors(f, "cpu"), f).items()})
        yield lambda key: getters[key]()


def _get(handle, key: str, file: Path) -> Tensor:
    try:
        return handle.get_tensor(key)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: cannot read {key}, truncated or corrupt ({e})") from None


def read_config_json(files: list[Path]) -> dict:
    """transformers' config.json beside the weights, if any (heads, max distance, eps)."""
    file = files[0].parent / "config.json"
    if not file.is_file():
        return {}
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable config ({e})") from None
    return cfg if isinstance(cfg, dict) and "d_model" in cfg else {}


def infer_config(shapes: Mapping[str, Tensor], config_json: Mapping | None = None) -> TextConfig:
    """The architecture from the tensors' shapes (under transformers' names), the maximum
    distance and eps from config.json (else umT5's); every tensor checked against it."""
    q, bias = "encoder.block.0.layer.0.SelfAttention.q.weight", \
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    wi = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
    missing = [k for k in ("shared.weight", q, bias, wi) if k not in shapes]
    if missing:
        raise CheckpointError(f"missing tensors {missing}: cannot infer the architecture")
    for k in ("shared.weight", q, bias, wi):
        if shapes[k].dim() != 2:
            raise CheckpointError(f"{k} has shape {tuple(shapes[k].shape)}, needs 2 dimensions")
    vocab, dim = shapes["shared.weight"].shape
    buckets, heads = shapes[bias].shape
    inner = shapes[q].shape[0]
    c = dict(config_json or {})
    if c.get("feed_forward_proj", "gated-gelu") != "gated-gelu":
        raise CheckpointError(f"config.json has feed_forward_proj {c['feed_forward_proj']!r}; umT5's is 'gated-gelu'")
    if "num_heads" in c and int(c["num_heads"]) != heads:
        raise CheckpointError(f"config.json says num_heads {c['num_heads']}, the position bias has {heads} heads")
    if inner % heads:
        raise CheckpointError(f"{q} has {inner} rows, not a multiple of the {heads} heads")
    try:
        cfg = TextConfig(vocab=vocab, dim=dim, ffn_dim=shapes[wi].shape[0], heads=heads, head_dim=inner // heads,
                         layers=1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("encoder.block.")),
                         buckets=buckets, max_distance=int(c.get("relative_attention_max_distance", 128)),
                         eps=float(c.get("layer_norm_epsilon", 1e-6)))
    except ValueError as e:
        raise CheckpointError(f"not a valid umT5 config: {e}") from None
    check_shapes(shapes, cfg)
    return cfg


def check_shapes(shapes: Mapping[str, Tensor], cfg: TextConfig) -> None:
    want = expected_shapes(cfg)
    missing = [k for k in want if k not in shapes]
    extra = [k for k in shapes if k not in want]
    wrong = [f"{k} {tuple(shapes[k].shape)} (needs {want[k]})" for k in want
             if k in shapes and tuple(shapes[k].shape) != want[k]]
    ints = [k for k, t in shapes.items() if not t.is_floating_point()]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors {_names(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} mis-shaped tensors: {'; '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors {_names(extra)}")
    if ints:
        problems.append(f"{len(ints)} tensors that are not floating point {_names(ints)}")
    if problems:
        raise CheckpointError(f"does not match the inferred umT5 (dim {cfg.dim}, {cfg.layers} layers, "
                              f"{cfg.heads} heads, ffn {cfg.ffn_dim}, vocab {cfg.vocab}): {'; '.join(problems)}")


# --------------------------------------------------------------------------- tokenizer


def find_tokenizer(weights: Path) -> Path | None:
    """A tokenizer folder beside the weights: the folder itself (transformers), tokenizer/
    (diffusers), google/umt5-xxl/ (Wan)."""
    base = weights if weights.is_dir() else weights.parent
    for folder in (base, base / "tokenizer", base.parent / "tokenizer", base / "google" / "umt5-xxl",
                   base / "umt5-xxl"):
        if any((folder / f).is_file() for f in TOKENIZER_FILES):
            return folder
    return None


def load_tokenizer(folder: str | Path):
    """google/umt5-xxl's tokenizer from a local folder; nothing is downloaded."""
    folder = Path(folder)
    if not folder.is_dir() or not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(f"{folder}: no umT5 tokenizer here (needs google/umt5-xxl's tokenizer.json and "
                              f"tokenizer_config.json, or its spiece.model)")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, ImportError, KeyError, TypeError) as e:
        hint = "" if (folder / "tokenizer.json").is_file() else \
            " (without tokenizer.json, spiece.model needs the sentencepiece and protobuf packages)"
        raise CheckpointError(f"{folder}: cannot load the umT5 tokenizer{hint}: {e}") from None
    if tok.pad_token_id is None:
        raise CheckpointError(f"{folder}: the tokenizer has no padding token")
    return tok


# --------------------------------------------------------------------------- encoding


def clean(text: str) -> str:
    """Wan's 'whitespace' cleaning: ftfy's repairs (when installed), HTML entities
    undone (twice, as Wan), every run of whitespace one space, the ends stripped."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


class UMT5Text:
    """prompts -> (B, L, dim) features, L the longest prompt's token count (<= 512),
    rows past a prompt's end zero; WanModel pads to 512. A prompt's features are
    cached (LRU, on the CPU), so a repeated prompt costs no encoder run.

    `device` is where the encoder runs. With `offload` the weights stay in CPU memory
    and each block visits `device` only while it runs (the embedding lookup stays on the
    CPU), so the GPU holds one block (≈0.39 GB at XXL in bf16) instead of 11.4 GB."""

    def __init__(self, model: UMT5EncoderModel, tokenizer, device: str | torch.device = "cpu",
                 offload: bool = False, cache_size: int = CACHE_SIZE, text_len: int = TEXT_LEN):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.offload = offload
        self.cache_size = cache_size
        self.text_len = text_len
        self._cache: OrderedDict[str, Tensor] = OrderedDict()  # cleaned text -> (n, dim), CPU
        self._host = {p: p.data for p in model.parameters()} if offload else {}
        self._streamed = [*model.encoder.block, model.encoder.final_layer_norm] if offload else []
        for m in self._streamed:
            m.register_forward_pre_hook(self._fetch)
            m.register_forward_hook(self._release)

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    # -- offload: a block's weights on `device` only while it runs --------------
    def _fetch(self, module: nn.Module, args) -> None:
        for p in module.parameters():
            p.data = self._host[p].to(self.device, non_blocking=True)

    def _release(self, module: nn.Module, args, output) -> None:
        for p in module.parameters():
            p.data = self._host[p]  # the device copy is freed; the host one was never changed

    # -- encoding ----------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, texts: list[str]) -> list[Tensor]:
        """One encoder run over `texts` (already cleaned): each prompt's (n_i, dim)
        features on the CPU, n_i its tokens with </s>."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.text_len,
                               add_special_tokens=True, return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, L), L = longest prompt
        if self.offload:
            x = self.model.shared(ids).to(self.device, non_blocking=True)  # (B, L, dim), looked up on the CPU
            try:
                h = self.model.encoder(inputs_embeds=x, attention_mask=mask.to(self.device)).last_hidden_state
            finally:
                for p, t in self._host.items():  # also after an error inside a block
                    p.data = t
        else:
            h = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        return [h[i, :n].to("cpu", copy=True) for i, n in enumerate(mask.sum(1).tolist())]

    def __call__(self, prompts: list[str]) -> Tensor:
        texts = [clean(p) for p in prompts]
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh = dict(zip(new, self.encode(new))) if new else {}
        rows = [fresh[t] if t in fresh else self._hit(t) for t in texts]
        for t, f in fresh.items():
            self._remember(t, f)
        out = torch.zeros(len(rows), max((len(r) for r in rows), default=0), self.dim, dtype=self.dtype)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r  # later rows stay zero, as Wan's
        return out.to(self.device)

    def _hit(self, text: str) -> Tensor:
        self._cache.move_to_end(text)
        return self._cache[text]

    def _remember(self, text: str, feats: Tensor) -> None:
        if self.cache_size <= 0:
            return
        self._cache[text] = feats
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        self._cache.clear()

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held: `host` (CPU memory: the weights unless on the GPU, and the prompt
        cache), `device` (the GPU, at rest), `device_peak` (the GPU's weights while
        encoding; activations not counted)."""
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        cache = sum(t.numel() * t.element_size() for t in self._cache.values())
        if self.offload:
            block = max(sum(p.numel() * p.element_size() for p in m.parameters()) for m in self._streamed)
            return {"host": weights + cache, "device": 0, "device_peak": block}
        if self.device.type == "cpu":
            return {"host": weights + cache, "device": 0, "device_peak": 0}
        return {"host": cache, "device": weights, "device_peak": weights}


# --------------------------------------------------------------------------- loading


def build(cfg: TextConfig, tensors: Mapping[str, Tensor] | Callable[[str], Tensor],
          plan: Mapping[str, tuple[str, str | None]] | None = None, device: str | torch.device = "cpu",
          dtype: torch.dtype = torch.float32, pin: bool = False) -> UMT5EncoderModel:
    """transformers' UMT5EncoderModel built on the meta device and given the tensors one
    at a time (cast, fp8 scales applied), so the weights exist once. `tensors` is a dict
    or a reader (key -> tensor); `plan` maps our names to its keys (default: the same)."""
    get = tensors.__getitem__ if isinstance(tensors, Mapping) else tensors
    plan = plan or {k: (k, None) for k in expected_shapes(cfg)}
    with torch.device("meta"):
        model = UMT5EncoderModel(cfg.hf())
    state = {}
    for name, (key, scale) in plan.items():
        t = get(key)
        if scale is not None:
            t = t.float() * get(scale).float()
        t = t.to(device=device, dtype=dtype)
        state[name] = t.pin_memory() if pin else t
    model.load_state_dict(state, strict=False, assign=True)
    model.set_input_embeddings(model.shared)  # the tied encoder.embed_tokens
    empty = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
    if empty:
        raise CheckpointError(f"tensors never given to the encoder: {_names(empty)}")
    return model.eval().requires_grad_(False)


def load_umt5(path: str | Path, tokenizer: str | Path | None = None, device: str = "cpu",
              offload: bool = False, dtype: torch.dtype | None = None, cache_size: int = CACHE_SIZE) -> UMT5Text:
    """umT5 from a Wan .pth, Wan-named (fp8) safetensors, or transformers' files, and its
    tokenizer (`tokenizer`, else found beside the weights). Runs on `device` in bf16 on a
    GPU, fp32 on the CPU (unless `dtype`); `offload` keeps the weights in CPU memory and
    moves each block to the GPU only to encode (`device` "cpu" then means "cuda")."""
    path = Path(path)
    if offload and torch.device(device).type == "cpu":
        device = "cuda"
    if offload and not torch.cuda.is_available():
        raise ValueError("offload keeps umT5 on the CPU and encodes on the GPU, and there is no CUDA device")
    run_on = torch.device(device)
    dtype = dtype or (torch.bfloat16 if run_on.type == "cuda" else torch.float32)

    folder = Path(tokenizer) if tokenizer is not None else find_tokenizer(path)
    if folder is None:
        raise CheckpointError(f"{path}: no umT5 tokenizer found beside it; pass the google/umt5-xxl folder "
                              f"(tokenizer.json, tokenizer_config.json)")
    tok = load_tokenizer(folder)

    files = weight_files(path)
    try:
        shapes = read_shapes(files)
        plan = rename(shapes)
        cfg = infer_config({name: shapes[key] for name, (key, _) in plan.items()}, read_config_json(files))
        if len(tok) > cfg.vocab:
            raise CheckpointError(f"the tokenizer in {folder} has {len(tok)} tokens, more than the "
                                  f"encoder's {cfg.vocab}: not umT5's tokenizer")
        with tensor_reader(files) as read:
            model = build(cfg, read, plan, device="cpu" if offload else run_on, dtype=dtype, pin=offload)
    except CheckpointError as e:
        raise e if str(e).startswith(str(path)) else CheckpointError(f"{path}: {e}") from None
    text = UMT5Text(model, tok, run_on, offload=offload, cache_size=cache_size)
    log.info("loaded umT5 %s: %.2fB parameters, %s on %s%s", path, n_params(cfg) / 1e9,
             str(dtype).removeprefix("torch."), run_on, " (offloaded: weights in CPU memory)" if offload else "")
    return text
