#!/bin/bash
# Healthy when the broker answers a Kafka ApiVersions request (v0, correlation id 1) with error code 0: the protocol,
# not just an open port (the port opens before the broker serves requests). Bash and coreutils only, no JVM start.
# Usage: healthcheck.sh [host] [port]
exec 3<>"/dev/tcp/${1:-localhost}/${2:-9092}" || exit 1
printf '\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x01\x00\x00' >&3
reply=$(timeout 5 head -c 10 <&3 | od -An -tx1 | tr -d ' \n')
[ "${reply:8:12}" = "000000010000" ]
