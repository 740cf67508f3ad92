"""Measuring on a shared CPU: statistics, the thread policy, the matmul peak, memory.

Every timing is taken twice: wall clock, and CPU time of the thread that did the work.
On a machine shared with other busy processes the wall clock stretches with the load,
while the thread's CPU time stays close to what the work costs on an idle core; the
benchmark reports both, and ratios against baselines run in the same process.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

PROBE_CHUNKS = 6  # chunks of the model timed per thread count by `choose_threads`


def summary(xs: list[float], scale: float = 1.0) -> dict[str, float]:
    """median, p95, mean, min and count of `xs` times `scale` (e.g. 1e3 for ms)."""
    if not xs:
        return {"median": float("nan"), "p95": float("nan"), "mean": float("nan"), "min": float("nan"), "n": 0}
    s = sorted(x * scale for x in xs)
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    return {"median": statistics.median(s), "p95": p95, "mean": statistics.fmean(s), "min": s[0], "n": len(s)}


@dataclass
class Timed:
    wall: float
    cpu: float


def timed(fn: Callable[[], object]) -> tuple[object, Timed]:
    """Run `fn` once; its result and (wall, this thread's CPU) seconds."""
    w, c = time.perf_counter(), time.thread_time()
    out = fn()
    return out, Timed(time.perf_counter() - w, time.thread_time() - c)


# ---------------------------------------------------------------- threads


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to `n` inside the block (an engine sets them to 1:
    eager work measured beside it gets its own count back)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0))


def busy_cpus() -> float:
    """CPUs kept busy by other processes: the 1-minute load average, a rough guide."""
    return os.getloadavg()[0]


def probe_chunks(step: Callable[[], object], threads: int, reps: int = PROBE_CHUNKS) -> float:
    """Median seconds of `step()` (one chunk of the benchmarked model) with `threads`
    intra-op threads, after one untimed call."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return statistics.median(times)


def choose_threads(requested: int | None, step: Callable[[], object]) -> tuple[int, dict]:
    """The intra-op thread count to run with, and why.

    Policy: an explicit request wins. Otherwise all the CPUs we may use, if they make a
    chunk of the benchmarked model (`step`) at least 1.15x faster than one thread, else
    one. (A small op alone is no guide: a 128x128x384 linear runs no faster on 2 threads
    here, while a whole chunk does, about 1.3x.) With other processes on the cores,
    OpenMP workers spin waiting for a CPU and several threads can be slower than one;
    parallelism across cores then comes from overlapping the VAE decode and video encode
    with the DiT, and from batching sessions, instead.
    """
    cpus = cpu_count()
    info: dict = {"cpus": cpus, "load_avg_1min": round(busy_cpus(), 2), "requested": requested}
    if requested is not None:
        info["reason"] = "--threads"
        return max(1, requested), info
    if cpus == 1:
        info["reason"] = "one CPU"
        return 1, info
    one, many = probe_chunks(step, 1), probe_chunks(step, cpus)
    info["probe_chunk_ms_1_thread"], info[f"probe_chunk_ms_{cpus}_threads"] = one * 1e3, many * 1e3
    if one / many >= 1.15:
        info["reason"] = f"{cpus} threads made a chunk {one / many:.2f}x faster than one"
        return cpus, info
    info["reason"] = f"{cpus} threads made a chunk only {one / many:.2f}x faster than one (< 1.15x)"
    return 1, info


# ---------------------------------------------------------------- peak


def matmul_peak(seconds: float = 1.0, n: int = 1024) -> dict[str, float]:
    """The machine's fp32 matmul rate with the current thread count: best of repeated
    (n x n) @ (n x n) products, as FLOP/s by wall clock and by this thread's CPU time
    (the latter counts only this thread, so it is meaningful with one intra-op thread)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    flops = 2.0 * n**3
    for _ in range(2):
        a @ b
    best_wall = best_cpu = float("inf")
    end = time.perf_counter() + seconds
    reps = 0
    while reps < 3 or time.perf_counter() < end:
        _, t = timed(lambda: a @ b)
        best_wall, best_cpu = min(best_wall, t.wall), min(best_cpu, max(t.cpu, 1e-9))
        reps += 1
    return {"n": n, "reps": reps, "flops_wall": flops / best_wall, "flops_cpu": flops / best_cpu}


# ---------------------------------------------------------------- memory


def rss_bytes() -> dict[str, int]:
    """This process's resident memory now (VmRSS) and at its peak so far (VmHWM)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss" if key == "VmRSS" else "peak"] = int(value.split()[0]) * 1024
    return out
