#!/usr/bin/env bash
# Every check that needs an NVIDIA GPU, in the order to run them (issues 2, 3 and 6), each with
# its log.
#
# THE one command for a GPU host, offline, in at most 7 minutes (issue 13): only torch,
# lightning, nvidia-ml-py, psutil, prometheus_client and pytest need be installed; greentrack is
# used from this checkout, codecarbon and Zeus rows say "not installed" when they are not:
#
#     bash bench/gpu_checks.sh --quick OUT_DIR          # writes OUT_DIR/summary.{md,json}
#     bash bench/gpu_checks.sh --quick --fake OUT_DIR   # the same pipeline on the fake NVML (CI)
#
# (bench/gpu_quick.py: goals, time limits, exit status.) It only reads the GPU's settings (power
# limit, MIG mode), never changes them. The full mode, with this repo installed
# (`pip install -e '.[dev,bench]'`; without the bench extra the codecarbon/Zeus rows say they could
# not run):
#
#     bash bench/gpu_checks.sh [OUT_DIR]        # about 15 minutes on an H100
#
# Logs go to OUT_DIR (default gpu-checks/), with a copy of bench/RESULTS.md as the scripts
# recorded it. The first check decides how to read the others: if the NVML energy counter does not
# refresh on the power sensor's tick, per-step figures are ~9%, not ~2.8% (docs/methodology.md).
quick=0
fake=0
out=
for arg in "$@"; do
    case $arg in
        --quick) quick=1 ;;
        --fake) fake=1 ;;
        -*) echo "usage: bash bench/gpu_checks.sh [--quick [--fake]] [OUT_DIR]" >&2; exit 2 ;;
        *) out=$arg ;;
    esac
done
if [ "$quick" -eq 1 ]; then
    # whichever Python has torch: $PYTHON if set, else python, else python3
    py=${PYTHON:-$(command -v python || command -v python3)}
    exec "$py" "$(dirname "$0")/gpu_quick.py" ${out:+"$out"} $([ "$fake" -eq 1 ] && echo --fake)
fi
if [ "$fake" -eq 1 ]; then
    echo "--fake needs --quick" >&2
    exit 2
fi
set -u
out=${out:-gpu-checks}
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
check gpu-tests python -m pytest -v -m gpu tests/test_gpu_real.py tests/test_stepmarks.py
check gpu-bursty python bench/gpu_bursty.py
check step-overhead python bench/step_overhead.py --device gpu
check overhead-compare python bench/overhead_compare.py --device cuda
check sampler-cost python bench/sampler_cost.py
cp bench/RESULTS.md "$out/RESULTS.md"
exit $status
