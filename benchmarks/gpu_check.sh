#!/usr/bin/env bash
# The GPU check of the training core (issue 18): one command on ONE CUDA GPU, no network (random teacher and
# LPIPS weights), under 9 minutes on an H200. docs/performance.md, "The GPU check", says what each block checks.
#
#   bash benchmarks/gpu_check.sh                                # ./gpu_check_out/report.txt, report.json, logs.tar.gz
#   OUT=dir BLOCKS="sdpa syncs" bash benchmarks/gpu_check.sh    # another folder; only some blocks (a rerun)
#
# Blocks (BLOCKS, default all): train resume demos sdpa syncs bench probe. Phase A runs train, resume, syncs,
# demos and sdpa side by side (none of them is timed: process start-up dominates and the GPU has room for five
# VA-VAE runs at batch 8); phase B runs bench and probe alone on the GPU, since they measure speed. Every command
# has its own timeout; BUDGET_S (default 540) is the whole check's: a phase-B block that no longer fits is
# reported as a FAIL, not run. OUT holds three files: report.txt, report.json (both rewritten after phase A too,
# so a killed check still leaves one) and logs.tar.gz (each block's result, every command's output). PYTHON
# (default python3) is the interpreter.
# Exit code: 0 every block passed, 1 a block failed or never reported, 2 no CUDA GPU.
set -u

OUT=${OUT:-./gpu_check_out}
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' > /dev/null 2>&1; then
  echo "error: no CUDA GPU: the GPU check needs one (see docs/performance.md)" >&2
  exit 2
fi

BLOCKS=${BLOCKS:-train resume demos sdpa syncs bench probe}
BUDGET_S=${BUDGET_S:-540}
START=$(date +%s.%N)
DEADLINE=$(( ${START%.*} + BUDGET_S ))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aetune_gpu_check.XXXXXX") || exit 1  # checkpoints: GBs, kept out of OUT
trap 'rm -rf "$WORK"' EXIT
STATE=$WORK/state  # blocks/ (one JSON result per block) and logs/, packed into OUT/logs.tar.gz
LOGS=$STATE/logs
mkdir -p "$OUT" "$LOGS" || exit 1
rm -f "$OUT/report.txt" "$OUT/report.json" "$OUT/logs.tar.gz"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # a dozen processes share the CPUs
EXPECT=()  # block names that must report, added when a block is scheduled

# Per-block timeouts (seconds); on an H200 each takes a fraction of its limit.
T_PREP=120 T_STAGE=180 T_DEMO=180 T_SDPA=120 T_SYNC=180 T_BENCH=150 T_PROBE=200 T_HELPER=180
RANDOM_WEIGHTS=(--set teacher.pretrained=false --set loss.lpips_pretrained=false)
VAVAE=(--config vavae --from_scratch --no_progress --batch_size 8 "${RANDOM_WEIGHTS[@]}"
       --set train.val_every_n_steps=1000 --set train.checkpoint_every_n_batches=1000)
SMALL=(--no_progress --set train.val_every_n_steps=1000 --set train.checkpoint_every_n_batches=1000)
FP16_STEPS=24  # enough windows for a fresh scaler at 65536 to back off and still step
BF16_STEPS=6
DEMO_STEPS=4
declare -A DEMO_DATA=([demo]=img64 [taesd_demo]=img64 [rae_demo]=img32 [taehv_demo]=video
                      [kl3d_demo]=volume [restoration_demo]=pairs [hypir_demo]=pairs)

