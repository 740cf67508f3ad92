"""`livereel bench --cluster`: cluster mode (`livereel serve --ray`) by worker count.

For each count N of `--workers`: a local Ray cluster of N GenWorkers with `--slots`
sessions each, started by the gateway's own functions (`init_ray`, `start_controller`,
`start_workers`, sized as `serve --ray` sizes them: the cores shared out among the
workers) with its `RayBackend` behind the Server, on this process's event loop; then
every slot filled, one viewer after another, by an in-process aiortc client (bench.live's,
which also reconnects as the page does). Measured:

- time to place a session: offer sent -> answer received, and -> the `hello` on its data
  channel (the worker's peer is up);
- fps over a window of `--seconds`: fresh frames (played by the session's track and not a
  repeat of the last), from the `sent` and `held` counters of each session's `stats`
  messages, over the time between the two messages; per session (mean, min) and summed
  over the sessions (aggregate). Fresh frames come at most at the model's fps: where every
  session keeps up, each one's last chunk time (`chunk_ms`, in the same messages) shows
  the headroom;
- failover: the sessions of the last worker closed to make room, then the first worker
  killed (`ray.kill` on its actor); for each of its sessions, kill -> `reconnect` on the
  signaling socket -> the new answer -> the first frame again at its client. With one
  worker there is nowhere to move: no failover figure.

The clients decode their video in this process, on the cores the workers use: the
figures are those of a machine that also runs its viewers.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from aiortc import RTCSessionDescription

from bench import live
from bench.timing import summary

log = logging.getLogger(__name__)

WORKERS = [1, 2, 4]
SMOKE_WORKERS = [1, 2]
SECONDS, SMOKE_SECONDS = 10.0, 3.0
SETTLE_SECONDS = 1.0
"""After every session's first frame, before the window: past the start-up transient."""
PROMPTS = ("a red ball bouncing over a meadow by day", "a blue cube in the desert at night",
           "a green star in the snowy forest")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster mode (--cluster)")
    group.add_argument("--cluster", action="store_true",
                       help="measure cluster mode (serve --ray) instead: fps, time to place a session and failover "
                            "time, for each count of --workers on a local Ray cluster (--smoke: the debug model, "
                            "workers 1,2, 3 s windows)")
    group.add_argument("--workers", type=counts, default=None, metavar="N,...",
                       help="with --cluster: the worker counts to measure (default 1,2,4)")
    group.add_argument("--slots", type=int, default=2, help="with --cluster: sessions per worker")
    group.add_argument("--seconds", type=float, default=None,
                       help="with --cluster: the measuring window per worker count, seconds (default 10)")


def counts(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]: worker counts, each at least 1."""
    try:
        ns = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        ns = []
    if not ns or min(ns) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: want worker counts of at least 1, e.g. 1,2,4")
    return ns


# ---------------------------------------------------------------- a viewer


class Viewer(live.Client):
    """bench.live's client, timing its placement and following its signaling socket as the
    page does: told to `reconnect`, it offers again from a new peer connection."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.session: str | None = None
        self.signals: list[tuple[float, dict]] = []
        self.frames_at_answer: int | None = None
        """Frames received when the latest re-answer came (None: none came yet)."""

    async def place(self, **fields) -> dict:
        """Offer and wait for `hello`: seconds from the offer sent to the answer and to `hello`."""
        import websockets

        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/ws")
        sent = time.perf_counter()
        await self.ws.send(json.dumps({"type": "offer", "sdp": self.pc.localDescription.sdp, **fields}))
        reply = json.loads(await asyncio.wait_for(self.ws.recv(), live.WAIT))
        answered = time.perf_counter()
        if reply["type"] != "answer":
            raise RuntimeError(f"the gateway refused the offer: {reply}")
        self.session = reply["session"]
        await self.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        hello, _ = await self.expect("hello")
        return {"answer_s": answered - sent, "hello_s": hello - sent}

    async def follow(self) -> None:
        """The page's side of the signaling socket after the answer (run as a task)."""
        from websockets.exceptions import ConnectionClosed

        try:
            await self._follow()
        except ConnectionClosed:  # the gateway ended the session, or this viewer left
            pass

    async def _follow(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            self.signals.append((time.perf_counter(), msg))
            if msg["type"] == "reconnect":
                old = self.pc
                self.new_peer()
                await old.close()
                await self.pc.setLocalDescription(await self.pc.createOffer())
                await self.ws.send(json.dumps({"type": "offer", "sdp": self.pc.localDescription.sdp}))
            elif msg["type"] == "answer":
                await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "answer"))
                self.frames_at_answer = len(self.frame_times)

    def signal_at(self, kind: str) -> float | None:
        return next((at for at, msg in self.signals if msg["type"] == kind), None)


