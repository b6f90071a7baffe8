#!/usr/bin/env bash
# One short pass over the GPU path, end to end, for a machine with one NVIDIA GPU:
#   1. the 1p launcher trains the digits demo on the GPU (fp16 AMP, channels_last, pinned
#      memory, forkserver loader workers, precise BN) and prints its Final result block;
#   2. train_eval_8p.sh (RANK_SIZE=1) evaluates that run's OUT_DIR (a folder as --pth_path);
#   3. SIGTERM to a 1p launcher mid-run: one stop line, exit 143, nothing of the job left;
#   4. the seed's perf launcher (EN-B3, 300 px, batch 128, AMP O2, loss scale 128) on
#      synthetic data: train images/s with our trainer, precise BN included in the E2E time;
#   5. benchmarks/precise_bn.py on the GPU: what precise BN costs per epoch at 300 px.
# Each step has its own time limit; the summary at the end says which passed.
#
# Usage:  bash benchmarks/gpu_check.sh [WORK_DIR]     (default /tmp/pycls_gpu_check)
#         DEVICE=cpu EPOCHS=2 SKIP_PERF=1 bash benchmarks/gpu_check.sh   (checks the script itself)
# Needs torch, torchvision, scikit-learn and the project's small deps; PYTHONPATH is set here.
set -uo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
WORK=${1:-/tmp/pycls_gpu_check}
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHON=$PY
export ASCEND_DEVICE_ID=${ASCEND_DEVICE_ID:-7}
DEVICE=${DEVICE:-gpu}
EPOCHS=${EPOCHS:-8}
mkdir -p "$WORK"
results=()

step() {
    # step NAME LIMIT_S COMMAND...: runs COMMAND under a limit and records pass/fail
    local name=$1 limit=$2 status start
    shift 2
    echo "== $name (limit ${limit}s)"
    start=$SECONDS
    timeout -k 10 "$limit" "$@"
    status=$?
    results+=("$name: exit $status in $((SECONDS - start)) s")
    return "$status"
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"

data="$WORK/digits"
[ -d "$data/train" ] || "$PY" "$REPO_DIR/tools/make_demo_data.py" "$data" >/dev/null
demo_cfg="$REPO_DIR/configs/demo/EN-B3_digits_cpu.yaml"
out="$WORK/demo_out"
rm -rf "$out"

step "1p demo on the GPU" 240 bash "$REPO_DIR/test/train_full_1p.sh" --data_path="$data" \
    --device="$DEVICE" --cfg="$demo_cfg" OUT_DIR "$out" OPTIM.MAX_EPOCH "$EPOCHS" \
    DATA_LOADER.NUM_WORKERS 4 AMP.OPT_LEVEL O2 AMP.LOSS_SCALE 128

step "eval of the run's OUT_DIR" 120 env RANK_SIZE=1 bash "$REPO_DIR/test/train_eval_8p.sh" \
    --data_path="$data" --device="$DEVICE" --cfg="$demo_cfg" --pth_path="$out" \
    DATA_LOADER.NUM_WORKERS 4

stop_log="$WORK/stop.log"
echo "== SIGTERM to a 1p launcher mid-run"
PYCLS_GPU_CHECK_JOB=1 bash "$REPO_DIR/test/train_full_1p.sh" --data_path="$data" \
    --device="$DEVICE" \
    --cfg="$demo_cfg" OUT_DIR "$WORK/stop_out" OPTIM.MAX_EPOCH 50 >"$stop_log" 2>&1 &
job=$!
for _ in $(seq 1 120); do
    grep -q "Wrote checkpoint" "$stop_log" 2>/dev/null && break
    sleep 1
done
kill -TERM "$job"
start=$SECONDS
wait "$job"
status=$?
# every process of the job (tee, the loader's forkserver too) must be gone within 10 s
for _ in $(seq 1 20); do
    left=$(grep -l "PYCLS_GPU_CHECK_JOB=1" /proc/[0-9]*/environ 2>/dev/null | wc -l)
    [ "$left" -eq 0 ] && break
    sleep 0.5
done
echo "exit $status; all gone after $((SECONDS - start)) s; processes of the job left: $left"
echo "last line: $(tail -n 1 "$stop_log")"
results+=("SIGTERM stop: exit $status, $left processes left, last line: $(tail -n 1 "$stop_log")")

[ "${SKIP_PERF:-0}" = 1 ] && { printf '%s\n' "${results[@]}"; exit 0; }
step "perf launcher, EN-B3 300px batch 128 (synthetic data)" 300 \
    bash "$REPO_DIR/test/train_performance_1p.sh" --data_path="$WORK" --device="$DEVICE" \
    OUT_DIR "$WORK/perf_out" TRAIN.DATASET synthetic TEST.DATASET synthetic \
    DATA_LOADER.SYNTHETIC_LENGTH 12800 DATA_LOADER.NUM_WORKERS 8 LOG_PERIOD 20

step "precise BN cost on the GPU" 120 "$PY" "$BENCH_DIR/precise_bn.py" --device "$DEVICE" \
    --batch_size 128 --iters 10 --warmup 3

echo "== summary"
printf '%s\n' "${results[@]}"
