#!/usr/bin/env bash
# Set up and run the demo suite: gradient checks that pass, checks that fail on purpose
# (marked xfail), and the "gradient checks" tier table at the end.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
exec .venv/bin/python -m pytest examples/ -p no:cacheprovider -rxX --gradcheck-report=blocks "$@"
