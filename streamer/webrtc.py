"""The WebRTC side of a session: the video track, the `control` data channel, and the
peer connection that carries them (aiortc).

The track encodes VP8 itself (PyAV's libvpx) and hands aiortc ready packets: this sets
the bitrate for the model's small frames (aiortc's own encoder starts at 500 kbps and
follows the receiver's estimate between 250 kbps and 1.5 Mbps, far more than 128x128
needs) and keeps the colours exact (H.264 in Chromium shifts them). The answer offers
VP8 only; every WebRTC browser decodes it. A keyframe every two seconds stands in for
keyframe requests, which aiortc cannot pass to a pre-encoded track.

A peer that goes away without a word (its process killed, its network gone) is noticed
by silence: every receiver sends RTCP reports and data-channel acknowledgements, so
nothing received for SILENCE_SECONDS ends the session. (A text message on the channel
that is not UTF-8 makes aiortc drop the connection before the Peer sees it; browsers
never send one, and only the sender's session ends.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING
from urllib.parse import unquote

import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError

from streamer.controls import Hello, Message, ProtocolError, RateLimiter, parse_control
from streamer.session import Played, Session

if TYPE_CHECKING:
    from streamer.server import Metrics

log = logging.getLogger(__name__)

CLOCK_RATE = 90_000
TIME_BASE = Fraction(1, CLOCK_RATE)
BITS_PER_PIXEL = 0.8
"""VP8 at 0.8 bit per pixel is visually clean for small synthetic frames:
about 210 kbps for 128x128 at 16 fps."""
KEYFRAME_SECONDS = 2
STATS_INTERVAL = 1.0
CONNECT_SECONDS = 30.0
"""A peer whose media connection is not up this long after the answer is given up."""
SILENCE_SECONDS = 5.0
"""A peer that has sent nothing (no RTCP report, no data channel ack) for this long is
gone (network lost, process killed) and its session ends. Receivers send RTCP at least
once a second, and acknowledge the stats message sent every STATS_INTERVAL."""
MAX_BUFFERED_BYTES = 256 * 1024
"""Server messages for a peer that does not take them are dropped past this."""


def video_bitrate(size: int | tuple[int, int], fps: int) -> int:
    """Target bits per second for frames of `size` (height, width; an int: square) at `fps`."""
    h, w = (size, size) if isinstance(size, int) else size
    return int(min(max(BITS_PER_PIXEL * h * w * fps, 100_000), 2_000_000))


# ---------------------------------------------------------------- media


class Vp8Encoder:
    """RGB frames -> VP8 packets with the given 90 kHz pts, constant bitrate, real time."""

    def __init__(self, size: int | tuple[int, int], fps: int) -> None:
        """`size`: (height, width), or an int for square frames."""
        bitrate = video_bitrate(size, fps)
        codec = av.CodecContext.create("libvpx", "w")
        codec.height, codec.width = (size, size) if isinstance(size, int) else size
        codec.pix_fmt = "yuv420p"
        codec.time_base = TIME_BASE
        codec.framerate = Fraction(fps)
        codec.bit_rate = bitrate
        codec.gop_size = KEYFRAME_SECONDS * fps
        codec.thread_count = 1
        codec.options = {
            "deadline": "realtime",
            "cpu-used": "8",
            "lag-in-frames": "0",  # one packet out per frame in
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),  # one second of buffer
            "undershoot-pct": "100",
            "overshoot-pct": "15",
        }
        self.codec = codec

    def encode(self, rgb: np.ndarray, pts: int) -> av.Packet:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts, frame.time_base = pts, TIME_BASE
        packet = av.Packet(b"".join(bytes(p) for p in self.codec.encode(frame)))
        packet.pts, packet.time_base = pts, TIME_BASE
        return packet


class SessionTrack(VideoStreamTrack):
    """A session's frames, paced by the wall clock at the model's fps.

    Each `recv` waits for the next tick, takes the session's next frame (or the
    current one again, when generation is late or the stream is paused) and returns
    it encoded, with pts rising by 90000/fps a tick. A tick missed because the loop
    was busy is skipped, not made up in a burst.
    """

    def __init__(self, session: Session, on_played: Callable[[Played], None]) -> None:
        super().__init__()
        self.session = session
        self._on_played = on_played
        self._fps = session.info.fps
        self._encoder = Vp8Encoder(session.info.frame_size, self._fps)
        self._start: float | None = None
        self._tick = 0

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        await self.session.ready.wait()
        while True:
            pts = await self._next_tick()
            played = self.session.next_frame()
            if played is not None:  # None only if a reset emptied the queue before the first frame
                break
        self._on_played(played)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._encoder.encode, played.frame, pts)

    async def _next_tick(self) -> int:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._tick += 1
            due = self._start + self._tick / self._fps
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 2 / self._fps:
                self._tick = int((now - self._start) * self._fps)
        return round(self._tick * CLOCK_RATE / self._fps)


# ---------------------------------------------------------------- connection


class Peer:
    """One browser: its peer connection, track and control channel, bound to a session.

    `on_end(reason)` runs once when the connection fails, closes or falls silent;
    `wake()` when a control may have made the session runnable again (resume, reset);
    `on_frame(held)` for each frame the track plays (`held`: a repeat, generation was
    late). Control messages are rate-limited per peer (`limiter`).
    """

    def __init__(
        self,
        session: Session,
        *,
        ice_servers: list[RTCIceServer],
        loopback_only: bool,
        metrics: Metrics,
        wake: Callable[[], None],
        on_end: Callable[[str], None],
        limiter: RateLimiter | None = None,
        on_frame: Callable[[bool], None] | None = None,
    ) -> None:
        self.session = session
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))
        self.track = SessionTrack(session, self._on_played)
        self.channel: RTCDataChannel | None = None
        self._loopback_only = loopback_only
        self._metrics = metrics
        self._wake = wake
        self._on_end = on_end
        self._on_frame = on_frame
        self._limiter = limiter or RateLimiter()
        self._ended = False
        self._watch_task: asyncio.Task | None = None
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)

    async def answer(self, offer_sdp: str) -> str:
        """The SDP answer to a browser's offer; raises `ProtocolError` ("bad_offer")."""
        if self._loopback_only:
            offer_sdp = keep_loopback_candidates(offer_sdp)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            video = [t for t in self.pc.getTransceivers() if t.kind == "video"]
            if not video:
                raise ProtocolError("bad_offer", "the offer has no video (add a recvonly video transceiver)")
            self.pc.addTrack(self.track)  # takes the offered video transceiver
            vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in ("video/VP8", "video/rtx")]
            video[0].setCodecPreferences(vp8)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except ProtocolError:
            raise
        except Exception as e:  # aiortc raises ValueError, InvalidAccessError, ... for offers it cannot use
            raise ProtocolError("bad_offer", f"cannot answer this SDP offer: {type(e).__name__}: {e}") from None
        if "VP8" not in self.pc.localDescription.sdp:
            raise ProtocolError("bad_offer", "the offer does not accept VP8 video")
        self._watch_task = asyncio.ensure_future(self._watch())
        return self.pc.localDescription.sdp

    def send(self, msg: Message) -> None:
        """Send on the control channel if it is open and the peer keeps up (dropped otherwise)."""
        channel = self.channel
        if channel is not None and channel.readyState == "open" and channel.bufferedAmount < MAX_BUFFERED_BYTES:
            channel.send(msg.to_json())

    async def close(self) -> None:
        self._ended = True
        if self._watch_task is not None:
            self._watch_task.cancel()
        self.track.stop()
        await self.pc.close()

    # ------------------------------------------------------------ callbacks

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != "control" or self.channel is not None:
            channel.close()
            return
        self.channel = channel
        channel.on("message", self._on_message)
        info = self.session.info
        self.send(
            Hello(
                session=self.session.id,
                model=info.model,
                fps=info.fps,
                size=info.size,
                width=info.width,
                frames_per_chunk=info.frames_per_chunk,
                steps=info.steps,
                prompt=self.session.prompt,
                seed=self.session.generator.seed,
                camera=info.camera,
                camera_note=info.camera_note,
                vocabulary=info.vocabulary,
                words=info.explain(self.session.prompt),
                reads=info.reads(self.session.prompt),
            )
        )

    def _on_message(self, raw: str | bytes) -> None:
        if not self._limiter.admit():  # before parsing: a flood costs as little as can be
            self._metrics.controls.labels("rate_limited").inc()
            notice = self._limiter.notice()
            if notice is not None:
                log.info("session %s: %s", self.session.id, notice.detail)
                self.send(notice)
            return
        try:
            msg = parse_control(raw)
        except ProtocolError as e:
            self._metrics.controls.labels("invalid").inc()
            log.info("session %s: rejected a control message: %s", self.session.id, e)
            self.send(e.reply)
            return
        self._metrics.controls.labels("accepted").inc()
        applied = self.session.control(msg)
        if applied is not None:
            self.send(applied)
        self._wake()

    def _on_played(self, played: Played) -> None:
        self._metrics.frames_sent.inc()
        if played.held:
            self._metrics.frames_held.inc()
        if self._on_frame is not None:
            self._on_frame(played.held)
        for applied, seconds in played.applied:
            self._metrics.control_seconds.observe(seconds)
            self.send(applied)

    async def _watch(self) -> None:
        """Stats to the client every STATS_INTERVAL, and the end of a peer that vanished
        without closing anything: one that never connects, or falls silent."""
        start = heard_at = time.monotonic()
        heard = 0
        while not self._ended:
            await asyncio.sleep(STATS_INTERVAL)
            now = time.monotonic()
            if self.pc.connectionState != "connected":
                if self.pc.connectionState in ("new", "connecting") and now - start > CONNECT_SECONDS:
                    self._end(f"no media connection in {CONNECT_SECONDS:.0f} s")
                heard_at = now  # silence counts from the connection
                continue
            self.send(self.session.stats())
            received = await self._packets_received()
            if received != heard:
                heard, heard_at = received, now
            elif now - heard_at > SILENCE_SECONDS:
                self._end(f"peer silent for {now - heard_at:.0f} s")

    async def _packets_received(self) -> int:
        """Packets (media feedback, data channel) received from the peer so far."""
        report = await self.pc.getStats()
        return sum(s.packetsReceived for s in report.values() if s.type == "transport")

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.debug("session %s: connection %s", self.session.id, state)
        if state in ("failed", "closed"):
            self._end(f"peer connection {state}")

    def _end(self, reason: str) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(reason)


