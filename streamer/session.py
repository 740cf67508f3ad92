"""One interactive stream: its Generator, the controls waiting for the next chunk, the
event log, and a bounded queue of frames ahead of playback.

Two threads touch a session, and every method says which:
- the scheduler's worker thread calls `timing` and `step` (or `begin_step`, then `end_step`);
- the event loop calls `control`, `next_frame`, `stats` and `close`.
Shared state is behind one lock, held only for queue and dict updates, never while
the model runs.

Controls are latest-wins: a second camera message before the next chunk boundary
replaces the first. Prompt, camera and reset wait for the next chunk (the Generator
applies them at the start of its step); pause and resume act on playback at once.

The event log is JSON lines: a header, then one line per control with the stream
frame at which it took effect (frames counted from 0 over the whole session, the
same numbering as `applied` messages):

    {"what": "header", "version": 1, "session": "...", "model": "debug", "seed": 0,
     "fps": 16, "size": 128, "frames_per_chunk": 12, "steps": 4, "warm_start": 0, "guidance": 1.0,
     "prompt": "...",
     "started": "2025-01-01T12:00:00+00:00"}
    {"what": "prompt", "frame": 48, "text": "snowy forest", "transition": 0}
    {"what": "camera", "frame": 60, "pan": [0.5, 0.0], "zoom": 0.0}
    {"what": "pause", "frame": 72}
    {"what": "resume", "frame": 72}
    {"what": "reset", "frame": 84, "seed": 7}

Frames never go back from one line to the next. Pause and resume change what is shown,
not what is made: the picture freezes at once, and their frame is where generation
stopped and went on (the frames queued at the pause play after the resume), so a
replay that ignores them makes the same frames.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from streamer.controls import Applied, Camera, Pause, Prompt, Reset, Resume, Stats, Vocabulary, Word

if TYPE_CHECKING:
    from model.generate import Generator, StreamModel
    from model.sampling import Sampling

log = logging.getLogger(__name__)

LOG_VERSION = 1
QUEUE_CHUNKS = 2
"""Hard bound on the frame queue, in chunks. The scheduler starts a chunk just in time
(about one chunk ahead); this bound only matters when it cannot keep up."""


@dataclass(frozen=True)
class StreamInfo:
    """What a client and the log need to know about the stream's model."""

    model: str
    fps: int
    size: int
    """The frames' height in pixels (their width too, unless `width` says otherwise)."""
    frames_per_chunk: int
    steps: int
    warm_start: int = 0
    guidance: float = 1.0
    anchor: float = 0.0
    rewrite: bool = False
    """Whether prompts are reworded in the model's caption grammar (`Sampling.rewrite`)."""
    width: int | None = None
    camera: bool = True
    """Whether the model follows camera controls."""
    camera_note: str | None = None
    """Why it does not, for the page."""
    recipe: dict | None = None
    """A recipe-sampled model's recipe (model/wan/config.py), for the log and replay."""
    vocabulary: Vocabulary | None = None
    """Every word the model knows, when its vocabulary is closed (None: any wording)."""

    def reads(self, prompt: str) -> str | None:
        """`prompt` as the model reads it, where the prompt rewrite changes it (else None);
        as the Generator, only a closed vocabulary is reworded."""
        if not self.rewrite or self.vocabulary is None:
            return None
        from model.world import grammar_prompt

        reworded = grammar_prompt(prompt)
        return None if reworded == prompt else reworded

    def explain(self, prompt: str) -> list[Word] | None:
        """What the model makes of each word of `prompt`, when its vocabulary is closed."""
        if self.vocabulary is None:
            return None
        from model.world import explain_prompt

        return [Word(**entry) for entry in explain_prompt(prompt)]

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of a frame."""
        return self.size, self.size if self.width is None else self.width

    @classmethod
    def of(cls, model: StreamModel, sampling: Sampling) -> StreamInfo:
        """The stream of a model (anything with the Generator's model protocol) sampled
        with `sampling`."""
        cfg = model.config
        height, width = cfg.frame_size
        vocabulary = None
        if getattr(model, "closed_vocabulary", False):
            from model.world import vocabulary as world_vocabulary

            vocabulary = world_vocabulary()
        return cls(model=cfg.name, fps=cfg.fps, size=height, width=None if width == height else width,
                   frames_per_chunk=cfg.frames_per_chunk, camera=model.camera,
                   camera_note=None if model.camera else model.camera_note, vocabulary=vocabulary,
                   **model.sampling_record(sampling))


@dataclass(frozen=True)
class Played:
    """One tick of playback: the frame to show and what it brings."""

    index: int
    """Stream index of the frame (a held frame keeps its index)."""
    frame: np.ndarray
    """(H, W, 3) uint8 RGB."""
    held: bool
    """True when the frame repeats because generation was late (not for pauses)."""
    applied: list[tuple[Applied, float]]
    """Controls whose first frame this is, each with seconds since it was received."""


@dataclass(frozen=True)
class _Notice:
    applied: Applied
    received: float  # time.monotonic() when the control arrived


class EventLog:
    """JSON lines, kept in memory and, with a path, appended to a file as they come."""

    def __init__(self, header: dict[str, Any], path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._file = path.open("w", encoding="utf-8") if path is not None else None
        self._listener: Callable[[int, str], None] | None = None
        self.add(header)

    def add(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, default=_to_builtin)
        with self._lock:
            self._lines.append(line)
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
            if self._listener is not None:
                self._listener(len(self._lines) - 1, line)

    def listen(self, listener: Callable[[int, str], None]) -> None:
        """Call `listener(index, line)` for each line written so far and every later one, in
        order (under the log's lock: it must be quick; cluster mode relays lines with it)."""
        with self._lock:
            self._listener = listener
            for index, line in enumerate(self._lines):
                listener(index, line)

    def text(self) -> str:
        with self._lock:
            return "".join(line + "\n" for line in self._lines)

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(line) for line in self._lines]

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


@dataclass
class _Work:
    """A step in progress: the controls handed to the generator, and the reset epoch."""

    staged: dict[str, tuple[Prompt | Camera | Reset, float]]
    epoch: int


class Session:
    """One stream. See the module docstring for which thread calls what."""

    def __init__(
        self,
        generator: Generator,
        info: StreamInfo,
        *,
        prompt: str,
        session_id: str | None = None,
        record_dir: Path | None = None,
    ) -> None:
        self.id = session_id or secrets.token_urlsafe(16)  # 128 random bits: not guessable
        self.generator = generator
        self.info = info
        self.capacity = QUEUE_CHUNKS * info.frames_per_chunk
        self.ready = asyncio.Event()
        """Set (on the loop) once the first chunk is queued: playback may start."""

        self._lock = threading.Lock()
        self._staged: dict[str, tuple[Prompt | Camera | Reset, float]] = {}
        self._frames: deque[tuple[int, np.ndarray]] = deque()
        self._notices: deque[_Notice] = deque()
        self._epoch = 0  # bumped by reset: chunks started before it are dropped
        self._current: tuple[int, np.ndarray] | None = None
        self.paused = False
        self.error: str | None = None
        self.prompt = prompt
        """The prompt of the newest chunk (the first one's is staged here)."""
        self._staged["prompt"] = (Prompt(type="prompt", text=prompt), time.monotonic())

        self.frames_made = 0
        self.chunks_made = 0
        self.frames_sent = 0
        self.frames_held = 0
        self.chunk_seconds = 0.0
        """Generation time of the last chunk."""
        self.chunk_seconds_avg: float | None = None
        """Moving average of the generation time, None before the first chunk."""

        path = record_dir / f"{self.id}.jsonl" if record_dir is not None else None
        self.log = EventLog(
            {
                "what": "header",
                "version": LOG_VERSION,
                "session": self.id,
                "model": info.model,
                "seed": generator.seed,
                "fps": info.fps,
                "size": info.size,
                **({} if info.width is None else {"width": info.width}),
                "frames_per_chunk": info.frames_per_chunk,
                "steps": info.steps,
                "warm_start": info.warm_start,
                "guidance": info.guidance,
                **({"anchor": info.anchor} if info.anchor else {}),
                **({"rewrite": True} if info.rewrite else {}),
                **({} if info.recipe is None else {"recipe": info.recipe}),
                "prompt": prompt,
                "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            },
            path,
        )

    # ------------------------------------------------------------ event loop

    def control(self, msg: Prompt | Camera | Pause | Resume | Reset) -> Applied | None:
        """Take a client's control. Pause and resume act now and return their `applied`;
        the others wait for the next chunk and are acknowledged when its first frame plays."""
        now = time.monotonic()
        if isinstance(msg, (Pause, Resume)):
            with self._lock:  # with step's bookkeeping: log frames never go back
                self.paused = isinstance(msg, Pause)
                applied = Applied(what=msg.type, frame=self.frames_made)
                self.log.add(applied.model_dump(exclude={"type"}, exclude_none=True))
            return applied
        with self._lock:
            self._staged[msg.type] = (msg, now)
            if isinstance(msg, Reset):
                # A restart: what is queued belongs to the old stream.
                self._frames.clear()
                self._epoch += 1
        return None

    def next_frame(self) -> Played | None:
        """The frame for this playback tick: the next queued one, or the current one
        held (paused, or generation late). None before the first chunk."""
        now = time.monotonic()
        with self._lock:
            held = False
            if self._frames and (not self.paused or self._current is None):
                self._current = self._frames.popleft()
            elif self._current is None:
                return None  # nothing made yet (or a reset emptied the queue first)
            else:
                held = not self.paused
            index, frame = self._current
            applied = []
            while self._notices and self._notices[0].applied.frame <= index:
                n = self._notices.popleft()
                applied.append((n.applied, now - n.received))
        self.frames_sent += 1
        self.frames_held += held
        return Played(index, frame, held, applied)

    def stats(self) -> Stats:
        with self._lock:
            frame = self._current[0] if self._current is not None else 0
            queued = len(self._frames)
        return Stats(
            frame=frame,
            chunk=self.chunks_made,
            queued=queued,
            chunk_ms=round(self.chunk_seconds * 1000, 1),
            sent=self.frames_sent,
            held=self.frames_held,
            paused=self.paused,
        )

    def close(self) -> None:
        self.log.close()

    def resume_at(self, chunks: int) -> None:
        """Go on from a generator restored to where another process's stream stood after
        `chunks` chunks (cluster mode's failover): its controls are applied already, so
        nothing is staged, and frames are counted on from there. Before the first step."""
        with self._lock:
            self._staged.clear()
            self.chunks_made = chunks
            self.frames_made = chunks * self.info.frames_per_chunk

    # ------------------------------------------------------------ worker thread

    def timing(self) -> tuple[float, float] | None:
        """(seconds of playback queued, seconds until a chunk fits in the queue), or
        None while paused or failed. The session's deadline is now + the first."""
        with self._lock:
            if self.paused or self.error is not None:
                return None
            queued = len(self._frames)
        over = queued + self.info.frames_per_chunk - self.capacity
        return queued / self.info.fps, max(over, 0) / self.info.fps

    def step(self) -> None:
        """Generate one chunk under the staged controls and queue it. Raises what the
        model raises; the scheduler ends the session then."""
        work = self.begin_step()
        start = time.perf_counter()
        frames = self.generator.next_frames()  # (F, H, W, 3) uint8
        self.end_step(work, frames, time.perf_counter() - start)

    def begin_step(self) -> _Work:
        """The first half of `step`: hand the staged controls to the generator. The
        scheduler then makes the chunk (alone, or batched with other sessions' chunks)
        and passes it to `end_step`."""
        with self._lock:
            staged, self._staged = self._staged, {}
            epoch = self._epoch
        gen = self.generator
        for msg, _ in staged.values():
            if isinstance(msg, Prompt):
                gen.set_prompt(msg.text, transition=msg.transition)
            elif isinstance(msg, Camera):
                gen.set_camera(pan=msg.pan, zoom=msg.zoom)
            else:
                gen.reset(msg.seed)
        return _Work(staged, epoch)

    def end_step(self, work: _Work, frames: np.ndarray, seconds: float) -> None:
        """The second half of `step`: queue the chunk `frames` that took `seconds` to make,
        log and acknowledge the controls it applied."""
        staged, epoch = work.staged, work.epoch
        gen = self.generator
        self.chunk_seconds = seconds
        avg = self.chunk_seconds_avg
        self.chunk_seconds_avg = self.chunk_seconds if avg is None else 0.8 * avg + 0.2 * self.chunk_seconds

        with self._lock:
            first = self.frames_made
            self.frames_made += len(frames)
            self.chunks_made += 1
            for entry in gen.applied:
                event = {**entry, "frame": first}
                self.log.add(event)
                if entry["what"] == "prompt":
                    self.prompt = entry["text"]
                fields = {k: _to_builtin(v) for k, v in event.items() if k in Applied.model_fields}
                if entry["what"] == "prompt":
                    fields["words"] = self.info.explain(entry["text"])
                    fields["reads"] = self.info.reads(entry["text"])
                applied = Applied.model_validate(fields)
                received = staged[entry["what"]][1] if entry["what"] in staged else time.monotonic()
                self._notices.append(_Notice(applied, received))
            if epoch == self._epoch:
                self._frames.extend(zip(range(first, first + len(frames)), frames))
            else:
                log.debug("session %s: dropped a chunk made before a reset", self.id)


def _to_builtin(value: Any) -> Any:
    """numpy scalars and arrays, tuples -> JSON-able Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return [_to_builtin(v) for v in value]
    return value
