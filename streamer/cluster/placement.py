"""Where a new session goes, and why none may: the controller's policy as pure functions
over what the workers last reported (no Ray here; tested on its own).

Fill first: a session goes to the busiest worker that still has a free slot, so work
packs onto the fewest devices (an idle one can be given back, and batched sessions cost
less than lone ones: streamer/scheduler.py). Among workers with room, one that runs the
requested model and settings (its `key`) comes before one that does not; ties go to
the worker that registered first. A worker never takes more sessions than its slots,
and a draining one takes none.
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

    @property
    def used(self) -> int:
        return len(self.sessions) + self.opening

    @property
    def free(self) -> int:
        return 0 if self.draining else max(self.slots - self.used, 0)


def place(workers: list[WorkerState], key: str | None = None) -> WorkerState | None:
    """The worker for one more session of `key` (None: any), or None when every slot is taken."""
    room = [w for w in workers if w.free > 0]
    if not room:
        return None
    return min(room, key=lambda w: (key is not None and w.key != key, -w.used, w.order))


def full_reason(workers: list[WorkerState]) -> str:
    """Why `place` found no room, in words for the refused viewer."""
    live = [w for w in workers if not w.draining]
    if not live:
        return "no worker is ready" if not workers else f"all {len(workers)} workers are draining"
    slots = sum(w.slots for w in live)
    return f"all {slots} sessions of {len(live)} worker{'s' if len(live) != 1 else ''} are in use"
