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

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip >/dev/null
python -m pip install --quiet -e '.[test]'

echo "== ruff"
ruff check .
echo "== mypy (strict on the pure core)"
mypy agent/flow agent/protocol
echo "== pytest"
pytest -q -p no:cacheprovider "$@"
