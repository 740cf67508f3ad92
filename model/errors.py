"""Errors every model family raises alike."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the problem."""


def check_field(cond: bool, cls: str, name: str, msg: str, value: object) -> None:
    """A config dataclass's validation: ValueError "Cls.field msg (got value)"."""
    if not cond:
        raise ValueError(f"{cls}.{name} {msg} (got {value!r})")
