#!/bin/sh
# Write the Kafka admin client's properties (SASL/PLAIN as User:admin) to $1, readable by
# its owner only, from SASL_ADMIN_PASSWORD (never printed). Used by the broker's
# healthcheck and by acl-init (docker-compose.yml).
set -eu
umask 077
: "${SASL_ADMIN_PASSWORD:?SASL_ADMIN_PASSWORD is not set}"
{
  echo 'security.protocol=SASL_PLAINTEXT'
  echo 'sasl.mechanism=PLAIN'
  printf 'sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="%s";\n' "$SASL_ADMIN_PASSWORD"
} > "$1"
