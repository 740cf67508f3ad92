"""Timeline export and log replay: real PyAV encoding, real Generator (debug preset)."""

import json
import os
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
from fakes import writing

from model.sampling import Sampling
from streamer.export import TimelineError, load_timeline, render, timeline_events
from streamer.replay import load_log


def decode(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        return frames, float(s.average_rate), (s.codec_context.width, s.codec_context.height)


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "streamer.cli", *args], capture_output=True,
                          text=True, **kw)


def test_export_twenty_seconds_with_switches_and_pan(tmp_path, debug_model):
    tl = {"seed": 3, "duration": 20.0, "events": [
        {"at": 0.0, "prompt": "a red ball bouncing over grassland by day"},
        {"at": 5.0, "camera": {"pan": [0.5, 0.0], "zoom": 0.0}},
        {"at": 8.0, "prompt": "a blue cube drifting over a snowfield at night"},
        {"at": 14.0, "prompt": "a white star orbiting above the ocean at sunset", "transition": 1.0}]}
    path = tmp_path / "tl.json"
    path.write_text(json.dumps(tl))
    out = tmp_path / "out.mp4"
    # as typed (--no-rewrite): the random debug model's pictures of these three prompts
    # differ by chance, and reworded two of them land nearer each other than the margin below
    r = cli("export", str(path), "-o", str(out), "--checkpoint", "debug", "--steps", "1", "--no-rewrite")
    assert r.returncode == 0, r.stderr
    frames, fps, size = decode(out)
    cfg = debug_model.config
    assert len(frames) == 20 * cfg.fps and fps == cfg.fps and size == (cfg.image_size,) * 2
    # The frames after each switch differ as the prompts say: each stretch of the video is
    # nearest to what the Generator makes under that stretch's prompt (rendered here without
    # encoding) and far from the other prompts'. Compared on 4x4-pooled pictures, which
    # survive H.264; the debug model's per-pixel noise does not.
    gen = Sampling(steps=1, warm_start=0, rewrite=False).generator(debug_model, seed=3)  # as the command samples
    raw = np.stack(list(render(gen, timeline_events(load_timeline(path), cfg.fps, cfg.frames_per_chunk),
                               20 * cfg.fps)))

    def pooled(x, a, b):
        x = x[a * cfg.fps:b * cfg.fps].astype(np.float32)
        return x.reshape(len(x), cfg.image_size // 4, 4, cfg.image_size // 4, 4, 3).mean((2, 4))

    enc = np.stack(frames)
    stretches = [(1, 4), (10, 13), (17, 20)]  # under prompt 1, 2 and 3
    for i, (a, b) in enumerate(stretches):
        dist = [np.abs(pooled(enc, a, b) - pooled(raw, *o)).mean() for o in stretches]
        assert int(np.argmin(dist)) == i, dist
        # a clear margin (H.264 costs the random debug model's noisy pictures about half of
        # the distance between two prompts' pictures; 1.8-2.4x here, seed to seed)
        assert min(d for j, d in enumerate(dist) if j != i) > 1.5 * dist[i], dist


def test_bad_timelines_name_the_event(tmp_path):
    cases = {
        r"events\[1\] \(at 1.0s\) comes before": {"duration": 5, "events": [{"at": 3, "prompt": "a"},
                                                                      {"at": 1, "prompt": "b"}]},
        r"events\[0\] at 6.0s is past the end": {"duration": 5, "events": [{"at": 6, "prompt": "a"}]},
        r"events\.0\.camera\.pan": {"duration": 5, "events": [{"at": 0, "camera": {"pan": [2, 0]}}]},
        r"events\.0\.colour: Extra": {"duration": 5, "events": [{"at": 0, "prompt": "a", "colour": "red"}]},
        r"exactly one": {"duration": 5, "events": [{"at": 0}]},
        r"duration": {"duration": -1, "events": [{"at": 0, "prompt": "a"}]},
        r"events\.0\.prompt": {"duration": 5, "events": [{"at": 0, "prompt": ""}]},
    }
    for needle, tl in cases.items():
        p = tmp_path / "t.json"
        p.write_text(json.dumps(tl))
        with pytest.raises(TimelineError, match=needle):
            load_timeline(p)
    p.write_text("{nope")
    with pytest.raises(TimelineError, match="not JSON"):
        load_timeline(p)
    r = cli("export", str(p), "-o", str(tmp_path / "x.mp4"), "--checkpoint", "debug")
    assert r.returncode != 0 and "not JSON" in r.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_killed_export_leaves_no_output(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"duration": 600, "events": [{"at": 0, "prompt": "a red ball"}]}))
    out = tmp_path / "long.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "export", str(p), "-o", str(out),
                             "--checkpoint", "debug", "--steps", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300  # a wait bound, not a timing assert: CI machines can be slow
    while time.time() < deadline and not writing(tmp_path):
        time.sleep(0.2)
    assert writing(tmp_path), "the export never started writing frames"
    proc.send_signal(signal.SIGKILL)  # mid-write
    proc.wait()
    assert not out.exists()


