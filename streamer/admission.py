"""Admission by measured capacity: a server takes a new session only while every session,
the new one included, can still be made in real time on its device.

Real time: with n sessions the scheduler makes a round of n chunks (one batched step when
the model batches, n steps when it does not) while playback uses up one chunk of video,
`frames_per_chunk / fps` seconds (the budget). `measure` times rounds at start-up for
n = 1, 2, ... (random prompts, throwaway streams; it also warms every batch shape an
engine compiles) and stops at the first n past the budget. Under load the rounds the
server really makes are timed too: their ratio to the start-up figure (the load factor:
video encoding, the network, other programs) scales every prediction; and while the
sessions playing now repeat more than `MAX_HELD` of their frames (generation late), no
new one is taken until they catch up.

    admit n+1  <=>  n+1 <= limit  and  T(n+1) x load <= HEADROOM x budget  and  held <= MAX_HELD

A Capacity never measured (`livereel serve --admission limit`, and the servers tests
build) admits up to its limit and nothing else.

`HEADROOM` leaves a fifth of the budget for what a chunk's timing does not see (the
first chunk after a switch takes all steps from noise; encoding; jitter).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

HEADROOM = 0.8
"""Share of the budget a round may take."""
WARM_CHUNKS = 2
"""Chunks made before timing (the first from noise; an engine compiles a new batch shape)."""
TIMED_CHUNKS = 3
LOAD_SMOOTHING = 0.2
"""Weight of the newest round in the load factor's moving average."""
LAG_SECONDS = 5.0
"""The window of played frames that `MAX_HELD` looks at."""
MAX_HELD = 0.05
"""Share of repeated frames in that window past which the sessions are behind real time."""
MIN_FRAMES = 32
"""Frames in the window before the share counts (a new session's first chunk may be late)."""
MEASURE_PROMPT = "a red ball bouncing over a meadow by day under clear skies"


@dataclass(frozen=True)
class Decision:
    admit: bool
    reason: str
    """Why, in words for the refused viewer and the log."""


