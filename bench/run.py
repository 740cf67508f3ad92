"""`livereel bench`: latency, throughput and efficiency of the streaming model.

For the chosen checkpoint and the `debug` preset: per-chunk time split into phases,
fps and real-time factor, time to first frame and control latency (offline and live
over WebRTC), chunk time and memory over a long stream, achieved FLOP/s against the
measured matmul peak, the no-cache and unbounded-cache baselines, and throughput with
1, 2 and 4 sessions, batched and unbatched. A table on stdout, every figure in the
JSON (`--json`), PNG plots (`--plots`). `--smoke` runs everything tiny, in seconds.
`--cluster` measures cluster mode instead (bench/cluster.py).

Wall-clock figures stretch when other processes share the CPUs; CPU-time figures
(the thread's own) barely do. Both are reported, and every comparison is made
against a baseline run in the same process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import cluster
from bench.timing import matmul_peak, torch_threads
from model.config import get_config
from model.engine_choice import CHOICES, add_engine_argument
from model.sampling import Sampling, add_sampling_arguments, sampling_from_args

ENGINE_NAMES = tuple(c for c in CHOICES if c not in ("auto", "eager"))

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sizes:
    """How much of everything to run."""

    chunks: int = 30
    pipelined_chunks: int = 20
    ttff_reps: int = 3
    control_reps: int = 8
    live_ttff_reps: int = 3
    live_control_reps: int = 8
    live_seconds: float = 5.0
    lengths: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)
    baseline_reps: int = 3
    steady_chunks: int = 30  # ours vs no cache, alternating, once the context is full
    unbounded_max: int = 256
    sessions: tuple[int, ...] = (1, 2, 4)
    rounds: int = 8
    session_warm: int | None = None  # chunks before timing sessions; None: until the cache is full
    early: int = 10
    late: int = 1000
    window: int = 20
    trace_chunks: int = 100
    peak_seconds: float = 2.0
    eval_rows: tuple[int, ...] = (1, 2, 4, 8)  # chunks in one DiT evaluation, for efficiency_by_rows
    eval_reps: int = 15
    width_chunks: int = 20  # chunks per wider DiT (--widths)
    engine_chunks: int = 40  # chunks per engine and width in the engine comparison


SMOKE = Sizes(chunks=3, pipelined_chunks=3, ttff_reps=1, control_reps=2, live_ttff_reps=1, live_control_reps=1,
              live_seconds=1.2, lengths=(1, 2, 8), baseline_reps=1, steady_chunks=2, unbounded_max=8, rounds=1, session_warm=1,
              early=2, late=12,
              window=2, trace_chunks=4, peak_seconds=0.2, eval_rows=(1, 2), eval_reps=1, width_chunks=2,
              engine_chunks=5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="default",
                        help='model to measure besides the debug preset: "default" (shipped; random weights of '
                             'the default preset if it is not trained yet), "debug", or a path')
    parser.add_argument("--json", type=Path, metavar="OUT", help="write every figure to this JSON file")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write PNG plots into this folder")
    parser.add_argument("--smoke", action="store_true", help="run everything tiny (seconds), for CI")
    parser.add_argument("--threads", type=int,
                        help="intra-op threads (default: all CPUs if they make a chunk >= 1.15x faster than one, else 1)")
    parser.add_argument("--minutes", type=float,
                        help="video minutes of the long stream (default 20; 0.05 with --smoke)")
    add_sampling_arguments(parser)
    add_engine_argument(parser)
    parser.add_argument("--engines", type=engine_list, default=["openvino", "onnxruntime"], metavar="NAME,...",
                        help="engines to compare with eager PyTorch, chunk part by part, on the checkpoint and "
                             "each of --widths (default: openvino,onnxruntime; those not installed are left out)")
    parser.add_argument("--engines-only", action="store_true",
                        help="run only that comparison (a few minutes) and its table")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the DiT's blocks (as serve --compile; with --engine eager)")
    parser.add_argument("--skip-live", action="store_true", help="leave out the WebRTC measurements")
    parser.add_argument("--widths", type=width_specs, default=[], metavar="DIM/HEADS,...",
                        help="also time the checkpoint's DiT made wider, random weights (e.g. 256/4,384/6): "
                             "chunk time, real-time factor, share of the matmul peak, speed-up over no cache")
    parser.add_argument("--prior-picture", choices=("decoded", "shown"), default=None,
                        help="the wider DiTs' warped prior warps this picture of the last frame "
                             "(DiTConfig.prior_picture; default: the checkpoint's): 'shown' sizes a next "
                             "model trained with train dit --prior-picture shown")
    cluster.add_arguments(parser)


def engine_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in ENGINE_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: want names among {', '.join(ENGINE_NAMES)}")
    return names


def width_specs(text: str) -> list[tuple[int, int]]:
    """'256/4,384/6' -> [(256, 4), (384, 6)], each a valid DiT width (dim divisible by heads,
    head dims that the RoPE split accepts), checked against the default preset."""
    specs = []
    for item in text.split(","):
        try:
            dim, heads = (int(v) for v in item.strip().split("/"))
            dataclasses.replace(get_config("default").dit, dim=dim, heads=heads)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{item.strip()!r}: want DIM/HEADS of a valid DiT ({e})") from None
        specs.append((dim, heads))
    return specs


# ---------------------------------------------------------------- models


def load_checkpoint(name: str):
    """(model, description): a trained checkpoint, or the preset at random init where the
    default is not trained yet (random weights cost the same)."""
    from model import CheckpointError, load_model
    from model.checkpoint import build_model
    from model.config import get_config

    if name == "debug":
        return load_model("debug"), "debug preset, random init"
    try:
        return load_model(name), f"checkpoint {name!r} (trained weights)"
    except CheckpointError:
        if name != "default":
            raise
        model = build_model(get_config("default")).eval()
        return model, "default preset, random init (no trained checkpoint yet; random weights cost the same)"


def measure_model(name: str, sizes: Sizes, args: argparse.Namespace, threads: int, sampling: Sampling) -> dict:
    from bench import live, offline

    from model.engine_choice import apply_engine

    model, weights = load_checkpoint(name)
    torch.set_num_threads(threads)
    apply_engine(model, args.engine, args.compile)  # an engine takes the threads: torch keeps one
    engine = model.engine_parts.engine if hasattr(model, "engine_parts") else "eager"
    eager = model if engine == "eager" else load_checkpoint(name)[0]  # for the baselines
    if args.compile:
        from model.compile import compile_dit, warm_up

        warm_up(compile_dit(model), sampling)
    cfg = model.config
    out: dict = {"name": name, "weights": weights, "preset": cfg.name,
                 "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                 "config": {"image_size": cfg.image_size, "fps": cfg.fps, "frames_per_chunk": cfg.frames_per_chunk,
                            "tokens_per_chunk": cfg.dit.tokens_per_chunk, "cache_tokens": cfg.dit.cache_tokens,
                            "dim": cfg.dit.dim, "depth": cfg.dit.depth, **sampling.to_dict(),
                            "compiled": args.compile, "engine": engine}}
    offline.new_generator(model, sampling=sampling, warm=2)  # one-off lazy init, as `serve` does
    t = time.perf_counter()
    log.info("%s: per-chunk costs", name)
    out["chunk"] = offline.chunk_costs(model, sizes.chunks, sampling)
    out["pipelined"] = offline.pipelined(model, sizes.pipelined_chunks, sampling)
    log.info("%s: matmul peak and efficiency", name)
    out["efficiency"] = offline.efficiency(model, out["chunk"], matmul_peak(sizes.peak_seconds))
    out["efficiency"]["by_rows"] = offline.efficiency_by_rows(model, list(sizes.eval_rows), sizes.eval_reps,
                                                              out["efficiency"]["peak"], sampling)
    log.info("%s: time to first frame, control latency (offline)", name)
    out["ttff_offline"] = offline.ttff_offline(model, sizes.ttff_reps, sampling)
    out["control_offline"] = offline.control_offline(model, sizes.control_reps, sampling)
    log.info("%s: baselines", name)
    with torch_threads(threads):  # ours and no cache alike, eager (the cache's gain, not the engine's)
        out["baselines"] = offline.baselines(eager, list(sizes.lengths), sizes.baseline_reps, sizes.unbounded_max,
                                             sampling, sizes.steady_chunks)
    if args.widths and name == args.checkpoint:
        log.info("%s: wider DiTs %s", name, args.widths)
        out["widths"] = offline.widths(eager, args.widths, sizes.width_chunks, out["efficiency"]["peak"], sampling,
                                       engine, threads, args.prior_picture)
    log.info("%s: sessions", name)
    out["concurrency"] = offline.concurrency(model, list(sizes.sessions), sizes.rounds, sampling, sizes.session_warm)
    if not args.skip_live:
        log.info("%s: live (WebRTC)", name)
        out["live"] = live.measure(model, sampling, sizes.live_ttff_reps, sizes.live_control_reps, sizes.live_seconds)
    minutes = args.minutes if args.minutes is not None else (0.05 if args.smoke else 20.0)
    log.info("%s: long stream (%.2f video minutes) in a fresh process", name, minutes)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        out["long_run"] = pool.submit(offline.long_run, name, minutes, threads, sizes.early, sizes.late,
                                      sizes.window, sizes.trace_chunks, sampling, args.compile, engine).result()
    out["seconds"] = time.perf_counter() - t
    return out


# ---------------------------------------------------------------- report


def targets(res: dict) -> list[dict]:
    """The issue's targets, judged on this run (wall clock unless named)."""
    fps = res["config"]["fps"]
    conc2 = res["concurrency"].get("2")
    rows = [
        ("real-time factor, one session (serial)", ">= 2", res["chunk"]["rtf_wall"], res["chunk"]["rtf_wall"] >= 2),
        ("real-time factor, one session (decode overlapped)", ">= 2", res["pipelined"]["rtf_wall"],
         res["pipelined"]["rtf_wall"] >= 2),
    ]
    if conc2:
        best = max(conc2["batched"]["per_session_fps_wall"], conc2["unbatched"]["per_session_fps_wall"])
        rows.append(("per-session fps with 2 sessions", f">= {fps}", best, best >= fps))
    if "live" in res:
        live = res["live"]
        rows.append(("time to first frame, live (s)", "<= 0.5", live["ttff_s"]["median"], live["ttff_s"]["median"] <= 0.5))
        for what in ("prompt", "camera"):
            m = live[f"{what}_latency_s"]["median"]
            rows.append((f"{what} control latency, live median (s)", "<= 0.5", m, m <= 0.5))
    lr = res["long_run"]
    # an engine's work runs on its own threads, which this thread's CPU time does not see
    clock = "cpu" if res["config"].get("engine", "eager") == "eager" else "wall"
    drift, share = lr["interleaved"][f"end_over_early_{clock}"], res["efficiency"][f"fraction_of_peak_{clock}"]
    rows += [
        (f"chunk {lr['interleaved']['end_chunk']} / chunk {lr['early_chunk']} DiT time ({clock}, interleaved)",
         "<= 1.05", drift, drift <= 1.05),
        ("peak memory growth after minute 1", "<= 2%", lr["peak_growth"], lr["peak_growth"] <= 0.02),
        (f"DiT fraction of matmul peak ({clock})", ">= 0.40", share, share >= 0.4),
        ("speed-up over no KV cache, steady state", ">= 3", res["baselines"]["steady"]["speedup"],
         res["baselines"]["steady"]["speedup"] >= 3),
    ]
    return [{"name": n, "target": t, "value": v, "met": bool(m)} for n, t, v, m in rows]


