"""Timeline -> MP4 (`livereel export`), and the renderer that replay shares.

A timeline scripts a long video in advance:

    {"seed": 0, "duration": 60.0, "events": [
        {"at": 0.0, "prompt": "a red ball bouncing over grassland by day"},
        {"at": 12.5, "camera": {"pan": [0.3, 0.0], "zoom": 0.0}},
        {"at": 30.0, "prompt": "a blue cube in a snowy city at night", "transition": 1.0}]}

Times are seconds; an event takes effect at the first chunk boundary at or after it (the
same rule as live controls); `transition` (seconds) blends the old prompt into the new
one instead of a hard re-cache. Frames stream from the Generator into the encoder, so
memory does not grow with the duration, and the MP4 appears only when complete.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tqdm import tqdm

from model.sampling import add_sampling_arguments, sampling_from_args
from model.engine_choice import add_engine_argument, apply_engine
from model.sample import check_output
from model.wan.config import add_wan_arguments, wan_options_from_args

MAX_SECONDS = 24 * 3600


class CameraMove(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pan: tuple[float, float] = (0.0, 0.0)
    zoom: float = 0.0

    @field_validator("pan")
    @classmethod
    def _pan(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(math.isfinite(x) and -1 <= x <= 1 for x in v):
            raise ValueError("pan values must be finite and within [-1, 1] view widths per second")
        return v

    @field_validator("zoom")
    @classmethod
    def _zoom(cls, v: float) -> float:
        if not (math.isfinite(v) and -1 <= v <= 1):
            raise ValueError("zoom must be finite and within [-1, 1] (log2 per second)")
        return v


class TimelineEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: float = Field(ge=0, allow_inf_nan=False)
    prompt: str | None = Field(default=None, min_length=1, max_length=500)
    transition: float | None = Field(default=None, ge=0, le=60, allow_inf_nan=False)
    camera: CameraMove | None = None

    @model_validator(mode="after")
    def _one_thing(self) -> "TimelineEvent":
        if (self.prompt is None) == (self.camera is None):
            raise ValueError("an event sets exactly one of 'prompt' or 'camera'")
        if self.transition is not None and self.prompt is None:
            raise ValueError("'transition' goes with a 'prompt'")
        return self


class Timeline(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = Field(default=0, ge=0, lt=2**63)
    duration: float = Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    events: list[TimelineEvent] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> "Timeline":
        for i, e in enumerate(self.events):
            if i and e.at < self.events[i - 1].at:
                raise ValueError(f"events[{i}] (at {e.at}s) comes before events[{i - 1}] "
                                 f"(at {self.events[i - 1].at}s): events must be in time order")
            if e.at >= self.duration:
                raise ValueError(f"events[{i}] at {e.at}s is past the end ({self.duration}s)")
        return self


class TimelineError(ValueError):
    """A timeline or log that cannot be rendered; the message names the event."""


def load_timeline(path: Path) -> Timeline:
    try:
        return Timeline.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise TimelineError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise TimelineError(f"{path}: not a text file") from None
    except OSError as e:
        raise TimelineError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise TimelineError(f"{path}: not JSON: {e}") from None
    except RecursionError:
        raise TimelineError(f"{path}: JSON nested too deeply") from None
    except ValidationError as e:
        raise TimelineError(f"{path}: {_explain(e)}") from None


def _explain(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err["loc"]) or "timeline"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def timeline_events(tl: Timeline, fps: int, frames_per_chunk: int) -> list[dict]:
    """Timeline events as Generator controls at frames (the dicts a session log holds)."""
    out = []
    for e in tl.events:
        frame = math.ceil(round(e.at * fps, 6))
        if e.prompt is not None:
            chunks = 0 if e.transition is None else math.ceil(e.transition * fps / frames_per_chunk)
            out.append({"what": "prompt", "frame": frame, "text": e.prompt, "transition": chunks})
        else:
            out.append({"what": "camera", "frame": frame, "pan": list(e.camera.pan), "zoom": e.camera.zoom})
    return out


def apply_event(gen, event: dict) -> None:
    """Stage one logged control on a Generator (pause/resume do not change generation)."""
    what = event["what"]
    if what == "prompt":
        gen.set_prompt(event["text"], transition=int(event.get("transition") or 0))
    elif what == "camera":
        gen.set_camera(pan=tuple(event["pan"]), zoom=float(event["zoom"]))
    elif what == "reset":
        gen.reset(int(event["seed"]))


def render(gen, events: list[dict], n_frames: int, desc: str = "render",
           first_chunk: int = 0) -> Iterator[np.ndarray]:
    """Frames of a stream whose controls are `events` (dicts with a "frame"), each staged at
    the first chunk boundary at or after its frame. Yields uint8 (H, W, 3) frames.
    `first_chunk`: `gen` stands after that many chunks already (a restored snapshot): the
    frames from there on, under the events from there on."""
    k = gen.config.frames_per_chunk
    pending = sorted((e for e in events if e["frame"] >= first_chunk * k), key=lambda e: e["frame"])
    i = 0
    n_chunks = math.ceil(n_frames / k)
    made = first_chunk * k
    with tqdm(total=n_frames - made, desc=desc, unit="frame") as bar:
        for c in range(first_chunk, n_chunks):
            while i < len(pending) and pending[i]["frame"] <= c * k:
                apply_event(gen, pending[i])
                i += 1
            frames = gen.next_frames()
            for f in frames[: n_frames - made]:
                yield f
            made += len(frames[: n_frames - made])
            bar.update(min(k, n_frames - c * k))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("timeline", type=Path, help="timeline JSON (see README and examples/)")
    p.add_argument("-o", "--output", type=Path, required=True, help="MP4 to write")
    p.add_argument("--checkpoint", default="default", help="checkpoint name or path ('debug' for a random model)")
    add_sampling_arguments(p)
    add_wan_arguments(p)
    add_engine_argument(p)
    p.add_argument("--seed", type=int, default=None, help="override the timeline's seed")


def main(args: argparse.Namespace) -> int:
    # Everything the user gave is checked before the model (and torch) is loaded.
    try:
        sampling = sampling_from_args(args)
        wan = wan_options_from_args(args)
        check_output(args.output)
    except ValueError as e:
        raise SystemExit(f"livereel export: {e}") from None
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise SystemExit("livereel export: --seed must be in [0, 2**63)")
    try:
        tl = load_timeline(args.timeline)
    except TimelineError as e:
        raise SystemExit(f"livereel export: {e}") from None

    from model import CheckpointError, load_model
    from model.engine import EngineError
    from model.sample import write_mp4

    try:
        model = apply_engine(load_model(args.checkpoint, wan=wan), args.engine)
    except (CheckpointError, EngineError) as e:
        raise SystemExit(f"livereel export: {e}") from None
    fps = model.config.fps
    gen = sampling.generator(model, seed=tl.seed if args.seed is None else args.seed)
    n_frames = round(tl.duration * fps)
    write_mp4(render(gen, timeline_events(tl, fps, model.config.frames_per_chunk), n_frames, desc="export"), args.output, fps)
    print(f"wrote {args.output}: {n_frames} frames, {tl.duration:g} s at {fps} fps")
    return 0
