#!/usr/bin/env bash
# Tools the test suite needs besides Node: Debian's docker-compose (v1), the only way to validate
# docker-compose.yml on a machine without a Docker engine. Idempotent and quiet when all is well.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v docker-compose >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-tools: docker-compose is missing and this is not a Debian-like system; install docker-compose (v1) to validate docker-compose.yml" >&2
    exit 1
  fi
  echo "ensure-tools: installing docker-compose from Debian's packages" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
