"""`livereel serve`: one HTTP + WebSocket server (Starlette on uvicorn) for the browser client.

    GET /                         the client (files under web/)                      open
    GET /ws                       signaling WebSocket: offer -> answer;              token, origin
                                  closing it ends the session
    GET /config.json              ICE servers for the browser, the default prompt    token
    GET /sessions/ID/log.jsonl    a session's event log (live and recently ended)    token
    GET /healthz                  {"status": "ok", ...}                              open
    GET /metrics                  Prometheus text                                    token

Each offer makes a Session (its own Generator), a Peer (aiortc) and a place in the
device's Scheduler. In cluster mode (`--ray`, streamer/cluster/) a `SessionBackend` makes
them on worker processes instead: this server then relays each offer and its answer,
keeps the signaling socket, and reports the workers' load. The server binds 127.0.0.1 unless told otherwise; there it keeps
only loopback ICE candidates and needs no STUN. For other networks pass
`--host 0.0.0.0 --ice-server stun:HOST:PORT` (and a TURN server where peers sit
behind NATs); the browser gets the same list from /config.json.

Access. With `--token` every path marked "token" needs it, as `?token=` (the page
passes on its own) or `Authorization: Bearer`. The signaling socket also checks the
Origin a browser sends: the page's own origin (the Host it asked for) or one given
with `--allow-origin`; this stops other web sites from opening sessions through a
visitor's browser. A client that sends no Origin is not a browser: it is let in when
a token is set (the token is the check) or the server is bound to loopback (only
local programs reach it), refused otherwise. Bound to loopback, the Host must be a
loopback name too, so a DNS-rebinding page cannot pass as same-origin. Session ids
are 128 random bits: a session's log can be fetched only by whoever knows its id,
and no path addresses another session's controls (they travel on its own peer
connection). These rules run as one middleware before any route (`_Guard`); the
files under web/ are Starlette's `StaticFiles`, which keeps every path inside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hmac
import ipaddress
import logging
import os
import secrets
import signal
import socket
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence
from urllib.parse import urlsplit

import uvicorn
from aiortc import RTCIceServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from model.sampling import add_sampling_arguments, sampling_from_args
from model.engine_choice import add_engine_argument, apply_engine
from model.wan.config import add_wan_arguments, wan_options_from_args
from streamer.controls import (
    CONTROL_RATE,
    MAX_SIGNAL_BYTES,
    Answer,
    Error,
    Offer,
    ProtocolError,
    Queued,
    RateLimiter,
    Reconnect,
    parse_signal,
)
from streamer.admission import Capacity, Decision
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
SHUTDOWN_SECONDS = 4.0
"""On SIGTERM/SIGINT: time to close every session before the process exits anyway
(within 5 s all told)."""
MIN_TOKEN_CHARS = 16
PRIVATE_PATHS = ("/ws", "/config.json", "/metrics")
"""Paths that need the token (with every path under /sessions/)."""
HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),  # the page's URL may hold the token
    ("X-Frame-Options", "DENY"),
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'",
    ),
    ("Cache-Control", "no-cache"),
    ("Connection", "close"),  # one request a connection: the page makes a handful, and no idle ones linger
]
"""Headers of every answer."""


class _WebFiles(StaticFiles):
    """web/ as StaticFiles serves it, JavaScript as text/javascript (what HTML names): the
    process-wide `mimetypes` table says otherwise on Python < 3.12, and Gradio's app sets
    application/javascript in it when it serves."""

    def file_response(self, full_path, *args, **kwargs) -> Response:
        response = super().file_response(full_path, *args, **kwargs)
        if str(full_path).endswith(".js"):
            response.headers["content-type"] = "text/javascript; charset=utf-8"
        return response


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self, sessions: Callable[[], int], capacity: Capacity) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("livereel_sessions", "Sessions streaming now", registry=r).set_function(sessions)
        Gauge("livereel_capacity_sessions", "Sessions this device streams in real time, as measured now",
              registry=r).set_function(lambda: capacity.sessions)
        Gauge("livereel_load_factor", "Chunk time under load / at start-up (1: as measured)",
              registry=r).set_function(lambda: capacity.load)
        self.sessions_started = Counter("livereel_sessions_started", "Sessions started", registry=r)
        self.sessions_rejected = Counter(
            "livereel_sessions_rejected", "Offers refused, by error code (server_full: the limit or the capacity)", ["reason"], registry=r
        )
        self.session_errors = Counter("livereel_session_errors", "Sessions ended by a model error", registry=r)
        self.controls = Counter(
            "livereel_control_messages",
            "Control messages received, by result: accepted, invalid or rate_limited (dropped unread)",
            ["result"],
            registry=r,
        )
        self.refused = Counter(
            "livereel_requests_refused", "HTTP requests refused: token, origin or host", ["reason"], registry=r
        )
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


@dataclass(frozen=True)
class Opened:
    """A session a backend started: its id and the SDP answer for the viewer."""

    session: str
    answer: str
    worker: str | None = None
    """Where it runs (cluster mode)."""


class SessionBackend(Protocol):
    """Sessions made somewhere else than this process (cluster mode: streamer/cluster/
    gateway.py). With one, the Server keeps the page, the access rules and the signaling
    socket, and relays each offer to `open` and the answer back; media and controls go
    between the viewer and wherever the session runs."""

    async def open(self, sdp: str, prompt: str, seed: int | None,
                   queued: Callable[[int, str], Any] | None = None) -> Opened | Error:
        """Start a session answering `sdp`, or say why not (code "server_full": refused for room).
        Where the offer waits in line for room, `await queued(position, reason)` tells its
        viewer (position 1: next), again as the line moves; cancelled, it leaves the line."""

    async def watch(self, session: str) -> dict:
        """The session's next notice for its viewer: {"type": "ended", "reason": ...}, or
        {"type": "reconnect", "detail": ...} (it moved: its viewer is to offer again)."""

    async def reconnect(self, session: str, sdp: str) -> Opened | Error:
        """A moved session's viewer offers again: the answer from its new place."""

    async def close(self, session: str) -> None:
        """The viewer left."""

    async def health(self) -> dict:
        """For /healthz (the load of every worker); also refreshes what `collector` reports."""

    async def log(self, session: str) -> str | None:
        """A session's event log (JSON lines), live or recently ended; None if unknown."""

    @property
    def collector(self) -> Any:
        """A prometheus_client collector of the backend's own metrics (per-worker load)."""


