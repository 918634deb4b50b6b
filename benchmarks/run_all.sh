#!/usr/bin/env bash
# Run every benchmark of issue 7 one after another (never side by side: they would compete for
# the cores) and print a summary; exit status 1 when any missed its target.
#
#   bash benchmarks/run_all.sh [OUT_DIR]      # OUT_DIR (default benchmarks/out) gets each one's JSON and log
set -u
cd "$(dirname "$0")/.."
out="${1:-benchmarks/out}"
mkdir -p "$out"

machine() {
    echo "nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

echo "machine: $(machine)" | tee "$out/machine.txt"
failed=()
for bench in seed client memory dag decontamination replicas; do
    echo
    echo "=== bench_$bench ($(date -u +%H:%M:%S) UTC; load $(cut -d' ' -f1 /proc/loadavg)) ==="
    # Each one's own figures go to JSON; the console output is kept as its log.
    python "benchmarks/bench_$bench.py" --json "$out/$bench.json" 2>&1 | tee "$out/$bench.log"
    status=${PIPESTATUS[0]}
    [ "$status" -eq 0 ] || failed+=("$bench")
done

echo
echo "machine at the end: $(machine)" | tee -a "$out/machine.txt"
if [ ${#failed[@]} -gt 0 ]; then
    echo "MISSED: ${failed[*]}"
    exit 1
fi
echo "all benchmarks met their targets"
