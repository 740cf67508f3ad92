import asyncio
import time

import pytest
import pytest_asyncio
from fakes import FakeConfig, FakeGenerator, fake_info

from streamer.controls import Pause, Prompt, Resume
from streamer.scheduler import Scheduler, SchedulerFull
from streamer.session import QUEUE_CHUNKS, Session

pytestmark = pytest.mark.asyncio

# A chunk plays for a whole second: far longer than the fake takes to make one, even on
# a loaded machine, so "is a chunk due?" has one answer.
CFG = FakeConfig(fps=4, frames_per_chunk=4)
K = CFG.frames_per_chunk
WAIT = 60.0  # seconds before a condition that should hold soon is called a failure (a hang guard)


def make_session(**kwargs) -> Session:
    return Session(FakeGenerator(CFG, **kwargs), fake_info(CFG), prompt="p")


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.01)


class Looks:
    """Counts the worker's looks at the sessions that found none due (it sleeps after each),
    so that a test can wait for the worker to have decided, not for time to pass."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.idle = 0
        self._due = scheduler._due
        scheduler._due = self._look  # the worker calls it, under the scheduler's lock

    def _look(self):
        due = self._due()
        self.idle += not isinstance(due, list)
        return due

    async def twice_idle(self) -> None:
        """Waits until the worker has looked at the sessions as they are now, twice, and
        found none due."""
        target = self.idle + 2
        await until(lambda: self.idle >= target, "the worker looks twice and finds nothing due")


@pytest_asyncio.fixture
async def scheduler():
    s = Scheduler(max_sessions=3)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def looks(scheduler) -> Looks:
    return Looks(scheduler)


def no_error(e: BaseException) -> None:
    raise AssertionError(f"unexpected session error {e!r}")


async def test_stays_about_one_chunk_ahead(scheduler, looks):
    a = make_session()
    scheduler.add(a, no_error)
    await until(lambda: a.ready.is_set(), "the track is told the first chunk is there")
    await looks.twice_idle()
    # Nobody plays, and one chunk is more than one round of work ahead: no more is made.
    assert a.chunks_made == 1 and a.stats().queued == K
    for _ in range(K - 1):
        a.next_frame()
    await until(lambda: a.chunks_made == 2, "a new chunk once the queue runs low")


async def test_the_queue_bound_holds_when_generation_is_slow(scheduler, looks):
    # Each chunk takes longer to make than to play: the scheduler would start the next
    # at once, but never past the queue's bound.
    fast = FakeConfig(fps=16, frames_per_chunk=4)
    a = Session(FakeGenerator(fast, delay=0.25 * 1.2), fake_info(fast), prompt="p")
    scheduler.add(a, no_error)
    await until(lambda: a.chunks_made == QUEUE_CHUNKS, "the queue is filled")
    await looks.twice_idle()
    assert a.chunks_made == QUEUE_CHUNKS and a.stats().queued == a.capacity


async def test_serves_every_session_and_only_where_there_is_room(scheduler, looks):
    sessions = [make_session() for _ in range(3)]
    for s in sessions:
        scheduler.add(s, no_error)
    await until(lambda: all(s.chunks_made == 1 for s in sessions), "every session served")
    # Play the second session only: only it gets a new chunk.
    for _ in range(K):
        sessions[1].next_frame()
    await until(lambda: sessions[1].chunks_made == 2, "the played session is refilled")
    await looks.twice_idle()
    assert [s.chunks_made for s in sessions] == [1, 2, 1]


async def test_a_paused_session_is_skipped_until_resumed(scheduler, looks):
    a = make_session()
    a.control(Pause(type="pause"))
    scheduler.add(a, no_error)
    await looks.twice_idle()
    assert a.chunks_made == 0
    a.control(Resume(type="resume"))
    scheduler.wake()
    await until(lambda: a.chunks_made > 0, "the resumed session is served")


async def test_a_failing_session_ends_alone(scheduler):
    good, bad = make_session(), make_session(fail_on="boom")
    errors = []
    loop = asyncio.get_running_loop()
    scheduler.add(good, no_error)
    scheduler.add(bad, lambda e: errors.append((e, asyncio.get_running_loop() is loop)))
    await until(lambda: bad.chunks_made and good.chunks_made, "both run")
    for _ in range(K):
        bad.next_frame()
    bad.control(Prompt(type="prompt", text="boom now"))
    await until(lambda: errors, "the failure is reported")
    error, on_loop = errors[0]
    assert isinstance(error, RuntimeError) and "boom" in str(error) and on_loop
    assert "boom" in bad.error and len(scheduler) == 1
    # The other session goes on.
    before = good.chunks_made
    for _ in range(K):
        good.next_frame()
    await until(lambda: good.chunks_made > before, "the healthy session keeps going")


async def test_the_loop_runs_while_the_model_works(scheduler):
    a = make_session(delay=0.5)
    ticks_during_step = 0

    async def ticker():
        nonlocal ticks_during_step
        while True:
            await asyncio.sleep(0.01)
            ticks_during_step += a.generator.running.is_set()

    task = asyncio.ensure_future(ticker())
    scheduler.add(a, no_error)
    await until(lambda: a.chunks_made >= 1, "one slow chunk")
    task.cancel()
    assert ticks_during_step > 0


async def test_admission_limit(scheduler):
    sessions = [make_session() for _ in range(3)]
    for s in sessions:
        scheduler.add(s, no_error)
    assert scheduler.full
    with pytest.raises(SchedulerFull, match="3 of 3"):
        scheduler.add(make_session(), no_error)
    scheduler.remove(sessions[0])
    assert not scheduler.full and len(scheduler) == 2
    scheduler.add(make_session(), no_error)


async def test_stop_ends_the_worker():
    s = Scheduler(max_sessions=1)
    s.start()
    a = make_session(delay=0.1)
    s.add(a, no_error)
    await until(a.generator.running.is_set, "a step under way")
    s.stop()
    assert not s._thread.is_alive()


class BatchingGenerator(FakeGenerator):
    def batch_key(self):
        return ("fake", self.config)


async def test_due_sessions_of_one_key_are_batched():
    """With a batched step, sessions that fall due together are made in one call, get
    their own frames, and stay in step; without one, each steps alone."""
    calls = []

    def step_many(gens):
        calls.append(len(gens))
        return [g.next_frames() for g in gens]

    s = Scheduler(max_sessions=3, step_many=step_many)
    s.start()
    try:
        a, b = (Session(BatchingGenerator(CFG), fake_info(CFG), prompt=p) for p in ("a", "b"))
        s.add(a, no_error)
        s.add(b, no_error)
        await until(lambda: a.chunks_made and b.chunks_made, "both run")
        for _ in range(3):
            made = (a.chunks_made, b.chunks_made)
            for _ in range(K):
                a.next_frame()
                b.next_frame()
            # both refilled (they may have started a chunk apart: a was added first)
            await until(lambda: a.chunks_made > made[0] and b.chunks_made > made[1], "the next chunks")
        assert calls[-1] == 2  # once due together, made together
        assert a.next_frame().frame[0, 0, 0] != b.next_frame().frame[0, 0, 0]  # each its own prompt
    finally:
        s.stop()
    assert Scheduler(max_sessions=1, step_many=None, max_batch=4).max_batch == 1
    with pytest.raises(ValueError):
        Scheduler(max_sessions=1, step_many=step_many, max_batch=0)
