#!/usr/bin/env bash
# Runs a command on this rank's share of the CPU cores (torchrun sets LOCAL_RANK and
# LOCAL_WORLD_SIZE); runs it unbound where taskset is missing. The cores shared out are those
# this process may use (e.g. a SLURM job's cpuset, which need not start at core 0).
if command -v taskset >/dev/null 2>&1 && [ -n "${LOCAL_RANK:-}" ]; then
    cpus=()
    for part in $(taskset -cp $$ 2>/dev/null | sed 's/.*: //; s/,/ /g'); do
        for ((c = ${part%-*}; c <= ${part#*-}; c++)); do cpus+=("$c"); done
    done
    per_rank=$(( ${#cpus[@]} / ${LOCAL_WORLD_SIZE:-1} ))
    if [ "$per_rank" -ge 1 ]; then
        share=("${cpus[@]:LOCAL_RANK * per_rank:per_rank}")
        exec taskset -c "$(IFS=,; echo "${share[*]}")" "$@"
    fi
fi
exec "$@"
