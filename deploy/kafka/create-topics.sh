#!/usr/bin/env bash
# Create Slotstream's Kafka topics (idempotent: existing topics are left as they are).
# Runs in the apache/kafka image (Compose service `kafka-init`). Settings from the
# environment; defaults suit a single-broker development cluster.
#
#   KAFKA_BOOTSTRAP_SERVERS        broker list                         (kafka:9092)
#   KAFKA_TOPICS_BIN               kafka-topics.sh                     (/opt/kafka/bin/kafka-topics.sh)
#   KAFKA_COMMAND_CONFIG           client properties (SASL), optional  (none: PLAINTEXT)
#   KAFKA_WAIT_ATTEMPTS            tries, 2 s apart, until Kafka answers (30)
#   TOPIC_PARTITIONS               partitions of the data topics       (6)
#   TOPIC_REPLICATION_FACTOR       replicas of every topic             (1)
#   TOPIC_MIN_INSYNC_REPLICAS      min.insync.replicas                 (1)
#   SCHEDULE_RETENTION_MS          slotstream.schedule.v1 retention    (604800000 = 7 days)
#   NOTIFICATIONS_RETENTION_MS     slotstream.notifications.v1         (604800000)
#   DEADLETTER_RETENTION_MS        slotstream.deadletter.v1            (2592000000 = 30 days)
#   PRESENCE_PARTITIONS            partitions of the presence topic    (1)
#   PRESENCE_RETENTION_MS          compact+delete: a crashed gateway's (600000 = 10 min)
#                                  last count disappears after this
#   SCHEDULE_TOPIC, NOTIFICATIONS_TOPIC, DEADLETTER_TOPIC, PRESENCE_TOPIC   topic names
set -euo pipefail

bootstrap=${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}
topics_bin=${KAFKA_TOPICS_BIN:-/opt/kafka/bin/kafka-topics.sh}
partitions=${TOPIC_PARTITIONS:-6}
replication=${TOPIC_REPLICATION_FACTOR:-1}
min_isr=${TOPIC_MIN_INSYNC_REPLICAS:-1}
client=()
if [[ -n ${KAFKA_COMMAND_CONFIG:-} ]]; then
  client=(--command-config "$KAFKA_COMMAND_CONFIG")
fi

attempts=${KAFKA_WAIT_ATTEMPTS:-30}
for attempt in $(seq 1 "$attempts"); do
  if "$topics_bin" --bootstrap-server "$bootstrap" "${client[@]}" --list >/dev/null 2>&1; then
    break
  fi
  if [[ $attempt -ge $attempts ]]; then
    echo "create-topics: Kafka at $bootstrap did not answer" >&2
    exit 1
  fi
  sleep 2
done

create() {
  local topic=$1 count=$2
  shift 2
  "$topics_bin" --bootstrap-server "$bootstrap" "${client[@]}" --create --if-not-exists \
    --topic "$topic" --partitions "$count" --replication-factor "$replication" \
    --config "min.insync.replicas=$min_isr" "$@"
  echo "create-topics: $topic ready ($count partitions, replication $replication)"
}

create "${SCHEDULE_TOPIC:-slotstream.schedule.v1}" "$partitions" \
  --config cleanup.policy=delete --config "retention.ms=${SCHEDULE_RETENTION_MS:-604800000}"
create "${NOTIFICATIONS_TOPIC:-slotstream.notifications.v1}" "$partitions" \
  --config cleanup.policy=delete --config "retention.ms=${NOTIFICATIONS_RETENTION_MS:-604800000}"
create "${DEADLETTER_TOPIC:-slotstream.deadletter.v1}" "$partitions" \
  --config cleanup.policy=delete --config "retention.ms=${DEADLETTER_RETENTION_MS:-2592000000}"
# Compacted: one live record per gateway instance (its subscriber counts). `delete` as
# well, so the entry of a gateway that died without a tombstone ages out.
create "${PRESENCE_TOPIC:-slotstream.presence.v1}" "${PRESENCE_PARTITIONS:-1}" \
  --config cleanup.policy=compact,delete --config "retention.ms=${PRESENCE_RETENTION_MS:-600000}" \
  --config segment.ms=60000 --config min.cleanable.dirty.ratio=0.1
