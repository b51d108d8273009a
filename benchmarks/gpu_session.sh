#!/usr/bin/env bash
# One GPU session's checks on a machine lent for about 15 minutes: gpu-check's stages (the
# build first, for this GPU's architecture on every core, unless an extension prebuilt on
# another machine is carried: benchmarks/prebuild_for_gpu_machine.sh, into .prebuilt/), the
# host-time probe and compute-sanitizer on the sanitizer workload, each under its own limit,
# everything written under $OUT/g and packed into $OUT/g.tgz. Without the build about 300 s
# (the stages took 135 s on 2026-12-04); the build is predicted at 1-2 minutes on a 16-core
# host since the emulated kernels compile in eight files (docs/gpu_check.md; not yet timed on a
# GPU machine).
#
#   (on the GPU machine)  bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the directory the results go to}"
export PYTHONPATH=$PWD
results=$OUT/g
mkdir -p "$results"
started=$(date +%s)
step() {  # step NAME LIMIT_S OUTPUT COMMAND...: runs it, says its exit status and the time so far
    local name=$1 limit=$2 output=$3
    shift 3
    timeout "$limit" "$@" > "$results/$output" 2>&1
    echo "$name: exit status $? at $(( $(date +%s) - started )) s"
}
if [ -f .prebuilt/_C.so.gz ]; then
    gzip -dc .prebuilt/_C.so.gz > "rnn_fused/$(cat .prebuilt/name)"
    cp .prebuilt/libmalloc_meter.so rnn_fused/tools/
    echo "extension of $(cat .prebuilt/commit), prebuilt" > "$results/prebuilt_commit.txt"
else
    step build 400 build_stdout.txt python3 benchmarks/gpu_check.py --out "$results" --stages build
fi
step gpu-check 300 gpu_check_stdout.txt python3 benchmarks/gpu_check.py --out "$results" --budget-s 150 \
    --min-seconds 0.15 --stages benchmark,tests,fit-model,smem-counters
step host-overhead 60 host_stdout.txt python3 benchmarks/host_overhead.py --out "$results"
step racecheck 60 sanitizer_racecheck.txt compute-sanitizer --tool racecheck --error-exitcode 9 \
    python3 benchmarks/sanitizer_workload.py --hidden 33 64
step memcheck 50 sanitizer_memcheck.txt compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 benchmarks/sanitizer_workload.py
tail -n 3 "$results/gpu_check_stdout.txt" "$results/sanitizer_racecheck.txt" "$results/sanitizer_memcheck.txt"
tar czf "$OUT/g.tgz" -C "$OUT" g && echo "packed $OUT/g.tgz"