async def _next_stats(viewer: Viewer) -> tuple[float, dict]:
    """The next `stats` message from now on, with when it came (older ones are dropped)."""
    while not viewer.messages.empty():
        viewer.messages.get_nowait()
    return await viewer.expect("stats")


async def _until(condition, what: str, timeout: float = live.WAIT) -> None:
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- one worker count


def measure_count(n: int, checkpoint: str, sampling: Any, slots: int, seconds: float, engine: str) -> dict:
    """Start a local cluster of `n` workers, measure it (module docstring), shut it down."""
    import ray

    from streamer.cluster.gateway import init_ray, start_controller, start_workers

    cores = os.cpu_count() or 1
    worker_cpus = cores / n  # as serve --ray: the cores shared out among the workers
    start = time.perf_counter()
    init_ray(None, num_cpus=max(cores, worker_cpus * n), log_to_driver=False)
    try:
        controller = start_controller(detached=False)
        ids = [f"w{i}" for i in range(n)]
        # every slot filled whatever the speed (--admission limit): the figures say whether they keep up
        handles = start_workers(ids, checkpoint, sampling, slots, num_cpus=worker_cpus, engine=engine,
                                threads=max(1, int(worker_cpus)), admission="limit")
        started = time.perf_counter() - start
        log.info("%d worker(s) of %d slots ready in %.1f s", n, slots, started)
        out = asyncio.run(_measure(controller, dict(zip(ids, handles)), slots, seconds))
        return {"workers": n, "slots": slots, "worker_cpus": worker_cpus, "start_s": started, **out}
    finally:
        ray.shutdown()


async def _measure(controller: Any, workers: dict[str, Any], slots: int, seconds: float) -> dict:
    from streamer.cluster.gateway import RayBackend
    from streamer.server import Server

    info = await controller.info.remote()
    total = len(workers) * slots
    server = Server(None, info, max_sessions=total, backend=RayBackend(controller))
    port = await server.start(0)
    viewers: list[Viewer] = []
    followers: list[asyncio.Task] = []
    try:
        placed = []
        for i in range(total):
            viewer = Viewer(port)
            viewers.append(viewer)
            placed.append(await viewer.place(prompt=PROMPTS[i % len(PROMPTS)], seed=i))
        log.info("%d sessions placed; waiting for their first frames", total)
        await asyncio.wait_for(asyncio.gather(*(v.first_frame.wait() for v in viewers)), live.WAIT)
        followers = [asyncio.ensure_future(v.follow()) for v in viewers]
        await asyncio.sleep(SETTLE_SECONDS)
        out: dict = {"fps": info.fps, "sessions": total,
                     "place_answer_s": summary([p["answer_s"] for p in placed]),
                     "place_hello_s": summary([p["hello_s"] for p in placed])}

        log.info("measuring %d sessions for %.0f s", total, seconds)
        first = await asyncio.gather(*(_next_stats(v) for v in viewers))
        frames0 = [len(v.frame_times) for v in viewers]
        await asyncio.sleep(seconds)
        last = await asyncio.gather(*(_next_stats(v) for v in viewers))
        rows = []
        for v, (t0, s0), (t1, s1), f0 in zip(viewers, first, last, frames0):
            span, sent, held = t1 - t0, s1["sent"] - s0["sent"], s1["held"] - s0["held"]
            rows.append({"fresh_fps": (sent - held) / span, "played_fps": sent / span,
                         "held_share": held / max(sent, 1), "received_fps": (len(v.frame_times) - f0) / span,
                         "chunk_ms": s1["chunk_ms"], "window_s": span})
        fresh = [r["fresh_fps"] for r in rows]
        health = await controller.health.remote()
        out["snapshot_mb"] = health["snapshot_bytes"] / max(health["snapshots"], 1) / 2**20 if health["snapshots"] \
            else None
        out.update(aggregate_fps=sum(fresh),
                   per_session_fps={"mean": sum(fresh) / len(fresh), "min": min(fresh), "max": max(fresh)},
                   held_share=sum(r["held_share"] for r in rows) / len(rows), per_session=rows)
        out["failover"] = await _failover(controller, workers, viewers) if len(workers) > 1 else None
        return out
    finally:
        for task in followers:
            task.cancel()
        for v in viewers:
            await v.close()
        await _until(lambda: not server.relayed, "every session closed")
        await server.stop()


