#!/usr/bin/env bash
# Entrypoint of the pgdrill/postgres:15-* image (built by ci/images/build from
# Debian's postgresql-15). It follows the interface of the official `postgres`
# Docker image, so the harness drives `postgres:16` and this image alike:
#
#   PGDATA                     data directory (default /var/lib/postgresql/data)
#   POSTGRES_PASSWORD          superuser password (or POSTGRES_PASSWORD_FILE)
#   POSTGRES_USER              superuser name given to initdb (default postgres)
#   POSTGRES_HOST_AUTH_METHOD  method of the `host all all all` line appended to
#                              pg_hba.conf: default scram-sha-256 when a password
#                              is set, else trust (the official image refuses to
#                              start without either; this one uses trust)
#   POSTGRES_INITDB_ARGS       extra initdb arguments, e.g. --wal-segsize=64
#   POSTGRES_INITDB_WALDIR     passed to initdb as --waldir
#   POSTGRES_INITDB_START_SEGMENT  (pgdrill's, not the official image's) the
#                              WAL segment the new cluster writes first,
#                              `pg_resetwal -l` after initdb, e.g.
#                              0000000100000000000000FE to cross the 4 GiB
#                              boundary; the harness checks it took effect
#
# `docker run IMAGE` or `docker run IMAGE postgres -c k=v` (or just `-c k=v`):
# as root, create PGDATA, give it to the postgres user (mode 0700) and re-run
# this script as postgres; then run initdb unless PGDATA already holds a
# cluster (PG_VERSION present, e.g. put there by a restore: started as is),
# and exec postgres as PID 1 (the image's STOPSIGNAL is SIGINT: fast shutdown).
# Any other command (`docker run IMAGE pgdrill --version`, `psql ...`) is
# exec'd unchanged.
#
# Not supported (unlike the official image): POSTGRES_DB other than postgres,
# /docker-entrypoint-initdb.d scripts, arbitrary --user ids without a passwd
# entry. initdb runs once, without a temporary server, so "database system is
# ready to accept connections" is logged once, by the real server.
set -Eeuo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

# POSTGRES_PASSWORD_FILE → POSTGRES_PASSWORD, as in the official image.
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    echo "docker-entrypoint.sh: both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set" >&2
    exit 1
  fi
  # Read once (as root when started so): the re-run as postgres inherits it.
  export POSTGRES_PASSWORD
  POSTGRES_PASSWORD=$(<"$POSTGRES_PASSWORD_FILE")
  unset POSTGRES_PASSWORD_FILE
fi

if [ "$#" -eq 0 ]; then
  set -- postgres
elif [ "${1:0:1}" = - ]; then
  set -- postgres "$@"
fi

# `postgres --version`, `--help`, `-C guc` ... print and exit: no set-up
# (as the official image's _pg_want_help).
wants_info() {
  local arg
  for arg; do
    case $arg in
      -'?' | --help | --describe-config | -V | --version | -C | -C*) return 0 ;;
    esac
  done
  return 1
}

if [ "$1" != postgres ] || wants_info "$@"; then
  exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  chmod 2775 /var/run/postgresql
  # Only what is not the postgres user's yet: cheap on a large restored PGDATA.
  find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
  if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
    mkdir -p "$POSTGRES_INITDB_WALDIR"
    find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 0700 "$POSTGRES_INITDB_WALDIR"
  fi
  export HOME=/var/lib/postgresql
  exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_USER:=postgres}"
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    : "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
  else
    : "${POSTGRES_HOST_AUTH_METHOD:=trust}"
  fi
  args=(--username="$POSTGRES_USER")
  if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
    args+=(--waldir="$POSTGRES_INITDB_WALDIR")
  fi
  echo "docker-entrypoint.sh: initdb in $PGDATA (host auth: $POSTGRES_HOST_AUTH_METHOD)" >&2
  # POSTGRES_INITDB_ARGS is shell words (quotes allowed), as in the official image.
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    eval 'initdb "${args[@]}" --pwfile=<(printf "%s\n" "$POSTGRES_PASSWORD") '"${POSTGRES_INITDB_ARGS:-}"
  else
    eval 'initdb "${args[@]}" '"${POSTGRES_INITDB_ARGS:-}"
  fi
  if [ -n "${POSTGRES_INITDB_START_SEGMENT:-}" ]; then
    pg_resetwal -l "$POSTGRES_INITDB_START_SEGMENT" "$PGDATA" >&2
  fi
  printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
  echo "docker-entrypoint.sh: initdb done; starting postgres" >&2
else
  echo "docker-entrypoint.sh: $PGDATA holds a cluster (PG_VERSION $(<"$PGDATA/PG_VERSION")); starting it without initdb" >&2
fi

exec "$@"
