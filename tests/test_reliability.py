"""Reliability and security: bad input, overload, disconnects and crashes lose nothing
and let no one in.

Each test attacks the server the way a hostile or unlucky client would, then checks
that everyone else's stream goes on, that nothing leaks (sessions, scheduler places,
RTCPeerConnections) and that the user's work (the session log) survives. Servers run
in-process, on the fake generator where the model is not the point and on the debug
model where it is; `livereel` runs as a subprocess where the process is the point
(signals, exit codes, files left behind), and so does a client that is to be killed
or to flood.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pickle
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import websockets
from aiortc import RTCPeerConnection
from fakes import (  # noqa: F401 (clients, started: fixtures)
    WAIT,
    Client,
    FakeConfig,
    FakeGenerator,
    clients,
    fake_info,
    fetch,
    metric,
    real_server,
    started,
    until,
    writing,
)

from model.sampling import Sampling
from streamer.controls import CONTROL_BURST, CONTROL_RATE, MAX_SIGNAL_BYTES, ProtocolError, parse_control
from streamer.server import Server
from streamer.webrtc import SILENCE_SECONDS

ROOT = Path(__file__).resolve().parents[1]
CFG = FakeConfig()
TOKEN = "s3cret-token-for-tests-only"
FREED_WITHIN = SILENCE_SECONDS + 5
"""Seconds in which an abruptly gone client's session must be freed."""


def fake_server(**kwargs) -> Server:
    return Server(lambda seed: FakeGenerator(CFG, seed=seed), fake_info(CFG), **kwargs)


def open_peer_connections() -> int:
    """RTCPeerConnections in this process that are not closed (servers' and clients')."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is RTCPeerConnection and o.connectionState != "closed")


async def freed(server: Server, port: int, wait: float = WAIT) -> float:
    """Waits until the server holds no session; returns the seconds it took."""
    start = time.monotonic()
    await until(lambda: not server.live and len(server.scheduler) == 0, "every session freed", wait)
    assert await metric(port, "livereel_sessions") == 0
    return time.monotonic() - start


def livereel(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


async def client_process(port: int, *args: str) -> tuple[asyncio.subprocess.Process, str]:
    """`python tests/fakes.py PORT ...`: a client in a process of its own; returns it and
    its session id once the session is open."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "tests" / "fakes.py"), str(port), *args,
        stdout=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line, "the client process ended before opening a session"
    return proc, json.loads(line)["session"]


# ---------------------------------------------------------------- bad input on the control channel

ODD_VALUES = [
    None, True, -1, 0, 2**64, 1e308, -0.0, 1.5, "", " ", "x" * 600, [], {}, [0, 0, 0], [[0.1]], {"x": 0},
    "\u202eevil", "zero\u200bwidth", "🦊🏳️‍🌈", "nul\u0000", "\ud800", "two\nlines", "[" * 50,
]  # fmt: skip
VALID = [
    {"type": "prompt", "text": "a red ball bouncing over grassland by day"},
    {"type": "prompt", "text": "a blue cube", "transition": 2},
    {"type": "camera", "pan": [0.5, -0.25], "zoom": 0.1},
    {"type": "reset", "seed": 3},
    {"type": "pause"},
    {"type": "resume"},
]


def fuzzed_messages(rng: random.Random, n: int) -> list[str | bytes]:
    """Hostile control messages: random bytes, mangled JSON, valid types with odd values
    (NaN, inf, huge, wrong types, control characters, lone surrogates), deep nesting, a
    message near the channel's 64 KB limit, and some valid ones in between."""
    out: list[str | bytes] = []
    for _ in range(n):
        kind = rng.randrange(6)
        if kind == 0:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(200))))
        elif kind == 1:  # valid JSON, a few characters mangled
            text = list(json.dumps(rng.choice(VALID)))
            for _ in range(rng.randint(1, 4)):
                text[rng.randrange(len(text))] = rng.choice('{}[]",:0\\ ex\u00e9')
            out.append("".join(text))
        elif kind == 2:  # a known type, fields of any value
            msg = dict(rng.choice(VALID))
            for key in rng.sample(["text", "pan", "zoom", "seed", "transition", "session"], rng.randint(1, 2)):
                msg[key] = rng.choice(ODD_VALUES)
            out.append(json.dumps(msg))  # lone surrogates go as \ud800 escapes
        elif kind == 3:
            value = rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
            out.append('{"type": "camera", "pan": [%s, 0], "zoom": 0}' % value)
        elif kind == 4:
            depth = rng.choice([10, 100, 1000, 1900])
            out.append('{"type": "prompt", "text": ' + "[" * depth + "]" * depth + "}")
        else:
            out.append(json.dumps(rng.choice(VALID)))
    out.append(json.dumps({"type": "prompt", "text": "x" * 60_000}))  # too large (the channel carries 64 KB)
    out.append(b"")
    return out


