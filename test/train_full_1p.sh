#!/usr/bin/env bash
# Full training of EN-B3 on one device.
# Usage: bash test/train_full_1p.sh --data_path=DIR [--device=auto|cpu|gpu|npu] [--cfg=FILE] [KEY VALUE ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch train_full_1p train_net "$REPO_DIR/configs/dds_baselines/effnet/EN-B3_dds_1npu_full.yaml" 1 "$@"
