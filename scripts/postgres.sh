#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the tests that need one, and export
# KDLAB_TEST_POSTGRES_URL. Source it: `source scripts/postgres.sh`; the server stops when
# that shell exits. Installs Debian's postgresql package when no server binaries are
# present (needs root and apt).
set -euo pipefail
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
pgdata=$(mktemp -d /tmp/kdlab-pg.XXXXXX)
port=${KDLAB_PG_PORT:-55432}
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do  # taken (an earlier server?)
    port=$((port + 1))
done
chown postgres "$pgdata" 2>/dev/null || true
# cd /: initdb resolves its own path from the working directory, which postgres may not read
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "cd / && $*"; else sh -c "$*"; fi; }
as_pg "$bindir/initdb -D $pgdata -A trust -U kdlab >/dev/null"
as_pg "$bindir/pg_ctl -D $pgdata -o '-k $pgdata -h 127.0.0.1 -p $port' -l $pgdata/log -w start >/dev/null"
as_pg "$bindir/createdb -h 127.0.0.1 -p $port -U kdlab kdlab"
# the server goes when the shell that sourced this script exits
trap "as_pg '$bindir/pg_ctl -D $pgdata -m fast stop' >/dev/null 2>&1 || true; rm -rf '$pgdata' || true" EXIT
export KDLAB_TEST_POSTGRES_URL="postgresql+psycopg://kdlab@127.0.0.1:$port/kdlab"
echo "PostgreSQL for tests at $KDLAB_TEST_POSTGRES_URL (data in $pgdata)"
