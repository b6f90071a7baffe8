#!/usr/bin/env bash
# Creates .venv in the repo and installs the project with its test and demo dependencies.
# Usage: bash tools/install.sh   (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "error: $python not found; install Python 3.8+" >&2; exit 2; }
[ -x "$repo/.venv/bin/python" ] || "$python" -m venv "$repo/.venv"
"$repo/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$repo/requirements-dev.txt" -e "$repo"
echo "Installed into $repo/.venv"