async def _failover(controller: Any, workers: dict[str, Any], viewers: list[Viewer]) -> dict:
    """Close the last worker's sessions (room for the moved ones), kill the first worker and
    time each of its sessions back at its client."""
    import ray

    where = {v.session: (await controller.where.remote(v.session))["worker"] for v in viewers}
    ids = list(workers)
    victim, room = ids[0], ids[-1]
    moving = [v for v in viewers if where[v.session] == victim]
    for v in [v for v in viewers if where[v.session] == room]:
        await v.close()
    viewers[:] = [v for v in viewers if where[v.session] != room]

    async def free() -> bool:
        health = await controller.health.remote()
        return any(w["worker"] == room and w["sessions"] == 0 for w in health["workers"])

    end = time.perf_counter() + live.WAIT
    while not await free():
        if time.perf_counter() > end:
            raise TimeoutError(f"worker {room} not free within {live.WAIT:.0f} s")
        await asyncio.sleep(0.05)

    log.info("killing worker %s (%d sessions)", victim, len(moving))
    killed = time.perf_counter()
    ray.kill(workers[victim], no_restart=True)
    back = []
    for v in moving:
        await _until(lambda v=v: v.frames_at_answer is not None and len(v.frame_times) > v.frames_at_answer,
                     "a moved session's first frame again")
        back.append(v.frame_times[v.frames_at_answer])
    moved_to = sorted({(await controller.where.remote(v.session))["worker"] for v in moving})
    moves = [(await controller.moves.remote(v.session))[0] for v in moving]
    return {"killed": victim, "sessions": len(moving), "moved_to": moved_to,
            "restore_s": summary([m["ms"] / 1000 for m in moves]),
            "replayed_chunks": [m["replayed"] for m in moves], "at_chunk": [m["chunk"] for m in moves],
            "reconnect_s": summary([v.signal_at("reconnect") - killed for v in moving]),
            "answer_s": summary([v.signal_at("answer") - killed for v in moving]),
            "first_frame_s": summary([t - killed for t in back]), "first_frame_max_s": max(back) - killed}


# ---------------------------------------------------------------- report


