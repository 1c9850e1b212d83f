import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from push_gateway.domain.frames import FrameError, event_body, json_frame, with_id
from push_gateway.domain.hub import NO_READERS, frame_body
from push_gateway.domain.positions import (
    NOTIFICATIONS_LETTER,
    PositionError,
    format_position,
    parse_position,
)
from push_gateway.testing import notification_event, record_of


def parse_sse(stream: bytes) -> list[dict[str, str]]:
    """A strict SSE parser (as in the WHATWG spec) for what a browser would see."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in stream.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if current:
                events.append(current)
            current = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        current[name] = current[name] + "\n" + value if name in current else value
    return events


def test_frame_has_id_event_and_one_data_line() -> None:
    frame = with_id(b"s3:1042", event_body(b"slot", b'{"a":1}'))
    assert frame == b'id: s3:1042\nevent: slot\ndata: {"a":1}\n\n'
    assert parse_sse(frame) == [{"id": "s3:1042", "event": "slot", "data": '{"a":1}'}]


@pytest.mark.parametrize("payload", [b'{"a":"x\ny"}', b'{"a":"x\ry"}', b"a\r\n"])
def test_raw_line_breaks_are_refused(payload: bytes) -> None:
    with pytest.raises(FrameError):
        event_body(b"slot", payload)


@given(st.text(max_size=500))
def test_no_client_string_can_break_a_frame(message: str) -> None:
    event = notification_event("u1", "n1", message)
    framed = frame_body(record_of(event, 7), NOTIFICATIONS_LETTER, NO_READERS)
    assert framed is not None
    body = with_id(b"n0:7", framed[0])
    events = parse_sse(body + json_frame("presence", {"channel": message}))
    assert len(events) == 2
    assert orjson.loads(events[0]["data"])["data"]["message"] == message
    assert events[0]["event"] == "notification"
    assert orjson.loads(events[1]["data"]) == {"channel": message}


def test_position_round_trip_is_sorted_and_compact() -> None:
    vector = {("s", 3): 1042, ("n", 1): 77}
    assert format_position(vector) == b"n1:77.s3:1042"
    assert parse_position("n1:77.s3:1042") == vector


@given(
    st.dictionaries(
        st.tuples(st.sampled_from("sn"), st.integers(0, 999)), st.integers(-1, 2**62), max_size=8
    )
)
def test_any_position_parses_back(vector: dict[tuple[str, int], int]) -> None:
    if vector:
        assert parse_position(format_position(vector).decode()) == vector


@pytest.mark.parametrize(
    "text",
    [
        "",
        "s3",
        "s3:",
        "x1:5",
        "s1:5.s1:6",
        "s1:abc",
        "s-1:5",
        "s1:5;n1:2",
        "s1:5..n1:2",
        "s" * 3000,
    ],
)
def test_foreign_last_event_ids_are_refused(text: str) -> None:
    with pytest.raises(PositionError):
        parse_position(text)
