#!/usr/bin/env bash
# Create (or update) the services' SCRAM-SHA-512 users on Kafka and give each the ACLs it
# needs, nothing more. Idempotent. Runs in the apache/kafka image (Compose `kafka-init`,
# after create-topics.sh) as the super user `admin`; Kubernetes does the same with
# Strimzi KafkaUsers (deploy/k8s/base/kafka-users.yaml).
#
#   KAFKA_BOOTSTRAP_SERVERS      broker list                           (kafka:9092)
#   KAFKA_COMMAND_CONFIG         admin client properties (SASL)        (required)
#   KAFKA_BIN_DIR                folder of the Kafka CLI               (/opt/kafka/bin)
#   KAFKA_PASSWORDS_DIR          holds <user>-password files           (/run/slotstream/kafka)
#   SCHEDULE_TOPIC, NOTIFICATIONS_TOPIC, DEADLETTER_TOPIC, PRESENCE_TOPIC   topic names
#
#   change-publisher: Write + Describe on the schedule, notifications and deadletter topics
#   push-gateway:     Read + Describe on schedule and notifications; Read + Write + Describe
#                     on the presence topic (its only write); no consumer group (it assigns
#                     partitions itself), so no Group ACL
set -euo pipefail

bootstrap=${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}
config=${KAFKA_COMMAND_CONFIG:?admin client properties}
bin=${KAFKA_BIN_DIR:-/opt/kafka/bin}
passwords=${KAFKA_PASSWORDS_DIR:-/run/slotstream/kafka}
schedule=${SCHEDULE_TOPIC:-slotstream.schedule.v1}
notifications=${NOTIFICATIONS_TOPIC:-slotstream.notifications.v1}
deadletter=${DEADLETTER_TOPIC:-slotstream.deadletter.v1}
presence=${PRESENCE_TOPIC:-slotstream.presence.v1}

user() {
  local name=$1 password
  password=$(<"$passwords/$name-password")
  "$bin/kafka-configs.sh" --bootstrap-server "$bootstrap" --command-config "$config" \
    --alter --entity-type users --entity-name "$name" \
    --add-config "SCRAM-SHA-512=[iterations=8192,password=${password}]" >/dev/null
  echo "create-users: $name ready"
}

allow() {
  local name=$1 operation=$2 topic=$3
  "$bin/kafka-acls.sh" --bootstrap-server "$bootstrap" --command-config "$config" \
    --add --allow-principal "User:$name" --operation "$operation" --topic "$topic" >/dev/null
}

user change-publisher
for topic in "$schedule" "$notifications" "$deadletter"; do
  allow change-publisher Write "$topic"
  allow change-publisher Describe "$topic"
done
user push-gateway
for topic in "$schedule" "$notifications" "$presence"; do
  allow push-gateway Read "$topic"
  allow push-gateway Describe "$topic"
done
allow push-gateway Write "$presence"
echo "create-users: ACLs ready"
