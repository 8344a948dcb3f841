#!/bin/sh
# First-token proxy (no generation) of every config in research/evaluate.py on dev.
cd "$(dirname "$0")/.." && for c in "$@"; do PYTHONPATH=. python research/evaluate.py "$c" dev --no-generate 2>&1 | grep -v Warn | grep -E "harmful \{|harmless \{"; done
