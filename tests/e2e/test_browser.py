"""The page in a real Chromium against a real `livereel serve`: it connects, plays,
and every control works from the keyboard or the page's own channel. With a trained
model (the shipped `default`, see conftest) the pictures are judged too: the attribute
classifier sees the new prompt's biome and time of day after a switch (and not before),
and holding a pan key moves the picture that way; with a model that draws objects (v2),
a colour switch recolours the object.

Timings are measured and printed (and saved to artifacts/e2e/measurements.json),
never asserted.
"""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import urlencode

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

WAIT_MS = 120_000
"""A bound on every wait for the page or the stream (a hang guard, not a timing assert)."""
# Captions in the world's grammar (model/world.py), so a trained model knows them.
SHARED = "a white star orbiting above the city, snowing, at sunset"
SWITCH_TO = "a blue cube drifting over the desert at night in the rain"
SETTLED = 32
"""Stream frame from which the pictures are judged: a stream starts from noise, and the
shipped model shows SHARED's city from frame 13 on (seed 5; the default prompt from 0)."""
SWITCHED = 8
"""Frames a prompt switch takes to show (the model card's eval: 2.75 on average, 8 at most)."""
HELD = 1.5
"""Mean absolute difference (0-255) under which a shown frame repeats the one before. The
server repeats a frame when generation is late, and encodes it again; decoded, a repeat
differs from the frame before by 0.45 in the median, by over 1.56 one time in ten, by 4.8
at most. New frames differ by 1.74 at least (the shipped model; the debug one: 1.25, and
under 2.6 one time in a hundred). Measured on 3 streams of 30 s, one panning, 55% of
whose frames were repeats."""
MEASURED: dict[str, object] = {}

# Collects the next `n` new frames the page shows (drawn into a canvas) as base64 RGBA:
# frames received before `after` (performance.now() ms) are left out, and so is a frame
# that repeats the one before it (HELD: the server repeats a frame when generation is
# late), then the first `skip` new ones. `joined[i]`: no frame was shown between new
# frames i and i + 1 that the page did not see (a repeat aside), so they are consecutive
# frames of the stream. Bytes, not a JSON list of numbers: 16 frames then take 1 s to
# collect and return (a list took 6 s, so "before" and "after" were far apart).
CAPTURE_JS = """
async ({ n, after, skip, held, timeout }) => {
  const video = document.getElementById("video");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const size = canvas.width * canvas.height * 4;
  const rgba = new Uint8Array(n * size);
  const joined = [];
  let count = 0, skipped = 0, repeats = 0, last = null, presented = null;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(
      `${count} of ${n} new frames (${skipped} skipped, ${repeats} repeats) in ${timeout} ms`)), timeout);
    const grab = (now, meta) => {
      const unseen = presented === null ? 0 : meta.presentedFrames - presented - 1;
      presented = meta.presentedFrames;
      if ((meta.receiveTime ?? now) >= after) {
        ctx.drawImage(video, 0, 0);
        const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
        let diff = Infinity;
        if (last !== null) {
          let sum = 0;
          for (let i = 0; i < size; i += 4) {
            sum += Math.abs(px[i] - last[i]) + Math.abs(px[i + 1] - last[i + 1]) + Math.abs(px[i + 2] - last[i + 2]);
          }
          diff = sum / (size / 4 * 3);
        }
        if (diff <= held) {
          repeats += 1;  // frames the page did not see between two of one picture were that picture too
        } else if (skipped < skip) {
          skipped += 1;
        } else {
          rgba.set(px, count * size);
          if (count > 0) joined.push(unseen === 0);
          count += 1;
        }
        if (diff > held) last = px;
      }
      if (count >= n) {
        clearTimeout(timer);
        resolve();
      } else video.requestVideoFrameCallback(grab);
    };
    video.requestVideoFrameCallback(grab);
  });
  let text = "";
  for (let i = 0; i < rgba.length; i += 0x8000) text += String.fromCharCode(...rgba.subarray(i, i + 0x8000));
  return { width: canvas.width, height: canvas.height, joined, repeats, data: btoa(text) };
}
"""


