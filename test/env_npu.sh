#!/usr/bin/env bash
# Ascend environment for the launchers: sources CANN's set_env.sh when it is installed and sets
# the seed's runtime variables. Sourcing it on a machine without CANN changes nothing that matters.

# PYCLS_CANN_ROOT overrides where CANN is looked for (default: /usr/local/Ascend, or the
# Install_Path of /etc/Ascend/ascend_cann_install.info); the tests point it at a stand-in.
_cann_root=${PYCLS_CANN_ROOT:-/usr/local/Ascend}
if [ -z "${PYCLS_CANN_ROOT:-}" ] && [ -f /etc/Ascend/ascend_cann_install.info ]; then
    _root=$(sed -n 's/^Install_Path=//p' /etc/Ascend/ascend_cann_install.info | head -n 1)
    [ -n "$_root" ] && _cann_root=$_root
fi
for _env in "$_cann_root/ascend-toolkit/set_env.sh" "$_cann_root/nnae/set_env.sh"; do
    if [ -f "$_env" ]; then
        # CANN's script reads variables that may be unset (...:$PYTHONPATH): source it with
        # nounset off, then restore the caller's setting
        case $- in *u*) _nounset=1 ;; *) _nounset="" ;; esac
        set +u
        # shellcheck disable=SC1090
        source "$_env"
        [ -n "$_nounset" ] && set -u
        break
    fi
done
unset _cann_root _root _env _nounset

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