def table(report: dict) -> str:
    names = list(report["models"])
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn) -> None:
        cells = []
        for n in names:
            try:
                cells.append(fn(report["models"][n]))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        rows.append((label, cells))

    def ms(d: dict) -> str:
        return f"{d['median']:.1f} / {d['p95']:.1f}"

    def sec(d: dict) -> str:
        return f"{d['median']:.3f} / {d['p95']:.3f}"

    ph = lambda p, c: (lambda r: ms(r["chunk"]["phases"][p][f"{c}_ms"]))  # noqa: E731
    row("weights", lambda r: r["weights"].split(" (")[0])
    for p in ("prepare", "denoise", "denoise_step", "context", "decode", "encode", "total"):
        row(f"{p} ms, median / p95 (wall)", ph(p, "wall"))
        row(f"{p} ms, median / p95 (cpu)", ph(p, "cpu"))
    row("fps / real-time factor (wall)", lambda r: f"{r['chunk']['fps_wall']:.1f} / {r['chunk']['rtf_wall']:.2f}")
    row("fps / real-time factor (cpu)", lambda r: f"{r['chunk']['fps_cpu']:.1f} / {r['chunk']['rtf_cpu']:.2f}")
    row("fps / RTF, decode overlapped (wall)",
        lambda r: f"{r['pipelined']['fps_wall']:.1f} / {r['pipelined']['rtf_wall']:.2f}")
    row("time to first frame, offline s", lambda r: f"{r['ttff_offline']['total_s']['median']:.3f}")
    row("time to first frame, live s", lambda r: f"{r['live']['ttff_s']['median']:.3f}")
    for what in ("prompt", "camera"):
        row(f"{what} latency offline s (boundary/expected)",
            lambda r, w=what: f"{r['control_offline'][w]['boundary_s']['median']:.3f} / "
                              f"{r['control_offline'][w]['expected_s']:.3f}")
        row(f"{what} latency live s, median / p95",
            lambda r, w=what: sec(r["live"][f"{w}_latency_s"]))
    row("live client fps / held share", lambda r: f"{r['live']['client_fps']:.1f} / {r['live']['held_fraction']:.2f}")
    row("DiT ms at chunk early / late (cpu)",
        lambda r: f"{r['long_run']['dit_ms_early_cpu']:.1f} / {r['long_run']['dit_ms_late_cpu']:.1f} "
                  f"(#{r['long_run']['early_chunk']} / #{r['long_run']['late_chunk']})")
    row("DiT ms early / end, interleaved (cpu)",
        lambda r: f"{r['long_run']['interleaved']['dit_ms_early_cpu']:.1f} / "
                  f"{r['long_run']['interleaved']['dit_ms_end_cpu']:.1f} "
                  f"(#{r['long_run']['early_chunk']} / #{r['long_run']['interleaved']['end_chunk']})")
    row("peak RSS MB minute 1 / end (minutes)",
        lambda r: f"{r['long_run']['peak_rss_minute_1_mb']:.0f} / {r['long_run']['peak_rss_end_mb']:.0f} "
                  f"({r['long_run']['video_minutes']:.2f})")
    row("python heap growth B / chunks", lambda r: f"{r['long_run']['python_heap_growth_bytes']} / "
                                                   f"{r['long_run']['python_heap_trace_chunks']}")
    row("DiT GFLOP/s wall / cpu", lambda r: f"{r['efficiency']['dit_flops_wall'] / 1e9:.1f} / "
                                            f"{r['efficiency']['dit_flops_cpu'] / 1e9:.1f}")
    row("matmul peak GFLOP/s wall / cpu", lambda r: f"{r['efficiency']['peak']['flops_wall'] / 1e9:.1f} / "
                                                   f"{r['efficiency']['peak']['flops_cpu'] / 1e9:.1f}")
    row("DiT share of peak wall / cpu", lambda r: f"{r['efficiency']['fraction_of_peak_wall']:.0%} / "
                                                 f"{r['efficiency']['fraction_of_peak_cpu']:.0%}")
    row("DiT share of peak, one evaluation of 1 / 2 / 4 / 8 chunks (wall)",
        lambda r: " / ".join(f"{r['efficiency']['by_rows'][n]['fraction_of_peak_wall']:.0%}"
                             for n in r["efficiency"]["by_rows"]))
    row("steady DiT ms: ours / no cache (x)",
        lambda r: f"{r['baselines']['steady']['ours_ms']:.1f} / {r['baselines']['steady']['no_cache_ms']:.1f} "
                  f"({r['baselines']['steady']['speedup']:.1f}x, chunk by chunk {r['baselines']['steady']['speedup_p25']:.1f}"
                  f"-{r['baselines']['steady']['speedup_p75']:.1f})")
    row("steady chunk ms without decode: ours / no cache (x)",
        lambda r: f"{r['baselines']['steady']['ours_step_ms']:.1f} / {r['baselines']['steady']['no_cache_step_ms']:.1f} "
                  f"({r['baselines']['steady']['step_speedup']:.1f}x)")
    row("unbounded cache ms at longest measured",
        lambda r: next(f"{t:.0f} (#{n})" for n, t in zip(reversed(r["baselines"]["lengths"]),
                                                         reversed(r["baselines"]["unbounded_ms"])) if t is not None))
    for n in ("1", "2", "4"):
        row(f"{n} sessions fps/session unbatched / batched",
            lambda r, n=n: f"{r['concurrency'][n]['unbatched']['per_session_fps_wall']:.1f} / "
                           f"{r['concurrency'][n]['batched']['per_session_fps_wall']:.1f}")
    width = max(len(label) for label, _ in rows)
    col = max(22, *(len(c) for _, cells in rows for c in cells))
    lines = [f"{'':{width}}  " + "  ".join(f"{n:>{col}}" for n in names)]
    lines += [f"{label:{width}}  " + "  ".join(f"{c:>{col}}" for c in cells) for label, cells in rows]
    for n in names:
        for spec, w in report["models"][n].get("widths", {}).items():
            lines.append(f"{n}, DiT width {spec} (random weights, {w['dit_params_m']:.1f}M): DiT {w['dit_ms']:.1f} ms, "
                         f"chunk {w['total_ms']:.1f} ms, RTF {w['rtf_wall']:.2f}, share of peak {w['fraction_of_peak_wall']:.0%}"
                         f" wall / {w['fraction_of_peak_cpu']:.0%} cpu, {w['no_cache_speedup']:.1f}x over no cache")
    for n in names:
        for t in report["models"][n]["targets"]:
            lines.append(f"[{'met' if t['met'] else 'MISSED'}] {n}: {t['name']} {t['target']}: {t['value']:.3g}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from model.sample import check_folder, check_output

    try:  # flags and output paths first: a bad one is refused before minutes of work
        sampling = sampling_from_args(args)
        if args.json is not None:
            check_output(args.json, "--json")
        if args.plots is not None:
            check_folder(args.plots, "--plots")
    except ValueError as e:
        print(f"livereel bench: {e}", file=sys.stderr)
        return 2
    if args.cluster:
        return cluster.main(args, sampling)
    from bench.timing import choose_threads

    from model import load_model

    sizes = SMOKE if args.smoke else Sizes()
    probe = sampling.generator(load_model(args.checkpoint), seed=0)
    threads, why = choose_threads(args.threads, lambda: probe.decode(probe.step()))
    torch.set_num_threads(threads)
    log.info("intra-op threads: %d (%s)", threads, why["reason"])
    load_start = os.getloadavg()
    names = [args.checkpoint] + (["debug"] if args.checkpoint != "debug" else [])
    report: dict = {
        "meta": {"checkpoint": args.checkpoint, "smoke": args.smoke, "threads": threads, "thread_policy": why,
                 "torch": torch.__version__, "python": platform.python_version(), "machine": platform.processor()
                 or platform.machine(), "cpus": os.cpu_count(), "load_avg_start": load_start},
        "models": {},
    }
    from bench import engines

    log.info("engines %s against eager, widths %s", ",".join(args.engines), args.widths or "(the model's)")
    model, _ = load_checkpoint(args.checkpoint)
    report["engines"] = engines.compare_widths(model, args.engines, args.widths,
                                               sizes.engine_chunks, threads, sampling, args.prior_picture)
    del model
    if not args.engines_only:
        for name in names:
            res = measure_model(name, sizes, args, threads, sampling)
            res["targets"] = targets(res)
            report["models"][name] = res
    report["meta"]["load_avg_end"] = os.getloadavg()
    contended = load_start[0] > 0.5
    report["meta"]["contended"] = contended
    report["meta"]["note"] = ("other processes were running (1-minute load average "
                              f"{load_start[0]:.2f} at the start): wall figures are stretched, "
                              "CPU-time figures much less" if contended else "the machine was idle at the start")
    if args.plots is not None:
        from bench import plots

        args.plots.mkdir(parents=True, exist_ok=True)
        files = [str(plots.engines(report["engines"], args.plots / "engines.png"))]
        for name, res in report["models"].items():
            files.append(str(plots.stream_length(name, res, args.plots / f"stream_length_{name}.png")))
            files.append(str(plots.sessions(name, res, res["config"]["fps"], args.plots / f"sessions_{name}.png")))
            if res.get("widths"):
                files.append(str(plots.widths(name, res, args.plots / f"widths_{name}.png")))
        report["meta"]["plots"] = files
    if report["models"]:
        print(table(report))
    print(engines.table(report["engines"]))
    print(report["meta"]["note"])
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        log.info("wrote %s", args.json)
    return 0


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON: {type(value)}")