def open_page(browser, url: str, **params):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.on("pageerror", lambda e: MEASURED.setdefault("page_errors", []).append(str(e)))
    page.goto(f"{url}/?{urlencode(params)}")
    page.wait_for_function(
        "() => window.livereel.state.connection === 'live' && window.livereel.state.hello"
        " && document.getElementById('video').videoWidth > 0"
        # the size is known before the first frame is shown (on a loaded machine, long before)
        " && window.livereel.stream.timings.firstFrame !== undefined",
        timeout=WAIT_MS,
    )
    return page


def reached(page, frame: int) -> float:
    """Waits until the server's `stats` (once a second) say its stream has reached `frame`;
    returns when the page knew it (performance.now() ms). The server sent those stats
    while showing `frame` or a later one, so every frame received after is one too."""
    return page.wait_for_function(
        "(f) => { const s = window.livereel.state.stats; return s !== null && s.frame >= f && performance.now(); }",
        arg=frame,
        timeout=WAIT_MS,
    ).json_value()


def applied(page, where: str) -> dict:
    """Waits for the server's latest `applied` for which the JS expression `where` (over
    it, `a`) holds; returns it, `at` (performance.now() ms) being when it arrived: every
    frame received after it was made under the control (the server sends it just before
    the first such frame)."""
    return page.wait_for_function(
        f"() => window.livereel.state.applied.findLast((a) => {where}) ?? false", timeout=WAIT_MS
    ).json_value()


def capture_clip(page, n: int, after: float = 0.0, skip: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W, 3) float: the next `n` new frames the page shows (repeats of a frame left
    out) that it received after `after` (performance.now() ms), the first `skip` such
    frames skipped; and (n - 1,) bool, True where two captured frames are consecutive
    stream frames (the page saw every frame shown between them)."""
    got = page.evaluate(CAPTURE_JS, {"n": n, "after": after, "skip": skip, "held": HELD, "timeout": WAIT_MS})
    rgba = np.frombuffer(base64.b64decode(got["data"]), np.uint8).reshape(n, got["height"], got["width"], 4)
    MEASURED.setdefault("repeats_left_out", []).append(got["repeats"])
    return rgba[..., :3].astype(np.float64), np.array(got["joined"], bool)


def capture(page, n: int, after: float = 0.0, skip: int = 0) -> np.ndarray:
    """(n, H, W, 3) float: the next `n` new frames the page shows (see `capture_clip`)."""
    return capture_clip(page, n, after, skip)[0]


def change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the average pictures of two captures (0-255)."""
    return float(np.abs(a.mean(0) - b.mean(0)).mean())


def shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(dx, dy) in pixels by which the content of frame `a` moved to give `b`
    (phase correlation; integer peak). A Hann window first: the FFT sees the picture
    as periodic, and the seam where its left edge meets its right one stands still
    while the content moves, which pinned the peak at 0 on most frame pairs of a pan. The
    whitened spectrum is weighted toward low frequencies (Gaussian, 0.12 cycles/px, as the
    eval's `measure_shift`): the VAE decoder draws a faint fine pattern fixed on the
    screen, and on a model's raw frames that pattern won a plain whitened correlation (0 px
    on most pairs of a pan); VP8 happened to smooth it away. The spectrum is the eval's
    own (`_cross_power`); the peak here is the integer one, over the whole frame."""
    from model.eval import _cross_power

    corr = np.fft.ifft2(_cross_power(a.mean(-1), b.mean(-1), lowpass=0.12)).real
    py, px = np.unravel_index(np.argmax(corr), corr.shape)
    h, w = corr.shape
    py, px = (py + h // 2) % h - h // 2, (px + w // 2) % w - w // 2
    return -int(px), -int(py)


def motion(frames: np.ndarray, joined: np.ndarray) -> dict[str, float]:
    """Content motion over a capture (`capture_clip`): mean dx and dy in px per stream
    frame, and the share of frame pairs whose content moved left (dx < 0) and right.
    Only pairs of consecutive stream frames count (repeated frames are not captured), so
    the figures judge the model's pictures, not the machine's speed; a repeat that its new
    encoding changed by more than HELD (1 in 10) still makes a pair that did not move."""
    shifts = np.array([shift(a, b) for a, b in zip(frames, frames[1:])], np.float64).reshape(-1, 2)[joined]
    pairs = max(len(shifts), 1)
    return {
        "dx": round(float(shifts[:, 0].sum() / pairs), 2),
        "dy": round(float(shifts[:, 1].sum() / pairs), 2),
        "left": round(float((shifts[:, 0] < 0).mean()), 2) if len(shifts) else 0.0,
        "right": round(float((shifts[:, 0] > 0).mean()), 2) if len(shifts) else 0.0,
        "pairs": len(shifts),
        "not_consecutive": int((~joined).sum()),
    }


def latency_ms(page) -> float | None:
    """The page's running estimate: server queue + jitter buffer + half the RTT."""
    video = page.evaluate("() => window.livereel.state.video")
    return round(video["latencyMs"]) if video else None


