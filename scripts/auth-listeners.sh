#!/usr/bin/env bash
# Real TLS/SASL/mTLS Kafka listeners for the auth end-to-end tests (tests/auth_listeners.rs).
#
#   scripts/auth-listeners.sh start   # idempotent: no-op while all run, else (re)starts all; prints the env file
#   scripts/auth-listeners.sh stop    # stops every process it started, by PID
#   scripts/auth-listeners.sh env     # prints the path of the env file to `source`
#
# State lives in $RELAY_TEST_AUTH_DIR (default: <repo>/.work/auth). `start` writes $RELAY_TEST_AUTH_DIR/env,
# which exports:
#   RELAY_TEST_AUTH_DIR             the directory with the test PKI (ca.pem, client-chain.pem, client-key*.pem)
#   RELAY_TEST_SCRAM_TLS            127.0.0.1:PORT  TLS (server cert for 127.0.0.1) -> tansu with --authentication
#   RELAY_TEST_TLS_BADHOST          127.0.0.1:PORT  TLS with a CA-signed cert naming another host -> same tansu
#   RELAY_TEST_MTLS                 127.0.0.1:PORT  TLS requiring a client cert signed by the CA -> tansu, no SASL
#   RELAY_TEST_SCRAM_USER           user known to the SASL tansu with SCRAM-SHA-256 and SCRAM-SHA-512
#   RELAY_TEST_SCRAM_PASSWORD       its password
#   RELAY_TEST_CLIENT_KEY_PASSWORD  password of client-key-pbes2.pem, client-key-pbes1.pem, client-key-des.pem
#
# Layout: tansu 0.6.0 does not serve TLS itself, so stunnel4 terminates TLS in front of plaintext tansu
# listeners. A broker advertises one address, so the SASL tansu advertises the good TLS port; the wrong-host
# front-end shares it because its clients fail at the TLS handshake with the bootstrap server, before they
# ever use the advertised address. The mTLS front-end has its own tansu (own SQLite file) advertising it.
# Users are created with the SASL tansu started without --authentication on the same SQLite file; it is then
# restarted with --authentication (tansu keeps SCRAM credentials in its storage). Everything is new on each
# start (PKI, passwords, SQLite files); start takes about 2 s. Needs tansu 0.6.0, stunnel4, openssl, python3.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${RELAY_TEST_AUTH_DIR:-$root/.work/auth}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
env_file=$dir/env

log() { printf 'auth-listeners: %s\n' "$*" >&2; }

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# free_ports N: N distinct ports the kernel just handed out on 127.0.0.1 (bound together, then released).
free_ports() {
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# wait_port PORT [SECONDS]: until something accepts connections on 127.0.0.1:PORT.
wait_port() {
  local deadline=$((SECONDS + ${2:-15}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    ((SECONDS < deadline)) || { log "nothing listens on 127.0.0.1:$1 after ${2:-15}s"; return 1; }
    sleep 0.05
  done
}

# stop_pid FILE: terminate the process whose PID is in FILE and wait for it to exit.
stop_pid() {
  local file=$1 pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# start_tansu NAME PORT ADVERTISED_PORT DB [--authentication]; DB is a file name inside $dir.
start_tansu() {
  local name=$1 port=$2 advertised=$3 db=$4
  shift 4
  # tansu resolves sqlite://NAME against its working directory (an absolute path gets the directory
  # prepended as well), so it runs inside $dir with a relative name.
  (cd "$dir" && exec nohup tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$advertised" \
    --storage-engine "sqlite://$db" "$@" >>"$dir/tansu-$name.log" 2>&1) &
  echo $! >"$dir/tansu-$name.pid"
  wait_port "$port"
}

stop() {
  stop_pid "$dir/tansu-sasl.pid"
  stop_pid "$dir/tansu-mtls.pid"
  stop_pid "$dir/stunnel.pid"
  rm -f "$env_file"
}

start() {
  if [[ -f $env_file ]] && alive "$dir/tansu-sasl.pid" && alive "$dir/tansu-mtls.pid" && alive "$dir/stunnel.pid"; then
    log "already running"
    echo "$env_file"
    return 0
  fi
  stop
  trap 'log "start failed; stopping what was started"; stop' ERR
  command -v tansu >/dev/null || { log "tansu is not installed (cargo install tansu --version 0.6.0 --locked --features dynostore,libsql)"; exit 1; }
  command -v stunnel4 >/dev/null || { log "stunnel4 is not installed (apt-get install stunnel4)"; exit 1; }

  rm -f "$dir"/*.db "$dir"/*.db-* "$dir"/*.log
  local user=relay password key_password
  password=$(openssl rand -hex 16)
  key_password=$(openssl rand -hex 16)
  # The PKI is only needed by stunnel: generate it while the brokers start.
  CLIENT_KEY_PASSWORD=$key_password "$root/scripts/auth/gen-certs.sh" "$dir" &
  local pki=$!

  local sasl_port mtls_port scram_tls badhost_tls mtls_tls
  read -r sasl_port mtls_port scram_tls badhost_tls mtls_tls < <(free_ports 5)

  # Users first, without --authentication, on the SQLite file the authenticated broker will use.
  start_tansu sasl "$sasl_port" "$scram_tls" sasl.db
  for mechanism in scram256 scram512; do
    tansu user create --broker "tcp://127.0.0.1:$sasl_port" --mechanism "$mechanism" "$user" "$password" \
      >>"$dir/tansu-user.log" 2>&1
  done
  stop_pid "$dir/tansu-sasl.pid"
  start_tansu sasl "$sasl_port" "$scram_tls" sasl.db --authentication
  start_tansu mtls "$mtls_port" "$mtls_tls" mtls.db

  cat >"$dir/stunnel.conf" <<EOF
pid = $dir/stunnel.pid
output = $dir/stunnel.log
foreground = no
debug = notice

[scram]
accept = 127.0.0.1:$scram_tls
connect = 127.0.0.1:$sasl_port
cert = $dir/server.pem
key = $dir/server.key

[badhost]
accept = 127.0.0.1:$badhost_tls
connect = 127.0.0.1:$sasl_port
cert = $dir/badhost.pem
key = $dir/badhost.key

[mtls]
accept = 127.0.0.1:$mtls_tls
connect = 127.0.0.1:$mtls_port
cert = $dir/server.pem
key = $dir/server.key
CAfile = $dir/ca.pem
verifyChain = yes
requireCert = yes
EOF
  wait "$pki"
  stunnel4 "$dir/stunnel.conf"
  wait_port "$scram_tls"

  cat >"$env_file" <<EOF
export RELAY_TEST_AUTH_DIR=$dir
export RELAY_TEST_SCRAM_TLS=127.0.0.1:$scram_tls
export RELAY_TEST_TLS_BADHOST=127.0.0.1:$badhost_tls
export RELAY_TEST_MTLS=127.0.0.1:$mtls_tls
export RELAY_TEST_SCRAM_USER=$user
export RELAY_TEST_SCRAM_PASSWORD=$password
export RELAY_TEST_CLIENT_KEY_PASSWORD=$key_password
EOF
  trap - ERR
  log "started; source $env_file"
  echo "$env_file"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  env) echo "$env_file" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
