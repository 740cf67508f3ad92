"""Engines against eager PyTorch, per part of a chunk, in one process (`livereel bench`).

For the model and each wider DiT asked for (`--widths`), one copy of the model per engine
(model/engine.py) and one stream each, from the same seed and camera; then in blocks of a
few chunks, the engines in turn (so a slow spell of the machine hits all of them alike;
a block's first chunk, which meets the last engine's idle threads still spinning, is
not timed; a pause between them instead lets this VM park the cores, which slows all
that follows it, 1.3-1.8x measured): the phases
of a chunk (warped prior, DiT: its evaluations alone and the whole phase with the
sampler and cache work around them, VAE decode, VP8 encode) in wall-clock ms, the ratio of each
to eager's, the real-time factor, and how far each engine's latents are from eager's.
Torch runs its intra-op threads for eager and one thread beside an engine (its spinning
workers would take the cores the engine's threads need), as `use_engine` sets it.
The engines' work runs on their own threads, so only wall-clock figures mean anything.
Start-up is reported too: seconds to export each part (0 when the file was cached) and
to load and compile it, and the first chunk's wall time.
"""

from __future__ import annotations

import copy
import logging
import time

import torch

from bench.offline import Encoder, fill_chunks, new_generator, wider
from bench.timing import summary
from model.checkpoint import LiveReel
from model.engine import available, use_engine
from model.sampling import Sampling

log = logging.getLogger(__name__)

PARTS = ("prepare", "evaluate", "dit", "decode", "encode", "total")
BLOCK = 5  # chunks an engine runs in a row (the first, after another engine's, untimed)


class Evaluations:
    """Wall seconds a model's `evaluate` calls take (the DiT evaluations alone: no sampler
    arithmetic, no cache bookkeeping between them)."""

    def __init__(self, model: LiveReel):
        self.inner, self.seconds = model.evaluate, 0.0
        model.evaluate = self

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def take(self) -> float:
        out, self.seconds = self.seconds, 0.0
        return out


def _chunk(gen, enc: Encoder, evals: Evaluations) -> dict[str, float]:
    evals.take()
    start = time.perf_counter()
    frames = gen.decode(gen.step())
    t = time.perf_counter()
    enc.encode(frames)
    encode = time.perf_counter() - t
    tm = gen.timings
    return {"prepare": tm["prepare"].wall + tm["controls"].wall, "evaluate": evals.take(),
            "dit": tm["denoise"].wall + tm["context"].wall, "decode": tm["decode"].wall, "encode": encode,
            "total": time.perf_counter() - start}


def compare(model: LiveReel, engines: list[str], chunks: int, threads: int, sampling: Sampling = Sampling()) -> dict:
    """Interleaved chunk costs of `model` run eagerly and by each of `engines`."""
    names = ["eager"] + [e for e in engines if e != "eager" and available(e)]
    gens, encs, evals, startup = {}, {}, {}, {}
    for name in names:
        m = copy.deepcopy(model) if name == "eager" else use_engine(copy.deepcopy(model), name, threads=threads)
        torch.set_num_threads(threads if name == "eager" else 1)
        start = time.perf_counter()
        gens[name] = new_generator(m, sampling=sampling, warm=1)
        first = time.perf_counter() - start
        for _ in range(fill_chunks(m)):
            gens[name].next_frames()
        encs[name], evals[name] = Encoder(m), Evaluations(m)
        parts = getattr(m, "engine_parts", None)
        startup[name] = {"first_chunk_s": first, **({
            "export_s": {p.name: p.export_s for p in parts.parts},
            "load_s": {p.name: p.load_s for p in parts.parts}} if parts else {})}
    rows: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    errors: dict[str, float] = {n: 0.0 for n in names[1:]}
    for _ in range(max(1, chunks // BLOCK)):
        for name in names:
            torch.set_num_threads(threads if name == "eager" else 1)
            block = [_chunk(gens[name], encs[name], evals[name]) for _ in range(BLOCK + 1)]
            rows[name] += block[1:]  # the first meets the last engine's threads still spinning
        ref = gens["eager"].unwritten.x
        for name in names[1:]:
            err = float((gens[name].unwritten.x - ref).abs().max() / ref.abs().max())
            errors[name] = max(errors[name], err)
    torch.set_num_threads(threads)
    video = model.config.frames_per_chunk / model.config.fps
    out: dict = {"dit_params_m": sum(p.numel() for p in model.dit.parameters()) / 1e6, "chunks": chunks,
                 "threads": threads, "prior_picture": model.config.dit.prior_picture, "engines": {}}
    base = {p: summary([r[p] for r in rows["eager"]], 1e3)["median"] for p in PARTS}
    for name in names:
        med = {p: summary([r[p] for r in rows[name]], 1e3)["median"] for p in PARTS}
        out["engines"][name] = {
            "ms": med, "speedup": {p: base[p] / med[p] for p in PARTS}, "rtf": video / (med["total"] / 1e3),
            "max_rel_error": errors.get(name, 0.0), **startup[name]}
    return out


def compare_widths(model: LiveReel, engines: list[str], specs: list[tuple[int, int]], chunks: int, threads: int,
                   sampling: Sampling = Sampling(), prior_picture: str | None = None) -> dict:
    """`compare` for the model itself and for its DiT made wider (random weights; the
    prior's picture as `prior_picture` says, None: the model's)."""
    d = model.config.dit
    out = {f"{d.dim}/{d.heads}": compare(model, engines, chunks, threads, sampling)}
    for dim, heads in specs:
        if (dim, heads) != (d.dim, d.heads):
            log.info("engines: DiT width %d/%d", dim, heads)
            out[f"{dim}/{heads}"] = compare(wider(model, dim, heads, prior_picture), engines, chunks, threads,
                                              sampling)
    return out


def table(results: dict) -> str:
    """One line per width and engine: ms per part (and x eager), RTF, error, start-up."""
    lines = ["DiT width   engine        " + "  ".join(f"{p:>15}" for p in PARTS) + "    RTF   max rel err  start-up"]
    for spec, res in results.items():
        for name, e in res["engines"].items():
            cells = "  ".join(f"{e['ms'][p]:7.1f} ({e['speedup'][p]:4.2f}x)" for p in PARTS)
            start = f"first chunk {e['first_chunk_s']:.1f} s"
            if "export_s" in e:
                start += f", export {sum(e['export_s'].values()):.1f} s, load {sum(e['load_s'].values()):.1f} s"
            lines.append(f"{spec:<11} {name:<12}  {cells}  {e['rtf']:5.2f}  {e['max_rel_error']:11.1e}  {start}")
    lines.append("ms: median wall-clock per chunk (x: eager's over the engine's), engines interleaved in blocks")
    return "\n".join(lines)