def state(page) -> dict:
    return page.evaluate("() => JSON.parse(JSON.stringify(window.livereel.state))")


def video_stats(page) -> dict:
    return page.evaluate("() => window.livereel.stream.stats()")


def frames_held(page) -> dict:
    """The server's count of frames sent and of those repeated (generation late)."""
    stats = state(page)["stats"] or {}
    return {"sent": stats.get("sent"), "held": stats.get("held")}


def record(capsys, artifacts, key: str, value) -> None:
    MEASURED[key] = value
    (artifacts / "measurements.json").write_text(json.dumps(MEASURED, indent=2, default=str))
    with capsys.disabled():
        print(f"\n[measured] {key}: {json.dumps(value, default=str)}")


def prompt_match(frames: np.ndarray, prompt: str) -> dict[str, float]:
    """Per attribute the prompt names, the share of frames where the attribute
    classifier (checkpoints/classifier) sees what the prompt says."""
    from model.eval import attribute_matches, classify, load_classifier

    labels = classify(np.clip(frames, 0, 255).astype(np.uint8), load_classifier())
    return {a: float(np.nanmean(v)) for a, v in attribute_matches(labels, prompt).items() if np.isfinite(v).any()}


def test_connects_plays_and_a_prompt_changes_the_picture(browser, server_url, artifacts, checkpoint, capsys):
    page = open_page(browser, server_url, seed=1)
    timings = page.evaluate("() => window.livereel.stream.timings")
    record(capsys, artifacts, "offer_to_first_frame_ms", round(timings["firstFrame"] - timings["offerSent"]))
    hello = state(page)["hello"]
    assert page.evaluate("() => document.getElementById('video').videoWidth") == hello["size"]

    start = page.evaluate("() => document.getElementById('video').currentTime")
    stats0, t0 = video_stats(page), time.monotonic()
    latencies = []
    for second in range(1, 4):
        page.wait_for_function(
            f"() => document.getElementById('video').currentTime >= {start + second}", timeout=WAIT_MS
        )
        latencies.append(latency_ms(page))
    stats1, t1 = video_stats(page), time.monotonic()
    record(capsys, artifacts, "delivered_fps", round((stats1["framesDecoded"] - stats0["framesDecoded"]) / (t1 - t0), 1))

    settled = reached(page, SETTLED)
    before_1 = capture(page, 16, after=settled)
    before_2 = capture(page, 16)
    prompt = page.locator("#prompt")
    prompt.fill(SWITCH_TO)
    prompt.press("Enter")
    switch = applied(page, f"a.what === 'prompt' && a.text === {json.dumps(SWITCH_TO)}")
    assert page.locator("#caption").inner_text() == SWITCH_TO
    after = capture(page, 16, after=switch["at"], skip=SWITCHED)
    latency = [e for e in state(page)["controlLatency"] if e["what"] == "prompt"][-1]
    record(
        capsys,
        artifacts,
        "prompt_latency_ms",
        {
            "sent_to_applied": round(latency["applied"] - latency["sent"]),
            "sent_to_first_frame_shown": round(latency["shown"] - latency["sent"]) if latency["shown"] else None,
        },
    )
    latencies.append(latency_ms(page))
    record(capsys, artifacts, "latency_ms_over_the_run", latencies)
    noise, switched = change(before_1, before_2), change(before_2, after)
    record(capsys, artifacts, "picture_change", {"same_prompt": round(noise, 3), "new_prompt": round(switched, 3)})
    page.screenshot(path=str(artifacts / "browser.png"))
    assert switched > 2 * noise + 0.5, (noise, switched)
    if checkpoint != "debug":
        # A trained model: the picture showed the first prompt's world, not the new one's,
        # and shows the new one's once the switch has settled (SWITCHED frames; `after`
        # began there). Biome and time of day: what the model card says it renders
        # (>= 80%). 48 frames (3 s of stream): the night desert is dim, and the classifier
        # calls a frame or two a second "city" (16 frames measured 0.75 to 1.0).
        later = capture(page, 48)
        before = np.concatenate([before_1, before_2])
        first = state(page)["hello"]["prompt"]
        match = {
            "before_vs_its_prompt": prompt_match(before, first),
            "before": prompt_match(before, SWITCH_TO),
            "after": prompt_match(later, SWITCH_TO),
        }
        record(capsys, artifacts, "prompt_match_" + checkpoint, match)
        for attribute in ("biome", "time"):
            assert match["before_vs_its_prompt"][attribute] >= 0.75, (attribute, match)
            assert match["before"][attribute] <= 0.25, (attribute, match)
            assert match["after"][attribute] >= 0.75, (attribute, match)
    record(capsys, artifacts, "frames_held", frames_held(page))
    page.close()


