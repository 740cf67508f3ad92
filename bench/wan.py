"""A Wan model's streaming figures at its real shapes, random weights (no download):
`python -m bench.wan [--size 1.3B] [--resolution 480x832] [--decoders wan,tae] [--compile]`.

The DiT at Wan2.1-T2V's real sizes in bf16 on CUDA (fp32 on a CPU), the recipe's 4 steps
from noise plus the fused context pass, chunks of 3 latent frames (12 video frames),
decoded by the Wan VAE and by the tiny decoder. Per decoder: ms per chunk (DiT, decode),
FPS, time to first frame, prompt-switch latency (the re-cache plus the next chunk), and
GPU memory at chunk 10 and at the last chunk (the cache is preallocated: they must be
equal). The prompts are random features in place of umT5 (its cost is per prompt, not
per chunk; `--t5` times one 512-token encode of a random umT5-XXL too). `--size tiny`
runs everything in seconds on a CPU (the tests do). Self-Forcing reports 17 FPS and
LongLive 20.7 FPS on an H100, DiT and VAE.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from model.wan.config import SIZES, WanConfig, get_recipe
from model.wan.model import WanModel, WanStreamConfig, wan_generator

log = logging.getLogger(__name__)

TINY = WanConfig(dim=64, ffn_dim=128, depth=2, heads=2, freq_dim=32, text_dim=32, text_len=16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def build(size: str, height: int, width: int, decoder: str, device: torch.device, dtype: torch.dtype,
          recipe: str) -> WanModel:
    from model.wan.tae import PRESETS as TAE
    from model.wan.tae import TAEDecoder
    from model.wan.vae import PRESETS as VAE
    from model.wan.vae import WanVAEDecoder

    dit = TINY if size == "tiny" else SIZES[size]
    text_dim, text_len = dit.text_dim, dit.text_len
    gen = torch.Generator().manual_seed(0)
    prompts: dict[str, torch.Tensor] = {}

    def encoder(batch: list[str]) -> torch.Tensor:  # a fixed random feature per prompt
        return torch.stack([prompts.setdefault(p, torch.randn(text_len, text_dim, generator=gen)) for p in batch])

    with torch.device(device):
        dec = (WanVAEDecoder(VAE["debug" if size == "tiny" else "wan2.1"]) if decoder == "wan"
               else TAEDecoder(TAE["debug" if size == "tiny" else "taew2_1"]))
        model = WanModel(WanStreamConfig(dit, get_recipe(recipe), height, width), encoder, dec)
    return model.to(dtype).eval().requires_grad_(False)


@torch.no_grad()
def measure(model: WanModel, chunks: int, device: torch.device) -> dict:
    """TTFF, steady chunk times, a prompt switch, memory at chunk 10 and at the end."""
    fpc, fps = model.config.frames_per_chunk, model.config.fps

    def chunk(gen) -> tuple[float, float]:
        _sync(device)
        t0 = time.perf_counter()
        latents = gen.step()
        _sync(device)
        t1 = time.perf_counter()
        gen.decode(latents)
        _sync(device)
        return t1 - t0, time.perf_counter() - t1

    gen = wan_generator(model, seed=0)
    t0 = time.perf_counter()
    gen.set_prompt("a first prompt")
    chunk(gen)
    ttff = time.perf_counter() - t0
    for _ in range(2):
        chunk(gen)  # warm
    dit, dec, memory = [], [], {}
    for i in range(chunks):
        a, b = chunk(gen)
        dit.append(a)
        dec.append(b)
        if i == min(9, chunks - 1):
            memory["chunk_10"] = _memory(device)
    memory["last_chunk"] = _memory(device)
    gen.set_prompt("a second prompt")  # re-cache, then the next chunk
    switch = sum(chunk(gen))
    total = statistics.median(a + b for a, b in zip(dit, dec))
    return {"chunks": chunks, "ttff_s": ttff, "dit_ms": 1e3 * statistics.median(dit),
            "decode_ms": 1e3 * statistics.median(dec), "chunk_ms": 1e3 * total, "fps": fpc / total,
            "real_time_factor": fpc / fps / total, "switch_s": switch, "memory_bytes": memory,
            "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0}


def t5_encode_seconds(device: torch.device, dtype: torch.dtype) -> float:
    """One 512-token encode by a random umT5-XXL (transformers), the cost of a new prompt."""
    from transformers import UMT5EncoderModel

    from model.wan.text import UMT5_XXL

    with torch.device(device):
        t5 = UMT5EncoderModel(UMT5_XXL.hf()).to(dtype).eval()
    ids = torch.randint(0, UMT5_XXL.vocab, (1, 512), device=device)
    with torch.no_grad():
        t5(input_ids=ids)
        _sync(device)
        t0 = time.perf_counter()
        t5(input_ids=ids)
        _sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wan", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("tiny", *SIZES), default="1.3B", help="the DiT's size (random weights)")
    p.add_argument("--resolution", default="480x832", help="HxW in pixels (multiples of 16)")
    p.add_argument("--recipe", default="self-forcing", help="the sampling recipe")
    p.add_argument("--decoders", default="wan,tae", help="comma-separated: wan (the Wan VAE), tae (tiny decoder)")
    p.add_argument("--chunks", type=int, default=30, help="steady-state chunks timed per configuration")
    p.add_argument("--compile", choices=("no", "yes", "both"), default="no",
                   help="torch.compile the DiT's block halves (model/compile.py); both: with and without")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--t5", action="store_true", help="also time one encode of a random umT5-XXL")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    if args.json:
        from model.sample import check_output

        try:  # before the minutes of timing
            check_output(args.json, "--json")
        except ValueError as e:
            p.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    height, width = (int(v) for v in args.resolution.lower().split("x"))
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results: dict = {"size": args.size, "resolution": [height, width], "device": str(device),
                     "dtype": str(dtype).removeprefix("torch."), "runs": []}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    for decoder in args.decoders.split(","):
        for compiled in {"no": [False], "yes": [True], "both": [False, True]}[args.compile]:
            model = build(args.size, height, width, decoder, device, dtype, args.recipe)
            if compiled:
                from model.compile import compile_dit

                compile_dit(model)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            run = {"decoder": decoder, "compile": compiled, **measure(model, args.chunks, device)}
            results["runs"].append(run)
            log.info("%s", json.dumps(run))
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.t5:
        results["t5_encode_s"] = t5_encode_seconds(device, dtype)
    print(f"{'decoder':<8} {'compile':<8} {'DiT ms':>8} {'decode ms':>10} {'FPS':>6} {'TTFF s':>7} "
          f"{'switch s':>9} {'mem@10 MiB':>11} {'mem@end MiB':>12}")
    for r in results["runs"]:
        m = r["memory_bytes"]
        print(f"{r['decoder']:<8} {str(r['compile']):<8} {r['dit_ms']:>8.1f} {r['decode_ms']:>10.1f} {r['fps']:>6.1f} "
              f"{r['ttff_s']:>7.2f} {r['switch_s']:>9.2f} {m['chunk_10'] / 2**20:>11.0f} {m['last_chunk'] / 2**20:>12.0f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
