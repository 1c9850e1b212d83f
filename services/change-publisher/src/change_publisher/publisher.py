"""The publisher: leadership, start-up modes, the delivery loop, checkpoints and recovery.

One instance holds the lease and produces; the others wait as standbys. The leader reads
changes, maps them, hands the records to the producer without waiting (pipelined), and
checkpoints the resume token of the newest change whose records — and those of every
change before it — Kafka has acknowledged. Anything that goes wrong (Kafka, the source, the
lease) ends the current stream; production restarts from the last acknowledged position,
so a change is published at least once and never dropped.
"""

import asyncio
import contextlib
import hashlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from operator import attrgetter
from typing import Any, Final, Literal, TypeVar

import stamina
import structlog

from change_publisher.domain.acks import AckTracker
from change_publisher.domain.lease import LeaderGuard, Lease
from change_publisher.domain.mapping import (
    ChangeMapper,
    DeadLetter,
    Invalidated,
    Outcome,
    Publish,
    Restructured,
    ResyncCause,
    Skip,
    event_id,
)
from change_publisher.domain.records import (
    OutgoingRecord,
    Router,
    dead_letter_of_change,
    dead_letter_of_document,
    encode_control,
    encode_dead_letter,
    encode_records,
)
from change_publisher.metrics import PublisherMetrics
from change_publisher.ports import (
    ChangeSource,
    Checkpoint,
    CheckpointStore,
    EventProducer,
    Fenced,
    HistoryLost,
    KafkaUnavailable,
    LeaseStore,
    SourceUnavailable,
    StreamPosition,
)
from change_publisher.startup import ProducerStartup
from slotstream_contracts.changes import ChangeEvent, ClusterTime, ResumeToken
from slotstream_contracts.events import CloudEvent, EventType, ResyncData
from slotstream_contracts.startup import AIOKAFKA_LOGGER, held_back

log = structlog.get_logger("change_publisher")

T = TypeVar("T")


class Role(StrEnum):
    STARTING = "starting"
    STANDBY = "standby"
    LEADER = "leader"
    STOPPED = "stopped"


class LeaseLost(Exception):
    """The lease could not be renewed in time or was taken: stop producing now."""


class HistoryLostFatal(Exception):
    """History lost with ``history_lost_policy=fail``: the process must exit non-zero."""


class KafkaUnreachable(Exception):
    """Kafka did not answer within ``kafka_start_timeout`` of the start: the process exits
    (``KAFKA_UNREACHABLE_EXIT_CODE``) with this as its one line."""


class _StopRequested(Exception):
    """``stop()`` was called while waiting for something that may never come."""


@dataclass(frozen=True, slots=True)
class PublisherOptions:
    stream_name: str
    instance_id: str
    collections: tuple[str, ...]
    start_mode: Literal["resume", "latest", "snapshot"] = "resume"
    history_lost_policy: Literal["fail", "resnapshot"] = "resnapshot"
    max_in_flight: int = 20_000
    checkpoint_interval: float = 1.0
    lease_ttl: float = 6.0
    backoff_initial: float = 0.5
    backoff_max: float = 15.0
    #: Larger records are refused by Kafka forever (``message.max.bytes``): such a change
    #: is dead-lettered (without its documents) instead of stalling the stream.
    max_record_bytes: int = 900_000
    #: Not ready while records wait this long for Kafka without any acknowledgement: the
    #: producer's own retries take far longer (request timeout) to give up.
    ack_stall_seconds: float = 5.0
    #: After a stop, how long records in flight may still be acknowledged; then they are
    #: given up (the next leader re-reads them from the checkpoint: at least once). The
    #: idempotent producer never fails a batch, so a Kafka acknowledging nothing would
    #: otherwise hold the stop, and the lease, forever.
    stop_drain_seconds: float = 2.0
    #: How long the first start of the producer is retried (Kafka not reachable yet: the
    #: publisher is unready meanwhile) before :class:`KafkaUnreachable`; None: for ever.
    kafka_start_timeout: float | None = None
    #: Where Kafka is, named in the start's log lines (never credentials).
    bootstrap_servers: str = ""


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """Production must (re)start with a snapshot; ``resync`` says why, if it is a resync."""

    resync: str | None = None


