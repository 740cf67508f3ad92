import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.controls import (
    CONTROL_BURST,
    CONTROL_RATE,
    MAX_CONTROL_BYTES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIGNAL_BYTES,
    Applied,
    Camera,
    Error,
    Offer,
    Pause,
    Prompt,
    ProtocolError,
    RateLimiter,
    Reset,
    Resume,
    Stats,
    parse_control,
    parse_signal,
)

FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Parsing is microseconds: many examples are cheap, and no deadline on a loaded machine."""


def control_error(raw: str | bytes) -> Error:
    with pytest.raises(ProtocolError) as info:
        parse_control(raw)
    return info.value.reply


@pytest.mark.parametrize(
    "message, expected",
    [
        ({"type": "prompt", "text": "a red fox"}, Prompt(type="prompt", text="a red fox", transition=0)),
        ({"type": "prompt", "text": "x", "transition": 4}, Prompt(type="prompt", text="x", transition=4)),
        ({"type": "camera", "pan": [0.5, -1], "zoom": 1}, Camera(type="camera", pan=(0.5, -1.0), zoom=1.0)),
        ({"type": "pause"}, Pause(type="pause")),
        ({"type": "resume"}, Resume(type="resume")),
        ({"type": "reset", "seed": 7}, Reset(type="reset", seed=7)),
        ({"type": "reset", "seed": MAX_SEED}, Reset(type="reset", seed=MAX_SEED)),
    ],
)
def test_every_control_message_parses(message, expected):
    assert parse_control(json.dumps(message)) == expected
    assert parse_control(json.dumps(message).encode()) == expected


@pytest.mark.parametrize(
    "message, where",
    [
        ({"type": "camera", "pan": [1.01, 0], "zoom": 0}, "camera.pan.0"),
        ({"type": "camera", "pan": [0, -1.5], "zoom": 0}, "camera.pan.1"),
        ({"type": "camera", "pan": [0, 0], "zoom": 2}, "camera.zoom"),
        ({"type": "camera", "pan": [0, 0, 0], "zoom": 0}, "camera.pan"),
        ({"type": "camera", "pan": [0], "zoom": 0}, "camera.pan"),
        ({"type": "camera", "pan": ["0.5", 0], "zoom": 0}, "camera.pan.0"),
        ({"type": "camera", "pan": {"x": 0, "y": 0}, "zoom": 0}, "camera.pan"),
        ({"type": "camera", "pan": [0, 0]}, "camera.zoom"),
        ({"type": "prompt", "text": ""}, "prompt.text"),
        ({"type": "prompt", "text": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt.text"),
        ({"type": "prompt", "text": 5}, "prompt.text"),
        ({"type": "prompt", "text": "x", "transition": -1}, "prompt.transition"),
        ({"type": "prompt", "text": "x", "transition": 1.5}, "prompt.transition"),
        ({"type": "reset", "seed": -1}, "reset.seed"),
        ({"type": "reset", "seed": MAX_SEED + 1}, "reset.seed"),
        ({"type": "reset", "seed": "7"}, "reset.seed"),
        ({"type": "reset", "seed": True}, "reset.seed"),
        ({"type": "reset", "seed": 7.0}, "reset.seed"),
        ({"type": "reset"}, "reset.seed"),
        ({"type": "pause", "now": True}, "pause.now"),
        ({"type": "prompt", "text": "x", "colour": "red"}, "prompt.colour"),
    ],
)
def test_invalid_messages_name_the_field(message, where):
    reply = control_error(json.dumps(message))
    assert reply.type == "error" and reply.code == "bad_message"
    assert where in reply.detail


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_velocities_must_be_finite(value):
    reply = control_error('{"type": "camera", "pan": [0, %s], "zoom": 0}' % value)
    assert reply.code == "bad_message" and "camera.pan.1" in reply.detail


@pytest.mark.parametrize(
    "raw, code, words",
    [
        ("{bad", "bad_json", "not valid JSON"),
        (b"\xff\xfe{}", "bad_json", "not valid JSON"),
        ("", "bad_json", "not valid JSON"),
        ("[1, 2]", "bad_json", "JSON object"),
        ('"pause"', "bad_json", "JSON object"),
        ("null", "bad_json", "JSON object"),
        ("{}", "bad_message", '"type"'),
        ('{"type": "teleport"}', "bad_message", "teleport"),
        ('{"type": 3}', "bad_message", "3"),
        ('{"type": "offer", "sdp": "v=0"}', "bad_message", "offer"),
    ],
)
def test_malformed_messages(raw, code, words):
    reply = control_error(raw)
    assert reply.code == code and words in reply.detail


def test_size_limit_counts_utf8_bytes():
    # 500 four-byte characters are a valid prompt of 2000 bytes ...
    assert parse_control(json.dumps({"type": "prompt", "text": "🦊" * 500}, ensure_ascii=False))
    # ... and the limit is on bytes, whatever the text is.
    big = json.dumps({"type": "prompt", "text": "é" * 2100}, ensure_ascii=False)
    assert len(big) < MAX_CONTROL_BYTES < len(big.encode())
    reply = control_error(big)
    assert reply.code == "too_large" and str(MAX_CONTROL_BYTES) in reply.detail


def test_error_reply_is_the_wire_format():
    reply = control_error('{"type": "camera", "pan": [0, 9], "zoom": 0}')
    wire = json.loads(reply.to_json())
    assert set(wire) == {"type", "code", "detail"}
    assert wire["type"] == "error" and wire["code"] == "bad_message"


def test_offer_parses_with_optional_fields():
    assert parse_signal('{"type": "offer", "sdp": "v=0"}') == Offer(type="offer", sdp="v=0")
    offer = parse_signal(json.dumps({"type": "offer", "sdp": "v=0", "prompt": "dunes", "seed": 3}))
    assert (offer.prompt, offer.seed) == ("dunes", 3)


@pytest.mark.parametrize(
    "raw, code",
    [
        ('{"type": "offer"}', "bad_message"),
        ('{"type": "offer", "sdp": ""}', "bad_message"),
        ('{"type": "offer", "sdp": "v=0", "seed": -2}', "bad_message"),
        ('{"type": "prompt", "text": "x"}', "bad_message"),  # controls go on the channel
        ("offer", "bad_json"),
    ],
)
def test_bad_signaling_messages(raw, code):
    with pytest.raises(ProtocolError) as info:
        parse_signal(raw)
    assert info.value.reply.code == code


def test_signaling_size_limit():
    # A browser offer is several KB: over the control limit, well under the signaling one.
    offer = json.dumps({"type": "offer", "sdp": "a=x\r\n" * 1500})
    assert MAX_CONTROL_BYTES < len(offer) < MAX_SIGNAL_BYTES
    assert parse_signal(offer).sdp.startswith("a=x")
    with pytest.raises(ProtocolError) as info:
        parse_signal(json.dumps({"type": "offer", "sdp": "a" * MAX_SIGNAL_BYTES}))
    assert info.value.reply.code == "too_large"


def test_server_messages_leave_out_unset_fields():
    applied = json.loads(Applied(what="camera", frame=12, pan=(0.5, 0.0), zoom=0.0).to_json())
    assert applied == {"type": "applied", "what": "camera", "frame": 12, "pan": [0.5, 0.0], "zoom": 0.0}
    stats = json.loads(
        Stats(frame=1, chunk=2, queued=3, chunk_ms=4.5, sent=6, held=0, paused=False).to_json()
    )
    assert stats["type"] == "stats" and stats["paused"] is False


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(["type", "text", "pan", "zoom", "seed", "transition", "extra"]), json_values, max_size=5
    )
    | json_values
)
def test_any_json_gives_a_message_or_a_protocol_error(obj):
    try:
        parse_control(json.dumps(obj))
    except ProtocolError as e:
        assert e.reply.code in ("bad_json", "bad_message") and e.reply.detail


@given(
    st.floats(-1, 1, allow_nan=False),
    st.floats(-1, 1, allow_nan=False),
    st.floats(-1, 1, allow_nan=False),
)
def test_camera_in_bounds_round_trips(x, y, zoom):
    msg = parse_control(json.dumps({"type": "camera", "pan": [x, y], "zoom": zoom}))
    assert msg.pan == (x, y) and msg.zoom == zoom


# ---------------------------------------------------------------- odd input


@pytest.mark.parametrize(
    "text",
    [
        "שלום עולם",  # right-to-left script
        "\u202eevil\u202c",  # right-to-left override
        "zero\u200bwidth\u200djoin\ufeff",  # zero-width space, joiner, BOM
        "🦊🏳️‍🌈👩🏽‍🚀",  # emoji, ZWJ sequences, skin tones
        "e\u0301" * 40,  # combining accents
        "雪の森の赤い玉",
        "\U0001d54f\U000e0041",  # astral letters, a tag character
    ],
)
def test_odd_but_valid_unicode_prompts_are_taken(text):
    msg = parse_control(json.dumps({"type": "prompt", "text": text}))
    assert msg.text == text
    # ... and go back out in `applied` as valid JSON, as they came.
    assert json.loads(Applied(what="prompt", frame=0, text=msg.text).to_json())["text"] == text


@pytest.mark.parametrize(
    "raw, code, words",
    [
        ('{"type": "prompt", "text": "a\\u0000b"}', "bad_message", "U+0000"),
        ('{"type": "prompt", "text": "two\\nlines"}', "bad_message", "U+000A"),
        ('{"type": "prompt", "text": "bell\\u0007"}', "bad_message", "control characters"),
        ('{"type": "prompt", "text": "c1\\u0085"}', "bad_message", "U+0085"),
        ('{"type": "prompt", "text": " \\t "}', "bad_message", "only whitespace"),
        ('{"type": "prompt", "text": "\\ud800"}', "bad_json", "not valid JSON"),  # escaped lone surrogate
        ('{"type": "prompt", "text": "\\udc00x"}', "bad_json", "surrogate"),
        ('{"type": "prompt", "text": "\ud800"}', "bad_json", "Unicode"),  # a str no peer can send
        (b'{"type": "prompt", "text": "\xed\xa0\x80"}', "bad_json", "JSON"),  # surrogate as UTF-8 bytes
        (b'{"type": "prompt", "text": "\xff"}', "bad_json", "JSON"),
    ],
)
def test_bad_unicode_prompts_get_a_clear_error(raw, code, words):
    reply = control_error(raw)
    assert reply.code == code and words in reply.detail, reply.detail
    json.loads(reply.to_json())  # the reply itself is sendable


@pytest.mark.parametrize("depth", [50, 500, 2000])
def test_deep_nesting_is_refused(depth):
    for raw in ("[" * depth + "]" * depth, '{"type": "prompt", "text": ' + "[" * depth + "]" * depth + "}"):
        reply = control_error(raw)
        if len(raw) > MAX_CONTROL_BYTES:
            assert reply.code == "too_large"
        else:
            assert reply.code in ("bad_json", "bad_message"), reply


def test_big_prompts_are_too_large_before_parsing():
    hundred_kb = json.dumps({"type": "prompt", "text": "x" * 100_000})
    assert control_error(hundred_kb).code == "too_large"
    with pytest.raises(ProtocolError) as info:
        parse_signal(json.dumps({"type": "offer", "sdp": "v=0", "prompt": "x" * 100_000}))
    assert info.value.reply.code == "too_large"
    # Under the byte limit but over the prompt's length: named.
    with pytest.raises(ProtocolError) as info:
        parse_signal(json.dumps({"type": "offer", "sdp": "v=0", "prompt": "x" * (MAX_PROMPT_CHARS + 1)}))
    assert info.value.reply.code == "bad_message" and "offer.prompt" in info.value.reply.detail


# ---------------------------------------------------------------- fuzzing: never another exception


def assert_message_or_protocol_error(parse, raw) -> None:
    try:
        msg = parse(raw)
    except ProtocolError as e:
        assert e.reply.code in ("too_large", "bad_json", "bad_message") and e.reply.detail
        json.loads(e.reply.to_json())
    else:
        json.loads(msg.to_json())  # whatever is accepted serialises again


@FUZZ
@given(st.binary(max_size=MAX_CONTROL_BYTES + 64))
def test_any_bytes_give_a_control_or_a_protocol_error(raw):
    assert_message_or_protocol_error(parse_control, raw)


@FUZZ
@given(st.binary(max_size=2048))
def test_any_bytes_give_an_offer_or_a_protocol_error(raw):
    assert_message_or_protocol_error(parse_signal, raw)


@FUZZ
@given(st.text(st.characters(codec=None), max_size=600))  # lone surrogates included
def test_any_text_gives_a_control_or_a_protocol_error(raw):
    assert_message_or_protocol_error(parse_control, raw)
    assert_message_or_protocol_error(parse_control, json.dumps({"type": "prompt", "text": raw}))


odd_text = st.text(st.characters(codec=None), max_size=30)
odd_numbers = st.one_of(
    st.floats(), st.integers(-(2**70), 2**70), st.sampled_from([1e308, -0.0, 5e-324, 2**32, 2**63])
)
odd_json = st.recursive(
    st.none() | st.booleans() | odd_numbers | odd_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(odd_text, children, max_size=4),
    max_leaves=8,
)


@settings(FUZZ, max_examples=300)
@given(
    st.sampled_from(["prompt", "camera", "pause", "resume", "reset", "offer", "Prompt", "", None]),
    st.dictionaries(
        st.sampled_from(["text", "pan", "zoom", "seed", "transition", "sdp", "prompt", "session", "type"]),
        odd_json,
        max_size=4,
    ),
)
def test_near_valid_messages_give_a_message_or_a_protocol_error(kind, fields):
    """Valid types with fields of any shape (NaN and inf written as JSON allows)."""
    raw = json.dumps({"type": kind, **fields}, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
    assert_message_or_protocol_error(parse_control, raw)
    assert_message_or_protocol_error(parse_signal, raw)


@settings(max_examples=300, deadline=None)
@given(odd_json)
def test_any_json_gives_an_offer_or_a_protocol_error(obj):
    assert_message_or_protocol_error(parse_signal, json.dumps(obj, allow_nan=True))


# ---------------------------------------------------------------- rate limit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_a_burst_then_the_rate():
    clock = Clock()
    limit = RateLimiter(rate=10, burst=5, clock=clock)
    assert [limit.admit() for _ in range(7)] == [True] * 5 + [False] * 2
    clock.now += 0.35  # 3.5 tokens back
    assert [limit.admit() for _ in range(5)] == [True] * 3 + [False] * 2
    clock.now += 60  # a long quiet spell refills the burst, no more
    assert sum(limit.admit() for _ in range(20)) == 5
    assert limit.dropped == 2 + 2 + 15


def test_a_flood_gets_one_notice_a_second():
    clock = Clock()
    limit = RateLimiter(clock=clock)
    admitted = notices = 0
    for i in range(10_000):  # 10 s at 1000 messages a second
        clock.now = 100.0 + i / 1000
        if limit.admit():
            admitted += 1
        elif (notice := limit.notice()) is not None:
            notices += 1
            assert notice.code == "rate_limited" and "dropped" in notice.detail
    assert admitted <= CONTROL_BURST + math.ceil(CONTROL_RATE * 10)
    assert notices <= 10 + 1
    assert notices >= 9  # the sender hears about it every second
    assert limit.notice() is None or limit.notice() is None  # never two in a row
    assert limit.dropped == 10_000 - admitted


def test_no_notice_without_drops():
    limit = RateLimiter(rate=1, burst=1, clock=Clock())
    assert limit.admit() and limit.notice() is None
