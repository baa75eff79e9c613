#!/usr/bin/env bash
# The MLflow tracking server of a cluster's head: its backend store in PostgreSQL, its artifacts in the bucket,
# so that `ray down` loses no run. Run by head_start_ray_commands of cluster/gpu.yaml and cluster/gcp-gpu.yaml:
#
#   bash cluster/mlflow-server.sh BACKEND ARTIFACTS [HOST] [PORT]
#
# BACKEND    postgresql://USER:PASSWORD@HOST:5432/DB of a managed database (RDS, Cloud SQL): runs survive the
#            cluster; or `head-local`: a PostgreSQL on this node, data in $MLFLOW_PG_DATA (default ~/mlflow/pgdata;
#            put a persistent volume there if it must outlive `ray down`, see cluster/README.md)
# ARTIFACTS  s3://BUCKET/mlflow, gs://BUCKET/mlflow (or a folder)
# HOST/PORT  where the server listens (default: this node's private address, 5000; never 0.0.0.0)
#
# Idempotent: a server already answering on HOST:PORT is left alone. Logs: ~/mlflow/server.log and, head-local,
# $MLFLOW_PG_DATA/server.log.
set -euo pipefail
backend=${1:?usage: mlflow-server.sh BACKEND ARTIFACTS [HOST] [PORT]}
artifacts=${2:?usage: mlflow-server.sh BACKEND ARTIFACTS [HOST] [PORT]}
host=${3:-$(hostname -I | cut -d' ' -f1)}
port=${4:-5000}
logs=${MLFLOW_LOGS:-$HOME/mlflow}
mkdir -p "$logs"

healthy() {
    python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
        "http://$host:$port/health" >/dev/null 2>&1
}

if healthy; then
    echo "mlflow-server.sh: a tracking server already answers on http://$host:$port"
    exit 0
fi

as_postgres() {  # PostgreSQL refuses to run as root
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "$backend" = head-local ]; then
    data=${MLFLOW_PG_DATA:-$HOME/mlflow/pgdata}
    pg_port=${MLFLOW_PG_PORT:-5432}
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$pg_bin" ]; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
        pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    if [ ! -s "$data/PG_VERSION" ]; then
        mkdir -p "$data"
        [ "$(id -u)" != 0 ] || chown postgres:postgres "$data"
        as_postgres "$pg_bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    if ! "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; then
        as_postgres "$pg_bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
            -o "-c listen_addresses=127.0.0.1 -p $pg_port -c unix_socket_directories=$data" start >/dev/null
    fi
    as_postgres "$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -tc \
        "SELECT 1 FROM pg_database WHERE datname = 'mlflow'" | grep -q 1 ||
        as_postgres "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres mlflow
    backend="postgresql://postgres@127.0.0.1:$pg_port/mlflow"
fi

nohup mlflow server --host "$host" --port "$port" --backend-store-uri "$backend" \
    --artifacts-destination "$artifacts" --serve-artifacts --workers 4 \
    --allowed-hosts "localhost:$port,127.0.0.1:$port,$host:$port" > "$logs/server.log" 2>&1 &
for _ in $(seq 1 180); do
    if healthy; then
        echo "mlflow-server.sh: tracking server on http://$host:$port (backend store on ${backend#*@}, artifacts $artifacts)"
        exit 0
    fi
    sleep 1
done
echo "mlflow-server.sh: the server did not answer within 180 s; see $logs/server.log" >&2
exit 1
