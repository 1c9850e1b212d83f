#!/usr/bin/env bash
# Start the Compose Kafka (apache/kafka image, KRaft, one node) with SASL/SCRAM-SHA-512:
# on the first start, format the log directory with the `admin` SCRAM credential (KRaft
# keeps SCRAM users in its metadata, so the first one must exist before the broker does;
# kafka-init adds the services' users and their ACLs through it), then hand over to the
# image's own start script. The admin password comes from the file keygen wrote.
#
#   SCRAM_ADMIN_PASSWORD_FILE   /run/slotstream/kafka/admin-password
#   CLUSTER_ID, KAFKA_LOG_DIRS, KAFKA_NODE_ID, …   as the image reads them
#   SLOTSTREAM_KAFKA_BIN_DIR, SLOTSTREAM_KAFKA_RUN, SLOTSTREAM_ADMIN_PROPERTIES
#                               the image's paths (tests replace them; not KAFKA_*, which
#                               the image would turn into broker settings)
#
# Verified against apache/kafka's image sources (docker/jvm/Dockerfile, docker/jvm/launch,
# docker/resources/common-scripts/run, core/src/main/scala/kafka/docker/
# KafkaDockerWrapper.scala): `run` writes every KAFKA_* variable into server.properties,
# then formats the log directory itself and goes on when it is "already formatted".
set -euo pipefail

bin=${SLOTSTREAM_KAFKA_BIN_DIR:-/opt/kafka/bin}
admin_properties=${SLOTSTREAM_ADMIN_PROPERTIES:-/tmp/slotstream-admin.properties}

# The broker settings the image derives from the environment, exactly as its
# KafkaDockerWrapper does: every KAFKA_* variable except the JVM and log4j ones, without
# the prefix, lower-cased, `_` → `.`, then `...` → `-` and `..` → `_`. The format step
# below reads these same settings, so it validates the configuration the broker runs with.
server_properties() {
  local name key
  for name in $(compgen -e); do
    case $name in
      KAFKA_VERSION | KAFKA_HEAP_OPTS | KAFKA_LOG4J_OPTS | KAFKA_OPTS | KAFKA_JMX_OPTS | \
        KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_GC_LOG_OPTS | KAFKA_LOG4J_ROOT_LOGLEVEL | \
        KAFKA_LOG4J_LOGGERS | KAFKA_TOOLS_LOG4J_LOGLEVEL | KAFKA_JMX_HOSTNAME) continue ;;
      KAFKA_*) ;;
      *) continue ;;
    esac
    key=${name//KAFKA_/}
    key=${key,,}
    key=${key//_/.}
    key=${key//.../-}
    key=${key//../_}
    printf '%s=%s\n' "$key" "${!name}"
  done
}

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
  server_properties > "$format_properties"
  "$bin/kafka-storage.sh" format --cluster-id "${CLUSTER_ID:?}" \
    --config "$format_properties" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=${password}]"
  rm -f "$format_properties"
fi
exec "${SLOTSTREAM_KAFKA_RUN:-/etc/kafka/docker/run}"
