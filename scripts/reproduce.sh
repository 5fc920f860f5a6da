#!/usr/bin/env bash
# The main job: set up (idempotent), then run the sentiment study on the bundled offline model.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "reproduce: setting up .venv (skipped when already up to date)" >&2
bash scripts/setup.sh >/dev/null  # its progress lines go to stderr; stdout is the venv's name
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
exec .venv/bin/mechlens reproduce sentiment --model smollm2-135m --out "${1:-results/smollm2-135m}" "${@:2}"
