"""Where a new session goes, and why none may: the controller's policy as pure functions
over what the workers last reported (no Ray here; tested on its own).

Fill first: a session goes to the busiest worker that still has a free slot, so work
packs onto the fewest devices (an idle one can be given back, and batched sessions cost
less than lone ones: streamer/scheduler.py). Among workers with room, one that runs the
requested model and settings (its `key`) comes before one that does not; ties go to
the worker that registered first. A worker never takes more sessions than its slots,
nor more than it streams in real time as it measured them (its `capacity`:
streamer/admission.py, reported with its load), nor any while the sessions it has are
behind real time; a draining one takes none. A session moving off a failed or draining
worker may go past a worker's real-time capacity (slowed, rather than ended), never
past its slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorkerState:
    """One worker as the controller sees it."""

    id: str
    slots: int
    key: str
    """The model and sampling settings it runs (sessions of one key can batch)."""
    order: int
    """Registration order (ties in placement)."""
    node: str = ""
    pid: int | None = None
    """Its process on its node (for operators: /healthz)."""
    sessions: set[str] = field(default_factory=set)
    opening: int = 0
    """Offers placed here and not yet answered: they hold a slot."""
    chunk_seconds: float | None = None
    """Its scheduler's latest chunk time, as reported."""
    reported: float = 0.0
    """time.monotonic() of its latest report."""
    draining: bool = False
    capacity: int | None = None
    """Sessions it streams in real time, as it measured and reports them (None: its slots)."""
    behind: bool = False
    """Its sessions repeat frames now (generation late): it takes no new one meanwhile."""

    @property
    def used(self) -> int:
        return len(self.sessions) + self.opening

    @property
    def real_time(self) -> int:
        """Sessions it may hold in real time: its slots, or fewer as measured."""
        return self.slots if self.capacity is None else max(min(self.capacity, self.slots), 1)

    @property
    def free(self) -> int:
        """Room for new viewers' sessions."""
        if self.draining or (self.behind and self.used):
            return 0
        return max(self.real_time - self.used, 0)

    @property
    def free_slots(self) -> int:
        """Room for a session that moves here (slots alone)."""
        return 0 if self.draining else max(self.slots - self.used, 0)


def place(workers: list[WorkerState], key: str | None = None, moving: bool = False) -> WorkerState | None:
    """The worker for one more session of `key` (None: any), or None when there is no
    room; `moving`: a session moving off another worker (slots alone count)."""
    room = [w for w in workers if (w.free_slots if moving else w.free) > 0]
    if not room:
        return None
    return min(room, key=lambda w: (key is not None and w.key != key, -w.used, w.order))


def full_reason(workers: list[WorkerState]) -> str:
    """Why `place` found no room, in words for the refused viewer."""
    live = [w for w in workers if not w.draining]
    if not live:
        return "no worker is ready" if not workers else f"all {len(workers)} workers are draining"
    n = f"{len(live)} worker{'s' if len(live) != 1 else ''}"
    slots, real_time = sum(w.slots for w in live), sum(w.real_time for w in live)
    if any(w.behind and w.used and w.real_time > w.used for w in live):
        return f"the sessions of {n} are behind real time; one more would slow them"
    if real_time < slots:
        return (f"the {n} stream {real_time} session{'s' if real_time != 1 else ''} in real time "
                f"({slots} slots) and all are in use")
    return f"all {slots} sessions of {n} are in use"
