#!/usr/bin/env bash
# The GPU check (README, "GPU check"), for a CUDA machine whose Python already holds a CUDA build of torch:
# installs slidr over that Python without touching torch (pip --no-deps, nothing downloaded), then runs
# `slidr gpu-check`: bench sparse, bench loss and bench step (the paper's MinkUNet34 config, batch 4) on the GPU,
# the plain-PyTorch engine against spconv where a CUDA spconv is installed, under a time budget (< 8 minutes).
#
#   scripts/gpu_check.sh [slidr gpu-check options]        e.g. scripts/gpu_check.sh --out gpu_check
#
# Writes OUT/gpu_check.json, OUT/gpu_check.md, OUT/bench/*.json and *.log (OUT: --out, default gpu_check).
# Environment:
#   PYTHON             the Python holding the CUDA torch (default: python3)
#   WHEELS             a folder of wheels installed first with --no-deps (missing packages, e.g. nuscenes-devkit,
#                      pyquaternion, or spconv-cu120 and its cumm-cu120)
#   GPU_CHECK_INSTALL  editable (default): pip install --no-deps -e . ; none: run the checkout's sources as they are
# The checkout's sources always run (PYTHONPATH=src first), whether the install succeeded or not.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
args=("$@")
has_out=0
for arg in "${args[@]+"${args[@]}"}"; do
    case "$arg" in --out|--out=*) has_out=1 ;; esac
done
if [ "$has_out" = 0 ]; then
    args+=(--out gpu_check)
fi

torch_version() {
    "$PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda)'
}
if ! before="$(torch_version 2>/dev/null)"; then
    echo "gpu_check: $PYTHON cannot import torch: install the CUDA build of torch first (or set PYTHON=...)" >&2
    exit 2
fi
echo "gpu_check: $PYTHON, torch $before"

if [ -n "${WHEELS:-}" ]; then
    shopt -s nullglob
    wheels=("$WHEELS"/*.whl)
    if [ "${#wheels[@]}" = 0 ]; then
        echo "gpu_check: WHEELS=$WHEELS holds no .whl file" >&2
        exit 2
    fi
    echo "gpu_check: installing ${#wheels[@]} wheel(s) from $WHEELS (--no-deps)"
    "$PYTHON" -m pip install --quiet --no-index --no-deps "${wheels[@]}"
fi

case "${GPU_CHECK_INSTALL:-editable}" in
    editable)
        log="$(mktemp)"
        if "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation -e "$root" >"$log" 2>&1; then
            echo "gpu_check: installed slidr from $root (pip install --no-deps -e .)"
        else
            echo "gpu_check: pip could not install slidr; running the checkout's sources anyway. pip said:"
            { grep "error: " "$log" | grep -v "subprocess-exited-with-error\|metadata-generation-failed" || tail -n 3 "$log"; } \
                | head -n 4 | sed 's/^ */    /'
        fi
        rm -f "$log"
        ;;
    none) ;;
    *)
        echo "gpu_check: GPU_CHECK_INSTALL must be editable or none, got '${GPU_CHECK_INSTALL}'" >&2
        exit 2
        ;;
esac

after="$(torch_version)"
if [ "$after" != "$before" ]; then
    echo "gpu_check: torch changed from $before to $after while installing: reinstall your CUDA torch" >&2
    exit 2
fi

export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m slidr.cli.main gpu-check "${args[@]}"
