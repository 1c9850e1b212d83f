"""The gateway's stream counters: plain ints bumped where streams open, catch up and close
(never per delivery), read by the metrics collector at scrape time."""

from dataclasses import dataclass, field


@dataclass
class GatewayStats:
    accepted: int = 0
    rejected: int = 0
    slow_disconnects: int = 0
    snapshot_requests: int = 0
    snapshot_failures: int = 0
    resumes_ring: int = 0
    resumes_kafka: int = 0
    resumes_gone: int = 0
    resumes_refused: int = 0
    resumes_busy: int = 0
    #: 429s per limit (see ``Admission``)
    limited: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "ip-rate",
                "ip-streams",
                "user-streams",
                "ws-subscribe-rate",
                "ws-subscribe-ip-rate",
            ),
            0,
        )
    )
    token_expiries: int = 0
    #: connections closed without a complete first request head (``close_unfinished_heads``)
    head_timeouts: int = 0
    #: connections still sending their first request head at the last sweep
    heads_waiting: int = 0
    #: request heads answered ``431``: longer than ``GATEWAY_MAX_REQUEST_HEAD_BYTES``
    heads_refused: int = 0
