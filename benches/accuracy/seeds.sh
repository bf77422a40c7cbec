#!/usr/bin/env bash
# The accuracy bench's matrix over the seeds the README's figures use, and their means.
#
#   benches/accuracy/seeds.sh                 # build, then eight seeds (the default 11, then 1-7)
#   SEEDS="11 1 2 3" benches/accuracy/seeds.sh              # four seeds
#   ACCURACY_HELD_OUT=1 SEEDS="11 1 2 3" benches/accuracy/seeds.sh   # any ACCURACY_* setting
#   ACCURACY_BIN=/tmp/acc_old benches/accuracy/seeds.sh     # another build of the bench
#   OUT=/tmp/run_a benches/accuracy/seeds.sh  # keep each seed's table there (seed<N>.txt)
#
# Prints the mean over all cells of the record's and the provisional response figure's median and
# p95 |error| (the bench's `record` and `resp` columns), the unattributed share (mean and max), the
# same per workload, and whether every cell's books were exact. Seeds run two at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."

SEEDS=${SEEDS:-"11 1 2 3 4 5 6 7"}
if [ -z "${ACCURACY_BIN:-}" ]; then
  ACCURACY_BIN=$(cargo bench --bench accuracy --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*accuracy-[^"]*\)".*/\1/p' | tail -1)
  [ -x "$ACCURACY_BIN" ] || { echo "seeds.sh: could not build the accuracy bench" >&2; exit 1; }
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

running=0
for seed in $SEEDS; do
  ACCURACY_SEED=$seed "$ACCURACY_BIN" --bench >"$OUT/seed$seed.txt" 2>/dev/null &
  running=$((running + 1))
  if [ "$running" -ge 2 ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

# Data rows: model, period, workload, record m/p, active, settled, wait, resp m/p, ... unat, books.
cat "$OUT"/seed*.txt | awk -v seeds="$SEEDS" '
  $2 ~ /^[0-9]+$/ && $4 ~ /\// {
    split($4, r, "/"); split($8, p, "/")
    n++; rm += r[1]; rp += r[2]; pm += p[1]; pp += p[2]; u += $13; if ($13 + 0 > umax) umax = $13 + 0
    if ($14 != "exact") inexact++
    w = $3; wn[w]++; wrm[w] += r[1]; wrp[w] += r[2]; wpm[w] += p[1]; wpp[w] += p[2]
  }
  END {
    if (!n) { print "seeds.sh: no cells read"; exit 1 }
    printf "seeds %s: %d cells\n", seeds, n
    printf "records %.2f / %.2f %%, responses %.2f / %.2f %% (mean of cells: median / p95 |error|)\n", rm / n, rp / n, pm / n, pp / n
    printf "unattributed %.3f %% on average, %.2f %% at most; books %s\n", u / n, umax, inexact ? inexact " cells NOT exact" : "exact in every cell"
    for (w in wn) printf "  %-14s records %5.2f / %6.2f   responses %5.2f / %6.2f\n", w, wrm[w] / wn[w], wrp[w] / wn[w], wpm[w] / wn[w], wpp[w] / wn[w] | "sort"
  }'
echo "tables: $OUT"
