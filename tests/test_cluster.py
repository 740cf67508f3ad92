"""Cluster mode (streamer/cluster/): placement as a pure policy, then a local Ray cluster of
three GenWorkers (two slots each, the debug model) behind the gateway, with real aiortc
clients: six sessions placed as the policy says and playing, the seventh refused with
the cluster's reason, /healthz and /metrics per worker, logs from the controller's store.

One cluster serves the whole module (starting one costs ~10 s on two busy cores)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import pytest_asyncio
from aiortc import RTCSessionDescription
from fakes import WAIT, Client, clients, fetch, metric, started, until  # noqa: F401 (clients, started: fixtures)

from streamer.cluster.placement import WorkerState, full_reason, place

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

WORKERS, SLOTS = 3, 2


def _sampling():
    from model.sampling import Sampling

    return Sampling(steps=2, warm_start=0)


# ---------------------------------------------------------------- the policy, alone


def _workers(*used: int, slots: int = 2, keys: tuple[str, ...] = ()) -> list[WorkerState]:
    out = []
    for i, n in enumerate(used):
        w = WorkerState(id=f"w{i}", slots=slots, key=keys[i] if keys else "m", order=i)
        w.sessions = {f"s{i}-{j}" for j in range(n)}
        out.append(w)
    return out


def test_placement_fills_the_busiest_worker_with_room_first():
    workers = _workers(0, 0, 0)
    order = []
    for n in range(6):
        w = place(workers)
        order.append(w.id)
        w.sessions.add(f"new{n}")
    assert order == ["w0", "w0", "w1", "w1", "w2", "w2"]
    assert place(workers) is None
    assert full_reason(workers) == "all 6 sessions of 3 workers are in use"


def test_placement_counts_offers_in_flight_and_skips_draining_workers():
    workers = _workers(1, 0, 0)
    workers[0].opening = 1  # an offer placed there, not answered yet: it holds the slot
    assert place(workers).id == "w1"
    workers[1].draining = True
    assert place(workers).id == "w2"
    workers[2].sessions = {"a", "b"}
    assert place(workers) is None
    assert full_reason(workers) == "all 4 sessions of 2 workers are in use"


def test_placement_prefers_a_worker_running_the_same_model_and_settings():
    workers = _workers(1, 0, keys=("steps=4", "steps=2"))
    assert place(workers, key="steps=2").id == "w1"  # idle, but the same settings
    assert place(workers, key="steps=4").id == "w0"
    assert place(workers).id == "w0"  # any key: fill first
    workers[1].sessions = {"a", "b"}
    assert place(workers, key="steps=2").id == "w0"  # none of that key with room: any worker


def test_placement_admits_no_more_than_a_worker_streams_in_real_time():
    workers = _workers(0, 0)  # 2 slots each
    workers[0].capacity, workers[1].capacity = 1, 2  # as measured and reported
    assert place(workers).id == "w0"
    workers[0].sessions = {"a"}
    assert place(workers).id == "w1"  # w0 has a free slot but streams 1 session in real time
    workers[1].sessions = {"b", "c"}
    assert place(workers) is None
    assert full_reason(workers) == "the 2 workers stream 3 sessions in real time (4 slots) and all are in use"
    assert place(workers, moving=True).id == "w0"  # a failover may use the slot: slowed, not ended
    workers[1].sessions = {"b"}
    workers[1].behind = True  # its session repeats frames: none more meanwhile
    assert place(workers) is None
    assert full_reason(workers) == "the sessions of 2 workers are behind real time; one more would slow them"
    workers[1].behind = False
    assert place(workers).id == "w1"


def test_serve_ray_checks_its_flags_before_starting_anything():
    import subprocess
    import sys

    for flags, says in ((["--slots", "0"], "--slots must be at least 1"),
                        (["--workers", "0"], "--workers must be at least 1"),
                        (["--worker-cpus", "0"], "--worker-cpus must be above 0"),
                        (["--snapshot-every", "-1"], "--snapshot-every must be 0 (none) or more chunks")):
        r = subprocess.run([sys.executable, "-m", "streamer.cli", "serve", "--ray", "--port", "0", *flags],
                           capture_output=True, text=True, timeout=WAIT)
        assert r.returncode == 2 and says in r.stderr, r.stderr


# ---------------------------------------------------------------- processes as users run them


def _popen(log, *argv: str):
    import subprocess
    import sys

    from served import ROOT

    return subprocess.Popen([sys.executable, "-m", "streamer.cli", *argv], cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


@pytest.mark.asyncio
async def test_workers_join_a_cluster_and_a_stopped_one_hands_its_session_over(tmp_path, clients):
    """A Ray head, `livereel serve --ray HEAD --workers 0` and two `livereel worker --address
    HEAD` processes: a session plays; SIGTERM to its worker moves it to the other one (the
    viewer reconnects) before that process exits (143)."""
    pytest.importorskip("ray")
    import signal
    import subprocess

    from ray.cluster_utils import Cluster

    from served import free_port

    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                          "object_store_memory": 100 * 2**20})
    port, procs = free_port(), {}
    try:
        procs["gateway"] = _popen(tmp_path / "gateway.log", "serve", "--ray", head.address, "--workers", "0",
                                  "--port", str(port), "--checkpoint", "debug", "--engine", "eager")
        for name in ("ra", "rb"):
            procs[name] = _popen(tmp_path / f"{name}.log", "worker", "--address", head.address, "--id", name,
                                 "--checkpoint", "debug", "--engine", "eager", "--cpus", "0.5")

        async def workers() -> list[dict]:
            try:
                status, _, body = await fetch(port, "/healthz")
            except OSError:
                return []
            return json.loads(body)["workers"] if status == 200 else []

        for _ in range(int(2 * WAIT / 0.5)):
            if len(await workers()) == 2:
                break
            assert all(p.poll() is None for p in procs.values()), {n: (tmp_path / f"{n}.log").read_text()
                                                                   for n in procs}
            await asyncio.sleep(0.5)
        # each worker measured at start how many sessions it streams in real time (--admission measured)
        assert all(1 <= w["real_time_sessions"] <= w["slots"] for w in await workers())
        client = await clients(port).open()
        await client.frames_after(8)
        (serving,) = [w["worker"] for w in await workers() if w["sessions"]]
        signals: list = []
        follower = asyncio.ensure_future(_follow_signaling(client, signals))
        try:
            procs[serving].send_signal(signal.SIGTERM)
            await until(lambda: any(m["type"] == "answer" for _, m in signals), "a new answer")
            await client.expect("hello")
            await client.frames_after(8)
        finally:
            follower.cancel()
        assert await asyncio.to_thread(procs[serving].wait, WAIT) == 143
        assert [(w["worker"], w["sessions"]) for w in await workers()] == [
            ("rb" if serving == "ra" else "ra", 1)]
        await client.close()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs.values():
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
        head.shutdown()


# ---------------------------------------------------------------- a local Ray cluster


@pytest.fixture(scope="module")
def cluster():
    """(controller, workers, seconds to start) of a local cluster: 3 workers x 2 slots."""
    pytest.importorskip("ray")
    import ray

    from streamer.cluster.gateway import init_ray, start_controller, start_workers

    start = time.perf_counter()
    init_ray(None, num_cpus=2, log_to_driver=False)
    try:
        controller = start_controller(detached=False)
        # admission by slots: placement is what these tests check (the measured kind: test_admission_*)
        workers = start_workers([f"w{i}" for i in range(WORKERS)], "debug", _sampling(), SLOTS, num_cpus=0.5,
                                engine="eager", timeout=2 * WAIT, admission="limit")
        yield controller, workers, time.perf_counter() - start
    finally:
        ray.shutdown()


@pytest_asyncio.fixture
async def gateway(cluster, started):
    """The gateway (Server + RayBackend) on a free port: (server, controller)."""
    from streamer.cluster.gateway import RayBackend
    from streamer.server import Server

    controller = cluster[0]
    info = await controller.info.remote()
    server = Server(None, info, max_sessions=WORKERS * SLOTS, backend=RayBackend(controller))
    server.port = await started(server)
    yield server, controller
    await until(lambda: not server.relayed, "every relayed session closed")


async def _where(controller, session: str) -> str:
    return (await controller.where.remote(session))["worker"]


@pytest.mark.asyncio
async def test_six_sessions_fill_the_workers_in_order_and_the_seventh_is_refused(gateway, clients):
    server, controller = gateway
    opened, placed_ms = [], []
    for _ in range(WORKERS * SLOTS):
        client = clients(server.port)
        start = time.perf_counter()
        await client.open(prompt="a red ball bouncing over a meadow by day")
        placed_ms.append((time.perf_counter() - start) * 1000)
        opened.append(client)
    where = [await _where(controller, c.session) for c in opened]
    assert where == ["w0", "w0", "w1", "w1", "w2", "w2"]  # fill first, in registration order
    print(f"time to place a session (offer -> hello), ms: {[round(t) for t in placed_ms]}")

    late = clients(server.port)
    reply = await late.offer()
    assert reply == {"type": "error", "code": "server_full",
                     "detail": "server full: all 6 sessions of 3 workers are in use; try again in a moment"}
    assert await metric(server.port, "livereel_sessions_rejected_total", reason="server_full") == 1

    # every placed session plays: frames arrive at each client from its own worker
    await asyncio.gather(*(c.frames_after(8) for c in opened))
    for c in opened:
        stats = await c.expect("stats")
        assert stats["sent"] > 0

    # a slot freed on w1 takes the next viewer (every other slot is taken)
    await opened[2].close()
    await until(lambda: opened[2].session not in server.relayed, "the gateway saw the viewer go")
    await until_free(controller, "w1")
    again = clients(server.port)
    await again.open()
    assert await _where(controller, again.session) == "w1"
    await again.frames_after(4)


async def until_free(controller, worker: str) -> None:
    for _ in range(int(WAIT / 0.05)):
        health = await controller.health.remote()
        if any(w["worker"] == worker and w["sessions"] < w["slots"] for w in health["workers"]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{worker} freed no slot within {WAIT} s")


@pytest.mark.asyncio
async def test_past_every_slot_viewers_wait_in_line_first_come_first_placed(cluster, started, clients):
    """With queue_seconds, an offer past every slot waits in line: its viewer is told its
    place, a freed slot goes to the first in line, one who leaves frees its place, and one
    who waits too long is refused with the reason."""
    from streamer.cluster.gateway import RayBackend
    from streamer.server import Server

    controller = cluster[0]
    await until_idle(controller)
    info = await controller.info.remote()
    server = Server(None, info, max_sessions=20, backend=RayBackend(controller, queue_seconds=30))
    port = await started(server)
    opened = [await clients(port).open() for _ in range(WORKERS * SLOTS)]
    first, second, third = clients(port), clients(port), clients(port)
    replies = [await first.offer(), await second.offer(), await third.offer()]
    assert [(r["type"], r["position"]) for r in replies] == [("queued", 1), ("queued", 2), ("queued", 3)]
    assert replies[0]["detail"] == ("waiting for a free place: all 6 sessions of 3 workers are in use; "
                                    "you are next")
    assert replies[2]["detail"].endswith("; 2 ahead of you")
    assert (await controller.health.remote())["queued"] == 3

    await third.ws.close()  # leaves the line
    await until_queued(controller, 2)
    await opened[3].close()  # a slot frees on w1: the first in line takes it
    answer = await first.reply()
    assert answer["type"] == "answer" and await _where(controller, first.session) == "w1"
    await first.expect("hello")
    await first.frames_after(4)
    moved_up = await second.reply()
    assert (moved_up["type"], moved_up["position"]) == ("queued", 1)

    # out of time: refused with the reason, having waited
    short = Server(None, info, max_sessions=20, backend=RayBackend(controller, queue_seconds=1))
    late = clients(await started(short))
    reply = await late.offer()
    assert reply["type"] == "queued" and reply["position"] == 2  # behind `second`
    refused = await late.reply()
    assert refused == {"type": "error", "code": "server_full", "detail": "server full: all 6 sessions of 3 "
                       "workers are in use; waited 1 s in line; try again in a moment"}
    await second.ws.close()
    await until_queued(controller, 0)
    for c in opened:
        await c.close()
    await first.close()


async def until_queued(controller, n: int) -> None:
    for _ in range(int(WAIT / 0.05)):
        if (await controller.health.remote())["queued"] == n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the line never came to {n} (health: {await controller.health.remote()})")


async def until_idle(controller) -> None:
    """Every session of the earlier tests closed."""
    for _ in range(int(WAIT / 0.05)):
        if (await controller.health.remote())["sessions"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"sessions left over: {await controller.health.remote()}")



@pytest.mark.asyncio
async def test_healthz_and_metrics_report_each_workers_load(gateway, clients):
    server, controller = gateway
    a = await clients(server.port).open()
    b = await clients(server.port).open()
    await asyncio.gather(a.frames_after(4), b.frames_after(4))

    async def chunk_times_in() -> tuple[int, dict]:
        for _ in range(int(WAIT / 0.1)):
            status, _, body = await fetch(server.port, "/healthz")
            health = json.loads(body)
            if health["workers"][0]["chunk_ms"] is not None:
                return status, health
            await asyncio.sleep(0.1)
        raise AssertionError("no chunk time reported")

    status, health = await chunk_times_in()
    assert status == 200 and health["status"] == "ok"
    assert health["sessions"] == 2 and health["slots"] == WORKERS * SLOTS and health["admitting"] is True
    workers = {w["worker"]: w for w in health["workers"]}
    assert list(workers) == ["w0", "w1", "w2"]
    assert [workers[w]["sessions"] for w in workers] == [2, 0, 0]
    assert all(w["slots"] == SLOTS and not w["draining"] for w in workers.values())
    assert workers["w0"]["chunk_ms"] > 0

    assert await metric(server.port, "livereel_worker_sessions", worker="w0") == 2
    assert await metric(server.port, "livereel_worker_slots", worker="w2") == SLOTS
    assert await metric(server.port, "livereel_sessions") == 2


@pytest.mark.asyncio
async def test_the_log_comes_whole_from_the_controllers_store(gateway, clients):
    server, controller = gateway
    client = await clients(server.port).open(prompt="a blue cube", seed=5)
    await client.frames_after(4)
    client.send({"type": "prompt", "text": "snowy forest at night"})
    await client.expect("applied", what="prompt", text="snowy forest at night")
    client.send({"type": "pause"})
    await client.expect("applied", what="pause")

    async def log_lines() -> list[dict]:
        status, _, body = await fetch(server.port, f"/sessions/{client.session}/log.jsonl")
        assert status == 200
        return [json.loads(line) for line in body.decode().splitlines()]

    await until_lines(log_lines, 4)
    lines = await log_lines()
    assert lines[0]["what"] == "header" and lines[0]["seed"] == 5 and lines[0]["session"] == client.session
    assert [ln["what"] for ln in lines[1:]] == ["prompt", "prompt", "pause"]
    assert [lines[1]["text"], lines[2]["text"]] == ["a blue cube", "snowy forest at night"]
    assert lines[1]["frame"] == 0 < lines[2]["frame"] <= lines[3]["frame"]

    session = client.session
    await client.close()
    await until(lambda: session not in server.relayed, "the session ended")
    status, _, body = await fetch(server.port, f"/sessions/{session}/log.jsonl")  # kept after the end
    assert status == 200 and body.decode().splitlines() == [json.dumps(ln) for ln in lines]
    status, _, _ = await fetch(server.port, "/sessions/nosuchsession/log.jsonl")
    assert status == 404


async def until_lines(lines, n: int) -> None:
    for _ in range(int(WAIT / 0.1)):
        if len(await lines()) >= n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {n} log lines within {WAIT} s")


# ---------------------------------------------------------------- moving sessions


@pytest.mark.asyncio
async def test_a_draining_worker_hands_its_sessions_over_and_takes_no_new_ones(gateway, clients):
    """(Leaves w0 draining: the tests after this one place no session there.)"""
    server, controller = gateway
    a = await clients(server.port).open(seed=21)
    await a.frames_after(8)
    assert await _where(controller, a.session) == "w0"
    signals: list = []
    follower = asyncio.ensure_future(_follow_signaling(a, signals))
    try:
        start = time.perf_counter()
        assert await controller.drain.remote("w0") == 0
        await until(lambda: any(m["type"] == "answer" for _, m in signals), "a new answer")
        await a.expect("hello")
        await a.frames_after(8)
        print(f"hand-over (drain -> frames from the new worker): {time.perf_counter() - start:.2f} s")
    finally:
        follower.cancel()
    assert [m["type"] for _, m in signals] == ["reconnect", "answer"]
    assert "worker w0 is draining" in signals[0][1]["detail"]
    assert await controller.where.remote(a.session) == {"worker": "w1", "epoch": 1}
    health = {w["worker"]: w for w in (await controller.health.remote())["workers"]}
    assert health["w0"]["draining"] and health["w0"]["sessions"] == 0 and health["w1"]["sessions"] == 1
    b = await clients(server.port).open()
    assert await _where(controller, b.session) == "w1"  # fill first, never the draining worker
    lines = (await controller.log_text.remote(a.session)).splitlines()
    assert json.loads(lines[0])["seed"] == 21 and sum('"header"' in line for line in lines) == 1


# ---------------------------------------------------------------- failover (last: it kills a worker)


async def _follow_signaling(client: Client, events: list) -> None:
    """What the page does on its signaling socket: told to reconnect, it offers again from a
    new peer connection and takes the answer."""
    async for raw in client.ws:
        msg = json.loads(raw)
        events.append((time.perf_counter(), msg))
        if msg["type"] == "reconnect":
            old = client.pc
            client.new_peer()
            await old.close()
            await client.pc.setLocalDescription(await client.pc.createOffer())
            await client.ws.send(json.dumps({"type": "offer", "sdp": client.pc.localDescription.sdp}))
        elif msg["type"] == "answer":
            await client.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "answer"))


@pytest.mark.asyncio
async def test_a_killed_workers_sessions_resume_elsewhere_with_the_same_frames(cluster, started, clients,
                                                                               debug_model):
    """Two sessions on a worker that is killed mid-stream go on on another worker: their
    viewers reconnect by themselves (told over the signaling socket), the frames after the
    resume are those of an uninterrupted stream, byte for byte, the log is whole, and a
    session on another worker goes on undisturbed."""
    import numpy as np
    import ray

    from streamer.cluster.gateway import RayBackend, start_workers
    from streamer.export import render
    from streamer.server import Server

    controller = cluster[0]
    # Workers whose sessions step alone (unbatched), so that frames are bit-equal to a replay's;
    # the gateway asks for their key, so placement puts its sessions there first.
    # They snapshot their sessions every 2 chunks: a restore starts from the latest snapshot.
    solo = start_workers(["s0", "s1"], "debug", _sampling(), SLOTS, num_cpus=0.25, engine="eager", batch=False,
                         keep_frames=1024, timeout=WAIT, admission="limit", snapshot_every=2)
    health = await controller.health.remote()
    key = next(w["key"] for w in health["workers"] if w["worker"] == "s0")
    info = await controller.info.remote()
    server = Server(None, info, max_sessions=10, backend=RayBackend(controller, key=key))
    port = await started(server)
    plain = Server(None, info, max_sessions=10, backend=RayBackend(controller))
    plain_port = await started(plain)

    a = await clients(port).open(prompt="a red ball bouncing over a meadow by day", seed=11)
    b = await clients(port).open(prompt="a blue cube in the desert at night", seed=12)
    c = await clients(plain_port).open(seed=13)
    where_c = await _where(controller, c.session)
    assert [await _where(controller, x.session) for x in (a, b)] == ["s0", "s0"] and where_c.startswith("w")
    a.send({"type": "camera", "pan": [0.5, -0.25], "zoom": 0.0})
    await a.expect("applied", what="camera")
    a.send({"type": "prompt", "text": "a green star in the snowy forest"})
    await a.expect("applied", what="prompt", text="a green star in the snowy forest")
    await asyncio.gather(a.frames_after(16), b.frames_after(16), c.frames_after(16))

    signals = {x.session: [] for x in (a, b, c)}
    followers = [asyncio.ensure_future(_follow_signaling(x, signals[x.session])) for x in (a, b, c)]
    try:
        killed = time.perf_counter()
        ray.kill(solo[0], no_restart=True)

        async def back(client: Client) -> float:
            await until(lambda: any(m["type"] == "answer" for _, m in signals[client.session]), "a new answer")
            await client.expect("hello")
            await client.frames_after(1)
            return time.perf_counter() - killed

        seconds = await asyncio.gather(back(a), back(b))
        print(f"failover (kill -> first frame again at the client), s: {[round(t, 2) for t in seconds]}")
        await asyncio.gather(a.frames_after(24), b.frames_after(24), c.frames_after(24))
    finally:
        for f in followers:
            f.cancel()

    for x in (a, b):
        assert await controller.where.remote(x.session) == {"worker": "s1", "epoch": 1}
        assert [m["type"] for _, m in signals[x.session]] == ["reconnect", "answer"]
        move, latest = await controller.moves.remote(x.session)
        print(f"moved: {move}; latest snapshot at chunk {latest['snapshot']}")
        assert move["worker"] == "s1" and 0 <= move["replayed"] <= 2 < move["chunk"]  # from a snapshot
        assert latest["snapshot"] is not None and latest["snapshot"] > move["chunk"] - move["replayed"]
    assert await controller.where.remote(c.session) == {"worker": where_c, "epoch": 0}
    assert signals[c.session] == []  # undisturbed

    k = info.frames_per_chunk
    for x in (a, b):
        lines = (await controller.log_text.remote(x.session)).splitlines()
        header, events = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
        assert header["session"] == x.session and sum(e["what"] == "header" for e in events) == 0
        assert [e["frame"] for e in events] == sorted(e["frame"] for e in events)
        made = await solo[1].kept_frames.remote(x.session)  # what the new worker made, by stream frame
        assert made and min(made) % k == 0 and min(made) > 0
        gen = _sampling().generator(debug_model, seed=header["seed"])
        reference = list(render(gen, events, max(made) + 1))  # the uninterrupted stream
        for index, frame in made.items():
            assert np.array_equal(frame, reference[index]), f"frame {index} differs from the uninterrupted stream"
    assert any(e["what"] == "camera" for e in (json.loads(ln) for ln in
               (await controller.log_text.remote(a.session)).splitlines()[1:]))
