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

# Opens this run's own log as RUN_LOG_FD, created exclusively at LOG: an earlier LOG (a finished
# run's, or one another job still writes through its own descriptor) is first kept as LOG.N.
# RUN_LOG_OUT names the open file even after a later job moves it aside.
open_run_log() {
    local log=$1 py=$2 try opened
    for try in 1 2 3 4 5 6 7 8 9 10; do
        if [ -e "$log" ] || [ -L "$log" ]; then
            "$py" "$REPO_DIR/tools/final_result.py" --keep "$log" || exit 2
        fi
        set -C
        { exec {RUN_LOG_FD}>"$log"; } 2>/dev/null
        opened=$?
        set +C
        if [ "$opened" -eq 0 ]; then
            RUN_LOG_OUT="/proc/$$/fd/$RUN_LOG_FD"
            [ -e "$RUN_LOG_OUT" ] || RUN_LOG_OUT=$log
            return 0
        fi
    done
    die "cannot create the log $log; check the permissions of $(dirname "$log")"
}

# Prints the Final result block of this run (from its own log, or for a finished run's rerun
# from OUT_DIR's saved result), appends it to the log and writes the ModelZoo summary.
print_final_result() {
    local py=$1 case_name=$2 out_dir=$3 e2e=$4 summary_dir=$5 status=0
    if [ "$NODE_RANK" -eq 0 ]; then  # only node 0 (global rank 0) has the figures and files
        "$py" "$REPO_DIR/tools/final_result.py" "$RUN_LOG_OUT" --case "$case_name" --e2e "$e2e" \
            --out_dir "$out_dir" --summary_dir "$summary_dir" | tee -a "$RUN_LOG_OUT"
        status=${PIPESTATUS[0]}
    fi
    [ "$NNODES" -gt 1 ] && node_block "$status" | tee -a "$RUN_LOG_OUT"
    # The log's name now (a later job may have kept it as <case>.log.N meanwhile)
    echo "Log: $(readlink "$RUN_LOG_OUT" 2>/dev/null || echo "$RUN_LOG_OUT")" >&2
    return "$status"
}

# node_block STATUS: the closing block of this node of a multi-node job
node_block() {
    local first=$((NODE_RANK * NODE_NPROC))
    echo "------------------ Node $NODE_RANK of $NNODES ------------------"
    echo "Node rank : $NODE_RANK"
    echo "Processes : $NODE_NPROC (global ranks $first-$((first + NODE_NPROC - 1)))"
    echo "Exit status : $1"
    if [ "$NODE_RANK" -ne 0 ]; then
        echo "Final result : printed by node 0 (NODE_RANK 0), which holds the global figures"
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
    "$@" > >(trap '' INT TERM; exec tee -a "$log") 2>&1 &
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
    local py id out_dir log i
    py=$(pick_python)
    id=${ASCEND_DEVICE_ID:-0}
    out_dir="$TEST_DIR/output/$id/$case_name/$(basename "$cfg_file" .yaml)"
    for ((i = 0; i + 1 < ${#extra[@]}; i += 2)); do
        [ "${extra[i]}" = OUT_DIR ] && out_dir=${extra[i + 1]}
    done
    export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
    # The node facts, all checked in one place (pycls/launch/slurm.py): NNODES and NODE_RANK (1
    # and 0 unless set) and, for the 8p launchers in a SLURM job, what the user has not set of
    # NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT and the processes per node (nproc)
    local node_env slurm_flag=()
    [[ $case_name == *_8p ]] || slurm_flag=(--ignore-slurm)
    node_env=$("$py" -m pycls.launch.slurm --nproc "$nproc" "${slurm_flag[@]}") || exit 2
    eval "$node_env"
    NODE_NPROC=$nproc
    # Node 0 keeps the seed's log name; other nodes (maybe on the same machine or a shared
    # file system) log to <case>.node<N>.log, so no node moves another's log aside
    log="$TEST_DIR/output/$id/$case_name.log"
    [ "$NODE_RANK" -eq 0 ] || log="$TEST_DIR/output/$id/$case_name.node$NODE_RANK.log"
    mkdir -p "$(dirname "$log")" || die "cannot create $(dirname "$log"); check its permissions"
    open_run_log "$log" "$py"
    [ -z "$NODE_SOURCES" ] || echo "$NODE_SOURCES" | tee -a "$RUN_LOG_OUT" >&2
    local args=(--cfg "$cfg_file" --data_path "$data_path")
    [ -n "$device" ] && args+=(--device "$device")
    local nnodes=$NNODES
    local runner=("$py")
    if [ "$nproc" -gt 1 ] || [ "$nnodes" -gt 1 ]; then
        runner=("$py" -m pycls.launch.ranks --nproc_per_node="$nproc" --nnodes="$nnodes"
            --node_rank="$NODE_RANK" --master_addr="${MASTER_ADDR:-127.0.0.1}"
            --master_port="${MASTER_PORT:-29500}" --max-restarts="${MAX_RESTARTS:-0}"
            --no-python "$TEST_DIR/bind_cores.sh" "$py")
    else
        args+=(--device_id "$id")
    fi
    echo "Log: $log" >&2
    if [ "$nnodes" -gt 1 ]; then
        echo "Node $NODE_RANK of $nnodes: RANK_SIZE $nproc (processes on this node), master ${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}, rendezvous timeout ${RDZV_TIMEOUT:-600} s" |
            tee -a "$RUN_LOG_OUT" >&2
    fi
    local start end status
    start=$(date +%s)
    # NUM_GPUS last: the launcher's process count wins, so config and world size always agree
    run_job "$RUN_LOG_OUT" "${runner[@]}" "$REPO_DIR/tools/$tool.py" "${args[@]}" \
        OUT_DIR "$out_dir" "${extra[@]}" NUM_GPUS $((nproc * nnodes))
    status=$?
    end=$(date +%s)
    [ "$status" -eq 0 ] || exit "$status"
    print_final_result "$py" "$case_name" "$out_dir" $((end - start)) "$(dirname "$log")"
}
