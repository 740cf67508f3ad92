"""Live measurements: `streamer.server.Server` on this process's event loop and an
in-process aiortc client (recvonly video + the `control` data channel, like the
browser and like the tests' client), over loopback.

- time to first frame: offer sent -> first decoded video frame at the client (the
  server builds the session's Generator and its first chunk; ICE and DTLS on loopback);
- control latency: a prompt or camera message sent -> the server's `applied` message
  for it, which the server sends when the first frame made under the control plays,
  i.e. with that frame (so it includes the frames queued ahead of playback);
- live fps at the client and the share of held frames (generation late).

The client decodes VP8 in this process too: its CPU is not the server's in real life.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from bench.timing import summary
from model.checkpoint import LiveReel
from model.sampling import Sampling

log = logging.getLogger(__name__)

WAIT = 60.0


def recvonly_peer(on_message, on_track) -> tuple[RTCPeerConnection, Any]:
    """A loopback peer connection as the page makes one: video received only, and the
    `control` data channel (its messages to `on_message`, the video track to `on_track`)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("control")
    channel.on("message", on_message)
    pc.on("track", on_track)
    return pc, channel


class Client:
    """A browser stand-in that timestamps what it receives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: asyncio.Queue[tuple[float, dict]] = asyncio.Queue()
        self.frame_times: list[float] = []
        self.first_frame = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self.ws = None
        self.new_peer()

    def new_peer(self) -> None:
        """A new peer connection (recvonly video, the `control` channel); the old one's
        track reader stops. The caller closes the old connection."""
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        self.pc, self.channel = recvonly_peer(
            lambda raw: self.messages.put_nowait((time.perf_counter(), json.loads(raw))), self._read)

    async def offer(self, **fields) -> float:
        """Send the offer; returns when it was sent (perf_counter)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/ws")
        sent = time.perf_counter()
        await self.ws.send(json.dumps({"type": "offer", "sdp": self.pc.localDescription.sdp, **fields}))
        reply = json.loads(await asyncio.wait_for(self.ws.recv(), WAIT))
        if reply["type"] != "answer":
            raise RuntimeError(f"the server refused the offer: {reply}")
        await self.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        return sent

    def send(self, message: dict) -> float:
        sent = time.perf_counter()
        self.channel.send(json.dumps(message))
        return sent

    async def expect(self, kind: str, **match) -> tuple[float, dict]:
        async def find():
            while True:
                at, msg = await self.messages.get()
                if msg["type"] == kind and all(msg.get(k) == v for k, v in match.items()):
                    return at, msg

        return await asyncio.wait_for(find(), WAIT)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.pc.close()
        if self.ws is not None:
            await self.ws.close()

    def _read(self, track) -> None:
        async def read() -> None:
            while True:
                await track.recv()
                self.frame_times.append(time.perf_counter())
                self.first_frame.set()

        self._reader = asyncio.ensure_future(read())


async def _measure(model: LiveReel, sampling: Sampling, ttff_reps: int, control_reps: int, seconds: float) -> dict:
    from model.generate import next_frames_batch
    from streamer.server import Server
    from streamer.session import StreamInfo

    cfg = model.config
    info = StreamInfo.of(model, sampling)
    server = Server(lambda seed: sampling.generator(model, seed), info, max_sessions=4,
                    step_many=next_frames_batch)
    port = await server.start(0)
    chunk = cfg.frames_per_chunk / cfg.fps
    out: dict = {}
    try:
        ttff = []
        for _ in range(ttff_reps):
            client = Client(port)
            sent = await client.offer(seed=0)
            await asyncio.wait_for(client.first_frame.wait(), WAIT)
            ttff.append(client.frame_times[0] - sent)
            await client.close()
            await _until(lambda: not server.live)  # each measurement starts on an idle server
        out["ttff_s"] = summary(ttff)

        client = Client(port)
        await client.offer(seed=1)
        await asyncio.wait_for(client.first_frame.wait(), WAIT)
        await asyncio.sleep(1.0)  # past the start-up transient
        rng = random.Random(0)
        for what in ("prompt", "camera"):
            lat = []
            for i in range(control_reps):
                await asyncio.sleep(rng.uniform(0, chunk))  # land anywhere in the chunk cycle
                if what == "prompt":
                    text = f"{'a blue cube in the desert' if i % 2 else 'a red ball over a meadow'} {i}"
                    sent = client.send({"type": "prompt", "text": text})
                    at, _ = await client.expect("applied", what="prompt", text=text)
                else:
                    pan = [0.5 if i % 2 else -0.5, round(0.01 * i, 2)]
                    sent = client.send({"type": "camera", "pan": pan, "zoom": 0.0})
                    at, _ = await client.expect("applied", what="camera", pan=pan)
                lat.append(at - sent)
            out[f"{what}_latency_s"] = summary(lat)
        # Steady playback: frames received and held over a window.
        n0, start = len(client.frame_times), time.perf_counter()
        stats0 = await _stats(client)
        await asyncio.sleep(seconds)
        stats1 = await _stats(client)
        elapsed = time.perf_counter() - start
        out["client_fps"] = (len(client.frame_times) - n0) / elapsed
        sent_frames = stats1["sent"] - stats0["sent"]
        out["held_fraction"] = (stats1["held"] - stats0["held"]) / max(sent_frames, 1)
        out["server_chunk_ms"] = stats1["chunk_ms"]
        await client.close()
    finally:
        await server.stop()
    return out


async def _until(condition, timeout: float = WAIT) -> None:
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError("the server did not end the session")
        await asyncio.sleep(0.02)


async def _stats(client: Client) -> dict:
    """The next `stats` message from now on (older ones queued meanwhile are dropped)."""
    while not client.messages.empty():
        client.messages.get_nowait()
    return (await client.expect("stats"))[1]


def measure(model: LiveReel, sampling: Sampling, ttff_reps: int, control_reps: int, seconds: float) -> dict:
    """Run the live measurements on a fresh event loop; see the module docstring."""
    for noisy in ("websockets", "aioice", "aiortc", "streamer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return asyncio.run(_measure(model, sampling, ttff_reps, control_reps, seconds))
