#!/usr/bin/env bash
# EN-B3 on one NVIDIA GPU: this project's train step vs torchvision vs timm at 300px, batch 128,
# channels_last, bf16 then fp16 AMP (10 warm-up + 30 timed steps per model per setting, plus
# eval), and a check that every model's loss fell over its steps (a fixed batch, repeated).
# Takes about 3-5 minutes; each setting is stopped after SETTING_TIMEOUT seconds (default 270).
#
# Usage:  bash benchmarks/gpu.sh              (needs a visible NVIDIA GPU; uses the first)
#         bash benchmarks/gpu.sh --dry-run    (or GPU_BENCH_DRY_RUN=1: the same logic on the
#                                              CPU with tiny settings, to check the script)
# Needs torch, torchvision, timm and the project's small deps (yacs, pyyaml, numpy, simplejson,
# pillow); no `pip install -e .` (PYTHONPATH is set here). Logs: benchmarks/output/gpu_*.log
# (or $OUT_DIR). Exit status: 0 when every setting ran and every loss fell, else non-zero.
set -uo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR=${OUT_DIR:-$BENCH_DIR/output}
SETTING_TIMEOUT=${SETTING_TIMEOUT:-270}
DRY_RUN=${GPU_BENCH_DRY_RUN:-0}

die() {
    echo "error: $*" >&2
    exit 2
}

for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        *) die "unknown argument $arg; use --dry-run (or no argument)" ;;
    esac
done

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x "$REPO_DIR/.venv/bin/python" ]; then
    PY=$REPO_DIR/.venv/bin/python
else
    PY=$(command -v python3 || command -v python) || die "no python3 found; install Python 3.8+"
fi

# timm may be missing in a dry run only (the benchmark then skips it with a note)
missing=$(DRY_RUN=$DRY_RUN "$PY" - <<'EOF'
import importlib.util, os
mods = ["torch", "torchvision", "timm", "yacs", "yaml", "numpy", "simplejson", "PIL"]
if os.environ["DRY_RUN"] == "1":
    mods.remove("timm")
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
EOF
) || die "$PY does not run"
if [ -n "$missing" ]; then
    die "missing Python modules: $missing; pip install torch torchvision timm and -r requirements.txt"
fi

if [ "$DRY_RUN" = 1 ]; then
    echo "DRY RUN on the CPU with tiny settings: these numbers say nothing about a GPU"
    # 9 train steps: at 64px fp16 GradScaler skips the first ~4 (its scale starts at 2**16)
    settings=(--device cpu --threads 1 --batch 2 --im-size 64 --warmup 3 --rounds 2 --steps 3
        --lr 0.005 --no-memory)
else
    "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.device_count() > 0 else 1)" \
        || die "no NVIDIA GPU visible to torch $("$PY" -c 'import torch; print(torch.__version__)') \
(torch.cuda.is_available() is False); run on a machine with a GPU, or --dry-run to test the script"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
        --format=csv,noheader
    settings=(--device gpu --batch 128 --im-size 300 --warmup 10 --rounds 5 --steps 6)
fi

mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR; set OUT_DIR to a writable folder"
failed=()
for amp in bf16 fp16; do
    log="$OUT_DIR/gpu_$amp.log"
    echo "== EN-B3, amp $amp, channels_last (log: $log)"
    timeout "$SETTING_TIMEOUT" "$PY" "$BENCH_DIR/train_throughput.py" "${settings[@]}" \
        --amp "$amp" --formats channels_last --models pycls,torchvision,timm \
        --check-loss-falls 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    if [ "$status" -eq 124 ]; then
        echo "error: amp $amp ran past SETTING_TIMEOUT=${SETTING_TIMEOUT}s" | tee -a "$log" >&2
    fi
    [ "$status" -eq 0 ] || failed+=("$amp (exit $status)")
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}; see the logs in $OUT_DIR" >&2
    exit 1
fi
echo "OK: every setting ran and every loss fell; tables above and in $OUT_DIR/gpu_*.log"
