"""A stand-in for model.generate.Generator, for fast tests of the streaming mechanics.

Same surface as the real one (set_prompt, set_camera, reset staged and applied at the
start of `next_frames`, `applied` listing them), no network: each frame is one flat
colour derived from the prompt, with the frame index in the blue channel.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import numpy as np

from streamer.session import StreamInfo


@dataclass(frozen=True)
class FakeConfig:
    name: str = "fake"
    fps: int = 16
    image_size: int = 16
    frames_per_chunk: int = 4


def prompt_colour(text: str) -> tuple[int, int]:
    """The (red, green) of every frame made under `text`."""
    digest = hashlib.sha256(text.encode()).digest()
    return digest[0], digest[1]


class FakeGenerator:
    def __init__(
        self,
        config: FakeConfig = FakeConfig(),
        *,
        seed: int = 0,
        prompt: str = "a fake world",
        delay: float = 0.0,
        fail_on: str | None = None,
    ) -> None:
        self.config = config
        self.seed = seed
        self.prompt = prompt
        self.delay = delay
        self.fail_on = fail_on
        self.frame_index = 0
        self.chunk_index = 0
        self.camera = ((0.0, 0.0), 0.0)
        self.applied: list[dict] = []
        self.calls = 0
        self.running = threading.Event()  # set while next_frames runs
        self._staged: dict[str, dict] = {}

    def set_prompt(self, text: str, transition: int = 0) -> None:
        self._staged["prompt"] = {"what": "prompt", "text": text, "transition": transition}

    def set_camera(self, pan: tuple[float, float] = (0.0, 0.0), zoom: float = 0.0) -> None:
        self._staged["camera"] = {"what": "camera", "pan": tuple(pan), "zoom": zoom}

    def reset(self, seed: int) -> None:
        self._staged["reset"] = {"what": "reset", "seed": seed}

    def next_frames(self) -> np.ndarray:
        self.running.set()
        try:
            self.applied = []
            for what, entry in self._staged.items():
                if what == "prompt":
                    self.prompt = entry["text"]
                elif what == "camera":
                    self.camera = (entry["pan"], entry["zoom"])
                else:
                    self.seed = entry["seed"]
                self.applied.append({**entry, "frame": self.frame_index})
            self._staged = {}
            if self.fail_on is not None and self.fail_on in self.prompt:
                raise RuntimeError(f"fake failure on prompt {self.prompt!r}")
            if self.delay:
                time.sleep(self.delay)
            k, s = self.config.frames_per_chunk, self.config.image_size
            frames = np.empty((k, s, s, 3), np.uint8)
            frames[..., 0], frames[..., 1] = prompt_colour(self.prompt)
            frames[..., 2] = (np.arange(self.frame_index, self.frame_index + k) % 256)[:, None, None]
            self.frame_index += k
            self.chunk_index += 1
            self.calls += 1
            return frames
        finally:
            self.running.clear()


def fake_info(config: FakeConfig = FakeConfig(), steps: int = 1) -> StreamInfo:
    return StreamInfo(
        model=config.name,
        fps=config.fps,
        size=config.image_size,
        frames_per_chunk=config.frames_per_chunk,
        steps=steps,
    )
