#!/usr/bin/env bash
# Evaluation of a checkpoint (--pth_path=FILE) on RANK_SIZE (default 8) devices.
# Usage: bash test/train_eval_8p.sh --data_path=DIR [--device=auto|cpu|gpu|npu] [--cfg=FILE] --pth_path=FILE [KEY VALUE ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch train_eval_8p test_net "$REPO_DIR/configs/dds_baselines/effnet/EN-B3_dds_8npu_full.yaml" "${RANK_SIZE:-8}" "$@"
