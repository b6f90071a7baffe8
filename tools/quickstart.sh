#!/usr/bin/env bash
# The README's first command: set-up on a fresh clone, then EN-B3 trained on the digits demo
# data on the CPU through the 1-device launcher, ending with its Final result block.
# Usage: bash tools/quickstart.sh [KEY VALUE ...]   (pairs go to the launcher, e.g. OPTIM.MAX_EPOCH 2)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/tools/install.sh"
data="$repo/output/demo_data"
[ -d "$data/train" ] || "$repo/.venv/bin/python" "$repo/tools/make_demo_data.py" "$data"
bash "$repo/test/train_full_1p.sh" --data_path="$data" --device=cpu \
    --cfg="$repo/configs/demo/EN-B3_digits_cpu.yaml" TRAIN.AUTO_RESUME False "$@"
