"""model/wan/text.py: umT5 as WanModel's text encoder, on a tiny umT5 (fp32, CPU).

Oracles: transformers' UMT5EncoderModel with its tokenizer (what we run, fed as Wan
feeds it), and a reference written here from Wan's definition (wan/modules/t5.py: RMS
norms, unscaled attention plus a per-layer bucketed position bias, fc2(fc1(x) *
gelu_tanh(gate(x)))) that reads Wan's names, so the Wan -> transformers rename is
proved rather than assumed. The tokenizer is trained here; nothing is downloaded.
"""

import json
import math
import os
import pickle
import re

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: no hub, ever

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

spm = pytest.importorskip("sentencepiece", reason="the test tokenizer is trained with sentencepiece")

from transformers import T5Tokenizer, UMT5EncoderModel  # noqa: E402

from model.checkpoint import CheckpointError  # noqa: E402
from model.wan.text import (TEXT_LEN, UMT5_XXL, TextConfig, UMT5Text, build, clean, expected_shapes,  # noqa: E402
                            load_umt5, n_params)
from payload import Payload  # noqa: E402

TINY = TextConfig(vocab=300, dim=32, ffn_dim=64, layers=2, heads=4, head_dim=8, buckets=32, max_distance=128)
TOL = 1e-5
SENTENCES = ["a red fox runs across the snowy field at dawn", "the camera pans over a quiet harbour with boats",
             "a cat sleeps on a warm windowsill", "waves crash against dark rocks under a grey sky",
             "a city street at night with neon signs and rain", "an old man walks his dog through autumn leaves",
             "slow motion drone shot of a waterfall in a green valley"]
PROMPTS = ["a red fox", "  the camera   pans over\na quiet harbour at night,\twaves crash on dark rocks  ", "cat"]