def test_holding_a_pan_key_moves_the_camera(browser, server_url, artifacts, checkpoint, capsys):
    page = open_page(browser, server_url, seed=2)
    still = capture_clip(page, 16, after=reached(page, SETTLED))
    speed = float(page.locator("#speed").input_value())
    page.locator("#video").click()  # focus off the prompt box: keys steer the camera
    page.keyboard.down("d")
    pan = applied(page, "a.what === 'camera' && a.pan[0] > 0")
    moving = capture_clip(page, 16, after=pan["at"])  # the first second of the pan
    moving_on = capture_clip(page, 16)  # the next one, the key still down
    page.keyboard.up("d")
    stop = applied(page, "a.what === 'camera' && a.pan[0] === 0 && a.pan[1] === 0")
    stopped = capture_clip(page, 16, after=stop["at"])
    cameras = [a for a in state(page)["applied"] if a["what"] == "camera"]
    assert cameras[0]["pan"] == [speed, 0] and cameras[-1]["pan"] == [0, 0]
    hello = state(page)["hello"]
    commanded = speed * hello["size"] / hello["fps"]  # px/frame: pan is in view widths per second
    figures = {
        "commanded_dx": -commanded,
        "still": motion(*still),
        "holding_d": motion(*moving),
        "holding_d_second_1_to_2": motion(*moving_on),
        "released": motion(*stopped),
        "checkpoint": checkpoint,
    }
    record(capsys, artifacts, "pan_right_px_per_frame", figures)
    if checkpoint != "debug":
        # Camera moves right: the picture slides left, in most frame pairs, for as long as
        # the key is held (at least half the commanded speed; 85-95% measured here, 57%
        # in the model card's eval), and not up or down; still before, still once released.
        for key in ("holding_d", "holding_d_second_1_to_2"):
            m = figures[key]
            assert m["dx"] <= -commanded / 2 and m["left"] >= 0.6 and abs(m["dy"]) <= abs(m["dx"]) / 4, (key, figures)
        for key in ("still", "released"):
            m = figures[key]
            assert abs(m["dx"]) <= 0.5 and abs(m["dy"]) <= 0.5 and m["left"] <= 0.2, (key, figures)
    page.close()


