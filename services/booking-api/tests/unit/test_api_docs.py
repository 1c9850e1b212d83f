"""The README and the OpenAPI document against what the API answers: a client is written
from them, so every problem ``type`` the code can send is in the README's table with its
status, and every status a route can answer is in its OpenAPI ``responses``."""

import ast
import inspect
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx
import orjson

import booking_api
from booking_api.adapters.tickets import MemoryTicketStore
from booking_api.api.problems import PROBLEM_BASE, domain_problem
from booking_api.app import create_app
from booking_api.config import Settings
from booking_api.domain import errors
from slotstream_contracts.auth import JwtSettings

AuthHeaders = Callable[..., dict[str, str]]
Future = Callable[..., str]

SERVICE = Path(__file__).parents[2]
README = (SERVICE / "README.md").read_text()


def documented_types() -> set[tuple[str, int]]:
    """``(type, status)`` of each row of the README's problem-type table."""
    table = README.split("**Problem types**", 1)[1].split("\n\n", 2)[1]
    rows = re.findall(r"^\| `(urn:slotstream:problem:[a-z-]+)` \| `?(\d{3})`? \|", table, re.M)
    return {(kind, int(status)) for kind, status in rows}


def types_the_code_sends() -> set[tuple[str, int]]:
    """Domain errors as the API answers them, and every ``problem(status, …, kind=…)`` call
    of the package (read from the source: a new one cannot be missed)."""
    found: set[tuple[str, int]] = set()
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.DomainError) and cls is not errors.DomainError:
            body = orjson.loads(bytes(domain_problem(cls("x"), "/").body))
            found.add((body["type"], body["status"]))
    for source in Path(booking_api.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "problem"):
                continue
            kind = next((k.value for k in node.keywords if k.arg == "kind"), None)
            if kind is None or ast.unparse(kind) == "kind":
                continue  # about:blank, or domain_problem's (the domain errors above)
            status = node.args[0]
            assert isinstance(kind, ast.Constant), ast.unparse(node)
            assert isinstance(kind.value, str)
            assert isinstance(status, ast.Constant), ast.unparse(node)
            assert isinstance(status.value, int)
            found.add((PROBLEM_BASE + kind.value, status.value))
    return found


def test_every_problem_type_is_in_the_readme_with_its_status() -> None:
    assert documented_types() == types_the_code_sends()


#: The members RFC 9457 defines; every other member of a problem body is an extension.
STANDARD_MEMBERS = {"type", "title", "status", "detail", "instance"}


