#!/usr/bin/env bash
# The test command: set up (idempotent), then run the whole test suite offline.
#
#   bash scripts/test.sh [PYTEST ARGS]            # with the locked versions (what CI runs)
#   bash scripts/test.sh --latest [PYTEST ARGS]   # with the newest versions pyproject.toml allows
set -euo pipefail
cd "$(dirname "$0")/.."
setup_args=()
if [ "${1:-}" = "--latest" ]; then setup_args=(--latest); shift; fi
venv=$(bash scripts/setup.sh "${setup_args[@]}" | tail -n 1)
if [ -f scripts/install_chromium.sh ]; then bash scripts/install_chromium.sh; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
"$venv/bin/python" -m pip freeze --exclude-editable | grep -iE '^(torch|transformers|transformer-lens|tokenizers)==' | tr '\n' ' '; echo
exec "$venv/bin/python" -m pytest -q "$@"