def test_a_malformed_message_gets_an_error_and_the_video_plays_on(browser, server_url, artifacts, checkpoint, capsys):
    page = open_page(browser, server_url)
    page.evaluate("() => window.livereel.stream.sendRaw('{\"type\": \"camera\", \"pan\": [7, 0]')")
    page.evaluate("() => window.livereel.stream.sendRaw(JSON.stringify({type: 'camera', pan: [7, 0], zoom: 0}))")
    page.wait_for_function("() => window.livereel.state.errors.length >= 2", timeout=WAIT_MS)
    errors = state(page)["errors"]
    assert [e["code"] for e in errors] == ["bad_json", "bad_message"]
    assert "camera.pan.0" in errors[1]["detail"]
    assert page.locator("#error").is_visible()
    now = page.evaluate("() => document.getElementById('video').currentTime")
    page.wait_for_function(f"() => document.getElementById('video').currentTime > {now + 1}", timeout=WAIT_MS)
    assert state(page)["connection"] == "live"
    # The refused pan did nothing: a still picture (trained model), and no camera applied
    # by the time the stream has gone SETTLED frames on.
    after = motion(*capture_clip(page, 16, after=reached(page, SETTLED)))
    assert not [a for a in state(page)["applied"] if a["what"] == "camera"]
    record(capsys, artifacts, "after_refused_pan_px_per_frame", after)
    if checkpoint != "debug":
        assert abs(after["dx"]) <= 0.5 and after["left"] <= 0.2, after
    page.close()


def test_two_pages_get_independent_streams(browser, server_url, artifacts, checkpoint, capsys):
    a = open_page(browser, server_url, seed=5, prompt=SHARED)
    b = open_page(browser, server_url, seed=5, prompt=SHARED)
    assert state(a)["session"] != state(b)["session"]
    # Each stream judged once it shows its prompt's scene (SETTLED), not its first chunks.
    a_before = capture(a, 16, after=reached(a, SETTLED))
    b_before = capture(b, 16, after=reached(b, SETTLED))
    a.locator("#prompt").fill(SWITCH_TO)
    a.locator("#prompt").press("Enter")
    switch = applied(a, f"a.what === 'prompt' && a.text === {json.dumps(SWITCH_TO)}")
    a_after = capture(a, 16, after=switch["at"], skip=SWITCHED)
    b_after = capture(b, 16)
    a_later = capture(a, 32)  # the switch long settled: from SWITCHED + 16 frames after it on
    changed_a, changed_b = change(a_before, a_after), change(b_before, b_after)
    record(capsys, artifacts, "two_pages_picture_change", {"switched": round(changed_a, 3), "other": round(changed_b, 3)})
    assert not any(x["what"] == "prompt" and x["text"] == SWITCH_TO for x in state(b)["applied"])
    assert b.locator("#caption").inner_text() == SHARED
    assert changed_a > 2 * changed_b + 0.5, (changed_a, changed_b)
    if checkpoint != "debug":
        # A trained model: both showed the shared prompt's world; then page a shows the
        # new prompt's, and page b still the shared one's, never the new one's.
        match = {
            "a_before_vs_shared": prompt_match(a_before, SHARED)["biome"],
            "b_before_vs_shared": prompt_match(b_before, SHARED)["biome"],
            "a_after_vs_new": prompt_match(a_later, SWITCH_TO)["biome"],
            "b_after_vs_shared": prompt_match(b_after, SHARED)["biome"],
            "b_after_vs_new": prompt_match(b_after, SWITCH_TO)["biome"],
        }
        record(capsys, artifacts, "two_pages_biome_match", match)
        assert min(match["a_before_vs_shared"], match["b_before_vs_shared"]) >= 0.75, match
        assert match["a_after_vs_new"] >= 0.75, match
        assert match["b_after_vs_shared"] >= 0.75 and match["b_after_vs_new"] <= 0.25, match
    record(capsys, artifacts, "two_pages_latency_ms", {"a": latency_ms(a), "b": latency_ms(b)})
    record(capsys, artifacts, "two_pages_frames_held", {"a": frames_held(a), "b": frames_held(b)})
    a.close()
    b.close()


@pytest.fixture(scope="module", autouse=True)
def no_page_errors():
    yield
    assert not MEASURED.get("page_errors"), MEASURED["page_errors"]


