#!/usr/bin/env bash
# The local test stack: Apache Kafka, redis-server and the schema registry, each on a free
# 127.0.0.1 port, torn down when the wrapped command ends (even on failure or Ctrl-C).
#
#   scripts/stack.sh run -- <command...>   start the stack, export its addresses, run the command
#
# Exports REFLEX_TEST_BOOTSTRAP, REFLEX_TEST_REGISTRY_URL, REFLEX_TEST_REDIS_URL and
# REFLEX_TEST_PYTHON (a Python with confluent-kafka) to the command.
#
# The broker is Apache Kafka (version in ops/kafka/pom.xml), one node in KRaft combined mode, run
# from Maven Central's jars: ops/kafka/pom.xml is resolved once into a cached classpath, the
# same jars format a fresh log directory and serve it with ops/kafka/server.properties (settings
# for fast tests: one replica, no initial rebalance delay, short group sessions for both the
# classic and the KIP-848 consumer protocol). Ready when the broker answers a metadata request.
# Needs java (17+) and mvn.
#
# Choices (environment):
#   REFLEX_TEST_BOOTSTRAP=host:port  use an external cluster instead of starting a broker
#   REFLEX_STACK_HOME=dir            where the Python venv and the broker classpath are cached
#                                    (default ~/.cache/reflex)
#   REFLEX_STACK_KAFKA_HEAP="-Xmx1g" the broker's JVM heap options
#   REFLEX_STACK_REDIS=none          start no Redis (REFLEX_TEST_REDIS_URL stays unset; the main
#                                    job's actor then keeps its state in process)
#   REFLEX_STACK_REDIS_APPENDONLY=yes  Redis with its append-only file on (persistence, as
#                                    production runs it; scripts/faults restarts it)
#
# Also exported, for tools that inject faults (scripts/faults): REFLEX_TEST_STACK_DIR (the
# stack's files), REFLEX_TEST_{BROKER,REDIS,REGISTRY}_PID, each its process-group leader, and
# REFLEX_TEST_BROKER_RUN, a script that starts the broker again on the same log directory.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK_HOME="${REFLEX_STACK_HOME:-$HOME/.cache/reflex}"
VENV="$STACK_HOME/venv"
# Pinned: confluent-kafka 2.16 wants a certifi newer than the package mirror has.
PY_PACKAGES=("confluent-kafka[avro,schemaregistry]==2.13.0")
KAFKA_POM="$ROOT/ops/kafka/pom.xml"

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
  local stamp="$VENV/.reflex-packages" want="${PY_PACKAGES[*]}"
  if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
  log "installing ${want} into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
  echo "$want" > "$stamp"
}

# The broker's classpath, resolved by Maven from ops/kafka/pom.xml once per pom content.
ensure_kafka_classpath() {
  local sum; sum=$(sha256sum "$KAFKA_POM" | cut -c1-16)
  KAFKA_CLASSPATH_FILE="$STACK_HOME/kafka-$sum.classpath"
  [[ -s "$KAFKA_CLASSPATH_FILE" ]] && return
  command -v java >/dev/null && command -v mvn >/dev/null || { log "java and mvn are needed to run Apache Kafka: apt-get install openjdk-17-jdk-headless maven"; exit 2; }
  log "resolving Apache Kafka's jars with Maven ($KAFKA_POM)"
  mkdir -p "$STACK_HOME"
  mvn -q -B -f "$KAFKA_POM" dependency:build-classpath -Dmdep.outputFile="$KAFKA_CLASSPATH_FILE.tmp" >&2
  mv "$KAFKA_CLASSPATH_FILE.tmp" "$KAFKA_CLASSPATH_FILE"
}

# Each service runs in its own process group (setsid), so teardown reaches its children too
# (and a broker restarted by a fault test, whose run script execs java).
PIDS=()
spawn() { # log-name command...
  local log="$WORK/$1.log"; shift
  setsid "$@" > "$log" 2>&1 &
  PIDS+=($!)
  disown "$!"
}
any_alive() {
  local pid
  for pid in "${PIDS[@]}"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done
  return 1
}
cleanup() {
  local code=$? pid
  for pid in "${PIDS[@]}"; do kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true; done
  # Kafka shuts down cleanly within a few seconds; whatever is left after 5 s is killed.
  for _ in $(seq 50); do any_alive || break; sleep 0.1; done
  for pid in "${PIDS[@]}"; do kill -9 -- "-$pid" 2>/dev/null || true; done
  [[ -n "${WORK:-}" && -z "${REFLEX_STACK_KEEP:-}" ]] && rm -rf "$WORK"
  exit "$code"
}

# Ready when the broker itself answers: a metadata request lists broker 1.
broker_answers() {
  "$VENV/bin/python" - "$1" <<'EOF' 2>/dev/null
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0}).list_topics(timeout=2)
sys.exit(0 if md.brokers else 1)
EOF
}

