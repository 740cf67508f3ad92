"""The Gradio demo on the debug model: launched on loopback, driven over HTTP by
gradio_client as a browser tab would drive it, its streamed segments fetched from
Gradio's playlist and decoded with PyAV."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import av
import httpx
import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from gradio_client.utils import Status

from model import world
from model.sampling import Sampling
from streamer.demo import (DemoStream, InputError, Streams, add_arguments, build_app, check_prompt, check_seed,
                           main, vocabulary_markdown, write_segment)
from streamer.replay import load_log

PROMPT = "a red ball bouncing over grassland by day"
NEW_PROMPT = "a snowy forest at night"
DEADLINE = 120.0  # seconds before a wait gives up (a hang guard, not a timing assert)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def segments(job) -> int:
    return len(job.outputs())


def streamed_frames(job) -> list[np.ndarray]:
    """Every segment of a finished stream, fetched from its playlist, each decoded on
    its own: a list of (F, H, W, 3) arrays."""
    url = job.outputs()[-1][0]["url"]
    playlist = httpx.get(url, timeout=30).raise_for_status().text
    assert "#EXT-X-ENDLIST" in playlist  # the stream was closed
    out = []
    for name in (line for line in playlist.splitlines() if line and not line.startswith("#")):
        data = httpx.get(url.rsplit("/", 1)[0] + "/" + name, timeout=30).raise_for_status().content
        with av.open(io.BytesIO(data), format="mpegts") as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        out.append(np.stack(frames))
    return out


def event_log(client: Client) -> list[dict]:
    saved = client.predict(api_name="/log")
    text = httpx.get(saved["url"], timeout=30).raise_for_status().text
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def demo_url(debug_model):
    app = build_app(debug_model, Sampling(steps=2, warm_start=0, guidance=1.0), max_sessions=1)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


def test_stream_switch_prompt_bad_input_and_queue(demo_url, debug_model, tmp_path):
    cfg = debug_model.config
    tab = Client(demo_url, download_files=False, verbose=False)
    other = Client(demo_url, download_files=False, verbose=False)

    stream = tab.submit(PROMPT, 0, api_name="/start")
    wait_for(lambda: segments(stream) >= 1, "the first segment")
    assert "Switching" in tab.predict(NEW_PROMPT, api_name="/switch")

    # Bad input is refused with a message; the stream goes on.
    with pytest.raises(AppError, match="Type a prompt"):
        tab.predict("", api_name="/switch")
    with pytest.raises(AppError, match="1000 characters long; at most 500"):
        tab.predict("x" * 1000, api_name="/switch")
    with pytest.raises(AppError, match="seed must be a whole number"):
        tab.predict(-1, api_name="/reset")
    with pytest.raises(AppError, match="seed must be a whole number"):
        other.predict(PROMPT, -1, api_name="/check")
    with pytest.raises(AppError, match="Not streaming"):
        other.predict(NEW_PROMPT, api_name="/switch")  # a tab without a stream steers nothing
    # The stream takes the switch (its status says so), then a camera move a chunk later.
    wait_for(lambda: f"prompt: {NEW_PROMPT}" in stream.outputs()[-1][1], "the switch to stream")
    assert "pan (+0.50, +0.00)" in tab.predict(0.5, api_name="/pan_right")

    # The only slot is taken: a second tab is told so and waits in the queue.
    assert "in the queue" in other.predict(PROMPT, 0, api_name="/check")
    baseline = other.submit(PROMPT, 0, api_name="/start")
    wait_for(lambda: baseline.status().code == Status.IN_QUEUE, "the second stream to be queued")
    seen = segments(stream)
    wait_for(lambda: segments(stream) >= seen + 2, "segments after the controls")
    assert segments(baseline) == 0 and not stream.done()
    assert "Stopped" in tab.predict(api_name="/stop")
    wait_for(stream.done, "the stream to end")
    assert stream.status().success

    # The event log: header, the initial prompt, the switch mid-stream, the camera.
    events = event_log(tab)
    header = events[0]
    assert {k: header[k] for k in ("what", "version", "model", "seed", "fps", "size",
                                   "frames_per_chunk", "steps", "warm_start", "guidance", "prompt")} == {
        "what": "header", "version": 1, "model": "debug", "seed": 0, "fps": cfg.fps,
        "size": cfg.image_size, "frames_per_chunk": cfg.frames_per_chunk, "steps": 2,
        "warm_start": 0, "guidance": 1.0, "prompt": PROMPT}
    controls = [(e["what"], e.get("text") or e.get("pan")) for e in events[1:]]
    assert controls == [("prompt", PROMPT), ("prompt", NEW_PROMPT), ("camera", [0.5, 0.0])]
    switched, moved = events[2]["frame"], events[3]["frame"]
    assert 0 < switched < moved and switched % cfg.frames_per_chunk == 0
    log_path = tmp_path / "session.jsonl"
    log_path.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert len(load_log(log_path)[1]) == 3  # `livereel replay` takes it

    # The segments decode to frames of the model's size, at least 3 chunks of them.
    pieces = streamed_frames(stream)
    assert all(s.shape[1:] == (cfg.image_size, cfg.image_size, 3) for s in pieces)
    assert all(len(s) % cfg.frames_per_chunk == 0 for s in pieces)
    steered = np.concatenate(pieces)
    assert len(steered) >= max(3 * cfg.frames_per_chunk, moved + cfg.frames_per_chunk)

    # The queued tab starts once the slot frees: the same seed and prompt, never steered.
    per_segment = len(pieces[0])
    wait_for(lambda: segments(baseline) * per_segment > len(steered), "the baseline stream")
    other.predict(api_name="/stop")
    wait_for(baseline.done, "the baseline to end")
    plain = np.concatenate(streamed_frames(baseline))
    assert len(plain) >= len(steered)
    # Identical up to the switch, different from the frame it took effect at.
    same = [np.array_equal(a, b) for a, b in zip(steered[: switched + 1], plain)]
    assert same == [True] * switched + [False]


def test_the_vocabulary_hint_says_which_words_the_model_understood(demo_url):
    client = Client(demo_url, download_files=False, verbose=False)
    hint = client.predict("a sunny beach with palm trees, make it snow at night", api_name="/explain")
    assert hint.startswith("**understood:** *sunny* → weather clear, *trees* → biome forest, *at night* → time night")
    assert "**ignored:** *beach*, *palm*, *make*" in hint and "*snow* (“trees” already set the biome)" in hint
    assert hint.endswith(" · **reads:** “the forest at night under clear skies”")  # the prompt rewrite's wording
    assert client.predict("hello there", api_name="/explain") == "**understood:** no word · **ignored:** *hello*, *there*"
    table = vocabulary_markdown()
    for attribute, values in world.vocabulary().items():
        assert f"| {attribute} |" in table and all(f"**{v}**" in table for v in values)


def test_no_vocabulary_hint_for_an_open_vocabulary_model(debug_model, monkeypatch):
    monkeypatch.setattr(type(debug_model), "closed_vocabulary", False)  # as a Wan model says
    app = build_app(debug_model)
    assert "explain" not in {d.get("api_name") for d in app.config["dependencies"]}
    assert not any(getattr(b, "label", None) == "What this model knows" and b.visible for b in app.blocks.values())


def test_stream_logs_controls_at_session_frames(debug_model):
    k = debug_model.config.frames_per_chunk
    stream = DemoStream(debug_model, Sampling(steps=1, warm_start=0, guidance=1.0), seed=3, prompt="first")
    first = stream.chunk()
    assert first.shape == (k, debug_model.config.image_size, debug_model.config.image_size, 3)
    stream.stage_prompt("second", transition=3)
    assert stream.move_camera("x", -0.5) == ((-0.5, 0.0), 0.0)
    assert stream.move_camera("zoom", 0.25) == ((-0.5, 0.0), 0.25)  # one axis at a time
    stream.chunk()
    assert stream.move_camera("stop", 0.0) == ((0.0, 0.0), 0.0)
    stream.stage_reset(9)
    stream.chunk()
    events = stream.log.events()
    assert events[0]["seed"] == 3 and events[0]["steps"] == 1
    assert [(e["what"], e["frame"]) for e in events[1:]] == [
        ("prompt", 0), ("camera", k), ("prompt", k), ("reset", 2 * k), ("camera", 2 * k)]
    assert events[3]["transition"] == 3 and events[4]["seed"] == 9
    assert events[2]["pan"] == [-0.5, 0.0] and events[2]["zoom"] == 0.25
    # Frames count over the whole session, across the reset; the Generator's restarted.
    assert stream.frames_made == 3 * k and stream.generator.frame_index == k


@pytest.mark.parametrize("text, message", [
    ("", "Type a prompt"), ("   ", "Type a prompt"), ("x" * 501, "at most 500"),
])
def test_check_prompt_refuses(text, message):
    with pytest.raises(InputError, match=message):
        check_prompt(text)


def test_check_prompt_and_seed_accept():
    assert check_prompt("  a red ball  ") == "a red ball"
    assert check_prompt("x" * 500) == "x" * 500
    assert check_seed(0) == 0 and check_seed(7.0) == 7 and check_seed(2**32 - 1) == 2**32 - 1


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, None, float("nan"), True, "3"])
def test_check_seed_refuses(seed):
    with pytest.raises(InputError, match="seed must be a whole number"):
        check_seed(seed)


def test_segment_decodes_and_continues_the_timeline(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 32, 48, 3), dtype=np.uint8)
    path = write_segment(frames, tmp_path / "s.ts", fps=16, first_frame=32)
    with av.open(str(path)) as container:
        assert container.format.name == "mpegts"
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = list(container.decode(video=0))
    assert [f.pts * f.time_base * 16 for f in decoded] == list(range(32, 38))
    assert decoded[0].key_frame  # decodes on its own
    pixels = np.stack([f.to_ndarray(format="rgb24") for f in decoded])
    assert pixels.shape == frames.shape
    smooth = np.broadcast_to(np.linspace(0, 255, 48, dtype=np.uint8)[None, None, :, None], (6, 32, 48, 3))
    path = write_segment(np.ascontiguousarray(smooth), tmp_path / "t.ts", fps=16, first_frame=0)
    with av.open(str(path)) as container:
        back = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert np.abs(back.astype(int) - smooth).mean() < 3  # the picture survives encoding


def test_missing_checkpoint_exits_nonzero_with_the_reason(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)  # the real flags, so the test follows new ones
    args = parser.parse_args(["--port", str(free_port()), "--checkpoint", "/nonexistent/checkpoint"])
    assert main(args) == 1
    assert "no checkpoint at /nonexistent/checkpoint" in capsys.readouterr().err


def test_build_app_refuses_bad_limits(debug_model):
    with pytest.raises(ValueError, match="max_sessions"):
        build_app(debug_model, max_sessions=0)


def demo_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)  # the real flags, so the test follows new ones
    return parser.parse_args(list(argv))


def test_a_port_in_use_is_named_before_the_model_loads(monkeypatch, capsys):
    import model

    def no_load(*args, **kwargs):
        raise AssertionError("the model loaded before the port was checked")

    monkeypatch.setattr(model, "load_model", no_load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(demo_args("--port", str(port), "--checkpoint", "debug")) == 2
    assert capsys.readouterr().err == f"livereel demo: port {port} is in use; choose another with --port\n"
    assert main(demo_args("--port", "0", "--checkpoint", "debug")) == 2
    assert "--port must be 1 to 65535" in capsys.readouterr().err
    assert main(demo_args("--host", "nosuch.invalid", "--port", str(free_port()), "--checkpoint", "debug")) == 2
    assert "cannot listen on nosuch.invalid" in capsys.readouterr().err


def test_closing_the_streams_waits_for_the_chunk_and_removes_the_folder(debug_model):
    """What the demo does on Ctrl-C / SIGTERM, without the server: a stream mid-segment
    ends, no model work runs after `close`, and the temporary folder is gone."""
    sampling = Sampling(steps=1, warm_start=0, guidance=1.0)
    streams = Streams()
    stream = DemoStream(debug_model, sampling, seed=0, prompt=PROMPT)
    streams.begin("tab", stream)
    folder = streams.folder / stream.id
    folder.mkdir()
    segments = stream.segments(folder, segment_seconds=0.5)
    assert next(segments).exists()  # the generator now rests at a yield, as between Gradio's calls
    streams.close()
    made = stream.frames_made
    assert stream.stopped and not streams.folder.exists()
    assert list(segments) == [] and stream.frames_made == made  # resumed, it makes nothing more
    with pytest.raises(InputError, match="shutting down"):
        streams.begin("other", DemoStream(debug_model, sampling, seed=0, prompt=PROMPT))


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_end_a_playing_demo_cleanly(tmp_path, sig, code, word):
    """`livereel demo` streaming to a tab: exit 130 / 143 with one line, no traceback, no
    C++ abort (a thread left in the model at exit), no livereel-demo-* folder left."""
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the child's temporary folders, where we can see them
    p = subprocess.Popen([sys.executable, "-m", "streamer.cli", "demo", "--checkpoint", "debug", "--engine", "eager",
                          "--steps", "1", "--port", str(port)], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         # a shell's background job ignores SIGINT and its children inherit that:
                         # give the child a terminal's default
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        def up() -> bool:
            assert p.poll() is None, p.communicate()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, "the demo to serve")
        tab = Client(f"http://127.0.0.1:{port}/", download_files=False, verbose=False)
        stream = tab.submit(PROMPT, 0, api_name="/start")
        wait_for(lambda: segments(stream) >= 1, "the first segment")
        assert [f for f in tmp_path.glob("livereel-demo-*/*") if f.is_dir()]  # a stream's segments folder
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == code, err
    assert "Traceback" not in err and "terminate called" not in err, err
    assert err.strip().splitlines()[-1] == f"livereel demo: {word}"
    assert list(tmp_path.glob("livereel-demo-*")) == []