now() { date +%s.%N; }
want() { [[ " $BLOCKS " == *" $1 "* ]]; }
helper() {  # helper SUBCOMMAND ARGS...: benchmarks/gpu_check_helpers.py, writes STATE/blocks/<block>.json
  local cmd=$1; shift
  timeout "$T_HELPER" "$PY" -m benchmarks.gpu_check_helpers "$cmd" --out "$STATE" "$@"
}
ensure() {  # ensure BLOCK TITLE START RC LOG: a FAIL line for a block whose own helper never reported
  [ -f "$STATE/blocks/$1.json" ] && return 0
  local rc=$4
  (( rc == 0 )) && rc=1
  helper record --block "$1" --title "$2" --start "$3" --rc "$rc" \
    --note "no result (exit code $4; 124/137 = timed out): see ${5#"$STATE"/} in logs.tar.gz"
}
report() {  # report: OUT/report.txt and report.json from the blocks so far, OUT/logs.tar.gz; the verdict's code
  local rc
  helper report --to "$OUT" --start "$START" --expect "${EXPECT[@]}" > "$LOGS/report.out" 2>&1
  rc=$?
  tar -czf "$OUT/logs.tar.gz" -C "$STATE" . 2> /dev/null
  return $rc
}
budget() {  # budget SECONDS: that, or what is left of BUDGET_S if less; fails when under 30 s are left
  local left=$(( DEADLINE - $(date +%s) )) t=$1
  (( left < t )) && t=$left
  (( t >= 30 )) && echo "$t"
}
fresh() {  # fresh DATA_NAME RUN_DIR: a work dir with step 3's prepared split (images stay in the data dir)
  rm -rf "$2" && mkdir -p "$2" && cp -r "$WORK/data/$1/data" "$2/data"
}

# ---------------------------------------------------------------- step 3 data (tiny synthetic sets)
prepare() {  # prepare NAME STEP3_ARGS...
  local name=$1; shift
  timeout "$T_PREP" "$PY" step3_prepare_dataset.py --output_dir "$WORK/data/$name" --no_progress "$@" \
    > "$LOGS/step3-$name.log" 2>&1
  echo $? > "$WORK/data/$name.rc"
}
t0=$(now)
mkdir -p "$WORK/data"
EXPECT+=(0_env 0_data)
helper env --block 0_env --title "GPU and versions" --start "$t0" &
if want train || want resume || want syncs; then
  prepare vavae --synthetic microdoppler --num_users 4 --images_per_user 12 --image_size 256 &
fi
if want demos; then
  prepare img64 --synthetic microdoppler --num_users 2 --images_per_user 12 --image_size 64 &
  prepare img32 --synthetic microdoppler --num_users 2 --images_per_user 12 --image_size 32 &
  prepare video --synthetic microdoppler_video --num_users 2 --images_per_user 4 --image_size 32 &
  prepare volume --synthetic phantoms --phantom_shape 32,32,32 --phantom_classes 2 --phantoms_per_class 4 &
  prepare pairs --synthetic paired --pairs_per_type 6 --image_size 64 &
