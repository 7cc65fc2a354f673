#!/usr/bin/env bash
# Lints template.yaml offline with cfn-lint and `sam validate --lint`; exits non-zero on any error,
# warning or informational finding.
#
# The tools come from the project virtualenv (.venv at the repository root, or RELAY_VENV), which this
# script creates with pinned versions only when a tool is missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RELAY_VENV:-$root/.venv}"
cfn_lint_version="1.58.0"
sam_version="1.170.0"

if [[ ! -x "$venv/bin/cfn-lint" || ! -x "$venv/bin/sam" ]]; then
    echo "lint-template: installing cfn-lint $cfn_lint_version and aws-sam-cli $sam_version into $venv" >&2
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "cfn-lint==$cfn_lint_version" "aws-sam-cli==$sam_version"
fi

cd "$root"
# sam needs a region even offline; dummy credentials keep it from looking for real ones. Telemetry off:
# no network beyond package registries.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_EC2_METADATA_DISABLED=true
export SAM_CLI_TELEMETRY=0

status=0

# cfn-lint's exit code is a bit mask (2 error, 4 warning, 8 informational); any finding fails.
if ! findings="$("$venv/bin/cfn-lint" --non-zero-exit-code informational -- template.yaml 2>&1)" || [[ -n "$findings" ]]; then
    echo "lint-template: cfn-lint found problems:" >&2
    echo "$findings" >&2
    status=1
else
    echo "lint-template: cfn-lint: clean"
fi

if ! output="$("$venv/bin/sam" validate --lint --template-file template.yaml 2>&1)"; then
    echo "lint-template: sam validate --lint failed:" >&2
    echo "$output" >&2
    status=1
elif grep -qiE "warn|error" <<<"$output"; then
    echo "lint-template: sam validate --lint reported:" >&2
    echo "$output" >&2
    status=1
else
    echo "lint-template: sam validate --lint: clean"
fi

exit "$status"
