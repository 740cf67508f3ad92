"""The server's protocol, end to end in-process: an aiortc client (no browser) against
`Server` running the real Generator on the debug model."""

from __future__ import annotations

import asyncio
import json
import socket
from fractions import Fraction

import pytest
import pytest_asyncio
from fakes import (  # noqa: F401 (clients, started: fixtures)
    WAIT,
    FakeConfig,
    FakeGenerator,
    Played,
    clients,
    fake_info,
    fetch,
    metric,
    real_server,
    started,
    until,
)
from prometheus_client.parser import text_string_to_metric_families

from model.sampling import Sampling
from streamer.controls import MAX_CONTROL_BYTES
from streamer.server import Server
from streamer.webrtc import keep_loopback_candidates, parse_ice_server, video_bitrate

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def debug_model():
    from model import load_model
    from model.generate import Generator

    model = load_model("debug")
    Generator(model, seed=0, steps=2).next_frames()  # one-off warm-up, as `serve` does
    return model


@pytest_asyncio.fixture
async def server(debug_model, started, tmp_path):
    # warm-started chunks and guidance, as `livereel serve` can run (the session log records both)
    server = real_server(debug_model, Sampling(steps=2, warm_start=1, guidance=1.5), max_sessions=2,
                         record_dir=tmp_path)
    server.port = await started(server)
    return server


# ---------------------------------------------------------------- protocol


@pytest.mark.asyncio
async def test_offer_answer_hello_and_paced_video(server, clients, debug_model):
    client = clients(server.port)
    reply = await client.offer(prompt="a red desert", seed=11)
    assert reply["type"] == "answer" and reply["session"] in server.live
    assert "VP8" in reply["sdp"]
    cfg = debug_model.config
    hello = await client.expect("hello")
    # the debug model is a livereel model: it knows the world's words and says which it understood
    vocabulary, words = hello.pop("vocabulary"), hello.pop("words")
    assert list(vocabulary) == ["biome", "time", "weather", "shape", "colour", "motion"]
    assert [(w["text"], w.get("attribute")) for w in words] == [("a", None), ("red", "colour"), ("desert", "biome")]
    assert hello.pop("reads") == "a red over the desert"  # as the prompt rewrite rewords it for the model
    assert hello == {
        "type": "hello",
        "session": reply["session"],
        "model": "debug",
        "fps": cfg.fps,
        "size": cfg.image_size,
        "frames_per_chunk": cfg.frames_per_chunk,
        "steps": 2,
        "prompt": "a red desert",
        "seed": 11,
        "camera": True,
    }
    await client.frames_after(12)
    frames = list(client.frames)[-10:]
    assert all((f.width, f.height) == (cfg.image_size, cfg.image_size) for f in frames)
    assert all(f.time_base == Fraction(1, 90_000) for f in frames)
    steps = [b.pts - a.pts for a, b in zip(frames, frames[1:])]
    tick = 90_000 // cfg.fps
    assert all(s > 0 and s % tick == 0 for s in steps), steps
    stats = await client.expect("stats")
    assert stats["sent"] > 0 and stats["chunk"] > 0 and not stats["paused"]
    assert await metric(server.port, "livereel_sessions") == 1
    assert await metric(server.port, "livereel_frames_sent_total") > 0
    assert await metric(server.port, "livereel_chunk_seconds_count") > 0


