"""A real `livereel serve` subprocess on a free loopback port, for the tests that need the
command as users run it (the browser tests, admission by capacity)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, max_sessions: int, workdir, *extra: str) -> tuple[subprocess.Popen, str]:
    """`livereel serve` on a free loopback port (and `extra` flags), once /healthz answers:
    (process, url)."""
    port = free_port()
    log_path = workdir / "serve.log"
    cmd = [
        sys.executable, "-m", "streamer.cli", "serve",
        "--checkpoint", checkpoint,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-sessions", str(max_sessions),
        "--record-dir", str(workdir / "sessions"),
        *extra,
    ]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"livereel serve exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"livereel serve not up in {SERVER_START_TIMEOUT} s:\n{log_path.read_text()}")
        time.sleep(0.25)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
