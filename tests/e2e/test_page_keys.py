"""What a new user trips over, on the page (issue 20), in a real Chromium against a real
`livereel serve --checkpoint debug`: `/` selects the prompt so typing replaces it; keys
steer after a click on the slider, the menu or a button; the blend menu speaks seconds;
Go on the unchanged prompt says so; a refused viewer and a stopped server get plain words.

Every wait is for state the page shows (an `applied`, a message), bounded by WAIT_MS.
"""

from __future__ import annotations

import json

import pytest
from conftest import start_server, stop_server

pytestmark = pytest.mark.e2e

WAIT_MS = 120_000  # a hang guard, not a timing assert
MAX_TRANSITION_CHUNKS = 16  # streamer/controls.py
# Records every control message the page sends, so a test can tell "sent nothing".
RECORD_SENT_JS = """() => {
  const stream = window.livereel.stream;
  window.sent = [];
  const sendRaw = stream.sendRaw.bind(stream);
  stream.sendRaw = (text) => { window.sent.push(JSON.parse(text)); return sendRaw(text); };
}"""


@pytest.fixture(scope="module")
def checkpoint() -> str:
    """conftest's `server_url` serves the tiny random-init preset: these check behaviour only."""
    return "debug"


@pytest.fixture
def one_session_server(tmp_path):
    """A server that takes one session (--max-sessions 1), its own so a test may stop it."""
    proc, url = start_server("debug", 1, tmp_path)
    try:
        yield proc, url
    finally:
        stop_server(proc)


