"""HttpTicketRedeemer against a mock booking-api (httpx.MockTransport)."""

import httpx
import orjson
import pytest

from push_gateway.adapters.tickets import (
    REDEEM_PATH,
    HttpTicketRedeemer,
    TicketServiceUnavailable,
)
from slotstream_contracts.auth import Role


def redeemer(handler: httpx.MockTransport) -> HttpTicketRedeemer:
    client = httpx.AsyncClient(transport=handler, base_url="http://booking")
    return HttpTicketRedeemer(client, "internal-token")


async def test_a_redeemed_ticket_gives_the_principal_and_token_expiry() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = {"sub": "u1", "role": "student", "name": "Ada", "expiresAt": 1_900_000_000}
        return httpx.Response(200, content=orjson.dumps(body))

    redeemed = await redeemer(httpx.MockTransport(answer)).redeem("T1")
    assert redeemed is not None
    assert (redeemed.principal.user_id, redeemed.principal.role) == ("u1", Role.STUDENT)
    assert redeemed.token_expires_at == 1_900_000_000
    assert seen[0].url.path == REDEEM_PATH
    assert seen[0].headers["x-internal-token"] == "internal-token"
    assert orjson.loads(seen[0].content) == {"ticket": "T1"}


async def test_an_unknown_ticket_is_none() -> None:
    mock = httpx.MockTransport(lambda _r: httpx.Response(404))
    assert await redeemer(mock).redeem("T1") is None


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(403),
        httpx.Response(503),
        httpx.Response(200, content=b'{"sub": "u$1", "role": "student", "expiresAt": 1}'),
    ],
)
async def test_anything_else_is_unavailable_not_a_bad_ticket(response: httpx.Response) -> None:
    mock = httpx.MockTransport(lambda _r: response)
    with pytest.raises(TicketServiceUnavailable):
        await redeemer(mock).redeem("T1")


async def test_an_unreachable_booking_api_is_unavailable() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TicketServiceUnavailable):
        await redeemer(httpx.MockTransport(fail)).redeem("T1")
