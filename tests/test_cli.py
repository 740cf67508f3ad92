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
