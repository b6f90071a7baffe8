#!/usr/bin/env bash
# Performance run of EN-B3 (1 epoch; prints FPS) on one device.
# Usage: bash test/train_performance_1p.sh --data_path=DIR [--device=auto|cpu|gpu|npu] [--cfg=FILE] [KEY VALUE ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch train_performance_1p train_net "$REPO_DIR/configs/dds_baselines/effnet/EN-B3_dds_1npu_perf.yaml" 1 "$@"
