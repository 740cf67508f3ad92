"""A real `livereel serve` subprocess on loopback and a headless Debian Chromium.

LIVEREEL_E2E_CHECKPOINT picks the model: by default the shipped `default` model
(checkpoints/default), whose pictures the prompt and camera checks then judge; "debug"
(the tiny random-init preset, used when no shipped model is on disk) checks only the
behaviour. LIVEREEL_ARTIFACTS is the folder for screenshots and measurements (default
artifacts/e2e, gitignored).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
SERVER_START_TIMEOUT = 120.0


@pytest.fixture(scope="session")
def checkpoint() -> str:
    """The model `livereel serve` runs: LIVEREEL_E2E_CHECKPOINT, else the shipped `default`
    model where its weights are on disk, else the random-init `debug` preset. With a
    trained model the tests also judge the pictures (the prompt's biome and time of day,
    the pan direction)."""
    from model.checkpoint import CHECKPOINTS

    shipped = (CHECKPOINTS / "default" / "model.safetensors").is_file()
    return os.environ.get("LIVEREEL_E2E_CHECKPOINT") or ("default" if shipped else "debug")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = Path(os.environ.get("LIVEREEL_ARTIFACTS", ROOT / "artifacts" / "e2e"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, max_sessions: int, workdir) -> tuple[subprocess.Popen, str]:
    """`livereel serve` on a free loopback port, once /healthz answers: (process, url)."""
    port = free_port()
    log_path = workdir / "serve.log"
    cmd = [
        sys.executable, "-m", "streamer.cli", "serve",
        "--checkpoint", checkpoint,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-sessions", str(max_sessions),
        "--record-dir", str(workdir / "sessions"),
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


@pytest.fixture(scope="module")
def server_url(checkpoint, tmp_path_factory):
    """`livereel serve --checkpoint CHECKPOINT` on a free loopback port."""
    workdir = tmp_path_factory.mktemp("serve")
    proc, url = start_server(checkpoint, 3, workdir)
    try:
        yield url
    finally:
        stop_server(proc)
        log = (workdir / "serve.log").read_text()
        print(f"\n--- livereel serve log (tail) ---\n{''.join(log.splitlines(True)[-15:])}")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian chromium not found: apt-get install -y chromium (never `playwright install`)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
