#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the tests that need one, and export
# KDLAB_TEST_POSTGRES_URL. Source it: `source scripts/postgres.sh`; the server stops when
# that shell exits, and sourcing it again in the same shell keeps the one running.
# Installs Debian's postgresql package when no server binaries are present (needs root
# and apt). With KDLAB_PG_OPTIONAL=1 (scripts/test.sh) a PostgreSQL that cannot be had is
# a note, and the tests that need it skip; otherwise (CI) it is an error.
set -euo pipefail
if [ -n "${KDLAB_PG_DATA:-}" ] && [ -f "$KDLAB_PG_DATA/postmaster.pid" ]; then
    echo "PostgreSQL for tests already at $KDLAB_TEST_POSTGRES_URL (data in $KDLAB_PG_DATA)"
    return 0 2>/dev/null || exit 0
fi
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } 2>/dev/null; then
        if [ -n "${KDLAB_PG_OPTIONAL:-}" ]; then
            echo "PostgreSQL is not installed and cannot be installed here: its tests skip" >&2
            return 0 2>/dev/null || exit 0
        fi
        echo "postgres.sh: PostgreSQL is not installed and apt-get could not install it" >&2
        return 1 2>/dev/null || exit 1
    fi
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
# cd /: initdb resolves its own path from the working directory, which postgres may not read
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "cd / && $*"; else sh -c "$*"; fi; }
export KDLAB_PG_DATA=$(mktemp -d /tmp/kdlab-pg.XXXXXX)
# the server and its files go when the shell that sourced this script exits
trap "as_pg '$bindir/pg_ctl -D $KDLAB_PG_DATA -m fast stop' >/dev/null 2>&1 || true; rm -rf '$KDLAB_PG_DATA' || true" EXIT
chown postgres "$KDLAB_PG_DATA" 2>/dev/null || true
port=${KDLAB_PG_PORT:-55432}
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do  # taken (another server?)
    port=$((port + 1))
done
as_pg "$bindir/initdb -D $KDLAB_PG_DATA -A trust -U kdlab >/dev/null"
# Members of the role kdlab_password_users (made by the tests that need one) log in with a
# password the server checks; every other role keeps trust, KDLAB_TEST_POSTGRES_URL's too.
hba="$KDLAB_PG_DATA/pg_hba.conf"
as_pg "printf 'host all +kdlab_password_users 127.0.0.1/32 scram-sha-256\n' | cat - $hba > $hba.new && mv $hba.new $hba"
as_pg "$bindir/pg_ctl -D $KDLAB_PG_DATA -o '-k $KDLAB_PG_DATA -h 127.0.0.1 -p $port' -l $KDLAB_PG_DATA/log -w start >/dev/null"
as_pg "$bindir/createdb -h 127.0.0.1 -p $port -U kdlab kdlab"
export KDLAB_TEST_POSTGRES_URL="postgresql+psycopg://kdlab@127.0.0.1:$port/kdlab"
echo "PostgreSQL for tests at $KDLAB_TEST_POSTGRES_URL (data in $KDLAB_PG_DATA)"