class Server:
    """Sessions over WebRTC for one model on one device.

    `make_generator(seed)` builds a Generator for a new session (in a worker thread,
    as it may allocate caches); `info` describes the stream it makes. `token` and
    `allowed_origins` are the access rules of the module docstring; `control_rate`
    is the control messages a second each peer may send (in bursts of one second's
    worth). `step_many(generators)`: a batched step for sessions whose generators share
    a `batch_key()` (`model.generate.next_frames_batch`; None: each session alone).
    """

    def __init__(
        self,
        make_generator: Callable[[int], Any] | None,
        info: StreamInfo,
        *,
        host: str = "127.0.0.1",
        max_sessions: int = 2,
        record_dir: Path | None = None,
        ice_servers: list[RTCIceServer] | None = None,
        default_prompt: str = DEFAULT_PROMPT,
        web_root: Path = WEB_ROOT,
        token: str | None = None,
        allowed_origins: Sequence[str] = (),
        control_rate: float = CONTROL_RATE,
        step_many: Callable[[list], list] | None = None,
        capacity: Capacity | None = None,
        backend: SessionBackend | None = None,
    ) -> None:
        self.make_generator = make_generator
        self.info = info
        self.host = host
        self.record_dir = record_dir
        self.ice_servers = ice_servers or []
        self.default_prompt = default_prompt
        self.web_root = web_root.resolve()
        self.token = token
        self.allowed_origins = {_origin(o) for o in allowed_origins}
        self.control_rate = control_rate
        self.capacity = capacity or Capacity(limit=max_sessions, budget=info.frames_per_chunk / info.fps,
                                             batched=step_many is not None)
        """Admission: unmeasured (as tests build it) it admits up to `max_sessions`."""
        self.scheduler = Scheduler(max_sessions=max_sessions, on_chunk=self._on_chunk, step_many=step_many,
                                   on_step=self.capacity.observe_round)
        self.backend = backend
        """Where sessions run when not here (cluster mode; None: in this process)."""
        self.relayed: set[str] = set()
        """Sessions of the backend's whose viewers are connected here."""
        self.metrics = Metrics(lambda: len(self.scheduler) if backend is None else len(self.relayed), self.capacity)
        if backend is not None:
            self.metrics.registry.register(backend.collector)
        self.live: dict[str, _Live] = {}
        self._opening = 0  # offers past the admission check, not yet in the scheduler
        self._ended_logs: OrderedDict[str, str] = OrderedDict()
        self._sockets: set[WebSocket] = set()  # open signaling sockets
        self._uvicorn: _Uvicorn | None = None
        self._serving: asyncio.Task | None = None

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
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, port), family=family)  # OSError: taken, or no such address here
        config = uvicorn.Config(
            _Guard(self._app(), self._refusal),
            lifespan="off",
            log_config=None,  # our logging as it is; uvicorn's own loggers at warnings only
            log_level="warning",
            access_log=False,
            server_header=False,
            ws="websockets-sansio",
            ws_max_size=4 * MAX_SIGNAL_BYTES,  # larger ones get our own "too_large" reply
            ws_ping_interval=PING_SECONDS,
            ws_ping_timeout=PING_SECONDS,
        )
        if self.backend is None:
            self.scheduler.start()
        self._uvicorn = _Uvicorn(config)
        self._serving = asyncio.create_task(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:  # (a few turns of the loop)
            if self._serving.done():
                self._serving.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        return sock.getsockname()[1]

    @property
    def full(self) -> bool:
        return not self.admission().admit

    def admission(self) -> Decision:
        """Whether one more session may start now, and why (streamer/admission.py)."""
        return self.capacity.decide(len(self.scheduler) + self._opening)

    async def stop(self, timeout: float | None = None) -> None:
        """Close every session (their sockets get 1001 "going away"), then the worker.
        With a `timeout`, gives up waiting after that many seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._uvicorn is not None:
            for ws in list(self._sockets):  # (uvicorn's own shutdown would say 1012 "restarting")
                await _close_socket(ws, 1001)
            self._uvicorn.should_exit = True  # stops listening, then waits for every handler
            try:
                await asyncio.wait_for(self._serving, timeout)
            except TimeoutError:
                log.warning("sessions still closing after %g s", timeout)
            self._uvicorn = None
        if self.backend is None:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.1)
            await asyncio.to_thread(self.scheduler.stop, left)

    # ------------------------------------------------------------ signaling

    async def _signaling(self, ws: WebSocket) -> None:
        await ws.accept()
        self._sockets.add(ws)
        try:
            await self._signal(ws)
        finally:
            self._sockets.discard(ws)
            await _close_socket(ws, 1000)

    async def _signal(self, ws: WebSocket) -> None:
        try:
            raw = await asyncio.wait_for(_receive(ws), OFFER_TIMEOUT)
        except (TimeoutError, WebSocketDisconnect):
            return
        try:
            offer = parse_signal(raw)
        except ProtocolError as e:
            await self._refuse(ws, e.reply)
            return
        if self.backend is not None:
            await self._relay(ws, offer)
            return
        live = await self._open(ws, offer.sdp, offer.prompt or self.default_prompt, offer.seed)
        if live is None:
            return
        replies = RateLimiter(rate=1.0, burst=1)  # to anything more on the socket
        try:
            await _send(ws, Answer(sdp=live.answer, session=live.session.id).to_json())
            while True:
                await _receive(ws)
                if replies.admit():
                    detail = "one offer per socket; controls go on the data channel"
                    await _send(ws, Error(code="unexpected", detail=detail).to_json())
        except WebSocketDisconnect:
            pass
        finally:
            await self._close(live)

    async def _relay(self, ws: WebSocket, offer: Offer) -> None:
        """Cluster mode: the backend starts the session, the viewer gets its answer; then this
        socket stays open until either side ends the session. Where the session moves (its
        worker failed), the viewer is told to `reconnect` and its next offer goes there.
        While every worker is full the offer may wait in line: the viewer is told its place
        (`queued`); leaving (closing the socket) leaves the line."""

        async def queued(position: int, reason: str) -> None:
            ahead = "you are next" if position == 1 else f"{position - 1} ahead of you"
            await _send(ws, Queued(position=position, detail=f"waiting for a free place: {reason}; {ahead}").to_json())

        opening = asyncio.ensure_future(self.backend.open(offer.sdp, offer.prompt or self.default_prompt,
                                                          offer.seed, queued))
        leaving = asyncio.ensure_future(_receive_until_gone(ws))
        try:
            await asyncio.wait({opening, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
            if not opening.done():
                opening.cancel()  # the viewer left while in line (or the server stops)
                with contextlib.suppress(asyncio.CancelledError):
                    await opening
        if opening.cancelled():
            log.info("a viewer left the line")
            return
        opened = opening.result()
        if isinstance(opened, Error):
            await self._refuse(ws, opened)
            return
        self.relayed.add(opened.session)
        self.metrics.sessions_started.inc()
        log.info("session %s: started on worker %s (%d relayed here)", opened.session, opened.worker,
                 len(self.relayed))
        receiving = watching = None
        replies = RateLimiter(rate=1.0, burst=1)  # to anything more on the socket
        try:
            await _send(ws, Answer(sdp=opened.answer, session=opened.session, worker=opened.worker).to_json())
            receiving = asyncio.ensure_future(_receive(ws))
            watching = asyncio.ensure_future(self.backend.watch(opened.session))
            moved = False  # told to reconnect: the next message is an offer
            while True:
                done, _ = await asyncio.wait({receiving, watching}, return_when=asyncio.FIRST_COMPLETED)
                if watching in done:
                    notice = watching.result()
                    if notice["type"] != "reconnect":
                        log.info("session %s: %s; closing", opened.session, notice.get("reason"))
                        await _close_socket(ws, 1000, str(notice.get("reason", ""))[:100])
                        return
                    log.info("session %s: %s; asking the viewer to reconnect", opened.session, notice["detail"])
                    await _send(ws, Reconnect(detail=notice["detail"]).to_json())
                    moved = True
                    watching = asyncio.ensure_future(self.backend.watch(opened.session))
                if receiving not in done:
                    continue
                raw = receiving.result()  # raises WebSocketDisconnect once the viewer leaves
                receiving = asyncio.ensure_future(_receive(ws))
                if moved:
                    try:
                        again = await self.backend.reconnect(opened.session, parse_signal(raw).sdp)
                    except ProtocolError as e:
                        await _send(ws, e.reply.to_json())
                        continue
                    if isinstance(again, Error):
                        await _send(ws, again.to_json())
                        await _close_socket(ws, 1011, again.code)
                        return
                    moved = False
                    await _send(ws, Answer(sdp=again.answer, session=opened.session, worker=again.worker).to_json())
                elif replies.admit():
                    detail = "one offer per socket; controls go on the data channel"
                    await _send(ws, Error(code="unexpected", detail=detail).to_json())
        except WebSocketDisconnect:
            pass
        finally:
            for task in (receiving, watching):
                if task is not None:
                    task.cancel()
            self.relayed.discard(opened.session)
            await self.backend.close(opened.session)

    async def _open(self, ws: WebSocket, sdp: str, prompt: str, seed: int | None) -> _Live | None:
        """A running session answering `sdp`, or None after replying with an error."""
        decision = self.admission()
        if not decision.admit:
            return await self._refuse(ws, _server_full(decision.reason))
        self._opening += 1  # holds the place while the generator is built and the offer answered
        try:
            return await self._start_session(ws, sdp, prompt, seed)
        finally:
            self._opening -= 1

    async def _start_session(self, ws: WebSocket, sdp: str, prompt: str, seed: int | None) -> _Live | None:
        seed = secrets.randbelow(2**32) if seed is None else seed
        try:
            generator = await asyncio.to_thread(self.make_generator, seed)
        except Exception as e:  # the model could not start a stream: say so, keep serving
            log.exception("cannot start a session")
            return await self._refuse(ws, Error(code="generation_failed", detail=f"cannot start a session: {e}"[:500]))
        session = Session(generator, self.info, prompt=prompt, record_dir=self.record_dir)
        peer = Peer(
            session,
            ice_servers=self.ice_servers,
            loopback_only=self.loopback,
            metrics=self.metrics,
            wake=self.scheduler.wake,
            on_end=lambda reason: self._end(ws, session, reason),
            limiter=RateLimiter(rate=self.control_rate, burst=max(1, round(self.control_rate))),
            on_frame=self.capacity.observe_frame,
        )
        try:
            answer = await peer.answer(sdp)
            self.scheduler.add(session, on_error=lambda e: self._failed(ws, peer, e))
        except BaseException as e:
            await peer.close()
            session.close()
            if isinstance(e, ProtocolError):
                return await self._refuse(ws, e.reply)
            if isinstance(e, SchedulerFull):  # cannot happen while `full` counts openings; kept as a guard
                return await self._refuse(ws, _server_full(self.admission().reason))
            raise
        live = self.live[session.id] = _Live(session, peer, answer)
        self.metrics.sessions_started.inc()
        log.info("session %s: started (seed %d, %d of %d)", session.id, seed, len(self.live), self.scheduler.max_sessions)
        return live

    async def _refuse(self, ws: WebSocket, reply: Error) -> None:
        self.metrics.sessions_rejected.labels(reply.code).inc()
        log.info("refused an offer: %s", reply.detail)
        await _send(ws, reply.to_json())
        await _close_socket(ws, 1013 if reply.code == "server_full" else 1008, reply.code)  # try later / policy

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

    def _end(self, ws: WebSocket, session: Session, reason: str) -> None:
        log.info("session %s: %s; closing", session.id, reason)
        asyncio.ensure_future(_close_socket(ws, 1000, reason))

    def _failed(self, ws: WebSocket, peer: Peer, error: BaseException) -> None:
        self.metrics.session_errors.inc()
        reply = Error(code="generation_failed", detail=f"the model failed, this session is over: {error}"[:500])
        peer.send(reply)

        async def close() -> None:
            await _send(ws, reply.to_json())
            await _close_socket(ws, 1011, "generation failed")

        asyncio.ensure_future(close())

    def _on_chunk(self, session: Session) -> None:
        self.metrics.chunk_seconds.observe(session.chunk_seconds)

    # ------------------------------------------------------------ HTTP

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                WebSocketRoute("/ws", self._signaling),
                Route("/healthz", self._health),
                Route("/metrics", self._metrics),
                Route("/config.json", self._config),
                Route("/sessions/{session}/log.jsonl", self._log),
                Mount("/", _WebFiles(directory=self.web_root, html=True)),  # html: / is index.html
            ]
        )

    def _refusal(self, request: HTTPConnection) -> Response | None:
        """The answer to a request or socket that the access rules turn away, or None."""
        headers, path = request.headers, request.scope["path"]  # (the path the routes match)
        if any(len(headers.getlist(name)) > 1 for name in ("host", "origin", "authorization")):
            return PlainTextResponse("repeated Host, Origin or Authorization header\n", 400)
        host = headers.get("host")
        if self.loopback and host is not None and not _is_loopback_name(_host_name(host)):
            return self._refused("host", 421, f"this server answers only to loopback names, not {host!r}")
        private = path in PRIVATE_PATHS or path.startswith("/sessions/")
        if private and not self._token_ok(request):
            return self._refused("token", 401, "this server needs its token: open the page with ?token=TOKEN")
        if path == "/ws":
            origin = headers.get("origin")
            if origin is None and self.token is None and not self.loopback:
                return self._refused("origin", 403, "clients that send no Origin need the server's --token")
            if origin is not None and not self._origin_ok(origin, host):
                return self._refused("origin", 403, f"origin {origin!r} may not open sessions here")
        return None

    def _token_ok(self, request: HTTPConnection) -> bool:
        if self.token is None:
            return True
        given = request.query_params.get("token") or None
        auth = request.headers.get("authorization", "")
        if given is None and auth.startswith("Bearer "):
            given = auth.removeprefix("Bearer ").strip()
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _origin_ok(self, origin: str, host: str | None) -> bool:
        """The page's own origin (scheme://Host), or one allowed on the command line."""
        origin = _origin(origin)
        if origin in self.allowed_origins:
            return True
        scheme, _, netloc = origin.partition("://")
        return scheme in ("http", "https") and host is not None and netloc == host.lower()

    def _refused(self, reason: str, status: int, detail: str) -> Response:
        self.metrics.refused.labels(reason).inc()
        log.info("refused a request (%s): %s", reason, detail)
        return JSONResponse({"error": reason, "detail": detail}, status)

    async def _health(self, request: Request) -> Response:
        if self.backend is not None:
            return JSONResponse({"status": "ok", **await self.backend.health()})
        sessions, limit = len(self.scheduler), self.scheduler.max_sessions
        return JSONResponse({"status": "ok", "sessions": sessions, "max_sessions": limit,
                             **self.capacity.snapshot(sessions + self._opening)})

    async def _metrics(self, request: Request) -> Response:
        if self.backend is not None:
            await self.backend.health()  # (refreshes the per-worker figures)
        return Response(self.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    async def _config(self, request: Request) -> Response:
        ice = [ice_server_json(s) for s in self.ice_servers]
        return JSONResponse({"iceServers": ice, "prompt": self.default_prompt, "model": self.info.model})

    async def _log(self, request: Request) -> Response:
        session_id = request.path_params["session"]
        live = self.live.get(session_id)
        if self.backend is not None:
            text = await self.backend.log(session_id)
        else:
            text = live.session.log.text() if live is not None else self._ended_logs.get(session_id)
        if text is None:
            return PlainTextResponse("no such session\n", 404)
        disposition = f'attachment; filename="livereel-{session_id}.jsonl"'
        return Response(text, media_type="application/x-ndjson", headers={"Content-Disposition": disposition})


class _Guard:
    """ASGI middleware: `refusal(request)` turns a request or socket away before it reaches
    a route (for a socket, as an HTTP answer to its handshake); every answer gets HEADERS."""

    def __init__(self, app: ASGIApp, refusal: Callable[[HTTPConnection], Response | None]) -> None:
        self.app = app
        self.refusal = refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS:
                    headers.append(name, value)
            await send(message)

        refusal = self.refusal(HTTPConnection(scope))
        app = self.app if refusal is None else refusal
        await app(scope, receive, send_with_headers)


class _Uvicorn(uvicorn.Server):
    """uvicorn that leaves SIGINT and SIGTERM to whoever runs the loop (`_serve` below, or a
    test): ours close every session first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _receive(ws: WebSocket) -> str | bytes:
    """The next message; WebSocketDisconnect once the socket is closed (by either side)."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message["text"] if message.get("text") is not None else message["bytes"]


async def _send(ws: WebSocket, text: str) -> None:
    """Send `text` unless the socket is closed (a client may go at any time)."""
    if ws.application_state is WebSocketState.CONNECTED:
        with contextlib.suppress(WebSocketDisconnect):
            await ws.send_text(text)


async def _close_socket(ws: WebSocket, code: int, reason: str = "") -> None:
    """Close `ws` with `code` unless it is closed already."""
    if ws.application_state is WebSocketState.CONNECTED and ws.client_state is WebSocketState.CONNECTED:
        with contextlib.suppress(WebSocketDisconnect):
            await ws.close(code, reason)


def _origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _host_name(host: str) -> str:
    """The name in a Host header: "[::1]:8080" -> "::1", "localhost:80" -> "localhost"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def _receive_until_gone(ws: WebSocket) -> None:
    """Returns when the viewer closes its socket (what it sends meanwhile is ignored)."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await _receive(ws)


def _server_full(reason: str) -> Error:
    return Error(code="server_full", detail=f"server full: {reason}; try again in a moment")


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: loopback only; 0.0.0.0 for every network)"
    )
    parser.add_argument("--port", type=int, default=8080, help="port for HTTP and the signaling WebSocket")
    parser.add_argument(
        "--checkpoint", default="default",
        help='"default" (shipped model), "debug" (tiny, random), a path, or a Wan checkpoint folder'
    )
    parser.add_argument(
        "--max-sessions", type=int, default=4,
        help="at most this many streams at once; fewer where this machine cannot make them all in real time "
             "(measured at start and under load: a viewer past that is refused, with the reason)")
    parser.add_argument(
        "--admission", choices=("measured", "limit"), default="measured",
        help="measured: admit a viewer only while every stream stays real time (the rounds of chunks timed at "
             "start and under load); limit: up to --max-sessions whatever the speed (streams then repeat frames); "
             "with --ray, each worker's sessions the same way, up to its --slots")
    add_sampling_arguments(parser)
    add_wan_arguments(parser)
    add_engine_argument(parser)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the eager DiT's blocks (about 1.1x a chunk on CPU, after ~30 s of "
                             "compiling at start; with --engine eager)")
    parser.add_argument("--record-dir", type=Path, help="write each session's event log here as ID.jsonl")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt of a session whose offer names none")
    parser.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN server for both sides, repeatable: stun:HOST:PORT or turn:USER:PASS@HOST:PORT",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("LIVEREEL_TOKEN"),
        help="secret that /ws, /config.json, /metrics and session logs require (?token= or a Bearer header); "
        "open the page as http://HOST:PORT/?token=TOKEN (default: $LIVEREEL_TOKEN, else none)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another web origin (scheme://host[:port]) whose pages may open sessions, repeatable "
        "(the page's own origin always may)",
    )
    cluster = parser.add_argument_group("cluster mode (Ray; needs the cluster extra: pip install 'livereel[cluster]')")
    cluster.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help="run sessions on GenWorker actors of a Ray cluster, this process relaying signaling only: a local "
             "cluster of --workers workers, or the cluster at ADDRESS (host:port of its head; workers join it "
             "with `livereel worker`, or this process starts --workers of them there)")
    cluster.add_argument("--workers", type=int, default=2,
                         help="GenWorker actors this process starts (each: the model and --slots sessions)")
    cluster.add_argument("--slots", type=int, default=2, help="sessions each worker streams at once")
    cluster.add_argument("--worker-cpus", type=float, default=None,
                         help="CPU cores Ray reserves for each worker (default: this machine's cores / --workers)")
    cluster.add_argument("--worker-gpus", type=float, default=0.0, help="GPUs Ray reserves for each worker")
    cluster.add_argument(
        "--queue-seconds", type=float, default=20.0, metavar="S",
        help="with every worker full, a viewer waits in line this long for a place (told its place as the line "
             "moves), then is refused (0: refused at once)")
    add_snapshot_argument(cluster)


