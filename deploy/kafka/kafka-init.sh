#!/usr/bin/env bash
# Compose `kafka-init`: one shot, as Kafka's super user `admin` (SASL/SCRAM-SHA-512):
# the topics (create-topics.sh), then the services' users and ACLs (create-users.sh).
#   SCRAM_ADMIN_PASSWORD_FILE   /run/slotstream/kafka/admin-password
set -euo pipefail
here=$(dirname "$0")
password=$(<"${SCRAM_ADMIN_PASSWORD_FILE:?}")
umask 077
config=$(mktemp)
trap 'rm -f "$config"' EXIT
cat > "$config" <<PROPERTIES
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${password}";
PROPERTIES
export KAFKA_COMMAND_CONFIG=$config
"$here/create-topics.sh"
"$here/create-users.sh"
