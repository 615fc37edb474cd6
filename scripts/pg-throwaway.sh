#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on 127.0.0.1 and print its SQLAlchemy URL.
#   scripts/pg-throwaway.sh start DIR PORT   -> prints postgresql+asyncpg://... on stdout
#   scripts/pg-throwaway.sh stop DIR
# Installs Debian's postgresql if its binaries are missing and we are root.
set -euo pipefail
cmd=$1 dir=$2
find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}
case "$cmd" in
  start)
    port=${3:-55432}
    if ! bin=$(find_bin); then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "pg-throwaway: installing postgresql with apt-get" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        bin=$(find_bin)
      else
        echo "pg-throwaway: PostgreSQL binaries not found (apt-get install postgresql)" >&2
        exit 1
      fi
    fi
    mkdir -p "$dir"; chmod 755 "$dir"  # the postgres user must reach it
    runas=()
    if [ "$(id -u)" = 0 ]; then
      chown postgres "$dir" 2>/dev/null || { id postgres >/dev/null 2>&1 || useradd -r postgres; chown postgres "$dir"; }
      runas=(runuser -u postgres --)
    fi
    "${runas[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
    "${runas[@]}" "$bin/pg_ctl" -D "$dir/data" -w -l "$dir/log" \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=300" start >/dev/null
    echo "postgresql+asyncpg://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    bin=$(find_bin) || exit 0
    runas=()
    [ "$(id -u)" = 0 ] && runas=(runuser -u postgres --)
    [ -d "$dir/data" ] && "${runas[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
esac
