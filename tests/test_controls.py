import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.controls import (
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
    Reset,
    Resume,
    Stats,
    parse_control,
    parse_signal,
)


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
