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
