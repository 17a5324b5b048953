#!/bin/bash
# Two builds of tsnap, A and B (checkouts with `npm run build` done, each
# with this bench/cow.ts), run alternately on their own THP target, with
# the huge pages the kernel split during each run (/proc/vmstat): same
# minutes, same load, for a before/after of the copy-on-write window.
#   bench/cow-ab.sh DIR_A DIR_B ROUNDS OUT   (env: BENCH_REPS, BENCH_COW_STATES, BENCH_COW_PAGES)
# Writes OUT/{a,b}-N.json and .trace (TSNAP_TRACE=1 timelines).
set -eu
a=$1; b=$2; rounds=$3; out=$4
mkdir -p "$out"
for i in $(seq 1 "$rounds"); do
  for v in a b; do
    d=$a; [ "$v" = b ] && d=$b
    s0=$(awk '/^thp_split_pmd /{print $2}' /proc/vmstat)
    (cd "$d" && TSNAP_TRACE=1 BENCH_COW_PAGES=${BENCH_COW_PAGES:-thp} node dist/bench/cow.js > "$out/$v-$i.json" 2> "$out/$v-$i.trace")
    s1=$(awk '/^thp_split_pmd /{print $2}' /proc/vmstat)
    echo "$v $i huge pages split $((s1 - s0)), load $(cut -d' ' -f1-3 /proc/loadavg)"
  done
done
