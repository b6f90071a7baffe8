#!/usr/bin/env bash
# Runs a command on this rank's share of the CPU cores (torchrun sets LOCAL_RANK and
# LOCAL_WORLD_SIZE); runs it unbound where taskset is missing.
if command -v taskset >/dev/null 2>&1 && [ -n "${LOCAL_RANK:-}" ]; then
    per_rank=$(( $(nproc) / ${LOCAL_WORLD_SIZE:-1} ))
    if [ "$per_rank" -ge 1 ]; then
        first=$(( LOCAL_RANK * per_rank ))
        exec taskset -c "$first-$(( first + per_rank - 1 ))" "$@"
    fi
fi
exec "$@"
