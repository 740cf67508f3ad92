"""The page in a real Chromium against `livereel serve --checkpoint <a Wan folder>` (the
tiny synthetic folder of tests/wan_folder.py: the whole Wan path, random weights): it
plays at the model's non-square size, the camera pad is greyed with the reason, and a
typed prompt switches the stream (re-cache) while it plays on."""

from __future__ import annotations

import pytest

pytest.importorskip("sentencepiece")

from wan_folder import SETTINGS, make_wan_folder  # noqa: E402

pytestmark = pytest.mark.e2e

WAIT_MS = 120_000  # a hang guard, not a timing assert


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """conftest's `server_url` serves this module's checkpoint: a Wan folder."""
    return str(make_wan_folder(tmp_path_factory.mktemp("wan") / "tiny-wan"))


def test_a_wan_folder_plays_greys_the_camera_and_switches_prompts(browser, server_url, artifacts):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server_url}/?seed=4")
    page.wait_for_function(
        "() => window.livereel.state.connection === 'live' && window.livereel.state.hello"
        " && document.getElementById('video').videoWidth > 0", timeout=WAIT_MS)
    size = page.evaluate("() => [document.getElementById('video').videoHeight, "
                         "document.getElementById('video').videoWidth]")
    assert size == [SETTINGS["height"], SETTINGS["width"]]
    assert f"{SETTINGS['width']}×{SETTINGS['height']}px" in page.locator("#model").inner_text()
    # no camera input: every pad button and the speed slider disabled, the reason shown
    assert page.evaluate("() => [...document.querySelectorAll('.hold')].every((b) => b.disabled)")
    assert page.locator("#speed").is_disabled()
    assert "no camera input" in page.locator("#camera-now").inner_text()
    page.keyboard.press("d")  # keys do not send camera controls either
    # the stream reaches frame 24 (two chunks) before the switch; then a typed prompt applies
    page.wait_for_function("() => (window.livereel.state.stats?.frame ?? 0) >= 24", timeout=WAIT_MS)
    prompt = page.locator("#prompt")
    new = "waves crash against dark rocks under a grey sky"
    prompt.fill(new)
    prompt.press("Enter")
    switch = page.wait_for_function(
        f"() => window.livereel.state.applied.findLast((a) => a.what === 'prompt' && a.text === '{new}') ?? false",
        timeout=WAIT_MS).json_value()
    assert page.locator("#caption").inner_text() == new
    # it plays on: 24 stream frames past the switch reach the page
    page.wait_for_function(f"() => (window.livereel.state.stats?.frame ?? 0) >= {switch['frame'] + 24}",
                           timeout=WAIT_MS)
    applied = page.evaluate("() => window.livereel.state.applied.map((a) => a.what)")
    assert "camera" not in applied and not errors, (applied, errors)
    page.screenshot(path=str(artifacts / "wan_browser.png"))
    page.close()
