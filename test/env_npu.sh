#!/usr/bin/env bash
# Ascend environment for the launchers: sources CANN's set_env.sh when it is installed and sets
# the seed's runtime variables. Sourcing it on a machine without CANN changes nothing that matters.

_cann_root=/usr/local/Ascend
if [ -f /etc/Ascend/ascend_cann_install.info ]; then
    _root=$(sed -n 's/^Install_Path=//p' /etc/Ascend/ascend_cann_install.info | head -n 1)
    [ -n "$_root" ] && _cann_root=$_root
fi
for _env in "$_cann_root/ascend-toolkit/set_env.sh" "$_cann_root/nnae/set_env.sh"; do
    if [ -f "$_env" ]; then
        # shellcheck disable=SC1090
        source "$_env"
        break
    fi
done
unset _cann_root _root _env

# Logging: errors only, not to stdout
export ASCEND_SLOG_PRINT_TO_STDOUT=0
export ASCEND_GLOBAL_LOG_LEVEL=3
export ASCEND_GLOBAL_EVENT_ENABLE=0
# Task queue and operator fusion, as the seed sets them
export TASK_QUEUE_ENABLE=1
export COMBINED_ENABLE=1
# HCCL: no IP whitelist, a long connect timeout for 8-device start-up
export HCCL_WHITELIST_DISABLE=1
export HCCL_CONNECT_TIMEOUT=1200
