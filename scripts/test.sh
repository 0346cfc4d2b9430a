#!/usr/bin/env bash
# Set up and run everything CI runs: lint, the test suite, the strict docs build.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if [ -f mkdocs.yml ]; then
  NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$(mktemp -d)" 2>&1 | grep -vE "^INFO" || true
  NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$(mktemp -d)" >/dev/null 2>&1
fi
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
