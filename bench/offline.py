"""Benchmarks of the model in this process, no network: per-chunk cost and its phases,
time to first frame, control latency, efficiency, baselines, stream length, sessions.

Every function takes a built model and returns a dict of plain numbers (seconds unless
a key says otherwise) for the JSON report.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from bench.baselines import NoCacheStream, growing_generator
from bench.timing import rss_bytes, summary, timed, torch_threads
from cache.kv import CacheBatch
from model.checkpoint import LiveReel, build_model
from model.config import flops_per_chunk, flops_per_token
from model.generate import Generator, _cat_cam, _cat_text, _evaluate, decode_batch, step_batch
from model.sampling import Sampling

log = logging.getLogger(__name__)

PROMPTS = ("a red ball bouncing over a meadow by day under clear skies",
           "a blue cube drifting across the desert at night in the rain")
PHASES = ("controls", "prepare", "denoise", "context", "decode", "encode")


def fill_chunks(model: LiveReel) -> int:
    """Chunks until the cache layout is full (sink, memory, window): steady state."""
    d = model.config.dit
    return d.sink_chunks + d.memory_chunks + d.window_chunks + 1


def new_generator(model: LiveReel, seed: int = 0, sampling: Sampling = Sampling(), warm: int = 0) -> Generator:
    gen = sampling.generator(model, seed)
    gen.set_prompt(PROMPTS[0])
    gen.set_camera(pan=(0.25, 0.0))
    for _ in range(warm):
        gen.next_frames()
    return gen


class Encoder:
    """VP8 at the server's settings (streamer.webrtc), one per stream."""

    def __init__(self, model: LiveReel):
        from streamer.webrtc import CLOCK_RATE, Vp8Encoder

        cfg = model.config
        self.codec = Vp8Encoder(cfg.image_size, cfg.fps)
        self.tick = CLOCK_RATE // cfg.fps
        self.pts = 0

    def encode(self, frames: np.ndarray) -> int:
        """Encode a chunk's frames; returns the bytes produced."""
        size = 0
        for frame in frames:
            size += self.codec.encode(frame, self.pts).size
            self.pts += self.tick
        return size


def _chunk(gen: Generator, enc: Encoder) -> dict[str, tuple[float, float]]:
    """One chunk through DiT, VAE and VP8; per phase (wall, cpu) seconds."""
    frames = gen.decode(gen.step())
    _, t = timed(lambda: enc.encode(frames))
    out = {k: (v.wall, v.cpu) for k, v in gen.timings.items()}
    out["encode"] = (t.wall, t.cpu)
    return out


def _phase_summary(rows: list[dict[str, tuple[float, float]]], steps: int) -> dict:
    out = {}
    for p in PHASES:
        out[p] = {"wall_ms": summary([r[p][0] for r in rows], 1e3), "cpu_ms": summary([r[p][1] for r in rows], 1e3)}
    for clock, i in (("wall_ms", 0), ("cpu_ms", 1)):
        out["denoise_step"] = out.get("denoise_step", {})
        out["denoise_step"][clock] = summary([r["denoise"][i] / steps for r in rows], 1e3)
        out["dit"] = out.get("dit", {})
        out["dit"][clock] = summary([r["denoise"][i] + r["context"][i] for r in rows], 1e3)
        out["total"] = out.get("total", {})
        out["total"][clock] = summary([sum(r[p][i] for p in PHASES) for r in rows], 1e3)
    return out


def chunk_costs(model: LiveReel, chunks: int, sampling: Sampling = Sampling()) -> dict:
    """Per-chunk time at steady state, split into phases; fps and real-time factor, done
    one phase after another (as `Session.step` and the track do today)."""
    cfg = model.config
    gen, enc = new_generator(model, sampling=sampling, warm=fill_chunks(model) + 1), Encoder(model)
    rows = [_chunk(gen, enc) for _ in range(chunks)]
    evals = gen.steps - gen.warm_start  # a model without a warped prior starts every chunk from noise
    phases = _phase_summary(rows, evals)
    video = cfg.frames_per_chunk / cfg.fps
    out = {"chunks": chunks, **sampling.to_dict(), "denoise_evals": evals, "cfg_batch": gen.cfg_batch,
           "frames_per_chunk": cfg.frames_per_chunk,
           "video_seconds_per_chunk": video, "phases": phases}
    for clock in ("wall", "cpu"):
        t = phases["total"][f"{clock}_ms"]["median"] / 1e3
        out[f"fps_{clock}"] = cfg.frames_per_chunk / t
        out[f"rtf_{clock}"] = video / t
    return out


