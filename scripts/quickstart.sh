#!/usr/bin/env bash
# The main job end to end on the built-in demo data:
#   demo CTs -> ctprep convert -> ctsample stats + plan -> ctmodel train -> evaluate -> predict one scan.
#
#   scripts/quickstart.sh            # 9 min on an idle 2-core machine (552 s measured; a few minutes on a GPU)
#   scripts/quickstart.sh --small    # a 25 s smoke run (23 s measured; what CI runs, so this file cannot rot)
#   scripts/quickstart.sh --dir DIR  # where everything goes (default: quickstart/, replaced if it exists)
#
# Every command below is the one a user types; the sizes are the only thing --small changes.
set -euo pipefail

DIR=quickstart
CASES=12 DEMO_SIZE=256 MAX_SLICES=120 SIZE=96 EPOCHS=24 STEP=16 BATCH=16 LR=5e-4
while [[ $# -gt 0 ]]; do
  case "$1" in
    --small) CASES=6 DEMO_SIZE=128 MAX_SLICES=24 SIZE=64 EPOCHS=2 STEP=2 BATCH=8; shift ;;
    --dir) DIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "quickstart.sh: unknown option $1 (expected --small or --dir DIR)" >&2; exit 2 ;;
  esac
done

if [[ -t 1 ]]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD='' PLAIN=''; fi
step() { printf '\n%s== %s%s\n$ %s\n' "$BOLD" "$1" "$PLAIN" "${*:2}"; "${@:2}"; }

rm -rf "$DIR"
mkdir -p "$DIR"
start=$SECONDS

step "1/8 synthetic chest CTs with lesion masks (COVID-19-20 file layout)" \
  ctprep demo "$DIR/raw" --cases "$CASES" --size "$DEMO_SIZE" --max-slices "$MAX_SLICES"
step "2/8 convert once into a windowed, resized Zarr slice store (patient-level splits)" \
  ctprep convert "$DIR/raw" "$DIR/store.zarr" --size "$SIZE" --test 0.2 --val 0.1
step "3/8 what the store holds" \
  ctprep info "$DIR/store.zarr"
step "4/8 the imbalance: empty vs lesion slices per patient" \
  ctsample stats "$DIR/store.zarr" --split all --plot "$DIR/stats.png"
step "5/8 a balanced plan: every lesion slice, its neighbours, 1.75 empty per lesion slice, fresh fill per epoch" \
  ctsample plan "$DIR/store.zarr" --ratio 1.75 --neighbours 1 --epochs "$EPOCHS" --out "$DIR/plan.parquet"
step "6/8 train the dual-encoder 2.5D U-Net on the plan (24 epochs at lr 5e-4, x0.1 after 16: a CPU-sized schedule)" \
  ctmodel train "$DIR/store.zarr" --plan "$DIR/plan.parquet" --epochs "$EPOCHS" --batch-size "$BATCH" \
  --lr "$LR" --step-size "$STEP" --out "$DIR/runs/dual-encoder"
step "7/8 evaluate on the held-out test patients (3-D Dice, IoU, NSD, HD95; slice-level both ways)" \
  ctmodel evaluate "$DIR/runs/dual-encoder" "$DIR/store.zarr" --split test --figures "$DIR/figures"
scan=$(python -c "import sys, pandas as pd; i = pd.read_parquet(sys.argv[1] + '/index.parquet'); \
print(sorted(i.loc[i.split == 'test', 'case_id'].unique())[0])" "$DIR/store.zarr")
step "8/8 predict one test scan back in the scanner's geometry (same shape and affine as the source)" \
  ctmodel predict "$DIR/runs/dual-encoder" "$DIR/raw/${scan}_ct.nii.gz" "$DIR/predictions/${scan}_pred.nii.gz"

cat <<EOF

Done in $((SECONDS - start)) s. Artifacts:
  $DIR/raw/                          demo NIfTI scans and masks (NAME_ct.nii.gz, NAME_seg.nii.gz)
  $DIR/store.zarr/                   the slice store; index.parquet = one row per slice
  $DIR/stats.png                     per-patient empty vs lesion slices
  $DIR/plan.parquet                  the balanced plan (epoch, case_id, slice, role)
  $DIR/runs/dual-encoder/            config.json, metrics.csv, curves.png, best.pt, last.pt
  $DIR/runs/dual-encoder/eval-test.* per-case metrics (CSV) and summary (JSON)
  $DIR/figures/                      overlays: best, median and worst test case
  $DIR/predictions/${scan}_pred.nii.gz   mask on the source grid: open it over $DIR/raw/${scan}_ct.nii.gz
EOF
