#!/usr/bin/env bash
# run.sh [RUNS]: whole-process start-up, `thingcert SUBCOMMAND` against the bare
# paho client's start-up (bench/footprint/barepaho -h: flag parsing, every
# package initialised, exit), alternating, RUNS times each (default 31). Both
# are built the same way, release-like (-trimpath -ldflags "-s -w", cgo as
# the build machine has it). Prints the medians and the median of the
# per-pair ratios thingcert/barepaho, for `version` and for the --help of the
# other subcommands (each pays only for what it links and initialises).
#
# THINGCERT=PATH / BAREPAHO=PATH time those binaries instead of building.
# SUBCOMMANDS="version run" chooses which to time (default: version).
set -euo pipefail
runs=${1:-31}
cd "$(dirname "$0")/../.."
work=$(mktemp -d /tmp/thingcert-bench-startup.XXXXXX)
trap 'rm -rf "$work"' EXIT
if [ -n "${THINGCERT:-}" ]; then tc=$(realpath "$THINGCERT"); else
  go build -trimpath -ldflags "-s -w" -o "$work/thingcert" ./cmd/thingcert; tc="$work/thingcert"; fi
if [ -n "${BAREPAHO:-}" ]; then bp=$(realpath "$BAREPAHO"); else
  go build -trimpath -ldflags "-s -w" -o "$work/barepaho" ./bench/footprint/barepaho; bp="$work/barepaho"; fi

# bench NAME THINGCERT_ARGS...
bench() {
  local name=$1; shift
  local tcmd=("$tc" "$@") pcmd=("$bp" -h)
  "${tcmd[@]}" >/dev/null || { echo "thingcert $* failed" >&2; exit 1; }
  for _ in 1 2 3; do "${tcmd[@]}" >/dev/null 2>&1; "${pcmd[@]}" >/dev/null 2>&1 || true; done
  local out="$work/$name.times" i t0 t1 t2
  : >"$out"
  for ((i = 0; i < runs; i++)); do
    if ((i % 2 == 0)); then
      t0=$EPOCHREALTIME; "${tcmd[@]}" >/dev/null 2>&1; t1=$EPOCHREALTIME; "${pcmd[@]}" >/dev/null 2>&1 || true; t2=$EPOCHREALTIME
      echo "$t0 $t1 $t2" | awk '{printf "%.3f %.3f\n", ($2-$1)*1000, ($3-$2)*1000}' >>"$out"
    else
      t0=$EPOCHREALTIME; "${pcmd[@]}" >/dev/null 2>&1 || true; t1=$EPOCHREALTIME; "${tcmd[@]}" >/dev/null 2>&1; t2=$EPOCHREALTIME
      echo "$t0 $t1 $t2" | awk '{printf "%.3f %.3f\n", ($3-$2)*1000, ($2-$1)*1000}' >>"$out"
    fi
  done
  awk -v name="$name" -v runs="$runs" '
    function median(a, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { n++; tc[n] = $1; bp[n] = $2; r[n] = $1 / $2 }
    END { printf "%-24s %6d %14.2f %14.2f %12.3f\n", name, runs, median(tc, n), median(bp, n), median(r, n) }' "$out"
}

printf '%-24s %6s %14s %14s %12s\n' command runs "thingcert ms" "barepaho ms" "median ratio"
for sub in ${SUBCOMMANDS:-version}; do
  if [ "$sub" = version ]; then bench version version; else bench "$sub --help" $sub --help; fi
done