def pipelined(model: LiveReel, chunks: int, sampling: Sampling = Sampling(), decode_threads: int = 1) -> dict:
    """Throughput with decode + encode of chunk n on a second thread while the DiT makes
    chunk n+1: the chunk period becomes max(prior + DiT, decode + encode) given free cores.
    The second thread runs `decode_threads` intra-op threads (a per-thread setting; with
    this process's count on both threads, 2 + 2 on 2 cores, it ran at RTF 1.64-1.68).
    A model whose prior warps the picture shown (`prior_from_shown`) needs chunk n decoded
    before chunk n+1's prior: it decodes on the first thread and overlaps only the encode."""
    cfg = model.config
    gen, enc = new_generator(model, sampling=sampling, warm=fill_chunks(model) + 1), Encoder(model)
    shown = bool(getattr(model, "prior_from_shown", False))

    def make():
        x = gen.step()
        return gen.decode(x) if shown else x

    def finish(x):
        enc.encode(x if shown else gen.decode(x))

    with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(decode_threads,)) as pool:
        pending = pool.submit(finish, make())
        start = time.perf_counter()
        for _ in range(chunks):
            x = make()
            pending.result()
            pending = pool.submit(finish, x)
        pending.result()
        wall = time.perf_counter() - start
    fps = chunks * cfg.frames_per_chunk / wall
    return {"chunks": chunks, "overlapped": "encode" if shown else "decode + encode",
            "decode_threads": decode_threads, "dit_threads": torch.get_num_threads(),
            "fps_wall": fps, "rtf_wall": fps / cfg.fps}


def ttff_offline(model: LiveReel, reps: int, sampling: Sampling = Sampling()) -> dict:
    """Generator construction + its first chunk (DiT, decode), in a warm process."""
    make, first = [], []
    for seed in range(reps):
        gen, t = timed(lambda: sampling.generator(model, seed))
        gen.set_prompt(PROMPTS[0])
        _, t2 = timed(gen.next_frames)
        make.append(t.wall)
        first.append(t2.wall)
    return {"construct_s": summary(make), "first_chunk_s": summary(first),
            "total_s": summary([a + b for a, b in zip(make, first)])}


