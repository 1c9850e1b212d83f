#!/usr/bin/env bash
# Start the Compose Kafka (apache/kafka image, KRaft, one node) with SASL/SCRAM-SHA-512:
# on the first start, format the log directory with the `admin` SCRAM credential (KRaft
# keeps SCRAM users in its metadata, so the first one must exist before the broker does;
# kafka-init adds the services' users and their ACLs through it), then hand over to the
# image's own start script. The admin password comes from the file keygen wrote.
#
#   SCRAM_ADMIN_PASSWORD_FILE   /run/slotstream/kafka/admin-password
#   CLUSTER_ID, KAFKA_LOG_DIRS, KAFKA_NODE_ID, …   as the image reads them
#   KAFKA_BIN_DIR, KAFKA_IMAGE_RUN, ADMIN_PROPERTIES   the image's paths (tests replace them)
set -euo pipefail

bin=${KAFKA_BIN_DIR:-/opt/kafka/bin}
admin_properties=${ADMIN_PROPERTIES:-/tmp/slotstream-admin.properties}

password=$(<"${SCRAM_ADMIN_PASSWORD_FILE:?}")
jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"${password}\";"
# The broker's own client login on the SASL listeners (inter-broker traffic).
export KAFKA_LISTENER_NAME_INTERNAL_SCRAM___SHA___512_SASL_JAAS_CONFIG="$jaas"
export KAFKA_LISTENER_NAME_HOST_SCRAM___SHA___512_SASL_JAAS_CONFIG="$jaas"

# Client settings for the Kafka CLI inside this container (README):
#   --command-config / --consumer.config /tmp/slotstream-admin.properties
umask 077
cat > "$admin_properties" <<PROPERTIES
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=${jaas}
PROPERTIES

if [[ ! -f "${KAFKA_LOG_DIRS:?}/meta.properties" ]]; then
  format_properties=$(mktemp)
  cat > "$format_properties" <<PROPERTIES
process.roles=${KAFKA_PROCESS_ROLES:?}
node.id=${KAFKA_NODE_ID:?}
controller.quorum.voters=${KAFKA_CONTROLLER_QUORUM_VOTERS:?}
controller.listener.names=${KAFKA_CONTROLLER_LISTENER_NAMES:?}
listeners=${KAFKA_LISTENERS:?}
listener.security.protocol.map=${KAFKA_LISTENER_SECURITY_PROTOCOL_MAP:?}
inter.broker.listener.name=${KAFKA_INTER_BROKER_LISTENER_NAME:?}
log.dirs=${KAFKA_LOG_DIRS}
PROPERTIES
  "$bin/kafka-storage.sh" format --cluster-id "${CLUSTER_ID:?}" \
    --config "$format_properties" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=${password}]"
  rm -f "$format_properties"
fi
exec "${KAFKA_IMAGE_RUN:-/etc/kafka/docker/run}"
