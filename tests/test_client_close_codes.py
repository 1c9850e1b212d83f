"""The browser client's exported ``CloseCode`` (``web/slotstream-client.js``) is every code
the gateway closes a WebSocket with, under the gateway's names: an app written against it
can tell each close apart."""

import re
from pathlib import Path

from push_gateway.domain.ws_protocol import CloseCode

CLIENT = (Path(__file__).parents[1] / "web" / "slotstream-client.js").read_text()


def test_the_client_close_codes_are_the_gateway_s() -> None:
    block = re.search(r"export const CloseCode = Object\.freeze\(\{(.*?)\}\);", CLIENT, re.S)
    assert block is not None
    exported = {name: int(code) for name, code in re.findall(r"(\w+): (\d+)", block[1])}
    assert exported == {code.name: int(code) for code in CloseCode}