def write_log(path, header, events):
    path.write_text("\n".join(json.dumps(r) for r in [header] + events) + "\n")


def test_two_replays_of_one_log_are_identical(tmp_path, debug_model):
    header = {"what": "header", "version": 1, "model": "debug", "seed": 9, "fps": 16, "steps": 1,
              "prompt": "a green cube in the forest"}
    events = [{"what": "prompt", "frame": 0, "text": "a green cube in the forest", "transition": 0},
              {"what": "camera", "frame": 8, "pan": [0.0, 0.5], "zoom": 0.0},
              {"what": "reset", "frame": 16, "seed": 4},
              {"what": "prompt", "frame": 20, "text": "a red star over the desert", "transition": 2}]
    log = tmp_path / "s.jsonl"
    write_log(log, header, events)
    outs = []
    for name in ("a.mp4", "b.mp4"):
        r = cli("replay", str(log), "-o", str(tmp_path / name), "--frames", "32")
        assert r.returncode == 0, r.stderr
        outs.append(decode(tmp_path / name)[0])
    assert len(outs[0]) == 32
    assert all(np.array_equal(a, b) for a, b in zip(*outs))


def test_bad_logs_name_the_line(tmp_path):
    log = tmp_path / "s.jsonl"
    header = {"what": "header", "model": "debug", "seed": 0, "fps": 16, "steps": 1}
    write_log(log, header, [{"what": "camera", "frame": 8, "pan": [0, 0], "zoom": 0},
                            {"what": "prompt", "frame": 4, "text": "x"}])
    with pytest.raises(TimelineError, match=":3: frame 4 comes before frame 8"):
        load_log(log)
    write_log(log, header, [{"what": "teleport", "frame": 8}])
    with pytest.raises(TimelineError, match="unknown event 'teleport'"):
        load_log(log)
    log.write_text(json.dumps(header) + '\n{"what": "prompt", "fr')
    with pytest.raises(TimelineError, match="truncated"):
        load_log(log)
    r = cli("replay", str(log), "-o", str(tmp_path / "x.mp4"))
    assert r.returncode != 0 and "truncated" in r.stderr


def test_replay_makes_chunks_the_way_the_log_says(tmp_path):
    """The header's warm_start (steps started from the warped prior) is honoured: the same
    log with and without it replays differently; a bad value is refused, naming it."""
    base = {"what": "header", "version": 1, "model": "debug", "seed": 3, "fps": 16, "steps": 2,
            "prompt": "a green cube in the forest"}
    events = [{"what": "camera", "frame": 4, "pan": [0.5, 0.0], "zoom": 0.0}]
    outs = []
    for warm in (0, 1):
        log = tmp_path / f"w{warm}.jsonl"
        write_log(log, {**base, "warm_start": warm}, events)
        r = cli("replay", str(log), "-o", str(tmp_path / f"w{warm}.mp4"), "--frames", "16")
        assert r.returncode == 0, r.stderr
        outs.append(decode(tmp_path / f"w{warm}.mp4")[0])
    diff = [float(np.abs(a.astype(int) - b).mean()) for a, b in zip(*outs)]
    # chunk 0 (nothing to start from) is the same but for the codec's rate control (~4/255
    # here); the chunks after the pan starts are made differently (~11/255)
    assert max(diff[:2]) < 0.6 * np.mean(diff[8:]), diff
    write_log(tmp_path / "bad.jsonl", {**base, "warm_start": 2}, events)
    r = cli("replay", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "bad.mp4"))
    assert r.returncode != 0 and "warm_start" in r.stderr
    # the anchor (the share of the warped prior kept): a log with it replays differently
    # from one without it (a log from before it had none: 0), and a bad value is refused
    log = tmp_path / "anchored.jsonl"
    write_log(log, {**base, "warm_start": 1, "anchor": 1.0}, events)
    r = cli("replay", str(log), "-o", str(tmp_path / "anchored.mp4"), "--frames", "16")
    assert r.returncode == 0, r.stderr
    anchored = decode(tmp_path / "anchored.mp4")[0]
    assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(anchored[8:], outs[1][8:])]) > 1.0
    write_log(tmp_path / "bad.jsonl", {**base, "warm_start": 1, "anchor": "x"}, events)
    r = cli("replay", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "bad.mp4"))
    assert r.returncode != 0 and "header anchor" in r.stderr
    # the prompt rewrite: "... in the forest" is read as "... over the forest" with it, so a
    # log with it replays differently from one without it (a log from before it: off)
    log = tmp_path / "rewritten.jsonl"
    write_log(log, {**base, "warm_start": 1, "rewrite": True}, events)
    r = cli("replay", str(log), "-o", str(tmp_path / "rewritten.mp4"), "--frames", "16")
    assert r.returncode == 0, r.stderr
    rewritten = decode(tmp_path / "rewritten.mp4")[0]
    assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(rewritten, outs[1])]) > 1.0
    write_log(tmp_path / "bad.jsonl", {**base, "warm_start": 1, "rewrite": "x"}, events)
    r = cli("replay", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "bad.mp4"))
    assert r.returncode != 0 and "header rewrite" in r.stderr