def extension_members_the_code_sends() -> set[str]:
    """The keyword members of every domain error raised or returned (``Conflict(…,
    slotId=…)``) and of every ``problem(…)`` call of the package, read from the source so
    that a new one cannot be missed. A ``**mapping`` would hide its names: only
    ``domain_problem``'s hand-over of a domain error's own members is allowed."""
    domain_errors = {
        name
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.DomainError)
    }
    passed_on = {"problem": {"kind", "instance", "headers"}}
    found: set[str] = set()
    for source in Path(booking_api.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name != "problem" and name not in domain_errors:
                continue
            for keyword in node.keywords:
                if keyword.arg is None:
                    assert ast.unparse(keyword.value) == "exc.extra", ast.unparse(node)
                elif keyword.arg not in passed_on.get(str(name), set()):
                    found.add(keyword.arg)
    return found


async def test_every_member_a_problem_can_carry_is_declared_in_the_openapi_problem(
    client: httpx.AsyncClient,
) -> None:
    """A client generated from the OpenAPI document reads only the members its ``Problem``
    declares: each extension member the code can send is one of its properties, with a
    description and a type (on main ``limit``, ``bookingId``, ``version``,
    ``instructorId`` and ``errors`` were sent but not declared)."""
    spec = (await client.get("/api/openapi.json")).json()
    declared = spec["components"]["schemas"]["Problem"]["properties"]
    sent = extension_members_the_code_sends()
    assert {"slotId", "limit", "errors"} <= sent  # the reading of the source finds them
    undeclared = sorted(sent - set(declared))
    assert not undeclared, f"sent but not in the OpenAPI Problem: {undeclared}"
    in_vain = sorted(set(declared) - STANDARD_MEMBERS - sent)
    assert not in_vain, f"declared but never sent: {in_vain}"
    for name in sent:
        assert declared[name].get("description"), name
        assert "type" in declared[name] or "anyOf" in declared[name], (name, declared[name])


async def test_every_post_with_an_idempotency_key_documents_its_429_and_503(
    jwt_settings: JwtSettings, auth: AuthHeaders, future: Future
) -> None:
    """A key beyond the user's quota is ``429 idempotency-key-quota`` on every such route
    (on main ``POST …/slots:batch`` answered it without declaring it)."""
    settings = Settings(storage="memory", jwt=jwt_settings, idempotency_max_keys_per_user=1)
    app = create_app(settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://booking"
    ) as client:
        instructor = auth("i1", "instructor")
        await client.post(  # the instructor's one key
            "/api/instructors", json={"name": "Ada"}, headers={**instructor, "Idempotency-Key": "k"}
        )
        batch = await client.post(
            "/api/instructors/i1/slots:batch",
            json={"slots": [{"start": future(days=2), "end": future(days=2, hours=1)}]},
            headers={**instructor, "Idempotency-Key": "another"},
        )
        assert batch.status_code == 429
        assert batch.json()["type"] == PROBLEM_BASE + "idempotency-key-quota"
        spec = (await client.get("/api/openapi.json")).json()
    keyed = {
        f"{method.upper()} {path}": set(operation["responses"])
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
        if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))
    }
    assert "POST /api/instructors/{instructor_id}/slots:batch" in keyed
    assert {
        op: {"429", "503"} - codes for op, codes in keyed.items() if {"429", "503"} - codes
    } == {}


async def test_the_stream_ticket_route_documents_every_status_it_answers(
    jwt_settings: JwtSettings, auth: AuthHeaders
) -> None:
    """Each status ``POST /api/stream-tickets`` answers, provoked, is in its OpenAPI entry:
    201, 401 (no or a bad token), 413 (a body past ``max_body_bytes``: the route reads none,
    but the middleware refuses it first) and 503 (the ticket store full). No 400: it reads
    no body nor query. On main its entry declared 401 and 503 only."""
    settings = Settings(storage="memory", jwt=jwt_settings)
    app = create_app(settings)
    runtime = app.state.parts.runtime
    app.state.parts.runtime = replace(runtime, tickets=MemoryTicketStore(max_tickets=1))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://booking"
    ) as client:
        student = auth("s1")
        url = "/api/stream-tickets"
        answered = {
            (await client.post(url, headers=student)).status_code,
            (await client.post(url)).status_code,
            (await client.post(url, headers={"Authorization": "Bearer a.b.c"})).status_code,
            (
                await client.post(
                    url, headers=student, content=b"x" * (settings.max_body_bytes + 1)
                )
            ).status_code,
            (await client.post(url, headers=student)).status_code,  # the store holds one
        }
        spec = (await client.get("/api/openapi.json")).json()
    assert answered == {201, 401, 413, 503}
    assert set(spec["paths"][url]["post"]["responses"]) == {str(s) for s in answered}


async def test_the_members_of_an_overlap_are_declared_in_the_openapi_problem(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    """Every member of the 409 an overlap answers is a property of the OpenAPI document's
    ``Problem`` (what its 409s refer to): ``slotStart`` and ``slotEnd`` as date-times."""
    instructor = auth("i1", "instructor")
    await client.post("/api/instructors", json={"name": "Ada"}, headers=instructor)
    window = {"start": future(days=2), "end": future(days=2, hours=1)}
    await client.post("/api/instructors/i1/slots", json=window, headers=instructor)
    overlap = await client.post("/api/instructors/i1/slots", json=window, headers=instructor)
    assert overlap.status_code == 409
    spec = (await client.get("/api/openapi.json")).json()
    declared = spec["components"]["schemas"]["Problem"]["properties"]
    assert set(overlap.json()) - set(declared) == set()
    date_time = {"type": "string", "format": "date-time"}
    for name in ("slotStart", "slotEnd"):
        assert date_time in declared[name]["anyOf"], declared[name]