fi
wait
bad=$(grep -Lx 0 "$WORK"/data/*.rc 2> /dev/null | xargs -r -n1 basename | tr '\n' ' ')
note=()
[ -n "$bad" ] && note=(--rc 1 --note "step 3 failed for: $bad(see logs/step3-*.log)")
helper record --block 0_data --title "step 3 synthetic data for: $BLOCKS" --start "$t0" ${note[@]+"${note[@]}"}

# ---------------------------------------------------------------- phase A
# Block 1: VA-VAE full size, 256 px, batch 8; stage 1 (GAN off) then stage 2 (GAN on) as two commands, so stage
# 1's last.ckpt (and its fp16 scale) is read before stage 2 drops its optimizer state.
vavae_run() {  # vavae_run NAME TITLE PRECISION STEPS [STEP4_ARGS...]
  local name=$1 title=$2 prec=$3 steps=$4 w=$WORK/runs/$1 s t0 rc log finite=()
  shift 4
  [ "$prec" = bf16-mixed ] && finite=(--require_finite)
  fresh vavae "$w"
  for s in 1 2; do
    t0=$(now) log=$LOGS/$name-stage$s.log
    timeout "$T_STAGE" "$PY" step4_train.py "${VAVAE[@]}" --output_dir "$w" --stages $s --max_steps "$steps" \
      --precision "$prec" "$@" > "$log" 2>&1
    rc=$?
    helper train --block "1_${name}_stage$s" --title "$title, stage $s" --start "$t0" --rc $rc --log "$log" \
      --ckpt "$w/checkpoints/stage$s/last.ckpt" --expect_batches "$steps" --precision "$prec" \
      ${finite[@]+"${finite[@]}"}
    ensure "1_${name}_stage$s" "$title, stage $s" "$t0" $rc "$log"
  done
  rm -rf "$w/checkpoints/stage2" "$w/cache" "$w"/checkpoints/*_final.pt  # disk: stage 1 stays for block 2
}

# Block 2: the same bf16 stage-1 command stopped after 3 batches and run again, against the uninterrupted run.
stage1_bf16() {  # stage1_bf16 WORK_DIR LOG [STEP4_ARGS...]: block 1's bf16 stage-1 command
  local w=$1 log=$2
  shift 2
  timeout "$T_STAGE" "$PY" step4_train.py "${VAVAE[@]}" --output_dir "$w" --stages 1 --max_steps $BF16_STEPS \
    --precision bf16-mixed "$@" > "$log" 2>&1
}
resume_run() {
  local w=$WORK/runs/resume rc=0
  now > "$WORK/resume.start"
  if ! want train; then  # the uninterrupted reference block 1 would have made
    fresh vavae "$WORK/runs/bf16"
    stage1_bf16 "$WORK/runs/bf16" "$LOGS/resume-reference.log" || rc=$?
  fi
  fresh vavae "$w"
  stage1_bf16 "$w" "$LOGS/resume-stop.log" --stop_after_batches 3 || rc=$?
  cp "$w/checkpoints/stage1/last.ckpt" "$w/stopped.ckpt" 2> /dev/null
  stage1_bf16 "$w" "$LOGS/resume-resume.log" --stop_after_batches 3 || rc=$?  # the same command again
  echo $rc > "$WORK/resume.rc"
}

# Block 5: host synchronisations per batch, VA-VAE stage 2 (GAN on) in bf16, counted in-process.
syncs_run() {
  local w=$WORK/runs/syncs t0 rc
  t0=$(now)
  fresh vavae "$w"
  timeout "$T_SYNC" "$PY" -m benchmarks.gpu_check_helpers syncs --out "$STATE" --block 5_syncs --start "$t0" \
    --title "host syncs per training batch, VA-VAE stage 2 (GAN on), bf16" -- "${VAVAE[@]}" --output_dir "$w" \
    --stages 2 --allow_stage_gap --max_steps 8 --precision bf16-mixed > "$LOGS/syncs.log" 2>&1
  rc=$?
  ensure 5_syncs "host syncs per training batch" "$t0" $rc "$LOGS/syncs.log"
  rm -rf "$w"
}

# Block 3: each family's demo preset, one stage in bf16.
demo_run() {  # demo_run PRESET
  local p=$1 w=$WORK/runs/$1 t0 rc log=$LOGS/demo-$1.log
  t0=$(now)
  fresh "${DEMO_DATA[$p]}" "$w"
  timeout "$T_DEMO" "$PY" step4_train.py --config "$p" "${SMALL[@]}" --output_dir "$w" --stages 1 \
    --max_steps $DEMO_STEPS --precision bf16-mixed > "$log" 2>&1
  rc=$?
  helper train --block "3_demo_$p" --title "$p preset, stage 1, bf16" --start "$t0" --rc $rc --log "$log" \
    --ckpt "$w/checkpoints/stage1/last.ckpt" --expect_batches $DEMO_STEPS --precision bf16-mixed
  ensure "3_demo_$p" "$p preset, stage 1, bf16" "$t0" $rc "$log"
  rm -rf "$w"
}

echo "== phase A: $(date -u +%H:%M:%S) (train, resume, syncs, demos, sdpa side by side)"
if want train; then
  EXPECT+=(1_fp16_split_stage{1,2} 1_fp16_nosplit_stage{1,2} 1_bf16_stage{1,2})
  vavae_run fp16_split "VA-VAE 16-mixed, split backward on" 16-mixed $FP16_STEPS &
  vavae_run fp16_nosplit "VA-VAE 16-mixed, split backward off" 16-mixed $FP16_STEPS \
    --set loss.split_backward=false &
  vavae_run bf16 "VA-VAE bf16-mixed" bf16-mixed $BF16_STEPS &
fi
if want resume; then
  EXPECT+=(2_resume)
  resume_run &
fi
if want syncs; then
  EXPECT+=(5_syncs)
  syncs_run &
fi
if want demos; then
  for p in "${!DEMO_DATA[@]}"; do
    EXPECT+=("3_demo_$p")
    demo_run "$p" &
  done
fi
if want sdpa; then
  EXPECT+=(4_sdpa)
  ( t0=$(now)
    timeout "$T_SDPA" "$PY" -m benchmarks.gpu_check_helpers sdpa --out "$STATE" --block 4_sdpa --start "$t0" \
      --title "fused SDPA (no math kernel) for the VA-VAE AttnBlock, bf16" > "$LOGS/sdpa.log" 2>&1
    ensure 4_sdpa "fused SDPA" "$t0" $? "$LOGS/sdpa.log" ) &
fi
wait
if want resume; then
  helper resume --block 2_resume --title "stop after 3 batches + resume vs uninterrupted, VA-VAE stage 1, bf16" \
    --start "$(cat "$WORK/resume.start")" --rc "$(cat "$WORK/resume.rc" 2> /dev/null || echo 1)" \
    --reference "$WORK/runs/bf16/checkpoints/stage1/last.ckpt" --stopped "$WORK/runs/resume/stopped.ckpt" \
    --resumed "$WORK/runs/resume/checkpoints/stage1/last.ckpt"
fi
rm -rf "$WORK/runs"
if want bench; then EXPECT+=(6_bench_32 6_bench_16_mixed 6_bench_bf16_mixed); fi
if want probe; then EXPECT+=(7_kl3d_probe); fi
report  # a first report (phase B's blocks still missing from it), in case the check is killed in phase B

# ---------------------------------------------------------------- phase B: alone on the GPU (timed)
echo "== phase B: $(date -u +%H:%M:%S) (bench, probe one at a time)"
if want bench; then
  for prec in 32 16-mixed bf16-mixed; do
    name=6_bench_${prec//-/_} title="bench: VA-VAE batch 8, 256 px, stage 2 step, $prec" log=$LOGS/bench-$prec.log
    t0=$(now)
    if ! tmo=$(budget $T_BENCH); then
      helper record --block "$name" --title "$title" --start "$t0" --rc 1 --note "not run: BUDGET_S=$BUDGET_S spent"
      continue
    fi
    timeout "$tmo" "$PY" -m aetune.tools.bench --config vavae --batch_size 8 --steps 8 --warmup 3 --device cuda \
      --precision "$prec" "${RANDOM_WEIGHTS[@]}" > "$log" 2>&1
    rc=$?
    helper bench --block "$name" --title "$title" --start "$t0" --rc $rc --log "$log"
  done
fi
if want probe; then
  title="kl3d memory probe, 256x256x64, batch 1, channels 16/32/64, AMP, checkpointing on/off" log=$LOGS/probe.log
  t0=$(now)
  if tmo=$(budget $T_PROBE); then
    timeout "$tmo" "$PY" -m aetune.tools.memory_probe --family kl3d --resolution 256,256,64 --batch_size 1 \
      --channels 16,32,64 --amp on --checkpointing on,off --timeout $(( tmo / 2 - 5 )) --json "$STATE/kl3d_probe.json" \
      > "$log" 2>&1
    rc=$?
    helper probe --block 7_kl3d_probe --title "$title" --start "$t0" --rc $rc --json "$STATE/kl3d_probe.json"
  else
    helper record --block 7_kl3d_probe --title "$title" --start "$t0" --rc 1 --note "not run: BUDGET_S=$BUDGET_S spent"
  fi
fi

echo "== report: $(date -u +%H:%M:%S)"
report
rc=$?
cat "$OUT/report.txt" 2> /dev/null || cat "$LOGS/report.out"
echo "report: $OUT/report.txt (and report.json; each block's result and every log in logs.tar.gz)"
[ $rc -eq 0 ] && exit 0 || exit 1
