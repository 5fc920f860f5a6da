#!/usr/bin/env bash
# The test command: set up (idempotent), then run the test suite offline.
#
#   bash scripts/test.sh                 # the full suite on the locked versions (what CI runs): the
#                                        # main suite in .venv, then the HookedTransformer suite in .venv-tl39
#   bash scripts/test.sh --quick         # the quick tier: tiny models only (no smollm2-135m, no
#                                        # documentation examples, notebooks, site or subprocesses), .venv
#   bash scripts/test.sh --latest        # the full main suite on the newest versions pyproject.toml
#                                        # allows (.venv-latest)
#   bash scripts/test.sh [--quick|--latest] PYTEST_ARGS   # the main suite only, with these arguments
#                                        # added (e.g. tests/test_study.py -k resume -n 0)
#   bash scripts/test.sh --help          # this text; sets up and installs nothing
#
# The tests are spread over the CPU cores with pytest-xdist (MECHLENS_TEST_WORKERS=N to choose,
# 0 for one process); each test file's tests run in one process, so its fixtures run once
# (tests/conftest.py). Every run ends with its 20 slowest tests. CONTRIBUTING.md: the tiers.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

tier=full setup_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --quick) tier=quick; shift ;;
    --latest) setup_args=(--latest); shift ;;
    *) break ;;
  esac
done
if [ "$tier" = quick ] && [ ${#setup_args[@]} -gt 0 ]; then
  echo "test.sh: --quick runs on the locked versions; drop --latest" >&2; exit 2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg

log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
# The environments (and Chromium, for the browser tests) install side by side: mostly waiting
# on downloads and unpacking. setup.sh prints the environment's folder last.
finish() {  # finish NAME PID: wait for a set-up (on failure show its output); its folder in $env
  if ! wait "$2"; then
    cat "$log/$1" >&2; echo "test.sh: set-up ($1) failed" >&2; exit 1
  fi
  env=$(tail -n 1 "$log/$1")
}
bash scripts/setup.sh "${setup_args[@]}" > "$log/main" 2>&1 &
main_pid=$!
full_run=0
if [ "$tier" = full ] && [ $# -eq 0 ] && [ ${#setup_args[@]} -eq 0 ]; then
  full_run=1
  bash scripts/setup.sh --tl39 > "$log/tl39" 2>&1 &
  tl39_pid=$!
fi
if [ "$tier" = full ] && [ -f scripts/install_chromium.sh ]; then
  { bash scripts/install_chromium.sh > "$log/chromium" 2>&1 || cat "$log/chromium" >&2; } &
  chromium_pid=$!
fi
finish main "$main_pid"; venv=$env
# Bytecode: a run starts dozens of Python processes (workers, notebook kernels, the command line
# as a subprocess) that import torch and transformers; setup.sh installs without compiling them,
# and under PYTHONDONTWRITEBYTECODE each process would compile them again (about 15 s). Compile
# once, into the environment's folder (nothing is written into the checkout).
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-$PWD/$venv/.pycache}

versions() {
  echo "== $1: $("$1/bin/python" -m pip freeze --exclude-editable 2>/dev/null \
    | grep -iE '^(torch|transformers|transformer-lens|tokenizers)==' | tr '\n' ' ')"
}
# pytest-xdist: one worker per core ("auto"); groups keep each file's tests on one worker
workers=${MECHLENS_TEST_WORKERS:-auto}
xdist=(-n "$workers" --dist loadgroup)
[ "$workers" = 0 ] && xdist=(-p no:xdist)
# torch's threads: the cores shared among the workers (not one pool per worker on every core)
n_workers=$workers; [ "$workers" = auto ] && n_workers=$(nproc)
[ "$n_workers" -gt 0 ] 2>/dev/null || n_workers=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / n_workers > 0 ? $(nproc) / n_workers : 1 ))}
base=(-q -p no:cacheprovider --durations=20)
common=("${base[@]}" "${xdist[@]}")

versions "$venv"
if [ "$tier" = quick ]; then
  echo "== quick tier: pytest -m 'not slow' (tiny models only)"
  exec "$venv/bin/python" -m pytest "${common[@]}" -m "not slow" "$@"
fi
[ -n "${chromium_pid:-}" ] && wait "$chromium_pid"
if [ "$full_run" = 0 ]; then
  exec "$venv/bin/python" -m pytest "${common[@]}" "$@"
fi
status=0
"$venv/bin/python" -m pytest "${common[@]}" || status=$?
# TransformerLens 3.9 (HookedTransformer): tests/test_*hooked*.py (they skip themselves in .venv)
finish tl39 "$tl39_pid"; tl39=$env
versions "$tl39"
# one process: ~30 s of tiny-model tests, less than two workers' start-up would cost
"$tl39/bin/python" -m pytest "${base[@]}" -p no:xdist tests/test_*hooked*.py || status=$?
exit $status
