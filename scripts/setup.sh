#!/usr/bin/env bash
# Installs what the build and the tests need and is missing; safe to run again (does nothing then).
#
#   Debian packages   C toolchain, pkg-config, OpenSSL and zlib headers (rdkafka builds librdkafka with
#                     ./configure and make), openssl and stunnel4 (TLS test listeners), curl, python3-venv
#   .venv             cargo-lambda, moto[server], cfn-lint, aws-sam-cli, aws-msk-iam-sasl-signer-python (the
#                     MSK IAM token golden reference) at pinned versions
#                     (RELAY_VENV overrides the location)
#   tansu 0.6.0       the Kafka-protocol broker of the end-to-end tier, via cargo install (about 16 minutes
#                     on 2 cores, so only when missing or another version)
#
# Needs the Rust toolchain; runs as root or with passwordless sudo for apt-get.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

python_pins=("cargo-lambda==1.9.2" "moto[server]==5.2.5" "cfn-lint==1.58.0" "aws-sam-cli==1.170.0"
  "aws-msk-iam-sasl-signer-python==1.0.2")
# Schema registry tests: real producers' framing (Confluent serializers; AWS's Glue serializer).
python_pins+=("confluent-kafka[avro,json,protobuf,schemaregistry]==2.16.1" "aws-glue-schema-registry==1.1.3")
tansu_version=0.6.0
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
export PATH="$cargo_bin:$PATH"

command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (https://rustup.rs) first"

install_debian_packages() {
  local wanted=(build-essential pkg-config libssl-dev zlib1g-dev cmake openssl stunnel4 curl ca-certificates)
  # Only when python3 cannot make a virtualenv: a python3 from pyenv or similar is left alone.
  if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    wanted+=(python3 python3-venv)
  fi
  local missing=() package
  for package in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if ((${#missing[@]} == 0)); then
    say "debian packages: all present"
    return
  fi
  say "debian packages: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The pins as `pip freeze` prints them (extras dropped).
frozen_pins() {
  printf '%s\n' "${python_pins[@]}" | sed 's/\[[^]]*\]//'
}

install_python_tools() {
  if [[ -x $relay_venv/bin/python ]]; then
    local frozen
    frozen=$("$relay_venv/bin/python" -m pip freeze 2>/dev/null || true)
    if ! frozen_pins | grep -vxF -f <(printf '%s\n' "$frozen") | grep -q .; then
      say "python tools: $(frozen_pins | tr '\n' ' ')present in $relay_venv"
      return
    fi
  else
    say "python tools: creating $relay_venv"
    python3 -m venv "$relay_venv"
  fi
  say "python tools: installing ${python_pins[*]} into $relay_venv"
  "$relay_venv/bin/python" -m pip install --quiet --disable-pip-version-check "${python_pins[@]}"
}

install_tansu() {
  if command -v tansu >/dev/null && [[ $(tansu --version 2>/dev/null) == "tansu $tansu_version" ]]; then
    say "tansu: $tansu_version present at $(command -v tansu)"
    return
  fi
  local log
  log=$(mktemp -t tansu-install.XXXXXX.log)
  say "tansu: installing $tansu_version with cargo install (about 16 minutes on 2 cores; log in $log)"
  cargo install tansu --version "$tansu_version" --locked --features dynostore,libsql >"$log" 2>&1 &
  local pid=$! started=$SECONDS
  # A line a minute, so CI does not take the long compile for a hang.
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    if (((SECONDS - started) % 60 < 5 && SECONDS - started >= 60)); then
      say "tansu: still compiling ($(((SECONDS - started) / 60)) min)"
    fi
  done
  if ! wait "$pid"; then
    log_tail "$log"
    die "cargo install tansu $tansu_version failed (log: $log)"
  fi
  [[ $(tansu --version 2>/dev/null) == "tansu $tansu_version" ]] ||
    die "tansu $tansu_version installed but '$(command -v tansu || echo tansu)' is not it: is $cargo_bin first on PATH?"
  say "tansu: installed in $(((SECONDS - started) / 60)) min"
  rm -f "$log"
}

install_debian_packages
install_python_tools
install_tansu
say "done in ${SECONDS}s"
