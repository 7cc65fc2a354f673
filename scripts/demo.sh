#!/usr/bin/env bash
# The README's first command: the relay end to end on embedded defaults. Installs the Debian packages the
# build needs when they are missing (as root or with passwordless sudo), builds the relay, and runs
# `kafka-lambda-relay demo`: an in-process Kafka cluster, a sample target function behind a local Lambda
# Invoke API on 127.0.0.1, and the relay between them. Progress on stderr, the run report on stdout.
# Extra arguments go to `demo` (e.g. --records 20000 --partitions 32).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'demo.sh: %s\n' "$*" >&2; }

command -v cargo >/dev/null || { say "cargo not found: install the Rust toolchain (https://rustup.rs) first"; exit 1; }

missing=()
for package in build-essential pkg-config libssl-dev zlib1g-dev; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]} > 0)); then
  say "installing Debian packages the build needs: ${missing[*]}"
  as_root=()
  [[ $(id -u) -eq 0 ]] || as_root=(sudo -n)
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

say "building the relay (the first build takes several minutes)"
cargo build --quiet --bin kafka-lambda-relay
exec cargo run --quiet --bin kafka-lambda-relay -- demo "$@"
