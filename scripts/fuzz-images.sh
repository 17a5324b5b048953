#!/bin/sh
# Image fuzzing at length: the fuzz test of the suite (test/fuzz-images.test.ts)
# with many more mutations of real images, every 4th also through the CLI.
#
#   scripts/fuzz-images.sh [MUTATIONS=1200]
#   TSNAP_FUZZ_SEED=N scripts/fuzz-images.sh     # replay a run (the seed is printed)
#
# Prints a summary per kind of mutation; fails on the first crash, hang,
# wrong restore, or refusal that is not exit 7 with one line.
set -e
cd "$(dirname "$0")/.."
npx tsc -p tsconfig.json
export TSNAP_FUZZ_MUTATIONS="${1:-1200}"
export TSNAP_FUZZ_SEED="${TSNAP_FUZZ_SEED:-$(date +%s)}"
export TSNAP_FUZZ_CLI_EVERY="${TSNAP_FUZZ_CLI_EVERY:-4}"
exec npx vitest run test/fuzz-images.test.ts -t 'mutations: each'
