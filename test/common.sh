#!/usr/bin/env bash
# Shared by the launchers in test/: arguments, the Python to use, the run and the final result.
# Launchers call: launch CASE TOOL DEFAULT_CFG NUM_PROCS "$@"

set -uo pipefail
TEST_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$TEST_DIR")"
# shellcheck source=test/env_npu.sh
source "$TEST_DIR/env_npu.sh"

die() {
    echo "error: $*" >&2
    exit 2
}

pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"
    elif [ -x "$REPO_DIR/.venv/bin/python" ]; then
        echo "$REPO_DIR/.venv/bin/python"
    else
        command -v python3 || command -v python || die "no python3 found; install Python 3.8+"
    fi
}

# Seconds a stopped job gets to end on its own before it is killed (it must be gone in 10 s)
STOP_GRACE_S=7

# run_job LOG COMMAND...: runs COMMAND with its output on the terminal and in LOG; returns its
# exit status. SIGINT/SIGTERM to this script reach the job (bash runs a trap only after a
# foreground command ends, so the job runs in the background while the script waits); the
# job then ends every process it started and prints the one line that says how to resume; it
# is killed if it outlives STOP_GRACE_S. tee ignores the signals so that line reaches the log.
run_job() {
    local log=$1 status
    shift
    _job_pid="" _job_signal="" _job_stop_at=""
    trap '_stop_job INT' INT
    trap '_stop_job TERM' TERM
    "$@" > >(trap '' INT TERM; exec tee "$log") 2>&1 &
    _job_pid=$!
    [ -n "$_job_signal" ] && kill -s "$_job_signal" "$_job_pid" 2>/dev/null
    wait "$_job_pid"  # returns early when a stop signal arrives
    while kill -0 "$_job_pid" 2>/dev/null; do
        if [ -n "$_job_stop_at" ] && [ $((SECONDS - _job_stop_at)) -ge "$STOP_GRACE_S" ]; then
            kill -s KILL "$_job_pid" 2>/dev/null
        fi
        sleep 0.2
    done
    wait "$_job_pid"
    status=$?
    trap - INT TERM
    wait  # for tee to write the last lines
    return "$status"
}

# _stop_job SIGNAL: passes the first stop signal on to the job and starts its grace time
_stop_job() {
    [ -n "$_job_signal" ] && return
    _job_signal=$1
    _job_stop_at=$SECONDS
    [ -n "$_job_pid" ] && kill -s "$1" "$_job_pid" 2>/dev/null
}

launch() {
    local case_name=$1 tool=$2 cfg_file=$3 nproc=$4
    shift 4
    local data_path="" device="" pth_path="" extra=()
    for arg in "$@"; do
        case "$arg" in
            --data_path=*) data_path="${arg#*=}" ;;
            --device=*) device="${arg#*=}" ;;
            --cfg=*) cfg_file="${arg#*=}" ;;
            --pth_path=*) pth_path="${arg#*=}" ;;
            --*) die "unknown option $arg; use --data_path=, --device=, --cfg=, --pth_path= or KEY VALUE pairs" ;;
            *) extra+=("$arg") ;;
        esac
    done
    [ -n "$data_path" ] || die "--data_path=DIR is required (a folder with train/ and val/ inside)"
    if [ "$tool" = test_net ]; then
        [ -n "$pth_path" ] || die "--pth_path=FILE is required (the checkpoint to evaluate)"
        extra+=(TEST.WEIGHTS "$pth_path")
    fi
    local py id out_dir log
    py=$(pick_python)
    id=${ASCEND_DEVICE_ID:-0}
    out_dir="$TEST_DIR/output/$id/$case_name/$(basename "$cfg_file" .yaml)"
    log="$TEST_DIR/output/$id/$case_name.log"
    mkdir -p "$(dirname "$log")" || die "cannot create $(dirname "$log"); check its permissions"
    export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
    local args=(--cfg "$cfg_file" --data_path "$data_path")
    [ -n "$device" ] && args+=(--device "$device")
    local nnodes=${NNODES:-1}
    local runner=("$py")
    if [ "$nproc" -gt 1 ] || [ "$nnodes" -gt 1 ]; then
        runner=("$py" -m pycls.core.launch --nproc_per_node="$nproc" --nnodes="$nnodes"
            --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}"
            --master_port="${MASTER_PORT:-29500}" --max-restarts="${MAX_RESTARTS:-0}"
            --no-python "$TEST_DIR/bind_cores.sh" "$py")
    else
        args+=(--device_id "$id")
    fi
    echo "Log: $log" >&2
    local start end status
    start=$(date +%s)
    # NUM_GPUS last: the launcher's process count wins, so config and world size always agree
    run_job "$log" "${runner[@]}" "$REPO_DIR/tools/$tool.py" "${args[@]}" \
        OUT_DIR "$out_dir" "${extra[@]}" NUM_GPUS $((nproc * nnodes))
    status=$?
    end=$(date +%s)
    [ "$status" -eq 0 ] || exit "$status"
    "$py" "$REPO_DIR/tools/final_result.py" "$log" --case "$case_name" --e2e $((end - start)) \
        | tee -a "$log"
}