def table(report: dict) -> str:
    runs = report["counts"]
    names = list(runs)
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn) -> None:
        rows.append((label, [fn(runs[n]) for n in names]))

    def sec(d: dict) -> str:
        return f"{d['median']:.3f} / {d['p95']:.3f}"

    def failover(fn):
        return lambda r: "-" if r["failover"] is None else fn(r["failover"])

    row("sessions (workers x slots)", lambda r: f"{r['sessions']} ({r['workers']} x {r['slots']})")
    row("cluster start s", lambda r: f"{r['start_s']:.1f}")
    row("aggregate fresh fps", lambda r: f"{r['aggregate_fps']:.1f}")
    row("per-session fresh fps mean / min", lambda r: f"{r['per_session_fps']['mean']:.1f} / "
                                                      f"{r['per_session_fps']['min']:.1f}")
    row("held share (repeats)", lambda r: f"{r['held_share']:.0%}")
    row("last chunk ms, mean over sessions",
        lambda r: f"{sum(s['chunk_ms'] for s in r['per_session']) / len(r['per_session']):.1f}")
    row("place: offer -> answer s, median / p95", lambda r: sec(r["place_answer_s"]))
    row("place: offer -> hello s, median / p95", lambda r: sec(r["place_hello_s"]))
    row("failover: kill -> reconnect s, median", failover(lambda f: f"{f['reconnect_s']['median']:.3f}"))
    row("failover: kill -> answer s, median", failover(lambda f: f"{f['answer_s']['median']:.3f}"))
    row("failover: kill -> first frame s, median / max",
        failover(lambda f: f"{f['first_frame_s']['median']:.3f} / {f['first_frame_max_s']:.3f}"))
    row("failover: restore s, median (chunks replayed of)",
        failover(lambda f: f"{f['restore_s']['median']:.3f} ({max(f['replayed_chunks'])} of {max(f['at_chunk'])})"))
    row("snapshot MB per session", lambda r: "-" if r.get("snapshot_mb") is None else f"{r['snapshot_mb']:.2f}")
    width = max(len(label) for label, _ in rows)
    col = max(14, *(len(c) for _, cells in rows for c in cells))
    lines = [f"{'workers':{width}}  " + "  ".join(f"{n:>{col}}" for n in names)]
    lines += [f"{label:{width}}  " + "  ".join(f"{c:>{col}}" for c in cells) for label, cells in rows]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    """Aggregate fresh fps and per-session fps (mean, min) against the worker count, with
    real time marked (fresh frames cannot come faster: the tracks play at the model's fps)."""
    from bench.plots import plt

    runs = sorted(report["counts"].values(), key=lambda r: r["workers"])
    ns = [r["workers"] for r in runs]
    fig, (agg, per) = plt.subplots(1, 2, figsize=(11, 4.5))
    agg.plot(ns, [r["aggregate_fps"] for r in runs], "o-", label="measured")
    agg.plot(ns, [r["sessions"] * r["fps"] for r in runs], "--", color="grey", lw=1,
             label="every session in real time")
    agg.set_ylim(bottom=0)
    agg.set_ylabel("fresh frames per second, all sessions")
    agg.set_title("aggregate fps")
    per.plot(ns, [r["per_session_fps"]["mean"] for r in runs], "o-", label="mean")
    per.plot(ns, [r["per_session_fps"]["min"] for r in runs], "v--", label="min")
    per.axhline(runs[0]["fps"], color="grey", ls="--", lw=1, label=f"real time ({runs[0]['fps']} fps)")
    per.set_ylim(0, 1.15 * runs[0]["fps"])
    per.set_ylabel("fresh frames per second, one session")
    per.set_title("per-session fps")
    for ax in (agg, per):
        ax.set_xticks(ns)
        ax.set_xlabel(f"workers ({report['meta']['slots']} sessions each, every slot taken)")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"cluster mode, {report['meta']['checkpoint']} on {report['meta']['cpus']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(args: argparse.Namespace, sampling: Any) -> int:
    """`livereel bench --cluster` (bench/run.py checked the shared flags and output paths)."""
    import torch

    if args.slots < 1:
        print("livereel bench: --slots must be at least 1", file=sys.stderr)
        return 2
    if args.seconds is not None and not args.seconds > 0:
        print("livereel bench: --seconds must be above 0", file=sys.stderr)
        return 2
    if importlib.util.find_spec("ray") is None:
        print("livereel bench: --cluster needs Ray: pip install 'livereel[cluster]'", file=sys.stderr)
        return 2
    for noisy in ("websockets", "aioice", "aiortc", "streamer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ns = args.workers or (SMOKE_WORKERS if args.smoke else WORKERS)
    seconds = args.seconds or (SMOKE_SECONDS if args.smoke else SECONDS)
    checkpoint = "debug" if args.smoke else args.checkpoint
    load_start = os.getloadavg()
    report: dict = {
        "meta": {"checkpoint": checkpoint, "smoke": args.smoke, "workers": ns, "slots": args.slots,
                 "seconds": seconds, "engine": args.engine, **sampling.to_dict(), "torch": torch.__version__,
                 "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count(), "load_avg_start": load_start},
        "counts": {},
    }
    for n in ns:
        log.info("cluster: %d worker(s) x %d slots, %s", n, args.slots, checkpoint)
        report["counts"][str(n)] = measure_count(n, checkpoint, sampling, args.slots, seconds, args.engine)
    report["meta"]["load_avg_end"] = os.getloadavg()
    contended = load_start[0] > 0.5
    report["meta"]["contended"] = contended
    report["meta"]["note"] = ("other processes were running (1-minute load average "
                              f"{load_start[0]:.2f} at the start): the figures are stretched" if contended
                              else "the machine was idle at the start")
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
        report["meta"]["plots"] = [str(plot(report, args.plots / "cluster.png"))]
    print(table(report))
    print(report["meta"]["note"])
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log.info("wrote %s", args.json)
    return 0