class _Delivery:
    """Records in flight for one stream: ack order, backpressure and the first failure.

    Changes are staged (mapped records plus their resume token, in stream order) and then
    flushed to the producer as one call per source batch."""

    def __init__(self, producer: EventProducer, max_in_flight: int) -> None:
        self._producer = producer
        self._max = max_in_flight
        self.tracker = AckTracker()
        self.acked: Counter[str] = Counter()
        self.failure: BaseException | None = None
        self._records: list[OutgoingRecord] = []
        self._seqs: list[int] = []
        self._outstanding = 0
        #: Set once this instance is fenced: nothing more may reach the producer.
        self.halted: Fenced | None = None
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        #: monotonic time of the last acknowledgement, or of the first send since then
        self._waiting_since = time.monotonic()

    def stalled_for(self) -> float:
        """Seconds records have been waiting for Kafka without any acknowledgement."""
        return 0.0 if self._outstanding == 0 else time.monotonic() - self._waiting_since

    def stage(
        self, records: Sequence[OutgoingRecord], token: ResumeToken | None, change_time: float
    ) -> None:
        seq = self.tracker.track(token, len(records), change_time)
        for record in records:
            self._records.append(record)
            self._seqs.append(seq)

    def stage_one(
        self, record: OutgoingRecord, token: ResumeToken | None, change_time: float
    ) -> None:
        """``stage`` for the common change: exactly one record."""
        self._seqs.append(self.tracker.track(token, 1, change_time))
        self._records.append(record)

    def progress(self, token: ResumeToken) -> None:
        """The stream moved on without a change (an idle ``postBatchResumeToken``)."""
        self.tracker.track(token, 0)

    def halt(self, fenced: Fenced) -> None:
        """A newer leader exists: drop what is staged and refuse every later flush."""
        self.halted = fenced
        self._records, self._seqs = [], []
        self._room.set()

    async def flush(self) -> None:
        """Hand the staged records to the producer; then wait while too many are in flight."""
        if self.halted is not None:
            raise self.halted
        if self._records:
            records, seqs = self._records, self._seqs
            self._records, self._seqs = [], []
            try:
                batches = await self._producer.send_many(records)
            except Exception as exc:  # the producer refused the records outright
                self._fail(exc)
                raise KafkaUnavailable(f"{type(exc).__name__}: {exc}") from exc
            if self._outstanding == 0:
                self._waiting_since = time.monotonic()
            for batch in batches:
                self._outstanding += 1
                self._idle.clear()
                # Count the kinds now and let the records go: the bytes are in the produce
                # batch, and fewer long-lived objects keep the garbage collector cheap.
                kinds = Counter(map(_kind, map(records.__getitem__, batch.indices)))
                batch.future.add_done_callback(partial(self._done, seqs, batch.indices, kinds))
        if self.tracker.in_flight >= self._max and self.failure is None:
            # Backpressure: stop pulling changes until Kafka catches up (or fails).
            self._room.clear()
            await self._room.wait()
        if self.halted is not None:
            raise self.halted
        if self.failure is not None:
            raise KafkaUnavailable(_describe(self.failure)) from self.failure

    def _done(
        self,
        seqs: list[int],
        indices: Sequence[int],
        kinds: Counter[str],
        future: "asyncio.Future[Any]",
    ) -> None:
        """A produce batch settled: ``indices`` are its records' positions in the flushed
        records (``seqs`` holds each one's change), ``kinds`` counts them by kind."""
        self._outstanding -= 1
        if future.cancelled():
            self._fail(asyncio.CancelledError())
        elif (exc := future.exception()) is not None:
            self._fail(exc)
        else:
            self._waiting_since = time.monotonic()
            self.tracker.ack_many(map(seqs.__getitem__, indices))
            self.acked.update(kinds)
            if self.tracker.in_flight < self._max:
                self._room.set()
        if self._outstanding == 0:
            self._idle.set()

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self._room.set()

    async def drain(self) -> None:
        """Wait until every record handed to the producer is acknowledged or failed."""
        await self._idle.wait()


