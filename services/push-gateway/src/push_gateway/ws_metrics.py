"""Prometheus metrics of the WebSocket transport (``gateway_ws_*``), read at scrape time
from :class:`~push_gateway.api.ws.WebSocketStats`. Deliveries are counted with SSE's in
``gateway_deliveries_total`` (the hub counts both)."""

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from push_gateway.api.ws import WebSocketGateway


class WebSocketCollector(Collector):
    def __init__(self, websockets: WebSocketGateway) -> None:
        self._websockets = websockets

    def collect(self) -> Iterator[Metric]:
        ws = self._websockets
        stats = ws.stats
        yield GaugeMetricFamily(
            "gateway_ws_connections", "Open WebSocket connections", value=len(ws.connections)
        )
        yield GaugeMetricFamily(
            "gateway_ws_subscriptions",
            "Subscriptions on open WebSocket connections",
            value=sum(len(c.subscriptions) for c in ws.connections),
        )
        for name, doc, value in (
            ("gateway_ws_accepted", "WebSocket handshakes accepted", stats.accepted),
            ("gateway_ws_rejected", "WebSocket requests refused", stats.rejected),
            ("gateway_ws_subscribes", "Subscribe ops accepted", stats.subscriptions),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        closes = CounterMetricFamily(
            "gateway_ws_closes", "WebSocket connections closed by the gateway", labels=["reason"]
        )
        closes.add_metric(["slow-consumer"], stats.slow_disconnects)
        closes.add_metric(["token-expired"], stats.token_expiries)
        closes.add_metric(["ping-timeout"], stats.ping_timeouts)
        closes.add_metric(["policy"], stats.policy_closes)
        yield closes