# ---------------------------------------------------------------- ICE


def keep_loopback_candidates(sdp: str) -> str:
    """The SDP without ICE candidates off the loopback interface: a server bound to
    127.0.0.1 talks only to this machine (and an mDNS name would cost a multicast
    lookup). "end-of-candidates" goes too, so that a peer with no loopback candidate
    (Chrome offers none unless started with --allow-loopback-in-peer-connection)
    still connects: its checks reach us and become peer-reflexive candidates."""
    lines = []
    for line in sdp.splitlines():
        if line.startswith("a=end-of-candidates"):
            continue
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) < 5 or not _is_loopback(fields[4]):
                continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_ice_server(url: str) -> RTCIceServer:
    """`stun:host:port`, or `turn:USER:PASSWORD@host:port[?transport=tcp]` (also
    `turns:`); credentials are percent-decoded."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in ("stun", "turn", "turns") or not rest:
        raise ValueError(f"not a stun:, turn: or turns: URL: {url!r}")
    if "@" not in rest:
        return RTCIceServer(urls=url)
    userinfo, _, where = rest.rpartition("@")
    user, sep, password = userinfo.partition(":")
    if not sep:
        raise ValueError(f"credentials must be USER:PASSWORD@ in {url!r}")
    return RTCIceServer(urls=f"{scheme}:{where}", username=unquote(user), credential=unquote(password))


def ice_server_json(server: RTCIceServer) -> dict[str, str]:
    """The RTCIceServer as the browser's `RTCPeerConnection` config takes it."""
    out = {"urls": server.urls}
    if server.username is not None:
        out["username"] = server.username
        out["credential"] = server.credential
    return out
