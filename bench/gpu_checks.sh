#!/usr/bin/env bash
# Every check that needs an NVIDIA GPU, in the order to run them (issues 2, 3 and 6), each with
# its log. On a GPU host with this repo installed (`pip install -e '.[dev,bench]'`; without the
# bench extra the codecarbon/Zeus rows say they could not run):
#
#     bash bench/gpu_checks.sh [OUT_DIR]        # about 15 minutes on an H100
#
# Logs go to OUT_DIR (default gpu-checks/), with a copy of bench/RESULTS.md as the scripts
# recorded it. The first check decides how to read the others: if the NVML energy counter does not
# refresh on the power sensor's tick, per-step figures are ~8%, not ~3.4% (docs/methodology.md).
set -u
out=${1:-gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
check() {
    local name=$1
    shift
    echo "== $name: $*"
    timeout 900 "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}
check nvml-probe python bench/nvml_probe.py
check gpu-tests python -m pytest -v -m gpu tests/test_gpu_real.py tests/test_timeline.py
check gpu-bursty python bench/gpu_bursty.py
check step-overhead python bench/step_overhead.py --device gpu
check overhead-compare python bench/overhead_compare.py --device cuda
check sampler-cost python bench/sampler_cost.py
cp bench/RESULTS.md "$out/RESULTS.md"
exit $status
