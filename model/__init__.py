"""livereel's networks: text encoder, causal DiT, causal VAE, and their loading."""

from model.checkpoint import CheckpointError, LiveReel, build_model, load_model, save_model

__all__ = ["CheckpointError", "LiveReel", "build_model", "load_model", "save_model"]
