#!/usr/bin/env bash
# README command (a): the five steps on the built-in synthetic micro-Doppler dataset with the CPU
# demo preset (small model, 64 px, random teacher, no LPIPS). Needs no GPU and no network.
#   bash demo.sh [WORK_DIR]          (default ./aetune_work)
set -euo pipefail
cd "$(dirname "$0")"
WORK="${1:-./aetune_work}"
python step1_setup_environment.py --output_dir "$WORK" --check_only --min_free_gb 1  # the demo needs ~0.2 GB
python step2_download_models.py --output_dir "$WORK" --config demo
python step3_prepare_dataset.py --synthetic microdoppler --num_users 8 --images_per_user 24 --image_size 64 \
    --output_dir "$WORK"
python step4_train.py --config demo --output_dir "$WORK"
python step5_validate_export.py --all --output_dir "$WORK"
