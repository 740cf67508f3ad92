"""The `--engine` flag of every command that runs a model (torch-free: flags are checked
before torch is imported). The engines themselves are in model/engine.py."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

CHOICES = ("auto", "eager", "openvino", "onnxruntime")


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine", choices=CHOICES, default="auto",
        help="what runs the model's DiT evaluation, VAE decode and warped prior on CPU: 'openvino' or "
             "'onnxruntime' (each part exported once to ONNX and cached under ~/.cache/livereel/engine; "
             "the first start exports, about a minute), 'eager' (PyTorch as built). auto: openvino for "
             "livereel's own models on CPU where it is installed, else eager (default: %(default)s)")


def apply_engine(model, name: str, compiled: bool = False):
    """Run `model` by the engine `name` (a CHOICES entry; "auto" picks one), in place;
    returns the model. Raises `model.engine.EngineError` when the engine asked for by
    name cannot run this model here, and ValueError with --compile beside an engine."""
    from model.checkpoint import LiveReel
    from model.engine import EngineError, default_engine, use_engine

    device = next(model.parameters()).device
    if name == "auto":
        name = "eager" if compiled or not isinstance(model, LiveReel) else default_engine(device)
    elif compiled and name != "eager":
        raise EngineError(f"--compile compiles the eager model; it does not go with --engine {name}")
    if name != "eager":
        use_engine(model, name)
    log.info("engine: %s", name)
    return model
