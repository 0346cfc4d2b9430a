"""The demo suite: run it with `bash scripts/demo.sh`."""