class Capacity:
    """How many sessions one device makes in real time: measured at start, corrected by
    what it measures under load. Thread-safe (the scheduler's worker reports rounds)."""

    def __init__(self, *, limit: int, budget: float, batched: bool, headroom: float = HEADROOM) -> None:
        """`limit`: never more sessions than this (--max-sessions); `budget`: seconds of
        video a chunk holds; `batched`: the scheduler makes a round as one batched step."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1 (got {limit})")
        self.limit = limit
        self.budget = budget
        self.batched = batched
        self.headroom = headroom
        self.round_seconds: dict[int, float] = {}
        """Start-up seconds of a round of n sessions (n measured ones only)."""
        self.load = 1.0
        self._played: deque[tuple[float, bool]] = deque()  # (when, held) of frames played lately
        self._lock = threading.Lock()

    # ------------------------------------------------------------ start-up

    def measure(self, make_generator: Callable[[int], Any], step_many: Callable[[list], list] | None,
                progress: Callable[[str], None] | None = None) -> None:
        """Time rounds of n = 1, 2, ... sessions until one is past the budget (or `limit`)."""
        gens: list[Any] = []
        for n in range(1, self.limit + 1):
            gen = make_generator(10_000 + n)
            gen.set_prompt(MEASURE_PROMPT)
            gens.append(gen)
            times = []
            for i in range(WARM_CHUNKS + TIMED_CHUNKS):
                start = time.perf_counter()
                if self.batched and n > 1 and step_many is not None:
                    step_many(gens)
                else:
                    for g in gens:
                        g.next_frames()
                if i >= WARM_CHUNKS:
                    times.append(time.perf_counter() - start)
            self.round_seconds[n] = statistics.median(times)
            if progress is not None:
                progress(f"{n} session{'s' if n > 1 else ''}: a round takes {self.round_seconds[n] * 1000:.0f} ms "
                         f"of a {self.budget * 1000:.0f} ms budget")
            if self.round_seconds[n] > self.headroom * self.budget:
                break
        log.info("capacity: %s", self.describe())

    def predict(self, n: int) -> float:
        """Seconds of a round of `n` sessions at start-up: measured, or extrapolated from
        the largest measured one (a round grows at least in proportion past it)."""
        if not self.round_seconds:
            return 0.0
        if n in self.round_seconds:
            return self.round_seconds[n]
        top = max(self.round_seconds)
        return self.round_seconds[top] * n / top

    @property
    def sessions(self) -> int:
        """Sessions in real time as measured now (at least 1: one session is always taken,
        a slow device plays it with repeated frames rather than not at all)."""
        with self._lock:
            load = self.load
        n = 1
        while n < self.limit and self.predict(n + 1) * load <= self.headroom * self.budget:
            n += 1
        return n

    # ------------------------------------------------------------ under load

    def observe_round(self, n: int, seconds: float) -> None:
        """A round of `n` sessions took `seconds` (from the scheduler's worker)."""
        expected = self.predict(n)
        if expected <= 0:
            return
        with self._lock:
            self.load = (1 - LOAD_SMOOTHING) * self.load + LOAD_SMOOTHING * max(seconds / expected, 1.0)

    def observe_frame(self, held: bool) -> None:
        """A session played a frame: a new one, or (`held`) a repeat because its chunk was late."""
        now = time.monotonic()
        with self._lock:
            self._played.append((now, held))
            while self._played[0][0] < now - LAG_SECONDS:
                self._played.popleft()

    @property
    def held_share(self) -> float:
        """Share of the frames played in the last `LAG_SECONDS` that were repeats (0 with
        fewer than `MIN_FRAMES`)."""
        now = time.monotonic()
        with self._lock:
            recent = [held for when, held in self._played if when >= now - LAG_SECONDS]
        return sum(recent) / len(recent) if len(recent) >= MIN_FRAMES else 0.0

    @property
    def behind(self) -> bool:
        """The sessions playing now repeat more than `MAX_HELD` of their frames (measured
        capacity only: a never-measured one admits by its limit alone)."""
        return bool(self.round_seconds) and self.held_share > MAX_HELD

    # ------------------------------------------------------------ decisions

    def decide(self, running: int) -> Decision:
        """Whether one more session may start next to `running` ones, and why."""
        cap = self.sessions
        if running >= self.limit:
            return Decision(False, "the one session this server allows is in use" if self.limit == 1
                            else f"all {self.limit} sessions this server allows are in use")
        if running >= cap:
            return Decision(False, f"this machine streams {cap} session{'s' if cap > 1 else ''} in real time "
                                   f"and {'all are' if cap > 1 else 'it is'} in use")
        if running and self.behind:
            return Decision(False, "the sessions streaming now are behind real time; one more would slow them")
        return Decision(True, f"{running + 1} of {cap} real-time sessions")

    def describe(self) -> str:
        measured = ", ".join(f"{n}: {s * 1000:.0f} ms" for n, s in sorted(self.round_seconds.items()))
        return (f"{self.sessions} of at most {self.limit} sessions in real time (a round of chunks by sessions "
                f"{measured}; budget {self.budget * 1000:.0f} ms, {self.headroom:.0%} of it usable; "
                f"load factor {self.load:.2f})")

    def snapshot(self, running: int) -> dict:
        """For /healthz: what the server holds and would take."""
        decision = self.decide(running)
        return {
            "capacity": self.sessions,
            "limit": self.limit,
            "admitting": decision.admit,
            "reason": decision.reason,
            "round_ms": {str(n): round(s * 1000, 1) for n, s in sorted(self.round_seconds.items())},
            "budget_ms": round(self.budget * 1000, 1),
            "load": round(self.load, 3),
            "held_share": round(self.held_share, 3),
        }