def add_snapshot_argument(parser: Any) -> None:
    """--snapshot-every (serve --ray and livereel worker)."""
    from streamer.cluster import SNAPSHOT_CHUNKS

    parser.add_argument(
        "--snapshot-every", type=int, default=SNAPSHOT_CHUNKS, metavar="CHUNKS",
        help="a worker sends each session's stream state to the controller every this many chunks, so a failover "
             "replays at most that many (0: never; a failover then replays the session's whole log)")


def main(args: argparse.Namespace) -> int:
    try:
        ice_servers = [parse_ice_server(url) for url in args.ice_server]
    except ValueError as e:
        log.error("--ice-server: %s", e)
        return 2
    if args.max_sessions < 1:
        log.error("--max-sessions must be at least 1")
        return 2
    try:
        sampling = sampling_from_args(args)
        wan = wan_options_from_args(args)
    except ValueError as e:
        log.error("%s", e)
        return 2
    if not 0 <= args.port <= 65535:
        log.error("--port must be in 0-65535 (0: any free port)")
        return 2
    try:
        Offer(type="offer", sdp="-", prompt=args.prompt)
    except ValidationError as e:
        log.error("--prompt: %s", e.errors(include_url=False)[0]["msg"])
        return 2
    if args.token is not None and (len(args.token) < MIN_TOKEN_CHARS or not args.token.isprintable()):
        log.error(
            "--token must be at least %d printable characters (try: %s)", MIN_TOKEN_CHARS, secrets.token_urlsafe(24)
        )
        return 2
    for origin in args.allow_origin:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
            log.error("--allow-origin %r: give scheme://host[:port], as a browser's Origin header has it", origin)
            return 2
    if args.record_dir is not None and (why := _unwritable(args.record_dir)):
        log.error("--record-dir %s: cannot write session logs there (%s)", args.record_dir, why)
        return 2
    if args.port and (why := port_problem(args.host, args.port)):  # before the model loads
        log.error("%s", why)
        return 2
    if args.ray is not None:
        from streamer.cluster.gateway import main as cluster_main

        return cluster_main(args, sampling, wan, ice_servers)

    from model import CheckpointError, load_model  # (torch: only once the flags are good)
    from model.generate import next_frames_batch

    from model.engine import EngineError

    try:
        model = apply_engine(load_model(args.checkpoint, wan=wan), args.engine, args.compile)
    except CheckpointError as e:
        log.error("cannot load checkpoint %r: %s", args.checkpoint, e)
        return 1
    except EngineError as e:
        log.error("--engine %s: %s", args.engine, e)
        return 2
    plan = model.memory_plan()
    log.info("memory: %s", ", ".join(f"{part} {n / 2**20:.1f} MiB" for part, n in plan.items()))
    # The first Generator and chunk of a process pay one-off costs (lazy init, kernel
    # selection, compiling): pay them now, not in the first viewer's wait, and fail before serving.
    start = time.perf_counter()
    from model.compile import compile_dit, warm_up

    if args.compile:
        warm_up(compile_dit(model), sampling, min(args.max_sessions, 2))
    elif hasattr(model, "engine_parts"):  # each shape a server meets compiles once: now, not in a viewer's wait
        warm_up(model, sampling, min(args.max_sessions, 2))
    else:
        sampling.generator(model, seed=0).next_frames()
    log.info("model %r ready; warm-up took %.2f s", args.checkpoint, time.perf_counter() - start)
    for noisy in ("aioice", "aiortc"):  # a line per ICE check
        logging.getLogger(noisy).setLevel(logging.WARNING)
    info = StreamInfo.of(model, sampling)
    # Admission by capacity: time rounds of 1, 2, ... sessions now, on this device as it is
    capacity = Capacity(limit=args.max_sessions, budget=info.frames_per_chunk / info.fps, batched=True)
    if args.admission == "measured":
        start = time.perf_counter()
        capacity.measure(lambda seed: sampling.generator(model, seed=seed), next_frames_batch,
                         progress=lambda line: log.info("measuring capacity: %s", line))
        log.info("capacity measured in %.1f s: %s", time.perf_counter() - start, capacity.describe())
    server = Server(
        lambda seed: sampling.generator(model, seed=seed),
        info,
        step_many=next_frames_batch,
        host=args.host,
        max_sessions=args.max_sessions,
        record_dir=args.record_dir,
        ice_servers=ice_servers,
        default_prompt=args.prompt,
        token=args.token,
        allowed_origins=args.allow_origin,
        capacity=capacity,
    )
    return asyncio.run(_serve(server, args.port))


