#!/usr/bin/env bash
# Set up and run everything CI runs: lint, the test suite, the strict docs build.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if [ -f mkdocs.yml ]; then
  .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
fi
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