_kind: Final = attrgetter("kind")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Publisher:
    def __init__(
        self,
        options: PublisherOptions,
        *,
        source: ChangeSource,
        checkpoints: CheckpointStore,
        leases: LeaseStore,
        producer: EventProducer,
        router: Router,
        metrics: PublisherMetrics | None = None,
    ) -> None:
        self.options = options
        self._source = source
        self._checkpoints = checkpoints
        self._leases = leases
        self._producer = producer
        self._router = router
        self._mapper = ChangeMapper()
        self.metrics = metrics or PublisherMetrics()
        self.role = Role.STARTING
        self.epoch = 0
        self.streaming = False
        self.last_checkpoint: Checkpoint | None = None
        #: where the checkpoint age counts from: the last checkpoint saved, or before the
        #: first one the start of streaming (a store that refuses every save shows a growing
        #: age, not 0); None before streaming
        self._checkpoint_age_from: float | None = None
        self._delivery: _Delivery | None = None
        #: Where to resume after a failure: the newest fully acknowledged position.
        self._safe_position: StreamPosition | None = None
        #: Failures since the last checkpoint that made progress (sets the backoff).
        self._failures = 0
        #: The refusal that ended this term, if a newer leader fenced this instance.
        self._fence: Fenced | None = None
        #: Terms in a row ended by a fence (sets how long to stand by before asking again).
        self._fences = 0
        self._lease: Lease | None = None
        #: The producer was stopped to give up a deposed term's records: start it again
        #: before the next term produces.
        self._producer_stopped = False
        self._stop = asyncio.Event()
        self._log = log.bind(instance=options.instance_id, stream=options.stream_name)
        self.metrics.bind(
            checkpoint_age=self._checkpoint_age,
            in_flight=lambda: float(self.in_flight),
            ready=lambda: float(self.ready),
        )

    # -- state seen by the HTTP routes -------------------------------------------------

    @property
    def ready(self) -> bool:
        """Leader streaming with Kafka acknowledging, or a healthy standby."""
        if self.role is Role.STANDBY:
            return True
        delivery = self._delivery
        acking = delivery is None or delivery.stalled_for() < self.options.ack_stall_seconds
        return self.role is Role.LEADER and self.streaming and acking

    @property
    def acknowledged_token(self) -> ResumeToken | None:
        """Resume token of the newest change Kafka acknowledged with all before it."""
        return self._delivery.tracker.safe_token if self._delivery else None

    @property
    def in_flight(self) -> int:
        return self._delivery.tracker.in_flight if self._delivery else 0

    def _checkpoint_age(self) -> float:
        since = self._checkpoint_age_from
        return 0.0 if since is None else time.monotonic() - since

    def status(self) -> dict[str, Any]:
        """What ``/readyz`` and ``/healthz`` show. ``checkpointAgeSeconds`` is null unless
        this instance leads: the same condition as ``publisher_checkpoint_age_seconds``
        (a standby's last-term age describes a stream it no longer reads)."""
        leading = self.metrics.term.leading
        return {
            "instance": self.options.instance_id,
            "role": self.role.value,
            "epoch": self.epoch,
            "ready": self.ready,
            "streaming": self.streaming,
            "inFlight": self.in_flight,
            "checkpointAgeSeconds": round(self._checkpoint_age(), 3) if leading else None,
        }

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop: finish in-flight sends, checkpoint, release the lease."""
        self._stop.set()

    async def run(self) -> None:
        """Run until ``stop()``. Raises HistoryLostFatal under ``history_lost_policy=fail``."""
        try:
            await self._until_stopped(self._start_producer(self.options.kafka_start_timeout))
            while not self._stop.is_set():
                acquired = await self._await_leadership()
                if acquired is None:
                    break
                lease, granted_at = acquired
                await self._lead(lease, granted_at)
        except _StopRequested:
            pass
        finally:
            self.role = Role.STOPPED
            self.streaming = False
            self.metrics.stand_by()
            with contextlib.suppress(Exception):
                await self._producer.stop(self.options.stop_drain_seconds)
            self._log.info("publisher stopped")

    async def _start_producer(self, give_up_after: float | None = None) -> None:
        """Start the producer, retried (:class:`ProducerStartup`: one line per failed
        attempt) for ``give_up_after`` seconds, then :class:`KafkaUnreachable` (the give-up
        line is said); without a bound until it starts (or a stop)."""
        if not await self._kafka_retries(give_up_after).run(self._producer.start):
            raise KafkaUnreachable(f"not reachable within {give_up_after} s of the start")

    def _kafka_retries(
        self, give_up_after: float | None, *, say_started: bool = True
    ) -> ProducerStartup:
        """Kafka's start or probe retried with the publisher's back-off, one line per
        failed attempt naming the bootstrap servers."""
        return ProducerStartup(
            self.options.bootstrap_servers,
            timeout_seconds=give_up_after,
            first_backoff_seconds=self.options.backoff_initial,
            max_backoff_seconds=self.options.backoff_max,
            say_started=say_started,
        )

    def _retrying(self) -> Any:
        """Capped exponential backoff with jitter, until success (or a stop)."""
        return stamina.retry_context(
            on=Exception,
            attempts=None,
            timeout=None,
            wait_initial=self.options.backoff_initial,
            wait_max=self.options.backoff_max,
        )

    async def _until_stopped(self, work: Awaitable[T]) -> T:
        """The result of ``work``, or ``_StopRequested`` if a stop is asked first."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise _StopRequested

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # -- leadership ---------------------------------------------------------------------

    async def _await_leadership(self) -> tuple[Lease, float] | None:
        ttl = self.options.lease_ttl
        while not self._stop.is_set():
            asked_at = time.monotonic()
            try:
                lease = await asyncio.wait_for(
                    self._leases.acquire(self.options.stream_name, self.options.instance_id, ttl),
                    ttl / 2,
                )
            except Exception as exc:
                self._log.warning("lease store unavailable", error=repr(exc))
                lease = None
            if lease is not None:
                return lease, asked_at
            if self.role is not Role.STANDBY:
                self._log.info("standing by: another instance holds the lease")
                self.role = Role.STANDBY
            await self._sleep_or_stop(ttl / 4)
        return None

    async def _lead(self, lease: Lease, granted_at: float) -> None:
        self._lease = lease
        self.epoch = lease.epoch
        self.role = Role.LEADER
        # this term's age starts with its stream, not at a checkpoint of an earlier term
        self._checkpoint_age_from = None
        self.metrics.lead(lease.epoch)
        self._log.info("leading", epoch=lease.epoch)
        guard = LeaderGuard(self.options.lease_ttl, granted_at)
        term = asyncio.create_task(self._term(lease, guard))
        keeper = asyncio.create_task(self._keep_lease(guard))
        stopping = asyncio.create_task(self._stop.wait())
        abandoned: _Delivery | None = None
        delivery: _Delivery | None = None
        try:
            await asyncio.wait({term, keeper, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not (term.done() or keeper.done()):
                # Stopping: the term drains what is in flight, then checkpoints.
                await asyncio.wait(
                    {term, keeper},
                    timeout=self.options.stop_drain_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not (term.done() or keeper.done()):
                    abandoned = self._delivery
        finally:
            for task in (term, keeper, stopping):
                task.cancel()
            results = await asyncio.gather(term, keeper, stopping, return_exceptions=True)
            delivery = self._delivery
            self.streaming = False
            self._delivery = None
            self.metrics.stand_by()
        if abandoned is not None:
            await self._give_up(abandoned, lease)
        fenced, self._fence = self._fence, None
        if fenced is not None or any(isinstance(r, Fenced) for r in results):
            if abandoned is None:  # else _give_up above already stopped the producer
                await self._give_up_in_flight(delivery, lease, checkpoint=False)
            await self._step_down(lease, fenced)
            return
        lost = [r for r in results if isinstance(r, LeaseLost)]
        fatal = [r for r in results if isinstance(r, HistoryLostFatal)]
        if lost:
            self._log.warning("lease lost: stopped producing", epoch=lease.epoch, why=str(lost[0]))
            await self._give_up_in_flight(delivery, lease, checkpoint=True)
            fenced, self._fence = self._fence, None
            if fenced is not None:  # its last checkpoint was refused: a newer leader
                await self._step_down(lease, fenced)
                return
            self.role = Role.STARTING
            return
        await self._release()
        if fatal:
            raise fatal[0]
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result

    async def _give_up(self, delivery: _Delivery, lease: Lease) -> None:
        """The stop's drain ran out: checkpoint what Kafka acknowledged and stop the
        producer (it gives up the rest) before the lease is released, so no record of this
        term lands after the next leader's. The next leader re-sends the rest."""
        self._log.warning(
            "stopping without acknowledgements for records in flight: given up, the next "
            "leader re-reads them from the checkpoint",
            in_flight=delivery.tracker.in_flight,
            waited=self.options.stop_drain_seconds,
        )
        self._flush_metrics(delivery)
        with contextlib.suppress(Fenced):  # recorded in self._fence: steps down below
            await self._checkpoint(delivery, lease)
        self._producer_stopped = True
        with contextlib.suppress(Exception):
            await self._producer.stop(0.0)

    async def _give_up_in_flight(
        self, delivery: _Delivery | None, lease: Lease, *, checkpoint: bool
    ) -> None:
        """The term ended by a lost lease or a fence: give up at once what the producer
        still holds (with idempotence aiokafka never expires a batch, so it could land
        after the next leader's records, a lower epoch after a higher one), then checkpoint
        what was acknowledged — unless fenced: a newer leader owns the checkpoint. The
        next term starts the producer again and re-reads the rest from the checkpoint."""
        self._log.warning(
            "term ended: records in flight given up, re-read from the checkpoint",
            epoch=lease.epoch,
            in_flight=delivery.tracker.in_flight if delivery is not None else 0,
        )
        self._producer_stopped = True
        with contextlib.suppress(Exception):
            await self._producer.stop(0.0)
        if delivery is None:
            return
        self._flush_metrics(delivery)
        if checkpoint:
            with contextlib.suppress(Fenced):  # recorded in self._fence
                await self._checkpoint(delivery, lease)

    async def _step_down(self, lease: Lease, fenced: Fenced | None) -> None:
        """Fenced: a newer leader has checkpointed. Give the lease back (the store only
        releases it if it is still ours), stand by, and wait — longer after each fence in a
        row — before asking for it again, instead of re-acquiring, re-snapshotting and
        being fenced again in a loop."""
        self.role = Role.STANDBY
        await self._release()
        self._fences += 1
        ceiling = _doubled(
            self.options.lease_ttl,
            self._fences - 1,
            max(self.options.backoff_max, self.options.lease_ttl),
        )
        delay = random.uniform(ceiling / 2, ceiling)
        self._log.warning(
            "fenced by a newer leader: stopped producing, standing by",
            epoch=lease.epoch,
            why=str(fenced) if fenced else None,
            retry_in=round(delay, 2),
        )
        await self._sleep_or_stop(delay)

    async def _keep_lease(self, guard: LeaderGuard) -> None:
        ttl = self.options.lease_ttl
        while True:
            await asyncio.sleep(ttl / 4)
            asked_at = time.monotonic()
            if not guard.may_produce(asked_at):
                raise LeaseLost("lease not renewed in time")
            assert self._lease is not None
            try:
                renewed = await asyncio.wait_for(
                    self._leases.renew(self._lease, ttl), guard.valid_until - asked_at
                )
            except Exception as exc:
                self._log.warning("lease renewal failed", error=repr(exc))
                if not guard.may_produce(time.monotonic()):
                    raise LeaseLost("lease not renewed in time") from exc
                continue
            if renewed is None:
                raise LeaseLost("lease taken by another instance")
            guard.renewed(asked_at)
            self._lease = renewed

    async def _release(self) -> None:
        if self._lease is None:
            return
        lease, self._lease = self._lease, None
        try:
            await self._leases.release(lease)
            self._log.info("lease released", epoch=lease.epoch)
        except Exception as exc:
            self._log.warning("lease release failed; it expires by itself", error=repr(exc))

    # -- one leadership term ------------------------------------------------------------

    async def _term(self, lease: Lease, guard: LeaderGuard) -> None:
        try:
            await self._produce(lease, guard)
        except _StopRequested:
            return

    async def _produce(self, lease: Lease, guard: LeaderGuard) -> None:
        self._safe_position = None
        if self._producer_stopped:  # the last term gave its records up
            await self._until_stopped(self._start_producer())
            self._producer_stopped = False
        start = await self._until_stopped(self._initial_position())
        while not self._stop.is_set():
            if self._fence is not None:
                raise self._fence
            try:
                if isinstance(start, _Snapshot):
                    start = await self._snapshot(lease, guard, start.resync)
                    continue
                reopen = await self._stream(start, lease, guard)
                if reopen is None:
                    return
                start = reopen
            except (KafkaUnavailable, SourceUnavailable) as exc:
                self.streaming = False
                interrupted_at = time.monotonic()
                kafka_failed = isinstance(exc, KafkaUnavailable)
                if kafka_failed:
                    self.metrics.kafka_errors.inc()
                else:
                    self.metrics.source_errors.inc()
                kafka = {"bootstrap_servers": self.options.bootstrap_servers}
                self._log.warning(
                    "stream interrupted; retrying from the last acknowledged change",
                    error=f"{type(exc).__name__}: {exc}",
                    cause=repr(exc.__cause__) if exc.__cause__ else None,
                    **(kafka if kafka_failed else {}),
                )
                start = self._resume_point(start)
                # From here until Kafka answers, aiokafka's own complaints (its client keeps
                # refreshing metadata in the background) are the probes' reasons instead.
                with held_back(AIOKAFKA_LOGGER):
                    await self._until_stopped(self._backoff())
                    await self._until_stopped(self._wait_for_kafka(interrupted_at, kafka_failed))
            except HistoryLost as exc:
                self.streaming = False
                self.metrics.history_lost.inc()
                if self.options.history_lost_policy == "fail":
                    self._log.error(
                        "change history lost and history_lost_policy=fail: exiting; delete the "
                        "checkpoint or set PUBLISHER_HISTORY_LOST_POLICY=resnapshot",
                        error=str(exc),
                    )
                    raise HistoryLostFatal(str(exc)) from exc
                self._log.warning("change history lost: resnapshotting", error=str(exc))
                start = _Snapshot(resync=f"{ResyncCause.HISTORY_LOST}: {exc}"[:500])

    def _resume_point(self, start: StreamPosition | _Snapshot) -> StreamPosition | _Snapshot:
        """After a failure: the newest acknowledged position (checkpointed or not)."""
        if isinstance(start, _Snapshot):
            return start
        if self._safe_position is not None:
            return self._safe_position
        if self.last_checkpoint is not None:
            return self.last_checkpoint.position
        return start

    async def _backoff(self) -> None:
        """Capped exponential backoff with jitter over consecutive failures, so a source
        that refuses at once (or a record Kafka keeps refusing) is not retried in a loop."""
        self._failures += 1
        ceiling = _doubled(
            self.options.backoff_initial, self._failures - 1, self.options.backoff_max
        )
        await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    async def _wait_for_kafka(self, interrupted_at: float, kafka_failed: bool) -> None:
        """Probe the cluster until it answers, one line per failed probe naming the address
        and aiokafka's reason (:class:`ProducerStartup`); then, if Kafka was what failed or
        did not answer at once, one line saying it is back."""
        probes = self._kafka_retries(None, say_started=False)
        await probes.run(self._producer.probe)
        if kafka_failed or probes.attempts > 1:
            self._log.info(
                "kafka reachable again: resuming",
                bootstrap_servers=self.options.bootstrap_servers,
                attempts=probes.attempts,
                outage_seconds=round(time.monotonic() - interrupted_at, 1),
            )

    async def _initial_position(self) -> StreamPosition | _Snapshot:
        checkpoint: Checkpoint | None = None
        mode = self.options.start_mode
        # ``latest`` ignores the stored checkpoint, and so must a retry (``_resume_point``)
        # after an open that failed before anything was acknowledged: it is not loaded.
        if mode != "latest":
            async for attempt in self._retrying():
                with attempt:
                    checkpoint = await self._checkpoints.load(self.options.stream_name)
        self.last_checkpoint = checkpoint
        if checkpoint is not None:
            self._log.info("resuming", position=checkpoint.position.describe(), mode=mode)
            return checkpoint.position
        if mode == "snapshot":
            self._log.info("no checkpoint: starting with a snapshot")
            return _Snapshot()
        self._log.info("starting at the latest change", mode=mode)
        return StreamPosition()

    # -- streaming ----------------------------------------------------------------------

    async def _stream(
        self, position: StreamPosition, lease: Lease, guard: LeaderGuard
    ) -> StreamPosition | None:
        """Stream from ``position``; None after a graceful stop, or where to reopen after an
        invalidate."""
        stream = await self._source.open(position)
        delivery = _Delivery(self._producer, self.options.max_in_flight)
        self._delivery = delivery
        checkpointer = asyncio.create_task(self._checkpoint_loop(delivery, lease))
        stopper = asyncio.create_task(self._stop.wait())
        self._log.info("streaming", position=position.describe())
        if stream.start_token is not None:
            delivery.progress(stream.start_token)
        try:
            self.streaming = True
            if self._checkpoint_age_from is None:
                self._checkpoint_age_from = time.monotonic()
            while True:
                if checkpointer.done():
                    checkpointer.result()
                batch_task = asyncio.ensure_future(stream.next_batch())
                await asyncio.wait(
                    {batch_task, stopper, checkpointer}, return_when=asyncio.FIRST_COMPLETED
                )
                if not batch_task.done():
                    batch_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await batch_task
                    if checkpointer.done():
                        checkpointer.result()
                    break
                batch = batch_task.result()
                if not guard.may_produce(time.monotonic()):
                    raise LeaseLost("lease not renewed in time")
                changes = batch.changes
                while (stopped := self._stage_changes(delivery, changes, lease.epoch)) is not None:
                    changes = changes[_index_of(stopped, changes) :]
                    restructured = self._restructured_run(changes)
                    if not restructured:
                        break  # an invalidate
                    changes = changes[len(restructured) :]
                    await self._resync_restructured(delivery, restructured, lease.epoch)
                if stopped is not None:  # invalidated: its dropDatabase was announced
                    self._log.warning(
                        "change stream invalidated (collection or database dropped or "
                        "renamed): checkpointing and reopening",
                        ns=f"{stopped.ns.db}.{stopped.ns.coll}",
                    )
                    delivery.progress(stopped.token)
                    await delivery.flush()
                    await self._finish(delivery, lease)
                    return StreamPosition(after=stopped.token)
                if batch.resume_token is not None:
                    delivery.progress(batch.resume_token)
                await delivery.flush()
            await self._finish(delivery, lease)
            return None
        except (KafkaUnavailable, SourceUnavailable, HistoryLost):
            self.streaming = False
            # Keep what was acknowledged before the failure: the retry resumes after it.
            with contextlib.suppress(Exception):
                await self._until_stopped(delivery.drain())
                if delivery.tracker.safe_token is not None:
                    self._safe_position = StreamPosition(after=delivery.tracker.safe_token)
                await self._checkpoint(delivery, lease)
            raise
        except BaseException:
            self.streaming = False
            raise
        finally:
            stopper.cancel()
            checkpointer.cancel()
            with contextlib.suppress(BaseException):
                await checkpointer
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _finish(self, delivery: _Delivery, lease: Lease) -> None:
        """Graceful end of a stream: wait for in-flight sends, then checkpoint."""
        await delivery.drain()
        self._flush_metrics(delivery)
        await self._checkpoint(delivery, lease)
        if delivery.failure is not None:
            raise KafkaUnavailable(_describe(delivery.failure)) from delivery.failure

    def _stage_changes(
        self, delivery: _Delivery, changes: Sequence[ChangeEvent], epoch: int
    ) -> ChangeEvent | None:
        """Map, encode and stage one source batch in a single synchronous pass (the hot
        loop: nothing is awaited per change). Returns the first change it could not stage
        (an invalidate, or a structural change: its resync needs the topics' partitions);
        the changes from it on are not staged."""
        map_change = self._mapper.map_change
        topic_for = self._router.topic_for
        limit = self.options.max_record_bytes
        stage_one = delivery.stage_one
        for change in changes:
            outcome = map_change(change)
            if type(outcome) is Publish:
                topic = topic_for(change.ns.coll or "")
                if topic is not None:
                    records = encode_records(outcome, topic, epoch)
                    if len(records[0].value) <= limit:
                        if len(records) == 1:
                            stage_one(records[0], change.token, _change_time(change))
                        else:
                            delivery.stage(records, change.token, _change_time(change))
                        continue
            elif type(outcome) is Invalidated or type(outcome) is Restructured:
                return change
            # Dead letters, skips, and events without a topic or too large to produce.
            delivery.stage(
                self._records_for(change, outcome, epoch), change.token, _change_time(change)
            )
        return None

    def _records_for(
        self, change: ChangeEvent, outcome: Outcome, epoch: int
    ) -> Sequence[OutgoingRecord]:
        if isinstance(outcome, Publish):
            topic = self._router.topic_for(change.ns.coll or "")
            if topic is None:
                outcome = DeadLetter(
                    f"no topic for collection {change.ns.coll!r}", outcome.routing_key
                )
            else:
                records = encode_records(outcome, topic, epoch)
                size = len(records[0].value)
                if size <= self.options.max_record_bytes:
                    return records
                outcome = DeadLetter(
                    f"event of {size} bytes exceeds max_record_bytes "
                    f"({self.options.max_record_bytes})",
                    outcome.routing_key,
                )
        if isinstance(outcome, DeadLetter):
            self.metrics.dead_letters.inc()
            self._log.warning(
                "dead-lettering a change",
                error=outcome.error,
                ns=f"{change.ns.db}.{change.ns.coll}",
                operation=change.operation_type.value,
                document_key=str(change.document_key),
            )
            letter = dead_letter_of_change(
                change, outcome.error, event_id(change), self.options.instance_id, _now()
            )
            encoded = encode_dead_letter(letter, outcome.key, self._router.deadletter, epoch)
            if len(encoded.value) > self.options.max_record_bytes:
                letter = dead_letter_of_change(
                    change,
                    outcome.error,
                    event_id(change),
                    self.options.instance_id,
                    _now(),
                    with_documents=False,
                )
                encoded = encode_dead_letter(letter, outcome.key, self._router.deadletter, epoch)
            return (encoded,)
        if isinstance(outcome, Skip):
            self.metrics.skipped.inc()
        return ()

    def _restructured_run(
        self, changes: Sequence[ChangeEvent]
    ) -> list[tuple[ChangeEvent, Restructured]]:
        """The structural changes at the start of ``changes``, up to the first other one:
        a dropped database is a ``drop`` per collection and a ``dropDatabase``, announced
        together as one resync."""
        run: list[tuple[ChangeEvent, Restructured]] = []
        for change in changes:
            outcome = self._mapper.map_change(change)
            if not isinstance(outcome, Restructured):
                break
            run.append((change, outcome))
        return run

    async def _resync_restructured(
        self, delivery: _Delivery, run: Sequence[tuple[ChangeEvent, Restructured]], epoch: int
    ) -> None:
        """Documents vanished or were replaced without a change each (a collection dropped
        or renamed, the database dropped): stage a ``stream.resync`` to every partition of
        the topics they feed, in stream order, under the token of the run's last change, so
        the checkpoint passes the run only once Kafka has every resync record (a crash
        before re-reads the run and announces it again)."""
        topics: set[str] = set()
        for _, outcome in run:
            if outcome.collections is None:
                topics.update(self._router.data_topics)
            else:
                topics.update(filter(None, map(self._router.topic_for, outcome.collections)))
        last = run[-1][0]
        details = [restructured.detail for _, restructured in run]
        # ``data_topics`` order: the same change always announces in the same order.
        concerned = tuple(topic for topic in self._router.data_topics if topic in topics)
        if not concerned:  # collections this publisher routes nowhere: nobody shows them
            self.metrics.skipped.inc(len(run))
            self._log.info("structural change of unpublished collections", changes=details)
            delivery.stage((), last.token, _change_time(last))
            return
        # The widest cause of the run names it (a dropped database is drops, then itself).
        cause = max((restructured.cause for _, restructured in run), key=_CAUSE_ORDER.index)
        records = await self._resync_records(concerned, epoch, f"{cause}: {'; '.join(details)}")
        delivery.stage(records, last.token, _change_time(last))
        self.metrics.resyncs.labels(cause.value).inc()
        self._log.warning(
            "collection dropped or replaced: telling its readers to refetch (stream.resync)",
            changes=details,
            topics=list(concerned),
        )

    async def _checkpoint_loop(self, delivery: _Delivery, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self.options.checkpoint_interval)
            self._flush_metrics(delivery)
            await self._checkpoint(delivery, lease)

    async def _checkpoint(
        self, delivery: _Delivery, lease: Lease, at: ClusterTime | None = None
    ) -> None:
        token = delivery.tracker.safe_token
        if token is None and at is None:
            return
        last = self.last_checkpoint
        if last is not None and token == last.token and at == last.at and last.epoch == lease.epoch:
            self._checkpoint_age_from = time.monotonic()
            return
        checkpoint = Checkpoint(token=token, at=at, epoch=lease.epoch, saved_at=_now())
        try:
            await self._checkpoints.save(self.options.stream_name, checkpoint)
        except Fenced as fenced:
            # Stop at once: nothing staged or later may reach Kafka under this epoch.
            self._fence = fenced
            delivery.halt(fenced)
            raise
        except Exception as exc:
            self.metrics.checkpoint_errors.inc()
            self._log.warning("checkpoint failed; will retry", error=f"{type(exc).__name__}: {exc}")
            return
        self.last_checkpoint = checkpoint
        self._checkpoint_age_from = time.monotonic()
        self._safe_position = checkpoint.position
        self._fences = 0
        if last is None or checkpoint.position != last.position:
            self._failures = 0

    def _flush_metrics(self, delivery: _Delivery) -> None:
        acked, delivery.acked = delivery.acked, Counter()
        for kind, count in acked.items():
            self.metrics.events.labels(kind).inc(count)
        if acked and delivery.tracker.safe_change_time:
            self.metrics.term.lag = max(0.0, time.time() - delivery.tracker.safe_change_time)
        elif delivery.tracker.settled:
            self.metrics.term.lag = 0.0

    # -- snapshots ----------------------------------------------------------------------

    async def _snapshot(
        self, lease: Lease, guard: LeaderGuard, resync: str | None
    ) -> StreamPosition:
        """Copy every document as events, then return where streaming must start: an
        operation time captured before the copy, so no change between copy and stream is
        lost (changes during the copy may be published twice, with increasing versions)."""
        delivery = _Delivery(self._producer, self.options.max_in_flight)
        self._delivery = delivery
        if resync is not None:
            await self._publish_resync(delivery, lease.epoch, resync)
        times: list[ClusterTime] = []
        copied = 0
        for collection in self.options.collections:
            part = await self._source.snapshot(collection)
            times.append(part.operation_time)
            async for document in part.documents:
                if self._stop.is_set():
                    raise _StopRequested
                if not guard.may_produce(time.monotonic()):
                    raise LeaseLost("lease not renewed in time")
                outcome = self._mapper.map_document(collection, document, part.operation_time)
                delivery.stage(
                    self._snapshot_records(collection, document, outcome, lease.epoch), None, 0
                )
                copied += 1
                if copied % 1000 == 0:
                    await delivery.flush()
        await delivery.flush()
        await delivery.drain()
        self._flush_metrics(delivery)
        self.metrics.snapshot_documents.inc(copied)
        if delivery.failure is not None:
            raise KafkaUnavailable(_describe(delivery.failure)) from delivery.failure
        start = min(times, key=lambda t: (t.t, t.i)) if times else ClusterTime(t=0, i=0)
        await self._checkpoint(delivery, lease, at=start)
        self._log.info("snapshot published", documents=copied, start_at=f"{start.t}.{start.i}")
        return StreamPosition(at=start)

    def _snapshot_records(
        self, collection: str, document: dict[str, Any], outcome: Outcome, epoch: int
    ) -> Sequence[OutgoingRecord]:
        limit = self.options.max_record_bytes
        if isinstance(outcome, Publish):
            topic = self._router.topic_for(collection)
            if topic is None:
                outcome = DeadLetter(f"no topic for collection {collection!r}", collection)
            else:
                records = encode_records(outcome, topic, epoch)
                size = len(records[0].value)
                if size <= limit:
                    return records
                outcome = DeadLetter(
                    f"event of {size} bytes exceeds max_record_bytes ({limit})",
                    outcome.routing_key,
                )
        if isinstance(outcome, DeadLetter):
            self.metrics.dead_letters.inc()
            self._log.warning(
                "dead-lettering a snapshot document", error=outcome.error, collection=collection
            )
            letter = dead_letter_of_document(
                collection, document, outcome.error, self.options.instance_id, _now()
            )
            encoded = encode_dead_letter(letter, outcome.key, self._router.deadletter, epoch)
            if len(encoded.value) > limit:
                letter = dead_letter_of_document(
                    collection,
                    {"_id": document.get("_id")},
                    outcome.error,
                    self.options.instance_id,
                    _now(),
                )
                encoded = encode_dead_letter(letter, outcome.key, self._router.deadletter, epoch)
            return (encoded,)
        return ()

    async def _publish_resync(self, delivery: _Delivery, epoch: int, reason: str) -> None:
        """``stream.resync`` to every partition of every data topic, keyed ``~control``."""
        records = await self._resync_records(self._router.data_topics, epoch, reason)
        delivery.stage(records, None, 0)
        await delivery.flush()
        self.metrics.resyncs.labels(ResyncCause.HISTORY_LOST.value).inc()
        self._log.warning("published stream.resync", topics=list(self._router.data_topics))

    async def _resync_records(
        self, topics: Sequence[str], epoch: int, reason: str
    ) -> list[OutgoingRecord]:
        """A ``stream.resync`` record for every partition of ``topics``, keyed ``~control``."""
        now = _now()
        records: list[OutgoingRecord] = []
        for topic in topics:
            try:
                partitions = await self._producer.partitions(topic)
            except Exception as exc:  # a metadata request failed: retried like a send
                raise KafkaUnavailable(f"partitions of {topic}: {_describe(exc)}") from exc
            for partition in partitions:
                raw = f"resync/{topic}/{partition}/{epoch}/{time.time_ns()}"
                event = CloudEvent(
                    id="r" + hashlib.blake2b(raw.encode(), digest_size=16).hexdigest(),
                    type=EventType.STREAM_RESYNC,
                    subject=f"topics/{topic}",
                    time=now,
                    data=ResyncData(reason=reason[:500], topic=topic),
                )
                records.append(encode_control(event, topic, partition, epoch))
        return records


def _doubled(first: float, times: int, ceiling: float) -> float:
    """``first`` doubled ``times`` times, at most ``ceiling``. The exponent is capped too:
    ``2 ** 1024`` does not fit a float (after ~3 h of failures at the default backoff)."""
    return min(ceiling, first * 2.0 ** min(times, 64))


#: Causes of a structural run, narrowest first: the widest names the run's resync.
_CAUSE_ORDER: Final = (
    ResyncCause.COLLECTION_RENAMED,
    ResyncCause.COLLECTION_DROPPED,
    ResyncCause.DATABASE_DROPPED,
)


def _index_of(change: ChangeEvent, changes: Sequence[ChangeEvent]) -> int:
    """Where ``change`` (the very object) is in ``changes``."""
    return next(i for i, candidate in enumerate(changes) if candidate is change)


def _now() -> datetime:
    return datetime.now(UTC)


def _change_time(change: ChangeEvent) -> float:
    if change.wall_time is not None:
        return change.wall_time.timestamp()
    return float(change.cluster_time.t)


__all__ = ["HistoryLostFatal", "Publisher", "PublisherOptions", "Role"]