@pytest.mark.slow
def test_latency_stays_flat_over_a_long_stream(browser, server_url, artifacts, checkpoint, capsys):
    """A 2-minute stream (LIVEREEL_E2E_SECONDS) steered every 20 s: the page's latency
    estimate, control latency and delivered fps every 10 s, as JSON and a plot. Only
    behaviour is asserted (every control applied and shown, the video never stalls);
    the figures are reported."""
    import os

    seconds = float(os.environ.get("LIVEREEL_E2E_SECONDS", "120"))
    page = open_page(browser, server_url, seed=3)
    prompts = [SWITCH_TO, SHARED]
    rows, t0 = [], time.monotonic()
    frames0 = video_stats(page)["framesDecoded"]
    n_sent = 0
    while (elapsed := time.monotonic() - t0) < seconds:
        if elapsed >= 20 * n_sent:
            text = prompts[n_sent % 2]
            page.locator("#prompt").fill(text)
            page.locator("#prompt").press("Enter")
            n_sent += 1
        page.wait_for_timeout(10_000)
        stats = video_stats(page)
        rows.append({"t": round(time.monotonic() - t0, 1), "latency_ms": latency_ms(page),
                     "frames": stats["framesDecoded"] - frames0, "server": frames_held(page),
                     "video_time": page.evaluate("() => document.getElementById('video').currentTime")})
    page.wait_for_function(f"() => window.livereel.state.controlLatency.filter(e => e.shown).length >= {n_sent}",
                           timeout=WAIT_MS)
    controls = [round(e["shown"] - e["sent"]) for e in state(page)["controlLatency"] if e["what"] == "prompt"]
    fps = [round((b["frames"] - a["frames"]) / (b["t"] - a["t"]), 1) for a, b in zip(rows, rows[1:])]
    record(capsys, artifacts, "long_stream", {"checkpoint": checkpoint, "seconds": seconds, "samples": rows,
                                              "prompt_sent_to_shown_ms": controls, "fps_per_10s": fps})
    plot_long_stream(rows, controls, artifacts / "latency_over_time.png")
    assert len(controls) == n_sent
    assert all(b["frames"] > a["frames"] for a, b in zip(rows, rows[1:]))  # never stalls
    page.close()


def plot_long_stream(rows: list[dict], controls: list[int], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([r["t"] for r in rows], [r["latency_ms"] for r in rows], marker="o", label="page latency estimate")
    ax.plot([20 * i for i in range(len(controls))], controls, marker="s", label="prompt sent → shown")
    ax.set_xlabel("seconds into the stream")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


RED = "a red ball bouncing over a meadow by day under clear skies"
"""The page's default prompt; BLUE changes only its colour word."""
BLUE = RED.replace("red", "blue")


def test_a_colour_switch_recolours_the_object(browser, server_url, artifacts, checkpoint, capsys):
    """A model that draws the prompt's object (DiTConfig.object_hint: the v2 models; v1
    draws none, see its model card): after the prompt's colour word changes, the
    classifier sees the object in the new colour, and did not before."""
    from model.checkpoint import resolve

    if checkpoint == "debug" or not json.loads((resolve(checkpoint) / "config.json").read_text())["dit"].get(
            "object_hint"):
        pytest.skip(f"{checkpoint!r} draws no object (object_hint off): nothing to recolour")
    page = open_page(browser, server_url, seed=3, prompt=RED)
    before = capture(page, 48, after=reached(page, SETTLED))
    prompt = page.locator("#prompt")
    prompt.fill(BLUE)
    prompt.press("Enter")
    switch = applied(page, f"a.what === 'prompt' && a.text === {json.dumps(BLUE)}")
    after = capture(page, 48, after=switch["at"], skip=SWITCHED)
    match = {
        "before_vs_its_prompt": prompt_match(before, RED),
        "before": prompt_match(before, BLUE),
        "after": prompt_match(after, BLUE),
    }
    record(capsys, artifacts, "colour_switch_" + checkpoint, match)
    assert match["before_vs_its_prompt"]["colour"] >= 0.5, match
    assert match["before"]["colour"] <= 0.25, match
    assert match["after"]["colour"] >= 0.5, match
    page.close()
