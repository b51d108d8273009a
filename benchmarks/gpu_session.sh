#!/usr/bin/env bash
# One GPU session's checks on a machine lent for about 15 minutes: the extension prebuilt here
# (benchmarks/prebuild_for_gpu_machine.sh, into .prebuilt/) and carried there with the working
# tree; then gpu-check's stages without the build, the host-time probe and compute-sanitizer on
# the sanitizer workload, each under its own limit, everything written under $OUT/g and packed
# into $OUT/g.tgz. About 300 s (the stages took 135 s on 2026-12-04).
#
#   (on the GPU machine, with .prebuilt carried)  bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the directory the results go to}"
[ -f .prebuilt/_C.so.gz ] || { echo "gpu_session: no .prebuilt/_C.so.gz (run prebuild_for_gpu_machine.sh)" >&2; exit 1; }
gzip -dc .prebuilt/_C.so.gz > "rnn_fused/$(cat .prebuilt/name)"
cp .prebuilt/libmalloc_meter.so rnn_fused/tools/
export PYTHONPATH=$PWD
results=$OUT/g
mkdir -p "$results"
echo "extension of $(cat .prebuilt/commit)" > "$results/prebuilt_commit.txt"
started=$(date +%s)
step() {  # step NAME LIMIT_S OUTPUT COMMAND...: runs it, says its exit status and the time so far
    local name=$1 limit=$2 output=$3
    shift 3
    timeout "$limit" "$@" > "$results/$output" 2>&1
    echo "$name: exit status $? at $(( $(date +%s) - started )) s"
}
step gpu-check 300 gpu_check_stdout.txt python3 benchmarks/gpu_check.py --out "$results" --budget-s 150 \
    --min-seconds 0.15 --stages benchmark,tests,fit-model,smem-counters
step host-overhead 60 host_stdout.txt python3 benchmarks/host_overhead.py --out "$results"
step racecheck 60 sanitizer_racecheck.txt compute-sanitizer --tool racecheck --error-exitcode 9 \
    python3 benchmarks/sanitizer_workload.py --hidden 33 64
step memcheck 50 sanitizer_memcheck.txt compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 benchmarks/sanitizer_workload.py
tail -n 3 "$results/gpu_check_stdout.txt" "$results/sanitizer_racecheck.txt" "$results/sanitizer_memcheck.txt"
tar czf "$OUT/g.tgz" -C "$OUT" g && echo "packed $OUT/g.tgz"
