"""`livereel demo`: a Gradio app over the Generator, for trying livereel without WebRTC.

Thin on purpose: every frame comes from `Generator.next_frames()`, every control from
`Generator.set_prompt / set_camera / reset`. What lives here is plumbing:

- one `DemoStream` per browser session (keyed by Gradio's session hash): the Generator,
  the controls staged for the next chunk (latest wins, as in streamer/session.py), and
  the event log in the session-log format (`livereel replay LOG` renders it);
- the streaming output: chunks are grouped into segments of about `segment_seconds`,
  each encoded by PyAV to an H.264 MPEG-TS file that the stream generator yields to
  `gr.Video(streaming=True)` (Gradio serves them to hls.js as a live playlist);
- pacing: generation runs at most `LEAD_SEGMENTS` segments ahead of the wall clock, so
  the time from a control to the screen stays a couple of seconds and never grows;
- admission: at most `max_sessions` streams run at once (the Start event's concurrency
  limit); later ones wait in Gradio's queue and are told so;
- shutdown: Ctrl-C and SIGTERM reach `main` (streamer/cli.py makes both exceptions),
  which ends every stream, waits for the chunk in progress and removes the demo's
  temporary folder; the process then ends at once (cli.py's EXIT_AT_ONCE: Gradio's
  daemon threads would abort the interpreter's shutdown).

Inputs are checked here, at the edge; a bad one gets an error message and the stream
goes on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import logging
import math
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import gradio as gr
import numpy as np

from model.sampling import Sampling, add_sampling_arguments, sampling_from_args
from model.engine_choice import add_engine_argument, apply_engine
from model.wan.config import add_wan_arguments, wan_options_from_args
from streamer.controls import MAX_PROMPT_CHARS, MAX_SEED, MAX_TRANSITION_CHUNKS
from streamer.session import LOG_VERSION, EventLog

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "a red ball bouncing over grassland by day"
SEGMENT_SECONDS = 1.0
"""Video per streamed segment. Shorter segments cut latency but cost hls.js more
playlist polls and the encoder more keyframes; a second is the usual live-HLS floor."""
LEAD_SEGMENTS = 2
"""How far generation may run ahead of the wall clock, in segments: one playing and one
ready. Less starves the player, since a segment reaches it only after Gradio's remux
and hls.js's next playlist poll (about a target duration); more only adds latency."""
CRF = 20
"""x264 quality (lower is better); 128-pixel frames cost a few KB a segment either way."""
CAMERA_MOVES: dict[str, tuple[str, float]] = {
    # button -> (axis, sign). Image coordinates: x right, y down; zoom > 0 zooms in.
    "pan left": ("x", -1.0),
    "pan right": ("x", 1.0),
    "pan up": ("y", -1.0),
    "pan down": ("y", 1.0),
    "zoom in": ("zoom", 1.0),
    "zoom out": ("zoom", -1.0),
}


# ---------------------------------------------------------------------------- validation
class InputError(gr.Error):
    """A user's input is not acceptable. Raised in a handler, Gradio shows the message
    (and gradio_client raises it); the stream is another event and goes on."""

    def __init__(self, message: str) -> None:
        super().__init__(message, title="Invalid input", print_exception=False)


def check_prompt(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        raise InputError(f"Type a prompt first (1 to {MAX_PROMPT_CHARS} characters).")
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"The prompt is {len(text)} characters long; "
                         f"at most {MAX_PROMPT_CHARS} are allowed.")
    return text


def check_seed(value: float | int | None) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value != int(value) or not 0 <= value <= MAX_SEED:
        raise InputError(f"The seed must be a whole number from 0 to {MAX_SEED} (got {value!r}).")
    return int(value)


def check_unit(value: float | None, name: str) -> float:
    if not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InputError(f"The {name} must be between 0 and 1 (got {value!r}).")
    return float(value)


