#!/usr/bin/env bash
# Makes PostgreSQL (with trust auth on 127.0.0.1 for the postgres user) and NATS with JetStream reachable.
# Uses them when they already answer; otherwise installs them from Debian's packages and starts them.
# Idempotent and quiet when all is well.
set -euo pipefail

PGHOST_=${PGHOST:-127.0.0.1}
PGPORT_=${PGPORT:-5432}
NATS_HOST=${NATS_HOST:-127.0.0.1}
NATS_PORT=${NATS_PORT:-4222}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA="$ROOT/.data"

answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
say() { echo "ensure-services: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_debian() {
  if ! command -v apt-get >/dev/null 2>&1; then
    say "$1 is not reachable and this is not a Debian-like system (no apt-get)."
    say "Start PostgreSQL and NATS (with -js) yourself, or run the whole stack with: docker compose up"
    exit 1
  fi
}

apt_install() {
  if [ -z "${APT_UPDATED:-}" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # name host port
  for _ in $(seq 1 60); do answers "$2" "$3" && return 0; sleep 0.5; done
  say "$1 did not come up on $2:$3"; exit 1
}

ensure_postgres() {
  answers "$PGHOST_" "$PGPORT_" && return 0
  need_debian PostgreSQL
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    say "installing PostgreSQL from Debian's packages"
    apt_install postgresql
  fi
  local version hba
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  # A development machine: the postgres user connects over loopback without a password, as the services'
  # default DATABASE_URL expects. Production uses its own credentials in DATABASE_URL.
  local hba_changed=
  # pg_hba.conf is readable by postgres and root only.
  if ! as_root grep -q '^host all postgres 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
    hba_changed=1
  fi
  say "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  # The package starts its cluster as it installs it (invoke-rc.d), before the line above was written, and the
  # server reads pg_hba.conf only at start and on reload: without one the services' password-less connections
  # are refused.
  if [ -n "$hba_changed" ]; then as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload; fi
  wait_for PostgreSQL "$PGHOST_" "$PGPORT_"
}

# Every client is greeted with the server's INFO line, which says whether JetStream is on.
has_jetstream() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2 && head -n 1 <&3" 2>/dev/null | grep -q '"jetstream":true'; }

# Debian's nats-server package enables and starts a service of its own on 127.0.0.1:4222 (with systemd), without
# JetStream (its /etc/nats-server.conf has none): it takes the port ours needs, and again at every boot.
packaged_nats_active() { [ -d /run/systemd/system ] && systemctl is-active --quiet nats-server.service; }
disable_packaged_nats() {
  say "disabling Debian's nats-server service (no JetStream) to run one with JetStream"
  as_root systemctl disable --now nats-server.service
}

ensure_nats() {
  if answers "$NATS_HOST" "$NATS_PORT"; then
    has_jetstream "$NATS_HOST" "$NATS_PORT" && return 0
    if ! packaged_nats_active; then
      say "NATS on $NATS_HOST:$NATS_PORT runs without JetStream, which the services need: restart it with -js"
      exit 1
    fi
    disable_packaged_nats
  fi
  need_debian NATS
  if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    say "installing nats-server from Debian's packages"
    apt_install nats-server
    if packaged_nats_active; then disable_packaged_nats; fi
  fi
  local bin
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  mkdir -p "$DATA/nats"
  say "starting NATS with JetStream (store $DATA/nats, log $DATA/nats.log)"
  nohup "$bin" -a "$NATS_HOST" -p "$NATS_PORT" -js -sd "$DATA/nats" >"$DATA/nats.log" 2>&1 &
  wait_for NATS "$NATS_HOST" "$NATS_PORT"
  if ! has_jetstream "$NATS_HOST" "$NATS_PORT"; then
    say "a NATS without JetStream answers on $NATS_HOST:$NATS_PORT, not ours (see $DATA/nats.log)"
    exit 1
  fi
}

ensure_postgres
ensure_nats
