"""Errors every model family raises alike."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the problem."""
