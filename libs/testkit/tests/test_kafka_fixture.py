import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from slotstream_testkit.faultproxy import TcpFaultProxy
from slotstream_testkit.kafka import KafkaEndpoint, create_topics
from slotstream_testkit.net import free_port

pytestmark = pytest.mark.integration


async def test_broker_stores_keyed_records_with_headers(
    kafka: KafkaEndpoint, unique_topic: str
) -> None:
    await create_topics(kafka.bootstrap_servers, {unique_topic: 2})
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            unique_topic, b'{"n":1}', key=b"i1", headers=[("ce_type", b"slot.created")]
        )
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        from aiokafka import TopicPartition

        tp = TopicPartition(unique_topic, meta.partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        record = await asyncio.wait_for(consumer.getone(), 10)
    finally:
        await consumer.stop()
    assert record.key == b"i1"
    assert record.value == b'{"n":1}'
    assert dict(record.headers)["ce_type"] == b"slot.created"


async def test_fault_proxy_cuts_and_restores_the_path() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = TcpFaultProxy(free_port(), "127.0.0.1", port)
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.read(100), 5) == b"ping"
        writer.close()

        proxy.cut()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        assert await asyncio.wait_for(reader.read(100), 5) == b""
        writer.close()

        proxy.restore()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        writer.write(b"pong")
        assert await asyncio.wait_for(reader.read(100), 5) == b"pong"
        writer.close()
    finally:
        await proxy.stop()
        server.close()
        await server.wait_closed()
