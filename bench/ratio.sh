#!/usr/bin/env bash
# ratio.sh PKG [COUNT]: runs the package's benchmarks COUNT times (default 10),
# takes the median ns/op of each, and prints thingcert/raw for every pair named
# <case>/raw and <case>/thingcert (or <case>/reference).
set -euo pipefail
pkg=${1:?usage: bench/ratio.sh ./bench/PKG [COUNT]}
count=${2:-10}
cd "$(dirname "$0")/.."
go test -run '^$' -bench . -count "$count" "$pkg" | tee /dev/stderr |
awk '
/^Benchmark/ && /ns\/op/ {
  name=$1; sub(/-[0-9]+$/, "", name)
  for (i = 2; i <= NF; i++) if ($(i+1) == "ns/op") v = $i
  vals[name] = vals[name] " " v
}
function median(s,   a, n, i, j, t) {
  n = split(s, a, " ")
  for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
  return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
END {
  printf "\n%-50s %14s %14s %8s\n", "case", "reference ns", "thingcert ns", "ratio"
  for (name in vals) {
    if (name !~ /\/thingcert$/) continue
    base = name; sub(/\/thingcert$/, "", base)
    ref = ""
    if ((base "/raw") in vals) ref = base "/raw"; else if ((base "/reference") in vals) ref = base "/reference"
    if (ref == "") continue
    r = median(vals[ref]); m = median(vals[name])
    printf "%-50s %14.0f %14.0f %8.3f\n", base, r, m, m / r
  }
}'
