#!/usr/bin/env bash
# Creates .venv in the repo and installs the project with its test and demo dependencies.
# Usage: bash tools/install.sh   (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "error: $python not found; install Python 3.8+" >&2; exit 2; }
[ -x "$repo/.venv/bin/python" ] || "$python" -m venv "$repo/.venv"
if ! "$repo/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$repo/requirements-dev.txt" -e "$repo"; then
    # pip's own message is above; a full disk is the failure users meet most (torch's CUDA
    # build for Linux x86_64 takes about 6 GB in the venv), so name it when it is the cause.
    free_mb=$(df -Pm "$repo" 2>/dev/null | awk 'NR == 2 {print $4}') || free_mb=
    if [ -n "$free_mb" ] && [ "$free_mb" -lt 2048 ]; then
        echo "error: the install stopped with only ${free_mb} MB free on the disk of $repo;" \
            "the venv needs about 6 GB (torch's CUDA build): free space, then rerun bash tools/install.sh" >&2
    else
        echo "error: pip could not install the requirements into $repo/.venv (see pip's message" \
            "above); fix that, then rerun bash tools/install.sh" >&2
    fi
    exit 1
fi
echo "Installed into $repo/.venv"