# ---------------------------------------------------------------------------- segments
def write_segment(frames: np.ndarray, path: Path, fps: int, first_frame: int, crf: int = CRF) -> Path:
    """uint8 (F, H, W, 3) frames -> one H.264 (yuv420p, zero-latency) MPEG-TS file that
    starts with a keyframe and decodes on its own. Timestamps continue the stream
    (frame `first_frame` at first_frame / fps), so segments concatenate."""
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        # One thread: a segment is a few small frames, and the model needs the cores.
        stream.options = {"preset": "veryfast", "tune": "zerolatency", "crf": str(crf), "threads": "1"}
        for i, frame in enumerate(frames):
            video = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video.pts, video.time_base = first_frame + i, Fraction(1, fps)
            out.mux(stream.encode(video))
        out.mux(stream.encode())
    return path


# ---------------------------------------------------------------------------- one stream
class DemoStream:
    """One browser session's stream. The stream generator's thread calls `chunk` and
    `segments`; Gradio's handler threads call `stage_*`, `stop` and `status`. Shared
    state is behind one lock, never held while the model runs."""

    def __init__(self, model, sampling: Sampling, seed: int, prompt: str) -> None:
        self.config = model.config
        self.generator = sampling.generator(model, seed=seed)
        self.id = uuid.uuid4().hex[:12]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._busy = threading.Lock()  # held while a chunk or segment is made: `finish` waits on it
        self._staged: dict[str, tuple[tuple, float]] = {"prompt": ((prompt, 0), time.monotonic())}
        self._unseen: list[tuple[int, str, float]] = []  # (frame, what, received) not yet streamed
        self.pan, self.zoom = (0.0, 0.0), 0.0  # the latest camera command (staged or applied)
        self.frames_made = 0
        self.chunks_made = 0
        self.chunk_seconds = 0.0  # moving average of one chunk's generation time
        self.last_control: str | None = None
        """The last control to reach a segment, with its latency, for the status line."""
        cfg = self.config
        self.log = EventLog({
            "what": "header",
            "version": LOG_VERSION,
            "session": self.id,
            "model": cfg.name,
            "seed": seed,
            "fps": cfg.fps,
            "size": cfg.frame_size[0],
            **({} if cfg.frame_size[0] == cfg.frame_size[1] else {"width": cfg.frame_size[1]}),
            "frames_per_chunk": cfg.frames_per_chunk,
            **model.sampling_record(sampling),
            "prompt": prompt,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        })

    # -- controls (any thread) -------------------------------------------------------
    def stage_prompt(self, text: str, transition: int = 0) -> None:
        self._stage("prompt", (text, transition))

    def move_camera(self, axis: str, velocity: float) -> tuple[tuple[float, float], float]:
        """Set one axis of the camera velocity (x, y or zoom; "stop" zeroes all)."""
        with self._lock:
            (x, y), z = self.pan, self.zoom
            if axis == "stop":
                x = y = z = 0.0
            elif axis == "x":
                x = velocity
            elif axis == "y":
                y = velocity
            else:
                z = velocity
            self.pan, self.zoom = (x, y), z
            self._staged["camera"] = (((x, y), z), time.monotonic())
        return (x, y), z

    def stage_reset(self, seed: int) -> None:
        self._stage("reset", (seed,))

    def _stage(self, what: str, args: tuple) -> None:
        with self._lock:
            self._staged[what] = (args, time.monotonic())

    def stop(self) -> None:
        self._stop.set()

    def finish(self, timeout: float) -> bool:
        """Stop, and wait up to `timeout` s for the chunk or segment in progress; True
        once no model work or segment write is running or can start."""
        self._stop.set()
        if not self._busy.acquire(timeout=timeout):
            return False
        self._busy.release()
        return True

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # -- generation (the stream's thread) ----------------------------------------------
    def chunk(self) -> np.ndarray:
        """One chunk under the staged controls: uint8 (frames_per_chunk, H, W, 3). Logs
        what took effect at the session-wide frame of the chunk's start."""
        with self._lock:
            staged, self._staged = self._staged, {}
        gen = self.generator
        for what, (args, _) in staged.items():
            if what == "prompt":
                gen.set_prompt(args[0], transition=args[1])
            elif what == "camera":
                gen.set_camera(pan=args[0], zoom=args[1])
            else:
                gen.reset(args[0])
        start = time.perf_counter()
        frames = gen.next_frames()
        took = time.perf_counter() - start
        self.chunk_seconds = took if self.chunks_made == 0 else 0.8 * self.chunk_seconds + 0.2 * took
        first = self.frames_made
        for entry in gen.applied:
            event = {"what": entry["what"], "frame": first}
            event.update((k, v) for k, v in entry.items() if k not in event)
            self.log.add(event)
            received = staged[entry["what"]][1] if entry["what"] in staged else time.monotonic()
            self._unseen.append((first, entry["what"], received))
        self.frames_made += len(frames)
        self.chunks_made += 1
        return frames

    def segments(self, folder: Path, segment_seconds: float = SEGMENT_SECONDS,
                 crf: int = CRF) -> Iterator[Path]:
        """Segment files of about `segment_seconds` each, until `stop()`. Generation is
        paced to stay at most `LEAD_SEGMENTS` segments ahead of the wall clock; when it is
        late, the clock restarts rather than letting a burst pile video up ahead of the
        viewer."""
        cfg = self.config
        per_segment = max(1, round(segment_seconds * cfg.fps / cfg.frames_per_chunk))
        lead = LEAD_SEGMENTS * per_segment * cfg.frames_per_chunk / cfg.fps
        clock = time.monotonic()  # when frame 0 is due on screen
        written: list[Path] = []
        while True:
            with self._busy:  # not across the yield: Gradio may never ask for the next segment
                if self.stopped:
                    break
                first, frames = self.frames_made, []
                for _ in range(per_segment):
                    ahead = self.frames_made / cfg.fps - (time.monotonic() - clock)
                    if ahead < 0:
                        clock = time.monotonic() - self.frames_made / cfg.fps
                    elif ahead > lead:
                        self._stop.wait(ahead - lead)
                    if self.stopped:
                        break
                    frames.append(self.chunk())
                if not frames:
                    break
                path = write_segment(np.concatenate(frames), folder / f"{first:09d}.ts", cfg.fps, first, crf)
                self._note_streamed(self.frames_made)
                log.debug("stream %s: segment of frames %d-%d, %.2f s ahead of the clock", self.id, first,
                          self.frames_made - 1, self.frames_made / cfg.fps - (time.monotonic() - clock))
            # Gradio has read a segment by the time it asks for the next one.
            for old in written[:-1]:
                old.unlink(missing_ok=True)
            written = written[-1:] + [path]
            yield path

    def _note_streamed(self, end: int) -> None:
        """Controls whose first frame is before `end` are now out: note their latency."""
        now = time.monotonic()
        out = [u for u in self._unseen if u[0] < end]
        self._unseen = [u for u in self._unseen if u[0] >= end]
        for frame, what, received in out:
            self.last_control = f"{what} at frame {frame}, streamed {now - received:.2f} s after it was sent"
            log.info("stream %s: %s", self.id, self.last_control)

    def status(self) -> str:
        cfg, gen = self.config, self.generator
        speed = cfg.frames_per_chunk / cfg.fps / self.chunk_seconds if self.chunk_seconds else 0.0
        (x, y), z = self.pan, self.zoom
        lines = [
            f"**{'stopped' if self.stopped else 'streaming'}** · session `{self.id}` · "
            f"frame {self.frames_made} ({self.frames_made / cfg.fps:.1f} s) · "
            f"generation at {speed:.2f}x real time",
            f"prompt: {gen.prompt or '(none yet)'} · seed {gen.seed} · "
            f"camera pan ({x:+.2f}, {y:+.2f}), zoom {z:+.2f}",
        ]
        if self.last_control:
            lines.append(f"last control: {self.last_control}")
        return "  \n".join(lines)


