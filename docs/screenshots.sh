#!/usr/bin/env bash
# Regenerates the screenshots in docs/screenshots/: the demo's report (report.png) and a compare
# page of the precision sweep (compare.png), each rendered by headless Chromium.
#
#   docs/screenshots.sh [report|compare]   # both by default; about 3 minutes on 2 CPU cores
#
# Needs the `chromium` package (Debian: apt-get install chromium). PYTHON overrides the
# interpreter (default .venv/bin/python). The runs are made in a temporary directory, removed at
# the end; only the two PNGs are written into the repository, each at most 300 KB (checked).
# The runs take their host leases in the temporary directory: the pictures show them as on a
# machine of their own (other runs on a shared host would add "another run measures this host").
set -euo pipefail
which=${1:-all}
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome) || {
    echo "screenshots.sh: chromium is not installed (Debian: apt-get install chromium)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export GREENTRACK_LEASE_DIR="$work/leases"
mkdir -p "$GREENTRACK_LEASE_DIR"

shot() {  # shot PAGE PNG WIDTH HEIGHT
    "$browser" --headless --no-sandbox --disable-gpu --no-first-run --disable-extensions \
        --hide-scrollbars --force-device-scale-factor=1 --user-data-dir="$work/profile" \
        --window-size="$3,$4" --screenshot="$2" "file://$1" >/dev/null 2>&1
    local kb=$(($(wc -c <"$2") / 1024))
    echo "$2: $kb KB"
    if ((kb > 300)); then echo "screenshots.sh: $2 is over 300 KB" >&2; exit 1; fi
}

# the demo (make demo): its report
if [[ $which == all || $which == report ]]; then
(cd "$work" && GREENTRACK_COUNTRY=FR "$py" "$repo/examples/demo.py" demo >demo.log 2>&1)
shot "$work/demo/report/report.html" "$repo/docs/screenshots/report.png" 1000 1500
fi

# the precision sweep (examples/precision_sweep.py): fp32 and bf16 twice each, compared on the
# energy to a loss, with the loss against energy and the target drawn
if [[ $which == all || $which == compare ]]; then
(cd "$work" && "$py" "$repo/examples/precision_sweep.py" sweep --steps 200 --target 0.05 \
    >sweep.log 2>&1)
(cd "$work" && "$py" -m greentrack compare sweep/fp32-1 --target "loss<=0.05" \
    --group fp32=sweep/fp32-1,sweep/fp32-2 --group bf16=sweep/bf16-1,sweep/bf16-2 \
    --format html >compare.html)
shot "$work/compare.html" "$repo/docs/screenshots/compare.png" 1300 2000
fi
