#!/usr/bin/env bash
# The PostgreSQL the store tests run against (each test creates and drops its own np_test_*
# database beside `test`): Debian's `postgresql`, installed on a bare machine, its cluster
# started when stopped, trust on loopback for the `postgres` user and a `test` database made
# once. Only for a CI or development machine: never run this against a production server.
# NETPATROL_TEST_PG overrides the URL (default postgres://postgres@127.0.0.1:5432/test).
set -euo pipefail
url=${NETPATROL_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive

if ! command -v pg_ctlcluster >/dev/null || ! command -v psql >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq postgresql
fi
version=$(ls /etc/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" && $4 ~ /^online/' | grep -q .; then
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi

if ! psql "$url" -Atqc 'SELECT 1' >/dev/null 2>&1; then
  hba=/etc/postgresql/$version/main/pg_hba.conf
  if ! $SUDO grep -q '^# netpatrol tests' "$hba"; then
    $SUDO sed -i '1i # netpatrol tests: trust on loopback for the postgres user\nhost all postgres 127.0.0.1/32 trust' "$hba"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  fi
  admin=${url%/*}/postgres
  db=${url##*/}
  db=${db%%\?*}
  for _ in $(seq 1 30); do
    psql "$admin" -Atqc 'SELECT 1' >/dev/null 2>&1 && break
    sleep 1
  done
  if [ "$(psql "$admin" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    psql "$admin" -qc "CREATE DATABASE \"$db\""
  fi
fi
psql "$url" -Atqc 'SELECT 1' >/dev/null