def rejected(raw: str | bytes) -> bool:
    try:
        parse_control(raw)
    except ProtocolError:
        return True
    return False


@pytest.mark.asyncio
async def test_fuzzed_control_messages_get_one_error_each_and_the_streams_go_on(started, clients):
    server = fake_server(control_rate=1e6)  # the rate limit has a test of its own
    port = await started(server)
    target, bystander = await clients(port).open(), await clients(port).open()
    messages = fuzzed_messages(random.Random(7), 400)
    bad = sum(rejected(m) for m in messages)
    assert 300 < bad < len(messages)  # mostly bad, some valid
    for raw in messages:
        target.send(raw)
    target.send({"type": "resume"})  # (the fuzz may have paused it)
    target.send({"type": "prompt", "text": "after the fuzz"})
    # The channel is ordered: every error was sent before this prompt's first frame played.
    await target.expect("applied", what="prompt", text="after the fuzz")
    errors = [m for m in target.seen if m["type"] == "error"]
    assert len(errors) == bad
    assert {e["code"] for e in errors} <= {"bad_json", "bad_message", "too_large"}
    assert all(e["detail"] for e in errors)
    assert await metric(port, "livereel_control_messages_total", result="invalid") == bad
    await target.frames_after(8)
    await bystander.frames_after(8)
    assert not [m for m in bystander.seen if m["type"] in ("error", "applied")]  # untouched
    assert len(server.live) == 2
    print(f"\nfuzzed over the channel: {len(messages)} messages, {bad} rejected, one error each")


@pytest.mark.asyncio
async def test_invalid_utf8_text_ends_only_the_senders_session(started, clients):
    """A text message that is not UTF-8 (no browser sends one) makes aiortc drop that
    peer's connection before the server sees it: that session ends and is freed, the
    others go on."""
    from aiortc.rtcsctptransport import WEBRTC_STRING

    server = fake_server(max_sessions=3)
    port = await started(server)
    pcs = open_peer_connections()
    attacker, bystander = await clients(port).open(), await clients(port).open()
    sctp = attacker.channel.transport
    sctp._data_channel_queue.append((attacker.channel, WEBRTC_STRING, b'{"type": "prompt", "text": "\xff"}'))
    await sctp._data_channel_flush()
    await until(lambda: attacker.session not in server.live, "the attacker's session ends")
    await bystander.frames_after(8)
    bystander.send({"type": "prompt", "text": "still here"})
    await bystander.expect("applied", what="prompt", text="still here")
    assert list(server.live) == [bystander.session]
    await attacker.close()
    await bystander.close()
    await freed(server, port)
    assert open_peer_connections() == pcs


@pytest.mark.asyncio
async def test_a_flood_is_rate_limited_per_session_without_slowing_others(started, clients):
    """Another process floods its control channel at 2000 messages a second: it gets at
    most one `rate_limited` a second, at most the bucket's worth gets through, and the
    other session plays as many fresh frames as when all is quiet."""
    server = fake_server(max_sessions=2)
    port = await started(server)
    healthy = await clients(port).open()
    session = server.live[healthy.session].session
    fresh = lambda: session.frames_sent - session.frames_held  # noqa: E731

    flood_seconds = 4.0
    proc, flooder = await client_process(port, "--flood", "2000", str(flood_seconds))
    for _ in range(int(WAIT / 0.1)):  # the flood is under way: the server drops some of it
        if await metric(port, "livereel_control_messages_total", result="rate_limited") > 0:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"no flood reached the server in {WAIT} s")
    # Fresh frames in 2.5 s (the flood goes on for 4 s), then in 2.5 s once it is over.
    before = fresh()
    await asyncio.sleep(2.5)
    during = fresh() - before
    healthy.send({"type": "prompt", "text": "heard through the flood"})
    await healthy.expect("applied", what="prompt", text="heard through the flood")
    report = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
    await asyncio.wait_for(proc.wait(), WAIT)
    await until(lambda: flooder not in server.live, "the flooder's session ends")
    before = fresh()
    await asyncio.sleep(2.5)
    quiet = fresh() - before

    dropped = await metric(port, "livereel_control_messages_total", result="rate_limited")
    accepted = await metric(port, "livereel_control_messages_total", result="accepted") - 1  # healthy's prompt
    arrived = accepted + dropped
    errors = report["errors"]
    print(
        f"\nflood: {report['sent']} sent in {report['seconds']:.1f} s, {arrived:.0f} arrived, {accepted:.0f} "
        f"accepted, {dropped:.0f} dropped, {len(errors)} rate_limited replies; the other session: "
        f"{during} fresh frames in 2.5 s under the flood, {quiet} in 2.5 s of quiet"
    )
    assert arrived >= 1000, "not a flood"
    assert dropped > 0 and {e["code"] for e in errors} == {"rate_limited"}
    assert 1 <= len(errors) <= report["seconds"] + 1
    assert accepted <= CONTROL_BURST + CONTROL_RATE * report["seconds"]
    assert during >= 0.8 * quiet > 0


