"""A stream's state as bytes, and back: cluster mode's periodic snapshot of a session, so
that a failover restores it from its latest snapshot and replays only the controls
logged since (streamer/cluster/), instead of the whole stream.

`save(gen)` writes everything a Generator holds but its model (the KV cache and memory
bank, the unwritten chunk, the kept chunks' latents, the VAE's streaming state, the
camera, the prompt's conditioning, the staged controls) with `torch.save`, on the CPU;
`load(model, data)` gives a Generator that makes the very chunks the saved one would
have made next (bit-equal: tests/test_snapshot.py). Views stay views (the cache's
rotary tables for the chunk in flight), which plain pickling would not keep.

The bytes are read with `torch.load(weights_only=True)` and an allow-list of livereel's
own state classes: a snapshot that names anything else is refused, never executed.
Snapshots travel between livereel's own processes only, but are read the safe way all
the same.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from model.generate import Generator

_NOT_SAVED = ("model", "config")
"""The Generator's references to its model (the loader's own model takes their place)."""


def _allowed() -> list:
    """The classes a snapshot may hold (beyond tensors and plain containers)."""
    from cache.kv import CacheLayout, KVCache, MemoryBank, Region
    from model.camera import CameraCond
    from model.conditioning import TextCond
    from model.generate import Span, Unwritten

    allowed: list[Any] = [KVCache, CacheLayout, MemoryBank, Region, CameraCond, TextCond, Span, Unwritten,
                          torch.device]
    allowed += _decode_state_classes()
    return allowed


def _decode_state_classes() -> list:
    """The VAE decoders' streaming state classes (each family's)."""
    found = []
    for module, names in (("model.wan.vae", ("WanVAEState",)), ("model.wan.tae", ("TAEState",))):
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        found += [getattr(mod, name) for name in names if hasattr(mod, name)]
    return found


def save(gen: Generator) -> bytes:
    """The stream's state between two chunks (not during a step), as bytes."""
    state = {name: value for name, value in vars(gen).items() if name not in _NOT_SAVED}
    buffer = io.BytesIO()
    torch.save({"version": 1, "class": type(gen).__name__, "state": state}, buffer, pickle_protocol=2)
    return buffer.getvalue()


def load(model: Any, data: bytes) -> Generator:
    """A Generator on `model` (the one the snapshot was made with, or its equal in another
    process) in the saved state, its tensors on the model's device. Raises ValueError for
    bytes that are not a livereel snapshot."""
    device = next(model.parameters()).device
    # Process-wide and for good: torch's `safe_globals` context manager swaps a global
    # list, so two loads on two threads (two restores at once) would undo each other's.
    torch.serialization.add_safe_globals(_allowed())
    try:
        saved = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as e:  # torch's UnpicklingError, a truncated buffer, ...
        lines = str(e).splitlines()
        why = next((line.strip() for line in lines if "Unsupported" in line), lines[0] if lines else type(e).__name__)
        raise ValueError(f"not a livereel stream snapshot: {why}"[:300]) from None
    if not isinstance(saved, dict) or saved.get("version") != 1 or saved.get("class") != Generator.__name__:
        raise ValueError("not a livereel stream snapshot (version 1)")
    gen = Generator.__new__(Generator)
    vars(gen).update(saved["state"])
    gen.model, gen.config = model, model.config
    gen.device = device
    return gen
