"""The messages of the signaling socket and of the `control` data channel (DESIGN §5).

Every message is one JSON object whose "type" picks its model. Messages are strict:
unknown fields, wrong JSON types (a string for a number, a bool for an int) and
non-finite numbers are errors, never coerced. `parse_signal` and `parse_control`
return the model or raise `ProtocolError`, whose `reply` is the `Error` message to
send back; the stream goes on.

    socket  client -> server   offer{sdp, prompt?, seed?}
            server -> client   answer{sdp, session} | error{code, detail}
    channel client -> server   prompt{text, transition?} | camera{pan: [x, y], zoom}
                               | pause | resume | reset{seed}
            server -> client   hello{...} | applied{what, frame, ...} | stats{...}
                               | error{code, detail}

Camera velocities: pan [x, y] in view widths per second (x right, y down, image
coordinates: the camera moves, the picture slides the other way), zoom in log2 of the
view width per second (positive zooms in); each in [-1, 1].

Prompts are one line of Unicode text: any script, right-to-left and zero-width marks
and emoji included; control characters (NUL, newlines, ...) and whitespace-only text
are errors. A client may send `CONTROL_RATE` messages a second (bursts of
`CONTROL_BURST`); `RateLimiter` drops the rest and says so at most once a second.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MAX_CONTROL_BYTES = 4096
"""At most this many bytes (UTF-8) in one data-channel message."""
MAX_SIGNAL_BYTES = 64 * 1024
"""At most this many bytes in one signaling message: a browser's SDP offer alone is
3-8 KB (every codec it can receive), so the 4 KB control limit cannot apply here."""
MAX_SDP_CHARS = 60_000
MAX_PROMPT_CHARS = 500
MAX_TRANSITION_CHUNKS = 16
MAX_SEED = 2**32 - 1
CONTROL_RATE = 30.0
"""Control messages a session may send per second, on average."""
CONTROL_BURST = 30
"""... and at once, after a quiet spell."""


def _one_line_of_text(text: str) -> str:
    if not text.strip():
        raise ValueError("must contain some text, not only whitespace")
    for i, ch in enumerate(text):
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise ValueError(f"must not contain control characters or lone surrogates (U+{ord(ch):04X} at {i})")
    return text


Velocity = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
PromptText = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS), AfterValidator(_one_line_of_text)]


class Message(BaseModel):
    """Base of all messages: unknown fields rejected, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


class ClientMessage(Message):
    """What a client sends is also strict: no coercion of JSON types."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# ---------------------------------------------------------------- client -> server


class Offer(ClientMessage):
    type: Literal["offer"]
    sdp: Annotated[str, Field(min_length=1, max_length=MAX_SDP_CHARS)]
    prompt: PromptText | None = None
    seed: Seed | None = None


class Prompt(ClientMessage):
    type: Literal["prompt"]
    text: PromptText
    transition: Annotated[int, Field(ge=0, le=MAX_TRANSITION_CHUNKS)] = 0
    """0: switch at the next chunk (KV re-cache); n > 0: blend over n chunks."""


class Camera(ClientMessage):
    type: Literal["camera"]
    pan: tuple[Velocity, Velocity]
    zoom: Velocity


class Pause(ClientMessage):
    type: Literal["pause"]


class Resume(ClientMessage):
    type: Literal["resume"]


class Reset(ClientMessage):
    type: Literal["reset"]
    seed: Seed


ControlMessage = Annotated[Union[Prompt, Camera, Pause, Resume, Reset], Field(discriminator="type")]
SignalMessage = Annotated[Union[Offer], Field(discriminator="type")]

# ---------------------------------------------------------------- server -> client


class Answer(Message):
    type: Literal["answer"] = "answer"
    sdp: str
    session: str
    worker: str | None = None
    """Cluster mode: the worker the session runs on (after a move, its new one)."""


class Queued(Message):
    """Signaling, cluster mode: every worker is full and this offer waits in line for a
    place (before its answer, or a refusal once its wait is over). `position`: 1 for the
    next to be placed; sent again as the line moves."""

    type: Literal["queued"] = "queued"
    position: int
    detail: str


class Reconnect(Message):
    """Signaling, cluster mode: the session moved to another worker (its own failed or left) and
    goes on there; send a new offer on this socket, from a new peer connection."""

    type: Literal["reconnect"] = "reconnect"
    detail: str


class Word(Message):
    """What a closed-vocabulary model makes of one word or phrase of a prompt
    (model/world.py `explain_prompt`): `attribute` and `value` when it knows it (`used`
    False: an earlier word set that attribute and wins), else ignored (`stop`: a small
    word such as "a" or "over", which means nothing alone)."""

    text: str
    attribute: str | None = None
    value: str | None = None
    used: bool | None = None
    stop: bool | None = None


Vocabulary = dict[str, dict[str, list[str]]]
"""{attribute: {value: [words and phrases that name it]}} (model/world.py `vocabulary`)."""


class Hello(Message):
    type: Literal["hello"] = "hello"
    session: str
    model: str
    fps: int
    size: int
    width: int | None = None
    """Frames are `size` high and `width` wide (square when None)."""
    frames_per_chunk: int
    steps: int
    prompt: str
    seed: int
    camera: bool = True
    camera_note: str | None = None
    """Why the model does not follow the camera, when it does not."""
    vocabulary: Vocabulary | None = None
    """Every word the model knows, when it knows only some (None: any wording)."""
    words: list[Word] | None = None
    """What it made of `prompt`'s words, with `vocabulary`."""
    reads: str | None = None
    """`prompt` as the model reads it, where the prompt rewrite reworded it (`Sampling.rewrite`)."""


