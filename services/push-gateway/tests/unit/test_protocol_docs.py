"""The README's protocol tables against what the gateway can send: an app developer writes
a client from the README, so every ``bye`` reason and every WebSocket close code the code
can produce must be there, and nothing the code cannot; so must every status an SSE request
is refused with before its stream opens (the "**Errors**" list), and which carry
``Retry-After``."""

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import pytest
from websockets.frames import Frame, Opcode

import push_gateway
from push_gateway.api.ws import MAX_MESSAGE_BYTES
from push_gateway.config import Settings
from push_gateway.domain.frames import ByeReason
from push_gateway.domain.ws_protocol import (
    CLOSE_CODE_OF_REASON,
    CLOSE_CODE_OF_REFUSAL,
    CloseCode,
    RefusalReason,
)

from .test_gateway import JWT
from .test_ws import Client, Harness

README = (Path(__file__).parents[2] / "README.md").read_text()
SOURCE = Path(push_gateway.__file__).parent
#: where a stream request's refusals before it opens are made (README "**Errors**";
#: ``api/ws.py``'s are WebSocket ``error`` messages)
REFUSERS = ("gateway.py", "domain/requests.py", "domain/limits.py")

#: Closes the ``websockets`` parser sends by itself (a frame it cannot read, a message over
#: ``MAX_MESSAGE_BYTES``): no ``bye`` precedes them, but a client sees them all the same.
LIBRARY_CLOSE_CODES = {1002, 1009}


def table_after(heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after ``heading`` (header row left out)."""
    rows: list[list[str]] = []
    for line in README.split(heading, 1)[1].splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        if not re.fullmatch(r"\|[-:| ]+\|", line.strip()):  # not the separator row
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows[1:]


CLOSE_ROWS = table_after("**Close codes**")
NOT_UTF8 = Frame(Opcode.TEXT, b'{"op":"ping","x":"\xff"}')


def test_every_bye_reason_is_documented_and_no_other() -> None:
    documented = {row[0].strip("`") for row in table_after("**`bye` reasons**")}
    assert documented == set(get_args(ByeReason))


def test_the_close_code_table_is_every_code_a_client_can_get() -> None:
    rows = {int(row[0]): row[1] for row in table_after("**Close codes**")}
    assert set(rows) == {int(code) for code in CloseCode} | LIBRARY_CLOSE_CODES
    for reason, code in CLOSE_CODE_OF_REASON.items():
        assert f"`{reason}`" in rows[code], (reason, code)
    # the bye reasons a WebSocket is closed with all have their code
    assert set(CLOSE_CODE_OF_REASON) == set(get_args(ByeReason)) - {"instructor-unknown"}


def test_the_refusal_tokens_are_listed_in_their_codes_rows_and_no_other() -> None:
    """1003, 1007 and 1008 rows name exactly the tokens ``RefusalReason`` has, each in the
    row of its code."""
    listed = {
        (token, int(row[0]))
        for row in CLOSE_ROWS
        if int(row[0]) in (1003, 1007, 1008)
        for token in re.findall(r"`([a-z-]+)`", row[1])
    }
    assert listed == {(t, int(CLOSE_CODE_OF_REFUSAL[t])) for t in get_args(RefusalReason)}


async def test_a_message_over_the_limit_is_closed_with_a_documented_code() -> None:
    """The library's own close (no ``bye``): 1009, which the close-code table must list."""
    harness = Harness(Settings(jwt=JWT))
    try:
        client = await harness.client()
        assert client.connection is not None
        big = Frame(Opcode.TEXT, b'{"op":"ping","x":"' + b"x" * MAX_MESSAGE_BYTES + b'"}')
        client.connection.data_received(big.serialize(mask=True))
        client.messages()
        assert client.close_frame is not None
        code = int.from_bytes(client.close_frame.data[:2], "big")
        assert code in LIBRARY_CLOSE_CODES
        assert re.search(rf"^\| {code} \|", README, re.MULTILINE), code
    finally:
        await harness.ws.shutdown()
        await harness.gateway.shutdown()


@pytest.mark.parametrize(
    ("provoke", "code"),
    [
        (lambda client: client.send(b"\x00binary"), 1003),
        (lambda client: client.send_raw(NOT_UTF8), 1007),
        (lambda client: client.send({"op": "dance"}), 1008),
        (lambda client: client.send({"op": "auth", "token": "not.a.jwt"}), 1008),
    ],
    ids=["binary", "not-utf8", "unknown-op", "invalid-token"],
)
async def test_a_refusal_reason_starts_with_a_fixed_token_the_readme_lists(
    provoke: Callable[[Client], None], code: int
) -> None:
    """An app can match on the reason of a 1003, 1007 or 1008 close (and its ``bye``): it
    starts with a fixed token from the close-code table's row, a detail for people after
    ``": "``. On main they were free text (``invalid token: Not enough segments``)."""
    harness = Harness(Settings(jwt=JWT))
    try:
        client = await harness.client()
        provoke(client)
        bye = client.messages()[-1]
        assert client.close_frame is not None
        assert int.from_bytes(client.close_frame.data[:2], "big") == code
        reason = bye["data"]["reason"]
        # the frame's reason is cut at 123 bytes: the token, first, survives
        said = bytes(client.close_frame.data[2:]).decode()
        assert reason.startswith(said)
        token = said.split(": ", 1)[0]
        tokens = {int(row[0]): set(re.findall(r"`([a-z-]+)`", row[1])) for row in CLOSE_ROWS}
        assert token in tokens[code], (reason, tokens[code])
    finally:
        await harness.ws.shutdown()
        await harness.gateway.shutdown()


def errors_paragraph() -> str:
    return README.split("**Errors**", 1)[1].split("\n\n", 1)[0]


def refusals() -> dict[int, bool]:
    """Each status a ``Problem(<status>, …)`` in the refusing modules has → whether some
    such ``Problem`` carries a ``retry-after`` header."""
    found: dict[int, bool] = {}
    for name in REFUSERS:
        for node in ast.walk(ast.parse((SOURCE / name).read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Problem"
            ):
                continue
            status = node.args[0]
            assert isinstance(status, ast.Constant), name
            assert isinstance(status.value, int), name
            retry = any(
                isinstance(n, ast.Constant) and n.value == "retry-after"
                for arg in node.args[3:] + [k.value for k in node.keywords]
                for n in ast.walk(arg)
            )
            found[status.value] = found.get(status.value, False) or retry
    return found


def test_the_refusals_found_are_the_known_ones() -> None:
    """A guard on the scan itself: it finds the refusals the code is known to make."""
    assert {400, 401, 403, 404, 429, 503} <= set(refusals())


def test_every_status_a_stream_is_refused_with_is_listed_and_no_other() -> None:
    listed = {int(s) for s in re.findall(r"`([45]\d\d)`", errors_paragraph())}
    assert listed == set(refusals())


def test_the_statuses_with_retry_after_are_those_the_readme_says() -> None:
    said = {int(s) for s in re.findall(r"`([45]\d\d)` \+ `Retry-After`", errors_paragraph())}
    assert said == {status for status, retry in refusals().items() if retry}
