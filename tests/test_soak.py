"""A soak test (slow: not in CI): 4 sessions for 30 minutes, each viewer steering at
random, a few bad messages among the controls.

It reports memory over time, the frames each session played and the errors seen, as
JSON in artifacts/soak.json (LIVEREEL_ARTIFACTS for another folder), and fails on a
session error, a session lost, memory that keeps growing, or a log that no longer
loads. LIVEREEL_SOAK_SECONDS (default 1800), LIVEREEL_SOAK_CHECKPOINT (default
"debug") and LIVEREEL_SOAK_STEPS (default 2) change the run:

    LIVEREEL_SOAK_SECONDS=120 python -m pytest -q -m slow tests/test_soak.py -s
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path

import pytest
from fakes import clients, fetch, metric, real_server, started, until  # noqa: F401 (clients, started: fixtures)

from streamer.replay import load_log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(0)]

ROOT = Path(__file__).resolve().parents[1]
SESSIONS = 4
SAMPLE_SECONDS = 10.0
PROMPTS = [
    "a red ball bouncing over grassland by day",
    "a blue cube drifting over a snowfield at night",
    "a white star orbiting above the ocean at sunset",
    "a green cone over the desert in the rain",
]
BAD = ['{"type": "camera", "pan": [NaN, 0], "zoom": 0}', "{not json", '{"type": "warp"}', b"\xff\x00"]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def random_control(rng: random.Random, paused: bool) -> dict | str | bytes:
    roll = rng.random()
    if roll < 0.02:
        return rng.choice(BAD)
    if roll < 0.06:
        return {"type": "resume" if paused else "pause"}
    if roll < 0.10:
        return {"type": "reset", "seed": rng.randrange(2**32)}
    if roll < 0.45:
        return {"type": "prompt", "text": rng.choice(PROMPTS), "transition": rng.choice([0, 0, 2, 4])}
    pan = [round(rng.uniform(-1, 1), 2), round(rng.uniform(-1, 1), 2)]
    return {"type": "camera", "pan": pan, "zoom": round(rng.uniform(-0.5, 0.5), 2)}


@pytest.mark.asyncio
async def test_soak(started, clients):
    seconds = float(os.environ.get("LIVEREEL_SOAK_SECONDS", 1800))
    checkpoint = os.environ.get("LIVEREEL_SOAK_CHECKPOINT", "debug")
    steps = int(os.environ.get("LIVEREEL_SOAK_STEPS", 2))
    artifacts = Path(os.environ.get("LIVEREEL_ARTIFACTS", ROOT / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)

    from model import load_model
    from model.sampling import Sampling

    model = load_model(checkpoint)
    sampling = Sampling(steps=steps, warm_start=0)
    sampling.generator(model, seed=0).next_frames()  # warm-up, as `serve` does
    server = real_server(model, sampling, max_sessions=SESSIONS)
    port = await started(server)
    viewers = [await clients(port).open(prompt=PROMPTS[i], seed=i) for i in range(SESSIONS)]
    sessions = [server.live[v.session].session for v in viewers]
    rng = random.Random(0)
    paused = [False] * SESSIONS
    sent = bad_sent = 0
    samples = []
    start = time.monotonic()
    next_sample = start
    while (now := time.monotonic()) - start < seconds:
        if now >= next_sample:
            samples.append({"t": round(now - start, 1), "rss_mb": round(rss_mb(), 1),
                            "frames": [s.frames_sent for s in sessions]})
            next_sample += SAMPLE_SECONDS
        await asyncio.sleep(rng.uniform(0.1, 0.6))
        i = rng.randrange(SESSIONS)
        msg = random_control(rng, paused[i])
        if isinstance(msg, dict) and msg["type"] in ("pause", "resume"):
            paused[i] = msg["type"] == "pause"
        bad_sent += msg in BAD
        sent += 1
        viewers[i].send(msg)
    for i, v in enumerate(viewers):
        if paused[i]:
            v.send({"type": "resume"})
    elapsed = time.monotonic() - start
    samples.append({"t": round(elapsed, 1), "rss_mb": round(rss_mb(), 1), "frames": [s.frames_sent for s in sessions]})

    def answered() -> int:  # errors for bad messages received so far (the last may be on their way)
        return sum(m["type"] == "error" and m["code"] in ("bad_json", "bad_message") for v in viewers for m in v.seen)

    await until(lambda: answered() >= bad_sent, "an error for every bad message sent")
    errors = [m for v in viewers for m in v.seen if m["type"] == "error"]
    unexpected = [e for e in errors if e["code"] not in ("bad_json", "bad_message")]
    logs_ok = []
    for v in viewers:
        status, _, body = await fetch(port, f"/sessions/{v.session}/log.jsonl")
        path = artifacts / f"soak-{v.session}.jsonl"
        path.write_bytes(body)
        logs_ok.append(status == 200 and bool(load_log(path)[1]))
        path.unlink()
    settled = [s["rss_mb"] for s in samples if s["t"] >= min(60.0, elapsed / 4)]
    summary = {
        "seconds": round(elapsed, 1),
        "checkpoint": checkpoint,
        "steps": steps,
        "sessions": SESSIONS,
        "controls_sent": sent,
        "bad_controls_sent": bad_sent,
        "errors": {code: sum(e["code"] == code for e in errors) for code in sorted({e["code"] for e in errors})},
        "session_errors": await metric(port, "livereel_session_errors_total"),
        "sessions_alive": sum(v.session in server.live for v in viewers),
        "fps_sent": [round(s.frames_sent / elapsed, 2) for s in sessions],
        "fps_made": [round(s.frames_made / elapsed, 2) for s in sessions],
        "frames_held": [s.frames_held for s in sessions],
        "fps_received": [round(v.frame_count / elapsed, 2) for v in viewers],
        "chunks": [s.chunks_made for s in sessions],
        "rss_mb": {"first": samples[0]["rss_mb"], "settled": settled[0], "max": max(x["rss_mb"] for x in samples),
                   "last": samples[-1]["rss_mb"]},
        "logs_replayable": logs_ok,
        "samples": samples,
    }
    (artifacts / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\nsoak:", json.dumps({k: v for k, v in summary.items() if k != "samples"}))

    assert not unexpected, unexpected[:3]
    assert summary["errors"].get("bad_json", 0) + summary["errors"].get("bad_message", 0) == bad_sent
    assert summary["session_errors"] == 0 and summary["sessions_alive"] == SESSIONS
    assert all(logs_ok)
    assert max(settled) - settled[0] < 64, "memory keeps growing"
