#!/usr/bin/env bash
# Measure the figures the README and docs quote and write them to docs/timings.md.
#
#   bash scripts/timings.sh                    # every measurement below (about an hour on 2 cores)
#   bash scripts/timings.sh quick study-ioi    # only these; the other rows of docs/timings.md stay
#   bash scripts/timings.sh --fresh test       # each in its own fresh clone of HEAD (set-up included,
#                                              # as a new user sees it; pip's download cache stays warm)
#   bash scripts/timings.sh --list             # the names and their commands
#
# Each row records the wall-clock time, the exit status, the peak memory of the largest process,
# the commit, the date, the machine (cores, memory) and the 1-minute load average at the start
# and at the end. Measure on an idle machine: a load average above 0.5 at the start means other
# work shares the cores, and the script says so (the row keeps the load, so readers can tell).
# Run it after every change that could move a figure, and quote docs/timings.md, not old numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# name | command (run from the repository root; $OUT is a fresh temporary folder)
measurements() {
  echo "quick|bash scripts/test.sh --quick"
  echo "test|bash scripts/test.sh"
  echo "reproduce-fast|bash scripts/reproduce.sh \$OUT/results --fast"
  echo "reproduce|bash scripts/reproduce.sh \$OUT/results"
  for f in examples/*.toml; do
    echo "study-$(basename "$f" .toml)|bash scripts/setup.sh >/dev/null && .venv/bin/mechlens study $f --out \$OUT/study"
  done
  echo "steering-compare|bash scripts/setup.sh >/dev/null && .venv/bin/python scripts/steering_compare.py --out \$OUT/figures"
  echo "site|bash scripts/setup.sh >/dev/null && .venv/bin/mkdocs build --strict --site-dir \$OUT/site"
}

fresh=0 names=()
for a in "$@"; do
  case "$a" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    --list) measurements | sed 's/|/\t/'; exit 0 ;;
    --fresh) fresh=1 ;;
    *) names+=("$a") ;;
  esac
done
all=$(measurements | cut -d'|' -f1)
[ ${#names[@]} -gt 0 ] || mapfile -t names <<< "$all"
for n in "${names[@]}"; do
  grep -qx -- "$n" <<< "$all" || { echo "timings.sh: unknown measurement '$n'; one of: $(echo $all)" >&2; exit 2; }
done
if [ "$fresh" = 1 ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "timings.sh: warning: --fresh measures the commit; uncommitted changes are not in it" >&2
fi

load() { cut -d' ' -f1 /proc/loadavg; }
commit=$(git rev-parse --short HEAD)$([ -z "$(git status --porcelain --untracked-files=no)" ] || echo "+changes")
machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
results=$(mktemp)
trap 'rm -f "$results"' EXIT

for n in "${names[@]}"; do
  cmd=$(measurements | awk -F'|' -v n="$n" '$1 == n {print $2}')
  OUT=$(mktemp -d)
  dir=$root
  if [ "$fresh" = 1 ]; then
    git clone --quiet --no-hardlinks "$root" "$OUT/clone"
    git -C "$OUT/clone" checkout --quiet "$(git rev-parse HEAD)"
    dir=$OUT/clone
  fi
  start_load=$(load)
  if awk -v l="$start_load" 'BEGIN {exit !(l > 0.5)}'; then
    echo "timings.sh: warning: load average $start_load at the start of '$n': the machine is not idle," \
         "so this time is inflated" >&2
  fi
  echo "== $n: $cmd (load $start_load)" >&2
  t0=$(date +%s.%N)
  set +e  # the command's output goes to the terminal as it runs
  ( cd "$dir" && OUT=$OUT /usr/bin/time -f "%M" -o "$OUT/.rss" bash -c "$cmd" ) 2>&1 | tee "$OUT/.log" >&2
  status=${PIPESTATUS[0]}
  set -e
  t1=$(date +%s.%N)
  end_load=$(load)
  rss=$(tail -n 1 "$OUT/.rss" 2>/dev/null || echo "")
  [ "$status" = 0 ] || echo "timings.sh: '$n' exited with status $status" >&2
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", b - a}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$cmd" "$secs" "$status" "$rss" "$start_load" "$end_load" \
    "$commit" "$(date -u +%Y-%m-%d)" "$machine$([ "$fresh" = 1 ] && echo ", fresh clone")" >> "$results"
  echo "== $n: ${secs} s, status $status, load $start_load -> $end_load" >&2
  rm -rf "$OUT"
done

python3 - "$results" docs/timings.md <<'EOF'
"""Merge the new rows into docs/timings.md (one row per measurement; the newest wins)."""
import re
import sys
from pathlib import Path

new_rows, path = Path(sys.argv[1]), Path(sys.argv[2])
order = ["quick", "test", "reproduce-fast", "reproduce", "site"]
head = ("| measurement | command | wall clock | exit | peak memory | load at start | load at end "
        "| commit | date | machine |")
rows = {}
if path.exists():
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and line.startswith("| ") and cells[0] not in ("measurement", "---"):
            rows[cells[0]] = cells
for line in new_rows.read_text().splitlines():
    n, cmd, secs, status, rss, l0, l1, commit, date, machine = line.split("\t")
    s = int(secs)
    wall = f"{s / 60:.1f} min" if s >= 120 else f"{s} s"
    mem = f"{int(rss) / 1048576:.1f} GB" if rss.isdigit() else "?"
    busy = " (busy)" if float(l0) > 0.5 else ""
    rows[n] = [n, f"`{cmd}`", wall, status, mem, l0 + busy, l1, commit, date, machine]
key = lambda n: (order.index(n) if n in order else len(order) - 0.5 if n.startswith("study-") else len(order), n)
table = [head, "|" + "---|" * 10] + ["| " + " | ".join(rows[n]) + " |" for n in sorted(rows, key=key)]
text = f"""# Timings

What the README and these pages quote, as measured by `bash scripts/timings.sh` (which wrote this
file). Each row: the wall-clock time of the command, its exit status, the peak memory of its
largest process, the commit measured, the date, the machine, and the 1-minute load average at the
start and at the end. A load above 0.5 at the start, marked (busy), means other work shared the
cores and the time is inflated; a row with `fresh clone` in its machine column was measured in a
new clone of the commit (set-up of the environments included, pip's download cache warm).

Re-measure after a change that could move a figure: `bash scripts/timings.sh NAME...` (names:
the first column; `--list` shows them) replaces those rows and keeps the others.

{chr(10).join(table)}
"""
path.write_text(text)
print(f"wrote {path}")
EOF