def control_offline(model: LiveReel, reps: int, sampling: Sampling = Sampling()) -> dict:
    """A control staged at a chunk boundary -> its first frame decoded (the chunk made under
    it, with the re-cache of a prompt switch). A control arriving mid-chunk also waits for
    the chunk in progress: on average half a chunk more, at worst a whole one."""
    gen = new_generator(model, sampling=sampling, warm=fill_chunks(model) + 1)
    steady = [timed(gen.next_frames)[1].wall for _ in range(max(3, reps // 2))]
    chunk = float(np.median(steady))
    out = {"chunk_s": chunk}
    for what in ("prompt", "camera"):
        lat = []
        for i in range(reps):
            if what == "prompt":
                gen.set_prompt(PROMPTS[(i + 1) % 2])
            else:
                gen.set_camera(pan=((-1) ** i * 0.5, 0.1))
            lat.append(timed(gen.next_frames)[1].wall)
            gen.next_frames()  # a normal chunk between switches
        s = summary(lat)
        out[what] = {"boundary_s": s, "expected_s": s["median"] + chunk / 2, "worst_s": s["p95"] + chunk}
    return out


def efficiency(model: LiveReel, costs: dict, peak: dict) -> dict:
    """The DiT's achieved FLOP/s (FLOPs counted from the config, for the evaluations
    `chunk_costs` ran) over the matmul peak measured in this run, by wall clock and by
    CPU time."""
    d = model.config.dit
    text_tokens = model.config.text.max_tokens
    flops = flops_per_chunk(d, costs["denoise_evals"], text_tokens, batch=costs["cfg_batch"])
    out = {"flops_per_chunk": flops, "peak": peak}
    for clock in ("wall", "cpu"):
        t = costs["phases"]["dit"][f"{clock}_ms"]["median"] / 1e3
        out[f"dit_flops_{clock}"] = flops / t
        out[f"fraction_of_peak_{clock}"] = flops / t / peak[f"flops_{clock}"]
    return out


@torch.no_grad()
def efficiency_by_rows(model: LiveReel, rows: list[int], reps: int, peak: dict,
                       sampling: Sampling = Sampling()) -> dict:
    """One DiT evaluation of `rows` chunks side by side at steady state (each row reading
    the same full cache), as a batched step of several sessions makes it (the fused
    context pass is 2 rows for one session): median wall ms, GFLOP/s and share of the
    matmul peak. How much of the shortfall is the size of one evaluation."""
    d = model.config.dit
    gen = new_generator(model, sampling=sampling, warm=fill_chunks(model) + 1)
    gen.flush()
    gen._begin(gen.take_controls())  # the next chunk's read of the full cache
    text, cam = gen._batch_text(gen._text_now), gen._batch_cam(gen._cam)
    flops = d.tokens_per_chunk * flops_per_token(d, d.cache_tokens, model.config.text.max_tokens)
    out = {}
    for n in rows:
        x = torch.randn(n, d.chunk_frames, d.latent_channels, d.latent_size, d.latent_size)
        ctx = gen.cache if n == 1 else CacheBatch([gen.cache] * n)
        args = (model, x, 0.5, _cat_text([text] * n), _cat_cam([cam] * n), ctx, gen.cfg_batch)
        _evaluate(*args)
        ms = summary([timed(lambda: _evaluate(*args))[1].wall for _ in range(reps)], 1e3)["median"]
        rate = n * gen.cfg_batch * flops / (ms / 1e3)
        out[str(n)] = {"ms": ms, "dit_flops_wall": rate, "fraction_of_peak_wall": rate / peak["flops_wall"]}
    return out


def _nc_dit(nc: NoCacheStream) -> float:
    """One chunk of the no-cache stream; seconds of its network evaluations (the DiT work
    that ours does as denoise + context; its warped prior is the same VAE work as ours)."""
    nc.step()
    return nc.timings["dit"].wall


def baselines(model: LiveReel, lengths: list[int], reps: int, unbounded_max: int, sampling: Sampling = Sampling(),
              steady_chunks: int = 30) -> dict:
    """DiT time per chunk (denoise + context) at given stream lengths: ours (one stream
    made up to each length), no KV cache and an unbounded cache (histories filled in
    directly), measured at each length one after another, so that all three see the
    same load. `long_run` extends ours to the full stream in a fresh process."""
    fill = fill_chunks(model)
    out: dict = {"lengths": lengths, "ours_ms": [], "no_cache_ms": [], "unbounded_ms": [], "unbounded_cache_mb": [],
                 "unbounded_max": unbounded_max}
    ours, made = new_generator(model, sampling=sampling), 0

    def dit_ms(g: Generator) -> float:
        return (g.timings["denoise"].wall + g.timings["context"].wall) * 1e3

    for n in sorted(lengths):
        while made < n:
            ours.step()
            made += 1
        ms = []
        for _ in range(reps):
            ours.step()
            ms.append(dit_ms(ours))
        made += reps
        out["ours_ms"].append(float(np.median(ms)))
        nc = NoCacheStream(new_generator(model, sampling=sampling))
        nc.prefill(n)
        out["no_cache_ms"].append(summary([_nc_dit(nc) for _ in range(reps)], 1e3)["median"])
        if n <= unbounded_max:
            gen = growing_generator(model, 0, sampling)
            gen.set_prompt(PROMPTS[0])
            gen.apply_controls()  # at chunk 0: no re-cache
            gen.cache.prefill(n)
            gen.chunk_index = n
            ms = []
            for _ in range(reps):
                gen.step()
                ms.append(dit_ms(gen))
            out["unbounded_ms"].append(float(np.median(ms)))
            out["unbounded_cache_mb"].append(gen.cache.allocated_bytes() / 2**20)
        else:
            out["unbounded_ms"].append(None)
            out["unbounded_cache_mb"].append(None)
    measured = [(n, t) for n, t in zip(lengths, out["unbounded_ms"]) if t is not None]
    if len([m for m in measured if m[0] >= fill]) >= 2:
        measured = [m for m in measured if m[0] >= fill]
    if len(measured) >= 2:  # a straight line through the grown part: ms per chunk of history
        xs, ys = zip(*measured)
        slope, icpt = np.polyfit(xs, ys, 1)
        out["unbounded_ms_per_chunk_of_history"] = float(slope)
        out["unbounded_ms_at_1000_extrapolated"] = float(icpt + slope * 1000)
    out["steady"] = steady_state(model, steady_chunks, sampling)
    log.info("baselines: steady state ours %.1f ms, no cache %.1f ms", out["steady"]["ours_ms"],
             out["steady"]["no_cache_ms"])
    return out


def steady_state(model: LiveReel, chunks: int, sampling: Sampling = Sampling()) -> dict:
    """Ours vs no cache once the context is full, alternating chunk by chunk: DiT ms each
    (medians), their ratio, and the spread of the chunk-by-chunk ratio (quartiles: it moves
    with the host's load, the no-cache evaluation's larger working set more than ours)."""
    fill = fill_chunks(model)
    ours = new_generator(model, sampling=sampling, warm=fill + 1)
    nc = NoCacheStream(new_generator(model, sampling=sampling))
    nc.prefill(fill + 1)
    a, b, steps = [], [], ([], [])
    for _ in range(chunks):
        ours.step()
        a.append((ours.timings["denoise"].wall + ours.timings["context"].wall) * 1e3)
        b.append(_nc_dit(nc) * 1e3)
        steps[0].append(sum(span.wall for span in ours.timings.values()) * 1e3)
        steps[1].append(sum(span.wall for span in nc.timings.values()) * 1e3)
    ratio = np.array(b) / np.array(a)
    return {"ours_ms": summary(a)["median"], "no_cache_ms": summary(b)["median"],
            "speedup": summary(b)["median"] / summary(a)["median"], "chunks": len(a),
            "speedup_p25": float(np.percentile(ratio, 25)), "speedup_p75": float(np.percentile(ratio, 75)),
            # whole chunks without the VAE decode (controls, warped prior, DiT): the
            # prior is the same work in both, so this ratio is the smaller one
            "ours_step_ms": summary(steps[0])["median"], "no_cache_step_ms": summary(steps[1])["median"],
            "step_speedup": summary(steps[1])["median"] / summary(steps[0])["median"]}


def wider(model: LiveReel, dim: int, heads: int, prior_picture: str | None = None) -> LiveReel:
    """`model` with its DiT made `dim` wide with `heads` heads, random weights (a chunk costs
    the same whatever they are), its VAE and text encoder kept; `prior_picture`: the warped
    prior's picture (`DiTConfig.prior_picture`; None: the model's)."""
    dit = dataclasses.replace(model.config.dit, dim=dim, heads=heads,
                              prior_picture=prior_picture or model.config.dit.prior_picture)
    cfg = dataclasses.replace(model.config, dit=dit)
    out = build_model(cfg).eval()
    out.vae.load_state_dict(model.vae.state_dict())
    out.text.load_state_dict(model.text.state_dict())
    return out


def widths(model: LiveReel, specs: list[tuple[int, int]], chunks: int, peak: dict,
           sampling: Sampling = Sampling(), engine: str = "eager", threads: int | None = None,
           prior_picture: str | None = None) -> dict:
    """What a wider DiT would cost here: for each (dim, heads), the model's DiT at that
    width (`wider`): chunk time, real-time factor, share of the matmul peak and the steady
    speed-up over no cache, measured as for the model itself, run by `engine` with
    `threads` (the steady speed-up over no cache: eager). Sizes the next model: how wide
    it can be and stay real time, and what share of the peak each width reaches."""
    from model.engine import use_engine

    threads = threads or torch.get_num_threads()
    out = {}
    for dim, heads in specs:
        log.info("width %d, %d heads", dim, heads)
        with torch_threads(threads):
            m = wider(model, dim, heads, prior_picture)
            steady = steady_state(m, chunks, sampling)
            use_engine(m, engine, threads=threads)
            costs = chunk_costs(m, chunks, sampling)
            eff = efficiency(m, costs, peak)
        out[f"{dim}/{heads}"] = {
            "engine": engine, "dim": dim, "heads": heads, "prior_picture": m.config.dit.prior_picture, "dit_params_m": sum(p.numel() for p in m.dit.parameters()) / 1e6,
            "dit_ms": costs["phases"]["dit"]["wall_ms"]["median"], "total_ms": costs["phases"]["total"]["wall_ms"]["median"],
            "rtf_wall": costs["rtf_wall"], "fraction_of_peak_wall": eff["fraction_of_peak_wall"],
            "fraction_of_peak_cpu": eff["fraction_of_peak_cpu"], "no_cache_speedup": steady["speedup"]}
    return out


def concurrency(model: LiveReel, sessions: list[int], rounds: int, sampling: Sampling = Sampling(), warm: int | None = None) -> dict:
    """Aggregate and per-session fps with several sessions on this process's threads:
    unbatched (one chunk after another, as the scheduler does today) and batched
    (`step_batch` / `decode_batch`), rounds of the two modes alternating. Each round makes
    one chunk per session (DiT, decode, VP8)."""
    cfg = model.config
    out: dict = {}
    warm = fill_chunks(model) + 1 if warm is None else warm
    for n in sessions:
        un = [new_generator(model, seed=i, sampling=sampling) for i in range(n)]
        ba = [new_generator(model, seed=i, sampling=sampling) for i in range(n)]
        encs = {id(g): Encoder(model) for g in un + ba}

        def unbatched():
            for g in un:
                encs[id(g)].encode(g.decode(g.step()))

        def batched():
            for g, frames in zip(ba, decode_batch(ba, step_batch(ba))):
                encs[id(g)].encode(frames)

        for _ in range(warm):
            unbatched()
            batched()
        times = {"unbatched": [], "batched": []}
        for _ in range(rounds):
            times["unbatched"].append(timed(unbatched)[1])
            times["batched"].append(timed(batched)[1])
        row = {}
        for mode, ts in times.items():
            frames = n * cfg.frames_per_chunk
            wall = float(np.median([t.wall for t in ts]))
            cpu = float(np.median([t.cpu for t in ts]))
            row[mode] = {"aggregate_fps_wall": frames / wall, "per_session_fps_wall": frames / wall / n,
                         "aggregate_fps_cpu": frames / cpu, "per_session_fps_cpu": frames / cpu / n,
                         "round_ms_wall": wall * 1e3, "round_ms_cpu": cpu * 1e3}
        row["batched_speedup_wall"] = row["batched"]["aggregate_fps_wall"] / row["unbatched"]["aggregate_fps_wall"]
        out[str(n)] = row
        log.info("concurrency %d: unbatched %.1f fps, batched %.1f fps", n,
                 row["unbatched"]["aggregate_fps_wall"], row["batched"]["aggregate_fps_wall"])
    return out


# ---------------------------------------------------------------- the long stream


def long_run(checkpoint: str, minutes: float, threads: int, early: int, late: int, window: int,
             trace_chunks: int, sampling: Sampling = Sampling(), compile: bool = False,
             engine: str = "eager") -> dict:
    """A stream of `minutes` of video (DiT + decode), in a fresh process so that its
    memory is its own: chunk time at `early` and `late` chunks (median over `window`
    chunks), resident memory every video minute; then, after the memory samples, the
    stream's chunk time at its end against a fresh stream's at chunk `early`, taking
    turns (robust to the load drifting), and the Python heap's growth over
    `trace_chunks` more chunks under tracemalloc. A prompt switch every minute keeps
    the re-cache in the loop; the camera pans throughout."""
    from bench.run import load_checkpoint

    from model.engine_choice import apply_engine

    torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    apply_engine(model, engine, compile)
    if compile:
        from model.compile import compile_dit, warm_up

        warm_up(compile_dit(model), sampling, streams=1)
    cfg = model.config
    per_minute = max(1, round(60 * cfg.fps / cfg.frames_per_chunk))
    n = max(late + window, math.ceil(minutes * per_minute))
    every = min(per_minute, max(1, n // 20))  # memory samples: every video minute, or 20 in all
    gen = new_generator(model, sampling=sampling)
    dit_wall, dit_cpu, chunk_wall, mem = [], [], [], []
    start = time.perf_counter()
    for i in range(n):
        if i and i % per_minute == 0:
            gen.set_prompt(PROMPTS[(i // per_minute) % 2])
        t0 = time.perf_counter()
        gen.decode(gen.step())
        chunk_wall.append(time.perf_counter() - t0)
        t = gen.timings
        dit_wall.append(t["denoise"].wall + t["context"].wall)
        dit_cpu.append(t["denoise"].cpu + t["context"].cpu)
        if (i + 1) % every == 0 or i + 1 == n:
            mem.append({"chunk": i + 1, "video_minutes": (i + 1) / per_minute, **rss_bytes(),
                        "cache_bytes": gen.cache.allocated_bytes(), "kept_chunks": len(gen._kept)})
    elapsed = time.perf_counter() - start

    def at(xs: list[float], i: int) -> float:
        return float(np.median(xs[i:i + window])) * 1e3

    # The same comparison interleaved: CPU time drifts with the load of other processes
    # over minutes, so a fresh stream at chunk `early` and this one at its end take turns.
    fresh = new_generator(model, seed=1, sampling=sampling, warm=early)
    turns: dict[int, list[float]] = {id(fresh): [], id(gen): []}
    walls: dict[int, list[float]] = {id(fresh): [], id(gen): []}
    for i in range(window):
        for g in ((fresh, gen) if i % 2 else (gen, fresh)):
            g.decode(g.step())
            turns[id(g)].append(g.timings["denoise"].cpu + g.timings["context"].cpu)
            walls[id(g)].append(g.timings["denoise"].wall + g.timings["context"].wall)
    end_ms, early_ms = float(np.median(turns[id(gen)])) * 1e3, float(np.median(turns[id(fresh)])) * 1e3
    end_wall, early_wall = float(np.median(walls[id(gen)])) * 1e3, float(np.median(walls[id(fresh)])) * 1e3
    del fresh

    gc.collect()
    tracemalloc.start()
    gen.next_frames()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(trace_chunks):
        gen.next_frames()
    gc.collect()
    after, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    ref = min(per_minute, max(every, n // 4))  # minute 1, or a quarter of a shorter run
    first = next(m for m in mem if m["chunk"] >= ref)
    lengths = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, n - window} & set(range(1, n - window + 1)))
    return {
        "chunks": n, "video_minutes": n / per_minute, "elapsed_s": elapsed, "window": window,
        "early_chunk": early, "late_chunk": late,
        "dit_ms_early_wall": at(dit_wall, early), "dit_ms_late_wall": at(dit_wall, late),
        "dit_ms_early_cpu": at(dit_cpu, early), "dit_ms_late_cpu": at(dit_cpu, late),
        "chunk_ms_early_wall": at(chunk_wall, early), "chunk_ms_late_wall": at(chunk_wall, late),
        "late_over_early_cpu": at(dit_cpu, late) / at(dit_cpu, early),
        "interleaved": {"early_chunk": early, "end_chunk": n, "dit_ms_early_cpu": early_ms,
                        "dit_ms_end_cpu": end_ms, "end_over_early_cpu": end_ms / early_ms,
                        "dit_ms_early_wall": early_wall, "dit_ms_end_wall": end_wall,
                        "end_over_early_wall": end_wall / early_wall},
        "late_over_early_wall": at(chunk_wall, late) / at(chunk_wall, early),
        "curve": {"lengths": lengths, "dit_ms_wall": [at(dit_wall, i - 1) for i in lengths],
                  "dit_ms_cpu": [at(dit_cpu, i - 1) for i in lengths]},
        "memory": mem,
        "reference_chunk": first["chunk"], "peak_rss_minute_1_mb": first["peak"] / 2**20, "peak_rss_end_mb": mem[-1]["peak"] / 2**20,
        "peak_growth": mem[-1]["peak"] / first["peak"] - 1,
        "rss_end_over_minute_1": mem[-1]["rss"] / first["rss"] - 1,
        "python_heap_growth_bytes": after - before, "python_heap_trace_chunks": trace_chunks,
        "python_heap_traced_peak_bytes": traced_peak,
    }