@pytest.mark.asyncio
async def test_every_control_is_applied_and_logged(server, clients):
    client = await clients(server.port).open(prompt="first light", seed=3)
    await client.frames_after(4)

    client.send({"type": "prompt", "text": "a storm at sea"})
    prompt = await client.expect("applied", what="prompt", text="a storm at sea")
    client.send({"type": "camera", "pan": [0.5, -0.25], "zoom": 0.125})
    camera = await client.expect("applied", what="camera")
    assert camera["pan"] == [0.5, -0.25] and camera["zoom"] == 0.125
    client.send({"type": "pause"})
    pause = await client.expect("applied", what="pause")
    assert (await client.expect("stats"))["paused"]
    sent = await metric(server.port, "livereel_frames_sent_total")
    await client.frames_after(4)  # a paused stream still plays (the same picture)
    assert await metric(server.port, "livereel_frames_sent_total") > sent
    client.send({"type": "resume"})
    resume = await client.expect("applied", what="resume")
    client.send({"type": "reset", "seed": 42})
    reset = await client.expect("applied", what="reset", seed=42)
    # (a chunk already being made when the pause came still lands: resume may be later)
    assert prompt["frame"] <= camera["frame"] <= pause["frame"] <= resume["frame"] <= reset["frame"]
    assert await metric(server.port, "livereel_control_latency_seconds_count") >= 3

    status, headers, body = await fetch(server.port, f"/sessions/{client.session}/log.jsonl")
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
    assert client.session in headers["Content-Disposition"]
    events = [json.loads(line) for line in body.decode().splitlines()]
    assert events[0]["what"] == "header" and events[0]["seed"] == 3 and events[0]["prompt"] == "first light"
    assert [e["what"] for e in events[1:]] == ["prompt", "prompt", "camera", "pause", "resume", "reset"]
    assert [e["frame"] for e in events[2:]] == [m["frame"] for m in (prompt, camera, pause, resume, reset)]
    # --record-dir has the same log on disk.
    assert (server.record_dir / f"{client.session}.jsonl").read_bytes() == body


@pytest.mark.asyncio
async def test_bad_messages_get_errors_and_the_stream_goes_on(server, clients):
    client = await clients(server.port).open()
    bad = {
        "{not json": "bad_json",
        json.dumps({"type": "camera", "pan": [5, 0], "zoom": 0}): "bad_message",
        json.dumps({"type": "reset", "seed": "seven"}): "bad_message",
        json.dumps({"type": "warp", "speed": 9}): "bad_message",
        json.dumps({"type": "prompt", "text": "x" * (MAX_CONTROL_BYTES + 10)}): "too_large",
    }
    for raw, code in bad.items():
        client.send(raw)
        error = await client.expect("error")
        assert error["code"] == code and error["detail"]
    await client.frames_after(8)
    client.send({"type": "prompt", "text": "still listening"})
    await client.expect("applied", what="prompt", text="still listening")
    assert await metric(server.port, "livereel_sessions") == 1


@pytest.mark.asyncio
async def test_a_second_offer_on_the_socket_is_refused(server, clients):
    client = await clients(server.port).open()
    await client.ws.send(json.dumps({"type": "offer", "sdp": "v=0"}))
    reply = json.loads(await asyncio.wait_for(client.ws.recv(), WAIT))
    assert reply["code"] == "unexpected"
    await client.frames_after(4)  # the session is untouched


@pytest.mark.asyncio
async def test_server_full(debug_model, started, clients):
    server = real_server(debug_model, max_sessions=1)
    port = await started(server)
    await clients(port).open()
    reply = await clients(port).offer()
    assert reply["type"] == "error" and reply["code"] == "server_full"
    assert "server full" in reply["detail"]
    assert await metric(port, "livereel_sessions") == 1
    assert await metric(port, "livereel_sessions_rejected_total", reason="server_full") == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["peer connection", "socket"])
async def test_disconnect_frees_the_session(server, clients, how):
    client = await clients(server.port).open()
    await client.frames_after(4)
    assert await metric(server.port, "livereel_sessions") == 1
    if how == "socket":
        await client.ws.close()
    else:
        await client.pc.close()  # the socket stays open: the server closes it
        await asyncio.wait_for(client.ws.wait_closed(), WAIT)
    for _ in range(int(WAIT / 0.1)):
        if await metric(server.port, "livereel_sessions") == 0:
            break
        await asyncio.sleep(0.1)
    assert await metric(server.port, "livereel_sessions") == 0 and not server.live
    # The slot is free again, and the ended session's log is still there.
    await clients(server.port).open()
    status, _, _ = await fetch(server.port, f"/sessions/{client.session}/log.jsonl")
    assert status == 200


