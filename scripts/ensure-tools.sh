#!/usr/bin/env bash
# Tools the test suite needs besides Node, from Debian's packages; idempotent and quiet when all is well:
#   docker-compose (v1): the only way to validate docker-compose.yml on a machine without a Docker engine;
#   nats-server: tests that stop and restart NATS run a server of their own (the shared one stays up);
#   prometheus (for promtool): the alerting rules are checked with Prometheus's own checker.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-tools: ${missing[*]} missing and this is not a Debian-like system; install them to run the tests" >&2
  exit 1
fi
echo "ensure-tools: installing ${missing[*]} from Debian's packages" >&2
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
