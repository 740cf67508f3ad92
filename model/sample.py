"""`livereel sample`: one prompt, one camera motion, N seconds -> an MP4 to look at."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default="a red ball bouncing over grassland by day",
                   help="what to generate")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the clip")
    p.add_argument("--pan", type=float, nargs=2, default=(0.0, 0.0), metavar=("X", "Y"),
                   help="camera pan velocity in view widths per second, each in [-1, 1]")
    p.add_argument("--zoom", type=float, default=0.0, help="zoom velocity in log2 per second, [-1, 1]")
    p.add_argument("--checkpoint", default="default", help="checkpoint name or path ('debug' for a random model)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per chunk")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("-o", "--output", type=Path, default=Path("sample.mp4"), help="MP4 to write")


def main(args: argparse.Namespace) -> int:
    from model import CheckpointError, load_model
    from model.generate import Generator

    if not 0 < args.seconds <= 3600:
        raise SystemExit("--seconds must be in (0, 3600]")
    if not all(-1 <= v <= 1 for v in (*args.pan, args.zoom)):
        raise SystemExit("--pan and --zoom must be within [-1, 1]")
    try:
        model = load_model(args.checkpoint)
    except CheckpointError as e:
        raise SystemExit(f"livereel sample: {e}") from None
    gen = Generator(model, seed=args.seed, steps=args.steps)
    gen.set_prompt(args.prompt)
    gen.set_camera(pan=tuple(args.pan), zoom=args.zoom)
    cfg = model.config
    n_chunks = int(np.ceil(args.seconds * cfg.fps / cfg.frames_per_chunk))

    def frames():
        for _ in tqdm(range(n_chunks), desc="sample", unit="chunk"):
            yield from gen.next_frames()

    write_mp4(frames(), args.output, cfg.fps)
    print(f"wrote {args.output} ({n_chunks * cfg.frames_per_chunk} frames at {cfg.fps} fps)")
    return 0
