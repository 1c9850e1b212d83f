"""The change source of the booking-api's memory backend: its internal HTTP change feed.

Protocol (docs/architecture.md): ``GET /internal/changes?after=<_data>&limit=&wait=`` or
``?atOperationTime=<t>.<i>`` → ``{"changes": [...], "postBatchResumeToken": {...}}``;
``410`` when the token is older than the retained history or from an earlier run of the
feed (the booking-api restarted), ``400`` for a token it never issued;
``GET /internal/snapshot?collection=`` → ``{"operationTime": {t, i}, "documents": [...]}``.
Guarded by ``X-Internal-Token``.
"""

from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import httpx
import orjson
from pydantic import ValidationError

from change_publisher.ports import (
    ChangeBatch,
    HistoryLost,
    SnapshotPart,
    SourceUnavailable,
    StreamPosition,
    watched,
)
from slotstream_contracts.changes import ChangeEvent, ClusterTime, ResumeToken

#: An operation time after every change: reading "from" it returns nothing but the feed's
#: newest token, which is how the ``latest`` position is found without trusting clocks.
_END_OF_TIME: Final = "999999999999.0"


def _object(response: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON object of a 200 answer; a proxy's error page or anything else is the feed
    being unavailable (retried), never a crash."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise SourceUnavailable(f"{what} answered malformed JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise SourceUnavailable(f"{what} answered something else than an object")
    return body


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    return str(body.get("detail") or body.get("title") or response.status_code)


class FeedChangeStream:
    def __init__(
        self,
        client: httpx.AsyncClient,
        position: StreamPosition,
        limit: int,
        wait: float,
        collections: frozenset[str] | None = None,
    ) -> None:
        self._client = client
        self._collections = collections
        self._limit = limit
        self._wait = wait
        self._after: ResumeToken | None = position.after
        self._at: str | None = None
        if position.at is not None:
            self._at = f"{position.at.t}.{position.at.i}"
        elif position.after is None:
            self._at = _END_OF_TIME
        self.start_token: ResumeToken | None = position.after

    async def _get(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.get("/internal/changes", params=params)
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"change feed unreachable: {exc!r}") from exc
        if response.status_code == 410:
            raise HistoryLost(_problem_detail(response))
        if response.status_code == 400 and self._after is not None:
            # A token this feed never issued (one stored before tokens named the run of
            # the log, say): nothing to resume from either.
            raise HistoryLost(_problem_detail(response))
        if response.status_code != 200:
            raise SourceUnavailable(
                f"change feed answered {response.status_code}: {_problem_detail(response)}"
            )
        return _object(response, "change feed")

    async def next_batch(self) -> ChangeBatch:
        params: dict[str, Any] = {"limit": self._limit}
        if self._at is not None:
            params["atOperationTime"] = self._at
            params["wait"] = 0 if self._at == _END_OF_TIME else self._wait
        else:
            params["wait"] = self._wait
            if self._after is not None:
                params["after"] = self._after["_data"]
        body = await self._get(params)
        try:
            received = [ChangeEvent.model_validate(c) for c in body.get("changes", ())]
        except ValidationError as exc:
            # A protocol violation, not a bad document: retry (and alert) rather than skip.
            raise SourceUnavailable(f"change feed sent a malformed change: {exc}") from exc
        changes: Sequence[ChangeEvent] = [c for c in received if watched(c, self._collections)]
        resume: ResumeToken | None = body.get("postBatchResumeToken")
        if received:
            self._at = None
            self._after = received[-1].token
        elif resume is not None:
            # Idle: the feed's newest token; every later change comes after it.
            self._at = None
            self._after = resume
        return ChangeBatch(changes, self._after)

    async def aclose(self) -> None:
        return None


class FeedChangeSource:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        limit: int = 1000,
        wait: float = 10.0,
        collections: Sequence[str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._collections = frozenset(collections) if collections is not None else None
        headers = {"X-Internal-Token": token} if token else {}
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(wait + 10.0),
            transport=transport,
        )
        self._limit = min(limit, 1000)
        self._wait = wait

    async def open(self, position: StreamPosition) -> FeedChangeStream:
        stream = FeedChangeStream(
            self._client, position, self._limit, self._wait, self._collections
        )
        if position.after is None and position.at is None:
            # Pin "latest" to a token now: the first read returns the feed's newest one.
            first = await stream.next_batch()
            stream.start_token = first.resume_token
        return stream

    async def snapshot(self, collection: str) -> SnapshotPart:
        try:
            response = await self._client.get(
                "/internal/snapshot", params={"collection": collection}
            )
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"change feed unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise SourceUnavailable(
                f"snapshot of {collection} answered {response.status_code}: "
                f"{_problem_detail(response)}"
            )
        what = f"snapshot of {collection}"
        body = _object(response, what)
        try:
            operation_time = ClusterTime.model_validate(body.get("operationTime"))
        except ValidationError as exc:
            raise SourceUnavailable(f"{what} answered no valid operationTime: {exc}") from exc
        documents = body.get("documents")
        if not isinstance(documents, list) or not all(isinstance(d, dict) for d in documents):
            raise SourceUnavailable(f"{what} answered no list of documents")
        return SnapshotPart(operation_time, _iterate(documents))

    async def close(self) -> None:
        await self._client.aclose()


async def _iterate(documents: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for document in documents:
        yield document
