"""`livereel replay LOG -o OUT.mp4`: render a recorded session again.

The log (JSON lines, streamer/session.py) holds the seed, the model and every control
with the frame it took effect at. With the same model and steps the replay's frames equal
the ones streamed live; with more `--steps` it tells the same story at higher quality.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model.engine_choice import add_engine_argument, apply_engine
from model.sample import check_output
from model.sampling import Sampling, SamplingError
from streamer.controls import ProtocolError, parse_control
from streamer.export import TimelineError, render
from streamer.session import LOG_VERSION

KNOWN = {"prompt": {"text"}, "camera": {"pan", "zoom"}, "reset": {"seed"}, "pause": set(),
         "resume": set()}
"""Each event's required fields; "transition" is optional on a prompt. Values are checked
as the live control messages are (streamer/controls.py)."""


def load_log(path: Path) -> tuple[dict, list[dict]]:
    """(header, control events) from a session log, validated line by line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TimelineError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise TimelineError(f"{path}: not a text file") from None
    except OSError as e:
        raise TimelineError(f"{path}: cannot read: {e.strerror}") from None
    try:  # a timeline (one JSON object with events) is not a log: say which command takes it
        whole = json.loads("\n".join(lines))
    except (json.JSONDecodeError, RecursionError):
        whole = None
    if isinstance(whole, dict) and "events" in whole and whole.get("what") != "header":
        raise TimelineError(f"{path}: a timeline, not a session log; render it with `livereel export {path} -o OUT.mp4`")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TimelineError(f"{path}:{n}: not JSON ({e.msg}); the log may be truncated") from None
        except RecursionError:
            raise TimelineError(f"{path}:{n}: JSON nested too deeply") from None
        if not isinstance(row, dict) or "what" not in row:
            raise TimelineError(f"{path}:{n}: each line must be an object with 'what'")
        rows.append((n, row))
    if not rows or rows[0][1]["what"] != "header":
        raise TimelineError(f"{path}: the first line must be the header")
    header = rows[0][1]
    if header.get("version", LOG_VERSION) != LOG_VERSION:
        raise TimelineError(f"{path}:1: log version {header['version']!r}; this livereel reads version {LOG_VERSION}")
    for key, kind in (("seed", int), ("fps", int), ("steps", int), ("model", str)):
        if key not in header:
            raise TimelineError(f"{path}:1: header lacks '{key}'")
        if not isinstance(header[key], kind) or isinstance(header[key], bool):
            raise TimelineError(f"{path}:1: header '{key}' must be {'an integer' if kind is int else 'a string'}")
    if not 0 <= header["seed"] < 2**63:
        raise TimelineError(f"{path}:1: header 'seed' must be in [0, 2**63)")
    if header.get("prompt") is not None:
        try:
            parse_control(json.dumps({"type": "prompt", "text": header["prompt"]}))
        except ProtocolError as e:
            raise TimelineError(f"{path}:1: header {e.reply.detail}") from None
    events, last = [], 0
    for n, row in rows[1:]:
        what = row["what"]
        if what not in KNOWN:
            raise TimelineError(f"{path}:{n}: unknown event '{what}'")
        missing = KNOWN[what] - set(row)
        frame = row.get("frame")
        if missing or not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
            raise TimelineError(f"{path}:{n}: '{what}' event needs a frame >= 0 and {sorted(KNOWN[what])}")
        fields = KNOWN[what] | ({"transition"} if what == "prompt" and "transition" in row else set())
        try:
            parse_control(json.dumps({"type": what, **{k: row[k] for k in fields}}))
        except ProtocolError as e:
            raise TimelineError(f"{path}:{n}: {e.reply.detail}") from None
        if row["frame"] < last:
            raise TimelineError(f"{path}:{n}: frame {row['frame']} comes before frame {last}")
        last = row["frame"]
        events.append(row)
    return header, events


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", type=Path, help="session log (.jsonl) from the web page or --record-dir")
    p.add_argument("-o", "--output", type=Path, required=True, help="MP4 to write")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: as recorded; other steps start every chunk from noise)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance on the prompt (default: as recorded; 1 in logs made "
                        "before it was recorded)")
    p.add_argument("--checkpoint", default=None, help="model to use (default: the recorded one)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames to render (default: through the last event, plus 10 seconds)")
    add_engine_argument(p)


def main(args: argparse.Namespace) -> int:
    # Everything the user gave is checked before the model (and torch) is loaded.
    if args.steps is not None and args.steps < 1:
        raise SystemExit("livereel replay: --steps must be >= 1")
    if args.frames is not None and args.frames < 1:
        raise SystemExit("livereel replay: --frames must be >= 1")
    try:
        check_output(args.output)
    except ValueError as e:
        raise SystemExit(f"livereel replay: {e}") from None
    try:
        header, events = load_log(args.log)
    except TimelineError as e:
        raise SystemExit(f"livereel replay: {e}") from None
    steps = args.steps or header["steps"]
    if not isinstance(steps, int) or steps < 1:
        raise SystemExit(f"livereel replay: {args.log}:1: header 'steps' must be an integer >= 1")

    warm = header.get("warm_start", 0) if args.steps is None else 0  # other steps: from noise
    guidance = header.get("guidance", 1.0) if args.guidance is None else args.guidance
    anchor = header.get("anchor", 0.0)  # a log from before the anchor was made without it
    rewrite = header.get("rewrite", False)  # nor the prompt rewrite
    try:
        sampling = Sampling(steps, warm, guidance, anchor, rewrite)
    except SamplingError as e:  # from the flag it came from, else from the header
        flag = {"guidance": args.guidance, "steps": args.steps}.get(e.field) is not None
        where = f"--{e.field}" if flag else f"{args.log}:1: header {e.field}"
        raise SystemExit(f"livereel replay: {where} {e.detail}") from None

    from model import CheckpointError, load_model
    from model.engine import EngineError
    from model.sample import write_mp4
    from model.wan.config import Recipe, WanOptions

    try:
        recipe = Recipe(**header["recipe"]) if isinstance(header.get("recipe"), dict) else None
    except (TypeError, ValueError) as e:
        raise SystemExit(f"livereel replay: {args.log}:1: header 'recipe': {e}") from None
    try:  # a recipe-sampled model (Wan) streams as the log says
        model = load_model(args.checkpoint or header["model"], wan=WanOptions(recipe=recipe) if recipe else None)
        model = apply_engine(model, args.engine)
    except (CheckpointError, EngineError) as e:
        raise SystemExit(f"livereel replay: {e}") from None
    fps = model.config.fps
    n = args.frames or max([header.get("frames", 0)] + [e["frame"] for e in events]) + 10 * fps
    gen = sampling.generator(model, seed=int(header["seed"]))
    if header.get("prompt") and not any(e["what"] == "prompt" and e["frame"] == 0 for e in events):
        gen.set_prompt(header["prompt"])
    write_mp4(render(gen, events, n, desc="replay"), args.output, fps)
    print(f"wrote {args.output}: {n} frames at {fps} fps, {steps} steps, guidance {sampling.guidance:g}")
    return 0
