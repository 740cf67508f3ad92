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
from pathlib import Path

import pytest
from served import start_server, stop_server  # noqa: F401 (the e2e tests import them from here)

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


@pytest.fixture(scope="module")
def server_url(checkpoint, tmp_path_factory):
    """`livereel serve --checkpoint CHECKPOINT` on a free loopback port."""
    workdir = tmp_path_factory.mktemp("serve")
    # up to 3 pages at once whatever this machine's speed (--admission limit): these tests check
    # behaviour; admission by measured capacity has its own test (tests/test_admission.py)
    proc, url = start_server(checkpoint, 3, workdir, "--admission", "limit")
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
