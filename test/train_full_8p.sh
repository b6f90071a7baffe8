#!/usr/bin/env bash
# Full training of EN-B3 on RANK_SIZE (default 8) devices.
# Usage: bash test/train_full_8p.sh --data_path=DIR [--device=auto|cpu|gpu|npu] [--cfg=FILE] [KEY VALUE ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch train_full_8p train_net "$REPO_DIR/configs/dds_baselines/effnet/EN-B3_dds_8npu_full.yaml" "${RANK_SIZE:-8}" "$@"
