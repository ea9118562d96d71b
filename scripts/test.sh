#!/usr/bin/env bash
# The project's one test command: installs what the tests need, then runs
# the linters and the whole suite.  Works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# -- PostgreSQL for the sql connector tests (tests/connectors/test_sql_postgres.py
# starts a throwaway cluster from these binaries; skipped when they are missing).
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
fi
# -- end PostgreSQL

# -- Chromium for the player page's browser tests (tests/api/test_player_browser.py
# drives Debian's chromium through Playwright; skipped when it is missing).
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium fonts-liberation >/dev/null
  fi
fi
# -- end Chromium

# -- Deployment tools for tests/packaging (lintian checks the .deb, which is
# built with the system python3's venv and binutils' strip; systemd-analyze
# scores the unit; strace watches the image's command). Each test skips when
# its tool is missing.
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  deploy_pkgs=""
  command -v lintian >/dev/null || deploy_pkgs="$deploy_pkgs lintian"
  command -v strip >/dev/null || deploy_pkgs="$deploy_pkgs binutils"
  command -v systemd-analyze >/dev/null || deploy_pkgs="$deploy_pkgs systemd"
  command -v strace >/dev/null || deploy_pkgs="$deploy_pkgs strace"
  /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || deploy_pkgs="$deploy_pkgs python3-venv"
  if [ -n "$deploy_pkgs" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $deploy_pkgs >/dev/null
  fi
fi
# -- end deployment tools

# -- Fault-suite tools (tests/faults): stress-ng starves the CPUs, strace injects
# kills, I/O delays and event-loop stalls, iproute2 makes the network namespaces
# of a partition, util-linux gives unshare/nsenter/setpriv/prlimit. Each test
# skips with its reason when its tool is missing.
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  fault_pkgs=""
  command -v stress-ng >/dev/null || fault_pkgs="$fault_pkgs stress-ng"
  command -v strace >/dev/null || fault_pkgs="$fault_pkgs strace"
  command -v ip >/dev/null || fault_pkgs="$fault_pkgs iproute2"
  command -v setpriv >/dev/null || fault_pkgs="$fault_pkgs util-linux"
  if [ -n "$fault_pkgs" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $fault_pkgs >/dev/null
  fi
fi
# -- end fault-suite tools

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip >/dev/null
python -m pip install --quiet -e '.[test]'

echo "== ruff"
ruff check .
echo "== mypy (strict on the pure core, checked everywhere)"
mypy agent controlplane
echo "== pytest"
pytest -q -p no:cacheprovider "$@"
