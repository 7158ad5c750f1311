#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then
# run the whole suite.  Extra arguments go to pytest, for example
#   bash scripts/test.sh -m "not slow"    to skip the slow fault tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# System programs the tests pipe through flowctl.
missing=()
for program in jq; do
    command -v "$program" >/dev/null 2>&1 || missing+=("$program")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "missing programs: ${missing[*]}; install them with apt-get" >&2
        exit 1
    fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
exec .venv/bin/python -m pytest "$@"
