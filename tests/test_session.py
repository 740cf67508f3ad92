import json
import threading

from fakes import WAIT, FakeConfig, FakeGenerator, fake_info, prompt_colour

from streamer.controls import Camera, Pause, Prompt, Reset, Resume
from streamer.session import QUEUE_CHUNKS, Session

CFG = FakeConfig()
K = CFG.frames_per_chunk


def make_session(**kwargs) -> tuple[Session, FakeGenerator]:
    gen = FakeGenerator(CFG, seed=5, **kwargs)
    return Session(gen, fake_info(CFG, steps=3), prompt="first"), gen


def drain(session: Session, n: int) -> list:
    return [session.next_frame() for _ in range(n)]


def test_header_and_initial_prompt():
    session, gen = make_session()
    header = session.log.events()[0]
    assert header["what"] == "header" and header["version"] == 1
    assert (header["model"], header["seed"], header["fps"], header["size"], header["steps"]) == (
        "fake", 5, CFG.fps, CFG.image_size, 3
    )
    assert header["frames_per_chunk"] == K and header["prompt"] == "first"
    assert session.next_frame() is None  # nothing before the first chunk
    session.step()
    assert gen.prompt == "first"
    played = session.next_frame()
    assert played.index == 0 and tuple(played.frame[0, 0, :2]) == prompt_colour("first")
    assert [a.what for a, _ in played.applied] == ["prompt"]


def test_frames_play_in_order_then_hold():
    session, _ = make_session()
    session.step()
    session.step()
    played = drain(session, 2 * K + 2)
    assert [p.index for p in played] == list(range(2 * K)) + [2 * K - 1] * 2
    assert [p.held for p in played] == [False] * 2 * K + [True, True]
    assert played[-1].frame is played[2 * K - 1].frame
    assert (session.frames_sent, session.frames_held) == (2 * K + 2, 2)


def test_controls_are_latest_wins_and_wait_for_the_next_chunk():
    session, gen = make_session()
    session.step()
    for pan in (0.1, 0.2, 0.3):
        assert session.control(Camera(type="camera", pan=(pan, 0.0), zoom=0.0)) is None
    session.control(Prompt(type="prompt", text="second"))
    session.control(Prompt(type="prompt", text="third", transition=2))
    assert gen.prompt == "first"  # staged only
    session.step()
    assert gen.camera == ((0.3, 0.0), 0.0) and gen.prompt == "third"
    controls = session.log.events()[1:]
    assert [(e["what"], e["frame"]) for e in controls] == [("prompt", 0), ("camera", K), ("prompt", K)]
    assert controls[2]["text"] == "third" and controls[2]["transition"] == 2
    # The acknowledgement comes with the first frame made under the control, not before.
    played = drain(session, 2 * K)
    assert [p.index for p in played if p.applied] == [0, K]
    applied = {a.what: a for a, _ in played[K].applied}
    assert applied["camera"].pan == (0.3, 0.0) and applied["prompt"].text == "third"
    assert all(seconds >= 0 for _, seconds in played[K].applied)
    assert tuple(played[K].frame[0, 0, :2]) == prompt_colour("third")
    assert session.prompt == "third"


def test_pause_holds_the_picture_and_resume_goes_on():
    session, _ = make_session()
    session.step()
    drain(session, 2)
    applied = session.control(Pause(type="pause"))
    assert (applied.what, applied.frame) == ("pause", K)  # generation stops after frame K - 1
    assert session.timing() is None  # the scheduler skips it
    paused = drain(session, 5)
    assert {p.index for p in paused} == {1} and not any(p.held for p in paused)
    assert session.frames_held == 0 and session.stats().paused
    assert session.control(Resume(type="resume")).frame == K
    assert session.next_frame().index == 2
    assert [e["what"] for e in session.log.events()[-2:]] == ["pause", "resume"]


def test_reset_drops_the_old_stream():
    session, gen = make_session()
    session.step()
    session.step()
    drain(session, 1)
    session.control(Reset(type="reset", seed=99))
    assert session.stats().queued == 0  # queued frames of the old stream are gone
    assert session.next_frame().held  # the current picture stays until the new one
    session.step()
    played = session.next_frame()
    assert played.index == 2 * K and gen.seed == 99
    assert [(a.what, a.frame, a.seed) for a, _ in played.applied] == [("reset", 2 * K, 99)]
    assert session.log.events()[-1] == {"what": "reset", "seed": 99, "frame": 2 * K}


def test_a_chunk_started_before_a_reset_is_dropped():
    gate = threading.Event()
    session, gen = make_session(gate=gate)
    worker = threading.Thread(target=session.step)
    worker.start()
    assert gen.running.wait(WAIT)
    session.control(Reset(type="reset", seed=1))  # while the step is held open
    gate.set()
    worker.join()
    assert session.stats().queued == 0 and session.frames_made == K
    session.step()
    assert session.next_frame().index == K


def test_queue_is_bounded_and_timing_says_when_a_chunk_fits():
    session, _ = make_session()
    assert session.capacity == QUEUE_CHUNKS * K
    assert session.timing() == (0.0, 0.0)
    for _ in range(QUEUE_CHUNKS):
        session.step()
    ahead, fits_in = session.timing()
    assert ahead == QUEUE_CHUNKS * K / CFG.fps
    assert fits_in == K / CFG.fps  # a whole chunk must be played first
    drain(session, K)
    assert session.timing()[1] == 0.0


def test_stats_follow_the_stream():
    session, _ = make_session()
    session.step()
    drain(session, K + 1)
    stats = session.stats()
    assert (stats.frame, stats.chunk, stats.queued, stats.sent, stats.held) == (K - 1, 1, 0, K + 1, 1)


def test_record_dir_gets_the_same_log(tmp_path):
    gen = FakeGenerator(CFG)
    session = Session(gen, fake_info(CFG), prompt="p", record_dir=tmp_path)
    session.step()
    session.control(Camera(type="camera", pan=(0.0, 1.0), zoom=-0.5))
    session.step()
    session.close()
    text = (tmp_path / f"{session.id}.jsonl").read_text()
    assert text == session.log.text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[-1] == {"what": "camera", "pan": [0.0, 1.0], "zoom": -0.5, "frame": K}


def test_session_ids_are_unguessable():
    ids = {make_session()[0].id for _ in range(20)}
    assert len(ids) == 20 and all(len(i) >= 22 for i in ids)  # 128 random bits, URL-safe


def test_paused_before_the_first_frame_still_shows_one():
    session, _ = make_session()
    session.control(Pause(type="pause"))
    session.step()
    first, second = session.next_frame(), session.next_frame()
    assert first.index == second.index == 0 and not second.held


def test_a_reset_before_the_first_frame_leaves_nothing_to_show():
    session, _ = make_session()
    session.step()
    session.control(Reset(type="reset", seed=2))
    assert session.next_frame() is None
    session.step()
    assert session.next_frame().index == K


def test_log_frames_never_go_back():
    # Pause and resume land between chunks, in the same frame numbering as the rest.
    session, _ = make_session()
    session.step()
    session.control(Camera(type="camera", pan=(1.0, 0.0), zoom=0.0))
    session.step()  # the camera is logged at frame K, ahead of playback
    session.next_frame()
    session.control(Pause(type="pause"))
    session.control(Resume(type="resume"))
    session.control(Reset(type="reset", seed=3))
    session.step()
    frames = [e["frame"] for e in session.log.events()[1:]]
    assert frames == sorted(frames) == [0, K, 2 * K, 2 * K, 2 * K]
