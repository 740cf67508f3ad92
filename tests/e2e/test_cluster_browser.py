"""The page in a real Chromium against `livereel serve --ray` with two workers (one slot
each, the debug model): it plays, switches prompts, pans, and when its worker's process
is killed it says "reconnecting", offers again by itself, and plays on from the other
worker, where its controls still work; and the controls sent while it moved (into the
dead worker's channel, or with no channel open) reach the new worker."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest
from test_browser import WAIT_MS, applied, open_page, reached

from served import start_server, stop_server

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory):
    pytest.importorskip("ray")
    workdir = tmp_path_factory.mktemp("serve-ray")
    proc, url = start_server("debug", 2, workdir, "--ray", "--workers", "2", "--slots", "1", "--engine", "eager")
    try:
        yield url
    finally:
        stop_server(proc)
        log = (workdir / "serve.log").read_text()
        print(f"\n--- livereel serve --ray log (tail) ---\n{''.join(log.splitlines(True)[-20:])}")


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as r:
        return json.loads(r.read())


def test_plays_steers_and_survives_the_kill_of_its_worker(browser, cluster_url, capsys):
    page = open_page(browser, cluster_url, prompt="a red ball bouncing over a meadow by day")
    # A camera control sent while reconnecting (after the new peer connection is made, its
    # channel not open yet): the stream keeps it for the new worker and says it is sent.
    page.evaluate("""() => {
      const stream = window.livereel.stream;
      window.states = [];
      window.sentWhileReconnecting = null;
      stream.addEventListener('state', (e) => {
        window.states.push(e.detail.state);
        if (e.detail.state !== 'reconnecting') return;
        setTimeout(() => {
          const sent = stream.send({type: 'camera', pan: [0, 0.25], zoom: 0});
          window.sentWhileReconnecting = [stream.channel.readyState, sent];
        });
      });
    }""")
    page.evaluate("() => window.livereel.stream.send({type: 'prompt', text: 'a blue cube in the desert at night'})")
    applied(page, "a.what === 'prompt' && a.text === 'a blue cube in the desert at night'")
    page.evaluate("() => window.livereel.stream.send({type: 'camera', pan: [0.5, 0], zoom: 0})")
    applied(page, "a.what === 'camera' && a.pan[0] === 0.5")

    session = page.evaluate("() => window.livereel.state.session")
    serving = [w for w in health(cluster_url)["workers"] if w["sessions"] == 1]
    assert len(serving) == 1, health(cluster_url)
    assert page.locator("#worker").inner_text() == f"· worker {serving[0]['worker']}"  # the page names it
    reached(page, 16)
    frame = page.evaluate("() => window.livereel.state.stats.frame")
    os.kill(serving[0]["pid"], signal.SIGKILL)  # the worker's process, as a crash would end it
    # A prompt from the form at once: the page does not know yet, and sends it into the old
    # channel (or, if the notice came first, keeps it): either way it is applied after the move.
    moved_prompt = "a green star in the snowy forest at night"
    sent_in = page.evaluate("() => window.livereel.state.connection")
    page.locator("#prompt").fill(moved_prompt)
    page.locator("#prompt").press("Enter")

    page.wait_for_function("() => window.states.includes('reconnecting') && window.livereel.state.connection === 'live'",
                           timeout=WAIT_MS)
    took = page.evaluate("() => performance.now() - window.livereel.stream.timings.reconnect")
    reached(page, frame + 32)  # the stream goes on, past where it stood
    moved = [w for w in health(cluster_url)["workers"] if w["sessions"] == 1]
    assert [w["worker"] for w in moved] != [w["worker"] for w in serving] and len(moved) == 1
    assert page.locator("#worker").inner_text() == f"· worker {moved[0]['worker']}"  # and its new one
    assert page.evaluate("() => window.livereel.state.session") == session
    applied(page, f"a.what === 'prompt' && a.text === {json.dumps(moved_prompt)}")
    assert page.locator("#caption").inner_text() == moved_prompt
    assert page.evaluate("() => window.sentWhileReconnecting") == ["connecting", True]
    applied(page, "a.what === 'camera' && a.pan[1] === 0.25")
    assert page.evaluate("() => [...window.livereel.stream.pending.keys()]") == []  # all acknowledged
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()  # no "Not connected."
    page.evaluate("() => window.livereel.stream.send({type: 'camera', pan: [-0.5, 0], zoom: 0})")
    applied(page, "a.what === 'camera' && a.pan[0] === -0.5")  # controls reach the new worker
    assert page.evaluate("() => window.livereel.stream.pending.size") == 0
    with capsys.disabled():
        print(f"\nreconnect offer -> now: {took:.0f} ms; states: {page.evaluate('() => window.states')}; "
              f"prompt sent while {sent_in}")
    page.close()
