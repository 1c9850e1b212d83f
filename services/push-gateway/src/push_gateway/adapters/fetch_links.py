"""The lean fetch loop's :class:`~push_gateway.adapters.fetch.Brokers` and
:class:`~push_gateway.adapters.fetch.BrokerLink` on aiokafka's client and open connections:
metadata, connects, SASL/TLS and the ApiVersions handshake stay aiokafka's; only the fetch
request's bytes and the response frame are the loop's."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import ConnectionGroup
from aiokafka.conn import AIOKafkaConnection, CloseReason
from aiokafka.errors import KafkaConnectionError

from push_gateway.adapters.fetch import (
    FETCH_API_KEY,
    FETCH_VERSIONS,
    BrokerLink,
    FetchRequestTemplate,
)


class _ResponseHeader(NamedTuple):
    correlation_id: int


class _RawResponse:
    """Stands in for a request struct in aiokafka's connection: its reader task parses the
    response header with it and hands the frame on undecoded (``getvalue`` shares the
    frame's bytes, no copy)."""

    RESPONSE_TYPE: Any = None

    @staticmethod
    def parse_response_header(frame: Any) -> _ResponseHeader:
        return _ResponseHeader(int.from_bytes(frame.read(4), "big", signed=True))

    @staticmethod
    def decode(frame: Any) -> bytes:
        return frame.getvalue()  # type: ignore[no-any-return]


_RawResponse.RESPONSE_TYPE = _RawResponse


class AiokafkaLink:
    """A :class:`BrokerLink` on aiokafka's open connection to a node.

    aiokafka's ``send`` takes a request struct, encodes it, and returns a coroutine; here
    the bytes are ours and the future is awaited by nobody but the fetch loop's callback,
    so the request is written and queued on the connection the way ``send`` does it
    (``_next_correlation_id``, ``_writer``, ``_requests``: aiokafka 0.14's, pinned, and
    covered by the integration tests)."""

    def __init__(self, conn: AIOKafkaConnection) -> None:
        self.conn = conn
        versions: dict[int, tuple[int, int]] = conn._versions  # noqa: SLF001
        low, high = versions.get(FETCH_API_KEY, (0, -1))
        self.fetch_version = next((v for v in FETCH_VERSIONS if low <= v <= high), None)

    def request(
        self, template: FetchRequestTemplate, wait: tuple[int, int], offsets: Sequence[int]
    ) -> asyncio.Future[bytes]:
        conn = self.conn
        writer = conn._writer  # noqa: SLF001
        if writer is None:
            raise KafkaConnectionError(f"No connection to broker at {conn.host}:{conn.port}")
        correlation_id = conn._next_correlation_id()  # noqa: SLF001
        frame = template.encode(correlation_id, wait, offsets)
        try:
            writer.write(frame)
        except OSError as err:
            conn.close(reason=CloseReason.CONNECTION_BROKEN)
            raise KafkaConnectionError(f"Connection at {conn.host}:{conn.port} broken") from err
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        conn._requests.append((correlation_id, _RawResponse, future))  # noqa: SLF001
        return future

    def close(self) -> None:
        self.conn.close(reason=CloseReason.CONNECTION_TIMEOUT)


class AiokafkaBrokers:
    """:class:`Brokers` on a started aiokafka consumer's client (never assigned: its own
    fetcher idles; it serves metadata, connections and end offsets)."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._client = consumer._client  # noqa: SLF001 - no public handle on it
        self._links: dict[int, AiokafkaLink] = {}

    def leader(self, topic: str, partition: int) -> int | None:
        leader: int | None = self._client.cluster.leader_for_partition(
            TopicPartition(topic, partition)
        )
        return leader

    def link(self, node_id: int) -> BrokerLink | None:
        conn = self._client._conns.get((node_id, ConnectionGroup.DEFAULT))  # noqa: SLF001
        if conn is None or not conn.connected():
            return None
        link = self._links.get(node_id)
        if link is None or link.conn is not conn:
            link = self._links[node_id] = AiokafkaLink(conn)
        return link

    async def connect(self, node_id: int) -> bool:
        return bool(await self._client.ready(node_id))

    def refresh_metadata(self) -> None:
        self._client.force_metadata_update()

    async def latest_offset(self, topic: str, partition: int) -> int:
        tp = TopicPartition(topic, partition)
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets([tp])
        return ends[tp]
