#!/usr/bin/env bash
# The project's one test command: installs what the tests need, then runs
# the linters and the whole suite.  Works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

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
