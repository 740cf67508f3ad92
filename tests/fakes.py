"""Stand-ins for the two ends of a stream, for tests of the streaming mechanics.

`FakeGenerator` has the surface of model.generate.Generator (set_prompt, set_camera,
reset staged and applied at the start of `next_frames`, `applied` listing them), no
network: each frame is one flat colour derived from the prompt, with the frame index
in the blue channel.

`Client` is a browser stand-in (aiortc, in-process): recvonly video plus the `control`
data channel. Run as a program (`python tests/fakes.py PORT [--flood RATE SECONDS]`)
it is a client in a process of its own, to be killed or to flood a server.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.message import Message

import numpy as np
import pytest_asyncio
import websockets
from aiortc import RTCSessionDescription
from prometheus_client.parser import text_string_to_metric_families

from bench.live import recvonly_peer
from model.sampling import Sampling
from streamer.server import Server
from streamer.session import StreamInfo

WAIT = 60.0
"""Seconds before something that should happen soon is called a failure: a hang guard,
generous for a machine busy with other work (never a timing assert)."""


@dataclass(frozen=True)
class FakeConfig:
    name: str = "fake"
    fps: int = 16
    image_size: int = 16
    frames_per_chunk: int = 4


def prompt_colour(text: str) -> tuple[int, int]:
    """The (red, green) of every frame made under `text`."""
    digest = hashlib.sha256(text.encode()).digest()
    return digest[0], digest[1]


class FakeGenerator:
    def __init__(
        self,
        config: FakeConfig = FakeConfig(),
        *,
        seed: int = 0,
        prompt: str = "a fake world",
        delay: float = 0.0,
        fail_on: str | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        """`gate`: each `next_frames` waits for it to be set (at most WAIT seconds), so that
        a test can act while a step is under way."""
        self.config = config
        self.seed = seed
        self.prompt = prompt
        self.delay = delay
        self.fail_on = fail_on
        self.gate = gate
        self.frame_index = 0
        self.chunk_index = 0
        self.camera = ((0.0, 0.0), 0.0)
        self.applied: list[dict] = []
        self.calls = 0
        self.running = threading.Event()  # set while next_frames runs
        self._staged: dict[str, dict] = {}

    def set_prompt(self, text: str, transition: int = 0) -> None:
        self._staged["prompt"] = {"what": "prompt", "text": text, "transition": transition}

    def set_camera(self, pan: tuple[float, float] = (0.0, 0.0), zoom: float = 0.0) -> None:
        self._staged["camera"] = {"what": "camera", "pan": tuple(pan), "zoom": zoom}

    def reset(self, seed: int) -> None:
        self._staged["reset"] = {"what": "reset", "seed": seed}

    def next_frames(self) -> np.ndarray:
        self.running.set()
        try:
            self.applied = []
            for what, entry in self._staged.items():
                if what == "prompt":
                    self.prompt = entry["text"]
                elif what == "camera":
                    self.camera = (entry["pan"], entry["zoom"])
                else:
                    self.seed = entry["seed"]
                self.applied.append({**entry, "frame": self.frame_index})
            self._staged = {}
            if self.fail_on is not None and self.fail_on in self.prompt:
                raise RuntimeError(f"fake failure on prompt {self.prompt!r}")
            if self.delay:
                time.sleep(self.delay)
            if self.gate is not None and not self.gate.wait(WAIT):
                raise TimeoutError(f"the gate stayed shut for {WAIT} s")
            k, s = self.config.frames_per_chunk, self.config.image_size
            frames = np.empty((k, s, s, 3), np.uint8)
            frames[..., 0], frames[..., 1] = prompt_colour(self.prompt)
            frames[..., 2] = (np.arange(self.frame_index, self.frame_index + k) % 256)[:, None, None]
            self.frame_index += k
            self.chunk_index += 1
            self.calls += 1
            return frames
        finally:
            self.running.clear()


def fake_info(config: FakeConfig = FakeConfig(), steps: int = 1) -> StreamInfo:
    return StreamInfo(
        model=config.name,
        fps=config.fps,
        size=config.image_size,
        frames_per_chunk=config.frames_per_chunk,
        steps=steps,
    )


# ---------------------------------------------------------------- a browser


class Client:
    """A browser stand-in: recvonly video + the `control` data channel."""

    def __init__(self, port: int, *, query: str = "", headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/ws{query}"
        self.headers = headers
        self.messages: asyncio.Queue[dict] = asyncio.Queue()
        self.seen: list[dict] = []
        self.frames: deque = deque(maxlen=64)
        self.frame_count = 0
        self._reader: asyncio.Task | None = None
        self.ws = None
        self.session = None
        self.new_peer()

    def new_peer(self) -> None:
        """A new peer connection, as the page makes one to reconnect (the old one's track
        reader stops; the caller closes the old connection)."""
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        self.pc, self.channel = recvonly_peer(self._on_message, lambda track: self._read(track))

    async def offer(self, **fields) -> dict:
        """Send the offer; returns the server's first reply (answer, error, or in cluster
        mode "queued")."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.ws = await websockets.connect(self.url, additional_headers=self.headers)
        await self.ws.send(json.dumps({"type": "offer", "sdp": self.pc.localDescription.sdp, **fields}))
        return await self.reply()

    async def reply(self, wait: float = WAIT) -> dict:
        """The next message on the signaling socket (an answer is taken)."""
        reply = json.loads(await asyncio.wait_for(self.ws.recv(), wait))
        if reply["type"] == "answer":
            self.session = reply["session"]
            await self.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        return reply

    async def open(self, **fields) -> Client:
        reply = await self.offer(**fields)
        assert reply["type"] == "answer", reply
        await self.expect("hello")
        return self

    def send(self, message: dict | str | bytes) -> None:
        self.channel.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    async def expect(self, kind: str, **match) -> dict:
        """The next message of this type (and these fields) on the channel."""

        async def find() -> dict:
            while True:
                msg = await self.messages.get()
                if msg["type"] == kind and all(msg.get(k) == v for k, v in match.items()):
                    return msg

        return await asyncio.wait_for(find(), WAIT)

    async def frames_after(self, n: int) -> None:
        target = self.frame_count + n
        await until(lambda: self.frame_count >= target, f"{n} more frames")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.pc.close()
        if self.ws is not None:
            await self.ws.close()

    def _on_message(self, raw: str) -> None:
        msg = json.loads(raw)
        self.seen.append(msg)
        self.messages.put_nowait(msg)

    def _read(self, track) -> None:
        async def read() -> None:
            while True:
                frame = await track.recv()
                self.frames.append(frame)
                self.frame_count += 1

        self._reader = asyncio.ensure_future(read())


