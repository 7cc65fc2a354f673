# shellcheck shell=bash
# Shared shell helpers for scripts/*.sh. Source it; it defines functions and a few variables only.
#
#   repo_root            absolute path of the repository
#   relay_venv           the project virtualenv (RELAY_VENV, default <repo>/.venv)
#   say MSG / die MSG    one-line progress message / message and exit 1 (both on stderr, prefixed)
#   as_root CMD...       run CMD as root (directly, or through sudo when available)
#   free_port            a port the kernel just handed out on 127.0.0.1
#   wait_port PORT SECS  until something accepts TCP connections on 127.0.0.1:PORT
#   start_process NAME LOG DIR CMD...   start CMD in DIR in the background, remember its PID
#   stop_group NAME PID  stop PID's process group: TERM, a grace period, then KILL
#   stop_processes       stop every process start_process started, newest first
#   log_tail FILE [N]    the last N lines of FILE, indented, for failure messages

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
relay_venv=${RELAY_VENV:-$repo_root/.venv}
script_name=$(basename "$0" .sh)

say() { printf '%s: %s\n' "$script_name" "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo -n "$@" || die "'sudo -n $*' failed: run this script as root or allow passwordless sudo"
  else
    die "need root for '$*' and sudo is not installed"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_port() {
  local port=$1 deadline=$((SECONDS + $2))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

log_tail() {
  local file=$1 lines=${2:-40}
  if [[ -s $file ]]; then
    echo "----- last $lines lines of $file -----" >&2
    tail -n "$lines" "$file" | sed 's/^/    /' >&2
  else
    echo "----- $file is empty -----" >&2
  fi
}

# Parallel arrays: what start_process started. Processes are stopped by these PIDs only.
started_names=()
started_pids=()
started_logs=()

start_process() {
  local name=$1 log=$2 dir=$3
  shift 3
  # With job control on (test.sh sets -m) it gets its own process group, stopped as a whole.
  (cd "$dir" && exec "$@") >"$log" 2>&1 </dev/null &
  started_names+=("$name")
  started_pids+=("$!")
  started_logs+=("$log")
}

# pid_of NAME: the PID start_process recorded for NAME.
pid_of() {
  local i
  for i in "${!started_names[@]}"; do
    [[ ${started_names[$i]} == "$1" ]] && { echo "${started_pids[$i]}"; return 0; }
  done
  return 1
}

# alive NAME: the process start_process started as NAME is still running.
alive() {
  local pid
  pid=$(pid_of "$1") && kill -0 "$pid" 2>/dev/null
}

# stop_group NAME PID: TERM to the process group led by PID (or to PID alone when it leads none), 10 s
# to exit, then KILL. TERM first: cargo lambda watch stops its function instances on TERM, not on KILL.
stop_group() {
  local name=$1 pid=$2 target=$2
  kill -0 "$pid" 2>/dev/null || return 0
  [[ $(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') == "$pid" ]] && target=-$pid
  kill -TERM -- "$target" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name (pid $pid) ignored TERM for 10 s; killing it"
    kill -KILL -- "$target" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

stop_processes() {
  local i
  for ((i = ${#started_pids[@]} - 1; i >= 0; i--)); do
    stop_group "${started_names[$i]}" "${started_pids[$i]}"
  done
  started_names=()
  started_pids=()
  started_logs=()
}

# show_process_logs: the tail of every started process's log.
show_process_logs() {
  local i
  for i in "${!started_names[@]}"; do
    say "log of ${started_names[$i]}:"
    log_tail "${started_logs[$i]}"
  done
}
