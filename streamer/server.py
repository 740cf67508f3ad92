"""`livereel serve`: one HTTP + WebSocket server (websockets) for the browser client.

    GET /                         the client (files under web/)
    GET /ws                       signaling WebSocket: offer -> answer; closing it ends the session
    GET /config.json              ICE servers for the browser, the server's default prompt
    GET /sessions/ID/log.jsonl    a session's event log (live sessions and the last few ended)
    GET /healthz                  {"status": "ok", ...}
    GET /metrics                  Prometheus text

Each offer makes a Session (its own Generator), a Peer (aiortc) and a place in the
device's Scheduler. The server binds 127.0.0.1 unless told otherwise; there it keeps
only loopback ICE candidates and needs no STUN. For other networks pass
`--host 0.0.0.0 --ice-server stun:HOST:PORT` (and a TURN server where peers sit
behind NATs); the browser gets the same list from /config.json.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import http
import ipaddress
import json
import logging
import mimetypes
import secrets
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from aiortc import RTCIceServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streamer.controls import MAX_PROMPT_CHARS, MAX_SIGNAL_BYTES, Answer, Error, ProtocolError, parse_signal
from streamer.scheduler import Scheduler, SchedulerFull
from streamer.session import Session, StreamInfo
from streamer.webrtc import Peer, ice_server_json, parse_ice_server

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
DEFAULT_PROMPT = "a red ball bouncing over a meadow by day under clear skies"  # the world's grammar
OFFER_TIMEOUT = 30.0
"""Seconds a new socket has to send its offer."""
PING_SECONDS = 5.0
"""WebSocket keepalive: a peer that vanishes without closing is dropped in 2x this."""
ENDED_LOGS_KEPT = 32
"""Ended sessions whose logs stay downloadable."""
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self, sessions: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("livereel_sessions", "Sessions streaming now", registry=r).set_function(sessions)
        self.sessions_started = Counter("livereel_sessions_started", "Sessions started", registry=r)
        self.sessions_rejected = Counter(
            "livereel_sessions_rejected", "Offers refused", ["reason"], registry=r
        )
        self.session_errors = Counter("livereel_session_errors", "Sessions ended by a model error", registry=r)
        self.frames_sent = Counter("livereel_frames_sent", "Video frames sent, held ones included", registry=r)
        self.frames_held = Counter(
            "livereel_frames_held", "Frames repeated because generation was late", registry=r
        )
        self.chunk_seconds = Histogram(
            "livereel_chunk_seconds",
            "Generation time of one chunk",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 10),
            registry=r,
        )
        self.control_seconds = Histogram(
            "livereel_control_latency_seconds",
            "From a prompt, camera or reset control's arrival to the first frame made under it being sent",
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10),
            registry=r,
        )

    def text(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class _Live:
    session: Session
    peer: Peer
    answer: str


class Server:
    """Sessions over WebRTC for one model on one device.

    `make_generator(seed)` builds a Generator for a new session (in a worker thread,
    as it may allocate caches); `info` describes the stream it makes.
    """

    def __init__(
        self,
        make_generator: Callable[[int], Any],
        info: StreamInfo,
        *,
        host: str = "127.0.0.1",
        max_sessions: int = 2,
        record_dir: Path | None = None,
        ice_servers: list[RTCIceServer] | None = None,
        default_prompt: str = DEFAULT_PROMPT,
        web_root: Path = WEB_ROOT,
    ) -> None:
        self.make_generator = make_generator
        self.info = info
        self.host = host
        self.record_dir = record_dir
        self.ice_servers = ice_servers or []
        self.default_prompt = default_prompt
        self.web_root = web_root.resolve()
        self.scheduler = Scheduler(max_sessions=max_sessions, on_chunk=self._on_chunk)
        self.metrics = Metrics(lambda: len(self.scheduler))
        self.live: dict[str, _Live] = {}
        self._ended_logs: OrderedDict[str, str] = OrderedDict()
        self._server = None

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    async def start(self, port: int) -> int:
        """Listen on `port` (0: any free one); returns the port."""
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
        self.scheduler.start()
        self._server = await serve(
            self._signaling,
            self.host,
            port,
            process_request=self._http,
            max_size=4 * MAX_SIGNAL_BYTES,  # larger ones get our own "too_large" reply
            ping_interval=PING_SECONDS,
            ping_timeout=PING_SECONDS,
        )
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.to_thread(self.scheduler.stop)

    # ------------------------------------------------------------ signaling

    async def _signaling(self, ws: ServerConnection) -> None:
        try:
            raw = await asyncio.wait_for(ws.recv(), OFFER_TIMEOUT)
        except (TimeoutError, ConnectionClosed):
            return
        try:
            offer = parse_signal(raw)
        except ProtocolError as e:
            await self._refuse(ws, e.reply)
            return
        live = await self._open(ws, offer.sdp, offer.prompt or self.default_prompt, offer.seed)
        if live is None:
            return
        try:
            await ws.send(Answer(sdp=live.answer, session=live.session.id).to_json())
            async for _ in ws:
                await ws.send(
                    Error(code="unexpected", detail="one offer per socket; controls go on the data channel").to_json()
                )
        except ConnectionClosed:
            pass
        finally:
            await self._close(live)

    async def _open(self, ws: ServerConnection, sdp: str, prompt: str, seed: int | None) -> _Live | None:
        """A running session answering `sdp`, or None after replying with an error."""
        if self.scheduler.full:
            return await self._refuse(ws, _server_full(self.scheduler.max_sessions))
        seed = secrets.randbelow(2**32) if seed is None else seed
        generator = await asyncio.to_thread(self.make_generator, seed)
        session = Session(generator, self.info, prompt=prompt, record_dir=self.record_dir)
        peer = Peer(
            session,
            ice_servers=self.ice_servers,
            loopback_only=self.loopback,
            metrics=self.metrics,
            wake=self.scheduler.wake,
            on_end=lambda reason: self._end(ws, session, reason),
        )
        try:
            answer = await peer.answer(sdp)
            self.scheduler.add(session, on_error=lambda e: self._failed(ws, peer, e))
        except BaseException as e:
            await peer.close()
            session.close()
            if isinstance(e, ProtocolError):
                return await self._refuse(ws, e.reply)
            if isinstance(e, SchedulerFull):  # another offer took the last place meanwhile
                return await self._refuse(ws, _server_full(self.scheduler.max_sessions))
            raise
        live = self.live[session.id] = _Live(session, peer, answer)
        self.metrics.sessions_started.inc()
        log.info("session %s: started (seed %d, %d of %d)", session.id, seed, len(self.live), self.scheduler.max_sessions)
        return live

    async def _refuse(self, ws: ServerConnection, reply: Error) -> None:
        self.metrics.sessions_rejected.labels(reply.code).inc()
        log.info("refused an offer: %s", reply.detail)
        try:
            await ws.send(reply.to_json())
            await ws.close(1013 if reply.code == "server_full" else 1008, reply.code)  # try again later / policy
        except ConnectionClosed:
            pass

    async def _close(self, live: _Live) -> None:
        session = live.session
        self.scheduler.remove(session)
        self.live.pop(session.id, None)
        await live.peer.close()
        session.close()
        self._ended_logs[session.id] = session.log.text()
        while len(self._ended_logs) > ENDED_LOGS_KEPT:
            self._ended_logs.popitem(last=False)
        log.info("session %s: ended after %d frames", session.id, session.frames_sent)

    def _end(self, ws: ServerConnection, session: Session, reason: str) -> None:
        log.info("session %s: %s; closing", session.id, reason)
        asyncio.ensure_future(ws.close(1000, reason))

    def _failed(self, ws: ServerConnection, peer: Peer, error: BaseException) -> None:
        self.metrics.session_errors.inc()
        reply = Error(code="generation_failed", detail=f"the model failed, this session is over: {error}"[:500])
        peer.send(reply)

        async def close() -> None:
            try:
                await ws.send(reply.to_json())
            except ConnectionClosed:
                pass
            await ws.close(1011, "generation failed")

        asyncio.ensure_future(close())

    def _on_chunk(self, session: Session) -> None:
        self.metrics.chunk_seconds.observe(session.chunk_seconds)

    # ------------------------------------------------------------ HTTP

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/ws":
            return None  # the WebSocket handshake goes on
        if path == "/healthz":
            return _response(
                200,
                json.dumps({"status": "ok", "sessions": len(self.scheduler), "max_sessions": self.scheduler.max_sessions}),
                "application/json",
            )
        if path == "/metrics":
            return _response(200, self.metrics.text(), CONTENT_TYPE_LATEST)
        if path == "/config.json":
            return _response(
                200,
                json.dumps(
                    {
                        "iceServers": [ice_server_json(s) for s in self.ice_servers],
                        "prompt": self.default_prompt,
                        "model": self.info.model,
                    }
                ),
                "application/json",
            )
        if path.startswith("/sessions/") and path.endswith("/log.jsonl"):
            return self._log(path.removeprefix("/sessions/").removesuffix("/log.jsonl"))
        return self._static(path)

    def _log(self, session_id: str) -> Response:
        live = self.live.get(session_id)
        text = live.session.log.text() if live is not None else self._ended_logs.get(session_id)
        if text is None:
            return _response(404, "no such session\n", "text/plain; charset=utf-8")
        headers = [("Content-Disposition", f'attachment; filename="livereel-{session_id}.jsonl"')]
        return _response(200, text, "application/x-ndjson", headers)

    def _static(self, path: str) -> Response:
        relative = unquote(path).lstrip("/") or "index.html"
        target = None if "\0" in relative else (self.web_root / relative).resolve()
        if target is None or not target.is_relative_to(self.web_root) or not target.is_file():
            return _response(404, "not found\n", "text/plain; charset=utf-8")
        kind = STATIC_TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if kind.startswith("text/"):
            kind += "; charset=utf-8"
        return _response(200, target.read_bytes(), kind, [("Cache-Control", "no-cache")])


def _response(status: int, body: str | bytes, content_type: str, extra: list[tuple[str, str]] = ()) -> Response:
    body = body.encode() if isinstance(body, str) else body
    status = http.HTTPStatus(status)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("X-Content-Type-Options", "nosniff"),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _server_full(limit: int) -> Error:
    return Error(code="server_full", detail=f"server full: all {limit} sessions are in use; try again later")


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="port for HTTP and the signaling WebSocket")
    parser.add_argument(
        "--checkpoint", default="default", help='"default" (shipped model), "debug" (tiny, random) or a path'
    )
    parser.add_argument("--max-sessions", type=int, default=2, help="streams served at once; more are refused")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per chunk")
    parser.add_argument("--record-dir", type=Path, help="write each session's event log here as ID.jsonl")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt of a session whose offer names none")
    parser.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN server for both sides, repeatable: stun:HOST:PORT or turn:USER:PASS@HOST:PORT",
    )


def main(args: argparse.Namespace) -> int:
    from model import CheckpointError, load_model
    from model.generate import Generator

    try:
        ice_servers = [parse_ice_server(url) for url in args.ice_server]
    except ValueError as e:
        log.error("--ice-server: %s", e)
        return 2
    if args.max_sessions < 1 or args.steps < 1:
        log.error("--max-sessions and --steps must be at least 1")
        return 2
    if not 1 <= len(args.prompt) <= MAX_PROMPT_CHARS:
        log.error("--prompt must have 1 to %d characters", MAX_PROMPT_CHARS)
        return 2
    try:
        model = load_model(args.checkpoint)
    except CheckpointError as e:
        log.error("cannot load checkpoint %r: %s", args.checkpoint, e)
        return 1
    # The first Generator and chunk of a process pay one-off costs (lazy init, kernel
    # selection): pay them now, not in the first viewer's wait, and fail before serving.
    start = time.perf_counter()
    Generator(model, seed=0, steps=args.steps).next_frames()
    log.info("model %r ready; warm-up chunk took %.2f s", args.checkpoint, time.perf_counter() - start)
    for noisy in ("websockets", "aioice", "aiortc"):  # a line per HTTP request / ICE check
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = model.config
    info = StreamInfo(
        model=cfg.name, fps=cfg.fps, size=cfg.image_size, frames_per_chunk=cfg.frames_per_chunk, steps=args.steps
    )
    server = Server(
        lambda seed: Generator(model, seed=seed, steps=args.steps),
        info,
        host=args.host,
        max_sessions=args.max_sessions,
        record_dir=args.record_dir,
        ice_servers=ice_servers,
        default_prompt=args.prompt,
    )
    return asyncio.run(_serve(server, args.port))


async def _serve(server: Server, port: int) -> int:
    try:
        port = await server.start(port)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", server.host, port, e)
        return 1
    host = f"[{server.host}]" if ":" in server.host else server.host
    log.info(
        "serving %s (%d px, %d fps) at http://%s:%d/ (up to %d sessions)",
        server.info.model, server.info.size, server.info.fps, host, port, server.scheduler.max_sessions,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    return 0
