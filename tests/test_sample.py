import subprocess
import sys

import av


def run(*args):
    return subprocess.run([sys.executable, "-m", "streamer.cli", "sample", "--checkpoint", "debug",
                           "--steps", "1", *args], capture_output=True, text=True)


def test_sample_writes_a_playable_clip_with_a_switch_and_a_strip(tmp_path):
    out, strip = tmp_path / "c.mp4", tmp_path / "s.png"
    r = run("--seconds", "2", "--then", "a blue cube", "--pan", "0.5", "0", "-o", str(out),
            "--strip", str(strip))
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 32
    assert strip.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_rejects_bad_flags(tmp_path):
    assert run("--pan", "3", "0", "-o", str(tmp_path / "x.mp4")).returncode != 0
    r = run("--checkpoint", str(tmp_path / "none"), "-o", str(tmp_path / "x.mp4"))
    assert r.returncode != 0 and "no checkpoint" in r.stderr
    assert not (tmp_path / "x.mp4").exists()