@pytest.mark.asyncio
async def test_a_model_error_ends_only_that_session(started, clients):
    cfg = FakeConfig()
    server = Server(lambda seed: FakeGenerator(cfg, seed=seed, fail_on="boom"), fake_info(cfg), max_sessions=2)
    port = await started(server)
    doomed = await clients(port).open()
    healthy = await clients(port).open()
    doomed.send({"type": "camera", "pan": [0.5, 0.0], "zoom": 0.0})
    await doomed.expect("applied", what="camera")
    doomed.send({"type": "prompt", "text": "boom"})
    error = await doomed.expect("error")
    assert error["code"] == "generation_failed" and "boom" in error["detail"]
    await asyncio.wait_for(doomed.ws.wait_closed(), WAIT)
    assert doomed.ws.close_code == 1011
    await until(lambda: list(server.live) == [healthy.session], "the failed session is gone")
    await healthy.frames_after(8)
    healthy.send({"type": "prompt", "text": "fine"})
    await healthy.expect("applied", what="prompt", text="fine")
    assert await metric(port, "livereel_session_errors_total") == 1
    # The failed session's work is kept: its log, up to the failure, is still there.
    status, _, body = await fetch(port, f"/sessions/{doomed.session}/log.jsonl")
    assert status == 200 and [json.loads(line)["what"] for line in body.splitlines()] == ["header", "prompt", "camera"]


# ---------------------------------------------------------------- HTTP


