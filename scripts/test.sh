#!/usr/bin/env bash
# The test command: set up (idempotent), then run the whole test suite offline.
#
#   bash scripts/test.sh                 # the locked versions (what CI runs): the main suite in
#                                        # .venv, then the HookedTransformer suite in .venv-tl39
#   bash scripts/test.sh PYTEST_ARGS     # the main suite only, with those pytest arguments
#   bash scripts/test.sh --latest [...]  # the newest versions pyproject.toml allows (.venv-latest)
set -euo pipefail
cd "$(dirname "$0")/.."
setup_args=()
if [ "${1:-}" = "--latest" ]; then setup_args=(--latest); shift; fi
venv=$(bash scripts/setup.sh "${setup_args[@]}" | tail -n 1)
if [ -f scripts/install_chromium.sh ]; then bash scripts/install_chromium.sh; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg

versions() {
  echo "== $1: $("$1/bin/python" -m pip freeze --exclude-editable 2>/dev/null \
    | grep -iE '^(torch|transformers|transformer-lens|tokenizers)==' | tr '\n' ' ')"
}

versions "$venv"
if [ $# -gt 0 ] || [ ${#setup_args[@]} -gt 0 ]; then
  exec "$venv/bin/python" -m pytest -q "$@"
fi
status=0
"$venv/bin/python" -m pytest -q || status=$?
# TransformerLens 3.9 (HookedTransformer): tests/test_*hooked*.py (they skip themselves in .venv)
tl39=$(bash scripts/setup.sh --tl39 | tail -n 1)
versions "$tl39"
"$tl39/bin/python" -m pytest -q -p no:cacheprovider tests/test_*hooked*.py || status=$?
exit $status
