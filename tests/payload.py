"""A pickle that runs code: the stand-in for a malicious checkpoint in the loaders' tests."""


class Payload:
    """Unpickling this (a plain pickle.load, not torch's weights_only) would create the
    file `marker`: its appearance is proof that a load ran code."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")