@pytest.mark.asyncio
async def test_static_files_and_no_path_traversal(server):
    status, headers, body = await fetch(server.port, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"app.js" in body
    status, headers, _ = await fetch(server.port, "/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    for path in [
        "/../pyproject.toml",
        "/%2e%2e/pyproject.toml",
        "/..%2fpyproject.toml",
        "/%2e%2e%2fstreamer%2fserver.py",
        "//etc/passwd",
        "/nothing-here.js",
        "/app.js%00.css",
    ]:
        status, _, body = await fetch(server.port, path)
        assert status == 404, path
        assert b"[project]" not in body


@pytest.mark.asyncio
async def test_health_metrics_and_config(debug_model, started):
    server = real_server(debug_model, ice_servers=[parse_ice_server("turn:ann:s%3Acret@turn.example.org:3478")])
    port = await started(server)
    status, _, body = await fetch(port, "/healthz")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and (health["sessions"], health["max_sessions"]) == (0, 2)
    # admission: unmeasured (no start-up timing in this server), it admits up to the limit
    assert (health["capacity"], health["admitting"], health["reason"]) == (2, True, "1 of 2 real-time sessions")
    status, headers, body = await fetch(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {
        "livereel_sessions",
        "livereel_frames_sent",
        "livereel_frames_held",
        "livereel_chunk_seconds",
        "livereel_control_latency_seconds",
    } <= names
    status, _, body = await fetch(port, "/config.json")
    config = json.loads(body)
    assert config["iceServers"] == [
        {"urls": "turn:turn.example.org:3478", "username": "ann", "credential": "s:cret"}
    ]
    assert config["model"] == "debug"
    status, _, _ = await fetch(port, "/sessions/nope/log.jsonl")
    assert status == 404


# ---------------------------------------------------------------- ICE and media helpers


def test_keep_loopback_candidates():
    sdp = "\r\n".join(
        [
            "v=0",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
            "a=candidate:2 1 udp 2122260223 192.0.2.7 50001 typ host",
            "a=candidate:3 1 udp 2122260223 9c1f3f0e-2c6e.local 50002 typ host",
            "a=candidate:4 1 udp 2122260223 ::1 50003 typ host",
            "a=candidate:5 1 udp 1686052607 203.0.113.9 50004 typ srflx raddr 0.0.0.0 rport 0",
            "a=end-of-candidates",
            "a=mid:0",
        ]
    )
    kept = keep_loopback_candidates(sdp)
    candidates = [line.split()[4] for line in kept.splitlines() if line.startswith("a=candidate:")]
    assert candidates == ["127.0.0.1", "::1"]
    assert "end-of-candidates" not in kept and "a=mid:0" in kept and kept.endswith("\r\n")


def test_parse_ice_server():
    stun = parse_ice_server("stun:stun.example.org:3478")
    assert (stun.urls, stun.username, stun.credential) == ("stun:stun.example.org:3478", None, None)
    turn = parse_ice_server("turns:bob:p%40ss@relay.example.org:5349?transport=tcp")
    assert (turn.urls, turn.username, turn.credential) == ("turns:relay.example.org:5349?transport=tcp", "bob", "p@ss")
    for bad in ["http://x", "stun:", "turn:user@host:1", "relay.example.org"]:
        with pytest.raises(ValueError):
            parse_ice_server(bad)


def test_video_bitrate_fits_small_frames():
    assert 150_000 < video_bitrate(128, 16) < 300_000
    assert video_bitrate(16, 16) == 100_000  # a floor for tiny debug frames


# ---------------------------------------------------------------- the command


def serve_args(*argv: str):
    import argparse

    from streamer import server

    parser = argparse.ArgumentParser()
    server.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_serve_defaults_bind_loopback():
    from model.sampling import Sampling, sampling_from_args

    args = serve_args()
    assert (args.host, args.port, args.checkpoint, args.ice_server) == ("127.0.0.1", 8080, "default", [])
    assert sampling_from_args(args) == Sampling()


def test_serve_refuses_a_missing_checkpoint(tmp_path, caplog):
    from streamer.server import main

    assert main(serve_args("--checkpoint", str(tmp_path / "nothing"))) == 1
    assert "cannot load checkpoint" in caplog.text and "nothing" in caplog.text


def test_serve_refuses_a_bad_ice_server(caplog):
    from streamer.server import main

    assert main(serve_args("--checkpoint", "debug", "--ice-server", "http://example.org")) == 2
    assert "--ice-server" in caplog.text


def test_serve_refuses_a_record_dir_it_cannot_write_before_loading(tmp_path, caplog):
    from streamer.server import main

    (tmp_path / "a-file").write_text("")
    for folder in ("/proc/nope", str(tmp_path / "a-file" / "logs")):
        caplog.clear()  # (a checkpoint that is not there: loading first would exit 1, naming it)
        assert main(serve_args("--checkpoint", str(tmp_path / "nothing"), "--record-dir", folder)) == 2
        assert f"--record-dir {folder}: cannot write" in caplog.text and "checkpoint" not in caplog.text
    assert main(serve_args("--checkpoint", str(tmp_path / "nothing"), "--record-dir", str(tmp_path / "new"))) == 1
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())  # made, and left empty


def test_serve_names_a_port_in_use_before_loading(tmp_path, caplog):
    from streamer.server import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # (a checkpoint that is not there: loading first would exit 1, naming it)
        assert main(serve_args("--checkpoint", str(tmp_path / "nothing"), "--port", str(port))) == 2
    assert f"port {port} is in use; choose another with --port" in caplog.text and "checkpoint" not in caplog.text


@pytest.mark.asyncio
async def test_recorded_session_replays_to_the_streamed_frames(server, clients, debug_model, tmp_path,
                                                               monkeypatch):
    """The log a live session records (--record-dir) renders, through `livereel replay`'s
    renderer, to exactly the frames the track played, controls and reset included."""
    import numpy as np

    from streamer.export import render
    from streamer.replay import load_log

    recorder = Played(monkeypatch)
    played = recorder.frames
    c = await clients(server.port).open(prompt="a red ball bouncing over the desert", seed=5)
    await recorder.new_frames(6)
    c.send({"type": "camera", "pan": [0.5, -0.25], "zoom": 0.1})
    await c.expect("applied", what="camera")
    c.send({"type": "prompt", "text": "a blue cube in a snowy forest at night", "transition": 2})
    await c.expect("applied", what="prompt")
    await recorder.new_frames(6)
    c.send({"type": "reset", "seed": 11})
    await c.expect("applied", what="reset")
    await recorder.new_frames(8)
    await c.close()
    await until(lambda: (tmp_path / f"{c.session}.jsonl").exists(), "the session log")

    header, events = load_log(tmp_path / f"{c.session}.jsonl")
    assert [e["what"] for e in events if e["what"] != "prompt"][:2] == ["camera", "reset"]
    assert (header["steps"], header["warm_start"], header["guidance"], header["rewrite"]) == (2, 1, 1.5, True)
    n = max(played) + 1
    gen = Sampling(header["steps"], header["warm_start"], header["guidance"], header.get("anchor", 0.0),
                   header["rewrite"]).generator(debug_model, header["seed"])
    replayed = list(render(gen, events, n))
    assert len(played) >= 16
    for index, frame in played.items():
        assert np.array_equal(replayed[index], frame), f"frame {index} differs"
