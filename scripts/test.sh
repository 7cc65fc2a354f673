#!/usr/bin/env bash
# The test command: installs what is missing, runs the fast tier, starts the end-to-end processes on free
# 127.0.0.1 ports, runs the end-to-end tier and the template lint, stops everything it started (by PID,
# also on failure or Ctrl-C) and prints a summary. Exits non-zero when any step failed.
#
#   fast tier   `cargo test` (the relay: unit and integration tests, nothing external) and the target
#               functions' unit tests
#   e2e tier    `cargo test --features e2e` for the test files gated on that feature, against:
#     RELAY_TEST_MOTO     http://127.0.0.1:PORT  moto_server (with dummy AWS credentials and region)
#     RELAY_TEST_TANSU    127.0.0.1:PORT         tansu 0.6.0 on SQLite storage
#     RELAY_TEST_LAMBDA   http://127.0.0.1:PORT  `cargo lambda watch` serving functions/ (recording-target,
#                                                partial-target), which write to RELAY_TEST_OUT
#     RELAY_TEST_OUT      directory              where those functions append <function>.jsonl
#     RELAY_TEST_AUTH_*   see scripts/auth-listeners.sh (when present)
#   lint        scripts/lint-template.sh (when present)
#
# Logs of the processes go to a temporary directory, kept (and their tails printed) when something fails.
# RELAY_TEST_KEEP=1 keeps it on success too.
#
#   scripts/test.sh                       everything (the README's test command; .ci/run)
#   scripts/test.sh e2e [FILTER] [-- ARGS]  only the e2e tier, FILTER and ARGS passed to `cargo test`
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo_root"

export PATH="$relay_venv/bin:${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export RELAY_VENV=$relay_venv
work=$(mktemp -d -t relay-test.XXXXXX)
auth_started=false

step_names=()
step_results=()
step_seconds=()
failed=false

# record NAME RESULT SECONDS
record() {
  step_names+=("$1")
  step_results+=("$2")
  step_seconds+=("$3")
  [[ $2 == FAILED ]] && failed=true
  return 0
}

# Job control: every background job leads its own process group, so a step and whatever it started (a
# test binary, the relay it runs, a cargo lambda watch) are stopped together, and signals reach the
# EXIT trap at once instead of after the step.
set -m
step_pid=""

# conclude NAME STARTED STATUS: records and reports how a step ended; returns STATUS.
conclude() {
  local name=$1 took=$((SECONDS - $2)) status=$3
  if ((status == 0)); then
    record "$name" ok "$took"
    say "== $name: ok in ${took}s"
  else
    record "$name" FAILED "$took"
    say "== $name: FAILED after ${took}s"
  fi
  return "$status"
}

# step NAME CMD...: runs CMD as a background job (its own process group) and waits for it.
step() {
  local name=$1 started=$SECONDS status=0
  shift
  say "== $name: $*"
  "$@" &
  step_pid=$!
  wait "$step_pid" || status=$?
  step_pid=""
  conclude "$name" "$started" "$status"
}

# step_here NAME CMD...: like step, but in this shell, for steps that export variables or start processes.
step_here() {
  local name=$1 started=$SECONDS status=0
  shift
  say "== $name: $*"
  "$@" || status=$?
  conclude "$name" "$started" "$status"
}

summary() {
  local i
  echo >&2
  say "summary (${SECONDS}s in all):"
  for i in "${!step_names[@]}"; do
    printf '  %-8s %5ss  %s\n' "${step_results[$i]}" "${step_seconds[$i]}" "${step_names[$i]}" >&2
  done
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n $step_pid ]]; then
    stop_group "the running step" "$step_pid"
    step_pid=""
  fi
  if [[ $status -ne 0 || $failed == true ]]; then
    show_process_logs
  fi
  if [[ $auth_started == true ]]; then
    scripts/auth-listeners.sh stop >/dev/null 2>&1 || say "auth listeners did not stop cleanly"
  fi
  stop_processes
  summary
  if [[ $status -ne 0 || $failed == true ]]; then
    say "FAILED; process logs kept in $work"
    [[ $status -ne 0 ]] || status=1
  elif [[ ${RELAY_TEST_KEEP:-} == 1 ]]; then
    say "passed; process logs kept in $work"
  else
    rm -rf "$work"
    say "passed"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

# --- processes -------------------------------------------------------------------------------------------

start_moto() {
  local port
  port=$(free_port) || return 1
  start_process moto_server "$work/moto.log" "$work" moto_server -H 127.0.0.1 -p "$port"
  wait_port "$port" 30 || { say "moto_server does not listen on 127.0.0.1:$port after 30s"; return 1; }
  export RELAY_TEST_MOTO=http://127.0.0.1:$port
}