# transformers -> Wan names, as regex substitutions (written apart from the loader's tables)
TO_WAN = [
    (r"^shared\.", "token_embedding."),
    (r"^encoder\.final_layer_norm\.", "norm."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.", r"blocks.\1.norm1."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.",
     r"blocks.\1.pos_embedding.embedding."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.", r"blocks.\1.attn."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.", r"blocks.\1.norm2."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.", r"blocks.\1.ffn.gate.0."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.", r"blocks.\1.ffn.fc1."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.", r"blocks.\1.ffn.fc2."),
]


def to_wan(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if k == "encoder.embed_tokens.weight":  # tied to shared.weight; Wan stores it once
            continue
        for pattern, repl in TO_WAN:
            k = re.sub(pattern, repl, k)
        out[k] = v.clone()
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# --------------------------------------------------------------------------- Wan's definition


def bucket(rel: torch.Tensor, buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bidirectional bucket of a key - query offset: half the buckets per side; the
    first half of those exact, the rest log-spaced up to max_distance."""
    half = buckets // 2
    exact = half // 2
    d = rel.abs()
    far = exact + (torch.log(d.clamp(min=1).double() / exact) / math.log(max_distance / exact)
                   * (half - exact)).long()
    return (rel > 0).long() * half + torch.where(d < exact, d, far.clamp(max=half - 1))


def wan_reference(w: dict, ids: list[int], cfg: TextConfig = TINY) -> torch.Tensor:
    """Wan's T5Encoder on one unpadded prompt, from Wan-named weights, in float64."""
    w = {k: v.double() for k, v in w.items()}
    n, h = len(ids), cfg.heads

    def norm(x, g):
        return g * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.eps)

    def gelu_tanh(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    pos = torch.arange(n)
    rel = bucket(pos[None, :] - pos[:, None], cfg.buckets, cfg.max_distance)  # (n, n), key - query
    x = w["token_embedding.weight"][torch.tensor(ids)]  # (n, dim)
    for i in range(cfg.layers):
        b = lambda name: w[f"blocks.{i}.{name}.weight"]  # noqa: E731
        y = norm(x, b("norm1"))
        q, k, v = ((y @ b(f"attn.{p}").T).view(n, h, -1).transpose(0, 1) for p in "qkv")  # (h, n, d)
        bias = b("pos_embedding.embedding")[rel].permute(2, 0, 1)  # (h, n, n)
        a = torch.softmax(q @ k.transpose(1, 2) + bias, dim=-1)  # no 1/sqrt(d): T5
        x = x + (a @ v).transpose(0, 1).reshape(n, -1) @ b("attn.o").T
        y = norm(x, b("norm2"))
        x = x + ((y @ b("ffn.fc1").T) * gelu_tanh(y @ b("ffn.gate.0").T)) @ b("ffn.fc2").T
    return norm(x, w["norm.weight"])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A unigram tokenizer trained here with sentencepiece (pad 0, </s> 1, unk 2, as
    umT5's), wrapped in transformers' T5Tokenizer and saved as google/umt5-xxl is."""
    root = tmp_path_factory.mktemp("tok")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES * 10), model_prefix=str(root / "spiece"),
                                   vocab_size=150, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(root / "spiece.model"))
    tok = T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())],
                      extra_ids=0)
    tok.save_pretrained(root / "umt5-xxl")
    return root / "umt5-xxl"


@pytest.fixture(scope="module")
def tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)


@pytest.fixture(scope="module")
def hf_model():
    """transformers' tiny umT5 encoder, every weight random (norms and position tables too)."""
    torch.manual_seed(0)
    model = UMT5EncoderModel(TINY.hf()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif p.dim() == 2 and "shared" not in name and "relative" not in name:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1]))
            else:
                p.copy_(torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_state(hf_model):
    return {k: v for k, v in hf_model.state_dict().items() if k != "encoder.embed_tokens.weight"}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, hf_model, tok):
    folder = tmp_path_factory.mktemp("hf") / "text_encoder"
    hf_model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wan_pth(tmp_path_factory, hf_state):
    path = tmp_path_factory.mktemp("wan") / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(to_wan(hf_state), path)
    return path


@pytest.fixture(scope="module")
def enc(hf_dir):
    return load_umt5(hf_dir)


def reference(model, tok, prompts):
    """transformers' encoder as Wan runs it: cleaned, padded, masked, padding rows zeroed."""
    b = tok([clean(p) for p in prompts], padding=True, truncation=True, max_length=TEXT_LEN, return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state
    return h * b.attention_mask[..., None], b.attention_mask.sum(1).tolist()


# --------------------------------------------------------------------------- parity


def test_equals_transformers_on_a_batch_with_zeroed_padding(enc, hf_model, tok):
    out = enc(PROMPTS)
    ref, lengths = reference(hf_model, tok, PROMPTS)
    assert len(set(lengths)) == 3  # three lengths: padding in two rows
    assert out.shape == (3, max(lengths), TINY.dim) and out.dtype == torch.float32 and out.device.type == "cpu"
    for i, n in enumerate(lengths):
        assert rel_err(out[i, :n], ref[i, :n]) <= TOL
        assert torch.equal(out[i, n:], torch.zeros_like(out[i, n:]))


def test_equals_wans_definition_on_wan_names(wan_pth, tok_dir, tok, hf_state):
    enc = load_umt5(wan_pth, tokenizer=tok_dir)
    out = enc(PROMPTS)
    wan_state = to_wan(hf_state)
    for i, p in enumerate(PROMPTS):
        ids = tok(clean(p))["input_ids"]
        assert ids[-1] == tok.eos_token_id
        assert rel_err(out[i, : len(ids)], wan_reference(wan_state, ids)) <= TOL
        assert not out[i, len(ids):].any()


def test_long_prompt_is_cut_at_512_tokens_and_positions_past_max_distance_match(enc, tok, hf_state):
    long = " ".join(SENTENCES * 12)
    ids = tok(clean(long), truncation=True, max_length=TEXT_LEN)["input_ids"]
    assert len(ids) == TEXT_LEN and ids[-1] == tok.eos_token_id
    out = enc([long, "cat"])
    assert out.shape == (2, TEXT_LEN, TINY.dim)
    assert rel_err(out[0], wan_reference(to_wan(hf_state), ids)) <= TOL  # offsets up to 511 > 128


def test_a_prompt_alone_equals_its_row_in_a_batch(enc):
    batch = enc(PROMPTS)
    enc.clear_cache()
    for i, p in enumerate(PROMPTS):
        alone = enc([p])[0]
        assert rel_err(alone, batch[i, : len(alone)]) <= TOL
        assert not batch[i, len(alone):].any()


def test_wan_model_pads_the_features_to_512(enc):
    from model.wan.config import WanConfig
    from model.wan.model import WanModel, WanStreamConfig

    dit = WanConfig(dim=24, ffn_dim=32, depth=1, heads=2, in_channels=4, out_channels=4, freq_dim=16,
                    text_dim=TINY.dim)
    model = WanModel(WanStreamConfig(dit, height=16, width=16), text_encoder=enc).eval()
    text = model.encode_prompt(PROMPTS[:1])
    feats = enc(PROMPTS[:1])
    assert text.tokens.shape == (1, TEXT_LEN, TINY.dim)
    assert torch.equal(text.tokens[:, : feats.shape[1]], feats) and not text.tokens[:, feats.shape[1]:].any()


# --------------------------------------------------------------------------- layouts


def _same_weights(enc: UMT5Text, state: dict) -> None:
    got = enc.model.state_dict()
    for k, v in state.items():
        assert got[k].dtype == torch.float32 and torch.equal(got[k], v.float()), k
    assert enc.model.encoder.embed_tokens.weight is enc.model.shared.weight  # tied, stored once


def _write(layout: str, root, hf_model, hf_state, tok) -> tuple:
    """A layout of the same weights -> (path, tokenizer folder or None)."""
    if layout == "wan_pth":
        torch.save(to_wan(hf_state), root / "enc.pth")
        return root / "enc.pth", None
    if layout == "wan_safetensors_bf16_file":
        save_file({k: v.bfloat16() for k, v in to_wan(hf_state).items()}, root / "umt5-xxl-enc-bf16.safetensors")
        return root / "umt5-xxl-enc-bf16.safetensors", None
    if layout == "diffusers_pipeline":
        hf_model.save_pretrained(root / "text_encoder")
        tok.save_pretrained(root / "tokenizer")
        return root, "found"
    if layout == "hf_shards":
        keys = sorted(hf_state)
        parts = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for name, ks in parts.items():
            save_file({k: hf_state[k].contiguous() for k in ks}, root / name)
        index = {"metadata": {}, "weight_map": {k: n for n, ks in parts.items() for k in ks}}
        (root / "model.safetensors.index.json").write_text(json.dumps(index))
        json.dump(hf_model.config.to_dict(), open(root / "config.json", "w"))
        return root, None
    if layout == "hf_full_model_with_decoder":  # a seq2seq checkpoint: decoder and head ignored
        extra = {"decoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(32, 32),
                 "lm_head.weight": torch.zeros(TINY.vocab, TINY.dim),
                 "encoder.embed_tokens.weight": hf_state["shared.weight"].clone()}
        save_file({**hf_state, **extra}, root / "umt5.safetensors")
        return root / "umt5.safetensors", None
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", ["wan_pth", "wan_safetensors_bf16_file", "diffusers_pipeline", "hf_shards",
                                    "hf_full_model_with_decoder"])
def test_every_layout_loads_the_same_encoder(layout, tmp_path, hf_model, hf_state, tok, tok_dir, enc):
    path, tokenizer = _write(layout, tmp_path, hf_model, hf_state, tok)
    loaded = load_umt5(path, tokenizer=None if tokenizer == "found" else tok_dir)
    want = {k: v.bfloat16() for k, v in hf_state.items()} if "bf16" in layout else hf_state
    _same_weights(loaded, want)
    if "bf16" not in layout:
        enc.clear_cache()  # the same batch through both: the same arithmetic
        assert torch.equal(loaded(PROMPTS), enc(PROMPTS))


def test_fp8_files_are_cast_up(tmp_path, hf_state, tok_dir):
    """Wan-named e4m3 (Kijai's) and ComfyUI's scaled fp8 (transformers' names, a
    `scale_weight` per matrix, a `scaled_fp8` marker): weights as the file holds them."""
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in to_wan(hf_state).items()}
    save_file(fp8, tmp_path / "umt5-xxl-enc-fp8_e4m3fn.safetensors")
    loaded = load_umt5(tmp_path / "umt5-xxl-enc-fp8_e4m3fn.safetensors", tokenizer=tok_dir)
    _same_weights(loaded, {k: v.to(torch.float8_e4m3fn).float() for k, v in hf_state.items()})

    scaled, want = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for k, v in hf_state.items():
        if v.dim() == 2 and "shared" not in k and "relative" not in k:
            s = v.abs().max() / 448
            scaled[k], scaled[k.removesuffix(".weight") + ".scale_weight"] = (v / s).to(torch.float8_e4m3fn), s
            want[k] = scaled[k].float() * s
        else:
            scaled[k] = want[k] = v
    save_file(scaled, tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    loaded = load_umt5(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", tokenizer=tok_dir)
    _same_weights(loaded, want)
    assert rel_err(loaded(PROMPTS[:1]), load_umt5(tmp_path / "umt5-xxl-enc-fp8_e4m3fn.safetensors",
                                                  tokenizer=tok_dir)(PROMPTS[:1])) < 0.2  # both near the fp32


def test_the_xxl_constant_is_transformers_umt5_xxl():
    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5_XXL.hf())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    assert shapes == expected_shapes(UMT5_XXL)
    assert n_params(UMT5_XXL) == sum(p.numel() for p in model.parameters()) == 5_680_910_336


# --------------------------------------------------------------------------- cache, cleaning, placement


def test_a_repeated_prompt_does_not_run_the_encoder(hf_dir):
    enc = load_umt5(hf_dir, cache_size=2)
    runs = []  # the batch size of each encoder run
    enc.model.encoder.register_forward_hook(lambda m, a, kw, out: runs.append(out.last_hidden_state.shape[0]),
                                            with_kwargs=True)
    first = enc(["a red fox", "cat"])
    assert len(runs) == 1
    again = enc(["cat", "  a  red\tfox "])  # whitespace variants are the same prompt
    assert len(runs) == 1
    assert torch.equal(again[0, :2], first[1, :2]) and torch.equal(again[1], first[0, : again.shape[1]])
    enc(["cat", "a grey sky"])  # one new prompt: a batch of one
    assert len(runs) == 2 and runs[-1] == 1
    enc(["a red fox"])  # evicted (2 kept: cat, a grey sky)
    assert len(runs) == 3
    assert set(enc._cache) == {"a grey sky", "a red fox"}


def test_clean_is_wans_whitespace_mode():
    assert clean("  a\tred \n\n fox  ") == "a red fox"
    assert clean("rock &amp;amp; roll &lt;3") == "rock & roll <3"  # unescaped twice, as Wan
    assert clean("") == ""


def test_offload_streams_each_block_and_leaves_the_weights_on_the_host(enc, hf_model, tok):
    """The offload path on the CPU (device moves are no-ops here; the GPU case moves the
    same tensors): features unchanged, every parameter back on its host tensor."""
    model = build(TINY, {k: v.clone() for k, v in hf_model.state_dict().items()})
    off = UMT5Text(model, tok, "cpu", offload=True)
    host = {n: p.data_ptr() for n, p in model.named_parameters()}
    seen = []
    model.encoder.block[1].register_forward_pre_hook(lambda m, a: seen.append("block 1"))
    assert torch.equal(off(PROMPTS), enc(PROMPTS))
    assert seen == ["block 1"]
    assert all(p.data_ptr() == host[n] and p.device.type == "cpu" for n, p in model.named_parameters())
    mem = off.memory_bytes()
    block = sum(p.numel() * 4 for p in model.encoder.block[0].parameters())
    assert mem["device"] == 0 and mem["device_peak"] == block


def test_memory_bytes_counts_weights_and_cache(hf_dir):
    enc = load_umt5(hf_dir)
    assert enc.memory_bytes() == {"host": 4 * n_params(TINY), "device": 0, "device_peak": 0}
    enc(["a red fox"])
    n = enc._cache["a red fox"].shape[0]
    assert enc.memory_bytes()["host"] == 4 * n_params(TINY) + 4 * n * TINY.dim


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_offload_without_a_gpu_is_refused(hf_dir):
    with pytest.raises(ValueError, match="no CUDA device"):
        load_umt5(hf_dir, offload=True)


# --------------------------------------------------------------------------- bad files



def _bad(kind: str, hf_state) -> tuple:
    """A bad state dict (Wan names) -> (the state, words its error must hold)."""
    wan = to_wan(hf_state)
    if kind == "missing_tensor":
        del wan["blocks.1.norm2.weight"]
        return wan, "1 missing tensors ['encoder.block.1.layer.1.layer_norm.weight']"
    if kind == "mis_shaped_tensor":
        wan["blocks.0.ffn.fc1.weight"] = torch.zeros(63, 32)
        return wan, "mis-shaped tensors: encoder.block.0.layer.1.DenseReluDense.wi_1.weight (63, 32) (needs (64, 32))"
    if kind == "unknown_tensor":
        wan["blocks.0.attn.extra.weight"] = torch.zeros(3)
        return wan, "1 unknown tensors ['blocks.0.attn.extra.weight']"
    if kind == "a_dit_not_umt5":
        return {"blocks.0.self_attn.q.weight": torch.zeros(4, 4), "patch_embedding.weight": torch.zeros(4)}, \
            "not umT5 encoder weights"
    if kind == "integer_tensor":
        wan["norm.weight"] = torch.ones(32, dtype=torch.int32)
        return wan, "not floating point"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing_tensor", "mis_shaped_tensor", "unknown_tensor", "a_dit_not_umt5",
                                  "integer_tensor"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_bad_tensors_are_named(kind, suffix, tmp_path, hf_state, tok_dir):
    state, words = _bad(kind, hf_state)
    path = tmp_path / f"enc{suffix}"
    torch.save(state, path) if suffix == ".pth" else save_file(state, path)
    with pytest.raises(CheckpointError) as e:
        load_umt5(path, tokenizer=tok_dir)
    assert str(e.value).startswith(str(path)) and words in str(e.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_truncated_file_is_refused(suffix, tmp_path, hf_state, tok_dir):
    path = tmp_path / f"enc{suffix}"
    state = to_wan(hf_state)
    torch.save(state, path) if suffix == ".pth" else save_file(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt|unreadable"):
        load_umt5(path, tokenizer=tok_dir)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the legacy file
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_with_code_is_refused_and_never_run(writer, tmp_path, hf_state, tok_dir):
    marker = tmp_path / "payload-ran"
    state = {**to_wan(hf_state), "evil": Payload(marker)}
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    if writer == "torch.save":
        torch.save(state, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(state, f)
    with pytest.raises(CheckpointError, match="refused|unreadable"):
        load_umt5(path, tokenizer=tok_dir)
    assert not marker.exists()


def test_tokenizer_problems_are_clear(tmp_path, wan_pth, hf_state, tok_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no umT5 tokenizer here"):
        load_umt5(wan_pth, tokenizer=tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no umT5 tokenizer found beside it"):
        load_umt5(wan_pth)  # nothing beside the .pth
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    (broken / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    with pytest.raises(CheckpointError, match="cannot load the umT5 tokenizer"):
        load_umt5(wan_pth, tokenizer=broken)
    small = {k: (v[:50] if k == "shared.weight" else v) for k, v in hf_state.items()}  # fewer rows than tokens
    torch.save(to_wan(small), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match="not umT5's tokenizer"):
        load_umt5(tmp_path / "small.pth", tokenizer=tok_dir)


def test_paths_and_configs_that_do_not_fit(tmp_path, hf_model, tok, tok_dir):
    with pytest.raises(CheckpointError, match="no such file"):
        load_umt5(tmp_path / "absent.pth", tokenizer=tok_dir)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="not a weights file"):
        load_umt5(tmp_path / "notes.txt", tokenizer=tok_dir)
    folder = tmp_path / "hf"
    hf_model.save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_heads": 8}))
    with pytest.raises(CheckpointError, match="num_heads 8, the position bias has 4 heads"):
        load_umt5(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no umT5 weights here"):
        load_umt5(folder)
