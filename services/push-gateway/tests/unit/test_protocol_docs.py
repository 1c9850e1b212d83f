"""The README's protocol tables against what the gateway can send: an app developer writes
a client from the README, so every ``bye`` reason and every WebSocket close code the code
can produce must be there, and nothing the code cannot."""

import re
from pathlib import Path
from typing import get_args

from websockets.frames import Frame, Opcode

from push_gateway.api.ws import MAX_MESSAGE_BYTES
from push_gateway.config import Settings
from push_gateway.domain.frames import ByeReason
from push_gateway.domain.ws_protocol import CLOSE_CODE_OF_REASON, CloseCode

from .test_gateway import JWT
from .test_ws import Harness

README = (Path(__file__).parents[2] / "README.md").read_text()

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
