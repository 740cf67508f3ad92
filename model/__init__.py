"""livereel's networks: text encoder, causal DiT, causal VAE, and their loading.

The loading API is imported on first use (PEP 562), so that torch-free submodules such
as `model.sampling` can be imported by a command that checks its flags first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.checkpoint import CheckpointError, LiveReel, build_model, load_model, save_model

__all__ = ["CheckpointError", "LiveReel", "build_model", "load_model", "save_model"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("model.checkpoint"), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