class Applied(Message):
    """A control took effect: `frame` is the first stream frame made under it."""

    type: Literal["applied"] = "applied"
    what: str
    """prompt | camera | reset | pause | resume"""
    frame: int
    text: str | None = None
    transition: int | None = None
    pan: tuple[float, float] | None = None
    zoom: float | None = None
    seed: int | None = None
    words: list[Word] | None = None
    """For a prompt, with a closed vocabulary: what the model made of each word."""
    reads: str | None = None
    """For a prompt the rewrite reworded: the words the model reads (`Sampling.rewrite`)."""


class Stats(Message):
    type: Literal["stats"] = "stats"
    frame: int
    """Stream index of the frame on screen now."""
    chunk: int
    """Chunks generated so far."""
    queued: int
    """Frames generated and waiting to be played."""
    chunk_ms: float
    """Generation time of the last chunk."""
    sent: int
    held: int
    """Frames repeated because generation was late (pauses not counted)."""
    paused: bool


ErrorCode = Literal[
    "too_large",  # over the size limit
    "bad_json",  # not a JSON object
    "bad_message",  # a JSON object that is not a valid message
    "unexpected",  # a valid message at the wrong time or place
    "server_full",  # the session limit is reached
    "bad_offer",  # the SDP offer could not be answered
    "rate_limited",  # over CONTROL_RATE messages a second; the excess was dropped
    "generation_failed",  # the model raised; the session is over
]


class Error(Message):
    type: Literal["error"] = "error"
    code: ErrorCode
    detail: str


class ProtocolError(Exception):
    """A message that could not be accepted; `reply` is the error to send back."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.reply = Error(code=code, detail=detail)


# ---------------------------------------------------------------- parsing

_CONTROL = TypeAdapter(ControlMessage)
_SIGNAL = TypeAdapter(SignalMessage)


def parse_control(raw: str | bytes) -> Prompt | Camera | Pause | Resume | Reset:
    """One data-channel message, validated; raises `ProtocolError`."""
    return _parse(_CONTROL, raw, MAX_CONTROL_BYTES)


def parse_signal(raw: str | bytes) -> Offer:
    """One signaling-socket message, validated; raises `ProtocolError`."""
    return _parse(_SIGNAL, raw, MAX_SIGNAL_BYTES)


def _parse(adapter: TypeAdapter, raw: str | bytes, limit: int):
    if isinstance(raw, str):
        try:
            raw = raw.encode()
        except UnicodeEncodeError as e:  # lone surrogates: not text a peer can send
            raise ProtocolError("bad_json", f"not valid Unicode text: {e.reason} at {e.start}") from None
    size = len(raw)
    if size > limit:
        raise ProtocolError("too_large", f"message is {size} bytes, the limit is {limit}")
    try:
        return adapter.validate_json(raw)
    except ValidationError as e:
        raise ProtocolError(*_describe(e)) from None


def _describe(e: ValidationError) -> tuple[ErrorCode, str]:
    """The error code and a detail naming each problem: `camera.pan.1: Input should be ...`."""
    parts = []
    for err in e.errors(include_url=False, include_input=False):
        kind, loc = err["type"], [str(p) for p in err["loc"]]
        if kind == "json_invalid":
            return "bad_json", f"not valid JSON: {err['ctx']['error']}"
        if kind == "model_attributes_type" or (kind.endswith("_type") and not loc):
            return "bad_json", "expected a JSON object"
        if kind == "union_tag_not_found":
            return "bad_message", 'missing "type"'
        if kind == "union_tag_invalid":
            return "bad_message", (
                f"unknown message type \"{err['ctx']['tag']}\" (expected {err['ctx']['expected_tags']})"
            )
        parts.append(f"{'.'.join(loc)}: {err['msg']}")
    return "bad_message", "; ".join(parts)


# ---------------------------------------------------------------- rate limit


class RateLimiter:
    """A token bucket: `rate` messages a second on average, `burst` at once.

    `admit()` says whether a message may be handled; `notice()` returns the error to
    send about the dropped ones, at most once per `notice_every` seconds (None
    otherwise), so that a flood gets a trickle of replies, not one per message.
    """

    def __init__(
        self,
        rate: float = CONTROL_RATE,
        burst: int = CONTROL_BURST,
        *,
        notice_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.notice_every = notice_every
        self.dropped = 0
        """Messages dropped in all."""
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._noticed_at: float | None = None
        self._unnoticed = 0

    def admit(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.dropped += 1
        self._unnoticed += 1
        return False

    def notice(self) -> Error | None:
        if not self._unnoticed:
            return None
        now = self._clock()
        if self._noticed_at is not None and now - self._noticed_at < self.notice_every:
            return None
        self._noticed_at = now
        n, self._unnoticed = self._unnoticed, 0
        return Error(
            code="rate_limited",
            detail=f"more than {self.rate:g} messages a second: {n} dropped; slow down",
        )
