"""`Controller`: the cluster's one small control plane, a named Ray actor.

- The worker registry: each GenWorker registers (`register`) and reports its load every
  half second (`report`); a worker whose reports stop for DEAD_SECONDS, or whose calls
  fail with a Ray actor error, is dropped.
- Placement and admission (streamer/cluster/placement.py): fill warm workers first,
  prefer one running the same model and settings, never past a worker's slots nor its
  measured real-time capacity. With no room an offer waits in line (first come, first
  placed; `open(wait=...)`, its place in line from `queue_position`) until a session
  ends or a worker joins, and is refused once its wait is over ("all 6 sessions of 3
  workers are in use; waited 20 s in line"); a viewer who leaves the line
  (`leave_queue`) frees its place at once.
- The session table: session id -> (worker, epoch). The epoch fences a session's past
  owner: log lines sent under an older epoch are refused.
- The session store: each line of each session's log, sent by its worker as it is
  written (`append_log`, numbered); kept for live sessions and the ENDED_LOGS_KEPT last
  ended ones, and with a `record_dir` appended to ID.jsonl there as well; and each live
  session's latest snapshot (`snapshot`: its stream's state every few chunks, from its
  worker; model/snapshot.py).
- Notices for the gateway: `watch(session)` returns when the session ends on its
  worker's side, so the gateway closes the viewer's signaling socket, or when it moved.
- Failover. The controller holds a call on every worker that never returns
  (`until_stopped`), so a dead worker process is known at once (a Ray actor error);
  a worker whose load reports stop for DEAD_SECONDS counts as dead too. Each of its
  sessions is fenced (epoch + 1) and placed on another worker (within slots: past its
  measured real-time capacity if need be), which restores it from its latest snapshot
  and the controls logged since, up to its last committed chunk (`GenWorker.restore`;
  the whole log where there is no snapshot yet); the gateway then
  tells the viewer to offer again (`reconnect`), and the new offer goes to the new
  owner (`reoffer`). Where no worker has room, the session ends with that reason.
- Drain (`drain`): a worker asked to leave takes no new session, and its sessions move
  the same way, except that the old worker plays on until the viewer's new offer is
  answered, and is then told to close its copy.

It runs no model and imports no torch. An async actor: calls interleave only at awaits,
so each method's bookkeeping between awaits is atomic.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.cluster.placement import WorkerState, full_reason, place

log = logging.getLogger(__name__)

DEAD_SECONDS = 5.0
"""A worker silent this long (no load report) is taken for dead."""
LINE_MAX = 64
"""Offers waiting in line at most; one more is refused at once."""
ENDED_LOGS_KEPT = 256
"""Ended sessions whose logs stay downloadable."""


@dataclass
class _Worker:
    state: WorkerState
    handle: Any
    info: Any  # StreamInfo


@dataclass
class _Session:
    id: str
    worker: str
    epoch: int
    prompt: str
    seed: int
    key: str
    chunks: int = 0
    """Chunks made, as last committed by its worker."""
    snapshot: tuple[int, bytes] | None = None
    """Its latest snapshot: (chunks made then, the stream's state; model/snapshot.py)."""
    moves: list = field(default_factory=list)
    """Each move to another worker: {"worker", "chunk", "replayed", "ms"}."""
    leaving: Any = None
    """A draining worker still playing it until its viewer is back (its handle)."""
    notices: asyncio.Queue = field(default_factory=asyncio.Queue)


class _Log:
    """One session's lines in order, whatever order they arrive in."""

    def __init__(self, path: Path | None) -> None:
        self.lines: list[str] = []
        self.early: dict[int, str] = {}  # lines past a gap, until it fills
        self.path = path

    def put(self, index: int, line: str) -> None:
        if index < len(self.lines) or index in self.early:
            return  # a repeat
        self.early[index] = line
        start = len(self.lines)
        while len(self.lines) in self.early:
            self.lines.append(self.early.pop(len(self.lines)))
        if self.path is not None and len(self.lines) > start:
            with self.path.open("a", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in self.lines[start:]))

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