# ---------------------------------------------------------------- bad signaling


async def offer_without_video() -> str:
    pc = RTCPeerConnection()
    pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    await pc.close()
    return pc.localDescription.sdp


async def offer_without_vp8() -> str:
    from aiortc import RTCRtpSender

    pc = RTCPeerConnection()
    video = pc.addTransceiver("video", direction="recvonly")
    video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs if c.name == "H264"])
    await pc.setLocalDescription(await pc.createOffer())
    await pc.close()
    return pc.localDescription.sdp


@pytest.mark.asyncio
async def test_bad_signaling_gets_a_clear_error_and_leaks_nothing(started, clients):
    server = fake_server()
    port = await started(server)
    url = f"ws://127.0.0.1:{port}/ws"
    pcs = open_peer_connections()
    cases = [
        (b"\xff\xfe\x00garbage", "bad_json"),
        ("", "bad_json"),
        ("[]", "bad_json"),
        (json.dumps({"sdp": "v=0"}), "bad_message"),  # no type
        (json.dumps({"type": "offer"}), "bad_message"),  # no SDP
        (json.dumps({"type": "offer", "sdp": 5}), "bad_message"),
        (json.dumps({"type": "offer", "sdp": "v=0", "session": "someone-else"}), "bad_message"),
        (json.dumps({"type": "offer", "sdp": "v=0", "prompt": "nul\u0000"}), "bad_message"),
        (json.dumps({"type": "offer", "sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}), "bad_offer"),
        (json.dumps({"type": "offer", "sdp": "".join(chr(random.Random(1).randrange(32, 127)) for _ in range(3000))}),
         "bad_offer"),
        (offer_without_video, "bad_offer"),
        (offer_without_vp8, "bad_offer"),
        (json.dumps({"type": "offer", "sdp": "v=0", "prompt": "x" * 100_000}), "too_large"),
    ]  # fmt: skip
    for raw, code in cases:
        if callable(raw):
            raw = json.dumps({"type": "offer", "sdp": await raw()})
        async with websockets.connect(url) as ws:
            await ws.send(raw)
            reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            assert (reply["type"], reply["code"]) == ("error", code), (raw[:80], reply)
            assert reply["detail"]
            await asyncio.wait_for(ws.wait_closed(), WAIT)
            assert ws.close_code == 1008
    # A frame over the socket's limit closes it (1009) before anything is parsed.
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send("x" * (4 * MAX_SIGNAL_BYTES + 1))
        await asyncio.wait_for(ws.wait_closed(), WAIT)
        assert ws.close_code == 1009
    assert await metric(port, "livereel_sessions_rejected_total", reason="bad_offer") == 4
    assert not server.live and len(server.scheduler) == 0
    assert open_peer_connections() == pcs
    await clients(port).open()  # and the server still serves


@pytest.mark.asyncio
async def test_messages_after_the_offer_get_a_reply_a_second_at_most(started, clients):
    server = fake_server()
    port = await started(server)
    client = await clients(port).open()
    for _ in range(300):
        await client.ws.send(json.dumps({"type": "offer", "sdp": "v=0"}))
    start = time.monotonic()
    replies = []
    while True:
        try:
            replies.append(json.loads(await asyncio.wait_for(client.ws.recv(), 1.5)))
        except TimeoutError:
            break
    assert replies and {r["code"] for r in replies} == {"unexpected"}
    assert len(replies) <= time.monotonic() - start + 1
    await client.frames_after(8)  # the session is untouched


@pytest.mark.asyncio
async def test_concurrent_offers_past_the_limit_build_nothing(started, clients):
    """Offers that arrive together while the last places are being filled: exactly
    `max_sessions` generators are built, the rest are refused at once."""
    built = []
    gate = threading.Event()

    def slow_generator(seed: int) -> FakeGenerator:
        built.append(seed)
        assert gate.wait(WAIT)  # (in a worker thread) held until every other offer is answered
        return FakeGenerator(CFG, seed=seed)

    server = Server(slow_generator, fake_info(CFG), max_sessions=2)
    port = await started(server)
    offers = [asyncio.ensure_future(clients(port).offer(seed=i)) for i in range(6)]
    await until(lambda: sum(o.done() for o in offers) == 4, "4 offers refused while 2 generators are being built")
    gate.set()
    replies = await asyncio.gather(*offers)
    kinds = sorted(r.get("code", r["type"]) for r in replies)
    assert kinds == ["answer"] * 2 + ["server_full"] * 4
    assert len(built) == 2
    assert all("server full" in r["detail"] for r in replies if r["type"] == "error")


@pytest.mark.asyncio
async def test_a_session_that_cannot_start_is_refused_and_the_server_goes_on(started, clients):
    def generator(seed: int) -> FakeGenerator:
        if seed == 13:
            raise MemoryError("no room for another KV cache")
        return FakeGenerator(CFG, seed=seed)

    server = Server(generator, fake_info(CFG), max_sessions=1)
    port = await started(server)
    reply = await clients(port).offer(seed=13)
    assert reply["code"] == "generation_failed" and "KV cache" in reply["detail"]
    await until(lambda: not server.full, "the place it held is free again")
    assert not server.live
    await clients(port).open(seed=1)


# ---------------------------------------------------------------- abrupt disconnects


@pytest.mark.asyncio
async def test_a_killed_client_process_frees_everything(started):
    server = fake_server()
    port = await started(server)
    pcs = open_peer_connections()
    proc, session_id = await client_process(port)
    session = server.live[session_id].session
    await until(lambda: session.frames_sent > 8, "the killed client was streaming")
    start = time.monotonic()
    proc.kill()  # no goodbye: the kernel drops its sockets
    await proc.wait()
    await freed(server, port, FREED_WITHIN)
    seconds = time.monotonic() - start
    assert open_peer_connections() == pcs
    status, _, body = await fetch(port, f"/sessions/{session_id}/log.jsonl")
    assert status == 200 and json.loads(body.splitlines()[0])["session"] == session_id  # its log survives
    print(f"\nkilled client: session freed in {seconds:.2f} s")


@pytest.mark.asyncio
async def test_a_client_whose_network_vanishes_is_freed(started, clients):
    """The client's ICE transport stops dead (no DTLS close, no SCTP abort) while its
    socket stays open: the server notices the silence and frees the session."""
    server = fake_server(max_sessions=2)
    port = await started(server)
    pcs = open_peer_connections()
    gone, stays = await clients(port).open(), await clients(port).open()
    await gone.frames_after(4)
    await gone.pc.getTransceivers()[0].receiver.transport.transport.stop()
    start = time.monotonic()
    await until(lambda: gone.session not in server.live, "the silent session is freed", FREED_WITHIN)
    seconds = time.monotonic() - start
    await asyncio.wait_for(gone.ws.wait_closed(), WAIT)  # the server closed its socket
    await stays.frames_after(8)
    assert list(server.live) == [stays.session] and len(server.scheduler) == 1
    await gone.close()
    await stays.close()
    await freed(server, port)
    assert open_peer_connections() == pcs
    print(f"\nvanished network: session freed in {seconds:.2f} s")


# ---------------------------------------------------------------- faults


def serve_process(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamer.cli", "serve", "--checkpoint", "debug", "--steps", "1", "--port", "0",
             *args],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, log_path


async def serving_port(proc: subprocess.Popen, log_path: Path) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if found := re.search(r"serving .* at http://[^ ]+:(\d+)/", log_path.read_text()):
            return int(found.group(1))
        assert proc.poll() is None, log_path.read_text()
        await asyncio.sleep(0.2)
    raise AssertionError(f"not serving:\n{log_path.read_text()}")


@pytest.mark.asyncio
async def test_sigterm_closes_every_peer_and_exits_cleanly(tmp_path):
    """`livereel serve` bound beyond loopback with a token: it warns, takes a client
    that has the token, and on SIGTERM closes the session (1001), keeps its log whole,
    logs it and exits 0 within 5 s."""
    records = tmp_path / "sessions"
    proc, log_path = serve_process(tmp_path, "--host", "0.0.0.0", "--token", TOKEN, "--record-dir", str(records))
    client = None
    try:
        port = await serving_port(proc, log_path)
        assert "reachable from other machines; sessions need the token" in log_path.read_text()
        client = await Client(port, query=f"?token={TOKEN}").open(prompt="a red ball over the desert")
        client.send({"type": "prompt", "text": "a white star over the ocean"})
        await client.expect("applied", what="prompt", text="a white star over the ocean")
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        code = await asyncio.to_thread(proc.wait, 5)
        seconds = time.monotonic() - start
        await asyncio.wait_for(client.ws.wait_closed(), WAIT)
        await until(lambda: client.pc.connectionState == "closed", "the server closed the peer connection")
    finally:
        if proc.poll() is None:
            proc.kill()
        if client is not None:
            await client.close()
    text = log_path.read_text()
    assert code == 0, text
    assert client.ws.close_code == 1001  # going away
    assert "shutting down: closing 1 session(s)" in text and "stopped: 1 session(s) closed" in text
    events = [json.loads(line) for line in (records / f"{client.session}.jsonl").read_text().splitlines()]
    assert [e.get("text") for e in events if e["what"] == "prompt"][-1] == "a white star over the ocean"
    print(f"\nSIGTERM: exited 0 in {seconds:.2f} s")


def test_a_killed_replay_leaves_no_output(tmp_path):
    log = tmp_path / "s.jsonl"
    log.write_text(json.dumps({"what": "header", "model": "debug", "seed": 0, "fps": 16, "steps": 1}) + "\n")
    out = tmp_path / "long.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "replay", str(log), "-o", str(out), "--frames", "100000"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 120  # a hang guard, not a timing assert
        while time.time() < deadline and not writing(tmp_path):
            time.sleep(0.2)
        assert writing(tmp_path), "the replay never started writing frames"
    finally:  # killed mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()


# ---------------------------------------------------------------- HTTP


def raw_get(port: int, target: bytes, host: bytes | None = None) -> tuple[int, bytes]:
    """One request, sent byte for byte as given (no client-side normalising)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: " + (host or b"127.0.0.1") + b"\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.asyncio
async def test_no_path_leaves_the_web_root(started, tmp_path):
    web = tmp_path / "web"
    (web / "sub").mkdir(parents=True)
    (web / "index.html").write_text("<p>the page</p>")
    (web / "sub" / "ok.txt").write_text("inside")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    (web / "link.txt").symlink_to(secret)
    server = Server(lambda seed: FakeGenerator(CFG), fake_info(CFG), web_root=web)
    port = await started(server)
    s = str(secret).encode()
    ok = [b"/", b"/index.html", b"/sub/ok.txt", b"/sub/../index.html", b"/./sub/ok.txt"]
    for target in ok:  # the test would see a leak: files are served
        status, _ = await asyncio.to_thread(raw_get, port, target)
        assert status == 200, target
    attacks = [
        b"/../secret.txt", b"/sub/../../secret.txt", b"/%2e%2e/secret.txt", b"/.%2e/secret.txt",
        b"/%2e%2e%2fsecret.txt", b"/sub%2f..%2f..%2fsecret.txt", b"/%252e%252e/secret.txt",
        b"/%252e%252e%252fsecret.txt", b"/..%5csecret.txt", b"/..\\secret.txt", b"\\..\\secret.txt",
        b"/%c0%ae%c0%ae/secret.txt", b"/" + s, b"//" + s, b"/%2f" + s[1:], b"/%2F" + s[1:].replace(b"/", b"%2F"),
        b"/link.txt", b"/index.html%00.txt", b"/%00", b"/index.html\x00", b"/C:%5c..%5csecret.txt",
        b"http://127.0.0.1/../secret.txt", b"/sub/..%00/../secret.txt",
    ]  # fmt: skip
    for target in attacks:
        status, data = await asyncio.to_thread(raw_get, port, target)
        # (a raw NUL byte is not HTTP: the server's parser refuses the request line, 400, before any route)
        assert status == (400 if b"\x00" in target else 404) and b"TOP-SECRET" not in data, target


# ---------------------------------------------------------------- access


@pytest.mark.asyncio
async def test_the_token_guards_signaling_logs_config_and_metrics(started, clients):
    server = fake_server(token=TOKEN)
    port = await started(server)
    for query in ("", "?token=", "?token=wrong", f"?token={TOKEN[:-1]}", f"?token={TOKEN}x"):
        with pytest.raises(websockets.InvalidStatus) as info:
            await clients(port, query=query).offer()
        assert info.value.response.status_code == 401
    client = await clients(port, query=f"?token={TOKEN}").open()
    bearer = await clients(port, headers={"Authorization": f"Bearer {TOKEN}"}).open()
    log_path = f"/sessions/{client.session}/log.jsonl"
    for path in (log_path, "/config.json", "/metrics"):
        status, _, body = await fetch(port, path)
        assert status == 401 and b"token" in body
        assert (await fetch(port, f"{path}?token=wrong"))[0] == 401
        assert (await fetch(port, f"{path}?token={TOKEN}"))[0] == 200
        assert (await fetch(port, path, {"Authorization": f"Bearer {TOKEN}"}))[0] == 200
    for path in ("/", "/app.js", "/healthz"):  # the page loads, then asks with the token
        assert (await fetch(port, path))[0] == 200
    assert await metric(port, "livereel_requests_refused_total", f"?token={TOKEN}", reason="token") == 5 + 3 * 2
    await bearer.frames_after(4)


@pytest.mark.asyncio
async def test_origins(started, clients):
    """Browsers send Origin: only the page's own (or an allowed one) opens a session; no
    Origin (not a browser) only on loopback or with a token; on loopback the Host must
    be a loopback name (DNS rebinding)."""
    loopback = fake_server(allowed_origins=["https://studio.example.org/"])
    port = await started(loopback)

    async def status(port: int, **headers) -> int:
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws", additional_headers=headers or None):
                return 101
        except websockets.InvalidStatus as e:
            return e.response.status_code

    assert await status(port) == 101  # no Origin, loopback
    assert await status(port, Origin=f"http://127.0.0.1:{port}") == 101
    assert await status(port, Origin="https://studio.example.org") == 101
    assert await status(port, Origin="https://evil.example") == 403
    assert await status(port, Origin=f"http://127.0.0.1:{port + 1}") == 403
    assert await status(port, Origin="null") == 403
    for path in (b"/ws", b"/", b"/config.json"):  # a page on a name rebound to 127.0.0.1
        assert (await asyncio.to_thread(raw_get, port, path, f"rebound.example:{port}".encode()))[0] == 421
    for host in (b"localhost", f"localhost:{port}".encode(), f"[::1]:{port}".encode(), b"127.0.0.1"):
        assert (await asyncio.to_thread(raw_get, port, b"/", host))[0] == 200, host

    wide = fake_server(host="0.0.0.0")
    port = await started(wide)
    assert await status(port) == 403  # not a browser, no token: refused beyond loopback
    assert await status(port, Origin=f"http://127.0.0.1:{port}") == 101
    assert await status(port, Origin="https://evil.example") == 403
    wide_token = fake_server(host="0.0.0.0", token=TOKEN)
    port = await started(wide_token)
    assert await status(port, Authorization=f"Bearer {TOKEN}") == 101


@pytest.mark.asyncio
async def test_a_second_client_cannot_control_or_read_the_first(started, clients):
    server = fake_server(max_sessions=2, token=TOKEN)
    port = await started(server)
    first = await clients(port, query=f"?token={TOKEN}").open(prompt="the first one's prompt")
    second = await clients(port, query=f"?token={TOKEN}").open()
    assert first.session != second.session and len(first.session) >= 20
    # No message names another session: the field does not exist.
    second.send({"type": "prompt", "text": "hijack", "session": first.session})
    assert "session" in (await second.expect("error"))["detail"]
    reply = await clients(port, query=f"?token={TOKEN}").offer(session=first.session)
    assert reply["code"] == "bad_message" and "offer.session" in reply["detail"]
    # What the second one does stays in its own session.
    second.send({"type": "prompt", "text": "second only"})
    await second.expect("applied", what="prompt", text="second only")
    await first.frames_after(8)
    assert [m["session"] for m in first.seen if m["type"] == "hello"] == [first.session]
    assert not [m for m in first.seen if "second only" in json.dumps(m) or "hijack" in json.dumps(m)]
    # Logs: by id and with the token only; no listing, no near-miss.
    for path in (
        f"/sessions/{first.session}/log.jsonl",
        "/sessions/",
        "/sessions",
        f"/sessions/{first.session[:-1]}/log.jsonl?token={TOKEN}",
        f"/sessions/{second.session}/../{first.session}/log.jsonl?token={TOKEN}",
        f"/sessions/*/log.jsonl?token={TOKEN}",
    ):
        status, _, body = await fetch(port, path)
        assert status in (401, 404) and b"the first one" not in body, path
    status, _, body = await fetch(port, f"/sessions/{first.session}/log.jsonl?token={TOKEN}")
    assert status == 200 and b"the first one's prompt" in body and b"second only" not in body
    assert first.session not in (await fetch(port, f"/metrics?token={TOKEN}"))[2].decode()
    assert first.session not in (await fetch(port, "/healthz"))[2].decode()


# ---------------------------------------------------------------- the command line


def run_cases(cases: list[tuple[list[str], str]]) -> None:
    """Runs `livereel ARGS` for every case, a few at a time; each must exit non-zero
    with stderr naming the problem (a regex)."""
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: livereel(*case[0]), cases))
    for (args, pattern), r in zip(cases, results):
        assert r.returncode != 0, (args, r.stdout, r.stderr)
        assert re.search(pattern, r.stderr), (args, pattern, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, (args, r.stderr[-2000:])


def test_bad_flags_and_input_files_exit_nonzero_naming_the_problem(tmp_path):
    good_log = {"what": "header", "model": "debug", "seed": 0, "fps": 16, "steps": 1}
    nan_pan = '{"what": "camera", "frame": 0, "pan": [NaN, 0], "zoom": 0}'
    files = {
        "binary.json": b"\x00\xff\xfe" * 100,
        "nested.json": b"[" * 100_000 + b"]" * 100_000,
        "array.json": b"[]",
        "nan.json": b'{"duration": NaN, "events": [{"at": 0, "prompt": "x"}]}',
        "binary.jsonl": b"\xff\xfe\x00\x01",
        "types.jsonl": json.dumps({**good_log, "seed": "zero"}).encode(),
        "nanpan.jsonl": (json.dumps(good_log) + "\n" + nan_pan).encode(),
        "nul.jsonl": (json.dumps(good_log) + '\n{"what": "prompt", "frame": 0, "text": "a\\u0000"}').encode(),
        "nested.jsonl": b"[" * 100_000 + b"]" * 100_000,
        "good.jsonl": json.dumps(good_log).encode(),
        "guidance.jsonl": json.dumps({**good_log, "guidance": 0.0}).encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "dir.json").mkdir()
    out = str(tmp_path / "out.mp4")
    t = lambda name: str(tmp_path / name)  # noqa: E731
    run_cases(
        [
            (["serve", "--port", "eighty"], r"invalid int value: 'eighty'"),
            (["serve", "--port", "70000"], r"--port must be in 0-65535"),
            (["serve", "--max-sessions", "0"], r"--max-sessions"),
            (["serve", "--token", "short"], r"--token must be at least 16"),
            (["serve", "--allow-origin", "evil.example"], r"--allow-origin 'evil.example': give scheme://host"),
            (["serve", "--prompt", ""], r"--prompt"),
            (["serve", "--prompt", "two\nlines"], r"--prompt: .*control characters"),
            (["serve", "--nonsense"], r"unrecognized arguments: --nonsense"),
            (["export", t("missing.json"), "-o", out], r"missing.json: no such file"),
            (["export", t("dir.json"), "-o", out], r"dir.json: cannot read"),
            (["export", t("binary.json"), "-o", out], r"binary.json: not a text file"),
            (["export", t("nested.json"), "-o", out], r"nested.json: (JSON nested too deeply|not JSON)"),
            (["export", t("array.json"), "-o", out], r"array.json: timeline: Input should be a valid dictionary"),
            (["export", t("nan.json"), "-o", out], r"nan.json: duration"),
            (["export", t("nan.json"), "-o", out, "--steps", "0"], r"--steps must be an integer >= 1"),
            (["export", t("nan.json"), "-o", out, "--guidance", "nan"], r"--guidance must be a number in \[1, 20\]"),
            (["export", t("nan.json"), "-o", out, "--steps", "2", "--warm-start", "2"],
             r"--warm-start must be an integer in \[0, steps\) \(got 2 with 2 steps\)"),
            (["serve", "--guidance", "0.5"], r"--guidance must be a number in \[1, 20\]"),
            (["replay", t("good.jsonl"), "-o", out, "--guidance", "inf"], r"--guidance must be a number in \[1, 20\]"),
            (["replay", t("guidance.jsonl"), "-o", out], r"guidance.jsonl:1: header guidance must be a number"),
            (["replay", t("binary.jsonl"), "-o", out], r"binary.jsonl: not a text file"),
            (["replay", t("types.jsonl"), "-o", out], r"types.jsonl:1: header 'seed' must be an integer"),
            (["replay", t("nanpan.jsonl"), "-o", out], r"nanpan.jsonl:2: camera.pan.0"),
            (["replay", t("nul.jsonl"), "-o", out], r"nul.jsonl:2: prompt.text: .*U\+0000"),
            (["replay", t("nested.jsonl"), "-o", out], r"nested.jsonl:1: (JSON nested too deeply|not JSON)"),
            (["replay", t("types.jsonl"), "-o", out, "--frames", "0"], r"--frames must be >= 1"),
        ]
    )
    assert not Path(out).exists()


class Payload:
    """Unpickling this creates `path`: proof of code run by a load."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_bad_checkpoints_are_refused_and_pickles_never_loaded(tmp_path, debug_model):
    from model import save_model

    marker = tmp_path / "pwned"
    pickled = pickle.dumps({"dit.blocks.0.attn.qkv.weight": Payload(marker)})
    pickle.loads(pickle.dumps(Payload(tmp_path / "proof"))).close()
    assert (tmp_path / "proof").exists()  # the payload is live: loading it would leave a marker

    def checkpoint(name: str) -> Path:
        return save_model(debug_model, tmp_path / name)

    (checkpoint("pt") / "model.pt").write_bytes(pickled)
    (checkpoint("pt_only") / "model.pt").write_bytes(pickled)
    (tmp_path / "pt_only" / "model.safetensors").unlink()
    (checkpoint("disguised") / "model.safetensors").write_bytes(pickled)
    (checkpoint("corrupted") / "model.safetensors").write_bytes(os.urandom(4096))
    weights = checkpoint("truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    config = checkpoint("wrong_shape") / "config.json"
    cfg = json.loads(config.read_text())
    cfg["dit"]["depth"] += 1
    config.write_text(json.dumps(cfg))

    log = tmp_path / "s.jsonl"
    log.write_text(json.dumps({"what": "header", "model": "debug", "seed": 0, "fps": 16, "steps": 1}) + "\n")
    timeline = tmp_path / "t.json"
    timeline.write_text(json.dumps({"duration": 1, "events": [{"at": 0, "prompt": "a red ball"}]}))
    out = str(tmp_path / "out.mp4")
    c = lambda name: str(tmp_path / name)  # noqa: E731
    run_cases(
        [
            (["serve", "--checkpoint", c("pt/model.pt")], r"pickled checkpoints are never loaded"),
            (["export", str(timeline), "-o", out, "--checkpoint", c("pt_only")],
             r"missing model.safetensors \(found \['model.pt'\]: pickled checkpoints are never loaded\)"),
            (["replay", str(log), "-o", out, "--checkpoint", c("disguised")], r"disguised.*unreadable safetensors"),
            (["serve", "--checkpoint", c("corrupted")], r"cannot load checkpoint .*corrupted.*unreadable"),
            (["export", str(timeline), "-o", out, "--checkpoint", c("truncated")], r"truncated"),
            (["replay", str(log), "-o", out, "--checkpoint", c("wrong_shape")], r"wrong_shape.*missing tensors"),
        ]
    )  # fmt: skip
    assert not marker.exists()
    assert not Path(out).exists()


# ---------------------------------------------------------------- load


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.asyncio
@pytest.mark.parametrize("seconds", [25, pytest.param(60, marks=pytest.mark.slow)])
async def test_eight_sessions_share_the_device_fairly(debug_model, started, clients, seconds):
    """8 viewers on the debug model, each steering at random: no errors, the slowest
    gets at least 0.8x the fresh frames of the fastest, memory stays flat, and closing
    them frees everything."""
    from model.generate import Generator

    n = 8
    Generator(debug_model, seed=0, steps=1).next_frames()  # one-off warm-up, as `serve` does
    server = real_server(debug_model, Sampling(steps=1, warm_start=0), max_sessions=n)
    port = await started(server)
    pcs = open_peer_connections()
    viewers = [await clients(port).open(prompt=f"a red ball over the desert, viewer {i}", seed=i) for i in range(n)]
    ninth = clients(port)
    refused = await ninth.offer()
    assert refused["code"] == "server_full" and "server full" in refused["detail"]
    await ninth.close()
    for v in viewers:
        await v.frames_after(4)
    sessions = [server.live[v.session].session for v in viewers]
    fresh = lambda: [s.frames_sent - s.frames_held for s in sessions]  # noqa: E731
    received = lambda: [v.frame_count for v in viewers]  # noqa: E731

    rng = random.Random(0)
    fresh0, received0, rss0, start = fresh(), received(), rss_mb(), time.monotonic()
    while time.monotonic() - start < seconds:
        await asyncio.sleep(0.25)
        v = rng.choice(viewers)
        if rng.random() < 0.5:
            v.send({"type": "camera", "pan": [rng.uniform(-1, 1), rng.uniform(-1, 1)], "zoom": rng.uniform(-1, 1)})
        else:
            v.send({"type": "prompt", "text": rng.choice(["a blue cube in the snow", "a white star at sunset"])})
    elapsed = time.monotonic() - start
    made = [b - a for a, b in zip(fresh0, fresh())]
    got = [b - a for a, b in zip(received0, received())]
    growth = rss_mb() - rss0
    errors = [m for v in viewers for m in v.seen if m["type"] == "error"]
    print(
        f"\n{n} sessions for {elapsed:.0f} s: fresh fps {[round(m / elapsed, 1) for m in made]}, "
        f"received fps {[round(g / elapsed, 1) for g in got]}, RSS {rss0:.0f} MB -> {rss0 + growth:.0f} MB"
    )
    assert not errors, errors[:3]
    assert await metric(port, "livereel_session_errors_total") == 0
    assert min(made) > 0 and min(made) >= 0.8 * max(made), made
    assert min(got) >= 0.8 * max(got), got
    assert growth < 64, f"RSS grew {growth:.0f} MB"
    for v in viewers:
        await v.close()
    await freed(server, port)
    assert open_peer_connections() == pcs


# ---------------------------------------------------------------- the page


@pytest.mark.e2e
def test_the_page_passes_its_token_on(tmp_path):
    """In Chromium: the page opened with ?token= streams and its log link works; opened
    without, it says why and starts nothing."""
    import shutil

    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian chromium not found: apt-get install -y chromium (never `playwright install`)")
    proc, log_path = serve_process(tmp_path, "--token", TOKEN)
    try:
        port = asyncio.run(serving_port(proc, log_path))
        url = f"http://127.0.0.1:{port}/"
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=executable,
                args=["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"],
            )
            page = browser.new_page()
            page.goto(f"{url}?token={TOKEN}")
            page.wait_for_function(
                "() => window.livereel.state.connection === 'live' && window.livereel.state.hello"
                " && document.getElementById('video').videoWidth > 0",
                timeout=120_000,
            )
            link = page.get_attribute("#download", "href")
            assert link.endswith(f"log.jsonl?token={TOKEN}")
            assert page.evaluate("async (href) => (await fetch(href)).status", link) == 200
            stranger = browser.new_page()
            stranger.goto(url)
            stranger.wait_for_function("() => !document.getElementById('error').hidden", timeout=120_000)
            assert "needs its token" in stranger.text_content("#error")
            assert stranger.evaluate("() => window.livereel.state.session") is None
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    assert "refused a request (token)" in log_path.read_text()
    assert log_path.read_text().count(": started (seed") == 1