async def until(condition, what: str, wait: float = WAIT) -> None:
    for _ in range(int(wait / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {wait} s: {what}")


class Played:
    """Every new (not held) frame the sessions' tracks play, by stream index, recorded by
    patching `Session.next_frame`; `await played.new_frames(n)` waits for n more (repeats
    do not count: a loaded machine repeats many)."""

    def __init__(self, monkeypatch) -> None:
        from streamer.session import Session

        self.frames: dict = {}
        original = Session.next_frame

        def record(session):
            out = original(session)
            if out is not None and not out.held:
                self.frames[out.index] = out.frame.copy()
            return out

        monkeypatch.setattr(Session, "next_frame", record)

    async def new_frames(self, n: int) -> None:
        target = len(self.frames) + n
        await until(lambda: len(self.frames) >= target, f"{n} more new frames played")


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    result = response.status, response.headers, response.read()  # (header names in any case)
    conn.close()
    return result


async def fetch(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    return await asyncio.to_thread(get, port, path, headers)


async def metric(port: int, name: str, query: str = "", **labels) -> float:
    _, _, body = await fetch(port, "/metrics" + query)
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# ---------------------------------------------------------------- fixtures


def real_server(model, sampling: Sampling = Sampling(steps=2, warm_start=0), **kwargs) -> Server:
    """A Server running the real Generator on `model` (the debug one in tests) with
    `sampling`, sessions batched as `livereel serve` batches them."""
    from model.generate import next_frames_batch

    return Server(lambda seed: sampling.generator(model, seed=seed), StreamInfo.of(model, sampling),
                  step_many=next_frames_batch, **kwargs)


@pytest_asyncio.fixture
async def started():
    """`await started(server)` starts it on a free port (returned); stopped after the test."""
    servers = []

    async def start(server: Server) -> int:
        servers.append(server)
        return await server.start(0)

    yield start
    for server in servers:
        await server.stop()


@pytest_asyncio.fixture
async def clients():
    """`clients(port, **kwargs)` makes a Client, closed after the test."""
    made: list[Client] = []

    def make(port: int, **kwargs) -> Client:
        made.append(Client(port, **kwargs))
        return made[-1]

    yield make
    for c in made:
        await c.close()


# ---------------------------------------------------------------- as a program


async def _run(port: int, flood: tuple[float, float] | None) -> None:
    """Open a session and print it; then stream until killed, or flood the control
    channel at RATE messages a second for SECONDS and print what came back."""
    client = Client(port)
    await client.open()
    print(json.dumps({"session": client.session}), flush=True)
    if flood is None:
        await asyncio.Event().wait()
    rate, seconds = flood
    sent, start = 0, time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        for _ in range(int(rate * elapsed) - sent):
            client.send({"type": "camera", "pan": [0.1 * (sent % 10), 0.0], "zoom": 0.0})
            sent += 1
        await asyncio.sleep(0.005)
    await asyncio.sleep(1.0)  # the last replies
    errors = [m for m in client.seen if m["type"] == "error"]
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - start, "errors": errors}), flush=True)
    await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a livereel client in its own process")
    parser.add_argument("port", type=int)
    parser.add_argument("--flood", type=float, nargs=2, metavar=("RATE", "SECONDS"))
    cli = parser.parse_args()
    sys.exit(asyncio.run(_run(cli.port, cli.flood)))


def writing(folder) -> bool:
    """Whether a video is being written in `folder`: its temporary file holds frames."""
    for part in folder.glob(".long.mp4.*.part"):
        try:
            if part.stat().st_size > 0:
                return True
        except FileNotFoundError:  # the writer ended meanwhile
            pass
    return False