def open_page(browser, url: str, **params):
    """A page playing a live session, recording the control messages it sends."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    query = "&".join(f"{k}={v}" for k, v in params.items())
    page.goto(f"{url}/?{query}")
    page.wait_for_function(
        "() => window.livereel.state.connection === 'live' && window.livereel.state.hello", timeout=WAIT_MS
    )
    page.evaluate(RECORD_SENT_JS)
    return page


def applied(page, where: str, after: int = 0) -> dict:
    """Waits for an `applied`, from the `after`-th on, for which the JS expression `where`
    (over it, `a`) holds; returns the first such."""
    return page.wait_for_function(
        f"(n) => window.livereel.state.applied.slice(n).find((a) => {where}) ?? false", arg=after, timeout=WAIT_MS
    ).json_value()


def count(page, js: str) -> int:
    return page.evaluate(f"() => {js}.length")


def applied_whats(page) -> list[str]:
    return page.evaluate("() => window.livereel.state.applied.map((a) => a.what)")


def sent_types(page) -> list[str]:
    return page.evaluate("() => window.sent.map((m) => m.type)")


def test_slash_selects_the_prompt_so_typing_replaces_it(browser, server_url):
    page = open_page(browser, server_url, seed=1)
    old = page.evaluate("() => window.livereel.state.prompt")
    assert old and page.locator("#prompt").input_value() == old
    page.locator("#video").click()  # focus off the prompt box
    page.keyboard.press("/")
    new = "a red ball rolling across a green field"
    page.keyboard.type(new)
    page.keyboard.press("Enter")
    switch = applied(page, f"a.what === 'prompt' && a.text === {json.dumps(new)}")
    assert switch["text"] == new and page.locator("#caption").inner_text() == new
    assert not page.errors, page.errors
    page.close()


@pytest.mark.parametrize("control", ["#speed", "#transition", "#reset", "#prompt-form button[type=submit]"])
def test_keys_steer_after_clicking_a_control(browser, server_url, control):
    page = open_page(browser, server_url, seed=2)
    page.locator(control).click()
    if control == "#transition":
        page.keyboard.press("Escape")  # closes the menu's list, as picking an option does; focus stays
    assert page.evaluate("(sel) => document.activeElement === document.querySelector(sel)", control)
    speed_before = page.locator("#speed").input_value()
    menu_before = page.locator("#transition").input_value()
    if control == "#reset":
        applied(page, "a.what === 'reset'")  # the click's own reset
    resets = applied_whats(page).count("reset")
    page.evaluate("() => { window.sent = []; }")  # from here on, only what the keys send

    n = count(page, "window.livereel.state.applied")
    page.keyboard.down("d")
    pan = applied(page, "a.what === 'camera' && a.pan[0] > 0", after=n)
    page.keyboard.up("d")
    applied(page, "a.what === 'camera' && a.pan[0] === 0 && a.pan[1] === 0", after=n)
    page.keyboard.press("ArrowRight")  # an arrow steers too, and moves neither the slider nor the menu
    assert pan["pan"][0] == float(page.locator("#speed").input_value())
    assert page.locator("#speed").input_value() == speed_before
    assert page.locator("#transition").input_value() == menu_before

    n = count(page, "window.livereel.state.applied")
    page.keyboard.press(" ")
    applied(page, "a.what === 'pause'", after=n)
    page.keyboard.press(" ")
    applied(page, "a.what === 'resume'", after=n)
    # Space paused and resumed: it clicked no button (no reset sent, none applied)
    assert "reset" not in sent_types(page), sent_types(page)
    assert applied_whats(page).count("reset") == resets
    assert page.evaluate("() => window.livereel.state.paused") is False
    assert not page.errors, page.errors
    page.close()


def test_the_blend_menu_speaks_seconds_and_sends_chunks(browser, server_url):
    page = open_page(browser, server_url, seed=3)
    options = page.locator("#transition option").all_inner_texts()
    assert options[0] == "cut" and all(o.startswith("blend ") and o.endswith(" s") for o in options[1:]), options
    hello = page.evaluate("() => window.livereel.state.hello")
    for i, (value, text) in enumerate([("2", "a blue cube over the desert"), ("0", "a white star above the city")]):
        page.locator("#transition").select_option(value)
        page.locator("#prompt").fill(text)
        page.locator("#prompt").press("Enter")
        switch = applied(page, f"a.what === 'prompt' && a.text === {json.dumps(text)}")
        seconds = float(value)
        chunks = round(seconds * hello["fps"] / hello["frames_per_chunk"])
        want = 0 if seconds == 0 else min(MAX_TRANSITION_CHUNKS, max(1, chunks))
        assert switch["transition"] == want, (value, switch, hello)
    assert not page.errors, page.errors
    page.close()


def test_go_on_the_unchanged_prompt_says_so_and_sends_nothing(browser, server_url):
    page = open_page(browser, server_url, seed=4)
    page.locator("#prompt-form button[type=submit]").click()
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=WAIT_MS)
    assert "Already showing this prompt" in error.inner_text()
    page.locator("#prompt").press("Enter")  # Enter too
    # something sent after it is applied, and the prompt was neither sent nor applied
    page.locator("#pause").click()
    applied(page, "a.what === 'pause'")
    assert sent_types(page) == ["pause"], sent_types(page)
    # none applied past frame 0 (the session's first prompt, at frame 0, may be acknowledged late)
    assert page.evaluate("() => window.livereel.state.applied.filter((a) => a.what === 'prompt' && a.frame > 0)") == []
    # the note goes once the text changes
    page.locator("#prompt").fill("a blue cube over the desert")
    assert error.is_hidden()
    assert not page.errors, page.errors
    page.close()


def words(page) -> dict[str, list[str]]:
    """The prompt's words shown beside the prompt box, by kind."""
    return page.evaluate("""() => {
      const out = {};
      for (const w of document.querySelectorAll('#words-line .word')) {
        (out[w.dataset.kind] ??= []).push(w.firstChild.textContent);
      }
      return out;
    }""")


