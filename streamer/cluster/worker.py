"""`GenWorker`: one device's sessions in a Ray actor: the model, today's Scheduler with
`slots` sessions, and each session's WebRTC peer (media goes from here to the browser).

The controller places an offer here (`open`) and gets the SDP answer back. While it
runs, the worker
- sends each line of each session's event log to the controller as it is written
  (`Controller.append_log`, numbered, so the store is whole and in order however the
  calls arrive), so a log outlives its worker;
- reports its load (sessions, slots, chunk time, the sessions it streams in real time as
  it measured at start, whether its sessions are behind) every REPORT_SECONDS, which is
  also its heartbeat;
- commits each chunk of each session (`Controller.commit`: the chunks made so far), and
  every `snapshot_every` chunks sends the session's stream state (`Controller.snapshot`);
- tells the controller when a session ends on its side (the peer left or went silent,
  the model failed): `Controller.ended`.

Failover (and a draining worker's hand-over): `restore` rebuilds a session another
worker was running, from its latest snapshot (model/snapshot.py) or, before the first,
a Generator with the logged seed, driven on through the controls logged since, chunk by
chunk as `livereel replay` does, up to its committed chunk count: that is the state the
dead worker's had, so the chunks it makes next are the ones the stream would have had.
The viewer's new offer then comes to `attach`.

Ray runs this actor's async methods on one event loop, the loop aiortc and the
scheduler's results use; the model runs on the scheduler's thread, as in one process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import ray
from aiortc import RTCIceServer

from streamer.cluster import CONTROLLER_NAME, NAMESPACE, SNAPSHOT_CHUNKS
from streamer.controls import CONTROL_RATE, Error, ProtocolError, RateLimiter
from streamer.session import Session, StreamInfo
from streamer.webrtc import Peer

log = logging.getLogger(__name__)

REPORT_SECONDS = 0.5
"""Load reports (and heartbeats) to the controller."""


@dataclass
class _Live:
    session: Session
    peer: Peer | None  # None: restored, its viewer not back yet
    epoch: int


class GenWorker:
    """One device's model, scheduler and sessions. Wrapped by `ray.remote` where it is
    started (`spawn_worker`), so that its resources are chosen there."""

    def __init__(
        self,
        worker_id: str,
        checkpoint: str,
        sampling: Any,
        slots: int,
        *,
        engine: str = "eager",
        wan: Any = None,
        ice_servers: list[RTCIceServer] | None = None,
        loopback_only: bool = True,
        control_rate: float = CONTROL_RATE,
        threads: int = 1,
        batch: bool = True,
        keep_frames: int = 0,
        snapshot_every: int = SNAPSHOT_CHUNKS,
        admission: str = "measured",
    ) -> None:
        """`batch`: sessions of one key share batched steps (as `serve`; False: each steps
        alone, whose frames are bit-equal to a replay's); `keep_frames`: keep each session's
        last that many frames made, for `kept_frames` (tests); `snapshot_every`: chunks
        between two snapshots of a session sent to the controller (0: none, a failover
        replays the whole log); `admission`: "measured" (time rounds of 1, 2, ... sessions
        at start and take no more than run in real time, as `serve` does: streamer/
        admission.py) or "limit" (up to `slots` whatever the speed)."""
        import torch

        from model import load_model
        from model.engine_choice import apply_engine
        from model.generate import next_frames_batch
        from streamer.admission import Capacity

        torch.set_num_threads(threads)  # one device's share of the cores
        os.environ.setdefault("TQDM_DISABLE", "1")  # (the replay of a restore)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.id = worker_id
        self.slots = slots
        self.sampling = sampling
        self.model = apply_engine(load_model(checkpoint, wan=wan), engine)
        start = time.perf_counter()
        sampling.generator(self.model, seed=0).next_frames()  # one-off costs now, not in a viewer's wait
        log.info("worker %s: model %r ready; warm-up took %.2f s", worker_id, checkpoint, time.perf_counter() - start)
        self.info = StreamInfo.of(self.model, sampling)
        self.capacity = Capacity(limit=slots, budget=self.info.frames_per_chunk / self.info.fps, batched=batch)
        if admission == "measured":
            start = time.perf_counter()
            self.capacity.measure(lambda seed: sampling.generator(self.model, seed=seed),
                                  next_frames_batch if batch else None)
            log.info("worker %s: capacity measured in %.1f s: %s", worker_id, time.perf_counter() - start,
                     self.capacity.describe())
        elif admission != "limit":
            raise ValueError(f"admission must be 'measured' or 'limit' (got {admission!r})")
        self.snapshot_every = snapshot_every
        self.key = f"{checkpoint}|{engine}|{sorted(sampling.to_dict().items())}|batch={batch}"
        self.ice_servers = ice_servers or []
        self.loopback_only = loopback_only
        self.control_rate = control_rate
        self._step_many = next_frames_batch if batch else None
        self.keep_frames = keep_frames
        self.kept: dict[str, dict[int, Any]] = {}
        self.live: dict[str, _Live] = {}
        self.scheduler = None
        self.metrics = None
        self.controller = None
        self._reporting: asyncio.Task | None = None

    # ------------------------------------------------------------ from the controller

    async def start(self, controller_name: str = CONTROLLER_NAME) -> dict:
        """Start the scheduler on this actor's loop and register with the controller;
        returns what was registered."""
        from streamer.scheduler import Scheduler
        from streamer.server import Metrics

        if self.scheduler is None:
            self.scheduler = Scheduler(max_sessions=self.slots, step_many=self._step_many,
                                       device=f"worker-{self.id}", on_chunk=self._commit,
                                       on_step=self.capacity.observe_round)
            self.metrics = Metrics(lambda: len(self.scheduler), self.capacity)
            self.scheduler.start()
        self.controller = ray.get_actor(controller_name, namespace=NAMESPACE)
        spec = {"slots": self.slots, "key": self.key, "info": self.info, "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id()}
        me = ray.get_runtime_context().current_actor
        await self.controller.register.remote(self.id, me, spec)
        if self._reporting is None:
            self._reporting = asyncio.ensure_future(self._report_loop())
        return spec

    async def open(self, session_id: str, epoch: int, sdp: str, prompt: str, seed: int) -> dict:
        """A running session answering `sdp`: {"sdp": answer}, or {"error": code, "detail": ...}."""
        assert self.scheduler is not None, "start() first"
        if self.scheduler.full:
            return {"error": "server_full", "detail": f"worker {self.id}: all {self.slots} slots in use"}
        try:
            generator = await asyncio.to_thread(self.sampling.generator, self.model, seed)
        except Exception as e:  # the model could not start a stream: say so, keep serving
            log.exception("cannot start a session")
            return {"error": "generation_failed", "detail": f"cannot start a session: {e}"[:500]}
        session = Session(generator, self.info, prompt=prompt, session_id=session_id)
        controller = self.controller
        session.log.listen(lambda index, line: controller.append_log.remote(session_id, epoch, index, line))
        self._keep(session)
        peer = self._peer(session)
        try:
            answer = await peer.answer(sdp)
            self.scheduler.add(session, on_error=lambda e: self._failed(session_id, e))
        except BaseException as e:
            await peer.close()
            session.close()
            if isinstance(e, ProtocolError):
                return {"error": e.reply.code, "detail": e.reply.detail}
            raise
        self.live[session_id] = _Live(session, peer, epoch)
        log.info("worker %s: session %s started (seed %d, %d of %d)", self.id, session_id, seed, len(self.live),
                 self.slots)
        self._report()
        return {"sdp": answer}

    async def restore(self, session_id: str, epoch: int, lines: list[str], chunks: int,
                      snapshot: tuple[int, bytes] | None = None) -> dict:
        """Take over a session from its stored log `lines` (JSON lines: header, controls), at
        least `chunks` chunks in (its last commit; more where the log shows controls of
        later chunks), starting from its latest `snapshot` (chunks made when it was taken,
        the bytes of model/snapshot.py) where there is one, else from its first chunk.
        It runs from now on; its viewer comes back through `attach`.
        Returns {"chunk": where it goes on, "replayed": chunks made to get there} or
        {"error", "detail"}."""
        if self.scheduler.full:
            return {"error": "server_full", "detail": f"worker {self.id}: all {self.slots} slots in use"}
        header, events = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
        k = self.info.frames_per_chunk
        controls = [e for e in events if e["what"] in ("prompt", "camera", "reset")]
        chunks = max([chunks] + [e["frame"] // k + 1 for e in controls])  # every logged control applied
        start = time.perf_counter()

        from model.snapshot import load as load_snapshot
        from streamer.export import render

        def replay() -> tuple[Any, int]:
            generator, first = None, 0
            if snapshot is not None and snapshot[0] <= chunks:
                try:
                    generator = load_snapshot(self.model, snapshot[1])
                    first = snapshot[0]
                except ValueError as e:  # (never from our own workers; the log alone still restores it)
                    log.warning("session %s: its snapshot is unusable (%s); replaying the whole log", session_id, e)
            if generator is None:
                generator = self.sampling.generator(self.model, seed=int(header["seed"]))
                if header.get("prompt") and not any(e["what"] == "prompt" and e["frame"] == 0 for e in controls):
                    generator.set_prompt(header["prompt"])
            for _ in render(generator, controls, chunks * k, desc="restore", first_chunk=first):
                pass
            return generator, chunks - first

        try:
            generator, replayed = await asyncio.to_thread(replay)
        except Exception as e:  # the model could not replay this log: say so, keep serving
            log.exception("cannot restore session %s", session_id)
            return {"error": "generation_failed", "detail": f"cannot restore the session: {e}"[:500]}
        prompts = [e["text"] for e in controls if e["what"] == "prompt"]
        session = Session(generator, self.info, prompt=prompts[-1] if prompts else header.get("prompt", ""),
                          session_id=session_id)
        session.resume_at(chunks)
        session.paused = [e["what"] for e in events if e["what"] in ("pause", "resume")][-1:] == ["pause"]
        base, controller = len(lines), self.controller  # its own header is not stored again
        session.log.listen(lambda index, line: index and controller.append_log.remote(
            session_id, epoch, base + index - 1, line))
        self._keep(session)
        self.scheduler.add(session, on_error=lambda e: self._failed(session_id, e))
        self.live[session_id] = _Live(session, None, epoch)
        log.info("worker %s: session %s restored at chunk %d (%s, %d chunks replayed in %.2f s)", self.id,
                 session_id, chunks, "from its snapshot" if replayed < chunks else "from its log", replayed,
                 time.perf_counter() - start)
        self._report()
        return {"chunk": chunks, "replayed": replayed}

    async def attach(self, session_id: str, epoch: int, sdp: str) -> dict:
        """A restored session's viewer offers again: {"sdp": answer} or {"error", "detail"}."""
        live = self.live.get(session_id)
        if live is None or live.epoch != epoch:
            return {"error": "unexpected", "detail": "this session is not on this worker"}
        if live.peer is not None:
            await live.peer.close()
        peer = self._peer(live.session)
        try:
            answer = await peer.answer(sdp)
        except ProtocolError as e:
            await peer.close()
            return {"error": e.reply.code, "detail": e.reply.detail}
        live.peer = peer
        return {"sdp": answer}

    def kept_frames(self, session_id: str) -> dict:
        """{stream frame index: (H, W, 3) uint8} of the last `keep_frames` frames made."""
        return dict(self.kept.get(session_id, {}))

    async def until_stopped(self) -> None:
        """Returns never: the controller holds this call to learn at once when the actor dies."""
        await asyncio.Event().wait()

    async def close(self, session_id: str) -> None:
        """End a session (its viewer left); nothing if it is not here."""
        live = self.live.pop(session_id, None)
        if live is None:
            return
        self.scheduler.remove(live.session)
        self.kept.pop(session_id, None)
        if live.peer is not None:
            await live.peer.close()
        live.session.close()
        log.info("worker %s: session %s ended after %d frames", self.id, session_id, live.session.frames_sent)
        self._report()

    def load(self) -> dict:
        """What the controller places by: sessions, slots, the latest chunk time, how many
        sessions it streams in real time now (measured at start, scaled by the load it
        measures since) and whether its sessions are behind real time."""
        times = [lv.session.chunk_seconds_avg for lv in self.live.values() if lv.session.chunk_seconds_avg]
        return {
            "sessions": sorted(self.live),
            "slots": self.slots,
            "chunk_seconds": max(times) if times else None,
            "frames_sent": sum(lv.session.frames_sent for lv in self.live.values()),
            "capacity": self.capacity.sessions if self.capacity.round_seconds else None,
            "behind": self.capacity.behind,
        }

    async def ping(self) -> str:
        return self.id

    # ------------------------------------------------------------ here

    def _peer(self, session: Session) -> Peer:
        return Peer(
            session,
            ice_servers=self.ice_servers,
            loopback_only=self.loopback_only,
            metrics=self.metrics,
            wake=self.scheduler.wake,
            on_end=lambda reason: self._ended(session.id, reason),
            limiter=RateLimiter(rate=self.control_rate, burst=max(1, round(self.control_rate))),
            on_frame=self.capacity.observe_frame,
        )

    def _keep(self, session: Session) -> None:
        """With `keep_frames`: record the frames `session` makes (by stream index)."""
        if not self.keep_frames:
            return
        kept = self.kept[session.id] = {}
        end_step = session.end_step

        def recorded(work, frames, seconds) -> None:
            first = session.frames_made
            end_step(work, frames, seconds)
            for i, frame in enumerate(frames):
                kept[first + i] = frame
            for index in sorted(kept)[: max(len(kept) - self.keep_frames, 0)]:
                del kept[index]

        session.end_step = recorded

    def _commit(self, session: Session) -> None:
        """After each chunk (on the scheduler's thread, between two steps: the stream's
        state is whole): the chunks made so far to the controller, and every
        `snapshot_every` chunks the stream's state."""
        live = self.live.get(session.id)
        if live is None or self.controller is None:
            return
        made = session.chunks_made
        self.controller.commit.remote(session.id, live.epoch, made)
        if self.snapshot_every and made % self.snapshot_every == 0:
            from model.snapshot import save as save_snapshot

            start = time.perf_counter()
            data = save_snapshot(session.generator)
            self.controller.snapshot.remote(session.id, live.epoch, made, data)
            log.debug("session %s: snapshot at chunk %d, %.1f MB in %.0f ms", session.id, made, len(data) / 2**20,
                      (time.perf_counter() - start) * 1000)

    def _report(self) -> None:
        if self.controller is not None:
            self.controller.report.remote(self.id, self.load())

    async def _report_loop(self) -> None:
        while True:
            self._report()
            await asyncio.sleep(REPORT_SECONDS)

    def _ended(self, session_id: str, reason: str) -> None:
        """The peer went away (or the model failed): end here, tell the controller."""
        live = self.live.get(session_id)
        if live is None:
            return
        log.info("worker %s: session %s: %s; closing", self.id, session_id, reason)
        self.controller.ended.remote(session_id, live.epoch, reason)
        asyncio.ensure_future(self.close(session_id))

    def _failed(self, session_id: str, error: BaseException) -> None:
        live = self.live.get(session_id)
        if live is None:
            return
        reply = Error(code="generation_failed", detail=f"the model failed, this session is over: {error}"[:500])
        if live.peer is not None:
            live.peer.send(reply)
        self._ended(session_id, reply.detail)


def spawn_worker(worker_id: str, checkpoint: str, sampling: Any, slots: int, *, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, **options: Any):
    """Start a GenWorker actor with these resources; returns its handle (call `start`)."""
    actor = ray.remote(GenWorker).options(
        name=f"livereel-worker-{worker_id}", namespace=NAMESPACE, num_cpus=num_cpus, num_gpus=num_gpus,
        max_concurrency=1000,
    )
    return actor.remote(worker_id, checkpoint, sampling, slots, **options)
