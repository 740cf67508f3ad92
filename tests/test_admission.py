"""Admission by measured capacity (streamer/admission.py): the start-up measurement on a
real model, and the decisions it leads to under load."""

from __future__ import annotations

import asyncio
import json

import pytest
from fakes import Client, get, metric
from served import start_server, stop_server

from model.generate import next_frames_batch
from model.sampling import Sampling
from streamer.admission import HEADROOM, MAX_HELD, MIN_FRAMES, Capacity


def test_measure_times_rounds_until_one_is_past_the_budget(debug_model):
    make = lambda seed: Sampling(2, 1).generator(debug_model, seed)  # noqa: E731
    roomy = Capacity(limit=3, budget=60.0, batched=True)
    lines = []
    roomy.measure(make, next_frames_batch, progress=lines.append)
    assert sorted(roomy.round_seconds) == [1, 2, 3] and all(s > 0 for s in roomy.round_seconds.values())
    assert roomy.sessions == 3 and len(lines) == 3 and "3 sessions: a round takes" in lines[-1]
    assert roomy.decide(2).admit and not roomy.decide(3).admit
    assert roomy.decide(3).reason == "all 3 sessions this server allows are in use"

    tight = Capacity(limit=3, budget=1e-6, batched=False)  # no round fits: measuring stops at one
    tight.measure(make, None)
    assert list(tight.round_seconds) == [1]
    assert tight.sessions == 1  # one session is always taken
    first, second = tight.decide(0), tight.decide(1)
    assert first.admit and not second.admit
    assert second.reason == "this machine streams 1 session in real time and it is in use"


def measured(rounds: dict[int, float], limit: int = 4) -> Capacity:
    cap = Capacity(limit=limit, budget=0.125, batched=True)
    cap.round_seconds = dict(rounds)
    return cap


def test_capacity_is_the_most_sessions_within_the_usable_budget():
    usable = HEADROOM * 0.125  # 100 ms
    cap = measured({1: 0.05, 2: 0.08, 3: 0.11})
    assert cap.sessions == 2 and usable < 0.11
    assert [cap.decide(n).admit for n in range(4)] == [True, True, False, False]
    assert "streams 2 sessions in real time and all are in use" in cap.decide(2).reason
    assert cap.snapshot(2) == {"capacity": 2, "limit": 4, "admitting": False, "reason": cap.decide(2).reason,
                               "round_ms": {"1": 50.0, "2": 80.0, "3": 110.0}, "budget_ms": 125.0, "load": 1.0,
                               "held_share": 0.0}
    # past the largest measured round: extrapolated in proportion
    assert measured({1: 0.02, 2: 0.03}).predict(4) == pytest.approx(0.06)
    assert measured({1: 0.02, 2: 0.03}).sessions == 4
    assert measured({1: 0.02, 2: 0.03}, limit=3).sessions == 3


def test_rounds_slower_under_load_lower_the_capacity():
    cap = measured({1: 0.04, 2: 0.07, 3: 0.095})
    assert cap.sessions == 3
    for _ in range(30):  # encoding and other programs make every round 1.5x slower
        cap.observe_round(2, 0.07 * 1.5)
    assert cap.load == pytest.approx(1.5, rel=0.01)
    assert cap.sessions == 1 and not cap.decide(1).admit
    for _ in range(40):  # faster than measured counts as measured: the load never drops below 1
        cap.observe_round(1, 0.01)
    assert cap.load == pytest.approx(1.0, abs=0.01) and cap.sessions == 3


def test_sessions_behind_real_time_hold_admission():
    cap = measured({1: 0.03, 2: 0.05})
    for i in range(MIN_FRAMES - 1):  # too few frames to judge
        cap.observe_frame(held=True)
    assert cap.held_share == 0 and cap.decide(1).admit
    cap = measured({1: 0.03, 2: 0.05})
    for i in range(100):
        cap.observe_frame(held=i % 20 == 0)  # 5% repeated: still real time
    assert cap.held_share <= MAX_HELD and cap.decide(1).admit
    for _ in range(10):
        cap.observe_frame(held=True)
    assert cap.held_share > MAX_HELD
    assert cap.decide(0).admit  # nothing streams: nothing to slow
    late = cap.decide(1)
    assert not late.admit and "behind real time" in late.reason
    unmeasured = Capacity(limit=2, budget=0.125, batched=True)  # --admission limit: the limit alone
    for _ in range(100):
        unmeasured.observe_frame(held=True)
        unmeasured.observe_round(1, 10.0)
    assert unmeasured.sessions == 2 and unmeasured.decide(1).admit and not unmeasured.decide(2).admit


def test_limit_is_checked():
    with pytest.raises(ValueError, match="limit"):
        Capacity(limit=0, budget=0.1, batched=True)


# ---------------------------------------------------------------- the real server


WINDOW_SECONDS = 20.0
"""How long the admitted sessions' frames are counted."""


def latest_stats(client) -> dict:
    return next(m for m in reversed(client.seen) if m["type"] == "stats")


@pytest.mark.asyncio
async def test_admitted_sessions_stay_real_time_and_the_next_viewer_is_refused_with_why(tmp_path):
    """`livereel serve` on the shipped model with a high --max-sessions: viewers arrive one
    by one until one is refused for capacity; every admitted session then gets at least 95%
    of its frames fresh (made in time, not a repeat of the last) for 20 s."""
    limit = 6
    proc, url = start_server("default", limit, tmp_path)
    port = int(url.rsplit(":", 1)[1])
    clients: list[Client] = []
    try:
        refused = None
        for i in range(limit):
            client = Client(port)
            reply = await client.offer(prompt="a red ball bouncing over a meadow by day under clear skies", seed=i)
            if reply["type"] == "error":
                refused = reply
                await client.close()
                break
            clients.append(client)
            await client.expect("hello")
            await client.frames_after(32)  # two seconds of video: the server times its rounds under load
        assert refused is not None, f"all {limit} viewers admitted on a 2-core machine"
        assert refused["code"] == "server_full" and "real time" in refused["detail"], refused
        n = len(clients)
        health = json.loads(get(port, "/healthz")[2])
        assert health["sessions"] == n and health["admitting"] is False and health["capacity"] <= n
        assert health["reason"] in refused["detail"]
        assert await metric(port, "livereel_sessions_rejected_total", reason="server_full") == 1

        await asyncio.gather(*(c.expect("stats") for c in clients))
        before = [latest_stats(c) for c in clients]
        await asyncio.sleep(WINDOW_SECONDS)  # the window counted, not a timing assert
        after = [latest_stats(c) for c in clients]
        print(f"\n{n} sessions admitted; refused: {refused['detail']}; health: {health}")
        for a, b in zip(before, after):
            sent, held = b["sent"] - a["sent"], b["held"] - a["held"]
            print(f"  {sent} frames in {WINDOW_SECONDS:.0f} s, {held} repeated: {(sent - held) / sent:.1%} fresh")
            assert sent >= WINDOW_SECONDS * 16 * 0.9, (sent, a, b)  # the tracks play at the model's 16 fps
            assert (sent - held) / sent >= 0.95, f"{held} of {sent} frames repeated with {n} sessions"
    finally:
        for c in clients:
            await c.close()
        stop_server(proc)