def test_the_vocabulary_hint_shows_understood_and_ignored_words(browser, server_url):
    page = open_page(browser, server_url, seed=6)
    assert page.locator("#words").is_visible()
    assert "understood" in words(page)  # the default prompt's words, from hello
    text = "a sunny beach with palm trees, make it snow at night"
    page.locator("#prompt").fill(text)
    page.locator("#prompt").press("Enter")
    switch = applied(page, f"a.what === 'prompt' && a.text === {json.dumps(text)}")
    assert switch["words"]
    assert switch["reads"] == "the forest at night under clear skies"  # the prompt rewrite's wording
    page.wait_for_function("() => document.querySelector('#words-line').textContent.includes('ignored: ')")
    shown = words(page)
    assert shown["understood"] == ["sunny", "trees", "at night"]
    assert shown["ignored"] == ["beach", "palm", "make"]
    assert shown["overridden"] == ["snow"]  # "trees" set the biome first
    chip = page.locator("#words-line .word[data-kind=understood]").first
    assert chip.get_attribute("title") == "understood: weather clear"
    assert "ignored: beach, palm, make" in page.locator("#words-line").inner_text()
    assert "reads: “the forest at night under clear skies”" in page.locator("#reads").inner_text()

    # The vocabulary one click away; a word clicked there joins the prompt and is understood.
    assert not page.locator("#vocab-list").is_visible()
    page.locator("#vocab summary").click()
    assert page.locator("#vocab-list dt").all_inner_texts() == ["biome", "time", "weather", "shape", "colour", "motion"]
    page.locator("#prompt").fill("a desert")
    page.locator("#vocab-list button", has_text="snow").last.click()  # the weather's, not the biome's snowfield
    assert page.locator("#prompt").input_value() == "a desert falling snow"
    page.locator("#prompt").press("Enter")
    applied(page, "a.what === 'prompt' && a.text === 'a desert falling snow'")
    page.wait_for_function("() => document.querySelector('#words-line').textContent.includes('every word understood')")
    assert words(page)["understood"] == ["desert", "falling snow"]
    assert not page.errors, page.errors
    page.close()


def test_a_refused_viewer_and_a_stopped_server_get_plain_words(browser, one_session_server):
    proc, url = one_session_server
    holder = open_page(browser, url, seed=5)
    refused = browser.new_page(viewport={"width": 1280, "height": 860})
    refused.goto(url)
    error = refused.locator("#error")
    refused.wait_for_function(
        "() => document.getElementById('error').textContent.includes('is in use')", timeout=WAIT_MS
    )
    assert error.inner_text() == "The one session this server allows is in use; try again in a moment."
    assert "The one session this server allows is in use" in refused.locator("#veil-text").inner_text()
    assert "server_full" not in error.inner_text() + refused.locator("#veil-text").inner_text()
    refused.close()

    # The server stops: the playing page says so plainly, and once, though its socket and
    # its control channel both close.
    holder.evaluate("""() => {
      const stream = window.livereel.stream;
      window.ends = [];
      stream.addEventListener("state", (e) => {
        if (e.detail.state === "closed" || e.detail.state === "failed") window.ends.push(e.detail.reason);
      });
      window.closedBoth = () => stream.ws.readyState === WebSocket.CLOSED && stream.channel.readyState === "closed";
    }""")
    stop_server(proc)
    holder.wait_for_function("() => window.closedBoth()", timeout=WAIT_MS)
    assert holder.evaluate("() => window.ends") == ["The server stopped."]
    assert holder.locator("#error").inner_text() == "The server stopped."
    assert holder.locator("#veil-text").inner_text() == "The server stopped. Reconnect to start again."
    # Reconnect, the server still down: that is said once too.
    holder.evaluate("() => { window.ends = []; }")
    holder.locator("#reconnect").click()
    holder.wait_for_function("() => window.ends.length > 0", timeout=WAIT_MS)
    holder.wait_for_function("() => window.livereel.stream.ws?.readyState === WebSocket.CLOSED", timeout=WAIT_MS)
    assert holder.evaluate("() => window.ends") == ["Cannot reach the server."]
    assert holder.locator("#error").inner_text() == "Cannot reach the server."
    assert not holder.errors, holder.errors
    holder.close()
