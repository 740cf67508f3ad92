"""Runs the sessions of one device in one worker thread, so that the event loop never
waits on the model.

Which session goes next: earliest deadline first, where a session's deadline is when
its queue runs dry (now + frames queued / fps). A session is served just in time: only
once its queue holds less than one round of work (the recent chunk times of all
running sessions) plus a small margin, and only if the chunk fits in its queue. So
generation stays about one chunk ahead of playback; no work is wasted on frames that
would wait, and latency does not grow. When the device is too slow, queues run dry
and the tracks repeat their last frame; nothing piles up.

Results go back to the event loop with `loop.call_soon_threadsafe`. An exception in
one session's step ends that session (its `on_error` runs on the loop) while the
others go on.

Batching: given `step_many` (e.g. `model.generate.next_frames_batch`), sessions whose
generators share a `batch_key()` (the same model and sampler settings) are made in one
batched forward. The batch is the most urgent session plus, up to `max_batch`, the
others of its key that have room in their queue and would fall due within the lead's
chunk time; so sessions fall into step and stay there. On the two cores of a laptop-
class CPU, two batched sessions cost about 1.6 chunks of one (`livereel bench`). A
batched step that fails ends every session in it (they share the model that failed).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streamer.session import Session

log = logging.getLogger(__name__)

MARGIN_FRAMES = 2
"""Frames of slack on top of the expected work, for timing jitter."""
MAX_IDLE_WAIT = 0.5
"""Longest sleep between looks at the sessions (seconds)."""


class SchedulerFull(RuntimeError):
    """The device already runs its maximum number of sessions."""


@dataclass
class _Entry:
    session: Session
    on_error: Callable[[BaseException], None]
    served: int = 0  # steps run; breaks deadline ties in round-robin order


class Scheduler:
    """One worker thread running the chunks of up to `max_sessions` sessions."""

    def __init__(
        self,
        *,
        max_sessions: int,
        device: str = "cpu",
        on_chunk: Callable[[Session], None] | None = None,
        step_many: Callable[[list], list[np.ndarray]] | None = None,
        max_batch: int = 4,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        """`on_chunk(session)` runs on the worker thread after each chunk (metrics:
        `session.chunk_seconds`); it must be quick and thread-safe. `step_many(generators)`
        makes one chunk of frames for each of several generators with equal `batch_key()`s
        (None: every session steps alone). `on_step(n, seconds)` runs on the worker thread
        after each step of `n` sessions (one batched step, or one alone) that took `seconds`
        (admission by capacity times the device under load with it)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 (got {max_batch})")
        self.max_sessions = max_sessions
        self.device = device
        self.max_batch = max_batch if step_many is not None else 1
        self._step_many = step_many
        self._on_chunk = on_chunk
        self._on_step = on_step
        self._cond = threading.Condition()
        self._entries: dict[str, _Entry] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ event loop

    def start(self) -> None:
        """Start the worker; call from the event loop that is to receive results."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name=f"livereel-{self.device}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the worker after the step in progress (blocks for that step, or at most
        `timeout` seconds: the thread is a daemon and does not hold up the process)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def add(self, session: Session, on_error: Callable[[BaseException], None]) -> None:
        """Run `session` from now on; raises `SchedulerFull` past `max_sessions`."""
        with self._cond:
            if len(self._entries) >= self.max_sessions:
                raise SchedulerFull(f"{len(self._entries)} of {self.max_sessions} sessions in use")
            self._entries[session.id] = _Entry(session, on_error)
            self._cond.notify()

    def remove(self, session: Session) -> None:
        """Stop running `session` (a step in progress still finishes)."""
        with self._cond:
            self._entries.pop(session.id, None)

    def wake(self) -> None:
        """Look at the sessions again now (a control made one runnable)."""
        with self._cond:
            self._cond.notify()

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)

    @property
    def full(self) -> bool:
        return len(self) >= self.max_sessions

    # ------------------------------------------------------------ worker thread

    def _work(self) -> None:
        while batch := self._next_batch():
            self._run(batch)

    def _next_batch(self) -> list[_Entry]:
        """Wait until some session is due; [] when stopping."""
        with self._cond:
            while not self._stopping:
                wait = self._due()
                if isinstance(wait, list):
                    return wait
                self._cond.wait(wait)
            return []

    def _due(self) -> list[_Entry] | float:
        """The sessions to run now, or how long to sleep before looking again."""
        timing = {sid: e.session.timing() for sid, e in self._entries.items()}
        running = [e for sid, e in self._entries.items() if timing[sid] is not None]
        if not running:
            return MAX_IDLE_WAIT
        # One round of work: what the next chunk of every running session should cost.
        # A session without a measured chunk yet makes everyone due now.
        work = sum(e.session.chunk_seconds_avg or float("inf") for e in running)

        def start_in(e: _Entry) -> float:
            ahead, fits_in = timing[e.session.id]
            return max(ahead - work - MARGIN_FRAMES / e.session.info.fps, fits_in)

        due = [e for e in running if start_in(e) <= 0]
        if not due:
            return min(min(start_in(e) for e in running), MAX_IDLE_WAIT)
        due.sort(key=lambda e: (timing[e.session.id][0], e.served))
        lead = due[0]
        if self.max_batch == 1:
            return [lead]
        # Companions: same key, room for a chunk now, due within the lead's chunk time.
        key = lead.session.generator.batch_key()
        soon = lead.session.chunk_seconds_avg or 0.0
        others = sorted((e for e in running if e is not lead and timing[e.session.id][1] <= 0
                         and start_in(e) <= soon and e.session.generator.batch_key() == key),
                        key=lambda e: (timing[e.session.id][0], e.served))
        return [lead, *others[: self.max_batch - 1]]

    def _run(self, batch: list[_Entry]) -> None:
        assert self._loop is not None
        for entry in batch:
            entry.served += 1
        start = time.perf_counter()
        try:
            if len(batch) == 1:
                batch[0].session.step()
            else:
                works = [e.session.begin_step() for e in batch]
                start = time.perf_counter()
                frames = self._step_many([e.session.generator for e in batch])
                seconds = time.perf_counter() - start
                for e, work, f in zip(batch, works, frames):
                    e.session.end_step(work, f, seconds)
        except Exception as e:  # the model failed: end the sessions of this step, keep the others
            for entry in batch:
                session = entry.session
                log.exception("session %s: generation failed; ending it", session.id)
                session.error = f"{type(e).__name__}: {e}"
                self.remove(session)
                self._loop.call_soon_threadsafe(entry.on_error, e)
            return
        if self._on_step is not None:
            self._on_step(len(batch), time.perf_counter() - start)
        for entry in batch:
            session = entry.session
            if self._on_chunk is not None:
                self._on_chunk(session)
            if not session.ready.is_set():
                self._loop.call_soon_threadsafe(session.ready.set)