# ---------------------------------------------------------------------------- the app
class Streams:
    """The demo's streams by Gradio session hash: the running one, or the last one (its
    log stays downloadable until the tab closes); and the demo's temporary folder (each
    running stream's segments, saved event logs), removed by `close`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, DemoStream] = {}
        self._running: set[str] = set()
        self._ended = threading.Condition(self._lock)
        self._closed = False
        self._folder = tempfile.TemporaryDirectory(prefix="livereel-demo-", ignore_cleanup_errors=True)
        self.folder = Path(self._folder.name)

    def get(self, key: str) -> DemoStream | None:
        with self._lock:
            return self._streams.get(key)

    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def begin(self, key: str, stream: DemoStream) -> None:
        with self._lock:
            if self._closed:
                raise InputError("The demo is shutting down.")
            if key in self._running:
                raise InputError("This tab is already streaming: press Stop first.")
            self._streams[key] = stream
            self._running.add(key)

    def end(self, key: str) -> None:
        with self._lock:
            self._running.discard(key)
            self._ended.notify_all()

    def drop(self, key: str) -> None:
        with self._lock:
            stream = self._streams.pop(key, None)
        if stream is not None:
            stream.stop()

    def close(self, timeout: float = 5.0, drain: float = 1.0) -> None:
        """End every stream: wait up to `timeout` s in all for the chunks being made (so
        that no segment is being written into the folder removed here), then up to
        `drain` s for Gradio to resume each stopped stream, which ends it (and logs so);
        remove the temporary folder. Later Starts are refused."""
        with self._lock:
            self._closed = True
            streams = list(self._streams.values())
        end = time.monotonic() + timeout
        try:
            for stream in streams:
                if not stream.finish(max(0.0, end - time.monotonic())):
                    log.warning("stream %s: still in a chunk after %.0f s; not waiting for it", stream.id, timeout)
            with self._lock:
                self._ended.wait_for(lambda: not self._running, timeout=drain)
        finally:  # a second Ctrl-C cuts the wait short, not the cleanup
            self._folder.cleanup()


def _session(request: gr.Request) -> str:
    return request.session_hash or "anonymous"


def explain_words(text: str, rewrite: bool = False) -> str:
    """What a closed-vocabulary model makes of `text`'s words, as one Markdown line (the
    page's hint beside its prompt box, in words); with `rewrite`, the wording it reads
    where the prompt rewrite changes it (`Sampling.rewrite`)."""
    from model.world import explain_prompt, grammar_prompt

    understood, ignored, overridden, first = [], [], [], {}
    for w in explain_prompt(text):
        if w["attribute"] and w["used"]:
            first[w["attribute"]] = w["text"]
            understood.append(f"*{w['text']}* → {w['attribute']} {w['value']}")
        elif w["attribute"]:
            overridden.append(f"*{w['text']}* (“{first[w['attribute']]}” already set the {w['attribute']})")
        elif not w["stop"]:
            ignored.append(f"*{w['text']}*")
    parts = [f"**understood:** {', '.join(understood) or 'no word'}"]
    if ignored:
        parts.append(f"**ignored:** {', '.join(ignored)}")
    if overridden:
        parts.append(f"**overridden:** {', '.join(overridden)}")
    reads = grammar_prompt(text) if rewrite else text
    if reads != text:
        parts.append(f"**reads:** “{reads}”")
    return " · ".join(parts)


def vocabulary_markdown() -> str:
    """Every word a livereel model knows, as a Markdown table (the demo's "What this model knows")."""
    from model.world import vocabulary

    rows = ["| | values (and other words for them) |", "| --- | --- |"]
    for attribute, values in vocabulary().items():
        cells = [f"**{v}**" + (f" ({', '.join(p for p in phrases if p != v)})" if len(phrases) > 1 or phrases[0] != v
                               else "") for v, phrases in values.items()]
        rows.append(f"| {attribute} | {'; '.join(cells)} |")
    return ("It knows these words and no others. A prompt replaces the whole scene: what it leaves out, the "
            "model chooses.\n\n" + "\n".join(rows))


def build_app(model, sampling: Sampling = Sampling(), max_sessions: int = 2, *,
              segment_seconds: float = SEGMENT_SECONDS, crf: int = CRF,
              streams: Streams | None = None) -> gr.Blocks:
    """The demo's Blocks, queued, ready to `launch()`. `model` is a loaded LiveReel;
    `streams` (a new one if not given) holds the streams, and its `close()` ends them."""
    if max_sessions < 1:
        raise ValueError(f"max_sessions must be >= 1 (got {max_sessions})")
    cfg = model.config
    streams = Streams() if streams is None else streams
    chunk_s = cfg.frames_per_chunk / cfg.fps

    def current(request: gr.Request) -> DemoStream:
        stream = streams.get(_session(request))
        if stream is None or stream.stopped:
            raise InputError("Not streaming: press Start first.")
        return stream

    # -- handlers ----------------------------------------------------------------------
    def check(prompt: str, seed: float) -> str:
        """Validate the start inputs and say whether the stream starts now or waits."""
        check_prompt(prompt)
        check_seed(seed)
        busy = streams.running()
        if busy >= max_sessions:
            return (f"All streams are in use ({busy} of {max_sessions}). You are in the queue: "
                    "your stream starts as soon as one ends.")
        return "Starting…"

    def start(prompt: str, seed: float, request: gr.Request) -> Iterator[tuple[str, str]]:
        """Stream video from `prompt` and `seed` until Stop; yields (segment, status)."""
        prompt, seed = check_prompt(prompt), check_seed(seed)
        key = _session(request)
        stream = DemoStream(model, sampling, seed, prompt)
        streams.begin(key, stream)
        log.info("stream %s: started (session %s, %d running)", stream.id, key[:8], streams.running())
        folder = streams.folder / stream.id
        try:
            folder.mkdir()
            for path in stream.segments(folder, segment_seconds, crf):
                yield str(path), stream.status()
        finally:
            stream.stop()
            shutil.rmtree(folder, ignore_errors=True)
            streams.end(key)
            log.info("stream %s: ended after %d frames", stream.id, stream.frames_made)

    def stop(request: gr.Request) -> str:
        """Stop this tab's stream (its event log stays downloadable)."""
        stream = streams.get(_session(request))
        if stream is None or stream.stopped:
            return "Not streaming."
        stream.stop()
        return f"Stopped at frame {stream.frames_made}."

    def switch(prompt: str, request: gr.Request) -> str:
        """Switch the running stream to `prompt` at the next chunk."""
        text = check_prompt(prompt)
        current(request).stage_prompt(text)
        return f"Switching to “{text}” at the next chunk."

    def blend(prompt: str, seconds: float, request: gr.Request) -> str:
        """Blend the running stream into `prompt` over `seconds` of video (0 switches)."""
        text = check_prompt(prompt)
        longest = MAX_TRANSITION_CHUNKS * chunk_s
        if not isinstance(seconds, (int, float)) or not 0 <= seconds <= longest:
            raise InputError(f"The blend must last 0 to {longest:g} s (got {seconds!r}).")
        chunks = math.ceil(round(seconds / chunk_s, 6))
        current(request).stage_prompt(text, transition=chunks)
        return f"Blending into “{text}” over {chunks} chunks ({chunks * chunk_s:.2f} s)."

    def camera(move: str) -> Callable:
        axis, sign = CAMERA_MOVES.get(move, ("stop", 0.0))  # "stop camera"

        def handler(speed: float, request: gr.Request) -> str:
            velocity = sign * check_unit(speed, "camera speed")
            pan, zoom = current(request).move_camera(axis, velocity)
            return f"Camera: pan ({pan[0]:+.2f}, {pan[1]:+.2f}), zoom {zoom:+.2f}, from the next chunk."
        handler.__name__ = move.replace(" ", "_")
        handler.__doc__ = f"Camera: {move} at `speed` (0 to 1)."
        return handler

    def reset(seed: float, request: gr.Request) -> str:
        """Restart the running stream from `seed`, keeping prompt and camera."""
        seed = check_seed(seed)
        current(request).stage_reset(seed)
        return f"Restarting with seed {seed} at the next chunk."

    def save_log(request: gr.Request) -> str:
        """The event log of this tab's stream (JSON lines; `livereel replay` renders it)."""
        stream = streams.get(_session(request))
        if stream is None:
            raise InputError("No stream yet: press Start first.")
        path = streams.folder / f"livereel-{stream.id}.jsonl"
        path.write_text(stream.log.text(), encoding="utf-8")
        return str(path)

    def unload(request: gr.Request) -> None:
        streams.drop(_session(request))

    # -- layout --------------------------------------------------------------------------
    height, width = cfg.frame_size
    size = str(height) if height == width else f"{width}x{height}"
    steps = model.sampling_record(sampling)["steps"]
    with gr.Blocks(title="livereel demo") as app:
        gr.Markdown(
            f"## livereel\nEndless video from a prompt, steered while it plays. Model `{cfg.name}`, "
            f"{size} px, {cfg.fps} fps, {steps} steps, guidance {sampling.guidance:g}; controls apply at the next chunk "
            f"({cfg.frames_per_chunk} frames)." + ("" if model.camera else f" {model.camera_note}: no camera controls.")
        )
        with gr.Row():
            with gr.Column(scale=3):
                video = gr.Video(label="stream", streaming=True, autoplay=True, interactive=False)
                status = gr.Markdown("Press **Start**.")
            with gr.Column(scale=2):
                prompt = gr.Textbox(DEFAULT_PROMPT, label="prompt", max_lines=3,
                                    info=f"1 to {MAX_PROMPT_CHARS} characters; Enter switches now")
                closed = getattr(model, "closed_vocabulary", False)  # Wan's umT5 reads any wording
                words = gr.Markdown(explain_words(DEFAULT_PROMPT, sampling.rewrite) if closed else "",
                                    visible=closed)
                with gr.Accordion("What this model knows", open=False, visible=closed):
                    gr.Markdown(vocabulary_markdown() if closed else "")
                with gr.Row():
                    switch_btn = gr.Button("Switch now", variant="primary")
                    blend_btn = gr.Button("Blend")
                blend_s = gr.Slider(0, MAX_TRANSITION_CHUNKS * chunk_s, value=4 * chunk_s, step=chunk_s,
                                    label="blend over (seconds)")
                speed = gr.Slider(0, 1, value=0.5, step=0.05, label="camera speed", interactive=model.camera)
                with gr.Row():
                    moves = {m: gr.Button(m, size="sm", interactive=model.camera) for m in ("pan left", "pan right")}
                with gr.Row():
                    moves |= {m: gr.Button(m, size="sm", interactive=model.camera) for m in ("pan up", "pan down")}
                with gr.Row():
                    moves |= {m: gr.Button(m, size="sm", interactive=model.camera)
                              for m in ("zoom in", "zoom out", "stop camera")}
                with gr.Row():
                    seed = gr.Number(0, label="seed", precision=0, info=f"0 to {MAX_SEED}")
                    reset_btn = gr.Button("Restart with seed")
                with gr.Row():
                    start_btn = gr.Button("Start", variant="primary")
                    stop_btn = gr.Button("Stop", variant="stop")
                message = gr.Markdown()
                with gr.Row():
                    log_btn = gr.Button("Event log")
                    log_file = gr.File(label="event log (.jsonl)", interactive=False)

        # Start: check and say whether it waits, then stream. Only `start` holds a slot.
        started = start_btn.click(check, [prompt, seed], message, api_name="check",
                                  concurrency_limit=None).success(
            start, [prompt, seed], [video, status], api_name="start",
            concurrency_limit=max_sessions, concurrency_id="stream", show_progress="minimal")
        # Cancelling also takes a waiting tab out of the queue; the flag ends a running
        # stream for API callers, who have no frontend to send the cancel.
        stop_btn.click(stop, None, message, api_name="stop", concurrency_limit=None, cancels=[started])
        for trigger in (switch_btn.click, prompt.submit):
            trigger(switch, prompt, message, api_name="switch", concurrency_limit=None)
        blend_btn.click(blend, [prompt, blend_s], message, api_name="blend", concurrency_limit=None)
        for move, btn in moves.items():
            btn.click(camera(move), speed, message, api_name=move.replace(" ", "_"),
                      concurrency_limit=None)
        reset_btn.click(reset, seed, message, api_name="reset", concurrency_limit=None)
        log_btn.click(save_log, None, log_file, api_name="log", concurrency_limit=None)
        if closed:  # as the user types: which words the model will understand
            prompt.change(functools.partial(explain_words, rewrite=sampling.rewrite), prompt, words,
                          api_name="explain", concurrency_limit=None, show_progress="hidden")
        app.unload(unload)
    app.queue(default_concurrency_limit=None)
    return app


# ---------------------------------------------------------------------------- command
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (0.0.0.0 exposes the demo to the network)")
    p.add_argument("--checkpoint", default="default",
                   help="checkpoint name or path ('debug' for a random model)")
    add_sampling_arguments(p)
    add_wan_arguments(p)
    add_engine_argument(p)
    p.add_argument("--max-sessions", type=int, default=2,
                   help="streams generated at once; later visitors wait in a queue")


def main(args: argparse.Namespace) -> int:
    from model import CheckpointError, load_model

    if args.max_sessions < 1:
        print("livereel demo: --max-sessions must be >= 1", file=sys.stderr)
        return 2
    if not 1 <= args.port <= 65535:
        print(f"livereel demo: --port must be 1 to 65535 (got {args.port})", file=sys.stderr)
        return 2
    try:
        sampling = sampling_from_args(args)
        wan = wan_options_from_args(args)
    except ValueError as e:
        print(f"livereel demo: {e}", file=sys.stderr)
        return 2
    from streamer.server import port_problem

    problem = port_problem(args.host, args.port)
    if problem:
        print(f"livereel demo: {problem}", file=sys.stderr)
        return 2
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        print(f"livereel demo: Gradio's streaming video needs {' and '.join(missing)} on PATH "
              "(Debian: apt-get install ffmpeg)", file=sys.stderr)
        return 1
    from model.engine import EngineError

    try:
        model = apply_engine(load_model(args.checkpoint, wan=wan), args.engine)
    except (CheckpointError, EngineError) as e:
        print(f"livereel demo: {e}", file=sys.stderr)
        return 1
    streams = Streams()
    app = build_app(model, sampling, args.max_sessions, streams=streams)
    try:
        try:
            app.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True)
        except OSError:  # taken since the check, or (Gradio checks 127.0.0.1 too) on IPv4 loopback
            print(f"livereel demo: port {args.port} is in use; choose another with --port", file=sys.stderr)
            return 2
        # Gradio's own wait would catch Ctrl-C and wait up to 5 s for open streams; this one
        # lets Ctrl-C and SIGTERM (an exception here: streamer/cli.py) through to the cleanup.
        while app.is_running:
            time.sleep(0.1)
        return 0
    finally:  # not app.close(): it waits up to 5 s for the tabs' open connections; and the
        # process then ends without the interpreter's shutdown (streamer/cli.py, EXIT_AT_ONCE)
        streams.close()
