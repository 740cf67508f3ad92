"""`livereel sample`: one prompt, one camera motion, N seconds -> an MP4 to look at."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from model.sampling import add_sampling_arguments, sampling_from_args
from model.engine_choice import add_engine_argument, apply_engine
from model.wan.config import add_wan_arguments, wan_options_from_args

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 500  # as the page's and the timelines' (streamer/controls.py)


def check_output(path: str | Path, flag: str = "-o") -> Path:
    """An output file's path, checked before any work: its folder exists and takes files
    (a file is made and removed there, which also catches what permission bits do not,
    e.g. /proc for root), and it is not a folder itself. ValueError names the flag."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; give a file name")
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: no folder {parent}")
    try:
        with tempfile.NamedTemporaryFile(prefix=".livereel-check-", dir=parent):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot write in {parent} ({e.strerror or e})") from None
    return path


def check_folder(path: str | Path, flag: str) -> Path:
    """An output folder's path, checked before any work: a folder, or one that can be made
    (a folder is made and removed in its nearest existing parent, which also catches what
    permission bits do not, e.g. /proc for root). ValueError names the flag."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: is a file; give a folder")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, not a folder")
    try:
        Path(tempfile.mkdtemp(prefix=".livereel-check-", dir=existing)).rmdir()
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot write in {existing} ({e.strerror or e})") from None
    return path


def write_mp4(frames: Iterable[np.ndarray], path: str | Path, fps: int, crf: int = 18) -> Path:
    """uint8 (H, W, 3) frames -> H.264 yuv420p MP4 with faststart; written to a temporary
    file and renamed, so an interrupted write never leaves a truncated `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = None
            for frame in frames:
                if stream is None:
                    stream = out.add_stream("libx264", rate=Fraction(fps))
                    stream.height, stream.width = frame.shape[:2]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            if stream is not None:
                for packet in stream.encode():
                    out.mux(packet)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_strip(frames: list[tuple[float, str, np.ndarray]], path: Path) -> None:
    """Frames side by side, each titled with its time and prompt (matplotlib PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import textwrap

    fig, axes = plt.subplots(1, len(frames), figsize=(2.2 * len(frames), 2.9))
    for ax, (t, prompt, frame) in zip(np.atleast_1d(axes), frames):
        ax.imshow(frame, interpolation="nearest")
        ax.set_title(f"{t:.1f} s\n" + "\n".join(textwrap.wrap(prompt, 24)[:2]), fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from model.world import vocabulary_text

    p.epilog = vocabulary_text() + " (Wan checkpoints take any wording.)"
    p.add_argument("--prompt", default="a red ball bouncing over grassland by day",
                   help="what to generate")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the clip")
    p.add_argument("--pan", type=float, nargs=2, default=(0.0, 0.0), metavar=("X", "Y"),
                   help="camera pan velocity in view widths per second, each in [-1, 1]")
    p.add_argument("--zoom", type=float, default=0.0, help="zoom velocity in log2 per second, [-1, 1]")
    p.add_argument("--checkpoint", default="default", help="checkpoint name or path ('debug' for a random model)")
    add_sampling_arguments(p)
    add_wan_arguments(p)
    add_engine_argument(p)
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--then", default=None, metavar="PROMPT", help="switch to this prompt mid-clip")
    p.add_argument("--switch-at", type=float, default=None, metavar="SECONDS",
                   help="when to switch to --then (default: half way)")
    p.add_argument("-o", "--output", type=Path, default=Path("sample.mp4"), help="MP4 to write")
    p.add_argument("--strip", type=Path, default=None, metavar="PNG",
                   help="also save a few frames side by side, labelled with time and prompt")


def main(args: argparse.Namespace) -> int:
    from model import CheckpointError, load_model

    if not 0 < args.seconds <= 3600:
        raise SystemExit("--seconds must be in (0, 3600]")
    if not all(-1 <= v <= 1 for v in (*args.pan, args.zoom)):
        raise SystemExit("--pan and --zoom must be within [-1, 1]")
    for text, flag in ((args.prompt, "--prompt"), (args.then, "--then")):
        if text is not None and not 0 < len(text) <= MAX_PROMPT_CHARS:
            raise SystemExit(f"livereel sample: {flag} must be 1 to {MAX_PROMPT_CHARS} characters "
                             f"(got {len(text)}), as on the page")
    if args.switch_at is not None and not 0 <= args.switch_at < args.seconds:
        raise SystemExit(f"livereel sample: --switch-at {args.switch_at:g} is not within the clip "
                         f"(0 to {args.seconds:g} s)")
    try:
        sampling = sampling_from_args(args)
        wan = wan_options_from_args(args)
        check_output(args.output)
        if args.strip is not None:
            check_output(args.strip, "--strip")
    except ValueError as e:
        raise SystemExit(f"livereel sample: {e}") from None
    from model.engine import EngineError

    try:
        model = apply_engine(load_model(args.checkpoint, wan=wan), args.engine)
    except (CheckpointError, EngineError) as e:
        raise SystemExit(f"livereel sample: {e}") from None
    gen = sampling.generator(model, seed=args.seed)
    gen.set_prompt(args.prompt)
    gen.set_camera(pan=tuple(args.pan), zoom=args.zoom)
    cfg = model.config
    n_chunks = int(np.ceil(args.seconds * cfg.fps / cfg.frames_per_chunk))

    switch = None
    if args.then is not None:
        at = args.seconds / 2 if args.switch_at is None else args.switch_at
        switch = int(at * cfg.fps / cfg.frames_per_chunk)
    kept: list[tuple[float, str, np.ndarray]] = []
    picks = set(np.linspace(0, n_chunks - 1, 6).astype(int))

    def frames():
        for c in tqdm(range(n_chunks), desc="sample", unit="chunk"):
            if c == switch:
                gen.set_prompt(args.then)
            chunk = gen.next_frames()
            if c in picks:
                kept.append((c * cfg.frames_per_chunk / cfg.fps, gen.prompt, chunk[-1]))
            yield from chunk

    write_mp4(frames(), args.output, cfg.fps)
    if args.strip is not None:
        save_strip(kept, args.strip)
        print(f"wrote {args.strip}")
    print(f"wrote {args.output} ({n_chunks * cfg.frames_per_chunk} frames at {cfg.fps} fps)")
    return 0