# Certificates and SCRAM credentials for the broker's secured listeners, made fresh per run:
# a CA, the broker's certificate for 127.0.0.1, a client certificate for mutual TLS
# (CN=reflex-router, so principal User:reflex-router), a second CA nobody trusts (for the
# "untrusted certificate" test), and one random password file per SCRAM user.
SCRAM_USERS=(reflex-router reflex-enricher reflex-actor reflex-reprocessor reflex-operator reflex-no-acl)
make_security() {
  local dir="$1"
  mkdir -p "$dir" && chmod 700 "$dir"
  command -v openssl >/dev/null || { log "openssl is needed for the broker's TLS listeners: apt-get install openssl"; return 1; }
  ( cd "$dir"
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    ca() { # name subject
      key "$1.key"
      openssl req -x509 -new -key "$1.key" -days 2 -subj "$2" -out "$1.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    }
    leaf() { # name subject extensions
      key "$1.key"
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
      printf '%s\n' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    ca ca "/CN=reflex test CA"
    ca untrusted-ca "/CN=reflex untrusted CA"
    leaf broker "/CN=localhost" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
    leaf client "/CN=reflex-router" "extendedKeyUsage=clientAuth"
    # Kafka's PEM key store: the private key (PKCS#8) followed by the certificate.
    cat broker.key broker.pem > broker-keystore.pem
    for user in "${SCRAM_USERS[@]}"; do openssl rand -hex 16 > "$user.password"; done
    chmod 600 ./*.key ./*.password broker-keystore.pem )
}

start_broker() {
  if [[ -n "${REFLEX_TEST_BOOTSTRAP:-}" ]]; then log "using external broker $REFLEX_TEST_BOOTSTRAP"; return; fi
  ensure_kafka_classpath
  local port sport mport cport dir="$WORK/kafka" sec="$WORK/security"
  port=$(free_port); sport=$(free_port); mport=$(free_port); cport=$(free_port)
  mkdir -p "$dir/data"
  make_security "$sec"
  { cat "$ROOT/ops/kafka/server.properties"
    echo "controller.quorum.voters=1@127.0.0.1:$cport"
    echo "listeners=PLAINTEXT://127.0.0.1:$port,SASL_SSL://127.0.0.1:$sport,SSL://127.0.0.1:$mport,CONTROLLER://127.0.0.1:$cport"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_SSL://127.0.0.1:$sport,SSL://127.0.0.1:$mport"
    echo "ssl.keystore.location=$sec/broker-keystore.pem"
    echo "ssl.truststore.location=$sec/ca.pem"
    echo "log.dirs=$dir/data"
  } > "$dir/server.properties"
  # One script starts the broker, now and when a fault test restarts it on the same data.
  cat > "$dir/run" <<EOF
#!/usr/bin/env bash
exec java ${REFLEX_STACK_KAFKA_HEAP:--Xmx1g -Xms256m} -cp "\$(cat '$KAFKA_CLASSPATH_FILE')" \\
  -Dlog4j2.configurationFile='$ROOT/ops/kafka/log4j2.yaml' kafka.Kafka '$dir/server.properties'
EOF
  chmod +x "$dir/run"
  local cp user scram=(); cp=$(cat "$KAFKA_CLASSPATH_FILE")
  # SCRAM users are created by Kafka's own storage tool, in the cluster's first metadata.
  for user in "${SCRAM_USERS[@]}"; do
    scram+=(--add-scram "SCRAM-SHA-512=[name=\"$user\",password=\"$(cat "$sec/$user.password")\"]")
  done
  java -cp "$cp" -Dlog4j2.configurationFile="$ROOT/ops/kafka/log4j2.yaml" kafka.tools.StorageTool \
    format -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid)" -c "$dir/server.properties" \
    "${scram[@]}" > "$WORK/kafka-format.log" 2>&1 || { log "formatting Kafka's log directory failed:"; cat "$WORK/kafka-format.log" >&2; return 1; }
  spawn broker "$dir/run"
  export REFLEX_TEST_BROKER_PID="${PIDS[-1]}" REFLEX_TEST_BROKER_RUN="$dir/run"
  local deadline=$((SECONDS + 90))
  until broker_answers "127.0.0.1:$port"; do
    if ! kill -0 "$REFLEX_TEST_BROKER_PID" 2>/dev/null || ((SECONDS > deadline)); then
      log "Apache Kafka did not answer on 127.0.0.1:$port; the end of its log:"; tail -n 40 "$WORK/broker.log" >&2 || true; return 1
    fi
    sleep 0.3
  done
  export REFLEX_TEST_BOOTSTRAP="127.0.0.1:$port"
  export REFLEX_TEST_SASL_BOOTSTRAP="127.0.0.1:$sport" REFLEX_TEST_MTLS_BOOTSTRAP="127.0.0.1:$mport"
  export REFLEX_TEST_SECURITY_DIR="$sec" REFLEX_TEST_KAFKA_CLASSPATH_FILE="$KAFKA_CLASSPATH_FILE"
  log "Apache Kafka on $REFLEX_TEST_BOOTSTRAP (SASL_SSL/SCRAM-SHA-512 on $REFLEX_TEST_SASL_BOOTSTRAP, mutual TLS on $REFLEX_TEST_MTLS_BOOTSTRAP)"
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
  [[ "${1:-}" == run ]] || { sed -n '2,30p' "$0"; exit 2; }
  shift; [[ "${1:-}" == -- ]] && shift
  [[ -n "${REFLEX_TEST_REDIS_URL:-}" || "${REFLEX_STACK_REDIS:-}" == none ]] || command -v redis-server >/dev/null || { log "redis-server not found: apt-get install redis-server"; exit 2; }
  ensure_venv
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