def port_problem(host: str, port: int) -> str | None:
    """Why a server (serve, demo) could not listen on `host:port`, or None: a bind test, as uvicorn
    binds (SO_REUSEADDR, so a port in TIME_WAIT counts as free), before the model loads."""
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return f"port {port} is in use; choose another with --port"
            return f"cannot listen on {host}:{port} ({e.strerror or e}); check --host and --port"
    return None


def _unwritable(folder: Path) -> str | None:
    """Why `folder` cannot take files (made if missing), or None if it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None


async def _serve(server: Server, port: int) -> int:
    try:
        port = await server.start(port)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", server.host, port, e)
        return 1
    host = f"[{server.host}]" if ":" in server.host else server.host
    log.info(
        "serving %s (%d px, %d fps) at http://%s:%d/%s (%d sessions in real time, at most %d)",
        server.info.model, server.info.size, server.info.fps, host, port,
        "?token=..." if server.token else "", server.capacity.sessions, server.scheduler.max_sessions,
    )
    if not server.loopback:
        log.warning(
            "bound to %s: reachable from other machines; %s", server.host,
            "sessions need the token" if server.token else "anyone who reaches it can stream (set --token)",
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for sig in signals:  # a second signal ends the process at once
        loop.remove_signal_handler(sig)
    sessions, start = len(server.live) + len(server.relayed), time.monotonic()
    log.info("shutting down: closing %d session(s)", sessions)
    await server.stop(timeout=SHUTDOWN_SECONDS)
    log.info("stopped: %d session(s) closed in %.1f s", sessions, time.monotonic() - start)
    return 0