class Controller:
    """Registry, placement, admission, session table and log store (module docstring)."""

    def __init__(self, record_dir: str | None = None) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.workers: dict[str, _Worker] = {}
        self.sessions: dict[str, _Session] = {}
        self.logs: dict[str, _Log] = {}
        self._ended: OrderedDict[str, _Log] = OrderedDict()
        self._order = 0
        self._record_dir = Path(record_dir) if record_dir else None
        if self._record_dir is not None:
            self._record_dir.mkdir(parents=True, exist_ok=True)
        self._registered = asyncio.Condition()
        self._watchdog: asyncio.Task | None = None
        self._queue: list[str] = []  # tickets of offers waiting for room, first come first
        self._left: set[str] = set()  # tickets whose viewers left the line
        self._room = asyncio.Condition()  # notified whenever room may have appeared

    # ------------------------------------------------------------ workers

    async def register(self, worker_id: str, handle: Any, spec: dict) -> None:
        old = self.workers.get(worker_id)
        order = old.state.order if old is not None else self._order
        self._order += old is None
        state = WorkerState(id=worker_id, slots=spec["slots"], key=spec["key"], order=order,
                            node=spec.get("node", ""), pid=spec.get("pid"), reported=time.monotonic())
        self.workers[worker_id] = _Worker(state, handle, spec["info"])
        log.info("worker %s registered: %d slots, %s", worker_id, state.slots, state.key)
        asyncio.ensure_future(self._monitor(worker_id, handle))
        if self._watchdog is None:
            self._watchdog = asyncio.ensure_future(self._watch_workers())
        async with self._registered:
            self._registered.notify_all()
        self._roomy()

    async def wait_for_workers(self, n: int, timeout: float) -> int:
        """Wait until `n` workers are registered (at most `timeout` s); returns how many are."""
        async def enough() -> None:
            async with self._registered:
                await self._registered.wait_for(lambda: len(self.workers) >= n)

        try:
            await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            pass
        return len(self.workers)

    def report(self, worker_id: str, load: dict) -> None:
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        state = worker.state
        state.reported = time.monotonic()
        state.chunk_seconds = load["chunk_seconds"]  # (which sessions it holds: the table says)
        state.capacity = load.get("capacity")
        state.behind = bool(load.get("behind", False))
        if self._queue:
            self._roomy()

    async def drain(self, worker_id: str, hand_over: bool = True) -> int:
        """Take no new sessions on this worker; with `hand_over`, move its sessions to other
        workers (module docstring). Returns how many sessions it still has."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return 0
        worker.state.draining = True
        log.info("worker %s: draining%s", worker_id, " (handing its sessions over)" if hand_over else "")
        if hand_over:
            moving = [s for s in self.sessions.values() if s.worker == worker_id]
            for session in moving:
                session.epoch += 1  # from now on its log and commits come from the new owner
            await asyncio.gather(*(self._restore(s, f"worker {worker_id} is draining", leaving=worker)
                                   for s in moving))
        return len(worker.state.sessions)

    def info(self) -> Any:
        """The StreamInfo of the first registered worker (what the page is told), or None."""
        first = min(self.workers.values(), key=lambda w: w.state.order, default=None)
        return None if first is None else first.info

    def health(self) -> dict:
        now = time.monotonic()
        workers = [
            {
                "worker": w.state.id,
                "node": w.state.node,
                "pid": w.state.pid,
                "sessions": w.state.used,
                "slots": w.state.slots,
                "key": w.state.key,
                "real_time_sessions": w.state.real_time,
                "behind": w.state.behind,
                "chunk_ms": None if w.state.chunk_seconds is None else round(w.state.chunk_seconds * 1000, 1),
                "draining": w.state.draining,
                "last_report_s": round(now - w.state.reported, 2),
            }
            for w in sorted(self.workers.values(), key=lambda w: w.state.order)
        ]
        states = [w.state for w in self.workers.values()]
        slots = sum(s.slots for s in states if not s.draining)
        snapshots = [s.snapshot for s in self.sessions.values() if s.snapshot is not None]
        return {"sessions": len(self.sessions), "slots": slots, "workers": workers,
                "real_time_sessions": sum(s.real_time for s in states if not s.draining),
                "admitting": place(states) is not None, "reason": full_reason(states) if place(states) is None else "",
                "queued": len(self._queue),
                "snapshots": len(snapshots), "snapshot_bytes": sum(len(data) for _, data in snapshots)}

    # ------------------------------------------------------------ sessions

    async def open(self, sdp: str, prompt: str, seed: int | None, key: str | None = None, ticket: str = "",
                   wait: float = 0.0) -> dict:
        """Place a new session and have its worker answer `sdp`: {"type": "answer", "sdp",
        "session", "worker"}, or {"type": "error", "code", "detail"} (code "server_full":
        the detail is the reason alone). With no room, and a `ticket` and `wait` seconds,
        wait in line that long first (module docstring)."""
        states = [w.state for w in self.workers.values()]
        state = None if self._queue else place(states, key)  # (no one passes those in line)
        if state is None and ticket and wait > 0 and len(self._queue) >= LINE_MAX:
            return {"type": "error", "code": "server_full",
                    "detail": f"{full_reason(states)}, and {LINE_MAX} viewers are waiting in line already"}
        if state is None and ticket and wait > 0:
            state = await self._wait_in_line(ticket, key, wait)
            if ticket in self._left:
                self._left.discard(ticket)
                return {"type": "error", "code": "cancelled", "detail": "the viewer left the line"}
            if state is None:
                states = [w.state for w in self.workers.values()]
                return {"type": "error", "code": "server_full",
                        "detail": f"{full_reason(states)}; waited {wait:g} s in line"}
        if state is None:
            return {"type": "error", "code": "server_full", "detail": full_reason(states)}
        worker = self.workers[state.id]
        session_id = secrets.token_urlsafe(16)  # 128 random bits: not guessable
        seed = secrets.randbelow(2**32) if seed is None else seed
        self.sessions[session_id] = _Session(session_id, state.id, 0, prompt, seed, state.key)
        self.logs[session_id] = _Log(self._record_dir / f"{session_id}.jsonl" if self._record_dir else None)
        state.opening += 1
        start = time.perf_counter()
        try:
            reply = await worker.handle.open.remote(session_id, 0, sdp, prompt, seed)
        except Exception as e:  # a Ray error: the worker died or is unreachable
            log.warning("worker %s failed to open a session: %s", state.id, e)
            reply = {"error": "generation_failed", "detail": f"worker {state.id} failed: {type(e).__name__}"}
            self._drop_worker(state.id, f"open failed: {type(e).__name__}")
        finally:
            state.opening -= 1
        if "error" in reply:
            self.sessions.pop(session_id, None)
            self.logs.pop(session_id, None)
            return {"type": "error", "code": reply["error"], "detail": reply["detail"]}
        state.sessions.add(session_id)
        log.info("session %s: on worker %s (placed and answered in %.0f ms; %d/%d there)", session_id, state.id,
                 (time.perf_counter() - start) * 1000, len(state.sessions), state.slots)
        return {"type": "answer", "sdp": reply["sdp"], "session": session_id, "worker": state.id}

    def queue_position(self, ticket: str) -> dict:
        """{"position": 1 for the next in line (0: not in line), "reason": why it waits}."""
        position = self._queue.index(ticket) + 1 if ticket in self._queue else 0
        return {"position": position, "reason": full_reason([w.state for w in self.workers.values()])}

    def leave_queue(self, ticket: str) -> None:
        """The viewer waiting with `ticket` left: its place goes to the next."""
        if ticket in self._queue:
            self._left.add(ticket)
            self._roomy()

    async def close(self, session_id: str) -> None:
        """The viewer left: end the session on its worker, keep its log."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        self._roomy()
        await self._let_go(session)
        worker = self.workers.get(session.worker)
        if worker is not None:
            worker.state.sessions.discard(session_id)
            try:
                await worker.handle.close.remote(session_id)
            except Exception as e:  # a Ray error: the worker is gone, and the session with it
                log.warning("worker %s: closing session %s failed: %s", session.worker, session_id, e)
        self._retire_log(session_id)

    def ended(self, session_id: str, epoch: int, reason: str) -> None:
        """A worker ended a session on its side (its peer left, the model failed)."""
        session = self.sessions.get(session_id)
        if session is None or session.epoch != epoch:
            return
        worker = self.workers.get(session.worker)
        if worker is not None:
            worker.state.sessions.discard(session_id)
            self._roomy()
        session.notices.put_nowait({"type": "ended", "reason": reason})

    async def watch(self, session_id: str) -> dict:
        """The session's next notice for its viewer's socket: {"type": "ended", "reason"}."""
        session = self.sessions.get(session_id)
        if session is None:
            return {"type": "ended", "reason": "no such session"}
        return await session.notices.get()

    def commit(self, session_id: str, epoch: int, chunks: int) -> None:
        """A worker made a session's chunk: `chunks` made so far."""
        session = self.sessions.get(session_id)
        if session is not None and session.epoch == epoch:
            session.chunks = max(session.chunks, chunks)

    def snapshot(self, session_id: str, epoch: int, chunks: int, data: bytes) -> None:
        """A worker's snapshot of a session after `chunks` chunks (the latest is kept)."""
        session = self.sessions.get(session_id)
        if session is not None and session.epoch == epoch and (session.snapshot is None
                                                               or chunks > session.snapshot[0]):
            session.snapshot = (chunks, data)

    async def reoffer(self, session_id: str, sdp: str) -> dict:
        """A moved session's viewer offers again: as `open` answers."""
        session = self.sessions.get(session_id)
        worker = None if session is None else self.workers.get(session.worker)
        if worker is None:
            return {"type": "error", "code": "unexpected", "detail": "no such session"}
        try:
            reply = await worker.handle.attach.remote(session_id, session.epoch, sdp)
        except Exception as e:  # a Ray error: that worker died too (its monitor handles it)
            reply = {"error": "generation_failed", "detail": f"worker {worker.state.id} failed: {type(e).__name__}"}
        if "error" in reply:
            return {"type": "error", "code": reply["error"], "detail": reply["detail"]}
        await self._let_go(session)
        return {"type": "answer", "sdp": reply["sdp"], "session": session_id, "worker": worker.state.id}

    def append_log(self, session_id: str, epoch: int, index: int, line: str) -> None:
        session = self.sessions.get(session_id)
        store = self.logs.get(session_id)
        if store is None or session is not None and session.epoch != epoch:
            return  # an ended session's straggler, or a fenced owner's line
        store.put(index, line)

    def log_text(self, session_id: str) -> str | None:
        store = self.logs.get(session_id) or self._ended.get(session_id)
        return None if store is None else store.text()

    def where(self, session_id: str) -> dict | None:
        """{"worker", "epoch"} of a live session (for tests and tools)."""
        session = self.sessions.get(session_id)
        return None if session is None else {"worker": session.worker, "epoch": session.epoch}

    def moves(self, session_id: str) -> list[dict] | None:
        """A live session's moves so far ({"worker", "chunk", "replayed", "ms"} each) and its
        latest snapshot's chunk: for tests, tools and the bench."""
        session = self.sessions.get(session_id)
        if session is None:
            return None
        return [*session.moves, {"snapshot": None if session.snapshot is None else session.snapshot[0]}]

    # ------------------------------------------------------------ here

    async def _wait_in_line(self, ticket: str, key: str | None, wait: float):
        """Wait (at most `wait` s) until `ticket` is first in line and a worker has room: that
        worker's state, or None (out of time, or the viewer left)."""
        self._queue.append(ticket)

        def turn() -> bool:
            if ticket in self._left:
                return True
            return self._queue[0] == ticket and place([w.state for w in self.workers.values()], key) is not None

        try:
            async with self._room:
                await asyncio.wait_for(self._room.wait_for(turn), wait)
        except TimeoutError:
            pass
        finally:
            self._queue.remove(ticket)
            self._roomy()  # the next in line may go now
        if ticket in self._left:
            return None
        return place([w.state for w in self.workers.values()], key)

    def _roomy(self) -> None:
        """Room may have appeared (a session ended, a worker joined or reported): those in
        line look again."""
        async def notify() -> None:
            async with self._room:
                self._room.notify_all()

        if self._queue:
            asyncio.ensure_future(notify())

    def _retire_log(self, session_id: str) -> None:
        store = self.logs.pop(session_id, None)
        if store is not None:
            self._ended[session_id] = store
            while len(self._ended) > ENDED_LOGS_KEPT:
                self._ended.popitem(last=False)

    def _drop_worker(self, worker_id: str, why: str) -> None:
        """A worker is gone: forget it; its sessions move to others (or end)."""
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return
        log.warning("worker %s dropped (%s)", worker_id, why)
        for session in [s for s in self.sessions.values() if s.worker == worker_id]:
            session.epoch += 1  # fences the dead owner: its late lines and commits are refused
            asyncio.ensure_future(self._restore(session, f"its worker failed ({why})"))

    async def _let_go(self, session: _Session) -> None:
        """A draining worker that still plays `session` closes its copy."""
        leaving, session.leaving = session.leaving, None
        if leaving is not None:
            try:
                await leaving.close.remote(session.id)
            except Exception as e:  # a Ray error: it went meanwhile, with its copy
                log.info("session %s: the worker it left had gone: %s", session.id, type(e).__name__)

    async def _restore(self, session: _Session, why: str, leaving: _Worker | None = None) -> None:
        """Place a session on another worker, restored from the store: its worker died, or
        is `leaving` (draining: it plays on until the viewer is back)."""
        start, epoch = time.perf_counter(), session.epoch
        states = [w.state for w in self.workers.values()]
        state = place(states, session.key, moving=True)
        if state is None:
            session.notices.put_nowait({"type": "ended", "reason": f"{why}, and {full_reason(states)}"})
            return
        worker = self.workers[state.id]
        state.opening += 1
        try:
            reply = await worker.handle.restore.remote(session.id, epoch, list(self.logs[session.id].lines),
                                                       session.chunks, session.snapshot)
        except Exception as e:  # a Ray error: that worker died as well
            reply = {"error": "generation_failed", "detail": f"worker {state.id} failed: {type(e).__name__}"}
        finally:
            state.opening -= 1
        if session.id not in self.sessions or session.epoch != epoch:
            if "error" not in reply:  # the viewer left meanwhile
                await worker.handle.close.remote(session.id)
            return
        if "error" in reply:
            session.notices.put_nowait({"type": "ended", "reason": f"{why}; moving it failed: {reply['detail']}"})
            return
        if leaving is not None:
            leaving.state.sessions.discard(session.id)
            session.leaving = leaving.handle
        session.worker = state.id
        session.chunks = reply["chunk"]
        session.moves.append({"worker": state.id, "chunk": reply["chunk"], "replayed": reply["replayed"],
                              "ms": round((time.perf_counter() - start) * 1000, 1)})
        state.sessions.add(session.id)
        log.info("session %s: moved to worker %s at chunk %d in %.0f ms (%d chunks replayed; epoch %d)",
                 session.id, state.id, reply["chunk"], (time.perf_counter() - start) * 1000, reply["replayed"], epoch)
        session.notices.put_nowait({"type": "reconnect", "worker": state.id,
                                    "detail": f"{why}; it goes on on worker {state.id}"})

    async def _monitor(self, worker_id: str, handle: Any) -> None:
        """Wait on the worker's never-ending call: it fails when the worker dies."""
        try:
            await handle.until_stopped.remote()
        except Exception as e:  # a Ray actor error: the process is gone
            worker = self.workers.get(worker_id)
            if worker is not None and worker.handle == handle:
                self._drop_worker(worker_id, f"{type(e).__name__}")

    async def _watch_workers(self) -> None:
        while True:
            await asyncio.sleep(DEAD_SECONDS / 5)
            now = time.monotonic()
            for worker_id, worker in list(self.workers.items()):
                if now - worker.state.reported > DEAD_SECONDS:
                    self._drop_worker(worker_id, f"no report for {now - worker.state.reported:.1f} s")


def controller_options(detached: bool) -> dict:
    """Ray options of the controller actor: named in livereel's namespace; no CPU of its
    own (it waits on calls); detached where it should outlive the gateway that made it."""
    from streamer.cluster import CONTROLLER_NAME, NAMESPACE

    options: dict = {"name": CONTROLLER_NAME, "namespace": NAMESPACE, "num_cpus": 0, "get_if_exists": True,
                     "max_concurrency": 1000}
    if detached:
        options["lifetime"] = "detached"
    return options
