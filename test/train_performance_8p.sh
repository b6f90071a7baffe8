#!/usr/bin/env bash
# Performance run of EN-B3 (1 epoch; prints FPS) on RANK_SIZE (default 8) devices.
# Usage: bash test/train_performance_8p.sh --data_path=DIR [--device=auto|cpu|gpu|npu] [--cfg=FILE] [KEY VALUE ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch train_performance_8p train_net "$REPO_DIR/configs/dds_baselines/effnet/EN-B3_dds_8npu_perf.yaml" "${RANK_SIZE:-8}" "$@"