start_tansu() {
  local port
  port=$(free_port) || return 1
  mkdir -p "$work/tansu"
  # SQLite storage only: the memory engine reports wrong watermarks and skips records. tansu resolves
  # sqlite://NAME against its working directory, hence the relative name.
  start_process tansu "$work/tansu.log" "$work/tansu" tansu broker \
    --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "sqlite://tansu.db"
  wait_port "$port" 30 || { say "tansu does not listen on 127.0.0.1:$port after 30s"; return 1; }
  alive tansu || { say "tansu exited"; return 1; }
  export RELAY_TEST_TANSU=127.0.0.1:$port
}

# invoke_until_ok URL PAYLOAD EXPECTED SECONDS: POST until the reply is EXPECTED (the first invoke of a
# function under cargo lambda watch starts it with `cargo run`).
invoke_until_ok() {
  local url=$1 payload=$2 expected=$3 deadline=$((SECONDS + $4)) reply
  while ((SECONDS < deadline)); do
    reply=$(curl -s -m $((deadline - SECONDS + 1)) -X POST --data "$payload" "$url" 2>/dev/null) || reply=""
    [[ $reply == "$expected" ]] && return 0
    sleep 0.5
  done
  say "$url answered '$reply', expected '$expected'"
  return 1
}

start_target_functions() {
  local port function
  port=$(free_port) || return 1
  mkdir -p "$work/out"
  export RELAY_TEST_OUT=$work/out
  # Its own package directory: watch runs `cargo run --bin NAME` against the manifest in its working
  # directory, and the workspace root's default member is the relay, not these functions.
  # Several instances per function, because the relay invokes different partitions concurrently.
  start_process target-functions "$work/target-functions.log" "$repo_root/functions" \
    cargo lambda watch -A 127.0.0.1 -P "$port" --ignore-changes --concurrency 8
  wait_port "$port" 60 || { say "cargo lambda watch does not listen on 127.0.0.1:$port after 60s"; return 1; }
  export RELAY_TEST_LAMBDA=http://127.0.0.1:$port
  for function in recording-target partial-target; do
    invoke_until_ok "$RELAY_TEST_LAMBDA/2015-03-31/functions/$function/invocations" \
      '{"eventSource":"SelfManagedKafka","records":{}}' '{"batchItemFailures":[]}' 300 || return 1
  done
}

start_auth_listeners() {
  local env_file
  export RELAY_TEST_AUTH_DIR=$work/auth
  auth_started=true
  env_file=$(scripts/auth-listeners.sh start 2>"$work/auth-listeners.log") || {
    log_tail "$work/auth-listeners.log"
    return 1
  }
  # shellcheck disable=SC1090
  source "$env_file"
}

start_everything() {
  start_moto && start_tansu && start_target_functions || return 1
  if [[ -x scripts/auth-listeners.sh ]]; then
    start_auth_listeners || return 1
  fi
}

# --- steps -----------------------------------------------------------------------------------------------

fast_tier() {
  cargo test && cargo test --manifest-path functions/Cargo.toml
}

# The test files gated on the e2e feature; the fast tier already ran everything else.
e2e_tests=()
for file in tests/*.rs; do
  [[ -e $file ]] || continue
  grep -q '^#!\[cfg(feature = "e2e")\]' "$file" && e2e_tests+=(--test "$(basename "$file" .rs)")
done

build_e2e() {
  # Built before the processes start, so nothing compiles under a running test: the watched functions
  # and the relay (which tests serve with their own `cargo lambda watch`) start from these artifacts.
  cargo build --manifest-path functions/Cargo.toml --bins &&
    cargo build --bin kafka-lambda-relay &&
    cargo test --features e2e "${e2e_tests[@]}" --no-run
}

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_SESSION_TOKEN

only_e2e=false
e2e_args=()
if [[ ${1:-} == e2e ]]; then
  only_e2e=true
  e2e_args=("${@:2}")
elif (($# > 0)); then
  die "usage: $0 [e2e [FILTER] [-- ARGS]]"
fi

step "setup" bash scripts/setup.sh || exit 1
if [[ $only_e2e == false ]]; then
  step "fast tier" fast_tier || true
fi
if ((${#e2e_tests[@]} == 0)); then
  say "no test file starts with #![cfg(feature = \"e2e\")]: no e2e tier"
elif step "build e2e tier" build_e2e && step_here "start processes" start_everything; then
  step "e2e tier" cargo test --features e2e "${e2e_tests[@]}" "${e2e_args[@]}" || true
else
  record "e2e tier" skipped 0
fi
if [[ $only_e2e == false && -x scripts/lint-template.sh ]]; then
  step "lint template" scripts/lint-template.sh || true
fi
# The Lambda build (what `sam build` runs) cross-compiles OpenSSL, librdkafka and curl in release mode:
# about 15 minutes cold on 2 cores, which would push CI past its budget, so it is opt-in.
lambda_build() {
  cargo lambda build --release --bin kafka-lambda-relay &&
    test -x "${CARGO_TARGET_DIR:-target}/lambda/kafka-lambda-relay/bootstrap"
}
if [[ $only_e2e == false && ${RELAY_TEST_LAMBDA_BUILD:-0} == 1 ]]; then
  step "lambda build" lambda_build || true
fi
