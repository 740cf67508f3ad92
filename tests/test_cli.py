import subprocess
import sys

from streamer.cli import COMMANDS, main


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "streamer.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for name in ("serve", "demo", "export", "replay", "train", "eval", "bench"):
        assert name in out and name in COMMANDS


def test_bad_flags_exit_nonzero():
    r = subprocess.run([sys.executable, "-m", "streamer.cli", "nosuch"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def run_cli(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer.cli", *argv], capture_output=True, text=True, **kw)


def test_a_typo_in_a_flag_shows_that_commands_usage():
    r = run_cli("sample", "--promt", "x")
    assert r.returncode == 2 and "usage: livereel sample" in r.stderr and "--promt" in r.stderr


def test_help_shows_defaults():
    out = " ".join(run_cli("sample", "--help").stdout.split())
    assert "(default: 5.0)" in out and "(default: 0.0)" in out  # --seconds, --zoom


def test_bad_output_paths_are_refused_before_any_work(tmp_path):
    for argv in (["sample", "--checkpoint", "debug", "-o", str(tmp_path / "missing" / "a.mp4")],
                 ["sample", "--checkpoint", "debug", "-o", str(tmp_path)],
                 ["export", "examples/timeline.json", "--checkpoint", "debug", "-o", str(tmp_path / "no" / "a.mp4")]):
        r = run_cli(*argv)
        assert r.returncode != 0 and "-o" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_sample_refuses_what_the_page_refuses(tmp_path):
    r = run_cli("sample", "--checkpoint", "debug", "--prompt", "x" * 501, "-o", str(tmp_path / "a.mp4"))
    assert r.returncode != 0 and "500 characters" in r.stderr
    r = run_cli("sample", "--checkpoint", "debug", "--seconds", "2", "--then", "a blue cube", "--switch-at", "3",
                "-o", str(tmp_path / "a.mp4"))
    assert r.returncode != 0 and "--switch-at" in r.stderr


def test_replay_names_a_timeline_and_refuses_other_log_versions(tmp_path):
    r = run_cli("replay", "examples/timeline.json", "-o", str(tmp_path / "a.mp4"))
    assert r.returncode != 0 and "livereel export" in r.stderr
    log = tmp_path / "s.jsonl"
    log.write_text('{"what": "header", "version": 9, "seed": 0, "fps": 16, "steps": 4, "model": "debug"}\n')
    r = run_cli("replay", str(log), "-o", str(tmp_path / "a.mp4"))
    assert r.returncode != 0 and "version 9" in r.stderr


def test_sigterm_and_ctrl_c_end_an_export_cleanly(tmp_path):
    """Exit 143 / 130 with one line, no traceback, no .part file left."""
    import signal
    import time

    timeline = tmp_path / "long.json"  # long enough that the signal always comes mid-render
    timeline.write_text('{"seed": 0, "duration": 3600, "events": [{"at": 0, "prompt": "a red ball in the desert"}]}')
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        out = tmp_path / f"{code}.mp4"
        p = subprocess.Popen([sys.executable, "-m", "streamer.cli", "export", str(timeline),
                              "--checkpoint", "debug", "--engine", "eager", "-o", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             # a shell's background job (CI started with `&`) ignores SIGINT and
                             # its children inherit that: give the child a terminal's default
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(f".{code}.mp4.*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)  # rendering: the .part file is being written
        assert p.poll() is None, p.communicate()[1]
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        assert p.returncode == code, err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("livereel export:")
        assert "frame/s" not in err  # no progress bar into a pipe
        assert not out.exists() and not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))
